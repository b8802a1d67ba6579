//! dlock's background runtime: drives the timers of synchronous callers, and runs the renewals
//! and releases that have no runtime of their own to run on.

use crate::Error;
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
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

/// Runs `future` to completion on this thread, inside the background runtime's context (its
/// timers and I/O driver run on the background thread and wake this one).
///
/// Works on any thread: one with no runtime, or a tokio worker (which it then blocks, as any
/// synchronous call would), because it never starts a runtime on the calling thread. Polling
/// here instead of on the background thread saves a thread hop per call.
pub(crate) fn block_on<F: Future>(future: F) -> Result<F::Output, Error> {
    let _context = runtime()?.enter();
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(output) => return Ok(output),
            // A spurious unpark just polls again.
            Poll::Pending => std::thread::park(),
        }
    }
}

struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
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
