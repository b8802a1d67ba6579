//! A backend wrapper that injects faults at the trait boundary and counts calls: for tests of
//! what the runtime does when a store's answers are lost, late or wrong. It wraps a real
//! backend (the calls that go through reach the real store); the wire-level faults of the
//! remote stores are tested through a loopback proxy in dlock's own test suite.

use crate::backend::{
    AcquireOutcome, AcquireRequest, Backend, Capabilities, Holder, Lease, Version,
};
use crate::{Error, LockName};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// What happens to one call (see [`FaultyBackend`] for an example).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The call reaches the store and takes effect, but its answer is lost: the caller gets a
    /// temporary error, as after a dropped connection.
    LoseAnswer,
    /// The call fails with a temporary error before reaching the store.
    Fail,
    /// The call fails with a permanent error before reaching the store.
    FailPermanently,
    /// The call never answers (until the caller gives up); it does not reach the store.
    Hang,
    /// The call waits this long, then goes through.
    Delay(Duration),
}

/// How many calls of each kind reached the wrapper.
///
/// ```
/// let calls = dlock_runtime::conformance::Calls { acquires: 2, releases: 1, reads: 3, ..Default::default() };
/// assert_eq!(calls.requests(), 6, "waiting on a notification is not a request");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Calls {
    /// `try_acquire` calls (conditional writes).
    pub acquires: usize,
    /// `renew` calls.
    pub renewals: usize,
    /// `release` calls.
    pub releases: usize,
    /// `inspect` calls (reads).
    pub reads: usize,
    /// `wait_for_change` calls.
    pub waits: usize,
}

impl Calls {
    /// Requests a lock store sees: writes and reads (waiting on a notification is not one).
    pub fn requests(&self) -> usize {
        self.acquires + self.renewals + self.releases + self.reads
    }
}

#[derive(Debug, Default)]
struct Plan {
    acquire: VecDeque<Fault>,
    renew: VecDeque<Fault>,
    release: VecDeque<Fault>,
    every_renewal: Option<Fault>,
}

/// Wraps a backend; faults are queued per operation and applied to the next calls in order.
///
/// ```
/// use dlock_runtime::conformance::{Fault, FaultyBackend};
/// use dlock_runtime::{Lock, MemoryBackend};
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), dlock_runtime::Error> {
/// let faulty = Arc::new(FaultyBackend::new(Arc::new(MemoryBackend::new())));
/// faulty.on_acquire([Fault::LoseAnswer]);
/// // The first write lands but its answer is lost; the second finds the record is ours.
/// let guard = Lock::new("job").timeout(Duration::from_secs(5)).acquire_on(faulty.clone()).await?;
/// assert_eq!(faulty.calls().acquires, 2);
/// guard.release().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct FaultyBackend {
    inner: Arc<dyn Backend>,
    plan: Mutex<Plan>,
    acquires: AtomicUsize,
    renewals: AtomicUsize,
    releases: AtomicUsize,
    reads: AtomicUsize,
    waits: AtomicUsize,
    capabilities: Mutex<Option<Capabilities>>,
}

fn injected(kind: &'static str, temporary: bool) -> Error {
    let message = "a fault injected by the test";
    if temporary {
        Error::temporary(kind, message, None)
    } else {
        Error::permanent(kind, message, None)
    }
}

impl FaultyBackend {
    /// Wraps `inner`, with no faults planned.
    pub fn new(inner: Arc<dyn Backend>) -> Self {
        FaultyBackend {
            inner,
            plan: Mutex::default(),
            acquires: AtomicUsize::new(0),
            renewals: AtomicUsize::new(0),
            releases: AtomicUsize::new(0),
            reads: AtomicUsize::new(0),
            waits: AtomicUsize::new(0),
            capabilities: Mutex::new(None),
        }
    }

    fn plan(&self) -> MutexGuard<'_, Plan> {
        self.plan
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies `faults` to the next `try_acquire` calls, in order.
    pub fn on_acquire(&self, faults: impl IntoIterator<Item = Fault>) {
        self.plan().acquire.extend(faults);
    }

    /// Applies `faults` to the next `renew` calls, in order.
    pub fn on_renew(&self, faults: impl IntoIterator<Item = Fault>) {
        self.plan().renew.extend(faults);
    }

    /// Applies `faults` to the next `release` calls, in order.
    pub fn on_release(&self, faults: impl IntoIterator<Item = Fault>) {
        self.plan().release.extend(faults);
    }

    /// Applies `fault` to every renewal from now on (`None` stops it).
    pub fn on_every_renewal(&self, fault: Option<Fault>) {
        self.plan().every_renewal = fault;
    }

    /// Claims other capabilities than the wrapped backend (to test the runtime's other paths,
    /// such as polling with reads instead of waiting for notifications).
    pub fn with_capabilities(self, f: impl FnOnce(Capabilities) -> Capabilities) -> Self {
        let caps = f(self.inner.capabilities());
        *self
            .capabilities
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(caps);
        self
    }

    /// The calls made so far.
    pub fn calls(&self) -> Calls {
        Calls {
            acquires: self.acquires.load(Ordering::SeqCst),
            renewals: self.renewals.load(Ordering::SeqCst),
            releases: self.releases.load(Ordering::SeqCst),
            reads: self.reads.load(Ordering::SeqCst),
            waits: self.waits.load(Ordering::SeqCst),
        }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &Arc<dyn Backend> {
        &self.inner
    }

    /// Runs `call` as `fault` says.
    async fn apply<T>(
        &self,
        fault: Option<Fault>,
        call: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let kind = self.inner.kind();
        match fault {
            None => call.await,
            Some(Fault::LoseAnswer) => {
                let _ = call.await;
                Err(injected(kind, true))
            }
            Some(Fault::Fail) => Err(injected(kind, true)),
            Some(Fault::FailPermanently) => Err(injected(kind, false)),
            Some(Fault::Hang) => std::future::pending().await,
            Some(Fault::Delay(d)) => {
                tokio::time::sleep(d).await;
                call.await
            }
        }
    }
}

#[async_trait::async_trait]
impl Backend for FaultyBackend {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .unwrap_or_else(|| self.inner.capabilities())
    }

    async fn try_acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, Error> {
        self.acquires.fetch_add(1, Ordering::SeqCst);
        let fault = self.plan().acquire.pop_front();
        self.apply(fault, self.inner.try_acquire(request)).await
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, Error> {
        self.renewals.fetch_add(1, Ordering::SeqCst);
        let fault = {
            let mut plan = self.plan();
            plan.renew
                .pop_front()
                .or_else(|| plan.every_renewal.clone())
        };
        self.apply(fault, self.inner.renew(lease, ttl)).await
    }

    async fn release(&self, lease: &Lease) -> Result<(), Error> {
        self.releases.fetch_add(1, Ordering::SeqCst);
        let fault = self.plan().release.pop_front();
        self.apply(fault, self.inner.release(lease)).await
    }

    async fn inspect(&self, name: &LockName) -> Result<Option<Holder>, Error> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.inspect(name).await
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
        self.waits.fetch_add(1, Ordering::SeqCst);
        self.inner.wait_for_change(name, seen, since).await
    }

    async fn stop_waiting(&self, name: &LockName, owner: &crate::Owner) -> Result<(), Error> {
        self.inner.stop_waiting(name, owner).await
    }

    fn release_now(&self, lease: &Lease) -> Option<Result<(), Error>> {
        if !self.plan().release.is_empty() {
            // A planned fault goes through the async path.
            return None;
        }
        let result = self.inner.release_now(lease)?;
        self.releases.fetch_add(1, Ordering::SeqCst);
        Some(result)
    }

    fn stale_lock_hint(&self, name: &LockName, holder: Option<&Holder>) -> String {
        self.inner.stale_lock_hint(name, holder)
    }
}
