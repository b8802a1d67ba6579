//! The one error type of dlock.

use crate::backend::{Holder, Version};
use std::fmt::Write as _;
use std::time::Duration;

/// A boxed error from a backend's client library, kept as the source of an [`Error`].
///
/// ```
/// use std::error::Error as _;
/// let io = std::io::Error::other("connection reset");
/// let err = dlock_runtime::Error::temporary("s3", "cannot reach S3", Some(Box::new(io)));
/// assert_eq!(err.source().map(|s| s.to_string()).as_deref(), Some("connection reset"));
/// ```
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong when taking, keeping or releasing a lock.
///
/// Contention is an error only at the edge of the API: backends report a busy lock as
/// [`AcquireOutcome::Busy`](crate::AcquireOutcome::Busy), and the acquire loop turns it into
/// [`Error::Busy`] (one attempt) or [`Error::Timeout`] (after waiting) when it gives up.
/// Every message says what to do next.
///
/// ```
/// use dlock_runtime::{Error, Lock, MemoryBackend};
/// use std::sync::Arc;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Error> {
/// let backend = Arc::new(MemoryBackend::new());
/// let held = Lock::new("report").acquire_on(backend.clone()).await?;
/// let err = Lock::new("report").acquire_on(backend).await.unwrap_err();
/// assert!(matches!(err, Error::Busy { .. }));
/// assert!(err.to_string().contains("is held by"));
/// held.release().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The lock is held by someone else and the lock's `timeout` allowed one attempt only.
    #[error("{}", busy_message(name, holder.as_deref(), hint, None))]
    Busy {
        /// The lock name.
        name: String,
        /// Who holds it, when the backend could tell.
        holder: Option<Box<Holder>>,
        /// How to free the lock if its holder is gone.
        hint: String,
    },
    /// The lock stayed busy for the whole `timeout`.
    #[error("{}", busy_message(name, holder.as_deref(), hint, Some(*waited)))]
    Timeout {
        /// The lock name.
        name: String,
        /// How long the caller waited.
        waited: Duration,
        /// Who held it at the last attempt, when the backend could tell.
        holder: Option<Box<Holder>>,
        /// How to free the lock if its holder is gone.
        hint: String,
    },
    /// The lease was lost: it ran out before a renewal was confirmed, or someone else holds
    /// the lock now.
    #[error(
        "lost the lock `{name}`: its lease ran out before a renewal was confirmed, or another \
         owner took it over; the work done under it may overlap with another holder's (pass the \
         fencing token to the resource you protect so it can refuse the older holder)"
    )]
    Lost {
        /// The lock name.
        name: String,
    },
    /// The caller already holds this lock (dlock locks are not re-entrant).
    #[error(
        "lock `{name}` is already held by this caller (an enclosing #[distributed_lock] body or \
         guard of the same task or thread); dlock locks are not re-entrant, so waiting would \
         wait for itself: take the lock once, in the outermost function"
    )]
    Reentrant {
        /// The lock name.
        name: String,
    },
    /// Waiting would block the only thread that can free the lock.
    #[error("waiting for lock `{name}` would deadlock: {reason}")]
    WouldDeadlock {
        /// The lock name.
        name: String,
        /// Why, and what to do instead.
        reason: String,
    },
    /// An operator's conditional change was refused: the lock's record no longer has the
    /// version it was asked for, so it belongs to someone newer.
    #[error(
        "lock `{name}` no longer has version {expected}{}; nothing was changed. Look again with \
         `dlock status` and repeat with the version it shows if the holder is really gone",
        holder.as_deref().map(|h| format!(" (it is held by {} with version {})", h.owner, h.version)).unwrap_or_default()
    )]
    Changed {
        /// The lock name.
        name: String,
        /// The version the caller expected.
        expected: Version,
        /// The holder now, if any.
        holder: Option<Box<Holder>>,
    },
    /// No registry is installed (and no scoped one is active).
    #[error(
        "no dlock registry is installed: build one with `dlock_runtime::Registry::builder()` and \
         call `.install()` on it in `main` before calling a #[distributed_lock] function"
    )]
    NoRegistry,
    /// The lock names a backend the registry does not have.
    #[error(
        "unknown dlock backend `{backend}`; the registry has: {}",
        list(registered)
    )]
    UnknownBackend {
        /// The name that was asked for.
        backend: String,
        /// The names the registry has.
        registered: Vec<String>,
    },
    /// The lock names no backend, and the registry has several without a default.
    #[error(
        "this lock names no backend and the registry has no default; name one with \
         `backend = \"...\"` or call `RegistryBuilder::default_backend`; registered: {}",
        list(registered)
    )]
    NoDefaultBackend {
        /// The names the registry has.
        registered: Vec<String>,
    },
    /// The lock name cannot be used.
    #[error("invalid lock name {}: {reason}", shown_name(name))]
    InvalidName {
        /// The rejected name (cut to its first 100 characters).
        name: String,
        /// Why, and what is allowed.
        reason: String,
    },
    /// The configuration (registry, URL, options) is wrong.
    #[error("invalid dlock configuration: {message}")]
    Config {
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A backend failed to answer.
    #[error("{backend} backend{}: {message}", context(*operation, lock.as_deref()))]
    Backend {
        /// The backend kind (`file`, `memory`, ...).
        backend: &'static str,
        /// Whether trying again may succeed (timeouts, throttling, 5xx).
        temporary: bool,
        /// What the caller was doing, where the runtime knows it.
        operation: Option<Operation>,
        /// The lock concerned, where there is one.
        lock: Option<String>,
        /// What failed and what to do about it.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },
}

/// What kind of failure an [`Error`] is, for callers that branch on it.
///
/// ```
/// use dlock_runtime::{Error, ErrorKind};
/// let err = Error::temporary("s3", "503 Slow Down", None);
/// assert_eq!(err.kind(), ErrorKind::Unavailable);
/// assert!(err.is_temporary() && !err.is_contention());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// [`Error::Busy`]: held by someone else (one attempt).
    Busy,
    /// [`Error::Timeout`]: held by someone else for the whole timeout.
    Timeout,
    /// [`Error::Lost`].
    Lost,
    /// [`Error::Reentrant`].
    Reentrant,
    /// [`Error::WouldDeadlock`].
    WouldDeadlock,
    /// [`Error::Changed`].
    Changed,
    /// [`Error::NoRegistry`], [`Error::UnknownBackend`], [`Error::NoDefaultBackend`] or
    /// [`Error::Config`]: fix the program or its configuration.
    Config,
    /// [`Error::InvalidName`].
    InvalidName,
    /// A backend failure that may go away by retrying (unreachable, throttled, 5xx, no answer
    /// in time).
    Unavailable,
    /// A backend failure that will not go away by retrying (access denied, missing bucket or
    /// table, a record dlock cannot read).
    Backend,
}

/// The operation a backend error happened in.
///
/// ```
/// use dlock_runtime::{Lock, MemoryBackend, Operation};
/// # let backend = std::sync::Arc::new(MemoryBackend::new());
/// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
/// # rt.block_on(async {
/// // Errors from the acquire loop say which call failed, on which lock:
/// # let err = dlock_runtime::Error::temporary("s3", "503", None);
/// if err.operation() == Some(Operation::Renew) {
///     eprintln!("renewing {:?} failed: {err}", err.lock_name());
/// }
/// assert_eq!(Operation::Acquire.to_string(), "acquiring");
/// # let _ = Lock::new("x").acquire_on(backend).await;
/// # });
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// Taking the lock.
    Acquire,
    /// Extending the lease.
    Renew,
    /// Freeing the lock.
    Release,
    /// Reading the holder.
    Inspect,
    /// Listing held locks.
    List,
    /// An operator's forced release.
    ForceRelease,
    /// Waiting for the lock to change.
    Wait,
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Operation::Acquire => "acquiring",
            Operation::Renew => "renewing",
            Operation::Release => "releasing",
            Operation::Inspect => "inspecting",
            Operation::List => "listing",
            Operation::ForceRelease => "force-releasing",
            Operation::Wait => "waiting for",
        })
    }
}

fn context(operation: Option<Operation>, lock: Option<&str>) -> String {
    match (operation, lock) {
        (Some(op), Some(lock)) => format!(" ({op} `{}`)", shown_name(lock)),
        (Some(op), None) => format!(" ({op})"),
        (None, Some(lock)) => format!(" (lock `{}`)", shown_name(lock)),
        (None, None) => String::new(),
    }
}

/// A name as shown in messages: at most 100 characters, so a 10 kB name does not flood logs.
pub(crate) fn shown_name(name: &str) -> String {
    const SHOWN: usize = 100;
    match name.char_indices().nth(SHOWN) {
        None => format!("{name:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes in all)", &name[..cut], name.len()),
    }
}

impl Error {
    /// Whether retrying the same operation may succeed; the acquire loop retries only these.
    pub fn is_temporary(&self) -> bool {
        matches!(
            self,
            Error::Backend {
                temporary: true,
                ..
            }
        )
    }

    /// Whether this is contention ([`Error::Busy`] or [`Error::Timeout`]): the lock works and
    /// someone else holds it. Everything else is a failure someone must look at.
    pub fn is_contention(&self) -> bool {
        matches!(self, Error::Busy { .. } | Error::Timeout { .. })
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Busy { .. } => ErrorKind::Busy,
            Error::Timeout { .. } => ErrorKind::Timeout,
            Error::Lost { .. } => ErrorKind::Lost,
            Error::Reentrant { .. } => ErrorKind::Reentrant,
            Error::WouldDeadlock { .. } => ErrorKind::WouldDeadlock,
            Error::Changed { .. } => ErrorKind::Changed,
            Error::NoRegistry
            | Error::UnknownBackend { .. }
            | Error::NoDefaultBackend { .. }
            | Error::Config { .. } => ErrorKind::Config,
            Error::InvalidName { .. } => ErrorKind::InvalidName,
            Error::Backend {
                temporary: true, ..
            } => ErrorKind::Unavailable,
            Error::Backend { .. } => ErrorKind::Backend,
        }
    }

    /// The backend kind of a backend error.
    pub fn backend(&self) -> Option<&'static str> {
        match self {
            Error::Backend { backend, .. } => Some(backend),
            _ => None,
        }
    }

    /// The operation a backend error happened in, where known.
    pub fn operation(&self) -> Option<Operation> {
        match self {
            Error::Backend { operation, .. } => *operation,
            _ => None,
        }
    }

    /// The lock this error is about, where there is one.
    pub fn lock_name(&self) -> Option<&str> {
        match self {
            Error::Busy { name, .. }
            | Error::Timeout { name, .. }
            | Error::Lost { name }
            | Error::Reentrant { name }
            | Error::WouldDeadlock { name, .. }
            | Error::Changed { name, .. }
            | Error::InvalidName { name, .. } => Some(name),
            Error::Backend { lock, .. } => lock.as_deref(),
            _ => None,
        }
    }

    /// A backend failure that will not go away by retrying (auth, missing bucket, bad path).
    pub fn permanent(
        backend: &'static str,
        message: impl Into<String>,
        source: Option<BoxError>,
    ) -> Self {
        Self::backend_failure(backend, false, message.into(), source)
    }

    /// A backend failure that may go away by retrying (timeouts, throttling, 5xx).
    pub fn temporary(
        backend: &'static str,
        message: impl Into<String>,
        source: Option<BoxError>,
    ) -> Self {
        Self::backend_failure(backend, true, message.into(), source)
    }

    /// A backend failure, temporary or not as `temporary` says.
    pub(crate) fn backend_failure(
        backend: &'static str,
        temporary: bool,
        message: String,
        source: Option<BoxError>,
    ) -> Self {
        Error::Backend {
            backend,
            temporary,
            operation: None,
            lock: None,
            message,
            source,
        }
    }

    /// Adds what the caller was doing, and on which lock, to a backend error that does not say
    /// yet; other errors are returned as they are.
    pub(crate) fn during(mut self, op: Operation, name: &crate::LockName) -> Self {
        if let Error::Backend {
            operation, lock, ..
        } = &mut self
        {
            operation.get_or_insert(op);
            lock.get_or_insert_with(|| name.to_string());
        }
        self
    }

    /// The holder named by a [`Error::Busy`] or [`Error::Timeout`].
    pub fn holder(&self) -> Option<&Holder> {
        match self {
            Error::Busy { holder, .. } | Error::Timeout { holder, .. } => holder.as_deref(),
            _ => None,
        }
    }
}

/// For functions that return `std::io::Result`: a lock error becomes an I/O error of a matching
/// kind (busy: `WouldBlock`, timeout: `TimedOut`, bad name or configuration: `InvalidInput`,
/// a backend that cannot be reached: `Other`), with the dlock error inside — get it back with
/// `io_error.get_ref()` and `downcast_ref::<dlock_runtime::Error>()`.
///
/// ```
/// use dlock_runtime::{MemoryBackend, Registry, distributed_lock};
///
/// #[distributed_lock(name = "report")]
/// fn write_report() -> std::io::Result<()> {
///     Ok(())
/// }
///
/// let registry = Registry::builder().backend("memory", MemoryBackend::new()).build()?;
/// registry.scope_sync(|| -> std::io::Result<()> {
///     let _held = dlock_runtime::Lock::new("report").acquire_blocking().map_err(std::io::Error::from)?;
///     let err = write_report().unwrap_err();
///     assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
///     let lock_error = err.get_ref().and_then(|e| e.downcast_ref::<dlock_runtime::Error>());
///     assert!(matches!(lock_error, Some(dlock_runtime::Error::Busy { .. })));
///     Ok(())
/// })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        use std::io::ErrorKind as Io;
        let kind = match e.kind() {
            ErrorKind::Busy => Io::WouldBlock,
            ErrorKind::Timeout => Io::TimedOut,
            ErrorKind::InvalidName | ErrorKind::Config => Io::InvalidInput,
            ErrorKind::Reentrant | ErrorKind::WouldDeadlock => Io::Deadlock,
            _ => Io::Other,
        };
        std::io::Error::new(kind, e)
    }
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "(none)".to_string()
    } else {
        names.join(", ")
    }
}

fn busy_message(
    name: &str,
    holder: Option<&Holder>,
    hint: &str,
    waited: Option<Duration>,
) -> String {
    let mut msg = match waited {
        Some(waited) => format!(
            "timed out after {} waiting for lock `{name}`",
            humantime::format_duration(Duration::from_millis(crate::time::millis(waited)))
        ),
        None => format!("lock `{name}` is busy"),
    };
    match holder {
        Some(h) => {
            if h.owner.pid == std::process::id() && h.owner.host == crate::host_name() {
                let _ = write!(
                    msg,
                    "; it is held by this process ({}), by another task or thread of this program",
                    h.owner
                );
            } else {
                let _ = write!(msg, "; it is held by {}", h.owner);
            }
            if let Some(at) = h.acquired_at {
                let _ = write!(
                    msg,
                    " since {} (holder's clock)",
                    humantime::format_rfc3339_seconds(at)
                );
            }
            if let Some(token) = h.fencing_token {
                let _ = write!(msg, ", fencing token {token}");
            }
        }
        None => msg.push_str("; its holder is unknown"),
    }
    if !hint.is_empty() {
        let _ = write!(msg, ". {hint}");
    }
    msg
}
