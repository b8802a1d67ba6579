//! Held locks: the guard, its background renewal, and the handle the locked body can reach.

use crate::backend::{Backend, Lease};
use crate::{Error, LockName};
use std::cell::RefCell;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{Mutex, Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

tokio::task_local! {
    static TASK_LOCK: LockHandle;
}

thread_local! {
    static THREAD_LOCKS: RefCell<Vec<LockHandle>> = const { RefCell::new(Vec::new()) };
}

/// What the guard, its renewal task and every handle share.
#[derive(Debug)]
struct Shared {
    backend: Arc<dyn Backend>,
    name: LockName,
    fencing_token: Option<u64>,
    ttl: Duration,
    min_hold: Duration,
    acquired: Instant,
    /// The lease as last written; renewal holds this while it talks to the backend, so a
    /// release never races a renewal with a stale version.
    lease: Mutex<Lease>,
    stopping: AtomicBool,
    stop: Notify,
    lost: watch::Sender<bool>,
}

impl Shared {
    fn mark_lost(&self, why: &str) {
        tracing::error!(lock = %self.name, reason = why, "lost the lock");
        self.lost.send_replace(true);
    }

    fn min_hold_left(&self) -> Duration {
        self.min_hold.saturating_sub(self.acquired.elapsed())
    }
}

/// A held lock. Release it with [`release`](LockGuard::release) (or
/// [`release_blocking`](LockGuard::release_blocking)) to see the outcome; dropping it releases
/// too, in the background.
///
/// While held, backends with leases are renewed at about a third of the `ttl`. If renewal
/// fails for good, the guard is marked lost: see [`is_lost`](LockGuard::is_lost) and
/// [`LockHandle::lost`].
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

impl LockGuard {
    /// Wraps a fresh lease; starts renewal when the backend has leases. `sent` is when the
    /// acquiring write was sent: the lease runs from then, on this machine's monotonic clock.
    pub(crate) fn start(
        backend: Arc<dyn Backend>,
        lease: Lease,
        sent: Instant,
        min_hold: Duration,
    ) -> Self {
        let leases = backend.capabilities().leases;
        let shared = Arc::new(Shared {
            name: lease.name.clone(),
            fencing_token: lease.fencing_token,
            ttl: lease.ttl,
            min_hold,
            acquired: Instant::now(),
            backend,
            lease: Mutex::new(lease),
            stopping: AtomicBool::new(false),
            stop: Notify::new(),
            lost: watch::channel(false).0,
        });
        let renewer = if leases {
            crate::blocking::spawn(renew(shared.clone(), sent + shared.ttl))
        } else {
            None
        };
        LockGuard {
            shared,
            renewer,
            done: false,
        }
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

    /// Whether the lease was lost (renewal failed for good or someone took the lock over).
    pub fn is_lost(&self) -> bool {
        *self.shared.lost.borrow()
    }

    /// A cheap handle to this lock's state, for code that runs while it is held.
    pub fn handle(&self) -> LockHandle {
        LockHandle {
            shared: self.shared.clone(),
        }
    }

    /// Releases the lock (after `min_hold`, if set) and reports the outcome: [`Error::Lost`]
    /// if someone else holds it now, in which case nothing was changed.
    pub async fn release(mut self) -> Result<(), Error> {
        self.done = true;
        release(self.shared.clone(), self.renewer.take()).await
    }

    /// [`release`](LockGuard::release) for synchronous code, inside or outside a runtime.
    pub fn release_blocking(mut self) -> Result<(), Error> {
        self.done = true;
        let renewer = self.renewer.take();
        if let Some(result) = release_now(&self.shared, &renewer) {
            return result;
        }
        crate::blocking::block_on(release(self.shared.clone(), renewer))?
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let renewer = self.renewer.take();
        if let Some(result) = release_now(&self.shared, &renewer) {
            log_release(&self.shared.name, &result);
            return;
        }
        let shared = self.shared.clone();
        crate::blocking::spawn(async move {
            let name = shared.name.clone();
            log_release(&name, &release(shared, renewer).await);
        });
    }
}

fn log_release(name: &LockName, result: &Result<(), Error>) {
    match result {
        Ok(()) => tracing::debug!(lock = %name, "released lock"),
        Err(e) => tracing::warn!(lock = %name, error = %e, "releasing the lock failed"),
    }
}

fn stop_renewal(shared: &Shared) {
    shared.stopping.store(true, Ordering::SeqCst);
    shared.stop.notify_one();
}

/// The synchronous fast path: when no `min_hold` is left and the backend can release without
/// waiting on I/O (an OS lock, a map).
fn release_now(
    shared: &Arc<Shared>,
    renewer: &Option<JoinHandle<()>>,
) -> Option<Result<(), Error>> {
    if !shared.min_hold_left().is_zero() {
        return None;
    }
    stop_renewal(shared);
    let lease = shared.lease.try_lock().ok()?;
    let result = shared.backend.release_now(&lease)?;
    if let Some(task) = renewer {
        task.abort();
    }
    Some(result)
}

async fn release(shared: Arc<Shared>, renewer: Option<JoinHandle<()>>) -> Result<(), Error> {
    stop_renewal(&shared);
    // Waits for a renewal in flight, so the release is conditional on the newest version.
    let lease = shared.lease.lock().await.clone();
    if let Some(task) = renewer {
        task.abort();
    }
    let left = shared.min_hold_left();
    if !left.is_zero() {
        if shared.backend.capabilities().leases {
            // Leave the record with a lease of what is left of `min_hold`: waiters take it
            // over only after seeing it unchanged that long, on their own clocks.
            shared.backend.renew(&lease, left).await?;
            tracing::debug!(lock = %shared.name, left = ?left, "left the lock to expire after min_hold");
            return Ok(());
        }
        tokio::time::sleep(left).await;
    }
    shared.backend.release(&lease).await?;
    tracing::debug!(lock = %shared.name, "released lock");
    Ok(())
}

/// Renews the lease at about a third of its ttl until released; marks the lock lost when the
/// lease runs out on this machine's clock before a renewal succeeds.
async fn renew(shared: Arc<Shared>, mut valid_until: Instant) {
    let period = (shared.ttl / 3).max(Duration::from_millis(1));
    let mut retries = None;
    loop {
        let wait = match &mut retries {
            None => period,
            Some(delays) => Iterator::next(delays).unwrap_or(period).min(period),
        };
        let wake = (Instant::now() + wait).min(valid_until);
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
        if Instant::now() >= valid_until {
            shared.mark_lost("the lease ran out before a renewal succeeded");
            return;
        }
        let sent = Instant::now();
        match tokio::time::timeout_at(valid_until, shared.backend.renew(&lease, shared.ttl)).await {
            Err(_) => {
                shared.mark_lost("the backend did not answer a renewal before the lease ran out");
                return;
            }
            Ok(Ok(renewed)) => {
                *lease = renewed;
                valid_until = sent + shared.ttl;
                retries = None;
            }
            Ok(Err(e)) if e.is_temporary() => {
                tracing::warn!(lock = %shared.name, error = %e, "renewal failed; retrying");
                retries.get_or_insert_with(|| crate::Backoff::default().delays());
            }
            Ok(Err(e)) => {
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

    /// Whether the lease was lost.
    pub fn is_lost(&self) -> bool {
        *self.shared.lost.borrow()
    }

    /// Completes when the lease is lost (never, if it is released first).
    pub async fn lost(&self) {
        let mut rx = self.shared.lost.subscribe();
        if rx.wait_for(|lost| *lost).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Runs `future` until it completes or the lease is lost, whichever comes first; on loss
    /// the future is dropped (cancelled) and [`Error::Lost`] returned.
    pub async fn until_lost<F: Future>(&self, future: F) -> Result<F::Output, Error> {
        tokio::select! {
            biased;
            _ = self.lost() => Err(Error::Lost { name: self.shared.name.to_string() }),
            output = future => Ok(output),
        }
    }
}

/// The innermost lock held by the running locked body (the task's for async bodies, the
/// thread's for synchronous ones), or `None` outside one.
pub fn current() -> Option<LockHandle> {
    THREAD_LOCKS
        .with(|locks| locks.borrow().last().cloned())
        .or_else(|| TASK_LOCK.try_with(LockHandle::clone).ok())
}

pub(crate) async fn scope_async<F: Future>(handle: LockHandle, future: F) -> F::Output {
    TASK_LOCK.scope(handle, future).await
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
