//! Shared set-up for the examples: logging, and a registry built from a backend URL.

use dlock_runtime::{Error, Registry};

/// The backend the examples use unless `--backend` or `DLOCK_BACKEND` says otherwise: the file
/// backend in `$TMPDIR/dlock`, which needs no server.
pub fn default_backend_url() -> String {
    format!(
        "file://{}",
        dlock_runtime::FileBackend::default_dir().display()
    )
}

/// Logs dlock's events (waiting, takeovers, failed releases) to stderr; `RUST_LOG` overrides.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

/// Builds and installs the registry: one backend, from a URL, as the default.
pub fn install_registry(url: &str) -> Result<(), Error> {
    Registry::builder()
        .backend_url("main", url)
        .build()?
        .install()
        .map_err(|e| Error::Config {
            message: e.to_string(),
        })
}
