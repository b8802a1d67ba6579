//! Logging on stderr (tracing-subscriber), and the one status line that may share it.

use indicatif::ProgressBar;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use tracing_subscriber::EnvFilter;

/// The status line being shown, if any: log lines are written above it, not through it.
static STATUS_LINE: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Sets up logging: `RUST_LOG` if set, else `warn` (the runtime's INFO logs would clutter a
/// pipeline's output), `info`/`debug`/`trace` with `-v`/`-vv`/`-vvv`, `error` with `--quiet`.
pub fn init(quiet: bool, verbose: u8) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "warn,dlock=debug,dlock_runtime=debug",
        (false, _) => "trace",
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            eprintln!("dlock: ignoring RUST_LOG={spec:?}: {e}");
            EnvFilter::new(default)
        }),
        _ => EnvFilter::new(default),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| AboveStatusLine)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Shows `bar` as the status line until [`clear_status_line`].
pub fn set_status_line(bar: &ProgressBar) {
    *lock() = Some(bar.clone());
}

/// Stops showing the status line (and erases it).
pub fn clear_status_line() {
    if let Some(bar) = lock().take() {
        bar.finish_and_clear();
    }
}

fn lock() -> std::sync::MutexGuard<'static, Option<ProgressBar>> {
    STATUS_LINE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// stderr, with the status line (if any) hidden while a log line is written.
struct AboveStatusLine;

impl Write for AboveStatusLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf).map(|()| buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let bar = lock().clone();
        match bar {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf)),
            None => std::io::stderr().write_all(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
