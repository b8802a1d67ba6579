//! Trace agreement: the real runtime (MemoryBackend inside the conformance FaultyBackend, on
//! tokio's paused clock) runs scripted scenarios; a recorder on both sides of the fault layer
//! logs every call (when the runtime sent it, whether it reached the store, what the runtime got
//! back, when it gave up waiting), and the test samples the guards' `valid_until`, `is_lost` and
//! fencing token. The trace is then replayed through the model's transition function: each
//! step must be enabled, and the model's deadlines, beliefs and tokens must equal the runtime's.

use async_trait::async_trait;
use dlock_model::replay::{NetFault, Replay};
use dlock_model::{Action, LeaseClockFrom, LockModel, Msg, Op};
use dlock_runtime::conformance::{Fault, FaultyBackend};
use dlock_runtime::{
    AcquireOutcome, AcquireRequest, Backend, Backoff, Capabilities, Error, Holder, Lease, Lock,
    LockGuard, LockName, MemoryBackend, Owner, Version,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Acquire { replace: bool },
    Renew,
    Release,
    Read,
}

/// One backend call as the runtime made it.
#[derive(Clone, Debug)]
struct Call {
    /// The order of events logged at the same instant.
    seq: usize,
    client: u8,
    kind: Kind,
    sent: Duration,
    /// `Some(ok)` when answered; `None` when the runtime stopped waiting (at `abandoned`).
    answered: Option<bool>,
    abandoned: Option<Duration>,
    /// Whether the call reached the store (logged by the inner recorder).
    landed: bool,
}

/// What the test saw of a guard at a moment.
#[derive(Clone, Debug)]
struct Sample {
    seq: usize,
    at: Duration,
    client: u8,
    valid_until: Duration,
    lost: bool,
    token: Option<u64>,
}

#[derive(Default)]
struct Log {
    calls: Vec<Call>,
    samples: Vec<Sample>,
}

type Shared = Arc<Mutex<Log>>;

/// Records calls: `outer` (between the runtime and the faults) or inner (between the faults and
/// the store, marking the outer call as landed).
#[derive(Debug)]
struct Recorder {
    inner: Arc<dyn Backend>,
    client: u8,
    outer: bool,
    start: Instant,
    log: Arc<Mutex<Log>>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.calls)
    }
}

/// Marks an outer call abandoned if its future is dropped before the answer.
struct Pending {
    log: Shared,
    index: usize,
    start: Instant,
    done: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            let at = self.start.elapsed();
            self.log.lock().expect("log").calls[self.index].abandoned = Some(at);
        }
    }
}

impl Recorder {
    async fn record<T>(
        &self,
        kind: Kind,
        call: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        if !self.outer {
            {
                let mut log = self.log.lock().expect("log");
                let client = self.client;
                if let Some(c) = log
                    .calls
                    .iter_mut()
                    .rev()
                    .find(|c| c.client == client && c.kind == kind)
                {
                    c.landed = true;
                }
            }
            return call.await;
        }
        let index = {
            let mut log = self.log.lock().expect("log");
            let seq = log.calls.len() + log.samples.len();
            log.calls.push(Call {
                seq,
                client: self.client,
                kind,
                sent: self.start.elapsed(),
                answered: None,
                abandoned: None,
                landed: false,
            });
            log.calls.len() - 1
        };
        let mut pending = Pending {
            log: self.log.clone(),
            index,
            start: self.start,
            done: false,
        };
        let result = call.await;
        pending.done = true;
        self.log.lock().expect("log").calls[index].answered = Some(result.is_ok());
        result
    }
}

#[async_trait]
impl Backend for Recorder {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            // Every call goes through the async path, so each is recorded with its time.
            local_calls: false,
            fair_waiting: false,
            ..self.inner.capabilities()
        }
    }
    async fn try_acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, Error> {
        let kind = Kind::Acquire {
            replace: request.replace.is_some(),
        };
        let kind = if self.outer {
            kind
        } else {
            // The inner side marks the latest outer acquire, whatever its kind.
            self.latest_acquire_kind().unwrap_or(kind)
        };
        self.record(kind, self.inner.try_acquire(request)).await
    }
    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, Error> {
        self.record(Kind::Renew, self.inner.renew(lease, ttl)).await
    }
    async fn release(&self, lease: &Lease) -> Result<(), Error> {
        self.record(Kind::Release, self.inner.release(lease)).await
    }
    async fn inspect(&self, name: &LockName) -> Result<Option<Holder>, Error> {
        if self.outer {
            self.record(Kind::Read, self.inner.inspect(name)).await
        } else {
            self.inner.inspect(name).await
        }
    }
    async fn list(&self, prefix: &str) -> Result<Vec<(LockName, Holder)>, Error> {
        self.inner.list(prefix).await
    }
    async fn force_release(&self, name: &LockName, version: &Version) -> Result<(), Error> {
        self.inner.force_release(name, version).await
    }
    async fn wait_for_change(
        &self,
        name: &LockName,
        seen: &Version,
        since: std::time::Instant,
    ) -> Result<(), Error> {
        self.inner.wait_for_change(name, seen, since).await
    }
    async fn stop_waiting(&self, name: &LockName, owner: &Owner) -> Result<(), Error> {
        self.inner.stop_waiting(name, owner).await
    }
}

impl Recorder {
    fn latest_acquire_kind(&self) -> Option<Kind> {
        let log = self.log.lock().expect("log");
        log.calls
            .iter()
            .rev()
            .find(|c| c.client == self.client && matches!(c.kind, Kind::Acquire { .. }))
            .map(|c| c.kind)
    }
}

/// One process's view of the shared store: recorder, faults, recorder, memory.
fn process(
    memory: &MemoryBackend,
    client: u8,
    log: &Shared,
    start: Instant,
) -> (Arc<dyn Backend>, Arc<FaultyBackend>) {
    let inner: Arc<dyn Backend> = Arc::new(Recorder {
        inner: Arc::new(memory.clone()),
        client,
        outer: false,
        start,
        log: log.clone(),
    });
    let faulty = Arc::new(FaultyBackend::new(inner));
    let outer: Arc<dyn Backend> = Arc::new(Recorder {
        inner: faulty.clone(),
        client,
        outer: true,
        start,
        log: log.clone(),
    });
    (outer, faulty)
}

fn lock() -> Lock {
    Lock::new("model")
        .ttl(TTL)
        .timeout(Duration::from_secs(20))
        .backoff(Backoff::default().with_seed(11))
        .background_runtime(tokio::runtime::Handle::current())
}

fn sample(log: &Shared, start: Instant, client: u8, guard: &LockGuard) {
    let valid_until = guard.valid_until().expect("leases") - start.into_std();
    let mut log = log.lock().expect("log");
    let seq = log.calls.len() + log.samples.len();
    log.samples.push(Sample {
        seq,
        at: start.elapsed(),
        client,
        valid_until,
        lost: guard.is_lost(),
        token: guard.fencing_token(),
    });
}

/// The model the traces are replayed in: a 1 ms tick, the runtime's rules, no bounds that a
/// short trace could reach.
fn replay_model(lease_clock: LeaseClockFrom) -> LockModel {
    LockModel {
        tick: Duration::from_millis(1),
        ttl_ticks: 3000,
        max_time: 30_000,
        drift: 0,
        faults: 50,
        attempts: 50,
        renewals: 50,
        release_tries: 50,
        fail_requests: true,
        lease_clock,
        ..LockModel::small()
    }
}

/// Replays the recorded calls in time order and compares every sample.
fn replay(log: &Log, lease_clock: LeaseClockFrom) -> Result<Replay, String> {
    #[derive(Debug)]
    enum Moment<'a> {
        Send(&'a Call),
        GiveUp(&'a Call),
        Sample(&'a Sample),
    }
    let mut moments: Vec<(Duration, usize, Moment)> = Vec::new();
    for c in &log.calls {
        moments.push((c.sent, c.seq, Moment::Send(c)));
        if let Some(at) = c.abandoned {
            moments.push((at, c.seq, Moment::GiveUp(c)));
        }
    }
    for s in &log.samples {
        moments.push((s.at, s.seq, Moment::Sample(s)));
    }
    moments.sort_by_key(|(at, order, _)| (*at, *order));
    let mut r = Replay::new(replay_model(lease_clock));
    for (at, _, moment) in moments {
        r.advance_to(at)?;
        match moment {
            Moment::Send(call) => {
                let c = call.client;
                if call.kind == Kind::Release {
                    r.step(Action::Release(c))?;
                }
                if call.kind == Kind::Read {
                    return Err("the memory backend is not polled with reads".into());
                }
                r.send(c)?;
                let sent = r.state.net.iter().rev().find_map(|m| match m {
                    Msg::Request { from, op, .. } if *from == c => Some(*op),
                    _ => None,
                });
                if let Kind::Acquire { replace } = call.kind
                    && matches!(sent, Some(Op::Replace(_))) != replace
                {
                    return Err(format!(
                        "the model's attempt {sent:?} is not the runtime's {call:?}"
                    ));
                }
                match call.answered {
                    Some(true) => r.settle(c, None)?,
                    Some(false) if call.landed => r.settle(c, Some(NetFault::LoseAnswer))?,
                    Some(false) => r.settle(c, Some(NetFault::Fail))?,
                    None => {} // hangs until the runtime gives up
                }
            }
            Moment::GiveUp(call) => {
                let request = r
                    .state
                    .net
                    .iter()
                    .find(|m| matches!(m, Msg::Request { from, .. } if *from == call.client))
                    .copied()
                    .ok_or("a hung call with no request in flight")?;
                r.step(Action::Fail(request))?;
                r.settle(call.client, None)?;
            }
            Moment::Sample(s) => {
                let c = s.client;
                let deadline = r.deadline(c);
                if deadline != Some(s.valid_until) {
                    return Err(format!(
                        "at {:?}: client {c}: the model's deadline {deadline:?} is not the runtime's valid_until {:?}; model: {:?} after {:?}",
                        s.at,
                        s.valid_until,
                        r.state,
                        r.steps
                            .iter()
                            .filter(|a| **a != Action::Tick)
                            .collect::<Vec<_>>()
                    ));
                }
                if r.believes(c) == s.lost {
                    return Err(format!(
                        "at {:?}: client {c}: the model believes {} but the runtime's is_lost is {}",
                        s.at,
                        r.believes(c),
                        s.lost
                    ));
                }
                if r.token(c).map(u64::from) != s.token {
                    return Err(format!("at {:?}: client {c}: tokens differ", s.at));
                }
            }
        }
        r.properties_hold()?;
    }
    Ok(r)
}

fn check(log: &Shared) {
    let log = log.lock().expect("log");
    println!("trace: {:#?}\nsamples: {:#?}", log.calls, log.samples);
    let r = replay(&log, LeaseClockFrom::FirstSend).unwrap_or_else(|e| panic!("{e}"));
    println!("the model admits the trace in {} steps", r.steps.len());
}

#[tokio::test(start_paused = true)]
async fn lost_acquire_answer_then_retry() {
    let start = Instant::now();
    let log = Shared::default();
    let memory = MemoryBackend::new();
    let (backend, faulty) = process(&memory, 0, &log, start);
    faulty.on_acquire([Fault::LoseAnswer]);
    let guard = lock().acquire_on(backend).await.expect("acquire");
    sample(&log, start, 0, &guard);
    assert_eq!(
        guard.valid_until().expect("lease") - start.into_std(),
        TTL - TTL / 100
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    guard.release().await.expect("release");
    check(&log);
    // The same trace with the lease dated from the last attempt disagrees with the runtime.
    let log = log.lock().expect("log");
    let err = replay(&log, LeaseClockFrom::LastAttempt).expect_err("the mutation disagrees");
    assert!(err.contains("deadline"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn lost_renewal_answer() {
    let start = Instant::now();
    let log = Shared::default();
    let memory = MemoryBackend::new();
    let (backend, faulty) = process(&memory, 0, &log, start);
    faulty.on_renew([Fault::LoseAnswer]);
    let guard = lock().acquire_on(backend).await.expect("acquire");
    sample(&log, start, 0, &guard);
    // The renewal at ttl/3 lands but its answer is lost; the retry is confirmed, and the lease
    // is dated from the first renewal.
    tokio::time::sleep(Duration::from_millis(1900)).await;
    sample(&log, start, 0, &guard);
    assert!(faulty.calls().renewals >= 2, "{:?}", faulty.calls());
    assert_eq!(
        guard.valid_until().expect("lease") - start.into_std(),
        TTL / 3 + TTL - TTL / 100
    );
    guard.release().await.expect("release");
    check(&log);
}

#[tokio::test(start_paused = true)]
async fn paused_holder_is_taken_over_after_its_lease() {
    let start = Instant::now();
    let log = Shared::default();
    let memory = MemoryBackend::new();
    let (holder_backend, holder_faults) = process(&memory, 0, &log, start);
    let (waiter_backend, _) = process(&memory, 1, &log, start);
    // The holder is paused: its renewals never reach the store.
    holder_faults.on_every_renewal(Some(Fault::Hang));
    let holder = lock().acquire_on(holder_backend).await.expect("acquire");
    sample(&log, start, 0, &holder);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let waiter = lock().acquire_on(waiter_backend).await.expect("takeover");
    let taken_at = start.elapsed();
    sample(&log, start, 0, &holder);
    sample(&log, start, 1, &waiter);
    let lost_at = holder.valid_until().expect("lease") - start.into_std();
    assert!(holder.is_lost(), "taken over while the holder believed");
    assert!(lost_at <= taken_at, "{lost_at:?} > {taken_at:?}");
    assert_eq!(waiter.fencing_token(), Some(2));
    holder.release().await.expect_err("a lost guard");
    waiter.release().await.expect("release");
    check(&log);
}
