//! The fault matrix every remote backend runs: the backend's client talks to its local server
//! through a [`FaultProxy`] that loses answers, resets connections, delays, blackholes and (for
//! HTTP stores) throttles, while an observer — another process's view of the same store, not
//! through the proxy — keeps trying to take the lock. Each row asserts:
//!
//! - no two holders: the observer never gets the lock while the faulted holder's lease is
//!   still valid on its own clock (so the holder knew it was lost before any takeover);
//! - no stranded record: once a row is over, the lock is free (or taken over) within a bound;
//! - a clear error within the timeout plus a small bound, where a row must fail.
//!
//! A backend's test file calls [`fault_matrix_tests!`](crate::fault_matrix_tests) once.

use crate::fault_proxy::{Fault, FaultProxy, Mode};
use dlock_runtime::{Backend, Error, ErrorKind, Lock, LockGuard, LockName};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The lease every row uses: renewed every third of it.
pub const TTL: Duration = Duration::from_secs(2);
/// How long a single call may take in the rows that bound calls.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// The slack allowed on top of a timeout before an error counts as late.
const SLACK: Duration = Duration::from_millis(1500);

/// Which requests of a backend's protocol are lock requests (as opposed to a start-up check
/// or a driver's heartbeat), from the first bytes of a request.
pub type Matcher = fn(&[u8]) -> bool;

/// Builds the backend under test, talking to a proxy.
pub type Through = Box<dyn Fn(&FaultProxy) -> Arc<dyn Backend> + Send + Sync>;

/// A remote backend under test.
pub struct Target {
    /// For messages: `s3`, `gcs`, ...
    pub name: &'static str,
    /// The local server.
    pub upstream: SocketAddr,
    /// The backend, talking to `proxy` (its URL is `http://ADDR`, its address `ADDR`).
    pub through: Through,
    /// The same store as another process sees it: straight to the server.
    pub direct: Arc<dyn Backend>,
    /// The backend's lock requests.
    pub requests: Matcher,
    /// Whether the protocol is HTTP, so throttling answers (429, 5xx) can be injected.
    pub http: bool,
    /// Whether requests share one connection and interleave (gRPC over HTTP/2), so a matcher
    /// cannot tell one request's bytes from another's: a row that needs "the acquisition's
    /// answer is late" then makes every answer late while the acquisition runs.
    pub multiplexed: bool,
}

/// Case-insensitive search for `needle` in `haystack`.
pub fn contains(haystack: &[u8], needle: &str) -> bool {
    let needle = needle.as_bytes();
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// The path of an HTTP request's first line.
pub fn http_path(request: &[u8]) -> &str {
    let line = request.split(|b| *b == b'\n').next().unwrap_or_default();
    std::str::from_utf8(line)
        .unwrap_or_default()
        .split(' ')
        .nth(1)
        .unwrap_or_default()
}

/// The address of a stand-in from its URL (`http://127.0.0.1:PORT`, `mongodb://127.0.0.1:PORT/..`).
pub fn upstream_of(url: &str) -> SocketAddr {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let host = rest.split(['/', '?']).next().unwrap_or_default();
    host.parse()
        .unwrap_or_else(|e| panic!("{url}: not an address with a port: {e}"))
}

/// One row's set-up: a proxy, the backend through it, a fresh lock name, and an observer that
/// keeps trying to take the lock from the direct backend.
struct Row {
    what: String,
    proxy: FaultProxy,
    backend: Arc<dyn Backend>,
    target: Arc<Target>,
    name: LockName,
    /// The faulted holder's lease end on this machine's clock, while it holds the lock.
    holder: Arc<Mutex<Option<dlock_runtime::LockHandle>>>,
    violations: Arc<Mutex<Vec<String>>>,
    observer_takes: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    observer: Option<tokio::task::JoinHandle<()>>,
}

impl Row {
    async fn new(target: &Arc<Target>, what: &str) -> Row {
        let proxy = FaultProxy::start(target.upstream);
        let backend = (target.through)(&proxy);
        let name = LockName::new(crate::fresh_name(&format!("faults-{what}"))).expect("name");
        // First use: connects, checks the bucket. Faults come after.
        backend
            .inspect(&name)
            .await
            .unwrap_or_else(|e| panic!("{}: {what}: first use: {e}", target.name));
        let mut row = Row {
            what: format!("{}: {what}", target.name),
            proxy,
            backend,
            target: target.clone(),
            name,
            holder: Arc::default(),
            violations: Arc::default(),
            observer_takes: Arc::default(),
            stop: Arc::default(),
            observer: None,
        };
        row.observer = Some(row.observe());
        row
    }

    /// The observer: another process trying for the lock every 100 ms. Taking it while the
    /// holder's lease is valid on the holder's own clock is a violation.
    fn observe(&self) -> tokio::task::JoinHandle<()> {
        let (direct, name) = (self.target.direct.clone(), self.name.clone());
        let (holder, violations, takes, stop) = (
            self.holder.clone(),
            self.violations.clone(),
            self.observer_takes.clone(),
            self.stop.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                // It waits long enough to take over a record left behind (after a whole lease).
                let attempt = Lock::new(name.as_str())
                    .ttl(TTL)
                    .timeout(TTL * 2)
                    .acquire_on(direct.clone())
                    .await;
                if let Ok(guard) = attempt {
                    // The observer had the lock by now: the holder's lease must have ended.
                    let taken = Instant::now();
                    let current = holder.lock().expect("holder").clone();
                    if let Some(h) = current
                        && h.valid_until().is_some_and(|until| until > taken)
                    {
                        violations.lock().expect("violations").push(format!(
                            "another process took the lock {:?} before the holder's lease ended",
                            h.valid_until().map(|until| until - taken)
                        ));
                    }
                    takes.fetch_add(1, Ordering::SeqCst);
                    let _ = guard.release().await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    }

    fn lock(&self) -> Lock {
        Lock::new(self.name.as_str())
            .ttl(TTL)
            .call_timeout(CALL_TIMEOUT)
    }

    /// Takes the lock through the proxy, waiting up to `timeout`, and shows the observer the
    /// holder.
    async fn take(&self, timeout: Duration) -> Result<LockGuard, Error> {
        let guard = self
            .lock()
            .timeout(timeout)
            .acquire_on(self.backend.clone())
            .await?;
        *self.holder.lock().expect("holder") = Some(guard.handle());
        Ok(guard)
    }

    /// Releases the holder's guard; the observer may take the lock from now on.
    async fn release(&self, guard: LockGuard) -> Result<(), Error> {
        *self.holder.lock().expect("holder") = None;
        guard.release().await
    }

    /// Faults the next `n` lock requests.
    fn arm(&self, fault: Fault, n: usize) {
        self.proxy.arm_matching(fault, n, self.target.requests);
    }

    /// Makes the next lock request's answer come with `fault`: on a multiplexed connection,
    /// where that request cannot be told apart, every answer until the mode is set back.
    fn slow_next(&self, fault: Fault) {
        if self.target.multiplexed {
            self.proxy.set_mode(Mode::Random {
                seed: 1,
                rate: 1.0,
                kinds: vec![fault],
            });
        } else {
            self.arm(fault, 1);
        }
    }

    /// The lock is free (or taken) by `limit` from now: nothing of this row stays stranded.
    async fn assert_not_stranded(&self, limit: Duration) {
        let start = Instant::now();
        loop {
            let held = self.target.direct.inspect(&self.name).await;
            match held {
                Ok(None) => return,
                _ if self.observer_takes.load(Ordering::SeqCst) > 0 && start.elapsed() > limit => {
                    return;
                }
                Ok(Some(h)) if start.elapsed() > limit => {
                    panic!(
                        "{}: stranded: still held by {} after {limit:?}",
                        self.what, h.owner
                    )
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Ends the row: stops the observer and reports any violation.
    async fn finish(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(observer) = self.observer.take() {
            observer.await.expect("observer");
        }
        let violations = self.violations.lock().expect("violations").clone();
        assert!(violations.is_empty(), "{}: {violations:#?}", self.what);
        eprintln!("{}: faults injected {:?}", self.what, self.proxy.counts());
    }
}

/// Asserts `result` is a clear, temporary "no answer"/"cannot reach" error that came within
/// `timeout` plus the slack.
fn assert_clear_failure<T>(
    what: &str,
    result: Result<T, Error>,
    started: Instant,
    timeout: Duration,
) {
    let took = started.elapsed();
    let err = match result {
        Ok(_) => panic!("{what}: succeeded"),
        Err(e) => e,
    };
    assert!(
        took <= timeout + SLACK,
        "{what}: the error came after {took:?}, more than {timeout:?} + {SLACK:?}: {err}"
    );
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{what}: {err}");
    let text = err.to_string();
    assert!(
        text.contains("no answer") || text.contains("cannot reach"),
        "{what}: the error says what happened: {text}"
    );
}

/// Lost answers, `n` in a row (1 to 3), on acquire: the lock is ours exactly once, and free
/// after its release. Then, with the store out of reach, the holder's lease (dated from its
/// first write, whose answer was lost) must end before the observer can take the lock over.
pub async fn lost_acquire_answers(target: Arc<Target>) {
    for n in 1..=3 {
        let row = Row::new(&target, &format!("{n} acquire answers lost")).await;
        row.arm(Fault::DropAnswer, n);
        let guard = row
            .take(Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", row.what));
        assert!(!guard.is_lost(), "{}", row.what);
        tokio::time::sleep(Duration::from_millis(300)).await;
        row.release(guard)
            .await
            .unwrap_or_else(|e| panic!("{}: release: {e}", row.what));
        row.assert_not_stranded(Duration::from_secs(1)).await;
        row.finish().await;

        let row = Row::new(&target, &format!("{n} acquire answers lost, then cut off")).await;
        row.arm(Fault::DropAnswer, n);
        let guard = row
            .take(Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", row.what));
        row.proxy.set_mode(crate::fault_proxy::Mode::Blackhole);
        row.proxy.disconnect_all();
        row.assert_not_stranded(TTL + Duration::from_secs(3)).await;
        assert!(guard.is_lost(), "{}: taken over, not lost", row.what);
        drop(guard);
        row.proxy.heal();
        row.finish().await;
    }
}

/// Lost answers on renewals: the holder keeps the lock, or knows it lost it before anyone
/// takes it over.
pub async fn lost_renewal_answers(target: Arc<Target>) {
    for n in 1..=3 {
        let row = Row::new(&target, &format!("{n} renewal answers lost")).await;
        let guard = row.take(TTL * 3).await.expect("acquire");
        row.arm(Fault::DropAnswer, n);
        tokio::time::sleep(TTL * 3 / 2).await;
        let result = row.release(guard).await;
        if let Err(e) = &result {
            assert!(matches!(e, Error::Lost { .. }), "{}: {e}", row.what);
        }
        row.assert_not_stranded(TTL + Duration::from_secs(2)).await;
        row.finish().await;
    }
}

/// Lost answers on release: the release is retried and the lock is free at once after.
pub async fn lost_release_answers(target: Arc<Target>) {
    for n in 1..=3 {
        let row = Row::new(&target, &format!("{n} release answers lost")).await;
        let guard = row.take(TTL * 3).await.expect("acquire");
        row.arm(Fault::DropAnswer, n);
        let started = Instant::now();
        row.release(guard)
            .await
            .unwrap_or_else(|e| panic!("{}: release: {e}", row.what));
        assert!(started.elapsed() <= CALL_TIMEOUT + SLACK, "{}", row.what);
        row.assert_not_stranded(Duration::from_secs(1)).await;
        row.finish().await;
    }
}

/// Connections reset on acquire, renewal and release: retried; nothing stranded.
pub async fn resets(target: Arc<Target>) {
    let row = Row::new(&target, "resets").await;
    row.arm(Fault::Reset, 2);
    let guard = row.take(Duration::from_secs(20)).await.expect("acquire");
    row.arm(Fault::Reset, 2);
    tokio::time::sleep(TTL).await;
    row.arm(Fault::Reset, 2);
    let result = row.release(guard).await;
    if let Err(e) = &result {
        assert!(matches!(e, Error::Lost { .. }), "{}: {e}", row.what);
    }
    row.assert_not_stranded(Duration::from_secs(1)).await;
    row.finish().await;
}

/// Slow answers: a late answer within the call's bound is fine; one past it is abandoned, the
/// caller gets a clear error in time, and the write that landed meanwhile is undone.
pub async fn slow_answers(target: Arc<Target>) {
    let row = Row::new(&target, "slow answers").await;
    let slow = Fault::DelayAnswer(Duration::from_millis(300));
    row.slow_next(slow);
    let guard = row.take(Duration::from_secs(5)).await.expect("acquire");
    row.proxy.set_mode(Mode::Pass);
    row.slow_next(slow);
    row.release(guard).await.expect("release");
    row.proxy.set_mode(Mode::Pass);
    row.assert_not_stranded(Duration::from_secs(1)).await;
    row.finish().await;

    let row = Row::new(&target, "an answer later than the timeout").await;
    row.slow_next(Fault::DelayAnswer(Duration::from_secs(4)));
    let started = Instant::now();
    let result = row
        .lock()
        .timeout(Duration::from_secs(1))
        .call_timeout(Duration::from_secs(1))
        .acquire_on(row.backend.clone())
        .await;
    assert_clear_failure(&row.what, result, started, Duration::from_secs(1));
    row.proxy.set_mode(Mode::Pass);
    // The write reached the store before its answer was held: the acquisition cleans it up.
    row.assert_not_stranded(Duration::from_secs(2)).await;
    row.finish().await;
}

/// A server that accepts and never answers: acquire fails in time with a clear error; a held
/// lease is marked lost at its deadline, before anyone takes it over; release returns within
/// its own bound, and the record is taken over after its lease.
pub async fn blackhole(target: Arc<Target>) {
    let row = Row::new(&target, "blackholed acquire").await;
    row.proxy.set_mode(crate::fault_proxy::Mode::Blackhole);
    let started = Instant::now();
    let result = row
        .lock()
        .timeout(Duration::from_secs(1))
        .acquire_on(row.backend.clone())
        .await;
    assert_clear_failure(&row.what, result, started, Duration::from_secs(1));
    row.proxy.heal();
    row.proxy.disconnect_all();
    row.assert_not_stranded(TTL + Duration::from_secs(2)).await;
    row.finish().await;

    let row = Row::new(&target, "blackholed renewal and release").await;
    let guard = row.take(TTL * 3).await.expect("acquire");
    let valid_until = guard.valid_until().expect("a lease");
    row.proxy.set_mode(crate::fault_proxy::Mode::Blackhole);
    row.proxy.disconnect_all();
    let handle = guard.handle();
    tokio::time::timeout(TTL * 2, handle.lost())
        .await
        .unwrap_or_else(|_| panic!("{}: the lease was not marked lost", row.what));
    let late = Instant::now().saturating_duration_since(valid_until);
    assert!(
        late < Duration::from_millis(500),
        "{}: marked lost {late:?} after its deadline",
        row.what
    );
    let started = Instant::now();
    let result = row.release(guard).await;
    assert!(
        matches!(result, Err(Error::Lost { .. })),
        "{}: {result:?}",
        row.what
    );
    assert!(started.elapsed() <= CALL_TIMEOUT + SLACK, "{}", row.what);
    row.proxy.heal();
    row.proxy.disconnect_all();
    row.assert_not_stranded(TTL + Duration::from_secs(2)).await;
    row.finish().await;

    let row = Row::new(&target, "blackholed release").await;
    let guard = row.take(TTL * 3).await.expect("acquire");
    row.proxy.set_mode(crate::fault_proxy::Mode::Blackhole);
    row.proxy.disconnect_all();
    let started = Instant::now();
    let result = row.release(guard).await;
    assert!(result.is_err(), "{}: a release nobody answered", row.what);
    assert!(
        started.elapsed() <= CALL_TIMEOUT + SLACK,
        "{}: release took {:?}",
        row.what,
        started.elapsed()
    );
    row.proxy.heal();
    row.proxy.disconnect_all();
    row.assert_not_stranded(TTL + Duration::from_secs(3)).await;
    row.finish().await;
}

/// Throttling and server errors (HTTP stores): retried on acquire, renewal and release. Stores
/// that do not speak HTTP have no such answers to inject; the row says so.
pub async fn throttled(target: Arc<Target>) {
    if !target.http {
        eprintln!(
            "{}: throttled: not applicable (not an HTTP store; its errors are covered by resets and lost answers)",
            target.name
        );
        return;
    }
    let row = Row::new(&target, "throttled").await;
    row.arm(Fault::HttpStatus(503), 2);
    let guard = row
        .take(Duration::from_secs(20))
        .await
        .expect("acquire after 503s");
    row.arm(Fault::HttpStatus(429), 2);
    tokio::time::sleep(TTL).await;
    assert!(
        !guard.is_lost(),
        "{}: 429s on renewal lost the lease",
        row.what
    );
    row.arm(Fault::HttpStatus(500), 2);
    row.release(guard).await.expect("release after 500s");
    row.assert_not_stranded(Duration::from_secs(1)).await;
    row.finish().await;
}

/// One `#[tokio::test]` per row of the fault matrix, for the [`Target`] that `$make` builds.
#[macro_export]
macro_rules! fault_matrix_tests {
    ($make:expr) => {
        mod fault_matrix {
            #[allow(unused_imports)]
            use super::*;
            $crate::fault_matrix_tests!(@rows $make; lost_acquire_answers, lost_renewal_answers,
                lost_release_answers, resets, slow_answers, blackhole, throttled);
        }
    };
    (@rows $make:expr; $($row:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $row() {
                $crate::fault_matrix::$row(::std::sync::Arc::new($make)).await;
            }
        )*
    };
}
