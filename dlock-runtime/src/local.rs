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

/// What this process remembers of a lock between its acquisitions: when it last released it,
/// whether others were seen waiting for it lately, and how long holds of it last.
///
/// An entry is keyed by the backend instance's address and keeps a weak reference to it, so
/// the allocation cannot be reused by another instance while the entry exists: a new instance
/// never finds an old one's entry (one test's, or one configuration's, memory never leaks into
/// another's). Entries of instances that are gone are dropped when the map is pruned.
#[derive(Clone, Debug)]
struct Recent {
    backend: Weak<dyn Backend>,
    released: Option<Instant>,
    contended_until: Option<Instant>,
    hold: Option<Duration>,
    round_trip: Option<Duration>,
}

/// How long contention seen on a lock keeps this process polite about it.
const CONTENTION_MEMORY: Duration = Duration::from_secs(10);
/// How soon after its own release a process's next attempt is polite.
const COURTESY_WINDOW: Duration = Duration::from_secs(1);
/// How long a polite process lets waiters try first: a few of the store's round trips, within
/// these bounds. A woken waiter needs the notification, a wake-up and its own attempt (on etcd
/// a transaction and a keep-alive, each synced to disk): 20 ms covers that on a busy machine.
const COURTESY_MIN: Duration = Duration::from_millis(20);
const COURTESY_MAX: Duration = Duration::from_millis(100);

fn recent() -> MutexGuard<'static, HashMap<Key, Recent>> {
    static RECENT: OnceLock<Mutex<HashMap<Key, Recent>>> = OnceLock::new();
    let mut map = RECENT
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if map.len() >= 1024 {
        let now = Instant::now();
        map.retain(|_, r| {
            r.backend.strong_count() > 0 && r.contended_until.is_some_and(|until| until > now)
        });
    }
    map
}

/// What this process remembers of `name` on `backend`, if anything.
fn remembered(backend: &Arc<dyn Backend>, name: &LockName) -> Option<Recent> {
    recent()
        .get(&(crate::calls::backend_id(backend), name.clone()))
        .cloned()
}

fn update(backend: &Arc<dyn Backend>, name: &LockName, f: impl FnOnce(&mut Recent)) {
    let mut map = recent();
    let entry = map
        .entry((crate::calls::backend_id(backend), name.clone()))
        .or_insert_with(|| Recent {
            backend: Arc::downgrade(backend),
            released: None,
            contended_until: None,
            hold: None,
            round_trip: None,
        });
    f(entry);
}

/// Another owner was seen holding `name`; `hold` is how long holds of it last and
/// `round_trip` how long a request takes, where known.
pub(crate) fn saw_contention(
    backend: &Arc<dyn Backend>,
    name: &LockName,
    hold: Option<Duration>,
    round_trip: Option<Duration>,
) {
    update(backend, name, |r| {
        r.contended_until = Some(crate::time::after(Instant::now(), CONTENTION_MEMORY));
        r.hold = hold.or(r.hold);
        r.round_trip = round_trip.or(r.round_trip);
    });
}

/// This process's turn at `name` ended (released, or lost).
pub(crate) fn released(backend: &Arc<dyn Backend>, name: &LockName) {
    update(backend, name, |r| r.released = Some(Instant::now()));
}

/// How long holds of `name` last, as this process saw them.
pub(crate) fn hold_estimate(backend: &Arc<dyn Backend>, name: &LockName) -> Option<Duration> {
    remembered(backend, name).and_then(|r| r.hold)
}

/// How long to let others try first: this process released `name` a moment ago, and others
/// were waiting for it lately.
pub(crate) fn courtesy(backend: &Arc<dyn Backend>, name: &LockName) -> Option<Duration> {
    let now = Instant::now();
    let r = remembered(backend, name)?;
    let just_released = r
        .released
        .is_some_and(|at| now < crate::time::after(at, COURTESY_WINDOW));
    let contended = r.contended_until.is_some_and(|until| now < until);
    let courtesy = r
        .round_trip
        .map_or(COURTESY_MAX, |rt| rt.saturating_mul(5))
        .clamp(COURTESY_MIN, COURTESY_MAX);
    (just_released && contended).then_some(courtesy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBackend;

    /// A backend dropped and another created in its place (often at the same address) never
    /// inherits what this process remembered of the first one's locks (a test once polled 994
    /// times in 5 s on a hold estimate left by another test's backend).
    #[test]
    fn a_new_backend_never_inherits_a_dropped_ones_memory() {
        let name = LockName::new("remembered").expect("name");
        let first: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        saw_contention(&first, &name, Some(Duration::from_millis(1)), None);
        assert_eq!(hold_estimate(&first, &name), Some(Duration::from_millis(1)));
        let address = crate::calls::backend_id(&first);
        drop(first);
        let mut same_address = 0;
        for _ in 0..100 {
            let next: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
            same_address += usize::from(crate::calls::backend_id(&next) == address);
            assert_eq!(hold_estimate(&next, &name), None, "inherited");
        }
        assert_eq!(same_address, 0, "the dropped backend's address was reused");
    }
}
