//! An in-process backend with leases, for tests and single-process programs.

use crate::backend::{
    AcquireOutcome, AcquireRequest, Backend, Capabilities, Holder, Lease, Owner, Version,
};
use crate::{Error, LockName};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

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

    /// The record of `lease` if `lease` is still the current one.
    fn owned<'a>(state: &'a mut State, lease: &Lease) -> Result<&'a mut Record, Error> {
        match state.locks.get_mut(&lease.name) {
            Some(r)
                if r.owner.id == lease.owner.id
                    && r.version.to_string() == lease.version.as_str() =>
            {
                Ok(r)
            }
            _ => Err(Error::Lost {
                name: lease.name.to_string(),
            }),
        }
    }

    fn remove(&self, lease: &Lease) -> Result<(), Error> {
        let mut state = self.state();
        Self::owned(&mut state, lease)?;
        state.locks.remove(&lease.name);
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
            ..Capabilities::default()
        }
    }

    async fn try_acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, Error> {
        let mut state = self.state();
        if let Some(current) = state.locks.get(&request.name) {
            let stale =
                request.replace.as_ref().map(Version::as_str) == Some(&current.version.to_string());
            if !stale {
                return Ok(AcquireOutcome::Busy(current.holder()));
            }
        }
        state.next_version += 1;
        let version = state.next_version;
        let token = state.tokens.entry(request.name.clone()).or_default();
        *token += 1;
        let record = Record {
            owner: request.owner.clone(),
            version,
            token: *token,
            ttl: request.ttl,
            acquired_at: SystemTime::now(),
        };
        state.locks.insert(request.name.clone(), record.clone());
        Ok(AcquireOutcome::Acquired(Lease {
            name: request.name.clone(),
            owner: record.owner,
            version: Version::new(version.to_string()),
            ttl: record.ttl,
            fencing_token: Some(record.token),
            acquired_at: record.acquired_at,
        }))
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, Error> {
        let mut state = self.state();
        state.next_version += 1;
        let version = state.next_version;
        let record = Self::owned(&mut state, lease)?;
        record.version = version;
        record.ttl = ttl;
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

    fn release_now(&self, lease: &Lease) -> Option<Result<(), Error>> {
        Some(self.remove(lease))
    }

    fn stale_lock_hint(&self, name: &LockName, _holder: Option<&Holder>) -> String {
        format!(
            "`{name}` is held in this process; it is taken over once its holder has not renewed it for a whole lease (ttl)"
        )
    }
}
