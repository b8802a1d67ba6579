//! Declarative distributed locks.
//!
//! Mark a function with [`#[distributed_lock]`](distributed_lock) and it runs on one process
//! (or machine) at a time per lock name; configure the backends once in `main` with a
//! [`Registry`].
//!
//! ```
//! use dlock_runtime::{FileBackend, Registry, distributed_lock};
//!
//! #[derive(Debug, thiserror::Error)]
//! enum AppError {
//!     #[error(transparent)]
//!     Lock(#[from] dlock_runtime::Error),
//! }
//!
//! #[distributed_lock(name = "deploy-{env}", timeout = "60s")]
//! async fn deploy(env: &str) -> Result<String, AppError> {
//!     Ok(format!("deployed {env}"))
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), AppError> {
//!     # let dir = tempfile::tempdir().unwrap();
//!     # let lock_dir = dir.path();
//!     Registry::builder()
//!         .backend("file", FileBackend::new(lock_dir)?)
//!         .build()?
//!         .install()
//!         .expect("installed once");
//!     assert_eq!(deploy("prod").await?, "deployed prod");
//!     Ok(())
//! }
//! ```
//!
//! # Backends
//!
//! Each backend is a cargo feature of this crate (only `file` is on by default) and can also be
//! registered from a URL with [`RegistryBuilder::backend_url`] (see [`backend_from_url`]).
//!
//! | backend | feature | URL | freed when the holder dies | fencing tokens | waiters are woken by |
//! |---|---|---|---|---|---|
//! | [`MemoryBackend`] | always | `memory://` | after its lease (ttl) | yes | the backend |
//! | [`FileBackend`] | `file` (default) | `file:///var/lock/app` | at once (the kernel) | yes | the kernel (inotify) |
//! | `S3Backend` | `s3` | `s3://bucket/prefix` | after its lease | no | polling (reads) |
//! | `GcsBackend` | `gcs` | `gs://bucket/prefix` | after its lease | no | polling (reads) |
//! | `DynamoDbBackend` | `dynamodb` | `dynamodb://table` | after its lease | yes | polling |
//! | `MongoBackend` | `mongodb` | `mongodb://host/db?collection=locks` | after its lease | yes | polling (reads) |
//! | `PostgresBackend` | `postgres` | `postgres://user@host/db?table=locks` | after its lease (server time) | yes | `LISTEN/NOTIFY` |
//! | `RedisBackend` | `redis` | `redis://host:6379/?prefix=dlock:` | after its lease (server expiry) | yes | pub/sub |
//! | `EtcdBackend` | `etcd` | `etcd://host:2379/prefix` | after its lease (etcd lease) | yes (revision) | watches |
//!
//! A minimal configuration of each (the cloud ones read credentials the usual way):
//!
//! ```no_run
//! # async fn configure() -> Result<(), dlock_runtime::Error> {
//! use dlock_runtime::Registry;
//!
//! let registry = Registry::builder()
//!     .backend("mem", dlock_runtime::MemoryBackend::new())
//!     .backend("local", dlock_runtime::FileBackend::new("/var/lock/myapp")?)
//!     .backend_url("shared", "file:///var/lock/ci?shared=true")
//!     .backend_url("s3", "s3://my-locks/ci")                     // feature `s3`
//!     .backend_url("gcs", "gs://my-locks/ci")                    // feature `gcs`
//!     .backend_url("dynamodb", "dynamodb://dlock_locks")         // feature `dynamodb`
//!     .backend_url("mongo", "mongodb://db1:27017/app")           // feature `mongodb`
//!     .backend_url("pg", "postgres://app@db1/app?table=locks")   // feature `postgres`
//!     .backend_url("redis", "redis://cache1:6379/")              // feature `redis`
//!     .backend_url("etcd", "etcd://etcd1:2379/locks/")           // feature `etcd`
//!     .default_backend("local")
//!     .build()?;
//! registry.install().expect("installed once, in main");
//! # Ok(())
//! # }
//! ```
//!
//! Every backend implements [`Backend`] and passes the same conformance suite (the
//! `conformance` module, feature `conformance`) and a fault matrix run through a proxy that
//! loses answers, resets connections and blackholes requests. Retry, backoff, renewal, takeover
//! of stale locks, waiting and logging live once, in the acquire loop and the [`LockGuard`].
//!
//! # What a lock promises
//!
//! - At most one holder at a time, and the holder knows first: [`LockGuard::is_lost`] turns
//!   true no later than the earliest moment another process could take the lock over, computed
//!   on the holder's own clock from when its acquiring (or last confirmed renewing) write was
//!   sent.
//! - A process paused longer than its lease (a GC pause, `SIGSTOP`, a suspended VM) can wake
//!   up after another holder took over and not yet have looked at `is_lost`: pass the
//!   [fencing token](LockGuard::fencing_token) to the resource you protect, so it refuses
//!   writes from an older holder. No lock service can prevent that without one.
//! - Nothing is leaked: a guard dropped, a body that panics, a call cancelled at any point
//!   (even in the middle of a release) frees the lock in the background.

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

extern crate self as dlock_runtime;

mod backend;
mod backends;
mod background;
mod backoff;
mod calls;
mod error;
mod guard;
mod local;
mod lock;
mod name;
mod outcome;
mod registry;
mod rules;
mod schedule;
mod time;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use backend::{
    AcquireOutcome, AcquireRequest, Backend, Capabilities, Holder, Lease, Owner, Version, host_name,
};
#[cfg(feature = "dynamodb")]
pub use backends::dynamodb::{DynamoDbBackend, DynamoDbBuilder};
#[cfg(feature = "etcd")]
pub use backends::etcd::{EtcdBackend, EtcdBuilder};
#[cfg(feature = "file")]
pub use backends::file::FileBackend;
pub use backends::from_url::backend_from_url;
#[cfg(feature = "gcs")]
pub use backends::gcs::{GcsBackend, GcsBuilder};
pub use backends::memory::MemoryBackend;
#[cfg(feature = "mongodb")]
pub use backends::mongodb::{MongoBackend, MongoBuilder};
#[cfg(feature = "postgres")]
pub use backends::postgres::{PostgresBackend, PostgresBuilder};
#[cfg(feature = "redis")]
pub use backends::redis::{RedisBackend, RedisBuilder};
#[cfg(feature = "s3")]
pub use backends::s3::{S3Backend, S3Builder};
pub use backoff::{Backoff, Delays};
pub use error::{BoxError, Error, ErrorKind, Operation};
pub use guard::{LockGuard, LockHandle, current};
pub use lock::Lock;
pub use name::{LockName, MAX_NAME_LEN};
pub use outcome::LockOutcome;
pub use registry::{
    AlreadyInstalled, DEFAULT_CALL_TIMEOUT, DEFAULT_TTL, Registry, RegistryBuilder,
};

/// Runs the function body while holding a distributed lock.
///
/// ```no_run
/// # use dlock_runtime::distributed_lock;
/// # #[derive(Debug)] struct AppError;
/// # impl From<dlock_runtime::Error> for AppError { fn from(_: dlock_runtime::Error) -> Self { AppError } }
/// #[distributed_lock(backend = "shared", name = "deploy-{env}", timeout = "60s", ttl = "30s")]
/// async fn deploy(env: &str) -> Result<(), AppError> {
///     // runs on one process or machine at a time per env
///     Ok(())
/// }
/// ```
///
/// # Options
///
/// All are optional and checked at compile time; a mistake is a compile error at its token.
///
/// | option | meaning | default |
/// |---|---|---|
/// | `name = "..."` | lock name; `{arg}` is replaced by that argument's `Display`, `{self}` by the receiver's; `{{` and `}}` are literal braces | `module::path::fn_name` |
/// | `backend = "..."` | the registry's backend to use | the registry's default |
/// | `timeout = "60s"` | how long to wait for the lock; `"0s"` makes one attempt; `"forever"` waits until it is free | the registry's (zero) |
/// | `ttl = "30s"` | lease: how long the lock outlives a holder that died; renewed while the body runs | the registry's (30s) |
/// | `min_hold = "10s"` | keep the lock at least this long after acquiring it, so a short scheduled job is not re-run by a replica whose clock is behind | none |
/// | `cancel_on_loss` | (async only) drop the body and return the lock error if the lease is lost | off |
/// | `crate = "path"` | where the runtime crate is, when re-exported | `::dlock_runtime` |
///
/// Durations are [humantime](https://docs.rs/humantime) strings: `"500ms"`, `"60s"`, `"5m"`;
/// `timeout` also takes `"forever"` (`ttl` and `min_hold` do not: a lease must end).
///
/// ```no_run
/// # use dlock_runtime::distributed_lock;
/// struct Tenant { id: u32 }
/// impl std::fmt::Display for Tenant {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { write!(f, "t{}", self.id) }
/// }
/// impl Tenant {
///     // Locks `migrate-t7-{v2}` for tenant 7: `{self}` is the receiver, `{{`/`}}` literal braces.
///     #[distributed_lock(name = "migrate-{self}-{{v2}}", timeout = "forever")]
///     async fn migrate(&self) -> std::io::Result<()> {
///         Ok(())
///     }
/// }
/// ```
///
/// # What the function returns when the lock is not taken
///
/// Decided by its return type through [`LockOutcome`]:
///
/// | return type | busy, timed out, or the backend failed |
/// |---|---|
/// | `Result<T, E>` with `E: From<dlock_runtime::Error>` | `Err` (a busy error names the holder and how to free a stale lock) |
/// | `std::io::Result<T>` | `Err`: dlock's [`Error`] converts into [`std::io::Error`] (busy is `WouldBlock`, a timeout `TimedOut`) |
/// | `Option<T>` | `None` when the lock is busy; any other failure is logged as an error |
/// | `()` | the body is skipped; logged as a warning when busy, as an error otherwise |
///
/// Any other return type is a compile error that says which ones work; implement
/// [`LockOutcome`] for your own type to add one.
///
/// ```
/// use dlock_runtime::{MemoryBackend, Registry, distributed_lock};
///
/// #[distributed_lock(name = "report-{day}")]
/// fn report(day: u32) -> Option<String> {
///     Some(format!("report for day {day}"))
/// }
///
/// let registry = Registry::builder().backend("memory", MemoryBackend::new()).build()?;
/// registry.scope_sync(|| assert_eq!(report(3).as_deref(), Some("report for day 3")));
/// # Ok::<(), dlock_runtime::Error>(())
/// ```
///
/// # What it works on
///
/// `async fn` and plain `fn` (which wait on dlock's background runtime, so they work inside or
/// outside a tokio runtime), methods taking `self`, `&self` or `&mut self`, generic functions,
/// functions returning `impl Future` or `Pin<Box<dyn Future>>` whose body is one `async` block,
/// and `#[async_trait]` methods: the lock is held while the future runs, not while it is
/// built. The lock is released on return, `?`, early `return`, panic, and when an async call
/// is cancelled (dropped). Inside the body, [`current`] gives the fencing token and lost state.
pub use dlock_macros::distributed_lock;
