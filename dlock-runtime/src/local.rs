//! This process's queue for each (backend, lock name).
//!
//! Tasks and threads of one process that want the same lock wait here, first come first
//! served (tokio's semaphore is fair and a dropped waiter leaves the queue). Only the head of
//! the queue talks to the backend, so many local waiters cost the store no more requests than
//! one. When the local holder releases, the lock goes back to the store first: the next local
//! waiter then competes for it like any other process, so a busy process cannot keep the lock
//! from the others by handing it around inside itself.

use crate::backend::{Backend, Holder};
use crate::{Error, LockName};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::thread::ThreadId;
use std::time::Duration;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

type Key = (usize, LockName);

fn table() -> MutexGuard<'static, HashMap<Key, Weak<Entry>>> {
    static TABLE: OnceLock<Mutex<HashMap<Key, Weak<Entry>>>> = OnceLock::new();
    // Every update is one insert or removal: a panic elsewhere cannot leave it inconsistent.
    TABLE
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The local queue and holder of one lock.
#[derive(Debug)]
pub(crate) struct Entry {
    gate: Arc<Semaphore>,
    holder: Mutex<Option<LocalHolder>>,
}

/// Who in this process has the queue's permit (and, once the backend agreed, the lock).
#[derive(Clone, Debug)]
struct LocalHolder {
    thread: ThreadId,
    /// An async task (of a current-thread runtime, if `current_thread`), not a blocked thread.
    task_on_current_thread_runtime: bool,
    lease: Option<Holder>,
}

/// The queue entry of `name` on the backend instance `backend`.
pub(crate) fn entry(backend: usize, name: &LockName) -> Arc<Entry> {
    let mut table = table();
    let key = (backend, name.clone());
    if let Some(entry) = table.get(&key).and_then(Weak::upgrade) {
        return entry;
    }
    if table.len() >= 64 {
        table.retain(|_, entry| entry.strong_count() > 0);
    }
    let entry = Arc::new(Entry {
        gate: Arc::new(Semaphore::new(1)),
        holder: Mutex::new(None),
    });
    table.insert(key, Arc::downgrade(&entry));
    entry
}

fn existing(backend: usize, name: &LockName) -> Option<Arc<Entry>> {
    table()
        .get(&(backend, name.clone()))
        .and_then(Weak::upgrade)
}

fn on_current_thread_runtime() -> bool {
    Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::CurrentThread)
}

impl Entry {
    fn holder(&self) -> MutexGuard<'_, Option<LocalHolder>> {
        self.holder
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits for this process's turn until `deadline`; on timeout, returns the local holder's
    /// record (if it has the lock already) for the error message.
    pub async fn enter(
        self: &Arc<Self>,
        deadline: Instant,
        blocking: bool,
    ) -> Result<Permit, Option<Holder>> {
        let permit = match self.gate.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                match tokio::time::timeout_at(deadline, self.gate.clone().acquire_owned()).await {
                    Ok(Ok(permit)) => permit,
                    // The semaphore is never closed; a timeout is the only way out.
                    _ => return Err(self.holder().as_ref().and_then(|h| h.lease.clone())),
                }
            }
        };
        *self.holder() = Some(LocalHolder {
            thread: std::thread::current().id(),
            task_on_current_thread_runtime: !blocking && on_current_thread_runtime(),
            lease: None,
        });
        Ok(Permit {
            entry: self.clone(),
            _permit: permit,
        })
    }
}

/// This process's turn at a lock; the next local waiter's turn starts when it is dropped.
#[derive(Debug)]
pub(crate) struct Permit {
    entry: Arc<Entry>,
    _permit: OwnedSemaphorePermit,
}

impl Permit {
    /// Records that the backend gave us the lock, with this record.
    pub fn holds(&self, lease: Holder) {
        if let Some(h) = self.entry.holder().as_mut() {
            h.lease = Some(lease);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        *self.entry.holder() = None;
    }
}

/// Refuses a synchronous wait that could never end: the lock is held (or being taken) by an
/// async task of the current-thread runtime whose only thread this call would block.
pub(crate) fn check_blocking_wait(
    backend: &Arc<dyn Backend>,
    name: &LockName,
    timeout: Duration,
) -> Result<(), Error> {
    if timeout.is_zero() || !on_current_thread_runtime() {
        return Ok(());
    }
    let Some(entry) = existing(crate::calls::backend_id(backend), name) else {
        return Ok(());
    };
    let stuck = entry.holder().as_ref().is_some_and(|h| {
        h.task_on_current_thread_runtime && h.thread == std::thread::current().id()
    });
    if stuck {
        return Err(Error::WouldDeadlock {
            name: name.to_string(),
            reason: "it is held by an async task of the current-thread tokio runtime that this \
                     synchronous call runs on, and that task cannot run to release it while this \
                     call blocks the runtime's only thread; call the async version of the locked \
                     function, or run this one with `tokio::task::spawn_blocking`"
                .into(),
        });
    }
    Ok(())
}
