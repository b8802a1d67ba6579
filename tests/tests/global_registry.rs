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
    assert!(err.to_string().contains("Registry::builder()"), "the error says what to do: {err}");

    let first = Registry::builder().backend("memory", MemoryBackend::new()).build().expect("registry");
    first.install().expect("first install");
    assert_eq!(job().expect("runs under the installed registry"), 1);

    let second = Registry::builder().backend("other", MemoryBackend::new()).build().expect("registry");
    let err = second.install().unwrap_err();
    assert!(err.to_string().contains("already installed"), "{err}");
    let handed_back = err.into_registry();
    assert_eq!(handed_back.backend_names(), ["other"], "the second registry is handed back");
    assert_eq!(Registry::global().expect("installed").backend_names(), ["memory"], "the first one stays");

    let err = job_on_missing_backend().unwrap_err();
    assert!(
        err.to_string().contains("unknown dlock backend `missing`; the registry has: memory"),
        "{err}"
    );

    // A scoped registry takes precedence over the global one, for tests.
    let scoped = handed_back;
    let err = scoped.scope_sync(job).unwrap_err();
    assert!(err.to_string().contains("no default"), "{err}");
}
