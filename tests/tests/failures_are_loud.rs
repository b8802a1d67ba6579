//! Contention is the only thing a `()` or `Option` function skips quietly: every other reason
//! a lock was not taken (no registry, an unknown backend, an unusable lock directory) is an
//! ERROR event, whatever the return type. Events are captured with a subscriber of our own.

use dlock_runtime::{FileBackend, MemoryBackend, Registry, distributed_lock};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Everything logged on this thread while `f` runs, one event per line (`LEVEL message`).
fn logged<R>(f: impl FnOnce() -> R) -> (R, String) {
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("buffer").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .with_writer(move || writer.clone())
        .finish();
    let result = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(buffer.0.lock().expect("buffer").clone()).expect("utf-8");
    (result, text)
}

fn errors(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.trim_start().starts_with("ERROR"))
        .collect()
}

static RUNS: AtomicUsize = AtomicUsize::new(0);

#[distributed_lock(name = "loud-unit")]
fn unit_job() {
    RUNS.fetch_add(1, Ordering::SeqCst);
}

#[distributed_lock(name = "loud-option", backend = "nowhere")]
fn option_on_unknown_backend() -> Option<u32> {
    RUNS.fetch_add(1, Ordering::SeqCst);
    Some(1)
}

#[distributed_lock(name = "blocked-by-a-directory")]
fn unit_on_a_broken_lock_dir() {
    RUNS.fetch_add(1, Ordering::SeqCst);
}

#[distributed_lock(name = "blocked-by-a-directory")]
fn result_on_a_broken_lock_dir() -> Result<(), dlock_runtime::Error> {
    RUNS.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[test]
fn configuration_and_backend_failures_are_errors_for_every_return_type() {
    let before = RUNS.load(Ordering::SeqCst);

    // No registry installed in this test binary.
    let ((), log) = logged(unit_job);
    assert_eq!(
        errors(&log).len(),
        1,
        "one ERROR event for a missing registry: {log}"
    );
    assert!(log.contains("no dlock registry is installed"), "{log}");

    let registry = Registry::builder()
        .backend("memory", MemoryBackend::new())
        .build()
        .expect("registry");
    let (none, log) = logged(|| registry.scope_sync(option_on_unknown_backend));
    assert_eq!(none, None);
    assert_eq!(errors(&log).len(), 1, "{log}");
    assert!(log.contains("unknown dlock backend `nowhere`"), "{log}");

    // A directory where the lock file should be: the backend fails permanently.
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = FileBackend::new(dir.path()).expect("dir");
    let name = "blocked-by-a-directory".parse().expect("name");
    std::fs::create_dir(backend.path_for(&name)).expect("plant a directory");
    let registry = Registry::builder()
        .backend("file", backend)
        .build()
        .expect("registry");
    let ((), log) = logged(|| registry.scope_sync(unit_on_a_broken_lock_dir));
    assert_eq!(errors(&log).len(), 1, "{log}");
    assert!(log.contains("file backend"), "{log}");
    let (result, log) = logged(|| registry.scope_sync(result_on_a_broken_lock_dir));
    assert!(result.is_err());
    assert_eq!(
        errors(&log).len(),
        1,
        "a Result function's failure is returned and logged: {log}"
    );

    assert_eq!(RUNS.load(Ordering::SeqCst), before, "no body ran");
}

#[distributed_lock(name = "contended-unit")]
fn contended_unit() {
    RUNS.fetch_add(1, Ordering::SeqCst);
}

#[distributed_lock(name = "contended-option")]
fn contended_option() -> Option<u32> {
    Some(1)
}

#[test]
fn contention_is_skipped_quietly() {
    let registry = Registry::builder()
        .backend("memory", MemoryBackend::new())
        .build()
        .expect("registry");
    registry.scope_sync(|| {
        let held = dlock_runtime::Lock::new("contended-unit")
            .acquire_blocking()
            .expect("hold");
        let ((), log) = logged(contended_unit);
        assert!(errors(&log).is_empty(), "{log}");
        assert!(
            log.contains("INFO") && log.contains("skipped the locked function"),
            "{log}"
        );
        held.release_blocking().expect("release");

        let held = dlock_runtime::Lock::new("contended-option")
            .acquire_blocking()
            .expect("hold");
        let (none, log) = logged(contended_option);
        assert_eq!(none, None);
        assert!(errors(&log).is_empty(), "{log}");
        assert!(!log.contains("INFO") && !log.contains("WARN"), "{log}");
        held.release_blocking().expect("release");
    });
}
