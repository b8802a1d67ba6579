//! dlock's background runtime: runs the attempts of synchronous callers, and the renewals and
//! releases that have no runtime of their own to run on.

use crate::Error;
use std::future::Future;
use std::sync::OnceLock;
use tokio::runtime::{Handle, Runtime};

fn runtime() -> Result<&'static Runtime, Error> {
    static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("dlock-background")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| Error::Config {
            message: format!("cannot start dlock's background runtime: {e}"),
        })
}

/// Runs `future` to completion on the background runtime and waits for it on this thread.
///
/// Works on any thread: one with no runtime, or a tokio worker (which it then blocks, as any
/// synchronous call would), because the future never runs on the caller's runtime.
pub(crate) fn block_on<F>(future: F) -> Result<F::Output, Error>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime()?.spawn(async move {
        let _ = tx.send(future.await);
    });
    rx.recv().map_err(|_| Error::Config {
        message: "a lock operation panicked on dlock's background runtime; this is a bug in \
                  the backend, see the panic message above"
            .into(),
    })
}

/// Runs `future` in the background: on the caller's tokio runtime if there is one, else on
/// dlock's own.
pub(crate) fn spawn<F>(future: F) -> Option<tokio::task::JoinHandle<()>>
where
    F: Future<Output = ()> + Send + 'static,
{
    match Handle::try_current() {
        Ok(handle) => Some(handle.spawn(future)),
        Err(_) => match runtime() {
            Ok(rt) => Some(rt.spawn(future)),
            Err(e) => {
                tracing::error!(error = %e, "cannot run a lock task in the background");
                None
            }
        },
    }
}
