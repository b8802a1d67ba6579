//! dlock's background runtime: renewals, releases and every network call of a held or wanted
//! lock run here, so a body that blocks its thread (or a whole current-thread runtime) cannot
//! starve them; and it drives the timers of synchronous callers.

use crate::Error;
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use tokio::runtime::{Handle, Runtime, RuntimeFlavor};
use tokio::task::JoinHandle;

fn own_runtime() -> Result<&'static Runtime, Error> {
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
            message: format!(
                "cannot start dlock's background runtime (renewals and releases run there): {e}"
            ),
        })
}

/// Where background work runs: dlock's own runtime, or (for tests on a paused clock) a runtime
/// the caller names.
#[derive(Clone, Debug, Default)]
pub(crate) struct Background(Option<Handle>);

impl Background {
    /// Background work on `handle` instead of dlock's own runtime.
    pub fn on(handle: Handle) -> Self {
        Background(Some(handle))
    }

    fn handle(&self) -> Result<Handle, Error> {
        match &self.0 {
            Some(handle) => Ok(handle.clone()),
            None => Ok(own_runtime()?.handle().clone()),
        }
    }

    /// Starts `future` in the background.
    pub fn spawn<F>(&self, future: F) -> Result<JoinHandle<F::Output>, Error>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        Ok(self.handle()?.spawn(future))
    }
}

/// The output of a finished background task; a panic in it becomes an error.
pub(crate) fn joined<T>(result: Result<T, tokio::task::JoinError>) -> Result<T, Error> {
    result.map_err(|e| Error::Config {
        message: format!("a dlock background task failed: {e}"),
    })
}

/// Runs `future` to completion on this thread, inside the background runtime's context (its
/// timers and I/O driver run on the background thread and wake this one).
///
/// Works on any thread: one with no runtime, or a tokio worker (which it then blocks, as any
/// synchronous call would; on a multi-thread runtime through `block_in_place`, so the worker's
/// other tasks move elsewhere), because it never starts a runtime on the calling thread.
/// Polling here instead of on the background thread saves a thread hop per call.
pub(crate) fn block_on<F: Future>(future: F) -> Result<F::Output, Error> {
    let in_multi_thread_runtime = Handle::try_current()
        .map(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread)
        .unwrap_or(false);
    if in_multi_thread_runtime {
        tokio::task::block_in_place(|| poll_here(future))
    } else {
        poll_here(future)
    }
}

fn poll_here<F: Future>(future: F) -> Result<F::Output, Error> {
    let _context = own_runtime()?.enter();
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
