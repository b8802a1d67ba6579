//! Every built-in backend passes the same conformance suite.

use dlock_runtime::{FileBackend, MemoryBackend};

dlock_runtime::conformance_tests!(memory, MemoryBackend::new());

fn file_backend() -> FileBackend {
    // One directory per test binary run; lock names are fresh per check anyway.
    let dir = std::env::temp_dir().join(format!("dlock-conformance-{}", std::process::id()));
    FileBackend::new(dir).expect("lock directory")
}

dlock_runtime::conformance_tests!(file, file_backend());
