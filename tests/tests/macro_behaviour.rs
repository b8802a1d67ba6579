//! `#[distributed_lock]` as users write it: every supported function shape, every return-type
//! rule, and every way a body can end. Each test uses its own scoped registry.

use dlock_runtime::{Backend, Error, LockName, MemoryBackend, Registry, distributed_lock};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
enum AppError {
    #[error(transparent)]
    Lock(#[from] Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Body(String),
}

/// A registry with one memory backend, and that backend for inspection.
fn memory_registry() -> (Registry, Arc<MemoryBackend>) {
    let backend = Arc::new(MemoryBackend::new());
    let registry = Registry::builder()
        .backend_arc("memory", backend.clone())
        .build()
        .expect("registry");
    (registry, backend)
}

async fn holder_of(backend: &MemoryBackend, name: &str) -> Option<String> {
    let name = LockName::new(name).expect("name");
    backend
        .inspect(&name)
        .await
        .expect("inspect")
        .map(|h| h.owner.id)
}

/// Holds `name` from outside the function under test, until the returned guard is released.
async fn hold(name: &str) -> dlock_runtime::LockGuard {
    dlock_runtime::Lock::new(name)
        .acquire()
        .await
        .expect("hold")
}

#[distributed_lock(name = "deploy-{env}")]
async fn deploy(env: &str) -> Result<String, AppError> {
    let lock = dlock_runtime::current().expect("inside the lock");
    Ok(format!("{env} under {}", lock.name()))
}

#[tokio::test]
async fn async_result_runs_when_free_and_errs_when_busy() {
    let (registry, _) = memory_registry();
    registry
        .scope(async {
            assert_eq!(
                deploy("prod").await.expect("free"),
                "prod under deploy-prod"
            );
            let held = hold("deploy-prod").await;
            match deploy("prod").await {
                Err(AppError::Lock(Error::Busy { name, holder, .. })) => {
                    assert_eq!(name, "deploy-prod");
                    assert_eq!(holder.expect("holder").owner.pid, std::process::id());
                }
                other => panic!("expected a busy error, got {other:?}"),
            }
            assert!(
                deploy("staging").await.is_ok(),
                "another name is independent"
            );
            held.release().await.expect("release");
        })
        .await;
}

static OPTION_RUNS: AtomicUsize = AtomicUsize::new(0);

#[distributed_lock(name = "optional")]
async fn optional() -> Option<u32> {
    OPTION_RUNS.fetch_add(1, Ordering::SeqCst);
    Some(1)
}

static UNIT_RUNS: AtomicUsize = AtomicUsize::new(0);

#[distributed_lock(name = "unit")]
fn unit_job() {
    UNIT_RUNS.fetch_add(1, Ordering::SeqCst);
}

#[tokio::test]
async fn option_gets_none_and_unit_skips_the_body() {
    let (registry, _) = memory_registry();
    registry
        .scope(async {
            assert_eq!(optional().await, Some(1));
            let held = hold("optional").await;
            assert_eq!(optional().await, None);
            assert_eq!(
                OPTION_RUNS.load(Ordering::SeqCst),
                1,
                "the body did not run while busy"
            );
            held.release().await.expect("release");

            unit_job();
            let held = hold("unit").await;
            unit_job();
            assert_eq!(
                UNIT_RUNS.load(Ordering::SeqCst),
                1,
                "the body was skipped while busy"
            );
            held.release().await.expect("release");
        })
        .await;
}

#[distributed_lock(name = "sync-{n}", timeout = "2s")]
fn sync_double(n: u32) -> Result<u32, AppError> {
    let token = dlock_runtime::current().and_then(|l| l.fencing_token());
    if token.is_none() {
        return Err(AppError::Body("no fencing token inside the body".into()));
    }
    Ok(n * 2)
}

#[test]
fn sync_fn_outside_any_runtime() {
    let (registry, backend) = memory_registry();
    registry.scope_sync(|| {
        assert_eq!(sync_double(21).expect("runs"), 42);
        assert_eq!(sync_double(21).expect("runs again after release"), 42);
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    assert!(
        rt.block_on(holder_of(&backend, "sync-21")).is_none(),
        "released"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn sync_fn_inside_a_current_thread_runtime() {
    let (registry, _) = memory_registry();
    registry
        .scope(async { assert_eq!(sync_double(2).expect("runs"), 4) })
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_fn_inside_a_multi_thread_runtime() {
    let (registry, _) = memory_registry();
    registry
        .scope(async { assert_eq!(sync_double(3).expect("runs"), 6) })
        .await;
}

struct Service {
    name: String,
    calls: u32,
}

impl Service {
    #[distributed_lock(name = "svc-{self}")]
    fn by_ref(&self) -> Option<String> {
        Some(self.name.clone())
    }

    #[distributed_lock(name = "svc-mut")]
    async fn by_mut(&mut self) -> Result<u32, AppError> {
        self.calls += 1;
        Ok(self.calls)
    }

    #[distributed_lock(name = "svc-owned")]
    fn by_value(self) -> Option<String> {
        Some(self.name)
    }
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

#[distributed_lock(name = "generic-{item}")]
fn generic<T: std::fmt::Display + Clone>(item: T) -> Option<T> {
    Some(item.clone())
}

#[tokio::test]
async fn methods_and_generics() {
    let (registry, _) = memory_registry();
    registry
        .scope(async {
            let mut svc = Service {
                name: "api".into(),
                calls: 0,
            };
            assert_eq!(svc.by_ref().as_deref(), Some("api"));
            let held = hold("svc-api").await;
            assert_eq!(svc.by_ref(), None, "the name came from self's Display");
            held.release().await.expect("release");
            assert_eq!(svc.by_mut().await.expect("runs"), 1);
            assert_eq!(svc.by_mut().await.expect("runs"), 2);
            assert_eq!(svc.by_value().as_deref(), Some("api"));
            assert_eq!(generic(7u8), Some(7));
            let held = hold("generic-x").await;
            assert_eq!(generic("x"), None);
            held.release().await.expect("release");
        })
        .await;
}

mod default_names {
    use super::*;

    #[distributed_lock]
    pub async fn nightly() -> Option<String> {
        dlock_runtime::current().map(|l| l.name().to_string())
    }
}

#[tokio::test]
async fn default_name_is_module_path_and_fn_name() {
    let (registry, _) = memory_registry();
    let name = registry.scope(default_names::nightly()).await;
    assert_eq!(
        name.as_deref(),
        Some("macro_behaviour::default_names::nightly")
    );
}

// This shape is the subject of the test, so it is not written as an `async fn`.
#[allow(clippy::manual_async_fn)]
#[distributed_lock(name = "future-body")]
fn future_body(backend: Arc<MemoryBackend>) -> impl Future<Output = Option<bool>> {
    async move {
        tokio::task::yield_now().await;
        Some(holder_of(&backend, "future-body").await.is_some())
    }
}

#[tokio::test]
async fn impl_future_holds_the_lock_while_the_future_runs() {
    let (registry, backend) = memory_registry();
    registry
        .scope(async {
            let fut = future_body(backend.clone());
            assert!(
                holder_of(&backend, "future-body").await.is_none(),
                "building the future takes no lock"
            );
            assert_eq!(fut.await, Some(true), "held while the body ran");
            assert!(
                holder_of(&backend, "future-body").await.is_none(),
                "released after"
            );
        })
        .await;
}

#[async_trait::async_trait]
trait Job {
    async fn run(&self, backend: Arc<MemoryBackend>) -> Result<bool, AppError>;
}

struct Nightly;

#[async_trait::async_trait]
impl Job for Nightly {
    #[distributed_lock(name = "trait-job")]
    async fn run(&self, backend: Arc<MemoryBackend>) -> Result<bool, AppError> {
        tokio::task::yield_now().await;
        Ok(holder_of(&backend, "trait-job").await.is_some())
    }
}

#[tokio::test]
async fn async_trait_methods_hold_the_lock_across_the_body() {
    let (registry, backend) = memory_registry();
    registry
        .scope(async {
            let job: Box<dyn Job + Send + Sync> = Box::new(Nightly);
            let fut = job.run(backend.clone());
            assert!(
                holder_of(&backend, "trait-job").await.is_none(),
                "building the future takes no lock"
            );
            assert!(fut.await.expect("runs"), "held while the body ran");
            let held = hold("trait-job").await;
            assert!(matches!(
                job.run(backend.clone()).await,
                Err(AppError::Lock(Error::Busy { .. }))
            ));
            held.release().await.expect("release");
        })
        .await;
}

#[distributed_lock(name = "exits")]
async fn exits(how: &str) -> Result<u32, AppError> {
    match how {
        "return" => return Ok(1),
        "question-mark" => Err::<(), _>(std::io::Error::other("body failed"))?,
        "panic" => panic!("body panicked"),
        "sleep" => tokio::time::sleep(Duration::from_secs(60)).await,
        _ => {}
    }
    Ok(0)
}

#[distributed_lock(name = "sync-exits")]
fn sync_exits(how: &str) -> Result<u32, AppError> {
    match how {
        "return" => return Ok(1),
        "question-mark" => Err::<(), _>(std::io::Error::other("body failed"))?,
        "panic" => panic!("body panicked"),
        _ => {}
    }
    Ok(0)
}

#[tokio::test]
async fn every_exit_releases_the_lock() {
    let (registry, backend) = memory_registry();
    registry
        .scope(async {
            assert_eq!(exits("return").await.expect("early return"), 1);
            assert!(
                matches!(exits("question-mark").await, Err(AppError::Io(_))),
                "? keeps the body's error"
            );
            assert_eq!(exits("normal").await.expect("normal"), 0);
            assert!(holder_of(&backend, "exits").await.is_none());

            let panicked = tokio::spawn(scoped(registry.clone(), exits("panic"))).await;
            assert!(panicked.is_err_and(|e| e.is_panic()));
            wait_free(&backend, "exits").await;

            let cancelled = tokio::time::timeout(Duration::from_millis(50), exits("sleep")).await;
            assert!(cancelled.is_err(), "the call was cancelled mid-body");
            wait_free(&backend, "exits").await;

            assert_eq!(sync_exits("return").expect("early return"), 1);
            assert!(matches!(sync_exits("question-mark"), Err(AppError::Io(_))));
            let result = std::panic::catch_unwind(|| sync_exits("panic"));
            assert!(result.is_err());
            wait_free(&backend, "sync-exits").await;
        })
        .await;
}

/// A dropped guard releases in the background: wait briefly for it.
async fn wait_free(backend: &MemoryBackend, name: &str) {
    for _ in 0..100 {
        if holder_of(backend, name).await.is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{name} was not released");
}

/// `registry.scope(f)` as an owned future, for `tokio::spawn`.
async fn scoped<F: Future>(registry: Registry, f: F) -> F::Output {
    registry.scope(f).await
}

#[distributed_lock(name = "waits", timeout = "5s")]
async fn waits() -> Option<()> {
    Some(())
}

#[distributed_lock(name = "gives-up", timeout = "300ms")]
async fn gives_up() -> Result<(), AppError> {
    Ok(())
}

#[tokio::test]
async fn timeout_waits_for_the_holder_then_gives_up() {
    let (registry, _) = memory_registry();
    registry
        .scope(async {
            let held = hold("waits").await;
            let release = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                held.release().await
            });
            assert_eq!(waits().await, Some(()), "waited for the release");
            release.await.expect("join").expect("release");

            let held = hold("gives-up").await;
            let start = std::time::Instant::now();
            let err = gives_up().await.unwrap_err();
            assert!(start.elapsed() >= Duration::from_millis(300));
            assert!(
                matches!(err, AppError::Lock(Error::Timeout { .. })),
                "{err}"
            );
            let text = err.to_string();
            assert!(
                text.starts_with("timed out after 3")
                    && text.contains("ms waiting for lock `gives-up`"),
                "{text}"
            );
            held.release().await.expect("release");
        })
        .await;
}

#[distributed_lock(name = "min-hold", min_hold = "400ms")]
async fn short_job() -> Option<()> {
    Some(())
}

#[tokio::test]
async fn min_hold_keeps_a_short_job_locked() {
    let (registry, _) = memory_registry();
    registry
        .scope(async {
            let start = std::time::Instant::now();
            assert_eq!(short_job().await, Some(()));
            assert!(
                start.elapsed() < Duration::from_millis(300),
                "release does not block on a lease backend"
            );
            assert_eq!(
                short_job().await,
                None,
                "a second run inside min_hold is refused"
            );
            tokio::time::sleep(Duration::from_millis(900)).await;
            // The leftover record expires after being seen unchanged for the rest of min_hold.
            let again = dlock_runtime::Lock::new("min-hold")
                .timeout(Duration::from_secs(2))
                .acquire()
                .await;
            assert!(again.is_ok());
        })
        .await;
}

#[distributed_lock(name = "cancellable", ttl = "300ms", cancel_on_loss)]
async fn cancellable(steps: Arc<AtomicUsize>) -> Result<(), AppError> {
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        steps.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn cancel_on_loss_stops_the_body_when_the_lock_is_taken() {
    let (registry, backend) = memory_registry();
    let steps = Arc::new(AtomicUsize::new(0));
    let run = tokio::spawn(scoped(registry.clone(), cancellable(steps.clone())));
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Another owner takes the lock over (as if this holder's lease had run out).
    let name = LockName::new("cancellable").expect("name");
    let current = backend
        .inspect(&name)
        .await
        .expect("inspect")
        .expect("held");
    let thief = dlock_runtime::AcquireRequest::new(
        name,
        dlock_runtime::Owner::generate(),
        Duration::from_secs(5),
    )
    .replacing(current.version);
    let taken = backend.try_acquire(&thief).await.expect("takeover");
    assert!(matches!(taken, dlock_runtime::AcquireOutcome::Acquired(_)));
    let result = tokio::time::timeout(Duration::from_secs(2), run)
        .await
        .expect("the body was cancelled");
    assert!(matches!(
        result.expect("join"),
        Err(AppError::Lock(Error::Lost { .. }))
    ));
    let after = steps.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        steps.load(Ordering::SeqCst),
        after,
        "the body stopped running"
    );
}

#[distributed_lock(name = "file-io", backend = "file")]
fn writes_a_missing_file(path: &std::path::Path) -> Result<(), AppError> {
    std::fs::write(path.join("no/such/dir/out.txt"), b"x")?;
    Ok(())
}

#[test]
fn the_bodys_io_errors_are_not_reported_as_busy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = Registry::builder()
        .backend(
            "file",
            dlock_runtime::FileBackend::new(dir.path().join("locks")).expect("dir"),
        )
        .build()
        .expect("registry");
    registry.scope_sync(|| {
        match writes_a_missing_file(dir.path()) {
            Err(AppError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound),
            other => panic!("the body's own error must come back unchanged, got {other:?}"),
        }
        // And the lock was released: a second call fails the same way, not as busy.
        assert!(matches!(
            writes_a_missing_file(dir.path()),
            Err(AppError::Io(_))
        ));
    });
}

#[distributed_lock(name = "x-{n}")]
fn runtime_name(n: &str) -> Result<(), AppError> {
    let _ = n;
    Ok(())
}

#[test]
fn invalid_names_from_arguments_are_runtime_errors() {
    let (registry, _) = memory_registry();
    registry.scope_sync(|| {
        let err = runtime_name("line\nbreak").unwrap_err();
        assert!(
            matches!(err, AppError::Lock(Error::InvalidName { .. })),
            "{err}"
        );
        assert!(err.to_string().contains("control character"), "{err}");
        let err = runtime_name(&"y".repeat(2000)).unwrap_err();
        assert!(err.to_string().contains("the limit is 1024"), "{err}");
    });
}

#[distributed_lock(name = "elsewhere", backend = "nope")]
fn unknown_backend() -> Result<(), AppError> {
    Ok(())
}

#[test]
fn an_unknown_backend_lists_the_registered_ones() {
    let (registry, _) = memory_registry();
    let err = registry.scope_sync(unknown_backend).unwrap_err();
    assert!(
        err.to_string()
            .contains("unknown dlock backend `nope`; the registry has: memory"),
        "{err}"
    );
}

#[distributed_lock(name = "nested", timeout = "5s")]
async fn outer_async() -> Result<(), AppError> {
    inner_async().await
}

#[distributed_lock(name = "nested", timeout = "5s")]
async fn inner_async() -> Result<(), AppError> {
    Ok(())
}

#[distributed_lock(name = "nested-sync", timeout = "5s")]
fn outer_sync() -> Result<(), AppError> {
    inner_sync()
}

#[distributed_lock(name = "nested-sync", timeout = "5s")]
fn inner_sync() -> Result<(), AppError> {
    Ok(())
}

#[tokio::test]
async fn a_nested_acquisition_is_reported_at_once_as_such() {
    let (registry, _) = memory_registry();
    let start = std::time::Instant::now();
    let err = registry.scope(outer_async()).await.unwrap_err();
    assert!(
        matches!(err, AppError::Lock(Error::Reentrant { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("not re-entrant"), "{err}");
    let err = registry.scope_sync(outer_sync).unwrap_err();
    assert!(
        matches!(err, AppError::Lock(Error::Reentrant { .. })),
        "{err}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "no waiting for itself: {:?}",
        start.elapsed()
    );
    assert!(registry.scope(outer_async()).await.is_err());
    assert!(
        registry.scope(inner_async()).await.is_ok(),
        "the lock was released after the refused nested call"
    );
}

#[distributed_lock(name = "single-thread", timeout = "5s")]
fn sync_waiter() -> Result<(), AppError> {
    Ok(())
}

#[tokio::test(flavor = "current_thread")]
async fn a_synchronous_wait_that_would_block_the_holders_runtime_is_refused() {
    let (registry, _) = memory_registry();
    registry
        .scope(async {
            // Another task of this single-threaded runtime holds the lock.
            let (held_tx, held_rx) = tokio::sync::oneshot::channel();
            let holder = tokio::spawn(scoped(registry.clone(), async move {
                let guard = hold("single-thread").await;
                let _ = held_tx.send(());
                tokio::time::sleep(Duration::from_millis(300)).await;
                guard.release().await.expect("release");
            }));
            held_rx.await.expect("held");
            let start = std::time::Instant::now();
            let err = sync_waiter().unwrap_err();
            assert!(
                matches!(err, AppError::Lock(Error::WouldDeadlock { .. })),
                "{err}"
            );
            assert!(err.to_string().contains("spawn_blocking"), "{err}");
            assert!(start.elapsed() < Duration::from_secs(1));
            holder.await.expect("holder");
            assert!(sync_waiter().is_ok(), "free again");
        })
        .await;
}

#[distributed_lock(name = "file-min-hold", backend = "file", min_hold = "1s")]
async fn short_file_job(started: tokio::sync::oneshot::Sender<()>) -> Result<(), AppError> {
    let _ = started.send(());
    tokio::time::sleep(Duration::from_secs(60)).await;
    Ok(())
}

#[tokio::test]
async fn a_cancelled_call_with_min_hold_frees_its_file_lock_when_min_hold_ends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = Arc::new(dlock_runtime::FileBackend::new(dir.path()).expect("dir"));
    let registry = Registry::builder()
        .backend_arc("file", backend.clone())
        .build()
        .expect("registry");
    let name = LockName::new("file-min-hold").expect("name");
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let start = std::time::Instant::now();
    let call = tokio::spawn(scoped(registry.clone(), short_file_job(started_tx)));
    started_rx.await.expect("started");
    tokio::time::sleep(Duration::from_millis(200)).await;
    call.abort();
    let _ = call.await;
    assert!(
        backend.inspect(&name).await.expect("inspect").is_some(),
        "still held inside min_hold"
    );
    loop {
        if backend.inspect(&name).await.expect("inspect").is_none() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_millis(1500),
            "held {:?} after a call with min_hold = 1s was cancelled",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "not before min_hold ended"
    );
}

#[test]
fn a_huge_name_is_refused_with_a_short_message() {
    let (registry, _) = memory_registry();
    registry.scope_sync(|| {
        let err = runtime_name(&"y".repeat(10_000)).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("(10002 bytes in all)"), "{text}");
        assert!(
            text.len() < 400,
            "the message stays short: {} bytes",
            text.len()
        );
    });
}
