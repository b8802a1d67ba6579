//! How the runtime calls a backend: every call bounded by a deadline, and the calls of network
//! backends made on dlock's background runtime.
//!
//! A network client keeps its connections on the runtime that first used it. Making every call
//! of a remote backend on dlock's own runtime keeps those connections away from callers whose
//! runtime may be blocked by a locked body, so renewals and releases always get through.

use crate::backend::{Backend, Version};
use crate::background::{Background, joined};
use crate::error::Operation;
use crate::{Error, LockName};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A backend as the runtime calls it.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    pub backend: Arc<dyn Backend>,
    pub background: Background,
    /// The longest a single call may take.
    pub call_timeout: Duration,
    local: bool,
}

/// A call the runtime gave up waiting for: it may still have reached the store.
pub(crate) fn no_answer(backend: &dyn Backend, waited: Duration) -> Error {
    Error::temporary(
        backend.kind(),
        format!(
            "no answer within {}; the request was abandoned (if it was a write, it may still \
             have landed: dlock reads the record back before deciding)",
            humantime::format_duration(Duration::from_millis(crate::time::millis(waited)))
        ),
        None,
    )
}

impl Caller {
    pub fn new(backend: Arc<dyn Backend>, background: Background, call_timeout: Duration) -> Self {
        let local = backend.capabilities().local_calls;
        Caller {
            backend,
            background,
            call_timeout,
            local,
        }
    }

    /// A key for this backend instance: locks of the same instance share a local queue.
    pub fn id(&self) -> usize {
        backend_id(&self.backend)
    }

    /// The backend instance.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Whether calls run on the caller's thread (no network I/O).
    pub fn is_local(&self) -> bool {
        self.local
    }

    /// The deadline of a call starting now that must end by `limit`.
    pub fn deadline(&self, limit: Instant) -> Instant {
        crate::time::after(Instant::now(), self.call_timeout).min(limit)
    }

    /// Makes one call, bounded by `deadline`; a remote one on the background runtime, where it
    /// is abandoned (its request dropped) when the deadline passes.
    pub async fn call<T, F>(
        &self,
        op: Operation,
        name: &LockName,
        deadline: Instant,
        call: impl FnOnce(Arc<dyn Backend>) -> F,
    ) -> Result<T, Error>
    where
        F: Future<Output = Result<T, Error>> + Send + 'static,
        T: Send + 'static,
    {
        let start = Instant::now();
        match self.run(deadline, call(self.backend.clone())).await {
            Some(result) => result.map_err(|e| e.during(op, name)),
            None => Err(no_answer(&*self.backend, start.elapsed()).during(op, name)),
        }
    }

    /// Waits until the backend says the lock may have changed from `seen`, or until `until`.
    pub async fn wait_for_change(
        &self,
        name: &LockName,
        seen: &Version,
        since: std::time::Instant,
        until: Instant,
    ) -> Result<(), Error> {
        let (n, v) = (name.clone(), seen.clone());
        let backend = self.backend.clone();
        let wait = async move { backend.wait_for_change(&n, &v, since).await };
        match self.run(until, wait).await {
            Some(result) => result.map_err(|e| e.during(Operation::Wait, name)),
            None => Ok(()),
        }
    }

    /// Runs `future` until `deadline` (`None` when it passes first): inline for a local
    /// backend, on the background runtime for a remote one.
    async fn run<T, F>(&self, deadline: Instant, future: F) -> Option<Result<T, Error>>
    where
        F: Future<Output = Result<T, Error>> + Send + 'static,
        T: Send + 'static,
    {
        if self.local {
            return tokio::time::timeout_at(deadline, future).await.ok();
        }
        let mut task = match self.background.spawn(future) {
            Ok(task) => AbortOnDrop(task),
            Err(e) => return Some(Err(e)),
        };
        let joined_result = tokio::time::timeout_at(deadline, &mut task.0).await.ok()?;
        Some(joined(joined_result).and_then(|r| r))
    }

    /// Starts a remote call on the background runtime and hands back its task, which keeps
    /// running if the caller stops waiting (the acquire loop cleans up after it).
    pub fn start<T, F>(
        &self,
        call: impl FnOnce(Arc<dyn Backend>) -> F,
    ) -> Result<JoinHandle<Result<T, Error>>, Error>
    where
        F: Future<Output = Result<T, Error>> + Send + 'static,
        T: Send + 'static,
    {
        self.background.spawn(call(self.backend.clone()))
    }
}

/// The identity of a backend instance.
pub(crate) fn backend_id(backend: &Arc<dyn Backend>) -> usize {
    Arc::as_ptr(backend).cast::<()>() as usize
}

/// Aborts the task when the waiting stops: the call is abandoned at its deadline.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
