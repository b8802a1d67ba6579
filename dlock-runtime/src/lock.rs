//! Taking a lock: the local queue, then the one acquire loop every backend shares.

use crate::backend::{AcquireOutcome, AcquireRequest, Backend, Holder, Lease, Owner, Version};
use crate::background::Background;
use crate::calls::Caller;
use crate::error::Operation;
use crate::guard::LockGuard;
use crate::local;
use crate::registry::{DEFAULT_CALL_TIMEOUT, DEFAULT_TTL, Defaults, Registry};
use crate::schedule::Schedule;
use crate::time::after;
use crate::{Backoff, Error, LockName};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A lock to take from code, without the attribute. The attribute expands to the same calls.
///
/// Unset options come from the registry's defaults: one attempt (`timeout` zero), a
/// [`DEFAULT_TTL`](crate::DEFAULT_TTL) lease, no `min_hold`.
///
/// ```
/// use dlock_runtime::{Lock, MemoryBackend, Registry};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), dlock_runtime::Error> {
/// let registry = Registry::builder().backend("memory", MemoryBackend::new()).build()?;
/// registry
///     .scope(async {
///         let guard = Lock::new("deploy-prod")
///             .timeout(Duration::from_secs(5))
///             .ttl(Duration::from_secs(30))
///             .acquire()
///             .await?;
///         assert_eq!(guard.name().as_str(), "deploy-prod");
///         guard.release().await
///     })
///     .await
/// # }
/// ```
#[derive(Clone, Debug)]
#[must_use = "a Lock does nothing until acquired"]
pub struct Lock {
    name: String,
    backend: Option<String>,
    timeout: Option<Duration>,
    ttl: Option<Duration>,
    min_hold: Option<Duration>,
    backoff: Option<Backoff>,
    call_timeout: Option<Duration>,
    background: Background,
}

/// A lock's options after defaults were applied.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub name: LockName,
    pub timeout: Duration,
    pub ttl: Duration,
    pub min_hold: Duration,
    pub backoff: Backoff,
    pub call_timeout: Duration,
    pub background: Background,
}

/// The shortest time an attempt may take when the acquire deadline is close: the last attempt
/// before the timeout still gets a fair chance to be answered.
const ATTEMPT_FLOOR: Duration = Duration::from_secs(1);

/// How long a waiter blocked on a backend's notifications goes without looking at the lock
/// itself, in case a notification was lost.
const NOTIFIED_RECHECK: Duration = Duration::from_secs(10);

impl Lock {
    /// A lock called `name` (validated when acquired).
    pub fn new(name: impl Into<String>) -> Self {
        Lock {
            name: name.into(),
            backend: None,
            timeout: None,
            ttl: None,
            min_hold: None,
            backoff: None,
            call_timeout: None,
            background: Background::default(),
        }
    }

    /// Uses the registry's backend called `backend` instead of the default one.
    pub fn backend(mut self, backend: impl Into<String>) -> Self {
        self.backend = Some(backend.into());
        self
    }

    /// How long to wait for the lock; zero makes one attempt, and [`Duration::MAX`] (or
    /// [`wait_forever`](Lock::wait_forever)) waits without limit.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Waits for the lock without limit (`timeout = "forever"` in the attribute).
    pub fn wait_forever(self) -> Self {
        self.timeout(Duration::MAX)
    }

    /// The lease: how long the lock outlives a holder that died. Renewed in the background
    /// while held.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Keeps the lock at least this long after it was acquired, even if released earlier.
    pub fn min_hold(mut self, min_hold: Duration) -> Self {
        self.min_hold = Some(min_hold);
        self
    }

    /// The backoff between attempts (overrides the registry's).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = Some(backoff);
        self
    }

    /// The longest one backend call may take before it is abandoned (and, for a write,
    /// resolved by reading the record back); a release keeps retrying for this long. Default:
    /// the registry's, or 10 s.
    pub fn call_timeout(mut self, call_timeout: Duration) -> Self {
        self.call_timeout = Some(call_timeout);
        self
    }

    /// Runs renewals and remote calls on `handle` instead of dlock's own runtime. For tests on
    /// tokio's paused clock only: a runtime that a locked body can block would starve the
    /// renewals.
    #[doc(hidden)]
    pub fn background_runtime(mut self, handle: tokio::runtime::Handle) -> Self {
        self.background = Background::on(handle);
        self
    }

    /// Takes the lock from the current registry's backend.
    pub async fn acquire(self) -> Result<LockGuard, Error> {
        let (backend, settings) = self.resolve()?;
        acquire(backend, settings, false).await
    }

    /// One attempt, for "skip if busy": `Ok(None)` when someone else holds the lock, whatever
    /// `timeout` says.
    ///
    /// ```
    /// use dlock_runtime::{Lock, MemoryBackend, Registry};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), dlock_runtime::Error> {
    /// let registry = Registry::builder().backend("memory", MemoryBackend::new()).build()?;
    /// registry
    ///     .scope(async {
    ///         let first = Lock::new("nightly").try_acquire().await?.expect("free");
    ///         assert!(Lock::new("nightly").try_acquire().await?.is_none(), "busy: skip");
    ///         first.release().await
    ///     })
    ///     .await
    /// # }
    /// ```
    pub async fn try_acquire(self) -> Result<Option<LockGuard>, Error> {
        skip_if_busy(self.timeout(Duration::ZERO).acquire().await)
    }

    /// Takes the lock from synchronous code, inside or outside a tokio runtime: the attempts
    /// run on dlock's background runtime while this thread waits.
    pub fn acquire_blocking(self) -> Result<LockGuard, Error> {
        let (backend, settings) = self.resolve()?;
        local::check_blocking_wait(&backend, &settings.name, settings.timeout)?;
        crate::background::block_on(acquire(backend, settings, true))?
    }

    /// [`try_acquire`](Lock::try_acquire) for synchronous code.
    pub fn try_acquire_blocking(self) -> Result<Option<LockGuard>, Error> {
        skip_if_busy(self.timeout(Duration::ZERO).acquire_blocking())
    }

    /// Takes the lock from `backend`, bypassing the registry (the conformance suite uses this).
    pub async fn acquire_on(self, backend: Arc<dyn Backend>) -> Result<LockGuard, Error> {
        let defaults = Defaults {
            timeout: Duration::ZERO,
            ttl: DEFAULT_TTL,
            backoff: Backoff::default(),
            call_timeout: DEFAULT_CALL_TIMEOUT,
        };
        let settings = self.settings(&defaults)?;
        acquire(backend, settings, false).await
    }

    fn resolve(self) -> Result<(Arc<dyn Backend>, Settings), Error> {
        let registry = Registry::current()?;
        let backend = registry.backend(self.backend.as_deref())?;
        Ok((backend, self.settings(registry.defaults())?))
    }

    fn settings(self, defaults: &Defaults) -> Result<Settings, Error> {
        let ttl = self.ttl.unwrap_or(defaults.ttl);
        let name = LockName::new(self.name)?;
        let config = |message: String| Error::Config { message };
        if ttl < Duration::from_millis(3) {
            return Err(config(format!(
                "lock `{name}`: ttl must be at least 3ms (it is renewed every third of it)"
            )));
        }
        let call_timeout = self.call_timeout.unwrap_or(defaults.call_timeout);
        if call_timeout.is_zero() {
            return Err(config(format!(
                "lock `{name}`: the call timeout must be greater than zero"
            )));
        }
        Ok(Settings {
            name,
            timeout: self.timeout.unwrap_or(defaults.timeout),
            ttl,
            min_hold: self.min_hold.unwrap_or_default(),
            backoff: self.backoff.unwrap_or_else(|| defaults.backoff.clone()),
            call_timeout,
            background: self.background,
        })
    }
}

fn skip_if_busy(result: Result<LockGuard, Error>) -> Result<Option<LockGuard>, Error> {
    match result {
        Ok(guard) => Ok(Some(guard)),
        Err(Error::Busy { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Takes a lock: first this process's queue for the name (first come, first served; only its
/// head talks to the backend), then the backend.
pub(crate) async fn acquire(
    backend: Arc<dyn Backend>,
    s: Settings,
    blocking: bool,
) -> Result<LockGuard, Error> {
    let caller = Caller::new(backend, s.background.clone(), s.call_timeout);
    if crate::guard::held_by_caller(caller.id(), &s.name) {
        return Err(Error::Reentrant {
            name: s.name.to_string(),
        });
    }
    let start = Instant::now();
    let deadline = after(start, s.timeout);
    let entry = local::entry(caller.id(), &s.name);
    let permit = entry
        .enter(deadline, blocking)
        .await
        .map_err(|holder| give_up(&*caller.backend, &s, holder, None, start.elapsed()))?;
    loop {
        let (lease, lease_start) = acquire_loop(&caller, &s, start, deadline).await?;
        if let Some((lease, lease_start)) = confirm_fresh(&caller, &s, lease, lease_start).await {
            permit.holds(lease.holder());
            return LockGuard::start(caller, lease, lease_start, &s, permit).await;
        }
        if Instant::now() >= deadline {
            return Err(Error::temporary(
                caller.backend.kind(),
                format!(
                    "lock `{}`: the store answered so slowly that the lease had run out before \
                     the acquisition was confirmed, and it could not be renewed",
                    s.name
                ),
                None,
            ));
        }
    }
}

/// A lease whose start is far in the past (its write's answer came very late, or was lost and
/// found only by a later read) may be nearly over before the caller sees it. Rather than hand
/// out a guard that is lost at once, renew it first (dating it from the renewal); `None` if
/// that is refused: the lock is someone else's by now.
async fn confirm_fresh(
    caller: &Caller,
    s: &Settings,
    lease: Lease,
    lease_start: Instant,
) -> Option<(Lease, Instant)> {
    let leases = caller.backend.capabilities().leases;
    let fresh_until = after(lease_start, crate::time::scale(lease.ttl, 2, 3));
    if !leases || Instant::now() < fresh_until {
        return Some((lease, lease_start));
    }
    let sent = Instant::now();
    let (current, ttl, name) = (lease.clone(), lease.ttl, lease.name.clone());
    let renewed = caller
        .call(
            Operation::Renew,
            &name,
            caller.deadline(after(sent, s.call_timeout)),
            move |b| async move { b.renew(&current, ttl).await },
        )
        .await;
    match renewed {
        Ok(renewed) => Some((renewed, sent)),
        Err(e) => {
            tracing::warn!(lock = %s.name, error = %e, "a late acquisition could not be renewed; trying again");
            None
        }
    }
}

/// A holder version being watched: if it stays the same for the holder's whole lease on our
/// monotonic clock, the holder is presumed dead and its record may be replaced.
struct Watch {
    version: Version,
    since: Instant,
    lease: Duration,
}

impl Watch {
    fn stale_at(&self) -> Instant {
        after(self.since, self.lease)
    }
}

/// The attempts of one acquisition, and what must be cleaned up if it ends without the lock:
/// a write whose answer never came may have landed, and a cancelled call may still be running.
struct Attempts<'a> {
    caller: &'a Caller,
    name: LockName,
    owner: Owner,
    ttl: Duration,
    /// When the first write whose outcome is unknown was sent: if the record turns out to be
    /// ours, its lease may have started then.
    uncertain_since: Option<Instant>,
    /// A remote write still running (the caller stopped waiting for it).
    in_flight: Option<JoinHandle<Result<AcquireOutcome, Error>>>,
    /// The backend answered busy: it may keep a place in a queue for this owner.
    waited: bool,
    done: bool,
}

impl Attempts<'_> {
    /// When the lease of a record of ours began at the latest, on this machine's clock.
    fn lease_start(&self, sent: Instant) -> Instant {
        crate::rules::lease_start(self.uncertain_since, sent)
    }

    /// One conditional write, bounded by `deadline`.
    async fn write(
        &mut self,
        request: AcquireRequest,
        sent: Instant,
        deadline: Instant,
    ) -> Result<AcquireOutcome, Error> {
        let name = self.name.clone();
        let result = if self.caller.is_local() {
            let call = |b: Arc<dyn Backend>| async move { b.try_acquire(&request).await };
            self.caller
                .call(Operation::Acquire, &name, deadline, call)
                .await
        } else {
            let task = self
                .caller
                .start(|b: Arc<dyn Backend>| async move { b.try_acquire(&request).await })?;
            let task = self.in_flight.insert(task);
            match tokio::time::timeout_at(deadline, task).await {
                Ok(joined) => {
                    self.in_flight = None;
                    crate::background::joined(joined)
                        .and_then(|r| r)
                        .map_err(|e| e.during(Operation::Acquire, &name))
                }
                Err(_) => {
                    if let Some(task) = self.in_flight.take() {
                        task.abort();
                    }
                    Err(
                        crate::calls::no_answer(&*self.caller.backend, sent.elapsed())
                            .during(Operation::Acquire, &name),
                    )
                }
            }
        };
        if let Err(e) = &result {
            // No answer, or an error after the request may have reached the store: the write
            // may have landed. (A permanent error found before sending is harmless to count.)
            tracing::debug!(lock = %self.name, error = %e, "the outcome of a write is unknown");
            self.uncertain_since.get_or_insert(sent);
        }
        result
    }

    /// One read of the holder, bounded by `deadline`.
    async fn read(&self, deadline: Instant) -> Result<Option<Holder>, Error> {
        let name = self.name.clone();
        let call = move |b: Arc<dyn Backend>| async move { b.inspect(&name).await };
        self.caller
            .call(Operation::Inspect, &self.name, deadline, call)
            .await
    }
}

impl Drop for Attempts<'_> {
    fn drop(&mut self) {
        if self.done || !(self.waited || self.uncertain_since.is_some() || self.in_flight.is_some())
        {
            return;
        }
        let cleanup = cleanup(
            self.caller.clone(),
            self.name.clone(),
            self.owner.clone(),
            self.ttl,
            self.in_flight.take(),
            self.waited,
            self.uncertain_since.is_some(),
        );
        if let Err(e) = self.caller.background.spawn(cleanup) {
            tracing::error!(lock = %self.name, error = %e, "cannot clean up after an interrupted acquisition; a record of it may stay until its lease runs out");
        }
    }
}

/// After an acquisition ended without the lock (cancelled, given up, failed): give up its place
/// in the backend's queue, and if one of its writes may have landed, wait for a write still
/// running, then free any record that is ours.
async fn cleanup(
    caller: Caller,
    name: LockName,
    owner: Owner,
    ttl: Duration,
    in_flight: Option<JoinHandle<Result<AcquireOutcome, Error>>>,
    waited: bool,
    uncertain: bool,
) {
    if waited {
        let deadline = caller.deadline(Instant::now() + caller.call_timeout);
        let (n, o) = (name.clone(), owner.clone());
        let stop = caller.call(Operation::Acquire, &name, deadline, move |b| async move {
            b.stop_waiting(&n, &o).await
        });
        if let Err(e) = stop.await {
            tracing::debug!(lock = %name, error = %e, "could not give up a place in the queue");
        }
    }
    if !uncertain && in_flight.is_none() {
        return;
    }
    let lease = match in_flight {
        Some(task) => match task.await {
            Ok(Ok(AcquireOutcome::Acquired(lease))) => Some(lease),
            _ => None,
        },
        None => None,
    };
    let lease = match lease {
        Some(lease) => Some(lease),
        None => {
            let deadline = caller.deadline(Instant::now() + caller.call_timeout);
            let target = name.clone();
            let read = caller.call(Operation::Inspect, &name, deadline, move |b| async move {
                b.inspect(&target).await
            });
            match read.await {
                Ok(Some(h)) if h.owner.id == owner.id => {
                    Some(Lease::from_holder(name.clone(), h, ttl))
                }
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!(lock = %name, error = %e, "could not check for a record left by an interrupted acquisition; if one landed, it is taken over after its lease");
                    None
                }
            }
        }
    };
    if let Some(lease) = lease {
        let result = crate::guard::release_with_retries(&caller, &lease).await;
        match result {
            Ok(()) => {
                tracing::info!(lock = %name, "freed the record of an interrupted acquisition")
            }
            Err(e) => {
                tracing::warn!(lock = %name, error = %e, "could not free the record of an interrupted acquisition; it is taken over after its lease")
            }
        }
    }
}

/// Waits for the lock at the backend until `deadline`; returns the lease and when it began at
/// the latest on this machine's clock.
async fn acquire_loop(
    caller: &Caller,
    s: &Settings,
    start: Instant,
    deadline: Instant,
) -> Result<(Lease, Instant), Error> {
    let backend = &*caller.backend;
    let caps = backend.capabilities();
    let owner = Owner::generate();
    let mut attempts = Attempts {
        caller,
        name: s.name.clone(),
        owner: owner.clone(),
        ttl: s.ttl,
        uncertain_since: None,
        in_flight: None,
        waited: false,
        done: false,
    };
    let key = caller.backend();
    let mut poll = Schedule::new(&s.backoff, local::hold_estimate(key, &s.name));
    let mut watch: Option<Watch> = None;
    let mut replace: Option<Version> = None;
    let mut holder: Option<Holder> = None;
    let mut last_error: Option<Error>;
    let mut write = true;
    let mut announced = false;

    if !caps.fair_waiting
        && let Some(courtesy) = local::courtesy(key, &s.name)
    {
        // This process has just released a lock others were waiting for, and the store keeps
        // no queue: give a waiter that was woken by the release, or polls around it, the
        // chance to get it first.
        tokio::time::sleep_until(after(Instant::now(), courtesy).min(deadline)).await;
    }
    loop {
        let sent = Instant::now();
        let call_deadline = if s.timeout.is_zero() {
            caller.deadline(after(sent, s.call_timeout))
        } else {
            caller.deadline(deadline.max(after(sent, ATTEMPT_FLOOR)))
        };
        let answer = if write {
            let mut request = AcquireRequest::new(s.name.clone(), owner.clone(), s.ttl);
            request.replace = replace.take();
            let takeover = request.replace.clone();
            match attempts.write(request, sent, call_deadline).await {
                Ok(AcquireOutcome::Acquired(lease)) => {
                    if let Some(version) = takeover {
                        tracing::warn!(lock = %s.name, stale_version = %version, new_owner = %lease.owner.id,
                            "took over a stale lock: its record stayed unchanged for a whole lease");
                    }
                    if announced {
                        tracing::info!(lock = %s.name, waited = ?start.elapsed(), "acquired lock after waiting");
                    }
                    attempts.done = true;
                    return Ok((lease, attempts.lease_start(sent)));
                }
                Ok(AcquireOutcome::Busy(h)) => {
                    attempts.waited = true;
                    if takeover.is_some() {
                        // A refused takeover starts a fresh watch instead of spinning. (One
                        // that failed keeps its watch: the next look at the same version
                        // tries again at once, not a whole lease later.)
                        watch = None;
                    }
                    Ok(Some(h))
                }
                Err(e) => Err(e),
            }
        } else {
            attempts.read(call_deadline).await
        };

        match answer {
            Ok(Some(h)) if h.owner.id == owner.id => {
                // A write of ours whose answer was lost had landed: the lock is ours, and its
                // lease may have begun when that write was sent.
                tracing::info!(lock = %s.name, "a write whose answer was lost had taken the lock");
                attempts.done = true;
                let lease = Lease::from_holder(s.name.clone(), h, s.ttl);
                return Ok((lease, attempts.lease_start(sent)));
            }
            // A read saw the lock free: write at once.
            Ok(None) => {
                write = true;
                continue;
            }
            Ok(Some(h)) => {
                last_error = None;
                poll.observe(&h, sent.elapsed());
                local::saw_contention(key, &s.name, poll.hold(), poll.round_trip());
                if caps.leases {
                    match &watch {
                        Some(w) if w.version == h.version => {
                            if Instant::now() >= w.stale_at() {
                                replace = Some(h.version.clone());
                                write = true;
                                holder = Some(h);
                                continue;
                            }
                        }
                        _ => {
                            watch = Some(Watch {
                                version: h.version.clone(),
                                since: Instant::now(),
                                lease: h.ttl.unwrap_or(s.ttl),
                            })
                        }
                    }
                }
                if !announced && !s.timeout.is_zero() {
                    announced = true;
                    tracing::info!(lock = %s.name, holder = %h.owner, timeout = ?s.timeout, "waiting for lock");
                }
                holder = Some(h);
            }
            Err(e) if e.is_temporary() => {
                tracing::warn!(lock = %s.name, error = %e, "temporary backend error; retrying");
                last_error = Some(e);
            }
            Err(e) => return Err(e),
        }

        let now = Instant::now();
        if now >= deadline {
            return Err(give_up(backend, s, holder, last_error, now - start));
        }
        let notified = caps.notified_waiting && holder.is_some() && last_error.is_none();
        // A notified waiter sleeps until the backend says the lock changed; it still looks
        // now and then, in case a notification is lost. Others poll on a schedule learned from
        // the holds they see, or back off after a failure.
        let mut wake = if notified {
            after(now, NOTIFIED_RECHECK)
        } else if last_error.is_some() {
            poll.failed()
        } else {
            poll.next()
        };
        if let Some(w) = &watch {
            // Wake when the watched version would turn stale, not a step later.
            wake = wake.min(w.stale_at());
        }
        wake = wake.min(deadline);
        match &holder {
            Some(h) if notified => {
                let since = sent.into_std();
                let wait = caller.wait_for_change(&s.name, &h.version, since, wake);
                if let Err(e) = wait.await {
                    tracing::debug!(lock = %s.name, error = %e, "waiting for a change failed; polling");
                    tokio::time::sleep_until(wake).await;
                }
            }
            _ => tokio::time::sleep_until(wake).await,
        }
        // After a busy answer, poll with reads where the backend wants that; after a failure,
        // retry what failed.
        if last_error.is_none() {
            write = !caps.poll_with_reads;
        }
    }
}

fn give_up(
    backend: &dyn Backend,
    s: &Settings,
    holder: Option<Holder>,
    last_error: Option<Error>,
    waited: Duration,
) -> Error {
    if let Some(e) = last_error {
        return e;
    }
    let hint = backend.stale_lock_hint(&s.name, holder.as_ref());
    let name = s.name.to_string();
    let holder = holder.map(Box::new);
    if s.timeout.is_zero() {
        Error::Busy { name, holder, hint }
    } else {
        Error::Timeout {
            name,
            waited,
            holder,
            hint,
        }
    }
}

#[cfg(test)]
#[path = "lock_tests.rs"]
mod tests;
