//! The acquire loop, the local queue, renewal and release on tokio's paused clock: timings are
//! exact, not sampled. Faults are injected at the trait boundary around the memory backend.

use super::*;
use crate::backend::{AcquireOutcome, Capabilities, Lease};
use crate::conformance::{Fault, FaultyBackend};
use crate::{MemoryBackend, Owner};
use std::sync::Mutex;

fn name() -> LockName {
    LockName::new("paused").expect("name")
}

fn faulty() -> Arc<FaultyBackend> {
    Arc::new(FaultyBackend::new(Arc::new(MemoryBackend::new())))
}

fn polling(f: impl FnOnce(Capabilities) -> Capabilities) -> Arc<FaultyBackend> {
    Arc::new(FaultyBackend::new(Arc::new(MemoryBackend::new())).with_capabilities(f))
}

/// Holds `paused` as another owner that never renews, as a dead process would.
async fn dead_holder(backend: &FaultyBackend, ttl: Duration) -> Lease {
    let request = AcquireRequest::new(name(), Owner::generate(), ttl);
    match backend
        .inner()
        .try_acquire(&request)
        .await
        .expect("acquire")
    {
        AcquireOutcome::Acquired(lease) => lease,
        AcquireOutcome::Busy(_) => panic!("fresh backend"),
    }
}

/// A lock whose background work runs on the test's paused runtime.
fn lock() -> Lock {
    Lock::new("paused")
        .backoff(Backoff::default().with_seed(42))
        .background_runtime(tokio::runtime::Handle::current())
}

fn span(ttl: Duration) -> Duration {
    ttl - ttl / 100
}

/// Takes over the lock `backend` holds for a dead holder whose 10 s lease began just now: the
/// guard, and how long that took (never less than the lease).
async fn take_over(backend: &Arc<FaultyBackend>) -> (LockGuard, Duration) {
    let start = Instant::now();
    let guard = lock()
        .timeout(Duration::from_secs(60))
        .acquire_on(backend.clone())
        .await
        .expect("takeover");
    let waited = start.elapsed();
    assert!(waited >= Duration::from_secs(10), "{waited:?}");
    (guard, waited)
}

#[tokio::test(start_paused = true)]
async fn takeover_happens_one_ttl_after_the_version_was_first_seen() {
    let backend = faulty();
    dead_holder(&backend, Duration::from_secs(10)).await;
    let (guard, waited) = take_over(&backend).await;
    assert!(
        waited < Duration::from_secs(10) + Duration::from_millis(5),
        "woke at the stale time: {waited:?}"
    );
    assert_eq!(guard.fencing_token(), Some(2));
    assert!(
        backend.calls().acquires <= 3,
        "a notified waiter does not poll: {:?}",
        backend.calls()
    );
    guard.release().await.expect("release");
}

#[tokio::test(start_paused = true)]
async fn a_renewed_record_is_never_taken_over() {
    let backend = faulty();
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
    let renewals = backend.calls().renewals;
    assert!(
        (29..=30).contains(&renewals),
        "renewed every ttl/3 (1 s) for 30 s: {renewals}"
    );
    assert!(!holder.is_lost());
    holder.release().await.expect("release");
}

/// A takeover attempt that fails (no answer, a 5xx) is tried again as soon as a look finds the
/// same stale version: the version has still been unchanged for a whole lease, so the waiter
/// does not watch it for another one (a killed holder's lock stayed stranded 2 ttl that way).
#[tokio::test(start_paused = true)]
async fn a_failed_takeover_is_retried_without_watching_another_lease() {
    let backend = faulty();
    dead_holder(&backend, Duration::from_secs(10)).await;
    // The first look, the look when the version turns stale, then the takeover write fails.
    backend.on_acquire([
        Fault::Delay(Duration::ZERO),
        Fault::Delay(Duration::ZERO),
        Fault::Fail,
    ]);
    let (guard, waited) = take_over(&backend).await;
    assert!(
        waited < Duration::from_secs(11),
        "retried after a backoff, not another lease: {waited:?}"
    );
    guard.release().await.expect("release");
}

#[tokio::test(start_paused = true)]
async fn timeout_is_exact_and_a_notified_waiter_makes_no_extra_requests() {
    let backend = faulty();
    let _held = dead_holder(&backend, Duration::from_secs(3600)).await;
    let start = Instant::now();
    let err = lock()
        .timeout(Duration::from_secs(5))
        .acquire_on(backend.clone())
        .await
        .expect_err("held");
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert_eq!(
        backend.calls().acquires,
        2,
        "one attempt, then one last at the deadline: {:?}",
        backend.calls()
    );
}

#[tokio::test(start_paused = true)]
async fn without_notifications_waiters_poll_with_capped_backoff() {
    let backend = polling(|c| Capabilities {
        notified_waiting: false,
        ..c
    });
    let _held = dead_holder(&backend, Duration::from_secs(3600)).await;
    let err = lock()
        .timeout(Duration::from_secs(5))
        .acquire_on(backend.clone())
        .await
        .expect_err("held");
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    let writes = backend.calls().acquires;
    assert!(
        (8..=16).contains(&writes),
        "capped backoff, not a busy loop: {writes} writes in 5 s"
    );
}

#[tokio::test(start_paused = true)]
async fn rate_limited_stores_are_polled_with_reads() {
    let backend = polling(|c| Capabilities {
        poll_with_reads: true,
        notified_waiting: false,
        ..c
    });
    let held = dead_holder(&backend, Duration::from_secs(3600)).await;
    let releaser = {
        let backend = backend.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(4)).await;
            backend.inner().release(&held).await
        })
    };
    let guard = lock()
        .timeout(Duration::from_secs(10))
        .acquire_on(backend.clone())
        .await
        .expect("acquired after the release");
    releaser.await.expect("join").expect("release");
    assert_eq!(
        backend.calls().acquires,
        2,
        "one write to try, one when the read saw it free"
    );
    assert!(backend.calls().reads >= 4, "waited with reads");
    guard.release().await.expect("release");
}

#[tokio::test(start_paused = true)]
async fn temporary_errors_are_retried_and_permanent_ones_are_not() {
    let backend = faulty();
    backend.on_acquire([Fault::Fail, Fault::Fail, Fault::Fail]);
    let guard = lock()
        .timeout(Duration::from_secs(10))
        .acquire_on(backend.clone())
        .await
        .expect("succeeds after three failures");
    assert_eq!(backend.calls().acquires, 4);
    guard.release().await.expect("release");

    backend.on_acquire([Fault::FailPermanently]);
    let start = Instant::now();
    let err = lock()
        .timeout(Duration::from_secs(10))
        .acquire_on(backend.clone())
        .await
        .expect_err("permanent");
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "no retry of a permanent error"
    );
    assert!(!err.is_temporary(), "{err}");

    backend.on_acquire((0..100).map(|_| Fault::Fail));
    let err = lock()
        .timeout(Duration::from_secs(2))
        .acquire_on(backend.clone())
        .await
        .expect_err("failures");
    assert!(
        err.is_temporary(),
        "the last backend error is reported, not a timeout: {err}"
    );
    assert_eq!(err.operation(), Some(crate::Operation::Acquire), "{err}");
    assert_eq!(err.lock_name(), Some("paused"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_hung_backend_cannot_make_acquire_overrun_its_timeout() {
    let backend = faulty();
    backend.on_acquire((0..10).map(|_| Fault::Hang));
    let start = Instant::now();
    let err = lock()
        .timeout(Duration::from_secs(3))
        .acquire_on(backend.clone())
        .await
        .expect_err("no answer");
    assert_eq!(start.elapsed(), Duration::from_secs(3), "{err}");
    assert!(
        err.is_temporary() && err.to_string().contains("no answer"),
        "{err}"
    );

    // One attempt (timeout 0) is bounded by the call timeout.
    let start = Instant::now();
    let err = lock()
        .call_timeout(Duration::from_millis(700))
        .acquire_on(backend.clone())
        .await
        .expect_err("no answer");
    assert_eq!(start.elapsed(), Duration::from_millis(700), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_lease_that_cannot_be_renewed_is_lost_when_it_runs_out() {
    let backend = faulty();
    backend.on_every_renewal(Some(Fault::Fail));
    let start = Instant::now();
    let ttl = Duration::from_secs(9);
    let guard = lock()
        .ttl(ttl)
        .acquire_on(backend.clone())
        .await
        .expect("acquire");
    assert_eq!(
        guard.valid_until(),
        Some((start + span(ttl)).into_std()),
        "the lease runs from the acquiring write"
    );
    let handle = guard.handle();
    handle.lost().await;
    assert_eq!(
        start.elapsed(),
        span(ttl),
        "lost exactly when the lease ran out"
    );
    assert!(backend.calls().renewals > 3, "kept retrying until then");
    assert!(matches!(
        handle.until_lost(std::future::pending::<()>()).await,
        Err(Error::Lost { .. })
    ));
    // A lost guard never touches the record, which may be someone else's by now.
    let releases = backend.calls().releases;
    assert!(matches!(guard.release().await, Err(Error::Lost { .. })));
    assert_eq!(backend.calls().releases, releases);
}

#[tokio::test(start_paused = true)]
async fn hung_renewals_are_lost_before_any_waiter_can_take_over() {
    let backend = faulty();
    backend.on_every_renewal(Some(Fault::Hang));
    let ttl = Duration::from_secs(6);
    let holder = lock()
        .ttl(ttl)
        .acquire_on(backend.clone())
        .await
        .expect("acquire");
    let handle = holder.handle();
    let lost_at = Arc::new(Mutex::new(None));
    {
        let (handle, lost_at) = (handle.clone(), lost_at.clone());
        tokio::spawn(async move {
            handle.lost().await;
            *lost_at.lock().expect("lost_at") = Some(Instant::now());
        });
    }
    let waiter = lock()
        .ttl(ttl)
        .timeout(Duration::from_secs(60))
        .acquire_on(backend.clone())
        .await
        .expect("takeover");
    let taken = Instant::now();
    let lost = lost_at.lock().expect("lost_at").expect("the holder knew");
    assert!(lost < taken, "lost at {lost:?}, taken over at {taken:?}");
    assert!(handle.is_lost());
    waiter.release().await.expect("release");
    drop(holder);
}

#[tokio::test(start_paused = true)]
async fn the_lease_clock_starts_at_the_first_write_whose_answer_was_lost() {
    let backend = faulty();
    backend.on_acquire([Fault::LoseAnswer, Fault::Fail, Fault::Fail]);
    let ttl = Duration::from_secs(10);
    let start = Instant::now();
    let guard = lock()
        .ttl(ttl)
        .timeout(Duration::from_secs(30))
        .acquire_on(backend.clone())
        .await
        .expect("the lost write was ours");
    assert!(start.elapsed() > Duration::ZERO, "retried after backoff");
    assert_eq!(
        guard.valid_until(),
        Some((start + span(ttl)).into_std()),
        "dated from the first write, not the one that found it"
    );
    assert_eq!(guard.fencing_token(), Some(1), "one acquisition, one token");
    guard.release().await.expect("release");
}

#[tokio::test(start_paused = true)]
async fn a_renewal_whose_answer_was_lost_dates_the_lease_from_when_it_was_sent() {
    let backend = faulty();
    let ttl = Duration::from_secs(9);
    let start = Instant::now();
    let guard = lock()
        .ttl(ttl)
        .acquire_on(backend.clone())
        .await
        .expect("acquire");
    backend.on_renew([Fault::LoseAnswer, Fault::Fail]);
    // Renewal 1 at 3 s lands unseen; retries follow the backoff until one is confirmed.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(backend.calls().renewals >= 3, "{:?}", backend.calls());
    assert_eq!(
        guard.valid_until(),
        Some((start + Duration::from_secs(3) + span(ttl)).into_std()),
        "dated from the renewal whose answer was lost"
    );
    assert!(!guard.is_lost());
    guard.release().await.expect("release");
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_release_still_completes() {
    let backend = faulty();
    let guard = lock().acquire_on(backend.clone()).await.expect("acquire");
    backend.on_release([Fault::Delay(Duration::from_secs(1))]);
    let release = tokio::time::timeout(Duration::from_millis(10), guard.release()).await;
    assert!(release.is_err(), "cancelled mid-release");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(backend.inspect(&name()).await.expect("inspect").is_none());
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_acquire_frees_what_its_write_took() {
    let backend = polling(|c| Capabilities {
        local_calls: false,
        ..c
    });
    backend.on_acquire([Fault::Delay(Duration::from_secs(1))]);
    let acquire = lock()
        .timeout(Duration::from_secs(10))
        .acquire_on(backend.clone());
    assert!(
        tokio::time::timeout(Duration::from_millis(100), acquire)
            .await
            .is_err(),
        "cancelled while its write was on the way"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(backend.calls().acquires, 1);
    assert!(
        backend.inspect(&name()).await.expect("inspect").is_none(),
        "the write landed after the caller left, and was undone"
    );
    assert_eq!(backend.calls().releases, 1);
}

#[tokio::test(start_paused = true)]
async fn local_waiters_queue_in_order_and_cost_one_write_each() {
    let backend = faulty();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..32 {
        let (backend, order) = (backend.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let guard = lock()
                .timeout(Duration::from_secs(60))
                .acquire_on(backend)
                .await
                .expect("acquire");
            order.lock().expect("order").push(i);
            tokio::time::sleep(Duration::from_millis(10)).await;
            guard.release().await.expect("release");
        }));
        // Each task starts waiting before the next one.
        tokio::task::yield_now().await;
    }
    for task in tasks {
        task.await.expect("task");
    }
    assert_eq!(*order.lock().expect("order"), (0..32).collect::<Vec<_>>());
    assert_eq!(backend.calls().acquires, 32, "{:?}", backend.calls());
}

#[tokio::test(start_paused = true)]
async fn a_local_holder_makes_one_attempt_fail_without_a_request() {
    let backend = faulty();
    let held = lock().acquire_on(backend.clone()).await.expect("acquire");
    let err = lock().acquire_on(backend.clone()).await.expect_err("busy");
    assert!(matches!(err, Error::Busy { .. }), "{err}");
    assert!(err.to_string().contains("held by this process"), "{err}");
    assert_eq!(backend.calls().acquires, 1);
    held.release().await.expect("release");
}

#[tokio::test(start_paused = true)]
async fn no_duration_makes_it_panic() {
    let backend = faulty();
    let guard = lock()
        .timeout(Duration::MAX)
        .ttl(Duration::MAX)
        .min_hold(Duration::MAX)
        .call_timeout(Duration::MAX)
        .acquire_on(backend.clone())
        .await
        .expect("acquire");
    assert!(!guard.is_lost());
    drop(guard);
    let err = lock()
        .ttl(Duration::from_millis(1))
        .acquire_on(backend.clone())
        .await
        .expect_err("ttl too short to renew");
    assert!(err.to_string().contains("at least 3ms"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn waiters_of_different_processes_get_the_lock_in_arrival_order() {
    // Each "process" is its own handle on one memory store: no shared local queue.
    let store: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let process = || -> Arc<dyn Backend> { Arc::new(FaultyBackend::new(store.clone())) };
    let first = process();
    let holder = lock().acquire_on(first.clone()).await.expect("acquire");
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 1..=3 {
        let (backend, order) = (process(), order.clone());
        waiters.push(tokio::spawn(async move {
            let guard = lock()
                .timeout(Duration::from_secs(60))
                .acquire_on(backend)
                .await
                .expect("acquire");
            order.lock().expect("order").push(i);
            tokio::time::sleep(Duration::from_millis(50)).await;
            guard.release().await.expect("release");
        }));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    holder.release().await.expect("release");
    // The releaser comes straight back, and must let the three that waited go first.
    let again = lock()
        .timeout(Duration::from_secs(60))
        .acquire_on(first)
        .await
        .expect("acquire again");
    order.lock().expect("order").push(0);
    again.release().await.expect("release");
    for waiter in waiters {
        waiter.await.expect("waiter");
    }
    assert_eq!(*order.lock().expect("order"), [1, 2, 3, 0]);
}

#[tokio::test(start_paused = true)]
async fn an_acquisition_confirmed_after_its_lease_ran_out_is_renewed_before_use() {
    let backend = faulty();
    backend.on_acquire([Fault::Delay(Duration::from_secs(2))]);
    let ttl = Duration::from_secs(1);
    let start = Instant::now();
    let guard = lock()
        .ttl(ttl)
        .timeout(Duration::from_secs(10))
        .acquire_on(backend.clone())
        .await
        .expect("acquire");
    assert!(!guard.is_lost(), "a guard is never handed out already lost");
    assert_eq!(
        guard.valid_until(),
        Some((start + Duration::from_secs(2) + span(ttl)).into_std()),
        "dated from the renewal made on receipt"
    );
    assert_eq!(backend.calls().renewals, 1);
    guard.release().await.expect("release");
}
