//! Held locks: the guard, its renewal on dlock's background runtime, its release (which always
//! finishes, even when the caller is cancelled), and the handle the locked body can reach.

use crate::backend::Lease;
use crate::calls::Caller;
use crate::error::Operation;
use crate::local::Permit;
use crate::lock::Settings;
use crate::rules::{lease_span, renew_period};
use crate::time::after;
use crate::{Error, LockName};
use std::cell::RefCell;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, OnceLock};
use std::time::Duration;
use tokio::sync::{Mutex, Notify, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The locks held by the running task's locked bodies, innermost first.
#[derive(Debug)]
struct Chain {
    handle: LockHandle,
    outer: Option<Arc<Chain>>,
}

tokio::task_local! {
    static TASK_LOCKS: Arc<Chain>;
}

thread_local! {
    static THREAD_LOCKS: RefCell<Vec<LockHandle>> = const { RefCell::new(Vec::new()) };
}

/// What the guard, its renewal task and every handle share.
#[derive(Debug)]
struct Shared {
    caller: Caller,
    leases: bool,
    name: LockName,
    fencing_token: Option<u64>,
    ttl: Duration,
    min_hold: Duration,
    acquired: Instant,
    backoff: crate::Backoff,
    /// The lease as last written; renewal holds this while it talks to the backend, so a
    /// release never races a renewal with a stale version.
    lease: Mutex<Lease>,
    /// When the lease ends on this machine's clock, in nanoseconds after `acquired`; never
    /// later than the earliest moment a waiter may take the lock over.
    valid_until: AtomicU64,
    lost: watch::Sender<bool>,
    lost_reason: OnceLock<String>,
    stopping: AtomicBool,
    stop: Notify,
    /// This process's turn at the lock, handed to the next local waiter after the release.
    permit: StdMutex<Option<Permit>>,
}

impl Shared {
    fn valid_until(&self) -> Instant {
        let nanos = self.valid_until.load(Ordering::SeqCst);
        after(self.acquired, Duration::from_nanos(nanos))
    }

    fn set_valid_until(&self, until: Instant) {
        let nanos = until.saturating_duration_since(self.acquired).as_nanos();
        self.valid_until
            .store(u64::try_from(nanos).unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    fn is_lost(&self) -> bool {
        *self.lost.borrow() || (self.leases && Instant::now() >= self.valid_until())
    }

    /// Records the loss; this process's next waiter may now try the store, as any other
    /// process may.
    fn mark_lost(&self, why: &str) {
        if self.lost_reason.set(why.to_string()).is_ok() {
            tracing::error!(lock = %self.name, reason = why, "lost the lock");
        }
        self.lost.send_replace(true);
        self.end_turn();
    }

    fn min_hold_left(&self) -> Duration {
        self.min_hold.saturating_sub(self.acquired.elapsed())
    }

    fn stop_renewal(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.stop.notify_one();
    }

    /// Lets the next local waiter go.
    fn end_turn(&self) {
        let permit = self
            .permit
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if permit.is_some() {
            crate::local::released(self.caller.backend(), &self.name);
        }
    }
}

/// A held lock. Release it with [`release`](LockGuard::release) (or
/// [`release_blocking`](LockGuard::release_blocking)) to see the outcome; dropping it releases
/// too, in the background.
///
/// While held, backends with leases are renewed at about a third of the `ttl`, on dlock's own
/// background runtime (a body that blocks its thread cannot starve it). The lease's end on this
/// machine's clock is known at every moment ([`valid_until`](LockGuard::valid_until)), and
/// [`is_lost`](LockGuard::is_lost) turns true as soon as it passes without a confirmed renewal:
/// never later than the earliest moment another process may take the lock over.
///
/// ```
/// use dlock_runtime::{Lock, MemoryBackend};
/// use std::sync::Arc;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), dlock_runtime::Error> {
/// let backend = Arc::new(MemoryBackend::new());
/// let guard = Lock::new("nightly").acquire_on(backend.clone()).await?;
/// assert_eq!(guard.fencing_token(), Some(1));
/// assert!(!guard.is_lost());
/// guard.release().await?;
/// let again = Lock::new("nightly").acquire_on(backend).await?;
/// assert_eq!(again.fencing_token(), Some(2));
/// # drop(again);
/// # Ok(())
/// # }
/// ```
#[must_use = "the lock is released as soon as the guard is dropped"]
#[derive(Debug)]
pub struct LockGuard {
    shared: Arc<Shared>,
    renewer: Option<JoinHandle<()>>,
    done: bool,
}

/// How a release proceeds: already done, or in a background task.
enum Finish {
    Done(Result<(), Error>),
    Background(oneshot::Receiver<Result<(), Error>>),
}

impl LockGuard {
    /// Wraps a fresh lease whose lease began at `lease_start` at the latest (on this machine's
    /// clock) and starts its renewal on the background runtime; if renewal cannot be started,
    /// the lock is released and the acquisition fails.
    pub(crate) async fn start(
        caller: Caller,
        lease: Lease,
        lease_start: Instant,
        s: &Settings,
        permit: Permit,
    ) -> Result<Self, Error> {
        let leases = caller.backend.capabilities().leases;
        let acquired = Instant::now().min(lease_start);
        let shared = Arc::new(Shared {
            caller,
            leases,
            name: lease.name.clone(),
            fencing_token: lease.fencing_token,
            ttl: lease.ttl,
            min_hold: s.min_hold,
            acquired,
            backoff: s.backoff.clone(),
            lease: Mutex::new(lease),
            valid_until: AtomicU64::new(u64::MAX),
            lost: watch::channel(false).0,
            lost_reason: OnceLock::new(),
            stopping: AtomicBool::new(false),
            stop: Notify::new(),
            permit: StdMutex::new(Some(permit)),
        });
        let mut renewer = None;
        if leases {
            shared.set_valid_until(after(lease_start, lease_span(shared.ttl)));
            match shared
                .caller
                .background
                .spawn(renew(shared.clone(), lease_start))
            {
                Ok(task) => renewer = Some(task),
                Err(e) => {
                    let lease = shared.lease.lock().await.clone();
                    if let Err(release) = release_with_retries(&shared.caller, &lease).await {
                        tracing::warn!(lock = %shared.name, error = %release, "could not free a lock whose renewal could not start; it is taken over after its lease");
                    }
                    shared.end_turn();
                    return Err(e);
                }
            }
        }
        Ok(LockGuard {
            shared,
            renewer,
            done: false,
        })
    }

    /// The lock name.
    pub fn name(&self) -> &LockName {
        &self.shared.name
    }

    /// This acquisition's fencing token, where the backend issues them: pass it to the
    /// resource you protect so it can reject writes from an older holder.
    pub fn fencing_token(&self) -> Option<u64> {
        self.shared.fencing_token
    }

    /// Whether the lease was lost: it ran out on this machine's clock before a renewal was
    /// confirmed, or someone else holds the lock now. Computed from the lease's end, so it is
    /// right even when the renewal task is late.
    pub fn is_lost(&self) -> bool {
        self.shared.is_lost()
    }

    /// When the lease ends on this machine's monotonic clock unless renewed (`None` for
    /// backends without leases, whose locks last as long as their holder).
    pub fn valid_until(&self) -> Option<std::time::Instant> {
        self.handle().valid_until()
    }

    /// A cheap handle to this lock's state, for code that runs while it is held.
    pub fn handle(&self) -> LockHandle {
        LockHandle {
            shared: self.shared.clone(),
        }
    }

    /// Releases the lock and reports the outcome: [`Error::Lost`] if the lease was lost before
    /// the release began (it ran out, or someone else holds the lock), in which case the record
    /// is not touched: the body may have overlapped with another holder. With `min_hold` time
    /// left, the lock is left to expire then (lease backends) or freed then in the background
    /// (others); this returns at once either way.
    ///
    /// Cancellation-safe: if this future is dropped, the release still completes in the
    /// background.
    pub async fn release(mut self) -> Result<(), Error> {
        match self.finish() {
            Finish::Done(result) => result,
            Finish::Background(outcome) => outcome.await.unwrap_or_else(|_| Err(vanished())),
        }
    }

    /// [`release`](LockGuard::release) for synchronous code, inside or outside a runtime.
    pub fn release_blocking(mut self) -> Result<(), Error> {
        match self.finish() {
            Finish::Done(result) => result,
            Finish::Background(outcome) => {
                crate::background::block_on(outcome)?.unwrap_or_else(|_| Err(vanished()))
            }
        }
    }

    fn finish(&mut self) -> Finish {
        self.done = true;
        let shared = self.shared.clone();
        let renewer = self.renewer.take();
        shared.stop_renewal();
        // The fast path: a release that is a local system call or map removal, made here.
        if shared.caller.is_local()
            && shared.min_hold_left().is_zero()
            && let Ok(lease) = shared.lease.try_lock()
            && let Some(result) = release_at_once(&shared, &lease)
        {
            drop(lease);
            if let Some(task) = renewer {
                task.abort();
            }
            shared.end_turn();
            return Finish::Done(result);
        }
        let (tell, outcome) = oneshot::channel();
        match shared
            .caller
            .background
            .clone()
            .spawn(release(shared.clone(), renewer, tell))
        {
            Ok(_) => Finish::Background(outcome),
            Err(e) => {
                shared.end_turn();
                Finish::Done(Err(e))
            }
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let name = self.shared.name.clone();
        match self.finish() {
            Finish::Done(result) => log_release(&name, &result),
            // The background task logs its own outcome.
            Finish::Background(_) => {}
        }
    }
}

fn log_release(name: &LockName, result: &Result<(), Error>) {
    match result {
        Ok(()) => tracing::debug!(lock = %name, "released lock"),
        Err(e) if e.kind() == crate::ErrorKind::Lost => {
            tracing::warn!(lock = %name, error = %e, "the lock was lost before its release")
        }
        Err(e) => tracing::error!(lock = %name, error = %e, "releasing the lock failed"),
    }
}

/// Frees the lock without I/O waits where the backend can (a local backend with nothing left
/// of `min_hold`); a lost lease is left alone.
fn release_at_once(shared: &Shared, lease: &Lease) -> Option<Result<(), Error>> {
    if shared.is_lost() {
        return Some(Err(lost(shared)));
    }
    shared.caller.backend.release_now(lease)
}

fn lost(shared: &Shared) -> Error {
    Error::Lost {
        name: shared.name.to_string(),
    }
}

/// The release, on the background runtime: it runs to the end even if nobody waits for it,
/// and logs its outcome when nobody does.
async fn release(
    shared: Arc<Shared>,
    renewer: Option<JoinHandle<()>>,
    tell: oneshot::Sender<Result<(), Error>>,
) {
    // Waits for a renewal in flight, so the release is conditional on the newest version.
    let lease = shared.lease.lock().await.clone();
    if let Some(task) = renewer {
        task.abort();
    }
    let result = release_lease(&shared, lease).await;
    if let Err(unheard) = tell.send(result) {
        log_release(&shared.name, &unheard);
    }
}

fn vanished() -> Error {
    Error::Config {
        message:
            "dlock's background release task ended without an outcome (its runtime shut down?)"
                .into(),
    }
}

async fn release_lease(shared: &Arc<Shared>, lease: Lease) -> Result<(), Error> {
    if shared.is_lost() {
        // Never touch a record that may be someone else's now: a lost lease is left to
        // expire, even where the store would refuse a stale delete anyway.
        shared.end_turn();
        return Err(lost(shared));
    }
    let left = shared.min_hold_left();
    if left.is_zero() {
        let result = match release_with_retries(&shared.caller, &lease).await {
            // The lease was valid when the release began, so the body ran under it. A record
            // that is someone else's now was freed by this release (whose answer was lost, the
            // client retried, and another owner came in between), or taken over after the
            // lease ended: either way, nothing was lost while the body ran.
            Err(Error::Lost { .. }) => {
                tracing::debug!(lock = %shared.name, "the lock is someone else's now; released");
                Ok(())
            }
            other => other,
        };
        shared.end_turn();
        return result;
    }
    if shared.leases {
        // Leave the record with a lease of what is left of `min_hold`: waiters take it over
        // only after seeing it unchanged that long, on their own clocks.
        let (ttl, name) = (left, lease.name.clone());
        let deadline = shared.caller.deadline(after(Instant::now(), left));
        let result = shared
            .caller
            .call(Operation::Release, &name, deadline, move |b| async move {
                b.renew(&lease, ttl).await.map(drop)
            })
            .await;
        shared.end_turn();
        tracing::debug!(lock = %shared.name, left = ?left, "left the lock to expire after min_hold");
        return result;
    }
    // An OS lock has no lease to leave behind: keep it until `min_hold` ends, in the
    // background, and return now.
    let keeper = {
        let shared = shared.clone();
        async move {
            tokio::time::sleep(left).await;
            let result = release_with_retries(&shared.caller, &lease).await;
            shared.end_turn();
            log_release(&shared.name, &result);
        }
    };
    if let Err(e) = shared.caller.background.spawn(keeper) {
        shared.end_turn();
        return Err(e);
    }
    Ok(())
}

/// Frees `lease`, retrying temporary failures until the call timeout has passed in all.
pub(crate) async fn release_with_retries(caller: &Caller, lease: &Lease) -> Result<(), Error> {
    let limit = after(Instant::now(), caller.call_timeout);
    let mut delays = crate::Backoff::default().delays();
    loop {
        let lease = lease.clone();
        let name = lease.name.clone();
        let result = caller
            .call(
                Operation::Release,
                &name,
                caller.deadline(limit),
                move |b| async move { b.release(&lease).await },
            )
            .await;
        match result {
            Err(e) if e.is_temporary() => {
                let wait = delays.next_delay();
                if after(Instant::now(), wait) >= limit {
                    return Err(e);
                }
                tracing::warn!(lock = %name, error = %e, "release failed; retrying");
                tokio::time::sleep(wait).await;
            }
            other => return other,
        }
    }
}

/// Renews the lease at about a third of its ttl until released. A renewal whose answer does
/// not come counts as maybe written: the next confirmed one dates the lease from it.
async fn renew(shared: Arc<Shared>, lease_start: Instant) {
    let period = renew_period(shared.ttl);
    let mut last_start = lease_start;
    let mut uncertain_since: Option<Instant> = None;
    let mut retries: Option<crate::Delays> = None;
    loop {
        let valid_until = shared.valid_until();
        let wake = match &mut retries {
            None => after(last_start, period),
            Some(delays) => after(Instant::now(), delays.next_delay().min(period)),
        }
        .min(valid_until);
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = shared.stop.notified() => {}
        }
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let mut lease = shared.lease.lock().await;
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let valid_until = shared.valid_until();
        if Instant::now() >= valid_until {
            shared.mark_lost("the lease ran out before a renewal was confirmed");
            return;
        }
        let sent = Instant::now();
        let (current, ttl) = (lease.clone(), shared.ttl);
        let result = shared
            .caller
            .call(
                Operation::Renew,
                &shared.name,
                shared.caller.deadline(valid_until),
                move |b| async move { b.renew(&current, ttl).await },
            )
            .await;
        match result {
            Ok(renewed) => {
                *lease = renewed;
                let started = crate::rules::lease_start(uncertain_since.take(), sent);
                shared.set_valid_until(after(started, lease_span(shared.ttl)));
                last_start = started;
                retries = None;
            }
            Err(e @ Error::Lost { .. }) => {
                shared.mark_lost(&e.to_string());
                return;
            }
            Err(e) if e.is_temporary() => {
                uncertain_since.get_or_insert(sent);
                tracing::warn!(lock = %shared.name, error = %e, "renewal failed; retrying");
                retries.get_or_insert_with(|| shared.backoff.delays());
            }
            Err(e) => {
                shared.mark_lost(&e.to_string());
                return;
            }
        }
    }
}

/// The state of a held lock, reachable from inside the locked body with [`current`].
///
/// ```
/// use dlock_runtime::{MemoryBackend, Registry, distributed_lock};
///
/// #[distributed_lock(name = "ledger")]
/// async fn append(entry: &str) -> Option<u64> {
///     let lock = dlock_runtime::current().expect("inside a locked body");
///     // Hand the token to the storage, which rejects writes with an older one.
///     println!("writing {entry} with fencing token {:?}", lock.fencing_token());
///     lock.fencing_token()
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), dlock_runtime::Error> {
/// let registry = Registry::builder().backend("memory", MemoryBackend::new()).build()?;
/// assert_eq!(registry.scope(append("a")).await, Some(1));
/// assert_eq!(registry.scope(append("b")).await, Some(2));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct LockHandle {
    shared: Arc<Shared>,
}

impl LockHandle {
    /// The lock name.
    pub fn name(&self) -> &LockName {
        &self.shared.name
    }

    /// This acquisition's fencing token, where the backend issues them.
    pub fn fencing_token(&self) -> Option<u64> {
        self.shared.fencing_token
    }

    /// Whether the lease was lost (see [`LockGuard::is_lost`]).
    pub fn is_lost(&self) -> bool {
        self.shared.is_lost()
    }

    /// When the lease ends on this machine's monotonic clock unless renewed (see
    /// [`LockGuard::valid_until`]).
    pub fn valid_until(&self) -> Option<std::time::Instant> {
        self.shared
            .leases
            .then(|| self.shared.valid_until().into_std())
    }

    /// Completes when the lease is lost: at the moment it runs out without a confirmed renewal,
    /// or when the backend says someone else holds the lock. Never, if it is released first.
    pub async fn lost(&self) {
        let mut rx = self.shared.lost.subscribe();
        loop {
            if self.shared.is_lost() {
                self.shared
                    .mark_lost("the lease ran out before a renewal was confirmed");
                return;
            }
            let until = self.shared.valid_until();
            tokio::select! {
                changed = rx.changed() => if changed.is_err() {
                    std::future::pending::<()>().await;
                },
                _ = tokio::time::sleep_until(until), if self.shared.leases => {}
            }
        }
    }

    /// Runs `future` until it completes or the lease is lost, whichever comes first; on loss
    /// the future is dropped (cancelled) and [`Error::Lost`] returned.
    pub async fn until_lost<F: Future>(&self, future: F) -> Result<F::Output, Error> {
        tokio::select! {
            biased;
            _ = self.lost() => Err(lost(&self.shared)),
            output = future => Ok(output),
        }
    }

    fn is(&self, backend: usize, name: &LockName) -> bool {
        self.shared.caller.id() == backend && &self.shared.name == name
    }
}

/// The innermost lock held by the running locked body (the task's for async bodies, the
/// thread's for synchronous ones), or `None` outside one.
///
/// ```
/// assert!(dlock_runtime::current().is_none(), "not inside a locked body");
/// ```
pub fn current() -> Option<LockHandle> {
    THREAD_LOCKS
        .with(|locks| locks.borrow().last().cloned())
        .or_else(|| TASK_LOCKS.try_with(|chain| chain.handle.clone()).ok())
}

/// Whether a locked body enclosing the caller (in this task or on this thread) holds `name`
/// of the backend instance `backend`.
pub(crate) fn held_by_caller(backend: usize, name: &LockName) -> bool {
    let on_thread = THREAD_LOCKS.with(|locks| locks.borrow().iter().any(|h| h.is(backend, name)));
    on_thread
        || TASK_LOCKS
            .try_with(|chain| {
                let mut node = Some(chain);
                while let Some(n) = node {
                    if n.handle.is(backend, name) {
                        return true;
                    }
                    node = n.outer.as_ref();
                }
                false
            })
            .unwrap_or(false)
}

pub(crate) async fn scope_async<F: Future>(handle: LockHandle, future: F) -> F::Output {
    let outer = TASK_LOCKS.try_with(Arc::clone).ok();
    TASK_LOCKS
        .scope(Arc::new(Chain { handle, outer }), future)
        .await
}

pub(crate) fn scope_sync<R>(handle: LockHandle, f: impl FnOnce() -> R) -> R {
    struct Pop;
    impl Drop for Pop {
        fn drop(&mut self) {
            THREAD_LOCKS.with(|locks| locks.borrow_mut().pop());
        }
    }
    THREAD_LOCKS.with(|locks| locks.borrow_mut().push(handle));
    let _pop = Pop;
    f()
}
