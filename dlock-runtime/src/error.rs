//! The one error type of dlock.

use crate::backend::Holder;
use std::fmt::Write as _;
use std::time::Duration;

/// A boxed error from a backend's client library, kept as the source of an [`Error`].
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
    /// The lease was lost: it expired or someone else holds the lock now.
    #[error(
        "lost the lock `{name}`: its lease expired or another owner took it over; the work done \
         under it may have overlapped with another holder's"
    )]
    Lost {
        /// The lock name.
        name: String,
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
    #[error("invalid lock name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
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
    #[error("{backend} backend: {message}")]
    Backend {
        /// The backend kind (`file`, `memory`, ...).
        backend: &'static str,
        /// Whether trying again may succeed (timeouts, throttling, 5xx).
        temporary: bool,
        /// What failed and what to do about it.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },
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

    /// A backend failure that will not go away by retrying (auth, missing bucket, bad path).
    pub fn permanent(
        backend: &'static str,
        message: impl Into<String>,
        source: Option<BoxError>,
    ) -> Self {
        Self::backend(backend, false, message.into(), source)
    }

    /// A backend failure that may go away by retrying (timeouts, throttling, 5xx).
    pub fn temporary(
        backend: &'static str,
        message: impl Into<String>,
        source: Option<BoxError>,
    ) -> Self {
        Self::backend(backend, true, message.into(), source)
    }

    /// A backend failure, temporary or not as `temporary` says.
    pub(crate) fn backend(
        backend: &'static str,
        temporary: bool,
        message: String,
        source: Option<BoxError>,
    ) -> Self {
        Error::Backend {
            backend,
            temporary,
            message,
            source,
        }
    }

    /// The holder named by a [`Error::Busy`] or [`Error::Timeout`].
    pub fn holder(&self) -> Option<&Holder> {
        match self {
            Error::Busy { holder, .. } | Error::Timeout { holder, .. } => holder.as_deref(),
            _ => None,
        }
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
            humantime::format_duration(Duration::from_millis(waited.as_millis() as u64))
        ),
        None => format!("lock `{name}` is busy"),
    };
    match holder {
        Some(h) => {
            let _ = write!(msg, "; it is held by {}", h.owner);
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
