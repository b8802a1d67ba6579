//! The backend contract: one small, object-safe async trait over request and lease structs.
//!
//! Backends do one atomic conditional write per call and report contention as a value. Retry,
//! backoff, timeouts, renewal, stale-lock takeover and logging live once, in the runtime.

use crate::{Error, LockName};
use std::fmt;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

/// Who holds (or asks for) a lock: host + pid + a fresh random id per acquisition.
///
/// The random id is what every conditional release and renewal checks, so two workers that
/// share a host name or a worker name can never release each other's locks.
///
/// ```
/// let a = dlock_runtime::Owner::generate();
/// let b = dlock_runtime::Owner::generate();
/// assert_ne!(a.id, b.id);
/// assert_eq!(a.pid, std::process::id());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    /// 128 random bits, hex-encoded; unique per acquisition.
    pub id: String,
    /// The host name of the machine that acquired the lock.
    pub host: String,
    /// The process id on that host.
    pub pid: u32,
}

impl Owner {
    /// A new owner for this process, with a fresh random id.
    pub fn generate() -> Self {
        Owner {
            id: random_id(),
            host: host_name().to_string(),
            pid: std::process::id(),
        }
    }

    /// An owner whose identity the backend could not read (for example a lock file whose
    /// holder is still writing its record).
    pub fn unknown() -> Self {
        Owner {
            id: String::new(),
            host: String::new(),
            pid: 0,
        }
    }

    /// Whether this is [`Owner::unknown`].
    pub fn is_unknown(&self) -> bool {
        self.id.is_empty()
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_unknown() {
            return f.write_str("an owner that has not written its record yet");
        }
        write!(
            f,
            "owner {} (pid {} on host {})",
            self.id, self.pid, self.host
        )
    }
}

/// 128 random bits, hex-encoded: owner ids, record nonces.
pub(crate) fn random_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness: fall back to a seeded generator; still unique per process and call.
        let mut rng = fastrand::Rng::new();
        bytes.iter_mut().for_each(|b| *b = rng.u8(..));
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// This machine's host name (cached), as recorded in the locks this process takes.
///
/// ```
/// let host = dlock_runtime::host_name();
/// assert!(!host.is_empty());
/// assert_eq!(dlock_runtime::Owner::generate().host, host);
/// ```
pub fn host_name() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        let mut buf = [0u8; 256];
        // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it
        // on success (we also cap at the first NUL or the buffer end).
        #[allow(unsafe_code)]
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        match (rc, std::str::from_utf8(&buf[..end])) {
            (0, Ok(name)) if !name.is_empty() => name.to_string(),
            _ => "unknown-host".to_string(),
        }
    })
}

/// An opaque record version: changes on every successful write of the lock record.
///
/// Versions are compared for equality only (a GCS generation, an S3 ETag, a counter). They are
/// not fencing tokens: see [`Lease::fencing_token`].
///
/// ```
/// use dlock_runtime::Version;
/// let seen = Version::new("\"5d41402abc4b\"");
/// assert_eq!(seen.as_str(), "\"5d41402abc4b\"");
/// assert_ne!(seen, Version::new("7"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Version(String);

impl Version {
    /// Wraps a backend's version string.
    pub fn new(version: impl Into<String>) -> Self {
        Version(version.into())
    }

    /// The backend's version string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a backend knows about the current holder of a lock: what `inspect`, `list` and busy
/// errors show.
///
/// ```
/// use dlock_runtime::{Backend, Lock, LockName, MemoryBackend};
/// use std::sync::Arc;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), dlock_runtime::Error> {
/// let backend = Arc::new(MemoryBackend::new());
/// let guard = Lock::new("nightly").acquire_on(backend.clone()).await?;
/// let holder = backend.inspect(&LockName::new("nightly")?).await?.expect("held");
/// assert_eq!(holder.owner.pid, std::process::id());
/// assert_eq!(holder.fencing_token, guard.fencing_token());
/// guard.release().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// Who holds it.
    pub owner: Owner,
    /// The version of the lock record; a waiter that sees it unchanged for a whole `ttl` may
    /// take the lock over.
    pub version: Version,
    /// When the holder acquired it, by the holder's clock: for people, never for decisions.
    pub acquired_at: Option<SystemTime>,
    /// The lease the holder declared.
    pub ttl: Option<Duration>,
    /// The holder's fencing token, where the backend issues them.
    pub fencing_token: Option<u64>,
}

/// A held lock, as the backend wrote it: what `renew` and `release` are conditional on.
///
/// ```
/// use dlock_runtime::{AcquireOutcome, AcquireRequest, Backend, LockName, MemoryBackend, Owner};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), dlock_runtime::Error> {
/// let backend = MemoryBackend::new();
/// let request = AcquireRequest::new(LockName::new("job")?, Owner::generate(), Duration::from_secs(30));
/// let AcquireOutcome::Acquired(lease) = backend.try_acquire(&request).await? else { unreachable!() };
/// let renewed = backend.renew(&lease, Duration::from_secs(30)).await?;
/// assert_ne!(renewed.version, lease.version, "every write is a new version");
/// assert_eq!(renewed.holder().owner, lease.owner);
/// backend.release(&renewed).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The lock name.
    pub name: LockName,
    /// The owner that holds it.
    pub owner: Owner,
    /// The version of the record this owner wrote last; renew and release are conditional on it.
    pub version: Version,
    /// The lease duration.
    pub ttl: Duration,
    /// Strictly increasing per lock name across acquisitions, where the backend claims
    /// [`Capabilities::fencing_tokens`].
    pub fencing_token: Option<u64>,
    /// When it was acquired, by this machine's clock.
    pub acquired_at: SystemTime,
}

impl Lease {
    /// The lease a holder record describes (for a record that turned out to be this caller's
    /// own, such as a write whose answer was lost); `ttl` stands in where the record has none.
    pub(crate) fn from_holder(name: LockName, holder: Holder, ttl: Duration) -> Self {
        Lease {
            name,
            ttl: holder.ttl.unwrap_or(ttl),
            acquired_at: holder.acquired_at.unwrap_or_else(SystemTime::now),
            owner: holder.owner,
            version: holder.version,
            fencing_token: holder.fencing_token,
        }
    }

    /// The holder this lease shows to other clients.
    pub fn holder(&self) -> Holder {
        Holder {
            owner: self.owner.clone(),
            version: self.version.clone(),
            acquired_at: Some(self.acquired_at),
            ttl: Some(self.ttl),
            fencing_token: self.fencing_token,
        }
    }
}

/// One attempt to take a lock.
///
/// ```
/// use dlock_runtime::{AcquireRequest, LockName, Owner, Version};
/// use std::time::Duration;
///
/// let request = AcquireRequest::new(LockName::new("job")?, Owner::generate(), Duration::from_secs(30));
/// assert!(request.replace.is_none(), "a plain attempt needs the lock free");
/// let takeover = request.replacing(Version::new("41"));
/// assert_eq!(takeover.replace, Some(Version::new("41")));
/// # Ok::<(), dlock_runtime::Error>(())
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AcquireRequest {
    /// The lock name.
    pub name: LockName,
    /// The new owner.
    pub owner: Owner,
    /// The lease to write.
    pub ttl: Duration,
    /// Take the lock over from a stale holder whose record still has this version. The write
    /// must be conditional on that version; the runtime sets this only after seeing the version
    /// unchanged for a whole lease on its own monotonic clock.
    pub replace: Option<Version>,
}

impl AcquireRequest {
    /// A request to take a free lock.
    pub fn new(name: LockName, owner: Owner, ttl: Duration) -> Self {
        AcquireRequest {
            name,
            owner,
            ttl,
            replace: None,
        }
    }

    /// The same request, as a takeover of the record with `version`.
    pub fn replacing(mut self, version: Version) -> Self {
        self.replace = Some(version);
        self
    }
}

/// The answer to [`Backend::try_acquire`]: contention is a value, not an error.
///
/// ```
/// use dlock_runtime::{AcquireOutcome, AcquireRequest, Backend, LockName, MemoryBackend, Owner};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), dlock_runtime::Error> {
/// let backend = MemoryBackend::new();
/// let ask = || AcquireRequest::new("job".parse().unwrap(), Owner::generate(), Duration::from_secs(9));
/// assert!(matches!(backend.try_acquire(&ask()).await?, AcquireOutcome::Acquired(_)));
/// match backend.try_acquire(&ask()).await? {
///     AcquireOutcome::Busy(holder) => assert_eq!(holder.owner.pid, std::process::id()),
///     AcquireOutcome::Acquired(_) => unreachable!("held"),
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub enum AcquireOutcome {
    /// The lock is ours.
    Acquired(Lease),
    /// Someone else holds it.
    Busy(Holder),
}

/// What a backend can do; the runtime and the conformance suite adapt to it.
///
/// ```
/// use dlock_runtime::{Backend, Capabilities, MemoryBackend};
///
/// let caps = MemoryBackend::new().capabilities();
/// assert!(caps.leases && caps.fencing_tokens && caps.notified_waiting && caps.local_calls);
/// assert!(caps.fair_waiting);
/// assert_eq!(Capabilities::default(), Capabilities {
///     leases: false,
///     fencing_tokens: false,
///     poll_with_reads: false,
///     notified_waiting: false,
///     local_calls: false,
///     fair_waiting: false,
/// });
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Lock records outlive a dead holder: the runtime renews them while the body runs and
    /// takes a stale one over by the record-version rule. Without leases the lock lives
    /// exactly as long as its holder (an OS lock such as `flock`).
    pub leases: bool,
    /// Leases carry fencing tokens that increase strictly per lock name.
    pub fencing_tokens: bool,
    /// Writes are rate-limited: waiters poll with [`Backend::inspect`] and write only when the
    /// lock looks free or stale.
    pub poll_with_reads: bool,
    /// [`Backend::wait_for_change`] completes when the lock may have changed (the kernel, a
    /// server-side notification, a watch): waiters block on it instead of polling.
    pub notified_waiting: bool,
    /// Calls finish without network I/O (a map, a system call): the runtime makes them on the
    /// caller's thread. Otherwise (the default) it makes them on its own background runtime,
    /// each bounded by a deadline, so a caller that is cancelled or starved cannot leave a
    /// write half-done or a connection stalled.
    pub local_calls: bool,
    /// The backend itself serves waiters of different processes in the order they came (the
    /// file backend's places in the lock file, the memory backend's arrival numbers), so a
    /// holder that asks again right after its release does not overtake them. Otherwise the
    /// store has no queue, and the runtime makes a process that has just released a lock
    /// others were waiting for let them try first: it pauses a few of the store's round trips
    /// (at least 20 ms, at most 100 ms) before asking again.
    pub fair_waiting: bool,
}

/// A lock store. Object-safe: the registry keeps `Arc<dyn Backend>`.
///
/// Rules every implementation keeps (checked by the [`conformance`](crate) suite):
/// `try_acquire` is one atomic conditional write; `renew` and `release` are conditional on the
/// lease's owner and version and fail with [`Error::Lost`] when someone else holds the lock
/// now; no decision compares two machines' wall clocks; a retried write that comes back as a
/// precondition failure is resolved by reading the record back and comparing owner ids.
///
/// ```
/// use dlock_runtime::{AcquireOutcome, AcquireRequest, Backend, LockName, MemoryBackend, Owner};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), dlock_runtime::Error> {
/// let backend = MemoryBackend::new();
/// let name = LockName::new("nightly-report")?;
/// let request = AcquireRequest::new(name.clone(), Owner::generate(), Duration::from_secs(30));
/// let AcquireOutcome::Acquired(lease) = backend.try_acquire(&request).await? else {
///     unreachable!("a fresh backend has no holder");
/// };
/// assert_eq!(backend.inspect(&name).await?.map(|h| h.owner), Some(lease.owner.clone()));
/// backend.release(&lease).await?;
/// assert!(backend.inspect(&name).await?.is_none());
/// # Ok(())
/// # }
/// ```
#[async_trait::async_trait]
pub trait Backend: Send + Sync + fmt::Debug {
    /// A short name for messages: `file`, `memory`, `gcs`, ...
    fn kind(&self) -> &'static str;

    /// What this backend can do.
    fn capabilities(&self) -> Capabilities;

    /// One atomic attempt to take the lock (or to take over `request.replace`).
    async fn try_acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, Error>;

    /// Extends the lease to `ttl` from now, conditional on `lease.version`; returns the lease
    /// with its new version, or [`Error::Lost`].
    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, Error>;

    /// Frees the lock, conditional on `lease.version`; [`Error::Lost`] if it is no longer ours
    /// (then nothing is changed).
    async fn release(&self, lease: &Lease) -> Result<(), Error>;

    /// The current holder, if any. Never changes the lock, and never makes a concurrent
    /// acquirer see it busy.
    async fn inspect(&self, name: &LockName) -> Result<Option<Holder>, Error>;

    /// Every held lock whose name starts with `prefix`, sorted by name. Like
    /// [`inspect`](Backend::inspect), it never changes a lock; it is for operators (status
    /// pages, the `dlock list` command), and may cost a request per lock.
    async fn list(&self, prefix: &str) -> Result<Vec<(LockName, Holder)>, Error>;

    /// Frees the lock `name` for an operator, only if its record still has `version` (as
    /// [`inspect`](Backend::inspect) showed it), so a newer holder's lock is never freed:
    /// [`Error::Changed`] otherwise, and `Ok` if it is free already.
    async fn force_release(&self, name: &LockName, version: &Version) -> Result<(), Error>;

    /// Completes when the record of `name` may no longer have the version `seen`, which a
    /// request sent at `since` returned. Backends that claim
    /// [`Capabilities::notified_waiting`] implement it by subscribing first and then checking,
    /// so a change that happened after `since` is never missed; they may complete spuriously.
    /// The runtime bounds every wait (by the acquire deadline and the holder's lease), so the
    /// default, for backends without notifications, never completes.
    async fn wait_for_change(
        &self,
        name: &LockName,
        seen: &Version,
        since: std::time::Instant,
    ) -> Result<(), Error> {
        let _ = (name, seen, since);
        std::future::pending().await
    }

    /// The acquisition by `owner` stopped waiting for `name` without getting it (it gave up,
    /// failed or was cancelled). Backends that keep a place in a queue for a waiter (a mark in
    /// the kernel, a queue key) give it up here; the default has nothing to give up. Called in
    /// the background, and only after `try_acquire` answered busy for that owner.
    async fn stop_waiting(&self, name: &LockName, owner: &Owner) -> Result<(), Error> {
        let _ = (name, owner);
        Ok(())
    }

    /// Frees the lock without waiting on I/O, for guards dropped outside async code. Backends
    /// whose release is a local syscall or a map removal return `Some`; the default `None`
    /// makes the guard release in the background.
    fn release_now(&self, lease: &Lease) -> Option<Result<(), Error>> {
        let _ = lease;
        None
    }

    /// What a person can do about a lock whose holder seems gone; part of busy/timeout errors.
    fn stale_lock_hint(&self, name: &LockName, holder: Option<&Holder>) -> String {
        let _ = holder;
        format!(
            "If its holder is gone, the lock is taken over once its record has stayed unchanged \
             for a whole lease (ttl); to free `{name}` sooner, run `dlock release --force {name} \
             --if-version VERSION` with the version `dlock status` shows",
        )
    }
}
