//! The backend registry: configured once in `main`, read lock-free by every lock.

use crate::{Backend, Backoff, Error};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

static GLOBAL: OnceLock<Registry> = OnceLock::new();

tokio::task_local! {
    static TASK_SCOPE: Registry;
}

thread_local! {
    static THREAD_SCOPE: RefCell<Vec<Registry>> = const { RefCell::new(Vec::new()) };
}

/// Lock settings that apply when a lock does not set them.
#[derive(Clone, Debug)]
pub(crate) struct Defaults {
    pub timeout: Duration,
    pub ttl: Duration,
    pub backoff: Backoff,
    pub call_timeout: Duration,
}

/// The backends locks can use, by name, and the defaults for locks that name none.
///
/// Build it with [`Registry::builder`] and [`install`](Registry::install) it once at startup.
/// Using a lock before that, or naming a backend the registry does not have, is an
/// [`Error`] that says so — never a body run without its lock.
///
/// ```
/// use dlock_runtime::{FileBackend, MemoryBackend, Registry};
///
/// let registry = Registry::builder()
///     .backend("local", FileBackend::new(std::env::temp_dir().join("dlock-doc-registry"))?)
///     .backend("memory", MemoryBackend::new())
///     .default_backend("local")
///     .build()?;
/// assert_eq!(registry.backend_names(), ["local", "memory"]);
/// assert!(registry.backend(Some("gcs")).unwrap_err().to_string().contains("local, memory"));
/// # Ok::<(), dlock_runtime::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Registry {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    backends: BTreeMap<String, Arc<dyn Backend>>,
    default: Option<String>,
    defaults: Defaults,
}

/// The error of a second [`Registry::install`]; it hands the registry back.
///
/// ```no_run
/// use dlock_runtime::{MemoryBackend, Registry};
///
/// let first = Registry::builder().backend("m", MemoryBackend::new()).build()?;
/// first.install().expect("the first install");
/// let second = Registry::builder().backend("other", MemoryBackend::new()).build()?;
/// let refused = second.install().unwrap_err();
/// assert_eq!(refused.into_registry().backend_names(), ["other"]);
/// # Ok::<(), dlock_runtime::Error>(())
/// ```
#[derive(Debug, thiserror::Error)]
#[error("a dlock registry is already installed; install it once, at startup")]
pub struct AlreadyInstalled(Registry);

impl AlreadyInstalled {
    /// The registry that was not installed.
    pub fn into_registry(self) -> Registry {
        self.0
    }
}

impl Registry {
    /// Starts a registry.
    pub fn builder() -> RegistryBuilder {
        RegistryBuilder::default()
    }

    /// Makes this the process-wide registry. Reads after this are lock-free.
    pub fn install(self) -> Result<(), AlreadyInstalled> {
        GLOBAL.set(self).map_err(AlreadyInstalled)
    }

    /// The process-wide registry, if one is installed.
    pub fn global() -> Option<&'static Registry> {
        GLOBAL.get()
    }

    /// The registry locks use here: the innermost [`scope`](Registry::scope) or
    /// [`scope_sync`](Registry::scope_sync), else the installed one.
    pub fn current() -> Result<Registry, Error> {
        if let Some(r) = THREAD_SCOPE.with(|s| s.borrow().last().cloned()) {
            return Ok(r);
        }
        if let Ok(r) = TASK_SCOPE.try_with(Registry::clone) {
            return Ok(r);
        }
        GLOBAL.get().cloned().ok_or(Error::NoRegistry)
    }

    /// Runs `future` with this registry in place of the installed one (for tests: one
    /// future, its own backends, no global state).
    ///
    /// ```
    /// use dlock_runtime::{MemoryBackend, Registry, distributed_lock};
    ///
    /// #[distributed_lock(name = "scoped-job")]
    /// async fn job() -> Option<u32> { Some(7) }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), dlock_runtime::Error> {
    /// let registry = Registry::builder().backend("memory", MemoryBackend::new()).build()?;
    /// assert_eq!(registry.scope(job()).await, Some(7));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn scope<F: Future>(&self, future: F) -> F::Output {
        TASK_SCOPE.scope(self.clone(), future).await
    }

    /// Runs `f` on this thread with this registry in place of the installed one.
    pub fn scope_sync<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Pop;
        impl Drop for Pop {
            fn drop(&mut self) {
                THREAD_SCOPE.with(|s| s.borrow_mut().pop());
            }
        }
        THREAD_SCOPE.with(|s| s.borrow_mut().push(self.clone()));
        let _pop = Pop;
        f()
    }

    /// The backend called `name`, or the default backend for `None`.
    pub fn backend(&self, name: Option<&str>) -> Result<Arc<dyn Backend>, Error> {
        let key = match name {
            Some(name) => name,
            None => self
                .inner
                .default
                .as_deref()
                .ok_or_else(|| Error::NoDefaultBackend {
                    registered: self.names(),
                })?,
        };
        self.inner
            .backends
            .get(key)
            .cloned()
            .ok_or_else(|| Error::UnknownBackend {
                backend: key.to_string(),
                registered: self.names(),
            })
    }

    /// The registered backend names, sorted.
    pub fn backend_names(&self) -> Vec<&str> {
        self.inner.backends.keys().map(String::as_str).collect()
    }

    fn names(&self) -> Vec<String> {
        self.inner.backends.keys().cloned().collect()
    }

    pub(crate) fn defaults(&self) -> &Defaults {
        &self.inner.defaults
    }
}

/// Builds a [`Registry`]. Setters never fail; [`build`](RegistryBuilder::build) checks the
/// whole configuration and reports the first problem it finds.
///
/// ```
/// use dlock_runtime::{MemoryBackend, Registry};
/// use std::time::Duration;
///
/// let registry = Registry::builder()
///     .backend("memory", MemoryBackend::new())
///     .default_timeout(Duration::from_secs(5))
///     .default_ttl(Duration::from_secs(60))
///     .build()?;
/// assert_eq!(registry.backend_names(), ["memory"]);
/// let err = Registry::builder().build().unwrap_err();
/// assert!(err.to_string().contains("no backends"));
/// # Ok::<(), dlock_runtime::Error>(())
/// ```
#[derive(Debug, Default)]
#[must_use = "call .build() and install the registry"]
pub struct RegistryBuilder {
    backends: Vec<(String, BuiltBackend)>,
    default: Option<String>,
    timeout: Option<Duration>,
    ttl: Option<Duration>,
    backoff: Option<Backoff>,
    call_timeout: Option<Duration>,
}

/// A backend as registered: URLs are parsed when registered, their errors reported by `build`.
type BuiltBackend = Result<Arc<dyn Backend>, Error>;

/// The lease a lock gets when neither it nor the registry sets `ttl` (30 s).
///
/// ```
/// assert_eq!(dlock_runtime::DEFAULT_TTL, std::time::Duration::from_secs(30));
/// ```
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// The longest one backend call may take when neither the lock nor the registry says (see
/// [`Lock::call_timeout`](crate::Lock::call_timeout)): 10 s.
///
/// ```
/// assert_eq!(dlock_runtime::DEFAULT_CALL_TIMEOUT, std::time::Duration::from_secs(10));
/// ```
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);

impl RegistryBuilder {
    /// Registers `backend` as `name`.
    pub fn backend(mut self, name: impl Into<String>, backend: impl Backend + 'static) -> Self {
        self.backends.push((name.into(), Ok(Arc::new(backend))));
        self
    }

    /// Registers an already shared backend as `name`.
    pub fn backend_arc(mut self, name: impl Into<String>, backend: Arc<dyn Backend>) -> Self {
        self.backends.push((name.into(), Ok(backend)));
        self
    }

    /// Registers the backend a URL describes (`file:///var/lock/app`, `memory://`, ...; see
    /// [`backend_from_url`](crate::backend_from_url)) as `name`.
    pub fn backend_url(mut self, name: impl Into<String>, url: &str) -> Self {
        self.backends
            .push((name.into(), crate::backend_from_url(url)));
        self
    }

    /// The backend for locks that name none. Without this, a registry with exactly one backend
    /// uses that one.
    pub fn default_backend(mut self, name: impl Into<String>) -> Self {
        self.default = Some(name.into());
        self
    }

    /// How long locks that set no `timeout` wait (default: zero, one attempt; `Duration::MAX`
    /// waits without limit).
    pub fn default_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The lease of locks that set no `ttl` (default: [`DEFAULT_TTL`]).
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The longest one backend call of this registry's locks may take (default
    /// [`DEFAULT_CALL_TIMEOUT`]).
    pub fn default_call_timeout(mut self, call_timeout: Duration) -> Self {
        self.call_timeout = Some(call_timeout);
        self
    }

    /// The backoff between attempts for every lock of this registry.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = Some(backoff);
        self
    }

    /// Checks the configuration and builds the registry.
    pub fn build(self) -> Result<Registry, Error> {
        let config = |message: String| Error::Config { message };
        let mut backends = BTreeMap::new();
        for (name, backend) in self.backends {
            if name.trim().is_empty() {
                return Err(config("a backend name must not be empty".into()));
            }
            let backend = backend?;
            if backends.insert(name.clone(), backend).is_some() {
                return Err(config(format!(
                    "the backend name `{name}` is registered twice"
                )));
            }
        }
        if backends.is_empty() {
            return Err(config(
                "the registry has no backends; add one with `.backend(name, backend)`".into(),
            ));
        }
        let default = match self.default {
            Some(name) if !backends.contains_key(&name) => {
                return Err(config(format!(
                    "the default backend `{name}` is not registered; registered: {}",
                    backends.keys().cloned().collect::<Vec<_>>().join(", ")
                )));
            }
            Some(name) => Some(name),
            None if backends.len() == 1 => backends.keys().next().cloned(),
            None => None,
        };
        let ttl = self.ttl.unwrap_or(DEFAULT_TTL);
        if ttl.is_zero() {
            return Err(config("the default ttl must be greater than zero".into()));
        }
        Ok(Registry {
            inner: Arc::new(Inner {
                backends,
                default,
                defaults: Defaults {
                    timeout: self.timeout.unwrap_or(Duration::ZERO),
                    ttl,
                    backoff: self.backoff.unwrap_or_default(),
                    call_timeout: self.call_timeout.unwrap_or(DEFAULT_CALL_TIMEOUT),
                },
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBackend;

    #[test]
    fn build_rejects_bad_configurations() {
        let err = Registry::builder().build().unwrap_err();
        assert!(err.to_string().contains("no backends"), "{err}");
        let err = Registry::builder()
            .backend("a", MemoryBackend::new())
            .backend("a", MemoryBackend::new())
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("registered twice"), "{err}");
        let err = Registry::builder()
            .backend("a", MemoryBackend::new())
            .default_backend("b")
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("`b` is not registered"), "{err}");
        let err = Registry::builder()
            .backend_url("x", "ftp://nope")
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("ftp"), "{err}");
    }

    #[test]
    fn default_backend_rules() {
        let one = Registry::builder()
            .backend("only", MemoryBackend::new())
            .build()
            .expect("valid");
        assert!(one.backend(None).is_ok());
        let two = Registry::builder()
            .backend("a", MemoryBackend::new())
            .backend("b", MemoryBackend::new())
            .build()
            .expect("valid");
        let err = two.backend(None).unwrap_err();
        assert!(matches!(err, Error::NoDefaultBackend { .. }), "{err}");
        assert!(err.to_string().contains("a, b"), "{err}");
        let err = two.backend(Some("c")).unwrap_err();
        assert!(
            err.to_string().contains("unknown dlock backend `c`"),
            "{err}"
        );
    }

    #[test]
    fn scoped_registries_nest_and_unwind() {
        let outer = Registry::builder()
            .backend("outer", MemoryBackend::new())
            .build()
            .expect("valid");
        let inner = Registry::builder()
            .backend("inner", MemoryBackend::new())
            .build()
            .expect("valid");
        outer.scope_sync(|| {
            assert_eq!(
                Registry::current().expect("scoped").backend_names(),
                ["outer"]
            );
            inner.scope_sync(|| {
                assert_eq!(
                    Registry::current().expect("scoped").backend_names(),
                    ["inner"]
                );
            });
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                inner.scope_sync(|| panic!("body panics"))
            }));
            assert_eq!(
                Registry::current().expect("scoped").backend_names(),
                ["outer"]
            );
        });
    }
}
