//! The conformance suite: what every backend must do, as async checks over `Arc<dyn Backend>`.
//!
//! Each check uses fresh random lock names, so runs never interfere, and panics with a message
//! on failure. Nothing is skipped: where a backend does not claim a capability, the check
//! asserts the guarantee it makes instead (a backend without leases must refuse a takeover and
//! keep an unrenewed lock; one without fencing tokens must not hand out tokens). A backend's
//! test file is one macro call:
//!
//! ```no_run
//! // tests/conformance.rs of a backend crate: one #[tokio::test] per check.
//! dlock_runtime::conformance_tests!(memory, dlock_runtime::MemoryBackend::new());
//! # fn main() {}
//! ```

mod faulty;

pub use faulty::{Calls, Fault, FaultyBackend};

use crate::backend::{AcquireOutcome, AcquireRequest, Backend, Capabilities, Holder, Lease, Owner};
use crate::{Error, Lock, LockGuard, LockName};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// The checks, bound to one backend.
#[derive(Clone, Debug)]
pub struct Conformance {
    backend: Arc<dyn Backend>,
    ttl: Duration,
    delete_unconditional: bool,
}

/// Generates one `#[tokio::test]` per conformance check for the backend `$make` builds
/// (evaluated once per test). Needs `tokio` (with `macros` and `rt-multi-thread`) in the
/// calling crate.
#[macro_export]
macro_rules! conformance_tests {
    ($suite:ident, $make:expr) => {
        $crate::conformance_tests!($suite, $make, ::std::time::Duration::from_millis(600));
    };
    ($suite:ident, $make:expr, $ttl:expr $(, $configure:ident)*) => {
        mod $suite {
            #[allow(unused_imports)]
            use super::*;
            async fn suite() -> $crate::conformance::Conformance {
                $crate::conformance::Conformance::new(::std::sync::Arc::new($make)).with_ttl($ttl)$(.$configure())*
            }
            $crate::conformance_tests!(@tests exclusive_acquire, busy_names_holder,
                timeout_waits_then_fails, release_then_reacquire, independent_names,
                waiter_gets_lock_on_release, dropped_guard_releases, inspect_reports_holder,
                held_past_ttl, stale_holder_cannot_release_or_renew, takeover_waits_a_whole_ttl,
                lost_lease_is_reported, min_hold_keeps_lock, concurrent_increments_lose_nothing,
                fencing_tokens_increase);
        }
    };
    (@tests $($check:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                suite().await.$check().await;
            }
        )*
    };
}

/// A fresh lock name no other run uses.
pub fn fresh_name(prefix: &str) -> LockName {
    let id = Owner::generate().id;
    LockName::new(format!("conformance/{prefix}/{}", &id[..12])).expect("valid name")
}

impl Conformance {
    /// The checks for `backend`, with a short lease of 600 ms for the expiry checks.
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Conformance {
            backend,
            ttl: Duration::from_millis(600),
            delete_unconditional: false,
        }
    }

    /// For a local stand-in that ignores preconditions on DELETE (fake-gcs-server): the
    /// checks that a stale owner's conditional delete is refused cannot pass against it, so
    /// they are left out, with a note on stderr. Prove the conditional delete on the wire
    /// instead; never use this against the real store.
    pub fn stand_in_ignores_conditional_delete(mut self) -> Self {
        self.delete_unconditional = true;
        self
    }

    /// Whether a stale owner's release can be checked against this server.
    fn can_check_stale_release(&self, check: &str) -> bool {
        if self.delete_unconditional {
            eprintln!(
                "{check}: not checking that a stale owner's release is refused: this stand-in ignores \
                 DELETE preconditions (proven on the wire instead)"
            );
        }
        !self.delete_unconditional
    }

    /// The lease the expiry checks use; lengthen it for slow stores.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    fn caps(&self) -> Capabilities {
        self.backend.capabilities()
    }

    /// Without leases, a lock is held until released or its process exits: a takeover of its
    /// current version must be refused, however long it has been unchanged.
    async fn assert_takeover_refused(&self, name: &LockName) {
        let current = self.holder(name).await;
        let thief = AcquireRequest::new(name.clone(), Owner::generate(), self.ttl)
            .replacing(current.version);
        let outcome = self
            .backend
            .try_acquire(&thief)
            .await
            .expect("takeover attempt");
        assert!(
            matches!(outcome, AcquireOutcome::Busy(_)),
            "the {} backend claims no leases, yet let a takeover replace a live holder",
            self.backend.kind()
        );
    }

    fn lock(&self, name: &LockName) -> Lock {
        Lock::new(name.as_str()).ttl(self.ttl)
    }

    /// Takes `name` through the runtime, waiting up to `timeout`.
    async fn take(&self, name: &LockName, timeout: Duration) -> Result<LockGuard, Error> {
        self.lock(name)
            .timeout(timeout)
            .acquire_on(self.backend.clone())
            .await
    }

    async fn acquire(&self, name: &LockName) -> LockGuard {
        self.take(name, Duration::ZERO)
            .await
            .unwrap_or_else(|e| panic!("acquiring free lock {name}: {e}"))
    }

    /// One raw attempt as another owner, bypassing the runtime (no renewal, no release).
    async fn raw(&self, name: &LockName, ttl: Duration) -> AcquireOutcome {
        let request = AcquireRequest::new(name.clone(), Owner::generate(), ttl);
        self.backend
            .try_acquire(&request)
            .await
            .unwrap_or_else(|e| panic!("try_acquire {name}: {e}"))
    }

    async fn raw_lease(&self, name: &LockName) -> Lease {
        match self.raw(name, self.ttl).await {
            AcquireOutcome::Acquired(lease) => lease,
            AcquireOutcome::Busy(h) => panic!("{name} should be free, but is held by {}", h.owner),
        }
    }

    /// The current holder of `name`, which must be held.
    async fn holder(&self, name: &LockName) -> Holder {
        let found = self.backend.inspect(name).await;
        found
            .expect("inspect")
            .unwrap_or_else(|| panic!("{name} should be held"))
    }

    async fn assert_busy(&self, name: &LockName, why: &str) {
        if let AcquireOutcome::Acquired(lease) = self.raw(name, self.ttl).await {
            panic!("{why}: a second owner acquired {name} (lease {lease:?})");
        }
    }

    async fn assert_free(&self, name: &LockName, why: &str) {
        let held = self.backend.inspect(name).await.expect("inspect");
        assert!(
            held.is_none(),
            "{why}: {name} is still held by {:?}",
            held.map(|h| h.owner)
        );
    }

    /// A held lock cannot be taken by a second owner.
    pub async fn exclusive_acquire(&self) {
        let name = fresh_name("exclusive");
        let guard = self.acquire(&name).await;
        self.assert_busy(&name, "while held").await;
        let err = self
            .take(&name, Duration::ZERO)
            .await
            .expect_err("a second owner acquired a held lock");
        assert!(
            matches!(err, Error::Busy { .. }),
            "one attempt on a held lock: {err}"
        );
        guard.release().await.expect("release");
    }

    /// The busy answer names the holder: its random owner id, host and pid.
    pub async fn busy_names_holder(&self) {
        let name = fresh_name("holder");
        let guard = self.acquire(&name).await;
        let holder = self.holder(&name).await;
        let AcquireOutcome::Busy(busy) = self.raw(&name, self.ttl).await else {
            panic!("lock was free while held");
        };
        assert_eq!(busy.owner, holder.owner, "busy answer and inspect agree");
        assert_eq!(busy.owner.pid, std::process::id());
        assert_eq!(busy.owner.host, crate::host_name());
        assert_eq!(busy.owner.id.len(), 32, "a 128-bit random owner id");
        let err = self
            .take(&name, Duration::ZERO)
            .await
            .expect_err("a second owner acquired a held lock");
        let text = err.to_string();
        assert!(
            text.contains(&holder.owner.id) && text.contains(crate::host_name()),
            "{text}"
        );
        assert!(
            !self
                .backend
                .stale_lock_hint(&name, Some(&holder))
                .is_empty()
        );
        guard.release().await.expect("release");
    }

    /// Waiting for a held lock ends with `Timeout` after the timeout, not before.
    pub async fn timeout_waits_then_fails(&self) {
        let name = fresh_name("timeout");
        let guard = self.acquire(&name).await;
        let timeout = Duration::from_millis(400);
        let start = Instant::now();
        let err = self
            .take(&name, timeout)
            .await
            .expect_err("acquired a lock that was held for the whole timeout");
        let waited = start.elapsed();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        assert!(
            waited >= timeout,
            "gave up after {waited:?}, before the {timeout:?} timeout"
        );
        assert!(
            waited < timeout + Duration::from_secs(3),
            "overran the timeout: {waited:?}"
        );
        assert!(err.holder().is_some(), "timeout names the holder: {err}");
        guard.release().await.expect("release");
    }

    /// A released lock is free and can be taken again.
    pub async fn release_then_reacquire(&self) {
        let name = fresh_name("reacquire");
        for round in 0..3 {
            let guard = self.acquire(&name).await;
            guard
                .release()
                .await
                .unwrap_or_else(|e| panic!("release {round}: {e}"));
            self.assert_free(&name, "after release").await;
        }
    }

    /// Different names do not exclude each other.
    pub async fn independent_names(&self) {
        let (a, b) = (fresh_name("independent-a"), fresh_name("independent-b"));
        let ga = self.acquire(&a).await;
        let gb = self.acquire(&b).await;
        ga.release().await.expect("release a");
        gb.release().await.expect("release b");
    }

    /// A waiter gets the lock soon after the holder releases it.
    pub async fn waiter_gets_lock_on_release(&self) {
        let name = fresh_name("waiter");
        let guard = self.acquire(&name).await;
        let start = Instant::now();
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            guard.release().await
        });
        let waiter = self
            .take(&name, Duration::from_secs(10))
            .await
            .expect("waiter acquires after release");
        assert!(
            start.elapsed() >= Duration::from_millis(150),
            "acquired while still held"
        );
        release.await.expect("join").expect("release");
        waiter.release().await.expect("release waiter");
    }

    /// Dropping a guard without `release` frees the lock too.
    pub async fn dropped_guard_releases(&self) {
        let name = fresh_name("drop");
        drop(self.acquire(&name).await);
        let again = self
            .take(&name, Duration::from_secs(5))
            .await
            .expect("free again after the guard was dropped");
        again.release().await.expect("release");
    }

    /// `inspect` sees no holder, then the holder, then none.
    pub async fn inspect_reports_holder(&self) {
        let name = fresh_name("inspect");
        self.assert_free(&name, "before acquiring").await;
        let guard = self.acquire(&name).await;
        let lease = guard.handle();
        let holder = self.holder(&name).await;
        assert_eq!(
            holder.fencing_token,
            lease.fencing_token().filter(|_| self.caps().fencing_tokens)
        );
        guard.release().await.expect("release");
        self.assert_free(&name, "after release").await;
    }

    /// A holder keeps the lock for several leases: renewal (or the OS lock) keeps it.
    pub async fn held_past_ttl(&self) {
        let name = fresh_name("renewal");
        let guard = self.acquire(&name).await;
        let until = Instant::now() + self.ttl * 3;
        while Instant::now() < until {
            let waiter = self.take(&name, self.ttl / 4).await;
            assert!(
                waiter.is_err(),
                "lock taken over while its holder was alive and renewing"
            );
        }
        assert!(!guard.is_lost(), "renewal failed");
        guard.release().await.expect("release after renewals");
    }

    /// An owner whose lease was taken over can neither release nor renew the new holder's lock.
    /// Without leases: an owner that never renews keeps its lock, and can still release it.
    pub async fn stale_holder_cannot_release_or_renew(&self) {
        if !self.caps().leases {
            let name = fresh_name("unrenewed");
            let lease = self.raw_lease(&name).await;
            tokio::time::sleep(self.ttl * 2).await;
            let err = self
                .take(&name, self.ttl)
                .await
                .expect_err("took over a lock whose holder never let go (no leases)");
            assert!(matches!(err, Error::Timeout { .. }), "{err}");
            self.backend
                .renew(&lease, self.ttl)
                .await
                .expect("the holder still holds it");
            self.backend
                .release(&lease)
                .await
                .expect("the holder releases it");
            return;
        }
        let name = fresh_name("stale");
        let stale = self.raw_lease(&name).await; // never renewed: dies after one ttl
        let next = self
            .take(&name, self.ttl * 10)
            .await
            .expect("takeover of a stale lock");
        if self.can_check_stale_release("stale_holder_cannot_release_or_renew") {
            let err = self
                .backend
                .release(&stale)
                .await
                .expect_err("a stale owner released the new holder's lock");
            assert!(matches!(err, Error::Lost { .. }), "stale release: {err}");
        }
        let err = self
            .backend
            .renew(&stale, self.ttl)
            .await
            .expect_err("a stale owner renewed the new holder's lock");
        assert!(matches!(err, Error::Lost { .. }), "stale renew: {err}");
        let holder = self.holder(&name).await;
        assert_ne!(
            holder.owner.id, stale.owner.id,
            "the new holder keeps the lock"
        );
        next.release().await.expect("the new holder releases");
    }

    /// A dead holder's lock is taken over only after its record stayed unchanged a whole ttl.
    /// Without leases: a takeover is refused even after several ttls.
    pub async fn takeover_waits_a_whole_ttl(&self) {
        let name = fresh_name("takeover");
        if !self.caps().leases {
            let lease = self.raw_lease(&name).await;
            tokio::time::sleep(self.ttl * 2).await;
            self.assert_takeover_refused(&name).await;
            self.backend.release(&lease).await.expect("release");
            return;
        }
        let _dead = self.raw_lease(&name).await;
        let start = Instant::now();
        let next = self.take(&name, self.ttl * 10).await.expect("takeover");
        let waited = start.elapsed();
        assert!(
            waited >= self.ttl,
            "took over after {waited:?}, before one ttl ({:?})",
            self.ttl
        );
        assert!(waited < self.ttl * 5, "takeover took {waited:?}");
        next.release().await.expect("release");
    }

    /// A guard whose lock was taken from it notices and reports the loss. Without leases: the
    /// lock cannot be taken from a live guard, which is never marked lost.
    pub async fn lost_lease_is_reported(&self) {
        let name = fresh_name("lost");
        let guard = self.acquire(&name).await;
        if !self.caps().leases {
            self.assert_takeover_refused(&name).await;
            tokio::time::sleep(self.ttl).await;
            assert!(!guard.is_lost());
            guard.release().await.expect("release");
            return;
        }
        let handle = guard.handle();
        let current = self.holder(&name).await;
        let thief = AcquireRequest::new(name.clone(), Owner::generate(), self.ttl)
            .replacing(current.version);
        let AcquireOutcome::Acquired(stolen) =
            self.backend.try_acquire(&thief).await.expect("steal")
        else {
            panic!("a conditional takeover of the current version failed");
        };
        tokio::time::timeout(self.ttl * 3, handle.lost())
            .await
            .expect("the guard noticed the loss within three leases");
        assert!(guard.is_lost());
        if self.can_check_stale_release("lost_lease_is_reported") {
            let err = guard
                .release()
                .await
                .expect_err("a guard released a lock that was taken from it");
            assert!(matches!(err, Error::Lost { .. }), "{err}");
        } else {
            std::mem::forget(guard); // its release would delete the thief's record here
        }
        self.backend
            .release(&stolen)
            .await
            .expect("the thief still holds it");
    }

    /// `min_hold` keeps the lock after an early release.
    pub async fn min_hold_keeps_lock(&self) {
        let name = fresh_name("min-hold");
        let hold = self.ttl;
        let start = Instant::now();
        let guard = self
            .lock(&name)
            .min_hold(hold)
            .acquire_on(self.backend.clone())
            .await
            .expect("acquire");
        let release = tokio::spawn(guard.release());
        tokio::time::sleep(hold / 4).await;
        self.assert_busy(&name, "within min_hold after release")
            .await;
        let next = self
            .take(&name, hold * 10)
            .await
            .expect("acquire after min_hold");
        assert!(
            start.elapsed() >= hold,
            "re-acquired after {:?}, inside min_hold {hold:?}",
            start.elapsed()
        );
        release.await.expect("join").expect("release with min_hold");
        next.release().await.expect("release");
    }

    /// Tasks incrementing an unsynchronised counter under the lock lose no update and never
    /// overlap.
    pub async fn concurrent_increments_lose_nothing(&self) {
        const TASKS: u64 = 4;
        const ROUNDS: u64 = 20;
        let name = fresh_name("counter");
        let counter = Arc::new(AtomicU64::new(0));
        let inside = Arc::new(AtomicUsize::new(0));
        let overlaps = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..TASKS {
            let (suite, name) = (self.clone(), name.clone());
            let (counter, inside, overlaps) = (counter.clone(), inside.clone(), overlaps.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..ROUNDS {
                    let guard = suite
                        .take(&name, Duration::from_secs(60))
                        .await
                        .expect("acquire");
                    if inside.fetch_add(1, Ordering::SeqCst) != 0 {
                        overlaps.fetch_add(1, Ordering::SeqCst);
                    }
                    let read = counter.load(Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    counter.store(read + 1, Ordering::SeqCst);
                    inside.fetch_sub(1, Ordering::SeqCst);
                    guard.release().await.expect("release");
                }
            }));
        }
        for task in tasks {
            task.await.expect("task panicked");
        }
        assert_eq!(
            overlaps.load(Ordering::SeqCst),
            0,
            "critical sections overlapped"
        );
        assert_eq!(
            counter.load(Ordering::SeqCst),
            TASKS * ROUNDS,
            "lost updates"
        );
    }

    /// Fencing tokens increase strictly across release / re-acquire and takeover. A backend
    /// that does not claim them hands out none.
    pub async fn fencing_tokens_increase(&self) {
        let name = fresh_name("fencing");
        if !self.caps().fencing_tokens {
            let guard = self.acquire(&name).await;
            assert_eq!(
                guard.fencing_token(),
                None,
                "tokens from a backend that does not claim them"
            );
            guard.release().await.expect("release");
            return;
        }
        let mut last = 0;
        for _ in 0..3 {
            let guard = self.acquire(&name).await;
            let token = guard.fencing_token().expect("a fencing token");
            assert!(token > last, "token {token} after {last}");
            last = token;
            guard.release().await.expect("release");
        }
        if self.caps().leases {
            let dead = self.raw_lease(&name).await;
            let dead_token = dead.fencing_token.expect("a fencing token");
            assert!(dead_token > last);
            let next = self.take(&name, self.ttl * 10).await.expect("takeover");
            assert!(
                next.fencing_token().expect("token") > dead_token,
                "takeover token must be newer"
            );
            next.release().await.expect("release");
        }
    }

    /// Every check, one after the other.
    pub async fn run_all(&self) {
        self.exclusive_acquire().await;
        self.busy_names_holder().await;
        self.timeout_waits_then_fails().await;
        self.release_then_reacquire().await;
        self.independent_names().await;
        self.waiter_gets_lock_on_release().await;
        self.dropped_guard_releases().await;
        self.inspect_reports_holder().await;
        self.held_past_ttl().await;
        self.stale_holder_cannot_release_or_renew().await;
        self.takeover_waits_a_whole_ttl().await;
        self.lost_lease_is_reported().await;
        self.min_hold_keeps_lock().await;
        self.concurrent_increments_lose_nothing().await;
        self.fencing_tokens_increase().await;
    }
}
