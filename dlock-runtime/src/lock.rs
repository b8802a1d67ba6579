//! Taking a lock: the one acquire loop every backend shares.

use crate::backend::{AcquireOutcome, AcquireRequest, Backend, Holder, Owner, Version};
use crate::guard::LockGuard;
use crate::registry::{DEFAULT_TTL, Defaults, Registry};
use crate::{Backoff, Error, LockName};
use std::sync::Arc;
use std::time::Duration;
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
}

/// A lock's options after defaults were applied.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub name: LockName,
    pub timeout: Duration,
    pub ttl: Duration,
    pub min_hold: Duration,
    pub backoff: Backoff,
}

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
        }
    }

    /// Uses the registry's backend called `backend` instead of the default one.
    pub fn backend(mut self, backend: impl Into<String>) -> Self {
        self.backend = Some(backend.into());
        self
    }

    /// How long to wait for the lock; zero makes one attempt.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
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

    /// Takes the lock from the current registry's backend.
    pub async fn acquire(self) -> Result<LockGuard, Error> {
        let (backend, settings) = self.resolve()?;
        acquire_loop(backend, settings).await
    }

    /// Takes the lock from synchronous code, inside or outside a tokio runtime: the attempts
    /// run on dlock's background runtime while this thread waits.
    pub fn acquire_blocking(self) -> Result<LockGuard, Error> {
        let (backend, settings) = self.resolve()?;
        crate::blocking::block_on(acquire_loop(backend, settings))?
    }

    /// Takes the lock from `backend`, bypassing the registry (the conformance suite uses this).
    pub async fn acquire_on(self, backend: Arc<dyn Backend>) -> Result<LockGuard, Error> {
        let defaults = Defaults {
            timeout: Duration::ZERO,
            ttl: DEFAULT_TTL,
            backoff: Backoff::default(),
        };
        let settings = self.settings(&defaults)?;
        acquire_loop(backend, settings).await
    }

    fn resolve(self) -> Result<(Arc<dyn Backend>, Settings), Error> {
        let registry = Registry::current()?;
        let backend = registry.backend(self.backend.as_deref())?;
        Ok((backend, self.settings(registry.defaults())?))
    }

    fn settings(self, defaults: &Defaults) -> Result<Settings, Error> {
        let ttl = self.ttl.unwrap_or(defaults.ttl);
        if ttl.is_zero() {
            return Err(Error::Config {
                message: format!("lock `{}`: ttl must be greater than zero", self.name),
            });
        }
        Ok(Settings {
            name: LockName::new(self.name)?,
            timeout: self.timeout.unwrap_or(defaults.timeout),
            ttl,
            min_hold: self.min_hold.unwrap_or_default(),
            backoff: self.backoff.unwrap_or_else(|| defaults.backoff.clone()),
        })
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
        self.since + self.lease
    }
}

pub(crate) async fn acquire_loop(
    backend: Arc<dyn Backend>,
    s: Settings,
) -> Result<LockGuard, Error> {
    let start = Instant::now();
    let deadline = start + s.timeout;
    let caps = backend.capabilities();
    let owner = Owner::generate();
    let mut delays = s.backoff.delays();
    let mut watch: Option<Watch> = None;
    let mut replace: Option<Version> = None;
    let mut holder: Option<Holder> = None;
    let mut last_error: Option<Error>;
    let mut write = true;
    let mut announced = false;

    loop {
        let answer = if write {
            let mut request = AcquireRequest::new(s.name.clone(), owner.clone(), s.ttl);
            request.replace = replace.take();
            let takeover = request.replace.clone();
            let sent = Instant::now();
            match backend.try_acquire(&request).await {
                Ok(AcquireOutcome::Acquired(lease)) => {
                    if let Some(version) = takeover {
                        tracing::warn!(lock = %s.name, stale_version = %version, new_owner = %lease.owner.id,
                            "took over a stale lock: its record stayed unchanged for a whole lease");
                    }
                    if announced {
                        tracing::info!(lock = %s.name, waited = ?start.elapsed(), "acquired lock after waiting");
                    }
                    return Ok(LockGuard::start(backend, lease, sent, s.min_hold));
                }
                Ok(AcquireOutcome::Busy(h)) => Ok(Some(h)),
                Err(e) => Err(e),
            }
        } else {
            backend.inspect(&s.name).await
        };

        match answer {
            // A read saw the lock free: write at once.
            Ok(None) => {
                write = true;
                continue;
            }
            Ok(Some(h)) => {
                last_error = None;
                if caps.leases {
                    match &watch {
                        Some(w) if w.version == h.version => {
                            if Instant::now() >= w.stale_at() {
                                // A refused takeover starts a fresh watch instead of spinning.
                                watch = None;
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
            return Err(give_up(&*backend, &s, holder, last_error, now - start));
        }
        let mut delay = delays.next().unwrap_or(s.backoff.max());
        if let Some(w) = &watch {
            // Wake when the watched version would turn stale, not a backoff step later.
            delay = delay.min(w.stale_at().saturating_duration_since(now));
        }
        tokio::time::sleep(delay.min(deadline - now)).await;
        write = !caps.poll_with_reads;
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
mod tests {
    //! The acquire loop and renewal on tokio's paused clock: timings are exact, not sampled.

    use super::*;
    use crate::backend::{AcquireOutcome, Capabilities, Lease};
    use crate::{MemoryBackend, Owner};
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The memory backend with call counters, optional read-polling, and scripted failures.
    #[derive(Debug, Default)]
    struct Scripted {
        inner: MemoryBackend,
        poll_with_reads: bool,
        writes: AtomicUsize,
        reads: AtomicUsize,
        renewals: AtomicUsize,
        acquire_errors: Mutex<VecDeque<Error>>,
        renew_fails: bool,
    }

    fn temporary() -> Error {
        Error::temporary("scripted", "503 slow down", None)
    }

    #[async_trait::async_trait]
    impl Backend for Scripted {
        fn kind(&self) -> &'static str {
            "scripted"
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities {
                poll_with_reads: self.poll_with_reads,
                ..self.inner.capabilities()
            }
        }
        async fn try_acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, Error> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            let scripted = self.acquire_errors.lock().expect("script").pop_front();
            match scripted {
                Some(e) => Err(e),
                None => self.inner.try_acquire(request).await,
            }
        }
        async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, Error> {
            self.renewals.fetch_add(1, Ordering::SeqCst);
            if self.renew_fails {
                return Err(temporary());
            }
            self.inner.renew(lease, ttl).await
        }
        async fn release(&self, lease: &Lease) -> Result<(), Error> {
            self.inner.release(lease).await
        }
        async fn inspect(&self, name: &LockName) -> Result<Option<Holder>, Error> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.inner.inspect(name).await
        }
    }

    fn name() -> LockName {
        LockName::new("paused").expect("name")
    }

    /// Holds `paused` as another owner that never renews, as a dead process would.
    async fn dead_holder(backend: &Scripted, ttl: Duration) -> Lease {
        let request = AcquireRequest::new(name(), Owner::generate(), ttl);
        match backend.inner.try_acquire(&request).await.expect("acquire") {
            AcquireOutcome::Acquired(lease) => lease,
            AcquireOutcome::Busy(_) => panic!("fresh backend"),
        }
    }

    fn lock() -> Lock {
        Lock::new("paused").backoff(Backoff::default().with_seed(42))
    }

    #[tokio::test(start_paused = true)]
    async fn takeover_happens_one_ttl_after_the_version_was_first_seen() {
        let backend = Arc::new(Scripted::default());
        dead_holder(&backend, Duration::from_secs(10)).await;
        let start = Instant::now();
        let guard = lock()
            .timeout(Duration::from_secs(60))
            .acquire_on(backend.clone())
            .await
            .expect("takeover");
        let waited = start.elapsed();
        assert!(waited >= Duration::from_secs(10), "{waited:?}");
        assert!(
            waited < Duration::from_secs(10) + Duration::from_millis(5),
            "woke at the stale time: {waited:?}"
        );
        assert_eq!(guard.fencing_token(), Some(2));
        guard.release().await.expect("release");
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewed_record_is_never_taken_over() {
        let backend = Arc::new(Scripted::default());
        let holder = lock()
            .ttl(Duration::from_secs(3))
            .acquire_on(backend.clone())
            .await
            .expect("acquire");
        let err = lock()
            .timeout(Duration::from_secs(30))
            .acquire_on(backend.clone())
            .await
            .expect_err("the holder renews");
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        let renewals = backend.renewals.load(Ordering::SeqCst);
        assert!(
            (29..=30).contains(&renewals),
            "renewed every ttl/3 (1 s) for 30 s: {renewals}"
        );
        assert!(!holder.is_lost());
        holder.release().await.expect("release");
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_is_exact_on_the_monotonic_clock() {
        let backend = Arc::new(Scripted::default());
        let _held = dead_holder(&backend, Duration::from_secs(3600)).await;
        let start = Instant::now();
        let err = lock()
            .timeout(Duration::from_secs(5))
            .acquire_on(backend.clone())
            .await
            .expect_err("held");
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        let writes = backend.writes.load(Ordering::SeqCst);
        assert!(
            (8..=16).contains(&writes),
            "capped backoff, not a busy loop: {writes} writes in 5 s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limited_stores_are_polled_with_reads() {
        let backend = Arc::new(Scripted {
            poll_with_reads: true,
            ..Scripted::default()
        });
        let held = dead_holder(&backend, Duration::from_secs(3600)).await;
        let releaser = {
            let backend = backend.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(4)).await;
                backend.release(&held).await
            })
        };
        let guard = lock()
            .timeout(Duration::from_secs(10))
            .acquire_on(backend.clone())
            .await
            .expect("acquired after the release");
        releaser.await.expect("join").expect("release");
        assert_eq!(
            backend.writes.load(Ordering::SeqCst),
            2,
            "one write to try, one when the read saw it free"
        );
        assert!(
            backend.reads.load(Ordering::SeqCst) >= 4,
            "waited with reads"
        );
        guard.release().await.expect("release");
    }

    #[tokio::test(start_paused = true)]
    async fn temporary_errors_are_retried_and_permanent_ones_are_not() {
        let backend = Arc::new(Scripted::default());
        backend.acquire_errors.lock().expect("script").extend([
            temporary(),
            temporary(),
            temporary(),
        ]);
        let guard = lock()
            .timeout(Duration::from_secs(10))
            .acquire_on(backend.clone())
            .await
            .expect("succeeds after three 503s");
        assert_eq!(backend.writes.load(Ordering::SeqCst), 4);
        guard.release().await.expect("release");

        let permanent = Error::permanent("scripted", "403 access denied", None);
        backend
            .acquire_errors
            .lock()
            .expect("script")
            .push_back(permanent);
        let start = Instant::now();
        let err = lock()
            .timeout(Duration::from_secs(10))
            .acquire_on(backend.clone())
            .await
            .expect_err("403");
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "no retry of a permanent error"
        );
        assert!(err.to_string().contains("403"), "{err}");

        backend
            .acquire_errors
            .lock()
            .expect("script")
            .extend((0..100).map(|_| temporary()));
        let err = lock()
            .timeout(Duration::from_secs(2))
            .acquire_on(backend.clone())
            .await
            .expect_err("503s");
        assert!(
            err.is_temporary(),
            "the last backend error is reported, not a timeout: {err}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_that_cannot_be_renewed_is_marked_lost_when_it_runs_out() {
        let backend = Arc::new(Scripted {
            renew_fails: true,
            ..Scripted::default()
        });
        let start = Instant::now();
        let guard = lock()
            .ttl(Duration::from_secs(9))
            .acquire_on(backend.clone())
            .await
            .expect("acquire");
        let handle = guard.handle();
        handle.lost().await;
        let at = start.elapsed();
        assert!(
            at >= Duration::from_secs(9) - Duration::from_millis(1),
            "not before the lease ran out: {at:?}"
        );
        assert!(
            at <= Duration::from_secs(9),
            "lost exactly when the lease ran out: {at:?}"
        );
        assert!(
            backend.renewals.load(Ordering::SeqCst) > 3,
            "kept retrying until then"
        );
        assert!(matches!(
            handle.until_lost(std::future::pending::<()>()).await,
            Err(Error::Lost { .. })
        ));
    }
}
