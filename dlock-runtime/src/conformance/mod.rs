//! The conformance suite: what every backend must do, as async checks over `Arc<dyn Backend>`.
//!
//! Each check uses fresh random lock names, so runs never interfere, and panics with a message
//! on failure. Nothing is skipped: where a backend does not claim a capability, the check
//! asserts the guarantee it makes instead (a backend without leases must refuse a takeover and
//! keep an unrenewed lock; one without fencing tokens must not hand out tokens). Another
//! process is played by a second handle on the same backend (a distinct `Arc`, so the runtime
//! treats it as a stranger: no shared local queue). Faults at the trait boundary come from
//! [`FaultyBackend`]; wire-level faults are for each backend's own tests. A backend's test
//! file is one macro call:
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

/// The checks, bound to one backend. Call them one by one (each is `pub async fn`), all with
/// [`run_all`](Conformance::run_all), or one `#[tokio::test]` each with
/// [`conformance_tests!`](crate::conformance_tests).
///
/// ```
/// use dlock_runtime::MemoryBackend;
/// use dlock_runtime::conformance::Conformance;
/// use std::sync::Arc;
///
/// # #[tokio::main]
/// # async fn main() {
/// let suite = Conformance::new(Arc::new(MemoryBackend::new()));
/// suite.exclusive_acquire().await;
/// suite.fencing_tokens_increase().await;
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Conformance {
    backend: Arc<dyn Backend>,
    /// The same backend as another process sees it.
    other: Arc<dyn Backend>,
    ttl: Duration,
}

/// Calls `$m!` with the name of every check, in order: the one list of the checks.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_checks {
    ($m:path) => {
        $m!(
            exclusive_acquire,
            busy_names_holder,
            timeout_waits_then_fails,
            release_then_reacquire,
            independent_names,
            waiter_gets_lock_on_release,
            dropped_guard_releases,
            inspect_reports_holder,
            held_past_ttl,
            stale_holder_cannot_release_or_renew,
            takeover_waits_a_whole_ttl,
            lost_lease_is_reported,
            min_hold_keeps_lock,
            concurrent_increments_lose_nothing,
            fencing_tokens_increase,
            list_shows_held_locks,
            reads_never_make_an_acquirer_see_busy,
            stale_force_release_is_refused,
            loss_is_known_before_takeover,
            a_blocked_runtime_does_not_starve_renewal,
            cancellation_never_leaks_a_lock,
            release_retries_failures
        );
    };
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
            $crate::__conformance_checks!($crate::__conformance_test_fns);
        }
    };
}

/// One `#[tokio::test]` per check; used by [`conformance_tests!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_test_fns {
    ($($check:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                suite().await.$check().await;
            }
        )*
    };
}

/// `Conformance::run_all`'s body.
macro_rules! run_each {
    ($($check:ident),*) => {
        async fn run_each(suite: &Conformance) {
            $(
                eprintln!("conformance: {}", stringify!($check));
                suite.$check().await;
            )*
        }
    };
}
crate::__conformance_checks!(run_each);

/// A fresh lock name no other run uses.
///
/// ```
/// let a = dlock_runtime::conformance::fresh_name("check");
/// assert!(a.as_str().starts_with("conformance/check/"));
/// assert_ne!(a, dlock_runtime::conformance::fresh_name("check"));
/// ```
pub fn fresh_name(prefix: &str) -> LockName {
    let id = crate::backend::random_id();
    LockName::new(format!("conformance/{prefix}/{}", &id[..12])).expect("valid name")
}

impl Conformance {
    /// The checks for `backend`, with a short lease of 600 ms for the expiry checks.
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Conformance {
            other: Arc::new(FaultyBackend::new(backend.clone())),
            backend,
            ttl: Duration::from_millis(600),
        }
    }

    /// Every check, one after the other.
    pub async fn run_all(&self) {
        run_each(self).await;
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

    /// Takes `name` as another process would, waiting up to `timeout`.
    async fn take_as_other(&self, name: &LockName, timeout: Duration) -> Result<LockGuard, Error> {
        self.lock(name)
            .timeout(timeout)
            .acquire_on(self.other.clone())
            .await
    }

    /// How long a remote store may take to finish what a cancelled or dropped caller left
    /// behind (a release, a cleanup): a few round trips.
    fn settle(&self) -> Duration {
        if self.caps().local_calls {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(5)
        }
    }

    /// Waits until `name` is free, up to `limit`; panics with `why` otherwise.
    async fn wait_free(&self, name: &LockName, limit: Duration, why: &str) {
        let until = Instant::now() + limit;
        loop {
            let held = self.backend.inspect(name).await.expect("inspect");
            match held {
                None => return,
                Some(h) if Instant::now() >= until => {
                    panic!("{why}: {name} still held by {} after {limit:?}", h.owner)
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
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
        let err = self
            .take_as_other(&name, Duration::ZERO)
            .await
            .expect_err("another process acquired a held lock");
        assert!(matches!(err, Error::Busy { .. }), "{err}");
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
            .take_as_other(&name, Duration::from_secs(10))
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
            let waiter = self.take_as_other(&name, self.ttl / 4).await;
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
            .take_as_other(&name, self.ttl * 10)
            .await
            .expect("takeover of a stale lock");
        let err = self
            .backend
            .release(&stale)
            .await
            .expect_err("a stale owner released the new holder's lock");
        assert!(matches!(err, Error::Lost { .. }), "stale release: {err}");
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
        // A lost guard never touches the record, so this is safe even on a store that ignores
        // a stale delete's precondition.
        let err = guard
            .release()
            .await
            .expect_err("a guard released a lock that was taken from it");
        assert!(matches!(err, Error::Lost { .. }), "{err}");
        let holder = self.holder(&name).await;
        assert_eq!(holder.owner, stolen.owner, "the thief still holds it");
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
        let released = Instant::now();
        guard.release().await.expect("release with min_hold");
        assert!(
            released.elapsed() < hold / 2,
            "release returns at once, even with min_hold left ({:?})",
            released.elapsed()
        );
        tokio::time::sleep(hold / 4).await;
        self.assert_busy(&name, "within min_hold after release")
            .await;
        let next = self
            .take_as_other(&name, hold * 10)
            .await
            .expect("acquire after min_hold");
        assert!(
            start.elapsed() >= hold,
            "re-acquired after {:?}, inside min_hold {hold:?}",
            start.elapsed()
        );
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
        for task in 0..TASKS {
            let (suite, name) = (self.clone(), name.clone());
            let (counter, inside, overlaps) = (counter.clone(), inside.clone(), overlaps.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..ROUNDS {
                    // Half the tasks share this process's queue, half come from "elsewhere".
                    let guard = if task % 2 == 0 {
                        suite.take(&name, Duration::from_secs(60)).await
                    } else {
                        suite.take_as_other(&name, Duration::from_secs(60)).await
                    }
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
            let next = self
                .take_as_other(&name, self.ttl * 10)
                .await
                .expect("takeover");
            assert!(
                next.fencing_token().expect("token") > dead_token,
                "takeover token must be newer"
            );
            next.release().await.expect("release");
        }
    }

    /// `list` shows exactly the held locks under a prefix, with the holder `inspect` shows.
    pub async fn list_shows_held_locks(&self) {
        let base = fresh_name("list");
        let prefix = format!("{base}/");
        let names: Vec<LockName> = ["a", "b"]
            .iter()
            .map(|n| LockName::new(format!("{prefix}{n}")).expect("name"))
            .collect();
        let decoy = LockName::new(format!("{base}-decoy")).expect("name");
        let listed = |held: Vec<(LockName, Holder)>| -> Vec<String> {
            held.into_iter().map(|(n, _)| n.to_string()).collect()
        };
        assert!(
            self.backend.list(&prefix).await.expect("list").is_empty(),
            "nothing held yet"
        );
        let a = self.acquire(&names[0]).await;
        let b = self.acquire(&names[1]).await;
        let c = self.acquire(&decoy).await;
        let held = self.backend.list(&prefix).await.expect("list");
        assert_eq!(
            listed(held.clone()),
            [names[0].to_string(), names[1].to_string()],
            "the held locks under the prefix, sorted, and nothing else"
        );
        for (name, holder) in &held {
            let seen = self.holder(name).await;
            assert_eq!(
                (&holder.owner, &holder.version),
                (&seen.owner, &seen.version)
            );
        }
        a.release().await.expect("release");
        assert_eq!(
            listed(self.backend.list(&prefix).await.expect("list")),
            [names[1].to_string()]
        );
        b.release().await.expect("release");
        c.release().await.expect("release");
        assert!(self.backend.list(&prefix).await.expect("list").is_empty());
    }

    /// `inspect` and `list` never change a lock, and never make a concurrent acquirer see it
    /// busy.
    pub async fn reads_never_make_an_acquirer_see_busy(&self) {
        let name = fresh_name("reads");
        let rounds = if self.caps().local_calls { 200 } else { 10 };
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (backend, name, stop) = (self.other.clone(), name.clone(), stop.clone());
            tokio::spawn(async move {
                let mut reads = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    backend.inspect(&name).await.expect("inspect");
                    backend.list(name.as_str()).await.expect("list");
                    reads += 1;
                    tokio::task::yield_now().await;
                }
                reads
            })
        };
        for round in 0..rounds {
            match self.take(&name, Duration::ZERO).await {
                Ok(guard) => guard.release().await.expect("release"),
                Err(e) => panic!("round {round}: a read made a free lock look busy: {e}"),
            }
        }
        stop.store(true, Ordering::SeqCst);
        let reads = reader.await.expect("reader");
        assert!(reads > 0, "the reader ran");
    }

    /// An operator's forced release frees a lock only at the version they saw: a stale one is
    /// refused and changes nothing. Without leases, a live holder's lock cannot be forced.
    pub async fn stale_force_release_is_refused(&self) {
        let name = fresh_name("force");
        let first = self.acquire(&name).await;
        let old = self.holder(&name).await.version;
        first.release().await.expect("release");
        let guard = self.acquire(&name).await;
        let current = self.holder(&name).await;
        assert_ne!(current.version, old, "a new acquisition is a new version");
        let err = self
            .backend
            .force_release(&name, &old)
            .await
            .expect_err("a stale version freed a newer holder's lock");
        assert!(matches!(err, Error::Changed { .. }), "{err}");
        assert_eq!(
            self.holder(&name).await.owner,
            current.owner,
            "a refused forced release changes nothing"
        );
        if !self.caps().leases {
            let err = self
                .backend
                .force_release(&name, &current.version)
                .await
                .expect_err("a live holder's OS lock cannot be forced");
            assert!(!err.is_temporary(), "{err}");
            guard.release().await.expect("release");
            self.backend
                .force_release(&name, &current.version)
                .await
                .expect("a free lock is free already");
            return;
        }
        self.backend
            .force_release(&name, &current.version)
            .await
            .expect("the version the operator saw");
        self.assert_free(&name, "after a forced release").await;
        self.backend
            .force_release(&name, &current.version)
            .await
            .expect("freeing a free lock again is fine");
        // The holder learns at its next renewal.
        tokio::time::timeout(self.ttl * 2, guard.handle().lost())
            .await
            .expect("the holder noticed its lock was freed");
        let err = guard.release().await.expect_err("its lock was freed");
        assert!(matches!(err, Error::Lost { .. }), "{err}");
    }

    /// The holder's `is_lost` turns true no later than the earliest moment another process
    /// can take the lock over: when renewals hang, when acquire answers were lost (the lease is
    /// dated from the first write that may have landed), and when renewal answers were lost.
    /// Without leases, a holder whose renewals fail still keeps its lock.
    pub async fn loss_is_known_before_takeover(&self) {
        let scenarios: [(&str, Vec<Fault>, Vec<Fault>); 3] = [
            ("renewals hang", vec![], vec![]),
            (
                "three acquire answers lost",
                vec![Fault::LoseAnswer, Fault::LoseAnswer, Fault::LoseAnswer],
                vec![],
            ),
            (
                "three renewal answers lost",
                vec![],
                vec![Fault::LoseAnswer, Fault::LoseAnswer, Fault::LoseAnswer],
            ),
        ];
        // The scenarios run side by side, each on its own lock.
        let runs: Vec<_> = scenarios
            .into_iter()
            .map(|(what, acquire, renew)| {
                let suite = self.clone();
                tokio::spawn(async move { suite.loss_before_takeover(what, acquire, renew).await })
            })
            .collect();
        for run in runs {
            if let Err(e) = run.await {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }

    async fn loss_before_takeover(
        &self,
        what: &'static str,
        acquire: Vec<Fault>,
        renew: Vec<Fault>,
    ) {
        let name = fresh_name("invariant");
        let faulty = Arc::new(FaultyBackend::new(self.backend.clone()));
        faulty.on_acquire(acquire);
        faulty.on_renew(renew);
        faulty.on_every_renewal(Some(Fault::Hang));
        let acquiring = {
            let lock = self.lock(&name).timeout(self.ttl * 5);
            let faulty = faulty.clone();
            tokio::spawn(async move { lock.acquire_on(faulty).await })
        };
        // The waiter starts the moment the holder's first write has landed (its answer may be
        // lost), so it sees the record as early as any process could.
        let until = Instant::now() + Duration::from_secs(10);
        while self
            .backend
            .inspect(&name)
            .await
            .expect("inspect")
            .is_none()
        {
            assert!(
                Instant::now() < until,
                "{what}: the holder's write never landed"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let patience = if self.caps().leases {
            self.ttl * 10
        } else {
            self.ttl * 2
        };
        let waiter = {
            let (suite, name) = (self.clone(), name.clone());
            tokio::spawn(async move {
                let guard = suite.take_as_other(&name, patience).await;
                (guard, Instant::now())
            })
        };
        let holder = acquiring
            .await
            .expect("join")
            .unwrap_or_else(|e| panic!("{what}: acquire: {e}"));
        let handle = holder.handle();
        let lost_at = tokio::spawn(async move {
            handle.lost().await;
            Instant::now()
        });
        let (taken, taken_at) = waiter.await.expect("waiter");
        if !self.caps().leases {
            let err = taken.expect_err("took a live holder's lock");
            assert!(matches!(err, Error::Timeout { .. }), "{what}: {err}");
            assert!(!holder.is_lost(), "{what}: an OS lock cannot be lost");
            holder.release().await.expect("release");
            lost_at.abort();
            return;
        }
        let taken = taken.unwrap_or_else(|e| panic!("{what}: takeover: {e}"));
        assert!(
            holder.is_lost(),
            "{what}: taken over while the holder thought it held"
        );
        let lost_at = lost_at.await.expect("lost");
        assert!(
            lost_at <= taken_at,
            "{what}: the holder knew it was lost {:?} after the takeover",
            lost_at - taken_at
        );
        let err = holder.release().await.expect_err("lost");
        assert!(matches!(err, Error::Lost { .. }), "{what}: {err}");
        taken.release().await.expect("release");
    }

    /// Renewal runs on dlock's own runtime: a holder whose body blocks its current-thread
    /// runtime for two leases keeps its lock, and no one takes it over meanwhile.
    pub async fn a_blocked_runtime_does_not_starve_renewal(&self) {
        let name = fresh_name("blocked");
        let (acquired_tx, acquired_rx) = tokio::sync::oneshot::channel();
        let holder = {
            let (suite, name) = (self.clone(), name.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async {
                    let guard = suite.acquire(&name).await;
                    let _ = acquired_tx.send(());
                    // The body blocks the runtime's only thread.
                    std::thread::sleep(suite.ttl * 2);
                    let lost = guard.is_lost();
                    (lost, guard.release().await)
                })
            })
        };
        acquired_rx.await.expect("the holder acquired");
        let err = self
            .take_as_other(&name, self.ttl * 3 / 2)
            .await
            .expect_err("taken over while its holder was blocked but alive");
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        let (lost, released) = tokio::task::spawn_blocking(move || holder.join())
            .await
            .expect("join")
            .expect("holder thread");
        assert!(!lost, "renewal was starved by the blocked runtime");
        released.expect("release after the block");
    }

    /// However a caller is cancelled — waiting in the queue, in the body, in the middle of a
    /// release, or while its acquiring write is on the way — the lock is free again soon after,
    /// at once where the backend is local.
    pub async fn cancellation_never_leaks_a_lock(&self) {
        let name = fresh_name("cancel");
        // Waiting: in this process's queue, and as another process.
        let holder = self.acquire(&name).await;
        let patience = Duration::from_secs(30);
        let local = tokio::time::timeout(self.ttl / 4, self.take(&name, patience)).await;
        assert!(
            local.is_err(),
            "the local waiter was cancelled while waiting"
        );
        let other = tokio::time::timeout(self.ttl / 4, self.take_as_other(&name, patience)).await;
        assert!(
            other.is_err(),
            "the other waiter was cancelled while waiting"
        );
        holder.release().await.expect("release");
        let next = self
            .take_as_other(&name, self.settle())
            .await
            .expect("cancelled waiters hold nothing");
        next.release().await.expect("release");

        // In the body: the task holding the guard is aborted. It is aborted only once it holds
        // the lock: aborted earlier, its acquiring write could land after the check below and be
        // cleaned up later, which is the last case's business.
        let (held_tx, held_rx) = tokio::sync::oneshot::channel();
        let body = {
            let (suite, name) = (self.clone(), name.clone());
            tokio::spawn(async move {
                let _guard = suite.acquire(&name).await;
                let _ = held_tx.send(());
                std::future::pending::<()>().await;
            })
        };
        held_rx.await.expect("the body acquired the lock");
        tokio::time::sleep(self.ttl / 4).await;
        body.abort();
        let _ = body.await;
        if self.caps().local_calls {
            self.assert_free(&name, "right after the body was cancelled")
                .await;
        }
        self.wait_free(&name, self.settle(), "after the body was cancelled")
            .await;

        // In the middle of a release.
        let guard = self.acquire(&name).await;
        let release = tokio::time::timeout(Duration::from_micros(1), guard.release()).await;
        drop(release);
        self.wait_free(&name, self.settle(), "after the release was cancelled")
            .await;

        // While the acquiring write may be on its way: cancelled at many points.
        for micros in [0u64, 100, 500, 1_000, 2_000, 5_000, 10_000, 30_000] {
            let name = fresh_name("cancel-write");
            let attempt = self.take(&name, Duration::ZERO);
            match tokio::time::timeout(Duration::from_micros(micros), attempt).await {
                Ok(Ok(guard)) => guard.release().await.expect("release"),
                Ok(Err(e)) => panic!("a free lock: {e}"),
                Err(_) => {}
            }
            // Within half a lease another process has it: sooner than any takeover, so only
            // the cleanup of a write that landed after the caller left can explain it.
            let again = self
                .take_as_other(&name, self.ttl / 2)
                .await
                .unwrap_or_else(|e| panic!("cancelled at {micros}us, then: {e}"));
            again.release().await.expect("release");
        }
    }

    /// A release that fails for a while is retried until it gets through.
    pub async fn release_retries_failures(&self) {
        let name = fresh_name("release-retry");
        let faulty = Arc::new(FaultyBackend::new(self.backend.clone()));
        let guard = self
            .lock(&name)
            .acquire_on(faulty.clone())
            .await
            .expect("acquire");
        faulty.on_release([Fault::Fail, Fault::Fail]);
        guard.release().await.expect("released after two failures");
        assert_eq!(faulty.calls().releases, 3, "{:?}", faulty.calls());
        self.assert_free(&name, "after a retried release").await;
    }
}
