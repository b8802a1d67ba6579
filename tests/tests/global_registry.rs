//! The process-wide registry: its own test binary, because it can be installed only once.

use dlock_runtime::{Error, MemoryBackend, Registry, distributed_lock};

#[distributed_lock(name = "global-job")]
fn job() -> Result<u8, Error> {
    Ok(1)
}

#[distributed_lock(name = "global-job", backend = "missing")]
fn job_on_missing_backend() -> Result<u8, Error> {
    Ok(1)
}

#[test]
fn install_once_and_fail_clearly_before_and_after() {
    // Before any install: a clear error, and the body does not run unprotected.
    let err = job().unwrap_err();
    assert!(matches!(err, Error::NoRegistry), "{err}");
    assert!(
        err.to_string().contains("Registry::builder()"),
        "the error says what to do: {err}"
    );

    let first = Registry::builder()
        .backend("memory", MemoryBackend::new())
        .build()
        .expect("registry");
    first.install().expect("first install");
    assert_eq!(job().expect("runs under the installed registry"), 1);

    let second = Registry::builder()
        .backend("other", MemoryBackend::new())
        .build()
        .expect("registry");
    let err = second.install().unwrap_err();
    assert!(err.to_string().contains("already installed"), "{err}");
    let handed_back = err.into_registry();
    assert_eq!(
        handed_back.backend_names(),
        ["other"],
        "the second registry is handed back"
    );
    assert_eq!(
        Registry::global().expect("installed").backend_names(),
        ["memory"],
        "the first one stays"
    );

    let err = job_on_missing_backend().unwrap_err();
    assert!(
        err.to_string()
            .contains("unknown dlock backend `missing`; the registry has: memory"),
        "{err}"
    );

    // A scoped registry takes precedence over the global one, for tests: with the lock held in
    // the global registry's backend, the call through the scoped registry's backend still runs.
    let held = dlock_runtime::Lock::new("global-job")
        .acquire_blocking()
        .expect("hold globally");
    assert!(
        matches!(job(), Err(Error::Busy { .. })),
        "busy through the global registry"
    );
    assert_eq!(
        handed_back
            .scope_sync(job)
            .expect("runs on the scoped backend"),
        1
    );
    held.release_blocking().expect("release");
}
