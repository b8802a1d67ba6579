//! etcd: one key per lock name, attached to an etcd lease, written by transactions on the
//! key's revisions; fencing tokens are the key's create revision and waiters are woken by a
//! watch. The documentation for users (keys, transactions, leases, waiting, what etcd
//! guarantees) is on [`EtcdBackend`], which the crate re-exports.

use crate::backend::{
    AcquireOutcome, AcquireRequest, Backend, Capabilities, Holder, Lease, Owner, Version,
};
use crate::background::Background;
use crate::time::{from_unix_millis, unix_millis};
use crate::{Error, LockName};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, KeyValue, PutOptions,
    Txn, TxnOp, TxnOpResponse, TxnResponse, WatchFilterType, WatchOptions,
};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::OnceCell;

const KIND: &str = "etcd";
/// The key prefix used when none is configured.
const DEFAULT_PREFIX: &str = "dlock/";
const DEFAULT_PORT: u16 = 2379;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 pings on the connection, so a watch on a silently dead connection ends. etcd's
/// default `--grpc-keepalive-min-time` is 5 s: pinging more often gets the connection closed.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a waiter pauses after its watch failed before looking at the lock again.
const WATCH_RETRY_PAUSE: Duration = Duration::from_millis(500);
/// etcd's longest lease (`MaxLeaseTTL`), in seconds.
const MAX_LEASE_SECONDS: i64 = 9_000_000_000;
/// The first line of every record dlock writes.
const RECORD_MAGIC: &str = "dlock lock record";
/// Whether this build's etcd client speaks TLS (etcd-client's `tls` features are off).
const TLS_SUPPORTED: bool = false;

/// Locks as keys in etcd (API v3), each attached to an etcd lease.
///
/// Configure with [`EtcdBackend::builder`], [`EtcdBackend::from_env`]
/// (`DLOCK_ETCD_ENDPOINTS`) or a URL: `etcd://host:2379/prefix`,
/// `etcd://user:password@h1:2379,h2:2379,h3:2379/locks/` (several endpoints of one cluster;
/// the client balances over them). The lock `deploy-prod` is the key `<prefix>deploy-prod`
/// (default prefix `dlock/`; a `/` is appended to a prefix that does not end in one). Names are
/// stored as they are (etcd keys are bytes): no escaping is needed and none can leave the
/// prefix.
///
/// A server that cannot be reached fails within the connect timeout (5 s by default), and
/// every request is abandoned after the request timeout (10 s) without an answer.
///
/// ```no_run
/// use dlock_runtime::{EtcdBackend, Registry};
/// use std::time::Duration;
///
/// # fn main() -> Result<(), dlock_runtime::Error> {
/// let etcd = EtcdBackend::builder()
///     .endpoints(["http://etcd1:2379", "http://etcd2:2379"])
///     .prefix("locks/")
///     .user("app", "secret")
///     .connect_timeout(Duration::from_secs(3))
///     .build()?;
/// Registry::builder().backend("etcd", etcd).build()?.install().expect("once");
/// # Ok(())
/// # }
/// ```
///
/// # Keys, leases and transactions
///
/// The key's value is a small text record: the owner's random id, host and pid, the lease
/// (`ttl_ms`) and when it was taken (by the holder's clock, for people only). The record's
/// **version** is the key's `mod_revision`, and its **fencing token** the key's
/// `create_revision`: etcd revisions are global to the cluster and only grow, so every new
/// holder (after a release, a takeover, an expiry or a key deleted by hand) gets a larger
/// token.
///
/// - **Acquire**: `LeaseGrant` with the lock's ttl **rounded up to whole seconds** (etcd leases
///   have a granularity of one second, and etcd raises a TTL below its minimum — about 2 s
///   with the default election timeout — to that minimum), then one transaction:
///   `if create_revision(key) == 0 then Put(key, record, lease) else Get(key)`. A refused
///   transaction answers busy with the holder it read, or — when the record carries this
///   acquisition's owner id (a retry of a transaction whose answer was lost) — acquired. The
///   unused lease is kept for the acquisition's next attempt while at least half its TTL is
///   left, so a waiter's later attempts are one request each; a key put on a lease granted
///   before the attempt began (or found after a lost answer) is given one `LeaseKeepAlive`
///   before the lock counts as taken, so etcd's lease always runs a full TTL from after the
///   attempt was sent. A lease granted for an attempt whose answer never came is never used
///   again nor revoked (its key may have been written): it expires after its TTL, with the
///   key. Leases of acquisitions that gave up expire on their own.
/// - **Renew**: `if mod_revision(key) == version then Put(key, record, ignore_lease)`, then one
///   `LeaseKeepAlive` of the key's lease. The put gives the record a new version, so a waiter
///   that sees one version for a whole lease knows the holder stopped renewing (dlock's
///   record-version rule, which a waiter may use before the server's lease ends); the
///   keep-alive resets the lease to its granted TTL. A lease that is gone (expired) or a key
///   that is someone else's makes renewal fail with [`Error::Lost`].
/// - **Release**: `if mod_revision(key) == version then Delete(key) else Get(key)` — never a
///   read followed by a delete — then a best-effort `LeaseRevoke` of the freed lease.
/// - **Takeover** of a record seen unchanged for a whole lease:
///   `if mod_revision(key) == version then Delete(key)`, then an acquire as above.
/// - **Inspect / list**: a `Range` read of the key, or of the prefix.
///
/// # Waiting
///
/// A waiter watches the key from the revision after the version it saw, for `DELETE` events
/// only (renewals, which are puts, do not wake it): a release, a forced release or the
/// expiry of the lease wakes it at once, and a delete that happened before the watch started
/// is still delivered, so none is missed. If the watch fails (the connection dropped), the
/// waiter looks at the lock again after half a second and watches anew.
///
/// Waiters are not queued across processes: every process watching a lock wakes on its
/// release and tries once (a small herd — within one process, dlock's local queue lets only
/// one waiter per lock talk to etcd, first come, first served). etcd's own
/// `concurrency.Mutex` queues waiters instead, each on its own key (`prefix/name/<lease>`)
/// watching the key just before it; dlock keeps one key per lock so that a lock has one
/// holder record to inspect, list, force-release and take over by version, and a waiter that
/// gives up leaves nothing behind.
///
/// # What etcd guarantees, and what it does not
///
/// Every write is a Raft proposal committed by a majority of the cluster before it is
/// answered, and transactions are serializable and linearizable: two acquirers never both
/// win, and a release or renewal conditional on a revision never touches a newer holder's
/// key. A lease's TTL runs on the **leader's** clock; a new leader extends every lease by an
/// election timeout (a lease may outlive its TTL, never end earlier), and a restarted cluster
/// restores leases with their full TTL. dlock's holder dates its lease from when its request
/// was *sent*, so it always believes itself the holder for less time than etcd does.
///
/// A holder that is paused (GC, a stopped VM, a slow disk) longer than its lease may still
/// run its body after etcd handed the lock to someone else: no lock service prevents that.
/// Pass the fencing token ([`LockGuard::fencing_token`](crate::LockGuard::fencing_token)) to
/// the resource you protect and have it refuse tokens older than the newest it has seen.
///
/// # TLS
///
/// This build's etcd client has no TLS: `etcds://` and `https://` endpoints are refused at
/// build time with an explanation. Reach a server that requires TLS through a local TLS
/// tunnel.
pub struct EtcdBackend {
    endpoints: Vec<String>,
    /// `h1:2379,h2:2379`, for messages.
    shown: String,
    prefix: String,
    user: Option<(String, String)>,
    connect_timeout: Duration,
    request_timeout: Duration,
    client: Arc<OnceCell<Client>>,
    /// Leases granted for acquisitions that are still trying, by owner id: a refused attempt
    /// keeps its lease for the acquisition's next attempt instead of revoking it and granting
    /// another (three requests per refused attempt become one).
    spare: Arc<Mutex<HashMap<String, Spare>>>,
}

/// A granted lease no key is on yet.
#[derive(Clone, Copy, Debug)]
struct Spare {
    id: i64,
    /// When the grant was sent: the lease ends no sooner than `ttl` after this.
    sent: Instant,
    /// The TTL etcd granted.
    ttl: Duration,
}

impl Spare {
    /// Whether the lease is young enough to put a key on: at least half its TTL is left, so
    /// the keep-alive that follows the put certainly finds it.
    fn usable(&self, now: Instant) -> bool {
        self.sent
            .checked_add(self.ttl / 2)
            .is_some_and(|end| now < end)
    }
}

impl fmt::Debug for EtcdBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the password.
        f.debug_struct("EtcdBackend")
            .field("endpoints", &self.shown)
            .field("prefix", &self.prefix)
            .field("user", &self.user.as_ref().map(|(name, _)| name))
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

/// Settings for an [`EtcdBackend`]; setters never fail, [`build`](EtcdBuilder::build) checks
/// them.
///
/// ```
/// use dlock_runtime::EtcdBackend;
/// use std::time::Duration;
///
/// let backend = EtcdBackend::builder()
///     .url("etcd://app:secret@etcd1:2379,etcd2:2379/ops/locks")
///     .request_timeout(Duration::from_secs(5))
///     .build()?;
/// let shown = format!("{backend:?}");
/// assert!(shown.contains("etcd1:2379,etcd2:2379") && shown.contains("ops/locks/"));
/// assert!(!shown.contains("secret"), "Debug hides the password");
/// assert!(EtcdBackend::builder().build().is_err(), "no endpoint");
/// # Ok::<(), dlock_runtime::Error>(())
/// ```
#[derive(Clone, Default)]
#[must_use = "call .build()"]
pub struct EtcdBuilder {
    url: Option<String>,
    endpoints: Vec<String>,
    prefix: Option<String>,
    user: Option<(String, String)>,
    connect_timeout: Option<Duration>,
    request_timeout: Option<Duration>,
}

impl fmt::Debug for EtcdBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL and the user may carry a password.
        f.debug_struct("EtcdBuilder")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("user", &self.user.as_ref().map(|(name, _)| name))
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl EtcdBuilder {
    /// An `etcd://[user:password@]host:port[,host:port...][/prefix][?options]` URL (or
    /// `etcds://`); options: `connect_timeout` and `request_timeout` (`3s`, `500ms`). The
    /// builder's other setters override what the URL says.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// One endpoint of the cluster: `http://host:2379`, or `host:2379`. Call again (or use
    /// [`endpoints`](EtcdBuilder::endpoints)) for more.
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoints.push(endpoint.into());
        self
    }

    /// Several endpoints of one cluster (the client balances over them).
    pub fn endpoints<I, S>(mut self, endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.endpoints.extend(endpoints.into_iter().map(Into::into));
        self
    }

    /// The key prefix (default `dlock/`); a `/` is appended if it does not end in one.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// etcd authentication: a user and its password (the client gets a token with them and
    /// renews it when it expires).
    pub fn user(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some((name.into(), password.into()));
        self
    }

    /// How long connecting (and authenticating) may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// How long a request may go without an answer before it is abandoned (default 10 s).
    /// The runtime also bounds each call by its own deadline.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }

    /// Checks the settings. Connects nothing: the first lock call does.
    pub fn build(self) -> Result<EtcdBackend, Error> {
        let mut parsed = match &self.url {
            Some(url) => parse_url(url)?,
            None => ParsedUrl::default(),
        };
        let mut endpoints = Vec::new();
        let mut shown = Vec::new();
        let from_url = std::mem::take(&mut parsed.endpoints);
        for endpoint in self.endpoints.iter().chain(from_url.iter()) {
            let (url, host) = endpoint_url(endpoint, parsed.tls)?;
            endpoints.push(url);
            shown.push(host);
        }
        if endpoints.is_empty() {
            return Err(config_error(
                "no endpoint; set one with `.endpoint(\"http://host:2379\")`, an \
                 `etcd://host:2379/prefix` URL or DLOCK_ETCD_ENDPOINTS"
                    .into(),
            ));
        }
        let prefix = self
            .prefix
            .or(parsed.prefix)
            .unwrap_or_else(|| DEFAULT_PREFIX.to_string());
        if prefix.is_empty() || prefix == "/" {
            return Err(config_error(
                "the key prefix must not be empty: dlock's keys need a prefix of their own \
                 (such as `dlock/` or `locks/`), so `list` and `dlock status` see only locks"
                    .into(),
            ));
        }
        if let Some(c) = prefix.chars().find(|c| c.is_control()) {
            return Err(config_error(format!(
                "the key prefix contains the control character {c:?}"
            )));
        }
        let prefix = if prefix.ends_with('/') {
            prefix
        } else {
            format!("{prefix}/")
        };
        let connect_timeout = self
            .connect_timeout
            .or(parsed.connect_timeout)
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let request_timeout = self
            .request_timeout
            .or(parsed.request_timeout)
            .unwrap_or(DEFAULT_REQUEST_TIMEOUT);
        if connect_timeout.is_zero() || request_timeout.is_zero() {
            return Err(config_error(
                "the connect and request timeouts must be greater than zero".into(),
            ));
        }
        let user = self.user.or(parsed.user);
        if let Some((name, _)) = &user
            && name.is_empty()
        {
            return Err(config_error("the user name is empty".into()));
        }
        Ok(EtcdBackend {
            endpoints,
            shown: shown.join(","),
            prefix,
            user,
            connect_timeout,
            request_timeout,
            client: Arc::new(OnceCell::new()),
            spare: Arc::default(),
        })
    }
}

fn config_error(message: String) -> Error {
    Error::Config {
        message: format!("etcd: {message}"),
    }
}

/// What a URL says.
#[derive(Default)]
struct ParsedUrl {
    endpoints: Vec<String>,
    tls: bool,
    prefix: Option<String>,
    user: Option<(String, String)>,
    connect_timeout: Option<Duration>,
    request_timeout: Option<Duration>,
}

/// `etcd://[user:password@]h1:2379,h2:2379[/prefix][?connect_timeout=..&request_timeout=..]`.
fn parse_url(url: &str) -> Result<ParsedUrl, Error> {
    let bad = |why: &str| {
        config_error(format!(
            "{why}; write the URL like `etcd://host:2379/prefix` or \
             `etcd://user:password@h1:2379,h2:2379/prefix`"
        ))
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
    let tls = match scheme {
        "etcd" => false,
        "etcds" => true,
        _ => return Err(bad("the scheme must be etcd:// or etcds://")),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    let (authority, path) = match rest.split_once('/') {
        Some((authority, path)) => (authority, Some(path)),
        None => (rest, None),
    };
    // The password may contain `@`: the hosts follow the last one.
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    let user = match userinfo {
        None => None,
        Some(userinfo) => {
            let (name, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            Some((percent_decode(name)?, percent_decode(password)?))
        }
    };
    let endpoints: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .collect();
    if endpoints.is_empty() {
        return Err(bad("no host"));
    }
    let prefix = match path {
        Some(path) if !path.is_empty() => Some(percent_decode(path)?),
        _ => None,
    };
    let mut parsed = ParsedUrl {
        endpoints,
        tls,
        prefix,
        user,
        ..ParsedUrl::default()
    };
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let duration = || {
            humantime::parse_duration(value).map_err(|e| {
                config_error(format!(
                    "`{key}={value}` in the URL: {e}; write a duration like 3s or 500ms"
                ))
            })
        };
        match key {
            "connect_timeout" => parsed.connect_timeout = Some(duration()?),
            "request_timeout" => parsed.request_timeout = Some(duration()?),
            other => {
                return Err(config_error(format!(
                    "unknown URL option `{other}`; the options are connect_timeout and \
                     request_timeout"
                )));
            }
        }
    }
    Ok(parsed)
}

/// `%XX` escapes (for user names, passwords and prefixes in URLs).
fn percent_decode(text: &str) -> Result<String, Error> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    config_error("a `%` in the URL is not followed by two hex digits".into())
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| config_error("the URL's escapes are not UTF-8".into()))
}

/// An endpoint as the client wants it (`http://host:port`) and as messages show it.
fn endpoint_url(endpoint: &str, tls: bool) -> Result<(String, String), Error> {
    let (tls, host) = if let Some(host) = endpoint.strip_prefix("http://") {
        (tls, host)
    } else if let Some(host) = endpoint.strip_prefix("https://") {
        (true, host)
    } else if endpoint.contains("://") {
        return Err(config_error(format!(
            "the endpoint `{endpoint}` must be `http://host:port` or `host:port`"
        )));
    } else {
        (tls, endpoint)
    };
    let host = host.trim_end_matches('/');
    if host.is_empty() || host.contains(['/', '@', '?', ' ']) {
        return Err(config_error(format!(
            "the endpoint `{endpoint}` is not `host:port`"
        )));
    }
    if tls && !TLS_SUPPORTED {
        return Err(config_error(format!(
            "`{host}` is a TLS endpoint (etcds:// or https://), and this build's etcd client \
             has no TLS support (etcd-client's `tls` feature is off); use http:// on a private \
             network, or reach the server through a local TLS tunnel"
        )));
    }
    // A port is needed; IPv6 addresses come in brackets.
    let has_port = match host.rsplit_once(':') {
        Some((h, port)) => (!h.contains(':') || h.ends_with(']')) && port.parse::<u16>().is_ok(),
        None => false,
    };
    let host = if has_port {
        host.to_string()
    } else {
        format!("{host}:{DEFAULT_PORT}")
    };
    Ok((format!("http://{host}"), host))
}

impl EtcdBackend {
    /// Settings to fill in.
    pub fn builder() -> EtcdBuilder {
        EtcdBuilder::default()
    }

    /// Settings from the environment: `DLOCK_ETCD_ENDPOINTS` (comma-separated endpoints, or
    /// an `etcd://` URL), `DLOCK_ETCD_PREFIX`, `DLOCK_ETCD_USER` and `DLOCK_ETCD_PASSWORD`.
    ///
    /// ```no_run
    /// // DLOCK_ETCD_ENDPOINTS=http://etcd1:2379,http://etcd2:2379 DLOCK_ETCD_PREFIX=locks/
    /// let backend = dlock_runtime::EtcdBackend::from_env().build()?;
    /// # Ok::<(), dlock_runtime::Error>(())
    /// ```
    pub fn from_env() -> EtcdBuilder {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let mut builder = EtcdBackend::builder();
        if let Some(endpoints) = var("DLOCK_ETCD_ENDPOINTS") {
            builder = if endpoints.contains("etcd://") || endpoints.contains("etcds://") {
                builder.url(endpoints)
            } else {
                builder.endpoints(
                    endpoints
                        .split(',')
                        .map(str::trim)
                        .filter(|e| !e.is_empty())
                        .map(str::to_string),
                )
            };
        }
        if let Some(prefix) = var("DLOCK_ETCD_PREFIX") {
            builder = builder.prefix(prefix);
        }
        if let Some(user) = var("DLOCK_ETCD_USER") {
            builder = builder.user(user, var("DLOCK_ETCD_PASSWORD").unwrap_or_default());
        }
        builder
    }

    /// `etcd://[user:password@]host:2379[,host:2379...][/prefix][?connect_timeout=3s]`, or
    /// `etcds://...` (TLS).
    ///
    /// ```
    /// use dlock_runtime::{Backend, EtcdBackend};
    /// let backend = EtcdBackend::from_url("etcd://127.0.0.1:2379/locks?connect_timeout=2s")?;
    /// assert_eq!(backend.kind(), "etcd");
    /// assert!(backend.capabilities().notified_waiting && backend.capabilities().fencing_tokens);
    /// assert!(EtcdBackend::from_url("etcd://h1:2379/x?retries=3").is_err(), "unknown option");
    /// # Ok::<(), dlock_runtime::Error>(())
    /// ```
    pub fn from_url(url: &str) -> Result<Self, Error> {
        EtcdBackend::builder().url(url).build()
    }

    /// The key prefix, always ending in `/`.
    ///
    /// ```
    /// let backend = dlock_runtime::EtcdBackend::from_url("etcd://etcd1:2379/ops/locks")?;
    /// assert_eq!(backend.prefix(), "ops/locks/");
    /// # Ok::<(), dlock_runtime::Error>(())
    /// ```
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, name: &LockName) -> Vec<u8> {
        format!("{}{}", self.prefix, name.as_str()).into_bytes()
    }

    /// The connected client (connecting once, on dlock's background runtime, where the
    /// client's connection tasks then run).
    async fn client(&self) -> Result<Client, Error> {
        if let Some(client) = self.client.get() {
            return Ok(client.clone());
        }
        let connect = async {
            let endpoints = self.endpoints.clone();
            let mut options = ConnectOptions::new()
                .with_connect_timeout(self.connect_timeout)
                .with_keep_alive(KEEP_ALIVE_INTERVAL, self.request_timeout)
                .with_keep_alive_while_idle(true);
            if let Some((name, password)) = &self.user {
                options = options
                    .with_user(name.clone(), password.clone())
                    .with_auto_token_refresh(true);
            }
            let task = Background::default()
                .spawn(async move { Client::connect(endpoints, Some(options)).await })?;
            // Authenticating is a request after the connection.
            let bound = self.connect_timeout.saturating_add(self.request_timeout);
            match tokio::time::timeout(bound, task).await {
                Ok(joined) => {
                    crate::background::joined(joined)?.map_err(|e| self.error("connecting", e))
                }
                Err(_) => Err(self.unreachable(format!(
                    "no connection within {}",
                    humantime::format_duration(bound)
                ))),
            }
        };
        self.client.get_or_try_init(|| connect).await.cloned()
    }

    /// One request, bounded by the request timeout. The client balances requests over the
    /// endpoints and may pick one that cannot be connected to: a request that was never sent
    /// (its connection could not be made) is sent again, once per other endpoint.
    async fn request<T, F, Fut>(&self, doing: &str, f: F) -> Result<T, Error>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let client = self.client().await?;
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let mut tries = self.endpoints.len();
        let result = loop {
            tries -= 1;
            match tokio::time::timeout_at(deadline, f(client.clone())).await {
                Ok(Err(e)) if tries > 0 && never_sent(&e) => continue,
                other => break other,
            }
        };
        match result {
            Ok(result) => result.map_err(|e| self.error(doing, e)),
            Err(_) => Err(Error::temporary(
                KIND,
                format!(
                    "no answer from etcd at {} within {} while {doing}; the request was \
                     abandoned (a write may still have landed: dlock reads the key back before \
                     deciding)",
                    self.shown,
                    humantime::format_duration(self.request_timeout)
                ),
                None,
            )),
        }
    }

    fn unreachable(&self, why: String) -> Error {
        Error::temporary(
            KIND,
            format!(
                "cannot reach etcd at {}: {why}; check the endpoints (host and client port, \
                 2379 by default) and that the server is up",
                self.shown
            ),
            None,
        )
    }

    /// A client error as a dlock error: temporary when the server may answer later,
    /// permanent (with what to do) otherwise. Decided by gRPC status codes.
    fn error(&self, doing: &str, e: etcd_client::Error) -> Error {
        let at = &self.shown;
        let (temporary, message) = match &e {
            etcd_client::Error::GRpcStatus(status) => {
                let said = status.message();
                match i32::from(status.code()) {
                    grpc::UNAVAILABLE if is_connect_failure(said) => (
                        true,
                        format!(
                            "cannot reach etcd at {at} while {doing}: {said}; check the endpoints \
                             (host and client port, 2379 by default) and that the server is up"
                        ),
                    ),
                    grpc::UNAVAILABLE
                    | grpc::DEADLINE_EXCEEDED
                    | grpc::ABORTED
                    | grpc::CANCELLED
                    | grpc::RESOURCE_EXHAUSTED
                    | grpc::INTERNAL
                    | grpc::UNKNOWN => (
                        true,
                        format!("etcd at {at} could not answer while {doing} ({said}); retrying"),
                    ),
                    grpc::NOT_FOUND if said.contains("lease not found") => (
                        true,
                        format!(
                            "the etcd lease dlock wrote with is gone at {at} while {doing} \
                             ({said}); retrying on a new lease"
                        ),
                    ),
                    grpc::UNAUTHENTICATED => (
                        false,
                        format!(
                            "etcd at {at} refused the credentials while {doing} ({said}); check \
                             the user and password (the URL's user:password@, or \
                             DLOCK_ETCD_USER and DLOCK_ETCD_PASSWORD)"
                        ),
                    ),
                    grpc::INVALID_ARGUMENT if said.contains("authentication failed") => (
                        false,
                        format!(
                            "etcd at {at} refused the credentials ({said}); check the user and \
                             password (the URL's user:password@, or DLOCK_ETCD_USER and \
                             DLOCK_ETCD_PASSWORD)"
                        ),
                    ),
                    grpc::INVALID_ARGUMENT if said.contains("user name is empty") => (
                        false,
                        format!(
                            "etcd at {at} has authentication enabled and dlock sent no user \
                             ({said}); give one in the URL (etcd://user:password@host:2379/...) \
                             or with `.user(..)`"
                        ),
                    ),
                    grpc::PERMISSION_DENIED => (
                        false,
                        format!(
                            "etcd at {at} denied permission while {doing} ({said}); the user needs \
                             a role with readwrite permission on the prefix `{}` (etcdctl role \
                             grant-permission ROLE --prefix=true readwrite {})",
                            self.prefix, self.prefix
                        ),
                    ),
                    _ => (false, format!("{doing} failed at etcd {at}: {said}")),
                }
            }
            etcd_client::Error::TransportError(t) => (
                true,
                format!(
                    "cannot reach etcd at {at} while {doing}: {t}; check the endpoints and that \
                     the server is up"
                ),
            ),
            etcd_client::Error::IoError(io) => (
                true,
                format!("cannot reach etcd at {at} while {doing}: {io}"),
            ),
            other => (
                false,
                format!("{doing} failed talking to etcd at {at}: {other}"),
            ),
        };
        Error::backend_failure(KIND, temporary, message, Some(Box::new(e)))
    }

    /// The key of `name` as it is now.
    async fn read(&self, name: &LockName) -> Result<Option<KeyValue>, Error> {
        let key = self.key(name);
        let mut response = self
            .request("reading the lock key", |mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        Ok(response.take_kvs().into_iter().next())
    }

    /// One transaction: `if compare then success else Get(key)`; returns whether it
    /// succeeded, the key as the `Get` saw it (when it failed), the revision it ran at, and
    /// the first response of the success branch.
    async fn txn(
        &self,
        doing: &str,
        key: &[u8],
        compare: Vec<Compare>,
        success: Vec<TxnOp>,
    ) -> Result<TxnOutcome, Error> {
        let txn = Txn::new()
            .when(compare)
            .and_then(success)
            .or_else(vec![TxnOp::get(key.to_vec(), None)]);
        let response: TxnResponse = self
            .request(doing, |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        let revision = response.header().map_or(0, |h| h.revision());
        let responses = response.op_responses();
        if response.succeeded() {
            return Ok(TxnOutcome::Done {
                revision,
                first: responses.into_iter().next(),
            });
        }
        let current = responses.into_iter().find_map(|r| match r {
            TxnOpResponse::Get(mut get) => get.take_kvs().into_iter().next(),
            _ => None,
        });
        Ok(TxnOutcome::Refused(current))
    }

    /// Revokes a lease in the background, best effort: its keys (if any) were deleted or were
    /// never written, and otherwise it expires on its own. Not awaited: a release is over once
    /// the key is deleted, and a caller waiting for the revoke would hold this process's queue
    /// for the lock a round trip longer.
    fn revoke_later(&self, lease: i64) {
        if lease == 0 {
            return;
        }
        let Some(client) = self.client.get().cloned() else {
            return;
        };
        // Not worth waiting long for: the lease runs out on its own.
        let bound = self.request_timeout.min(Duration::from_secs(1));
        let revoke = async move {
            let mut client = client;
            match tokio::time::timeout(bound, client.lease_revoke(lease)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(lease, error = %e, "could not revoke an etcd lease; it expires on its own")
                }
                Err(_) => {
                    tracing::debug!(
                        lease,
                        "no answer to an etcd lease revoke; it expires on its own"
                    )
                }
            }
        };
        if let Err(e) = Background::default().spawn(revoke) {
            tracing::debug!(error = %e, "could not revoke an etcd lease; it expires on its own");
        }
    }

    /// The lease for an attempt by `owner`: the one its acquisition's last refused attempt
    /// kept, while it is young enough, or a new one. Returns the lease and whether it is
    /// older than this attempt (a key put on it needs a keep-alive before it counts).
    async fn lease_for(&self, owner: &str, ttl: Duration) -> Result<(Spare, bool), Error> {
        let kept = self.spares().remove(owner);
        if let Some(spare) = kept {
            if spare.usable(Instant::now()) {
                return Ok((spare, true));
            }
            self.revoke_later(spare.id);
        }
        let seconds = lease_seconds(ttl);
        let sent = Instant::now();
        let granted = self
            .request("granting a lease", |mut c| async move {
                c.lease_grant(seconds, None).await
            })
            .await?;
        let spare = Spare {
            id: granted.id(),
            sent,
            ttl: Duration::from_secs(u64::try_from(granted.ttl()).unwrap_or(0)),
        };
        Ok((spare, false))
    }

    fn spares(&self) -> std::sync::MutexGuard<'_, HashMap<String, Spare>> {
        self.spare
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps `spare` for `owner`'s next attempt; forgets spares too old to use (their
    /// acquisitions ended or gave up: the leases run out on their own).
    fn keep_spare(&self, owner: &str, spare: Spare) {
        let now = Instant::now();
        let mut spares = self.spares();
        spares.retain(|_, s| s.usable(now));
        spares.insert(owner.to_string(), spare);
    }

    /// Resets `lease` to its full TTL; `false` if it is gone (it ran out, and etcd deleted
    /// its keys).
    async fn keep_alive(&self, doing: &str, lease: i64) -> Result<bool, Error> {
        self.request(doing, |mut c| async move {
            match c.lease_keep_alive(lease).await {
                Ok(_) => Ok(true),
                Err(etcd_client::Error::LeaseKeepAliveError(_)) => Ok(false),
                Err(etcd_client::Error::GRpcStatus(s))
                    if i32::from(s.code()) == grpc::NOT_FOUND =>
                {
                    Ok(false)
                }
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// One plain attempt: the create-if-absent transaction, on a lease of the acquisition's
    /// own. A key put on a lease granted before this attempt began is kept alive before it
    /// counts, so the lease runs at least a TTL from after the attempt was sent.
    async fn attempt(
        &self,
        request: &AcquireRequest,
        acquired_at: SystemTime,
    ) -> Result<Attempt, Error> {
        let owner = &request.owner.id;
        let (spare, older) = self.lease_for(owner, request.ttl).await?;
        let lease = spare.id;
        let key = self.key(&request.name);
        let record = encode(&request.owner, request.ttl, acquired_at);
        let put = TxnOp::put(
            key.clone(),
            record,
            Some(PutOptions::new().with_lease(lease)),
        );
        let outcome = self
            .txn(
                "acquiring",
                &key,
                vec![Compare::create_revision(key.clone(), CompareOp::Equal, 0)],
                vec![put],
            )
            .await;
        // An error leaves it open whether the key was written on this lease: it is left to
        // expire (with the key, if it was written and nobody renews it), and not used again.
        match outcome? {
            TxnOutcome::Done { revision, .. } => {
                if older && !self.keep_alive("acquiring", lease).await? {
                    // The lease ran out after the put: etcd deleted the key with it.
                    return Ok(Attempt::Free);
                }
                Ok(Attempt::Acquired {
                    version: revision,
                    token: revision,
                })
            }
            TxnOutcome::Refused(current) => {
                // The put did not happen: this lease holds nothing, and the next attempt of
                // this acquisition uses it.
                self.keep_spare(owner, spare);
                match current {
                    Some(kv) => {
                        let holder = holder_of(&kv);
                        if holder.owner.id != *owner {
                            return Ok(Attempt::Busy(holder));
                        }
                        // An earlier attempt of ours whose answer was lost had put the key,
                        // on a lease granted before this attempt: renew it before it counts.
                        if !self.keep_alive("acquiring", kv.lease()).await? {
                            return Ok(Attempt::Free);
                        }
                        Ok(Attempt::Acquired {
                            version: kv.mod_revision(),
                            token: kv.create_revision(),
                        })
                    }
                    // Deleted between the compare and... a transaction is atomic, so only an
                    // odd server could answer this: look again.
                    None => Ok(Attempt::Free),
                }
            }
        }
    }

    /// The first step of a takeover: deletes the record if it still has `version`. Returns
    /// the holder if someone else holds it at another version (busy), `None` when it is free
    /// now (deleted, or gone already).
    async fn take_over(
        &self,
        request: &AcquireRequest,
        version: &Version,
    ) -> Result<Option<Holder>, Error> {
        let key = self.key(&request.name);
        let Some(revision) = parse_revision(version) else {
            return Ok(self.read(&request.name).await?.map(|kv| holder_of(&kv)));
        };
        let delete = TxnOp::delete(key.clone(), Some(DeleteOptions::new().with_prev_key()));
        let outcome = self
            .txn(
                "taking over a stale lock",
                &key,
                vec![Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    revision,
                )],
                vec![delete],
            )
            .await?;
        match outcome {
            TxnOutcome::Done { first, .. } => {
                if let Some(TxnOpResponse::Delete(deleted)) = first {
                    for kv in deleted.prev_kvs() {
                        self.revoke_later(kv.lease());
                    }
                }
                Ok(None)
            }
            TxnOutcome::Refused(Some(kv)) => Ok(Some(holder_of(&kv))),
            TxnOutcome::Refused(None) => Ok(None),
        }
    }

    /// Deletes the key if it still has `version`; the lease it was on is revoked.
    async fn delete_at(
        &self,
        doing: &str,
        name: &LockName,
        revision: i64,
    ) -> Result<TxnOutcome, Error> {
        let key = self.key(name);
        let delete = TxnOp::delete(key.clone(), Some(DeleteOptions::new().with_prev_key()));
        let outcome = self
            .txn(
                doing,
                &key,
                vec![Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    revision,
                )],
                vec![delete],
            )
            .await?;
        if let TxnOutcome::Done {
            first: Some(TxnOpResponse::Delete(deleted)),
            ..
        } = &outcome
        {
            for kv in deleted.prev_kvs() {
                self.revoke_later(kv.lease());
            }
        }
        Ok(outcome)
    }
}

/// What an acquiring transaction answered.
enum Attempt {
    Acquired { version: i64, token: i64 },
    Busy(Holder),
    Free,
}

enum TxnOutcome {
    Done {
        revision: i64,
        first: Option<TxnOpResponse>,
    },
    Refused(Option<KeyValue>),
}

/// gRPC status codes (tonic's `Code` as numbers: tonic is not a direct dependency).
mod grpc {
    pub const CANCELLED: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const NOT_FOUND: i32 = 5;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const ABORTED: i32 = 10;
    pub const INTERNAL: i32 = 13;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
}

/// Whether a request failed before it was sent: its connection could not be made.
fn never_sent(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            i32::from(status.code()) == grpc::UNAVAILABLE && is_connect_failure(status.message())
        }
        _ => false,
    }
}

/// Whether a gRPC `Unavailable` message says the connection could not be made.
fn is_connect_failure(message: &str) -> bool {
    ["connect", "refused", "dns", "resolve", "unreachable"]
        .iter()
        .any(|word| message.to_ascii_lowercase().contains(word))
}

/// The lease TTL etcd is asked for: `ttl` rounded up to whole seconds, within etcd's bounds.
fn lease_seconds(ttl: Duration) -> i64 {
    let whole = ttl
        .as_secs()
        .saturating_add(u64::from(ttl.subsec_nanos() > 0));
    i64::try_from(whole)
        .unwrap_or(MAX_LEASE_SECONDS)
        .clamp(1, MAX_LEASE_SECONDS)
}

fn parse_revision(version: &Version) -> Option<i64> {
    version.as_str().parse::<i64>().ok().filter(|r| *r > 0)
}

fn version_of(revision: i64) -> Version {
    Version::new(revision.to_string())
}

/// The record a holder writes as the key's value: text, for people who read the key.
fn encode(owner: &Owner, ttl: Duration, acquired_at: SystemTime) -> Vec<u8> {
    format!(
        "{RECORD_MAGIC}\nowner={}\nhost={}\npid={}\nttl_ms={}\nacquired_at_ms={}\n",
        owner.id,
        owner.host,
        owner.pid,
        crate::time::millis(ttl),
        unix_millis(acquired_at),
    )
    .into_bytes()
}

/// The holder a key names; a value dlock did not write is held by an unknown owner.
fn holder_of(kv: &KeyValue) -> Holder {
    let text = std::str::from_utf8(kv.value()).unwrap_or_default();
    let mut lines = text.lines();
    let ours = lines.next() == Some(RECORD_MAGIC);
    let field = |name: &str| {
        text.lines()
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    };
    let owner = match (
        ours,
        field("owner"),
        field("host"),
        field("pid").and_then(|p| p.parse().ok()),
    ) {
        (true, Some(id), Some(host), Some(pid)) if !id.is_empty() => Owner {
            id: id.to_string(),
            host: host.to_string(),
            pid,
        },
        _ => Owner::unknown(),
    };
    let number = |name: &str| field(name).and_then(|v| v.parse::<u64>().ok());
    Holder {
        owner,
        version: version_of(kv.mod_revision()),
        acquired_at: number("acquired_at_ms").map(from_unix_millis),
        ttl: number("ttl_ms").map(Duration::from_millis),
        fencing_token: u64::try_from(kv.create_revision()).ok(),
    }
}

fn lost(name: &LockName) -> Error {
    Error::Lost {
        name: name.to_string(),
    }
}

#[async_trait::async_trait]
impl Backend for EtcdBackend {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            leases: true,
            fencing_tokens: true,
            poll_with_reads: false,
            notified_waiting: true,
            local_calls: false,
            fair_waiting: false,
        }
    }

    async fn try_acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, Error> {
        let acquired_at = SystemTime::now();
        if let Some(version) = &request.replace
            && let Some(holder) = self.take_over(request, version).await?
        {
            if holder.owner.id == request.owner.id {
                // A takeover of ours whose answer was lost.
                return Ok(AcquireOutcome::Acquired(Lease::from_holder(
                    request.name.clone(),
                    holder,
                    request.ttl,
                )));
            }
            return Ok(AcquireOutcome::Busy(holder));
        }
        for _ in 0..2 {
            match self.attempt(request, acquired_at).await? {
                Attempt::Acquired { version, token } => {
                    return Ok(AcquireOutcome::Acquired(Lease {
                        name: request.name.clone(),
                        owner: request.owner.clone(),
                        version: version_of(version),
                        ttl: request.ttl,
                        fencing_token: u64::try_from(token).ok(),
                        acquired_at,
                    }));
                }
                Attempt::Busy(holder) => return Ok(AcquireOutcome::Busy(holder)),
                Attempt::Free => {}
            }
        }
        Err(Error::temporary(
            KIND,
            "the lock key changed while it was written; retrying",
            None,
        ))
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, Error> {
        let key = self.key(&lease.name);
        let record = encode(&lease.owner, ttl, lease.acquired_at);
        let mut version = lease.version.clone();
        for _ in 0..2 {
            let Some(revision) = parse_revision(&version) else {
                return Err(lost(&lease.name));
            };
            let put = TxnOp::put(
                key.clone(),
                record.clone(),
                Some(PutOptions::new().with_ignore_lease().with_prev_key()),
            );
            let outcome = self
                .txn(
                    "renewing",
                    &key,
                    vec![Compare::mod_revision(
                        key.clone(),
                        CompareOp::Equal,
                        revision,
                    )],
                    vec![put],
                )
                .await?;
            let (new_version, etcd_lease) = match outcome {
                TxnOutcome::Done { revision, first } => {
                    let etcd_lease = match first {
                        Some(TxnOpResponse::Put(put)) => put.prev_key().map_or(0, KeyValue::lease),
                        _ => 0,
                    };
                    (revision, etcd_lease)
                }
                // Ours at another version: a renewal whose answer was lost. Renew from there.
                TxnOutcome::Refused(Some(kv)) if holder_of(&kv).owner.id == lease.owner.id => {
                    version = version_of(kv.mod_revision());
                    continue;
                }
                TxnOutcome::Refused(_) => return Err(lost(&lease.name)),
            };
            if etcd_lease != 0 && !self.keep_alive("renewing the lease", etcd_lease).await? {
                // The lease ran out: etcd deletes its key.
                return Err(lost(&lease.name));
            }
            return Ok(Lease {
                version: version_of(new_version),
                ttl,
                ..lease.clone()
            });
        }
        Err(lost(&lease.name))
    }

    async fn release(&self, lease: &Lease) -> Result<(), Error> {
        let mut version = lease.version.clone();
        for _ in 0..2 {
            let Some(revision) = parse_revision(&version) else {
                return Err(lost(&lease.name));
            };
            match self.delete_at("releasing", &lease.name, revision).await? {
                TxnOutcome::Done { .. } => return Ok(()),
                // Free already (a retry of our own release, or the lease ran out).
                TxnOutcome::Refused(None) => return Ok(()),
                // Ours at another version: a renewal whose answer was lost.
                TxnOutcome::Refused(Some(kv)) if holder_of(&kv).owner.id == lease.owner.id => {
                    version = version_of(kv.mod_revision());
                }
                TxnOutcome::Refused(Some(_)) => return Err(lost(&lease.name)),
            }
        }
        Err(lost(&lease.name))
    }

    async fn inspect(&self, name: &LockName) -> Result<Option<Holder>, Error> {
        Ok(self.read(name).await?.map(|kv| holder_of(&kv)))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(LockName, Holder)>, Error> {
        let start = format!("{}{prefix}", self.prefix).into_bytes();
        let mut response = self
            .request("listing", |mut c| {
                let start = start.clone();
                async move {
                    c.get(start, Some(etcd_client::GetOptions::new().with_prefix()))
                        .await
                }
            })
            .await?;
        let mut held: Vec<(LockName, Holder)> = response
            .take_kvs()
            .iter()
            .filter_map(|kv| {
                let name = kv.key().get(self.prefix.len()..)?;
                let name = LockName::new(std::str::from_utf8(name).ok()?).ok()?;
                Some((name, holder_of(kv)))
            })
            .collect();
        held.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(held)
    }

    async fn force_release(&self, name: &LockName, version: &Version) -> Result<(), Error> {
        let outcome = match parse_revision(version) {
            Some(revision) => self.delete_at("force-releasing", name, revision).await?,
            None => TxnOutcome::Refused(self.read(name).await?),
        };
        match outcome {
            TxnOutcome::Done { .. } | TxnOutcome::Refused(None) => Ok(()),
            TxnOutcome::Refused(Some(kv)) => Err(Error::Changed {
                name: name.to_string(),
                expected: version.clone(),
                holder: Some(Box::new(holder_of(&kv))),
            }),
        }
    }

    async fn wait_for_change(
        &self,
        name: &LockName,
        seen: &Version,
        _since: Instant,
    ) -> Result<(), Error> {
        // From the revision after the one seen: a delete since then is in etcd's history and
        // is delivered at once.
        let seen_revision = parse_revision(seen);
        let mut start = seen_revision.map(|r| r.saturating_add(1));
        let key = self.key(name);
        loop {
            let mut options = WatchOptions::new().with_filters([WatchFilterType::NoPut]);
            if let Some(revision) = start {
                options = options.with_start_revision(revision);
            }
            let watched = self
                .request("watching the lock key", |mut c| {
                    let (key, options) = (key.clone(), options.clone());
                    async move { c.watch(key, Some(options)).await }
                })
                .await;
            let mut stream = match watched {
                Ok(stream) => stream,
                Err(e) if e.is_temporary() => {
                    tracing::debug!(lock = %name, error = %e, "cannot watch the etcd key; looking again shortly");
                    tokio::time::sleep(WATCH_RETRY_PAUSE).await;
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            let compacted = loop {
                match stream.message().await {
                    Ok(Some(response)) if response.canceled() => {
                        tracing::debug!(lock = %name, reason = response.cancel_reason(),
                            compact_revision = response.compact_revision(), "the etcd watch was cancelled");
                        break response.compact_revision();
                    }
                    Ok(Some(response)) => {
                        if response
                            .events()
                            .iter()
                            .any(|e| e.event_type() == EventType::Delete)
                        {
                            return Ok(());
                        }
                    }
                    Ok(None) | Err(_) => {
                        // The stream ended (the connection dropped): look again shortly.
                        tracing::debug!(lock = %name, "the etcd watch ended; looking again shortly");
                        tokio::time::sleep(WATCH_RETRY_PAUSE).await;
                        return Ok(());
                    }
                }
            };
            if compacted <= 0 {
                tokio::time::sleep(WATCH_RETRY_PAUSE).await;
                return Ok(());
            }
            // etcd's history before `compacted` is gone. A key that still has the version seen
            // was not deleted in between (a new key has a new mod revision): watch from the
            // oldest revision kept. Anything else is a change.
            match self.read(name).await? {
                Some(kv) if Some(kv.mod_revision()) == seen_revision => start = Some(compacted),
                _ => return Ok(()),
            }
        }
    }

    fn stale_lock_hint(&self, name: &LockName, holder: Option<&Holder>) -> String {
        let version = holder.map_or("VERSION", |h| h.version.as_str());
        format!(
            "If its holder is gone, etcd deletes the key `{}{name}` when its lease runs out (by \
             the etcd leader's clock, the ttl rounded up to whole seconds), or a waiter takes it \
             over after seeing it unchanged for a whole ttl; to free it now, run `dlock release \
             --force '{name}' --if-version {version}`",
            self.prefix
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_endpoints_prefix_and_user() {
        let b = EtcdBackend::from_url(
            "etcd://u:p%40ss@h1:2379,h2,[::1]:23/ops/locks?request_timeout=2s",
        )
        .expect("valid");
        assert_eq!(
            b.endpoints,
            ["http://h1:2379", "http://h2:2379", "http://[::1]:23"]
        );
        assert_eq!(b.shown, "h1:2379,h2:2379,[::1]:23");
        assert_eq!(b.prefix, "ops/locks/");
        assert_eq!(b.user, Some(("u".into(), "p@ss".into())));
        assert_eq!(b.request_timeout, Duration::from_secs(2));
        let b = EtcdBackend::from_url("etcd://127.0.0.1:2379").expect("valid");
        assert_eq!(b.prefix, DEFAULT_PREFIX);
        for bad in [
            "etcd://",
            "etcd:///prefix",
            "redis://h:1/x",
            "etcd://h:1/x?table=y",
            "etcd://h:1/x?connect_timeout=soon",
            "etcds://h:2379/x",
            "etcd://h:1//",
        ] {
            assert!(EtcdBackend::from_url(bad).is_err(), "{bad}");
        }
        assert!(
            EtcdBackend::builder()
                .endpoint("https://h:1")
                .build()
                .is_err()
        );
    }

    #[test]
    fn leases_are_whole_seconds_rounded_up() {
        assert_eq!(lease_seconds(Duration::ZERO), 1);
        assert_eq!(lease_seconds(Duration::from_millis(600)), 1);
        assert_eq!(lease_seconds(Duration::from_millis(2001)), 3);
        assert_eq!(lease_seconds(Duration::from_secs(30)), 30);
        assert_eq!(lease_seconds(Duration::MAX), MAX_LEASE_SECONDS);
    }
}
