//! Redis: one hash per held lock, written and deleted by server-side Lua scripts that compare
//! owner and version, expiry by Redis itself (`PEXPIRE`), fencing tokens from `INCR` on a
//! companion key in the same script, and waiters woken by pub/sub. The documentation for users
//! (keys, scripts, what a single primary guarantees, failover, why not Redlock, persistence)
//! is on [`RedisBackend`], which the crate re-exports.

use crate::backend::{
    AcquireOutcome, AcquireRequest, Backend, Capabilities, Holder, Lease, Owner, Version,
};
use crate::backends::notify::{self, Heard, Listener, keep_alive, within};
use crate::background::Background;
use crate::{Error, LockName};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ErrorKind as RedisKind, ProtocolVersion, PushInfo,
    PushKind, RedisError, ServerErrorKind, Value,
};
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const KIND: &str = "redis";
/// The key prefix used when none is configured.
pub(crate) const DEFAULT_PREFIX: &str = "dlock:";
/// The longest key prefix accepted, in bytes.
const MAX_PREFIX: usize = 256;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest lease written (about a hundred years): `PEXPIRE` takes milliseconds as i64.
const MAX_TTL_MS: u64 = 100 * 366 * 24 * 3600 * 1000;
/// Keys read per `SCAN` step when listing.
const SCAN_COUNT: usize = 500;

/// The fields of a lock hash, in the order every script and read returns them.
const FIELDS: [&str; 7] = ["owner", "host", "pid", "version", "token", "ttl", "at"];

/// Acquire: KEYS = lock, fencing counter; ARGV = owner, host, pid, version, ttl_ms, the
/// version a takeover replaces (or ""), acquired_at (ms since the epoch, the holder's clock).
/// Returns {1 (taken) or 0 (busy), the record's fields}.
const ACQUIRE: &str = r"
local cur = redis.call('HMGET', KEYS[1], 'owner', 'host', 'pid', 'version', 'token', 'ttl', 'at')
if cur[1] then
  if cur[1] == ARGV[1] then
    return {1, cur[1], cur[2], cur[3], cur[4], cur[5], cur[6], cur[7]}
  end
  if ARGV[6] == '' or cur[4] ~= ARGV[6] then
    return {0, cur[1], cur[2], cur[3], cur[4], cur[5], cur[6], cur[7]}
  end
end
local token = redis.call('INCR', KEYS[2])
local last = tonumber(cur[5]) or 0
if token <= last then
  token = last + 1
  redis.call('SET', KEYS[2], token)
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'host', ARGV[2], 'pid', ARGV[3], 'version', ARGV[4],
  'token', token, 'ttl', ARGV[5], 'at', ARGV[7])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {1, ARGV[1], ARGV[2], ARGV[3], ARGV[4], tostring(token), ARGV[5], ARGV[7]}
";

/// Renew: KEYS = lock; ARGV = owner, version, new version, ttl_ms.
/// Returns {1} or {0, owner, version} as found.
const RENEW: &str = r"
local cur = redis.call('HMGET', KEYS[1], 'owner', 'version')
if cur[1] == ARGV[1] and cur[2] == ARGV[2] then
  redis.call('HSET', KEYS[1], 'version', ARGV[3], 'ttl', ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return {1}
end
return {0, cur[1], cur[2]}
";

/// Release: KEYS = lock; ARGV = owner, version, channel, name.
/// Returns {1} or {0, owner, version} as found.
const RELEASE: &str = r"
local cur = redis.call('HMGET', KEYS[1], 'owner', 'version')
if cur[1] == ARGV[1] and cur[2] == ARGV[2] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[3], ARGV[4])
  return {1}
end
return {0, cur[1], cur[2]}
";

/// Forced release: KEYS = lock; ARGV = version, channel, name.
/// Returns {1} (freed, or free already) or {0} (another version holds it).
const FORCE_RELEASE: &str = r"
local cur = redis.call('HMGET', KEYS[1], 'owner', 'version')
if not cur[1] then
  return {1}
end
if cur[2] == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return {1}
end
return {0}
";

/// A Lua script and its SHA-1, sent with `EVALSHA` (and `EVAL` when the server does not have
/// it cached yet).
struct Script {
    source: &'static str,
    sha: String,
}

impl Script {
    fn new(source: &'static str) -> Script {
        Script {
            source,
            sha: redis::Script::new(source).get_hash().to_string(),
        }
    }
}

/// Locks in Redis: one hash per held lock, changed only by server-side scripts.
///
/// Configure with [`RedisBackend::builder`], [`RedisBackend::from_env`] (`DLOCK_REDIS_URL`) or
/// a URL: `redis://host:6379/?prefix=dlock:`, `redis://:password@host:6379/2` (database 2),
/// `redis://user:password@host/` (an ACL user), `rediss://...` (TLS, where this build includes
/// it). `prefix` and `listen` are dlock's options; the rest goes to the `redis` crate.
///
/// Commands go through one multiplexed connection (the `redis` crate's `ConnectionManager`,
/// which reconnects after a dropped connection), opened on dlock's background runtime. A
/// server that cannot be reached fails after the connect timeout (5 s by default; a refused
/// connection at once), and a command without an answer is abandoned after the request
/// timeout (5 s).
///
/// ```no_run
/// use dlock_runtime::{RedisBackend, Registry};
///
/// # fn main() -> Result<(), dlock_runtime::Error> {
/// let redis = RedisBackend::builder()
///     .url("redis://:secret@cache1:6379/0")
///     .prefix("myapp:locks:")
///     .build()?;
/// Registry::builder().backend("redis", redis).build()?.install().expect("once");
/// # Ok(())
/// # }
/// ```
///
/// # Keys
///
/// With the default prefix `dlock:`, the lock `deploy-prod` is the hash `dlock:lock:deploy-prod`
/// (fields `owner`, `host`, `pid`, `version`, `token`, `ttl`, `at`), which exists only while
/// the lock is held and expires with its lease; its fencing counter is the string
/// `dlock:fencing:deploy-prod`, which never expires; releases are published on the channel
/// `dlock:released` with the lock name as the message. Names are used as they are (Redis keys
/// are binary-safe; dlock's names are at most 1024 bytes of printable UTF-8), always as a
/// script's `KEYS`, never inside the script's text. [`list`](Backend::list) finds keys with
/// `SCAN ... MATCH`, with the glob characters `* ? [ ] \` of the prefix and the name escaped.
///
/// The user needs these commands on `~PREFIX*` keys and the `PREFIX*` channel: `EVALSHA`,
/// `EVAL` (with `HMGET`, `HSET`, `DEL`, `PEXPIRE`, `INCR`, `SET`, `PUBLISH` inside),
/// `HMGET`, `SCAN`, `SUBSCRIBE`, `PING`, `HELLO`, `CLIENT SETNAME`.
///
/// # The scripts
///
/// Every change is one Lua script, which Redis runs atomically:
///
/// - **Acquire**: if the hash exists and is not this owner's (a retry of a write whose answer
///   was lost is answered as acquired) and its version is not the one a takeover replaces,
///   answer busy with the holder; otherwise `INCR` the fencing counter, write the hash and
///   `PEXPIRE` it by the lease. One round trip answers acquired (with the token) or busy.
/// - **Renew**: only if `owner` and `version` are the lease's: a new version and a new
///   `PEXPIRE`.
/// - **Release**: only if `owner` and `version` are the lease's: `DEL`, then `PUBLISH` the
///   name. A holder whose lease ran out can never delete the next holder's lock (never
///   `GET`-then-`DEL`).
/// - **Inspect / list**: `HMGET` and `SCAN`, which never change a key.
///
/// **Expiry is decided by the server's clock**: the key expires `ttl` after the write that
/// set it, by Redis's own expiry. A holder's own lease is dated from when its write was *sent*,
/// so it ends before the server's.
///
/// **Fencing tokens** come from `INCR` on the lock's counter key in the acquiring script, so
/// they increase strictly per name across release, re-acquisition and takeover; if the
/// counter key is deleted, the next token still exceeds the one in a live record.
///
/// # What a single Redis primary guarantees, and what it does not
///
/// Against one Redis primary (standalone, or the primary of a Sentinel group), the scripts run
/// one at a time, so at most one owner holds a lock at any moment by the server's clock, a
/// stale holder can neither renew nor release, and fencing tokens increase strictly.
///
/// **Failover.** Redis replicates to its replicas asynchronously: a lock written to the
/// primary may not have reached a replica when the primary dies, and a replica promoted in its
/// place may not have the key, so a second owner can acquire a lock the first still holds; the
/// promoted replica's fencing counter may also lag behind, so **fencing tokens may go back**
/// after a failover (unless the counter write had reached the replica; `WAIT` is not used,
/// and even `WAIT` does not make Redis a consistent store). If two holders must never run at
/// once, or tokens must never repeat, use a store with consensus (etcd, or PostgreSQL with
/// synchronous replication) — or make the protected resource reject stale fencing tokens
/// and accept the rare failover anomaly.
///
/// **Eviction.** Run dlock's Redis with `maxmemory-policy noeviction` (or a `volatile-*` policy
/// with no other keys that expire): an evicted lock key means a second holder, an evicted
/// counter key restarts tokens. With `noeviction`, a full server answers writes with `OOM`,
/// which dlock reports as such.
///
/// **Persistence.** A Redis restarted without persistence (`--save ''` and no AOF) forgets
/// every lock and every fencing counter: held locks become free at once (a second holder while
/// the first still runs), and tokens restart at 1. Enable AOF (`appendonly yes`, with
/// `appendfsync everysec` or `always`) so locks and counters survive a restart; with RDB
/// snapshots only, a restart loses what changed since the last snapshot.
///
/// # Why not Redlock
///
/// Redlock takes a lock on a majority of independent Redis servers to survive the loss of
/// one. dlock does not implement it, following Martin Kleppmann's analysis ("How to do
/// distributed locking", 2016): Redlock hands out no fencing token, so a holder that pauses
/// (GC, swapping, a stalled network) past its lease cannot be stopped from writing after the
/// next holder started; and its safety rests on timing assumptions — bounded network delay,
/// bounded process pauses, clocks that run at about the same rate on every server — which
/// real systems break (a clock jump on one server can let two clients each gather a
/// majority). For efficiency (avoid doing work twice) one Redis is enough; for correctness,
/// use fencing tokens with a consensus store.
///
/// # Waiting
///
/// Each backend keeps one extra connection (RESP3, named `dlock-listener`) subscribed to the
/// release channel, started at the first busy answer and shared by all waiters of the
/// backend. A release wakes the waiters of that name, which try again at once: a handoff costs
/// the message and one round trip. The listener remembers releases and when it (re)subscribed,
/// so a release between a busy answer and the start of a wait is never missed; while it is
/// disconnected, waiters poll every half second. A lease that simply runs out publishes
/// nothing: its waiters retry when the holder's lease ends (the runtime bounds every wait by
/// it). Notifications need Redis 6 or later (RESP3); turn them off with
/// [`notifications(false)`](RedisBuilder::notifications) or `?listen=false` to poll instead.
///
/// Redis Cluster is not supported (a lock's key and its counter key would have to share a
/// hash slot); use a standalone primary or a Sentinel-managed one.
pub struct RedisBackend {
    connection: Arc<Connection>,
    keys: Keys,
    endpoint: String,
    request_timeout: Duration,
    scripts: Arc<Scripts>,
    listener: Option<Arc<Listener<Subscribe>>>,
}

struct Scripts {
    acquire: Script,
    renew: Script,
    release: Script,
    force_release: Script,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the password.
        f.debug_struct("RedisBackend")
            .field("endpoint", &self.endpoint)
            .field("prefix", &self.keys.prefix)
            .field("notifications", &self.listener.is_some())
            .finish_non_exhaustive()
    }
}

impl Drop for RedisBackend {
    fn drop(&mut self) {
        if let Some(listener) = &self.listener {
            listener.stop();
        }
    }
}

/// Settings for a [`RedisBackend`]; setters never fail, [`build`](RedisBuilder::build) checks
/// them.
///
/// ```
/// use dlock_runtime::RedisBackend;
/// use std::time::Duration;
///
/// let backend = RedisBackend::builder()
///     .url("redis://:secret@cache1:6379/2")
///     .prefix("ci:")
///     .connect_timeout(Duration::from_secs(2))
///     .request_timeout(Duration::from_secs(3))
///     .build()?;
/// assert!(!format!("{backend:?}").contains("secret"), "Debug hides the password");
/// assert!(RedisBackend::builder().url("http://cache1").build().is_err());
/// # Ok::<(), dlock_runtime::Error>(())
/// ```
#[derive(Clone)]
#[must_use = "call .build()"]
pub struct RedisBuilder {
    url: String,
    prefix: Option<String>,
    connect_timeout: Duration,
    request_timeout: Duration,
    notifications: Option<bool>,
}

impl fmt::Debug for RedisBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password.
        f.debug_struct("RedisBuilder")
            .field("prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("notifications", &self.notifications)
            .finish_non_exhaustive()
    }
}

impl Default for RedisBuilder {
    fn default() -> Self {
        RedisBuilder {
            url: String::new(),
            prefix: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            notifications: None,
        }
    }
}

impl RedisBuilder {
    /// The server (required): `redis://[user][:password]@host[:port][/db][?prefix=..&listen=..]`,
    /// or `rediss://` for TLS.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = url.into();
        self
    }

    /// The prefix of every key and of the release channel (default `dlock:`); overrides the
    /// URL's `prefix` option. Any printable text up to 256 bytes.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// How long connecting may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a command may go without an answer before it is abandoned (default 5 s). The
    /// runtime also bounds each call by its own deadline.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Whether waiters are woken by pub/sub (default, also `?listen=true`) or poll (`false`).
    pub fn notifications(mut self, on: bool) -> Self {
        self.notifications = Some(on);
        self
    }

    /// Checks the settings. Connects nothing: the first lock call does.
    pub fn build(self) -> Result<RedisBackend, Error> {
        let config_error = |message: String| Error::Config {
            message: format!("redis: {message}"),
        };
        if self.url.trim().is_empty() {
            return Err(config_error(
                "no server URL; set it with `.url(..)`, a `redis://:password@host:6379/0?prefix=dlock:` \
                 URL or DLOCK_REDIS_URL"
                    .into(),
            ));
        }
        if self.connect_timeout.is_zero() || self.request_timeout.is_zero() {
            return Err(config_error(
                "the connect and request timeouts must be greater than zero".into(),
            ));
        }
        let options = split_dlock_options(&self.url)?;
        let client = Client::open(options.driver_url.as_str()).map_err(|e| {
            // The crate's messages name the problem, never the password.
            if options.driver_url.starts_with("rediss") && e.to_string().contains("TLS") {
                config_error(
                    "`rediss://` needs TLS support, which this build of dlock-runtime does not \
                     include; reach the server through a local TLS tunnel and use `redis://`"
                        .into(),
                )
            } else {
                config_error(format!(
                    "the URL cannot be used ({e}); write it like `redis://:password@host:6379/0`"
                ))
            }
        })?;
        let prefix = self
            .prefix
            .or(options.prefix)
            .unwrap_or_else(|| DEFAULT_PREFIX.to_string());
        let keys = Keys::new(prefix)?;
        let info = client.get_connection_info();
        let endpoint = format!("{}/{}", info.addr(), info.redis_settings().db());
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.request_timeout))
            // Fail fast: the runtime retries with its own backoff and deadline.
            .set_number_of_retries(0);
        let notifications = self.notifications.or(options.listen).unwrap_or(true);
        let listener = if notifications {
            let info = client.get_connection_info().clone();
            let settings = info
                .redis_settings()
                .clone()
                .set_protocol(ProtocolVersion::RESP3);
            let listen_client = Client::open(info.set_redis_settings(settings))
                .map_err(|e| config_error(format!("the URL cannot be used ({e})")))?;
            Some(Arc::new(Listener::new(Subscribe {
                client: listen_client,
                channel: keys.channel.clone(),
                connect_timeout: self.connect_timeout,
                request_timeout: self.request_timeout,
            })))
        } else {
            None
        };
        Ok(RedisBackend {
            connection: Arc::new(Connection {
                client,
                config: manager_config,
                manager: Mutex::new((0, None)),
            }),
            keys,
            endpoint,
            request_timeout: self.request_timeout,
            scripts: Arc::new(Scripts {
                acquire: Script::new(ACQUIRE),
                renew: Script::new(RENEW),
                release: Script::new(RELEASE),
                force_release: Script::new(FORCE_RELEASE),
            }),
            listener,
        })
    }
}

/// dlock's options taken out of a URL.
struct DlockOptions {
    driver_url: String,
    prefix: Option<String>,
    listen: Option<bool>,
}

/// Takes `prefix` and `listen` out of the URL's query (percent-decoded).
fn split_dlock_options(url: &str) -> Result<DlockOptions, Error> {
    let mut options = DlockOptions {
        driver_url: url.to_string(),
        prefix: None,
        listen: None,
    };
    let Some((base, query)) = url.split_once('?') else {
        return Ok(options);
    };
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "prefix" => options.prefix = Some(percent_decode(value)?),
            "listen" => {
                options.listen = Some(match value {
                    "true" | "1" | "on" | "" => true,
                    "false" | "0" | "off" => false,
                    other => {
                        return Err(Error::Config {
                            message: format!(
                                "redis: `listen={other}` in the URL; write listen=true or listen=false"
                            ),
                        });
                    }
                });
            }
            _ => rest.push(pair),
        }
    }
    options.driver_url = if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok(options)
}

fn percent_decode(text: &str) -> Result<String, Error> {
    let bad = || Error::Config {
        message: format!("redis: the URL's prefix `{text}` is not valid percent-encoded UTF-8"),
    };
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = text.get(i + 1..i + 3).ok_or_else(bad)?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// The key names of a backend.
#[derive(Clone, Debug)]
struct Keys {
    prefix: String,
    /// `PREFIX lock:`: followed by the name, the lock's hash.
    lock: String,
    /// `PREFIX fencing:`: followed by the name, the lock's fencing counter.
    fencing: String,
    /// The channel releases are published on.
    channel: String,
}

impl Keys {
    fn new(prefix: String) -> Result<Keys, Error> {
        if prefix.len() > MAX_PREFIX {
            return Err(Error::Config {
                message: format!(
                    "redis: the key prefix is {} bytes long; the limit is {MAX_PREFIX}",
                    prefix.len()
                ),
            });
        }
        if let Some(c) = prefix.chars().find(|c| c.is_control()) {
            return Err(Error::Config {
                message: format!(
                    "redis: the key prefix {prefix:?} contains the control character {c:?}"
                ),
            });
        }
        Ok(Keys {
            lock: format!("{prefix}lock:"),
            fencing: format!("{prefix}fencing:"),
            channel: format!("{prefix}released"),
            prefix,
        })
    }

    fn lock(&self, name: &LockName) -> String {
        format!("{}{}", self.lock, name.as_str())
    }

    fn fencing(&self, name: &LockName) -> String {
        format!("{}{}", self.fencing, name.as_str())
    }

    /// The `SCAN MATCH` pattern of the lock keys whose names start with `prefix`.
    fn pattern(&self, prefix: &str) -> String {
        format!("{}{}*", glob_escape(&self.lock), glob_escape(prefix))
    }
}

/// Escapes Redis glob characters, so the text matches only itself.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The connection manager, made on first use on dlock's background runtime and replaced after
/// an error that leaves it unusable (a refused password, a server still loading).
struct Connection {
    client: Client,
    config: ConnectionManagerConfig,
    /// A generation number, so a failed manager is replaced once, and the manager.
    manager: Mutex<(u64, Option<ConnectionManager>)>,
}

impl Connection {
    fn lock(&self) -> MutexGuard<'_, (u64, Option<ConnectionManager>)> {
        self.manager.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends one command; runs on the background runtime.
    async fn send(&self, cmd: &Cmd) -> Result<Value, RedisError> {
        let (generation, mut manager) = {
            let mut slot = self.lock();
            let manager = match &slot.1 {
                Some(m) => m.clone(),
                None => {
                    let m = ConnectionManager::new_lazy_with_config(
                        self.client.clone(),
                        self.config.clone(),
                    )?;
                    slot.1 = Some(m.clone());
                    m
                }
            };
            (slot.0, manager)
        };
        let result = cmd.query_async::<Value>(&mut manager).await;
        if let Err(e) = &result
            && !is_reply(e)
        {
            // A connection that failed to start stays failed in the manager: start afresh.
            let mut slot = self.lock();
            if slot.0 == generation {
                slot.0 += 1;
                slot.1 = None;
            }
        }
        result
    }
}

/// Whether the error is the server's answer to a command on a working connection.
fn is_reply(e: &RedisError) -> bool {
    match e.kind() {
        RedisKind::Server(ServerErrorKind::BusyLoading) => false,
        RedisKind::Server(_) | RedisKind::Extension => {
            !matches!(e.code(), Some("NOAUTH"))
                && !e.detail().unwrap_or_default().contains("Protocol error")
        }
        _ => false,
    }
}

/// Runs `future` on dlock's background runtime (where the connections live), so a caller's
/// runtime that ends or blocks never holds a connection's I/O; aborted when dropped.
async fn in_background<T: Send + 'static>(
    future: impl Future<Output = T> + Send + 'static,
) -> Result<T, Error> {
    struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);
    impl<T> Drop for AbortOnDrop<T> {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let mut task = AbortOnDrop(Background::default().spawn(future)?);
    crate::background::joined((&mut task.0).await)
}

/// A lock hash as read.
struct Record {
    holder: Holder,
}

/// Parses the seven fields (in [`FIELDS`] order); `None` when the hash does not exist.
fn record(fields: &[Value]) -> Result<Option<Record>, Error> {
    let text = |i: usize| -> Option<String> {
        match fields.get(i) {
            Some(Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            Some(Value::SimpleString(s)) => Some(s.clone()),
            Some(Value::Int(n)) => Some(n.to_string()),
            _ => None,
        }
    };
    let Some(owner) = text(0) else {
        return Ok(None);
    };
    let number = |i: usize| text(i).and_then(|t| t.parse::<u64>().ok());
    Ok(Some(Record {
        holder: Holder {
            owner: Owner {
                id: owner,
                host: text(1).unwrap_or_default(),
                pid: number(2)
                    .and_then(|p| u32::try_from(p).ok())
                    .unwrap_or_default(),
            },
            version: Version::new(text(3).unwrap_or_default()),
            fencing_token: number(4),
            ttl: number(5).map(Duration::from_millis),
            acquired_at: number(6).map(|ms| UNIX_EPOCH + Duration::from_millis(ms)),
        },
    }))
}

fn ttl_millis(ttl: Duration) -> u64 {
    crate::time::millis(ttl).clamp(1, MAX_TTL_MS)
}

fn lost(name: &LockName) -> Error {
    Error::Lost {
        name: name.to_string(),
    }
}

fn unexpected(doing: &str, value: &Value) -> Error {
    Error::permanent(
        KIND,
        format!("unexpected answer from Redis while {doing}: {value:?}"),
        None,
    )
}

/// A script's answer: its first element (1 or 0) and the rest.
fn flagged(doing: &str, value: Value) -> Result<(bool, Vec<Value>), Error> {
    match value {
        Value::Array(mut items) if !items.is_empty() => {
            let flag = match items.remove(0) {
                Value::Int(n) => n == 1,
                other => return Err(unexpected(doing, &other)),
            };
            Ok((flag, items))
        }
        other => Err(unexpected(doing, &other)),
    }
}

/// The owner and version a refused renew or release found.
fn found(items: &[Value]) -> Option<(String, String)> {
    let text = |v: Option<&Value>| match v {
        Some(Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    };
    Some((text(items.first())?, text(items.get(1)).unwrap_or_default()))
}

impl RedisBackend {
    /// Settings to fill in.
    pub fn builder() -> RedisBuilder {
        RedisBuilder::default()
    }

    /// Settings from the environment: `DLOCK_REDIS_URL` (which may carry `?prefix=`), and
    /// `DLOCK_REDIS_PREFIX`.
    ///
    /// ```no_run
    /// // DLOCK_REDIS_URL=redis://:secret@cache1:6379/0?prefix=myapp:
    /// let backend = dlock_runtime::RedisBackend::from_env().build()?;
    /// # Ok::<(), dlock_runtime::Error>(())
    /// ```
    pub fn from_env() -> RedisBuilder {
        let mut builder =
            RedisBackend::builder().url(std::env::var("DLOCK_REDIS_URL").unwrap_or_default());
        if let Ok(prefix) = std::env::var("DLOCK_REDIS_PREFIX") {
            builder = builder.prefix(prefix);
        }
        builder
    }

    /// `redis://[user][:password]@host[:port][/db]?prefix=dlock:&listen=true`: dlock takes
    /// `prefix` and `listen`, the `redis` crate the rest.
    ///
    /// ```
    /// use dlock_runtime::{Backend, RedisBackend};
    /// let backend = RedisBackend::from_url("redis://:secret@cache1:6379/1?prefix=ci:")?;
    /// assert_eq!(backend.kind(), "redis");
    /// assert!(backend.capabilities().notified_waiting && backend.capabilities().fencing_tokens);
    /// assert!(format!("{backend:?}").contains("cache1:6379/1"));
    /// let polling = RedisBackend::from_url("redis://cache1/?listen=false")?;
    /// assert!(!polling.capabilities().notified_waiting);
    /// # Ok::<(), dlock_runtime::Error>(())
    /// ```
    pub fn from_url(url: &str) -> Result<Self, Error> {
        RedisBackend::builder().url(url).build()
    }

    /// Sends one command on the background runtime, bounded by the request timeout.
    async fn query(&self, doing: &str, cmd: Cmd) -> Result<Value, Error> {
        let connection = self.connection.clone();
        let limit = self.request_timeout.saturating_mul(2);
        let sent = in_background(async move {
            tokio::time::timeout(limit, async { connection.send(&cmd).await }).await
        })
        .await?;
        match sent {
            Ok(result) => result.map_err(|e| self.error(doing, e)),
            Err(_) => Err(self.no_answer(doing)),
        }
    }

    /// Runs a script by its SHA-1, loading it with `EVAL` when the server does not have it.
    async fn eval(
        &self,
        doing: &str,
        script: fn(&Scripts) -> &Script,
        keys: &[&str],
        args: &[&[u8]],
    ) -> Result<Value, Error> {
        let build = |head: &str, body: &str| {
            let mut cmd = redis::cmd(head);
            cmd.arg(body).arg(keys.len()).arg(keys);
            for arg in args {
                cmd.arg(*arg);
            }
            cmd
        };
        let (connection, scripts) = (self.connection.clone(), self.scripts.clone());
        let by_sha = build("EVALSHA", &script(&scripts).sha);
        let full = build("EVAL", script(&scripts).source);
        let limit = self.request_timeout.saturating_mul(2);
        let sent = in_background(async move {
            tokio::time::timeout(limit, async {
                match connection.send(&by_sha).await {
                    Err(e) if e.kind() == RedisKind::Server(ServerErrorKind::NoScript) => {
                        connection.send(&full).await
                    }
                    other => other,
                }
            })
            .await
        })
        .await?;
        match sent {
            Ok(result) => result.map_err(|e| self.error(doing, e)),
            Err(_) => Err(self.no_answer(doing)),
        }
    }

    fn no_answer(&self, doing: &str) -> Error {
        Error::temporary(
            KIND,
            format!(
                "no answer from Redis at {} while {doing}; the command was abandoned (a write \
                 may still have landed: dlock reads the lock back before deciding)",
                self.endpoint
            ),
            None,
        )
    }

    /// A client error as a dlock error: temporary when the server may answer later, permanent
    /// (with what to do) otherwise. Decided by error kinds and codes.
    fn error(&self, doing: &str, e: RedisError) -> Error {
        let at = &self.endpoint;
        let code = e.code().unwrap_or_default().to_string();
        let detail = e.detail().unwrap_or_default().to_string();
        let (temporary, message) = match e.kind() {
            RedisKind::AuthenticationFailed => (
                false,
                format!(
                    "Redis at {at} refused the credentials (WRONGPASS): wrong user name or \
                     password; check them in the URL (`redis://user:password@host:port`, or \
                     DLOCK_REDIS_URL)"
                ),
            ),
            // A server with a password closes an unauthenticated connection that sends a long
            // command with "Protocol error: unauthenticated multibulk length".
            _ if code == "NOAUTH" || code == "WRONGPASS" || detail.contains("unauthenticated") => (
                false,
                format!(
                    "Redis at {at} refused the credentials ({code}: {detail}): the server \
                     requires a password; put it in the URL (`redis://:password@host:port`, or \
                     DLOCK_REDIS_URL)"
                ),
            ),
            RedisKind::Server(ServerErrorKind::NoPerm) => (
                false,
                format!(
                    "Redis at {at} denied a command while {doing} (NOPERM {detail}): the user \
                     needs EVALSHA, EVAL, HMGET, SCAN, SUBSCRIBE and PING on the keys and \
                     channels `{}*`",
                    self.keys.prefix
                ),
            ),
            RedisKind::Server(ServerErrorKind::ReadOnly) => (
                true,
                format!(
                    "Redis at {at} is a read-only replica (READONLY) and cannot take locks: \
                     point the URL at the primary (during a failover this passes once a new \
                     primary is reachable)"
                ),
            ),
            _ if code == "OOM" => (
                true,
                format!(
                    "Redis at {at} is out of memory (OOM {detail}) and refuses writes: raise \
                     `maxmemory` or free memory (keep `maxmemory-policy noeviction` for locks)"
                ),
            ),
            RedisKind::Server(ServerErrorKind::BusyLoading) => (
                true,
                format!("Redis at {at} is loading its data set; retrying"),
            ),
            RedisKind::Server(
                ServerErrorKind::MasterDown
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown,
            ) => (
                true,
                format!("Redis at {at} cannot answer now ({code} {detail}); retrying"),
            ),
            RedisKind::Server(
                ServerErrorKind::Moved | ServerErrorKind::Ask | ServerErrorKind::CrossSlot,
            ) => (
                false,
                format!(
                    "Redis at {at} is a Redis Cluster node ({code}); dlock's Redis backend needs \
                     a standalone (or Sentinel-managed) primary"
                ),
            ),
            _ if code == "WRONGTYPE" => (
                false,
                format!(
                    "a key under the prefix `{}` at {at} holds a value dlock did not write \
                     (WRONGTYPE) while {doing}; use a prefix no other program writes under",
                    self.keys.prefix
                ),
            ),
            RedisKind::Io if e.is_timeout() => (
                true,
                format!(
                    "no answer from Redis at {at} within {} while {doing}; the command was \
                     abandoned (a write may still have landed: dlock reads the lock back before \
                     deciding)",
                    humantime::format_duration(self.request_timeout)
                ),
            ),
            RedisKind::Io => (
                true,
                format!(
                    "cannot reach Redis at {at} while {doing}: {e}; check the URL's host and port \
                     and that the server is up"
                ),
            ),
            RedisKind::Server(_) | RedisKind::Extension => {
                (false, format!("{doing} failed: Redis at {at} answered {e}"))
            }
            _ => (
                false,
                format!("{doing} failed talking to Redis at {at}: {e}"),
            ),
        };
        Error::backend_failure(KIND, temporary, message, Some(Box::new(e)))
    }

    /// The lock's hash as it is now.
    async fn read(&self, name: &LockName) -> Result<Option<Record>, Error> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.keys.lock(name)).arg(&FIELDS[..]);
        match self.query("reading the lock", cmd).await? {
            Value::Array(fields) => record(&fields),
            other => Err(unexpected("reading the lock", &other)),
        }
    }

    /// Starts the listening connection (once), so a waiter's first wait finds it running.
    fn listen(&self) {
        if let Some(listener) = &self.listener {
            listener.start();
        }
    }
}

#[async_trait::async_trait]
impl Backend for RedisBackend {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            leases: true,
            fencing_tokens: true,
            poll_with_reads: false,
            notified_waiting: self.listener.is_some(),
            local_calls: false,
            fair_waiting: false,
        }
    }

    async fn try_acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, Error> {
        let acquired_at = SystemTime::now();
        let at_ms = acquired_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, crate::time::millis);
        let version = crate::backend::random_id();
        let (pid, ttl, at) = (
            request.owner.pid.to_string(),
            ttl_millis(request.ttl).to_string(),
            at_ms.to_string(),
        );
        let replace = request.replace.as_ref().map_or("", Version::as_str);
        let keys = [
            self.keys.lock(&request.name),
            self.keys.fencing(&request.name),
        ];
        let answer = self
            .eval(
                "acquiring",
                |s| &s.acquire,
                &[&keys[0], &keys[1]],
                &[
                    request.owner.id.as_bytes(),
                    request.owner.host.as_bytes(),
                    pid.as_bytes(),
                    version.as_bytes(),
                    ttl.as_bytes(),
                    replace.as_bytes(),
                    at.as_bytes(),
                ],
            )
            .await?;
        let (taken, fields) = flagged("acquiring", answer)?;
        let Some(found) = record(&fields)? else {
            return Err(unexpected("acquiring", &Value::Array(fields)));
        };
        if taken && found.holder.owner.id == request.owner.id {
            Ok(AcquireOutcome::Acquired(Lease {
                name: request.name.clone(),
                owner: request.owner.clone(),
                version: found.holder.version,
                ttl: request.ttl,
                fencing_token: found.holder.fencing_token,
                acquired_at,
            }))
        } else {
            self.listen();
            Ok(AcquireOutcome::Busy(found.holder))
        }
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, Error> {
        let version = crate::backend::random_id();
        let ttl_ms = ttl_millis(ttl).to_string();
        let key = self.keys.lock(&lease.name);
        let answer = self
            .eval(
                "renewing",
                |s| &s.renew,
                &[&key],
                &[
                    lease.owner.id.as_bytes(),
                    lease.version.as_str().as_bytes(),
                    version.as_bytes(),
                    ttl_ms.as_bytes(),
                ],
            )
            .await?;
        let (renewed, found_now) = flagged("renewing", answer)?;
        if renewed {
            return Ok(Lease {
                version: Version::new(version),
                ttl,
                ..lease.clone()
            });
        }
        // Refused: a renewal of ours whose answer was lost may have moved the version on.
        match found(&found_now) {
            Some((owner, current)) if owner == lease.owner.id => Ok(Lease {
                version: Version::new(current),
                ttl,
                ..lease.clone()
            }),
            _ => Err(lost(&lease.name)),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<(), Error> {
        let key = self.keys.lock(&lease.name);
        let mut version = lease.version.as_str().to_string();
        for _ in 0..2 {
            let answer = self
                .eval(
                    "releasing",
                    |s| &s.release,
                    &[&key],
                    &[
                        lease.owner.id.as_bytes(),
                        version.as_bytes(),
                        self.keys.channel.as_bytes(),
                        lease.name.as_str().as_bytes(),
                    ],
                )
                .await?;
            let (released, found_now) = flagged("releasing", answer)?;
            if released {
                return Ok(());
            }
            match found(&found_now) {
                // Free already (a retry of our own release, or the lease ran out).
                None => return Ok(()),
                // Ours at another version: a renewal whose answer was lost.
                Some((owner, current)) if owner == lease.owner.id => version = current,
                Some(_) => return Err(lost(&lease.name)),
            }
        }
        Err(lost(&lease.name))
    }

    async fn inspect(&self, name: &LockName) -> Result<Option<Holder>, Error> {
        Ok(self.read(name).await?.map(|r| r.holder))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(LockName, Holder)>, Error> {
        let pattern = self.keys.pattern(prefix);
        let mut keys = std::collections::BTreeSet::new();
        let mut cursor = 0u64;
        loop {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT);
            let answer = self.query("listing", cmd).await?;
            let (next, page): (u64, Vec<Vec<u8>>) = redis::from_redis_value(answer.clone())
                .map_err(|_| unexpected("listing", &answer))?;
            keys.extend(page);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        let mut held = BTreeMap::new();
        for key in keys {
            let Some(name) = key
                .strip_prefix(self.keys.lock.as_bytes())
                .and_then(|rest| std::str::from_utf8(rest).ok())
                .filter(|name| name.starts_with(prefix))
                .and_then(|name| LockName::new(name).ok())
            else {
                continue;
            };
            if let Some(record) = self.read(&name).await? {
                held.insert(name, record.holder);
            }
        }
        Ok(held.into_iter().collect())
    }

    async fn force_release(&self, name: &LockName, version: &Version) -> Result<(), Error> {
        let key = self.keys.lock(name);
        let answer = self
            .eval(
                "force-releasing",
                |s| &s.force_release,
                &[&key],
                &[
                    version.as_str().as_bytes(),
                    self.keys.channel.as_bytes(),
                    name.as_str().as_bytes(),
                ],
            )
            .await?;
        if flagged("force-releasing", answer)?.0 {
            return Ok(());
        }
        match self.inspect(name).await? {
            None => Ok(()),
            Some(holder) => Err(Error::Changed {
                name: name.to_string(),
                expected: version.clone(),
                holder: Some(Box::new(holder)),
            }),
        }
    }

    async fn wait_for_change(
        &self,
        name: &LockName,
        _seen: &Version,
        since: Instant,
    ) -> Result<(), Error> {
        match &self.listener {
            Some(listener) => {
                listener.start();
                listener.wait(name.as_str(), since).await;
                Ok(())
            }
            None => std::future::pending().await,
        }
    }

    fn stale_lock_hint(&self, name: &LockName, holder: Option<&Holder>) -> String {
        let version = holder.map_or("VERSION", |h| h.version.as_str());
        format!(
            "If its holder is gone, the lock is free once its lease runs out by the Redis \
             server's clock (the key `{}{name}` expires); to free it now, run `dlock release \
             --force '{name}' --if-version {version}`",
            self.keys.lock
        )
    }
}

/// The Redis half of the backend's [`Listener`]: a RESP3 connection of its own subscribed to
/// the release channel.
struct Subscribe {
    client: Client,
    channel: String,
    connect_timeout: Duration,
    request_timeout: Duration,
}

impl notify::Server for Subscribe {
    const START_FAILED: &'static str = "cannot start listening for Redis releases; waiters poll";
    const LOST: &'static str = "lost the Redis connection that listens for releases; reconnecting";
    const FAILING: &'static str = "cannot subscribe to Redis releases; waiters poll until it works";

    /// One subscribed connection, until it fails.
    async fn session(&self, heard: &Heard) -> Result<(), String> {
        let (sender, mut pushes) = tokio::sync::mpsc::unbounded_channel::<PushInfo>();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.request_timeout))
            .set_push_sender(sender);
        let mut connection: MultiplexedConnection = within(
            self.connect_timeout.saturating_mul(2),
            self.client
                .get_multiplexed_async_connection_with_config(&config),
            "no connection within the connect timeout",
        )
        .await?;
        // For operators (CLIENT LIST); a server that refuses it still delivers messages.
        let _ = redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg("dlock-listener")
            .query_async::<Value>(&mut connection)
            .await;
        let subscribing = connection.subscribe(&self.channel);
        within(self.request_timeout, subscribing, "no answer to SUBSCRIBE").await?;
        heard.connected();
        let read = async {
            loop {
                match pushes.recv().await {
                    None => return Err("the connection ended".to_string()),
                    Some(push) if push.kind == PushKind::Disconnection => {
                        return Err("the server closed the connection".to_string());
                    }
                    Some(push) if push.kind == PushKind::Message => self.heard(heard, &push.data),
                    Some(_) => {}
                }
            }
        };
        let ping = || {
            let mut connection = connection.clone();
            async move {
                let pong = redis::cmd("PING")
                    .query_async::<Value>(&mut connection)
                    .await;
                pong.map(|_| ())
            }
        };
        tokio::select! {
            result = read => result,
            result = keep_alive(self.request_timeout, ping) => result,
        }
    }
}

impl Subscribe {
    /// A message: `[channel, name]`.
    fn heard(&self, heard: &Heard, data: &[Value]) {
        let (Some(Value::BulkString(channel)), Some(Value::BulkString(name))) =
            (data.first(), data.get(1))
        else {
            return;
        };
        if channel.as_slice() == self.channel.as_bytes() {
            heard.released(&String::from_utf8_lossy(name));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_are_escaped() {
        let keys = Keys::new("app*:".into()).expect("valid");
        assert_eq!(keys.pattern("a?[b]\\c"), "app\\*:lock:a\\?\\[b\\]\\\\c*");
        assert_eq!(keys.lock(&LockName::new("x").expect("name")), "app*:lock:x");
        assert_eq!(
            keys.fencing(&LockName::new("x").expect("name")),
            "app*:fencing:x"
        );
        assert_eq!(keys.channel, "app*:released");
        assert!(Keys::new("bad\nprefix".into()).is_err());
        assert!(Keys::new("p".repeat(MAX_PREFIX + 1)).is_err());
    }

    #[test]
    fn dlock_options_are_taken_out_of_the_url() {
        let o = split_dlock_options(
            "redis://:pw@h:6379/2?prefix=ci%3Alocks%2A:&listen=false&protocol=resp3",
        )
        .expect("valid");
        assert_eq!(o.driver_url, "redis://:pw@h:6379/2?protocol=resp3");
        assert_eq!(o.prefix.as_deref(), Some("ci:locks*:"));
        assert_eq!(o.listen, Some(false));
        assert!(split_dlock_options("redis://h/?listen=maybe").is_err());
        assert!(split_dlock_options("redis://h/?prefix=%zz").is_err());
    }

    #[test]
    fn leases_are_clamped_for_the_server() {
        assert_eq!(ttl_millis(Duration::MAX), MAX_TTL_MS);
        assert_eq!(ttl_millis(Duration::ZERO), 1);
        assert_eq!(ttl_millis(Duration::from_secs(3)), 3000);
    }

    #[test]
    fn records_parse() {
        let fields: Vec<Value> = ["id", "h", "42", "v1", "7", "3000", "1700000000000"]
            .iter()
            .map(|s| Value::BulkString(s.as_bytes().to_vec()))
            .collect();
        let r = record(&fields).expect("parse").expect("held");
        assert_eq!(r.holder.owner.pid, 42);
        assert_eq!(r.holder.fencing_token, Some(7));
        assert_eq!(r.holder.ttl, Some(Duration::from_secs(3)));
        assert!(record(&[const { Value::Nil }; 7]).expect("parse").is_none());
    }
}
