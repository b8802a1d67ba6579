//! An in-process backend with leases, for tests and single-process programs.

use crate::backend::{
    AcquireOutcome, AcquireRequest, Backend, Capabilities, Holder, Lease, Owner, Version,
};
use crate::{Error, LockName};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;

/// How long a free lock is left to a waiter that has waited longer (first come, first served).
const YIELD: Duration = Duration::from_millis(20);

/// What an attempt found.
enum Attempt {
    Done(AcquireOutcome),
    /// Free, but a waiter that came first should have it.
    Yield,
}

/// Locks in a map in this process. Clones share the map.
///
/// Records have leases like a remote store's: a holder that stops renewing is taken over after
/// its `ttl` by the runtime's record-version rule, so the memory backend exercises the same
/// paths as the cloud backends, and issues fencing tokens that keep increasing across release
/// and re-acquire.
///
/// ```
/// use dlock_runtime::{Lock, MemoryBackend};
/// use std::sync::Arc;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), dlock_runtime::Error> {
/// let backend = Arc::new(MemoryBackend::new());
/// let guard = Lock::new("job").acquire_on(backend.clone()).await?;
/// assert!(Lock::new("job").acquire_on(backend.clone()).await.is_err());
/// guard.release().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct MemoryBackend {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    locks: HashMap<LockName, Record>,
    /// The last fencing token per name; kept after release so tokens never repeat.
    tokens: HashMap<LockName, u64>,
    next_version: u64,
    /// Woken on every change of a lock some waiter watches.
    changes: HashMap<LockName, Arc<Notify>>,
    /// Waiters in arrival order: their place per owner id, for first come, first served.
    places: HashMap<String, (LockName, u64)>,
    next_place: u64,
}

impl State {
    /// Wakes the waiters of `name` (after a release, takeover or renewal).
    fn changed(&mut self, name: &LockName) {
        if let Some(notify) = self.changes.get(name) {
            notify.notify_waiters();
            if Arc::strong_count(notify) == 1 {
                self.changes.remove(name);
            }
        }
    }

    fn version_of(&self, name: &LockName) -> Option<String> {
        self.locks.get(name).map(|r| r.version.to_string())
    }

    /// One attempt to take (or take over) the lock for `request`; a free lock is left to a
    /// waiter that came first while `yielding`.
    fn attempt(&mut self, request: &AcquireRequest, yielding: bool) -> Attempt {
        if let Some(current) = self.locks.get(&request.name) {
            if current.owner.id == request.owner.id {
                // This acquisition's own earlier write (whose answer the caller never saw).
                return Attempt::Done(AcquireOutcome::Acquired(current.lease(&request.name)));
            }
            let stale =
                request.replace.as_ref().map(Version::as_str) == Some(&current.version.to_string());
            if !stale {
                let holder = current.holder();
                if !self.places.contains_key(&request.owner.id) {
                    self.next_place += 1;
                    let place = (request.name.clone(), self.next_place);
                    self.places.insert(request.owner.id.clone(), place);
                }
                return Attempt::Done(AcquireOutcome::Busy(holder));
            }
        }
        if yielding && self.yields_to_senior(request) {
            return Attempt::Yield;
        }
        Attempt::Done(self.take(request))
    }

    /// Whether a waiter for the same lock came before `request`'s owner.
    fn yields_to_senior(&self, request: &AcquireRequest) -> bool {
        let mine = self
            .places
            .get(&request.owner.id)
            .map_or(u64::MAX, |(_, place)| *place);
        self.places
            .values()
            .any(|(name, place)| name == &request.name && *place < mine)
    }

    /// Writes `request`'s record: a new version and fencing token.
    fn take(&mut self, request: &AcquireRequest) -> AcquireOutcome {
        self.places.remove(&request.owner.id);
        self.next_version += 1;
        let version = self.next_version;
        let token = self.tokens.entry(request.name.clone()).or_default();
        *token += 1;
        let record = Record {
            owner: request.owner.clone(),
            version,
            token: *token,
            ttl: request.ttl,
            acquired_at: SystemTime::now(),
        };
        let lease = record.lease(&request.name);
        self.locks.insert(request.name.clone(), record);
        self.changed(&request.name);
        AcquireOutcome::Acquired(lease)
    }
}

#[derive(Clone, Debug)]
struct Record {
    owner: Owner,
    version: u64,
    token: u64,
    ttl: Duration,
    acquired_at: SystemTime,
}

impl Record {
    fn lease(&self, name: &LockName) -> Lease {
        Lease {
            name: name.clone(),
            owner: self.owner.clone(),
            version: Version::new(self.version.to_string()),
            ttl: self.ttl,
            fencing_token: Some(self.token),
            acquired_at: self.acquired_at,
        }
    }

    fn holder(&self) -> Holder {
        Holder {
            owner: self.owner.clone(),
            version: Version::new(self.version.to_string()),
            acquired_at: Some(self.acquired_at),
            ttl: Some(self.ttl),
            fencing_token: Some(self.token),
        }
    }
}

impl MemoryBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this mutex cannot leave a record half-written: every update
        // is a single insert or remove.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The record of `lease` if `lease` is still the current one. Like the remote stores'
    /// read-back rule, the owner id decides: only this acquisition can have written a record
    /// with it, so a newer version of its own (a renewal whose answer the caller never saw)
    /// is still its own.
    fn owned<'a>(state: &'a mut State, lease: &Lease) -> Result<&'a mut Record, Error> {
        match state.locks.get_mut(&lease.name) {
            Some(r) if r.owner.id == lease.owner.id => Ok(r),
            _ => Err(Error::Lost {
                name: lease.name.to_string(),
            }),
        }
    }

    fn remove(&self, lease: &Lease) -> Result<(), Error> {
        let mut state = self.state();
        Self::owned(&mut state, lease)?;
        state.locks.remove(&lease.name);
        state.changed(&lease.name);
        Ok(())
    }
}

#[async_trait::async_trait]
impl Backend for MemoryBackend {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            leases: true,
            fencing_tokens: true,
            notified_waiting: true,
            local_calls: true,
            fair_waiting: true,
            ..Capabilities::default()
        }
    }

    async fn try_acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, Error> {
        let until = tokio::time::Instant::now() + YIELD;
        let mut yielding = true;
        loop {
            let notify = {
                let mut state = self.state();
                match state.attempt(request, yielding) {
                    Attempt::Done(outcome) => return Ok(outcome),
                    Attempt::Yield => state
                        .changes
                        .entry(request.name.clone())
                        .or_default()
                        .clone(),
                }
            };
            // A waiter that came first gets the free lock, for at most YIELD.
            let changed = notify.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.state().yields_to_senior(request)
                && tokio::time::timeout_at(until, changed).await.is_err()
            {
                yielding = false;
            }
        }
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, Error> {
        let mut state = self.state();
        state.next_version += 1;
        let version = state.next_version;
        let record = Self::owned(&mut state, lease)?;
        record.version = version;
        record.ttl = ttl;
        state.changed(&lease.name);
        Ok(Lease {
            version: Version::new(version.to_string()),
            ttl,
            ..lease.clone()
        })
    }

    async fn release(&self, lease: &Lease) -> Result<(), Error> {
        self.remove(lease)
    }

    async fn inspect(&self, name: &LockName) -> Result<Option<Holder>, Error> {
        Ok(self.state().locks.get(name).map(Record::holder))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(LockName, Holder)>, Error> {
        let state = self.state();
        let mut held: Vec<(LockName, Holder)> = state
            .locks
            .iter()
            .filter(|(name, _)| name.as_str().starts_with(prefix))
            .map(|(name, record)| (name.clone(), record.holder()))
            .collect();
        held.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(held)
    }

    async fn force_release(&self, name: &LockName, version: &Version) -> Result<(), Error> {
        let mut state = self.state();
        match state.locks.get(name) {
            None => Ok(()),
            Some(r) if r.version.to_string() == version.as_str() => {
                state.locks.remove(name);
                state.changed(name);
                Ok(())
            }
            Some(r) => Err(Error::Changed {
                name: name.to_string(),
                expected: version.clone(),
                holder: Some(Box::new(r.holder())),
            }),
        }
    }

    async fn stop_waiting(&self, _name: &LockName, owner: &Owner) -> Result<(), Error> {
        self.state().places.remove(&owner.id);
        Ok(())
    }

    async fn wait_for_change(
        &self,
        name: &LockName,
        seen: &Version,
        _since: std::time::Instant,
    ) -> Result<(), Error> {
        let notify = {
            let mut state = self.state();
            if state.version_of(name).as_deref() != Some(seen.as_str()) {
                return Ok(());
            }
            state.changes.entry(name.clone()).or_default().clone()
        };
        // Registered before the state is looked at again, so a change in between still wakes.
        let changed = notify.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if self.state().version_of(name).as_deref() != Some(seen.as_str()) {
            return Ok(());
        }
        changed.await;
        Ok(())
    }

    fn release_now(&self, lease: &Lease) -> Option<Result<(), Error>> {
        Some(self.remove(lease))
    }

    fn stale_lock_hint(&self, name: &LockName, _holder: Option<&Holder>) -> String {
        format!(
            "`{name}` is held in this process; it is taken over once its holder has not renewed it for a whole lease (ttl)"
        )
    }
}
