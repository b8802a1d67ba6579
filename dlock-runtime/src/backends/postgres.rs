//! PostgreSQL: one row per lock name in one table, written by single conditional statements,
//! with fencing tokens from a sequence, expiry by the server's clock and waiters woken by
//! `LISTEN/NOTIFY`. The documentation for users (the table, the statements, waiting, why not
//! advisory locks, TLS) is on [`PostgresBackend`], which the crate re-exports.

use crate::backend::{
    AcquireOutcome, AcquireRequest, Backend, Capabilities, Holder, Lease, Owner, Version,
};
use crate::backends::notify::{self, Heard, Listener, keep_alive, within};
use crate::background::Background;
use crate::{Error, LockName};
use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::task::JoinHandle;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{AsyncMessage, Config, NoTls, Row};

const KIND: &str = "postgres";
/// The table used when none is configured.
pub(crate) const DEFAULT_TABLE: &str = "dlock_locks";
/// Appended to the table's name for its fencing sequence.
const SEQUENCE_SUFFIX: &str = "_fencing";
/// PostgreSQL's longest identifier, in bytes.
const MAX_IDENTIFIER: usize = 63;
const DEFAULT_POOL_SIZE: usize = 8;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest lease written to the table (about a hundred years): `now() + ttl` must fit.
const MAX_TTL_MS: i64 = 100 * 366 * 24 * 3600 * 1000;

/// Locks as rows of a PostgreSQL table.
///
/// Configure with [`PostgresBackend::builder`], [`PostgresBackend::from_env`]
/// (`DLOCK_POSTGRES_URL`) or the URL `postgres://user:password@host:5432/db?table=locks` (any
/// tokio-postgres connection URL; `table` and `listen` are dlock's options, the rest goes to
/// the driver). The table must exist: see [`create_table`](PostgresBackend::create_table) and
/// [the table](#the-table) below for its DDL and the privileges needed.
///
/// Connections come from a pool (8 by default) and are made without TLS; a server that cannot
/// be reached fails after 5 s (the URL's `connect_timeout` overrides that) and every statement
/// is abandoned after 10 s without an answer.
///
/// ```no_run
/// use dlock_runtime::{PostgresBackend, Registry};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), dlock_runtime::Error> {
/// let postgres = PostgresBackend::builder()
///     .url("postgres://app:secret@db1:5432/app")
///     .table("locks")
///     .build()?;
/// postgres.create_table().await?; // once, or run the DDL below
/// Registry::builder().backend("postgres", postgres).build()?.install().expect("once");
/// # Ok(())
/// # }
/// ```
///
/// # The table
///
/// Create it once with [`PostgresBackend::create_table`], or with this DDL (the table name is
/// configurable; the sequence is named after it, with `_fencing` appended):
///
/// ```sql
/// CREATE TABLE IF NOT EXISTS "dlock_locks" (
///     name          text COLLATE "C" PRIMARY KEY,
///     owner         text,         -- random id of this acquisition; NULL when free
///     host          text,
///     pid           bigint,
///     version       text,         -- random, new on every write (acquire, renew)
///     fencing_token bigint NOT NULL DEFAULT 0,
///     ttl_ms        bigint,
///     acquired_at   timestamptz,  -- the server's now()
///     expires_at    timestamptz   -- the server's now() + ttl
/// );
/// CREATE SEQUENCE IF NOT EXISTS "dlock_locks_fencing";
/// ```
///
/// Privileges: `SELECT, INSERT, UPDATE` on the table and `USAGE` on the sequence. dlock never
/// deletes rows: a released lock keeps its row (with `owner` NULL).
///
/// # The statements
///
/// Every call is one statement in its own transaction; lock names are always bound parameters,
/// never part of the SQL text, and the table name is validated as an identifier and quoted.
///
/// - **Acquire**: `INSERT ... ON CONFLICT (name) DO UPDATE ... WHERE owner IS NULL OR expires_at
///   <= now() OR version = $replace RETURNING ...`, in a CTE whose other branch reads the row
///   when the update was refused: one round trip answers acquired (with the fencing token) or
///   busy (with the holder). PostgreSQL locks the conflicting row before checking the `WHERE`,
///   so two acquirers never both win. A refused write by the same owner (a retry of a write
///   whose answer was lost) is recognised by the owner id and answered as acquired.
/// - **Renew**: `UPDATE ... SET version = $new, expires_at = now() + ttl WHERE name = $1 AND
///   owner = $2 AND version = $3`.
/// - **Release**: the same conditional `UPDATE`, setting `owner` (and the rest) to NULL, with
///   `pg_notify(channel, name)` in the same statement, so waiters hear of it only when the
///   release commits. The row and its fencing token stay.
/// - **Inspect / list**: plain `SELECT`s, which never lock or change a row.
///
/// **Expiry is decided by the server's clock** (`now()` in both the write that sets
/// `expires_at` and the one that compares with it), never by a client's. A holder's own lease
/// is dated from when its write was *sent*, so it always ends before the server's. A waiter
/// may also take over a record whose version it saw unchanged for a whole lease (the runtime's
/// record-version rule), with a write conditional on that version.
///
/// **Fencing tokens** come from the sequence (`nextval`), evaluated under the row lock of the
/// acquiring write: strictly increasing per lock name across release, re-acquisition, takeover
/// and even a row deleted by hand (tokens are shared by all names, so they have gaps; a server
/// crash may skip some).
///
/// # Waiting
///
/// Each backend keeps one dedicated connection that `LISTEN`s on the table's channel (the
/// table's name), started at the first busy answer and shared by all waiters of the backend.
/// A release wakes the waiters of that name, which try again at once: a handoff costs the
/// notification and one round trip. The listener remembers when each name was last released
/// and when it (re)connected, so a release between a busy answer and the start of a wait is
/// never missed; if the connection drops, every waiter is woken to look again, and waiters
/// poll (every half second) until it is back. Waiters are not queued across processes: the
/// woken ones race for the lock (within one process, dlock's local queue is first come, first
/// served).
///
/// `LISTEN` needs a session of its own: behind a pooler in transaction mode (PgBouncer),
/// notifications are not delivered; turn them off with
/// [`notifications(false)`](PostgresBuilder::notifications) (or `?listen=false`) and waiters
/// poll instead.
///
/// # Why a table, not advisory locks
///
/// PostgreSQL also has session advisory locks (`pg_advisory_lock(key)`), freed when their
/// connection ends. dlock uses the table because a lease:
///
/// - survives a dropped connection or a database failover: a holder whose connection blips
///   reconnects and renews, instead of losing the lock silently to the next taker while its
///   body is still running (with an advisory lock, the holder learns only at its next query);
/// - carries fencing tokens, so the resource you protect can refuse an older holder;
/// - shows who holds it (owner, host, pid, since when) to `inspect`, `list`, `dlock status`,
///   and can be freed by an operator at a version (`dlock release --force`);
/// - takes any text name (advisory locks take 64-bit keys, so names would have to be hashed);
/// - works through connection pools, and holds no connection while the lock is held.
///
/// Use `pg_advisory_lock` (or better `pg_advisory_xact_lock`) directly when the work the lock
/// protects is itself in the same PostgreSQL database, in one session or transaction: the
/// lock then ends exactly with that session or transaction, needs no table, and a crashed
/// holder frees it at once instead of after its lease.
///
/// # TLS
///
/// Connections are made without TLS (`NoTls`): `sslmode=require` is refused at build time.
/// Use a server on a private network, or a local TLS tunnel (a sidecar proxy) to reach one
/// that requires TLS.
pub struct PostgresBackend {
    pool: Pool,
    table: Table,
    sql: Statements,
    endpoint: String,
    request_timeout: Duration,
    listener: Option<Arc<Listener<Listen>>>,
}

impl fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the password.
        f.debug_struct("PostgresBackend")
            .field("endpoint", &self.endpoint)
            .field("table", &self.table.shown)
            .field("notifications", &self.listener.is_some())
            .finish_non_exhaustive()
    }
}

impl Drop for PostgresBackend {
    fn drop(&mut self) {
        if let Some(listener) = &self.listener {
            listener.stop();
        }
    }
}

/// Settings for a [`PostgresBackend`]; setters never fail, [`build`](PostgresBuilder::build)
/// checks them.
///
/// ```
/// use dlock_runtime::PostgresBackend;
/// use std::time::Duration;
///
/// let backend = PostgresBackend::builder()
///     .url("postgres://app:secret@db1:5432/app?connect_timeout=3")
///     .table("ops.locks")
///     .pool_size(4)
///     .request_timeout(Duration::from_secs(5))
///     .build()?;
/// assert!(!format!("{backend:?}").contains("secret"), "Debug hides the password");
/// let err = PostgresBackend::builder().url("postgres://db1/app").table("locks; drop").build();
/// assert!(err.is_err(), "not an SQL identifier");
/// # Ok::<(), dlock_runtime::Error>(())
/// ```
#[derive(Clone)]
#[must_use = "call .build()"]
pub struct PostgresBuilder {
    url: String,
    table: Option<String>,
    pool_size: usize,
    connect_timeout: Option<Duration>,
    request_timeout: Duration,
    notifications: Option<bool>,
}

impl fmt::Debug for PostgresBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password.
        f.debug_struct("PostgresBuilder")
            .field("table", &self.table)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("notifications", &self.notifications)
            .finish_non_exhaustive()
    }
}

impl Default for PostgresBuilder {
    fn default() -> Self {
        PostgresBuilder {
            url: String::new(),
            table: None,
            pool_size: DEFAULT_POOL_SIZE,
            connect_timeout: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            notifications: None,
        }
    }
}

impl PostgresBuilder {
    /// The connection string (required): a URL `postgres://user:password@host:port/db?...`
    /// (dlock takes its own `table` and `listen` options out of it) or a libpq-style
    /// `host=... user=... dbname=...` string.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = url.into();
        self
    }

    /// The table (default `dlock_locks`), optionally with its schema: `locks` or
    /// `ops.locks`. Letters, digits and `_`; it is quoted, so case matters. Overrides the
    /// URL's `table` option.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = Some(table.into());
        self
    }

    /// The most connections the pool opens for lock statements (default 8); one more is
    /// opened for notifications once some caller waits.
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// How long connecting may take (default 5 s, or the URL's `connect_timeout`).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// How long a statement may go without an answer before it is abandoned and its
    /// connection closed (default 10 s). The runtime also bounds each call by its own deadline.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Whether waiters are woken by `LISTEN/NOTIFY` (default, also `?listen=true`) or poll
    /// (`false`, for poolers in transaction mode, where `LISTEN` does not work).
    pub fn notifications(mut self, on: bool) -> Self {
        self.notifications = Some(on);
        self
    }

    /// Checks the settings. Connects nothing: the first lock call does.
    pub fn build(self) -> Result<PostgresBackend, Error> {
        let config_error = |message: String| Error::Config {
            message: format!("postgres: {message}"),
        };
        if self.url.trim().is_empty() {
            return Err(config_error(
                "no connection URL; set it with `.url(..)`, a `postgres://user:password@host:5432/db?table=locks` \
                 URL or DLOCK_POSTGRES_URL"
                    .into(),
            ));
        }
        let options = split_dlock_options(&self.url)?;
        let mut config: Config = options.driver_url.parse().map_err(|e| {
            // The driver's message names the option, never the password.
            config_error(format!("the connection string cannot be parsed: {e}"))
        })?;
        if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
            return Err(config_error(
                "the connection string names no host; write it like `postgres://user:password@host:5432/db`"
                    .into(),
            ));
        }
        if config.get_ssl_mode() == SslMode::Require {
            return Err(config_error(
                "sslmode=require: this backend connects without TLS; use sslmode=disable or prefer, \
                 and reach a server that requires TLS through a local TLS tunnel"
                    .into(),
            ));
        }
        let table = Table::new(
            self.table
                .as_deref()
                .or(options.table.as_deref())
                .unwrap_or(DEFAULT_TABLE),
        )?;
        if self.pool_size == 0 {
            return Err(config_error("the pool size must be at least 1".into()));
        }
        if self.request_timeout.is_zero() {
            return Err(config_error(
                "the request timeout must be greater than zero".into(),
            ));
        }
        match self.connect_timeout {
            Some(timeout) if timeout.is_zero() => {
                return Err(config_error(
                    "the connect timeout must be greater than zero".into(),
                ));
            }
            Some(timeout) => {
                config.connect_timeout(timeout);
            }
            None if config.get_connect_timeout().is_none() => {
                config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
            }
            None => {}
        }
        if config.get_application_name().is_none() {
            config.application_name("dlock");
        }
        let connect_timeout = config
            .get_connect_timeout()
            .copied()
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let endpoint = endpoint(&config);
        let manager = Manager::from_connect(
            config.clone(),
            BackgroundConnect,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        // Connecting involves a few round trips after the TCP connect: bound them too.
        let create_timeout = connect_timeout.saturating_add(self.request_timeout);
        let pool = Pool::builder(manager)
            .max_size(self.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(self.request_timeout))
            .create_timeout(Some(create_timeout))
            .recycle_timeout(Some(self.request_timeout))
            .build()
            .map_err(|e| config_error(format!("cannot build the connection pool: {e}")))?;
        let notifications = self.notifications.or(options.listen).unwrap_or(true);
        let listener = notifications.then(|| {
            // Named apart from the pool's connections, for operators (pg_stat_activity).
            let mut config = config;
            let name = config.get_application_name().unwrap_or("dlock").to_string();
            config.application_name(format!("{name} (listener)"));
            Arc::new(Listener::new(Listen {
                config,
                channel: table.channel.clone(),
                connect_timeout: create_timeout,
                request_timeout: self.request_timeout,
            }))
        });
        Ok(PostgresBackend {
            pool,
            sql: Statements::new(&table),
            table,
            endpoint,
            request_timeout: self.request_timeout,
            listener,
        })
    }
}

/// dlock's options taken out of a connection URL.
struct DlockOptions {
    driver_url: String,
    table: Option<String>,
    listen: Option<bool>,
}

/// Takes `table` and `listen` out of a URL's query; a libpq `key=value` string is passed on
/// as it is.
fn split_dlock_options(url: &str) -> Result<DlockOptions, Error> {
    let mut options = DlockOptions {
        driver_url: url.to_string(),
        table: None,
        listen: None,
    };
    if !url.contains("://") {
        return Ok(options);
    }
    let Some((base, query)) = url.split_once('?') else {
        return Ok(options);
    };
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "table" => options.table = Some(value.to_string()),
            "listen" => {
                options.listen = Some(match value {
                    "true" | "1" | "on" | "" => true,
                    "false" | "0" | "off" => false,
                    other => {
                        return Err(Error::Config {
                            message: format!(
                                "postgres: `listen={other}` in the URL; write listen=true or listen=false"
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

/// `host:port/db as user`, for messages (never the password).
fn endpoint(config: &Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match host {
                Host::Tcp(name) => format!("{name}:{port}"),
                #[cfg(unix)]
                Host::Unix(path) => format!("{}/.s.PGSQL.{port}", path.display()),
            }
        })
        .collect();
    let hosts = if hosts.is_empty() {
        config
            .get_hostaddrs()
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",")
    } else {
        hosts.join(",")
    };
    format!(
        "{hosts}/{}",
        config
            .get_dbname()
            .or(config.get_user())
            .unwrap_or("postgres")
    )
}

/// The table's names, validated and quoted.
#[derive(Clone, Debug)]
struct Table {
    /// As configured, for messages: `locks` or `ops.locks`.
    shown: String,
    /// Quoted for SQL: `"ops"."locks"`.
    quoted: String,
    /// The fencing sequence, quoted.
    sequence: String,
    /// The sequence's name as written in messages.
    sequence_shown: String,
    /// The notification channel: the table's own name.
    channel: String,
}

impl Table {
    fn new(name: &str) -> Result<Table, Error> {
        let bad = |why: &str| Error::Config {
            message: format!(
                "postgres: `{name}` is not a table name dlock accepts: {why}. Use letters, digits \
                 and `_` (not first), optionally `schema.table`; it is quoted, so case matters"
            ),
        };
        let parts: Vec<&str> = name.split('.').collect();
        let (schema, table) = match parts.as_slice() {
            [table] => (None, *table),
            [schema, table] => (Some(*schema), *table),
            _ => return Err(bad("at most one `.`")),
        };
        for part in parts.iter() {
            let mut chars = part.chars();
            let first_ok = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
            if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(bad("each part must be an SQL identifier"));
            }
            if part.len() > MAX_IDENTIFIER {
                return Err(bad("a part is longer than 63 bytes"));
            }
        }
        if table.len() + SEQUENCE_SUFFIX.len() > MAX_IDENTIFIER {
            return Err(bad(
                "the table's name must leave room for `_fencing` (at most 55 bytes)",
            ));
        }
        let quote = |schema: Option<&str>, name: &str| match schema {
            Some(schema) => format!("\"{schema}\".\"{name}\""),
            None => format!("\"{name}\""),
        };
        let sequence_name = format!("{table}{SEQUENCE_SUFFIX}");
        Ok(Table {
            shown: name.to_string(),
            quoted: quote(schema, table),
            sequence: quote(schema, &sequence_name),
            sequence_shown: match schema {
                Some(schema) => format!("{schema}.{sequence_name}"),
                None => sequence_name.clone(),
            },
            channel: table.to_string(),
        })
    }

    fn ddl(&self) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {t} (\n    name          text COLLATE \"C\" PRIMARY KEY,\n    \
             owner         text,\n    host          text,\n    pid           bigint,\n    \
             version       text,\n    fencing_token bigint NOT NULL DEFAULT 0,\n    \
             ttl_ms        bigint,\n    acquired_at   timestamptz,\n    expires_at    timestamptz\n);\n\
             CREATE SEQUENCE IF NOT EXISTS {s};",
            t = self.quoted,
            s = self.sequence
        )
    }
}

/// The columns that describe a holder, in the order [`holder_at`] reads them.
const HOLDER_COLUMNS: &str =
    "owner, host, pid, version, fencing_token, ttl_ms, acquired_at, expires_at <= now()";

/// The SQL of every call, made once per backend (the table name is the only thing formatted
/// in; everything else is a bound parameter).
#[derive(Debug)]
struct Statements {
    acquire: String,
    renew: String,
    release: String,
    force_release: String,
    read: String,
    list: String,
}

impl Statements {
    fn new(table: &Table) -> Statements {
        let t = &table.quoted;
        // The sequence as a regclass literal: the quoted identifier inside single quotes (a
        // validated identifier holds no quote of either kind).
        let seq = format!("'{}'", table.sequence);
        let cleared = "owner = NULL, host = NULL, pid = NULL, version = NULL, ttl_ms = NULL, \
                       acquired_at = NULL, expires_at = NULL";
        Statements {
            // $1 name, $2 owner, $3 host, $4 pid, $5 new version, $6 ttl_ms, $7 the stale
            // version a takeover replaces (NULL for a plain attempt). The conflicting row is
            // locked before the WHERE is checked, and `nextval` in the SET runs under that
            // lock, so tokens increase in the order of acquisitions. When the update is
            // refused, the second branch reads the row (as of the statement's snapshot).
            acquire: format!(
                "WITH taken AS (\
                 INSERT INTO {t} AS l (name, owner, host, pid, version, fencing_token, ttl_ms, acquired_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, nextval({seq}), $6, now(), now() + $6 * interval '1 millisecond') \
                 ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, host = excluded.host, \
                 pid = excluded.pid, version = excluded.version, fencing_token = nextval({seq}), \
                 ttl_ms = excluded.ttl_ms, acquired_at = excluded.acquired_at, expires_at = excluded.expires_at \
                 WHERE l.owner IS NULL OR l.expires_at <= now() OR l.version = $7 \
                 RETURNING true, l.owner, l.host, l.pid, l.version, l.fencing_token, l.ttl_ms, l.acquired_at, false) \
                 SELECT * FROM taken \
                 UNION ALL \
                 SELECT false, {HOLDER_COLUMNS} FROM {t} WHERE name = $1 AND NOT EXISTS (SELECT 1 FROM taken)"
            ),
            // $1 name, $2 owner, $3 current version, $4 new version, $5 ttl_ms.
            renew: format!(
                "UPDATE {t} SET version = $4, ttl_ms = $5, expires_at = now() + $5 * interval '1 millisecond' \
                 WHERE name = $1 AND owner = $2 AND version = $3 RETURNING fencing_token"
            ),
            // $1 name, $2 owner, $3 version, $4 channel. The notification is sent on commit.
            release: format!(
                "WITH freed AS (UPDATE {t} SET {cleared} \
                 WHERE name = $1 AND owner = $2 AND version = $3 RETURNING name) \
                 SELECT pg_notify($4, name) FROM freed"
            ),
            // $1 name, $2 version, $3 channel.
            force_release: format!(
                "WITH freed AS (UPDATE {t} SET {cleared} \
                 WHERE name = $1 AND version = $2 AND owner IS NOT NULL RETURNING name) \
                 SELECT pg_notify($3, name) FROM freed"
            ),
            // $1 name.
            read: format!("SELECT {HOLDER_COLUMNS} FROM {t} WHERE name = $1"),
            // $1 prefix.
            list: format!(
                "SELECT name, {HOLDER_COLUMNS} FROM {t} \
                 WHERE owner IS NOT NULL AND expires_at > now() AND starts_with(name, $1) ORDER BY name"
            ),
        }
    }
}

/// A holder row as read: `None` when the lock is free (no row, or `owner` NULL).
struct Record {
    holder: Holder,
    /// The lease ran out by the server's clock: anyone may take it.
    expired: bool,
}

/// Reads the holder columns starting at column `at`.
fn holder_at(row: &Row, at: usize) -> Result<Option<Record>, Error> {
    let bad = |e: tokio_postgres::Error| {
        Error::permanent(
            KIND,
            format!(
                "a lock row has unexpected column types ({e}); the table must be created with \
                 dlock's DDL (see PostgresBackend::create_table)"
            ),
            Some(Box::new(e)),
        )
    };
    let Some(owner) = row.try_get::<_, Option<String>>(at).map_err(bad)? else {
        return Ok(None);
    };
    let host: Option<String> = row.try_get(at + 1).map_err(bad)?;
    let pid: Option<i64> = row.try_get(at + 2).map_err(bad)?;
    let version: Option<String> = row.try_get(at + 3).map_err(bad)?;
    let token: i64 = row.try_get(at + 4).map_err(bad)?;
    let ttl_ms: Option<i64> = row.try_get(at + 5).map_err(bad)?;
    let acquired_at: Option<SystemTime> = row.try_get(at + 6).map_err(bad)?;
    let expired: Option<bool> = row.try_get(at + 7).map_err(bad)?;
    Ok(Some(Record {
        holder: Holder {
            owner: Owner {
                id: owner,
                host: host.unwrap_or_default(),
                pid: pid.and_then(|p| u32::try_from(p).ok()).unwrap_or_default(),
            },
            version: Version::new(version.unwrap_or_default()),
            acquired_at,
            ttl: ttl_ms
                .and_then(|ms| u64::try_from(ms).ok())
                .map(Duration::from_millis),
            fencing_token: u64::try_from(token).ok(),
        },
        expired: expired.unwrap_or(true),
    }))
}

fn ttl_millis(ttl: Duration) -> i64 {
    i64::try_from(crate::time::millis(ttl))
        .unwrap_or(i64::MAX)
        .clamp(1, MAX_TTL_MS)
}

fn lost(name: &LockName) -> Error {
    Error::Lost {
        name: name.to_string(),
    }
}

/// What an acquiring statement answered.
enum Attempt {
    Acquired {
        version: Version,
        token: Option<u64>,
    },
    Busy(Holder),
    /// The row changed between the statement's snapshot and its write (a concurrent
    /// acquisition or release): read it again.
    Unclear,
}

impl PostgresBackend {
    /// Settings to fill in.
    pub fn builder() -> PostgresBuilder {
        PostgresBuilder::default()
    }

    /// Settings from the environment: `DLOCK_POSTGRES_URL` (which may carry `?table=`), and
    /// `DLOCK_POSTGRES_TABLE`.
    ///
    /// ```no_run
    /// // DLOCK_POSTGRES_URL=postgres://app:secret@db1:5432/app?table=locks
    /// let backend = dlock_runtime::PostgresBackend::from_env().build()?;
    /// # Ok::<(), dlock_runtime::Error>(())
    /// ```
    pub fn from_env() -> PostgresBuilder {
        let mut builder =
            PostgresBackend::builder().url(std::env::var("DLOCK_POSTGRES_URL").unwrap_or_default());
        if let Ok(table) = std::env::var("DLOCK_POSTGRES_TABLE") {
            builder = builder.table(table);
        }
        builder
    }

    /// `postgres://user:password@host:port/db?table=locks&listen=true&...`: dlock takes
    /// `table` and `listen`, tokio-postgres the rest.
    ///
    /// ```
    /// use dlock_runtime::{Backend, PostgresBackend};
    /// let backend = PostgresBackend::from_url("postgres://app:secret@db1/app?table=locks&connect_timeout=2")?;
    /// assert_eq!(backend.kind(), "postgres");
    /// assert!(backend.capabilities().notified_waiting);
    /// let polling = PostgresBackend::from_url("postgresql://app@db1/app?listen=false")?;
    /// assert!(!polling.capabilities().notified_waiting);
    /// # Ok::<(), dlock_runtime::Error>(())
    /// ```
    pub fn from_url(url: &str) -> Result<Self, Error> {
        PostgresBackend::builder().url(url).build()
    }

    /// The DDL of this backend's table and sequence (what
    /// [`create_table`](PostgresBackend::create_table) runs).
    ///
    /// ```
    /// let backend = dlock_runtime::PostgresBackend::from_url("postgres://db1/app?table=ops.locks")?;
    /// assert!(backend.ddl().contains("CREATE TABLE IF NOT EXISTS \"ops\".\"locks\""));
    /// assert!(backend.ddl().contains("CREATE SEQUENCE IF NOT EXISTS \"ops\".\"locks_fencing\""));
    /// # Ok::<(), dlock_runtime::Error>(())
    /// ```
    pub fn ddl(&self) -> String {
        self.table.ddl()
    }

    /// Creates the table and its fencing sequence if they do not exist (needs the `CREATE`
    /// privilege on the schema; the schema itself must exist). Safe to call from several
    /// processes at once, and again on an existing table.
    pub async fn create_table(&self) -> Result<(), Error> {
        let ddl = self.ddl();
        let mut raced = false;
        loop {
            let mut connection = self.connection().await?;
            let result = connection
                .run(self.request_timeout, |client| {
                    let ddl = ddl.clone();
                    async move { client.batch_execute(&ddl).await }
                })
                .await;
            match result {
                Ok(Ok(())) => return Ok(()),
                // Two `CREATE ... IF NOT EXISTS` at once can collide in the catalog: the other
                // one made it, and the second try sees it.
                Ok(Err(e))
                    if !raced
                        && e.code().is_some_and(|c| {
                            [
                                SqlState::UNIQUE_VIOLATION,
                                SqlState::DUPLICATE_TABLE,
                                SqlState::DUPLICATE_OBJECT,
                            ]
                            .contains(c)
                        }) =>
                {
                    raced = true;
                }
                Ok(Err(e)) => return Err(self.error("creating the table", e)),
                Err(e) => return Err(e),
            }
        }
    }

    /// A pooled connection, or an error that says why there is none.
    async fn connection(&self) -> Result<Checkout, Error> {
        match self.pool.get().await {
            Ok(object) => Ok(Checkout {
                object: Some(object),
                keep: false,
            }),
            Err(PoolError::Backend(e)) => Err(self.error("connecting", e)),
            Err(PoolError::Timeout(deadpool_postgres::TimeoutType::Wait)) => Err(Error::temporary(
                KIND,
                format!(
                    "all {} pooled connections to {} stayed busy for {}; raise pool_size or look \
                     for slow statements",
                    self.pool.status().max_size,
                    self.endpoint,
                    humantime::format_duration(self.request_timeout)
                ),
                None,
            )),
            Err(PoolError::Timeout(_)) => Err(Error::temporary(
                KIND,
                format!(
                    "cannot reach PostgreSQL at {}: no connection within the connect timeout; \
                     check the URL's host and port and that the server is up",
                    self.endpoint
                ),
                None,
            )),
            Err(e) => Err(Error::temporary(
                KIND,
                format!("cannot get a connection to {}: {e}", self.endpoint),
                None,
            )),
        }
    }

    /// Runs one statement on a pooled connection, bounded by the request timeout. Statements
    /// are prepared once per connection (the first use costs one more round trip), so the
    /// server does not parse and plan them on every call.
    async fn query(
        &self,
        doing: &str,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<Row>, Error> {
        let mut connection = self.connection().await?;
        let result = connection
            .run(self.request_timeout, |client| async move {
                let types: Vec<Type> = params.iter().map(|(_, t)| t.clone()).collect();
                let statement = client.prepare_typed_cached(sql, &types).await?;
                let values: Vec<&(dyn ToSql + Sync)> = params.iter().map(|(v, _)| *v).collect();
                client.query(&statement, &values).await
            })
            .await?;
        result.map_err(|e| self.error(doing, e))
    }

    /// A driver error as a dlock error: temporary when the server may answer later, permanent
    /// (with what to do) otherwise. Decided by SQLSTATE codes and error kinds, never by text.
    fn error(&self, doing: &str, e: tokio_postgres::Error) -> Error {
        let at = &self.endpoint;
        let (temporary, message) = match e.code() {
            Some(code) if code == &SqlState::UNDEFINED_TABLE => (
                false,
                format!(
                    "the table `{}` or its sequence `{}` does not exist in {at} ({}); create them \
                     once with `PostgresBackend::create_table()`, or run:\n{}",
                    self.table.shown,
                    self.table.sequence_shown,
                    db_message(&e),
                    self.ddl()
                ),
            ),
            Some(code) if code == &SqlState::INVALID_SCHEMA_NAME => (
                false,
                format!(
                    "the schema of table `{}` does not exist in {at} ({}); create it first",
                    self.table.shown,
                    db_message(&e)
                ),
            ),
            Some(code) if code == &SqlState::INSUFFICIENT_PRIVILEGE => (
                false,
                format!(
                    "permission denied while {doing} ({}): the user needs `GRANT SELECT, INSERT, \
                     UPDATE ON {} TO <user>; GRANT USAGE ON SEQUENCE {} TO <user>;`",
                    db_message(&e),
                    self.table.quoted,
                    self.table.sequence
                ),
            ),
            Some(code)
                if code == &SqlState::INVALID_PASSWORD
                    || code == &SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
            {
                (
                    false,
                    format!(
                        "PostgreSQL at {at} refused the credentials ({}); check the user and \
                         password in the URL (or DLOCK_POSTGRES_URL)",
                        db_message(&e)
                    ),
                )
            }
            Some(code) if code == &SqlState::INVALID_CATALOG_NAME => (
                false,
                format!(
                    "the database does not exist ({}); check the database in the URL",
                    db_message(&e)
                ),
            ),
            Some(code) if code == &SqlState::UNDEFINED_COLUMN => (
                false,
                format!(
                    "the table `{}` does not have dlock's columns ({}); it must be created with \
                     dlock's DDL:\n{}",
                    self.table.shown,
                    db_message(&e),
                    self.ddl()
                ),
            ),
            Some(code) if is_transient(code) => (
                true,
                format!(
                    "PostgreSQL at {at} could not answer while {doing} ({}); retrying",
                    db_message(&e)
                ),
            ),
            Some(_) => (false, format!("{doing} failed: {}", db_message(&e))),
            None if e.is_closed() || io_error(&e).is_some() => (
                true,
                format!(
                    "cannot reach PostgreSQL at {at} while {doing}: {}; check the URL's host and \
                     port and that the server is up",
                    io_error(&e).map_or_else(|| e.to_string(), |io| io.to_string())
                ),
            ),
            None => (
                false,
                format!("{doing} failed talking to PostgreSQL at {at}: {e}"),
            ),
        };
        Error::backend_failure(KIND, temporary, message, Some(Box::new(e)))
    }

    /// The row of `name` as it is now, expired or not.
    async fn read(&self, name: &LockName) -> Result<Option<Record>, Error> {
        let rows = self
            .query(
                "reading the lock row",
                &self.sql.read,
                &[(&name.as_str(), Type::TEXT)],
            )
            .await?;
        match rows.first() {
            Some(row) => holder_at(row, 0),
            None => Ok(None),
        }
    }

    /// One acquiring statement.
    async fn attempt(
        &self,
        request: &AcquireRequest,
        replace: Option<&Version>,
    ) -> Result<Attempt, Error> {
        let version = crate::backend::random_id();
        let pid = i64::from(request.owner.pid);
        let ttl = ttl_millis(request.ttl);
        let replace = replace.map(Version::as_str);
        let rows = self
            .query(
                "acquiring",
                &self.sql.acquire,
                &[
                    (&request.name.as_str(), Type::TEXT),
                    (&request.owner.id, Type::TEXT),
                    (&request.owner.host, Type::TEXT),
                    (&pid, Type::INT8),
                    (&version, Type::TEXT),
                    (&ttl, Type::INT8),
                    (&replace, Type::TEXT),
                ],
            )
            .await?;
        let Some(row) = rows.first() else {
            return Ok(Attempt::Unclear);
        };
        let taken: bool = row.try_get(0).unwrap_or(false);
        let record = holder_at(row, 1)?;
        Ok(match record {
            Some(r) if taken || r.holder.owner.id == request.owner.id => Attempt::Acquired {
                version: r.holder.version,
                token: r.holder.fencing_token,
            },
            Some(r) if !r.expired => Attempt::Busy(r.holder),
            // Free or expired in the snapshot, yet the write was refused.
            _ => Attempt::Unclear,
        })
    }

    /// Starts the listening connection (once), so a waiter's first wait finds it running.
    fn listen(&self) {
        if let Some(listener) = &self.listener {
            listener.start();
        }
    }
}

/// The server's message and code.
fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// The I/O error under a driver error, if any.
fn io_error(e: &tokio_postgres::Error) -> Option<&std::io::Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        source = s.source();
    }
    None
}

/// Codes that may go away by trying again: connection trouble, a server starting or
/// stopping, a failover (read-only), too many connections, serialization failures and
/// deadlocks, lock or statement timeouts.
fn is_transient(code: &SqlState) -> bool {
    let class = code.code().get(..2).unwrap_or_default();
    matches!(class, "08" | "40" | "53" | "57" | "58")
        || code == &SqlState::READ_ONLY_SQL_TRANSACTION
        || code == &SqlState::LOCK_NOT_AVAILABLE
}

/// A pooled connection in use. Unless a statement on it finished (or failed with the server's
/// answer), it is closed instead of going back to the pool: a statement abandoned mid-flight
/// (timed out, or its caller cancelled) would leave its answer, or a silent server, in front of
/// the next statement on that connection.
struct Checkout {
    object: Option<Object>,
    keep: bool,
}

impl Checkout {
    /// Runs `f` with the client, bounded by `timeout`; the outer error is "no answer".
    async fn run<'a, T, F, Fut>(
        &'a mut self,
        timeout: Duration,
        f: F,
    ) -> Result<Result<T, tokio_postgres::Error>, Error>
    where
        F: FnOnce(&'a deadpool_postgres::ClientWrapper) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>> + 'a,
    {
        let Some(object) = self.object.as_ref() else {
            return Err(Error::temporary(KIND, "no connection", None));
        };
        let client: &deadpool_postgres::ClientWrapper = object;
        match tokio::time::timeout(timeout, f(client)).await {
            Ok(result) => {
                // An error the server sent leaves the connection usable; anything else
                // (I/O, a closed connection) does not.
                self.keep = match &result {
                    Ok(_) => true,
                    Err(e) => e.as_db_error().is_some() && !e.is_closed(),
                };
                Ok(result)
            }
            Err(_) => Err(Error::temporary(
                KIND,
                format!(
                    "no answer from PostgreSQL within {}; the statement was abandoned and its \
                     connection closed (a write may still have landed: dlock reads the row back \
                     before deciding)",
                    humantime::format_duration(timeout)
                ),
                None,
            )),
        }
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if !self.keep
            && let Some(object) = self.object.take()
        {
            // Out of the pool; dropping the client closes the connection.
            drop(Object::take(object));
        }
    }
}

/// Opens pool connections on dlock's background runtime, so their I/O never depends on a
/// caller's runtime (which a locked body may block, or which may end).
struct BackgroundConnect;

type ConnectFuture<'a> = Pin<
    Box<
        dyn Future<Output = Result<(tokio_postgres::Client, JoinHandle<()>), tokio_postgres::Error>>
            + Send
            + 'a,
    >,
>;

impl deadpool_postgres::Connect for BackgroundConnect {
    fn connect(&self, pg_config: &Config) -> ConnectFuture<'_> {
        let config = pg_config.clone();
        Box::pin(async move {
            match Background::default().spawn(connect_here(config.clone())) {
                Ok(task) => match task.await {
                    Ok(result) => result,
                    Err(e) => {
                        // The background runtime is shutting down: connect on the caller's.
                        tracing::debug!(error = %e, "connecting to PostgreSQL on the caller's runtime");
                        connect_here(config).await
                    }
                },
                Err(_) => connect_here(config).await,
            }
        })
    }
}

/// Connects, and drives the connection on the current runtime.
async fn connect_here(
    config: Config,
) -> Result<(tokio_postgres::Client, JoinHandle<()>), tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    let driver = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "a pooled PostgreSQL connection ended");
        }
    });
    Ok((client, driver))
}

/// The PostgreSQL half of the backend's [`Listener`]: a connection of its own that `LISTEN`s
/// on the table's channel.
struct Listen {
    config: Config,
    channel: String,
    connect_timeout: Duration,
    request_timeout: Duration,
}

impl notify::Server for Listen {
    const START_FAILED: &'static str =
        "cannot start listening for PostgreSQL notifications; waiters poll";
    const LOST: &'static str =
        "lost the PostgreSQL connection that listens for releases; reconnecting";
    const FAILING: &'static str =
        "cannot listen for PostgreSQL notifications; waiters poll until it works";

    /// One listening connection, until it fails.
    async fn session(&self, heard: &Heard) -> Result<(), String> {
        let (client, mut connection) = within(
            self.connect_timeout,
            self.config.connect(NoTls),
            "no connection within the connect timeout",
        )
        .await?;
        let drive = async {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(n))) => {
                        if n.channel() == self.channel {
                            heard.released(n.payload());
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err("the server closed the connection".to_string()),
                }
            }
        };
        let talk = async {
            let listen = format!("LISTEN \"{}\"", self.channel);
            let listening = client.batch_execute(&listen);
            within(self.request_timeout, listening, "no answer to LISTEN").await?;
            heard.connected();
            keep_alive(self.request_timeout, || client.batch_execute("SELECT 1")).await
        };
        tokio::select! {
            result = drive => result,
            result = talk => result,
        }
    }
}

#[async_trait::async_trait]
impl Backend for PostgresBackend {
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
        let lease = |version, fencing_token| {
            AcquireOutcome::Acquired(Lease {
                name: request.name.clone(),
                owner: request.owner.clone(),
                version,
                ttl: request.ttl,
                fencing_token,
                acquired_at,
            })
        };
        let mut replace = request.replace.as_ref();
        for _ in 0..2 {
            match self.attempt(request, replace).await? {
                Attempt::Acquired { version, token } => return Ok(lease(version, token)),
                Attempt::Busy(holder) => {
                    self.listen();
                    return Ok(AcquireOutcome::Busy(holder));
                }
                // The statement's snapshot was older than the row it met: read it now.
                Attempt::Unclear => match self.read(&request.name).await? {
                    Some(r) if r.holder.owner.id == request.owner.id => {
                        return Ok(lease(r.holder.version, r.holder.fencing_token));
                    }
                    Some(r) if !r.expired => {
                        self.listen();
                        return Ok(AcquireOutcome::Busy(r.holder));
                    }
                    // Free now: one more attempt, as for a free lock.
                    _ => replace = None,
                },
            }
        }
        Err(Error::temporary(
            KIND,
            "the lock row changed while it was written; retrying",
            None,
        ))
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, Error> {
        let version = crate::backend::random_id();
        let ttl_ms = ttl_millis(ttl);
        let rows = self
            .query(
                "renewing",
                &self.sql.renew,
                &[
                    (&lease.name.as_str(), Type::TEXT),
                    (&lease.owner.id, Type::TEXT),
                    (&lease.version.as_str(), Type::TEXT),
                    (&version, Type::TEXT),
                    (&ttl_ms, Type::INT8),
                ],
            )
            .await?;
        if !rows.is_empty() {
            return Ok(Lease {
                version: Version::new(version),
                ttl,
                ..lease.clone()
            });
        }
        // Refused: a renewal of ours whose answer was lost may have moved the row on.
        match self.read(&lease.name).await? {
            Some(r) if r.holder.owner.id == lease.owner.id => Ok(Lease {
                version: r.holder.version,
                ttl,
                ..lease.clone()
            }),
            _ => Err(lost(&lease.name)),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<(), Error> {
        let mut version = lease.version.clone();
        for _ in 0..2 {
            let rows = self
                .query(
                    "releasing",
                    &self.sql.release,
                    &[
                        (&lease.name.as_str(), Type::TEXT),
                        (&lease.owner.id, Type::TEXT),
                        (&version.as_str(), Type::TEXT),
                        (&self.table.channel, Type::TEXT),
                    ],
                )
                .await?;
            if !rows.is_empty() {
                return Ok(());
            }
            match self.read(&lease.name).await? {
                // Free already (a retry of our own release).
                None => return Ok(()),
                // Ours at another version: a renewal whose answer was lost.
                Some(r) if r.holder.owner.id == lease.owner.id => version = r.holder.version,
                Some(_) => return Err(lost(&lease.name)),
            }
        }
        Err(lost(&lease.name))
    }

    async fn inspect(&self, name: &LockName) -> Result<Option<Holder>, Error> {
        // A lease that ran out by the server's clock is free: the next attempt takes it.
        Ok(self
            .read(name)
            .await?
            .filter(|r| !r.expired)
            .map(|r| r.holder))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(LockName, Holder)>, Error> {
        let rows = self
            .query("listing", &self.sql.list, &[(&prefix, Type::TEXT)])
            .await?;
        let mut held = Vec::with_capacity(rows.len());
        for row in &rows {
            let name: String = row.try_get(0).map_err(|e| {
                Error::permanent(KIND, format!("reading a lock name: {e}"), Some(Box::new(e)))
            })?;
            if let (Ok(name), Some(record)) = (LockName::new(name), holder_at(row, 1)?) {
                held.push((name, record.holder));
            }
        }
        held.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(held)
    }

    async fn force_release(&self, name: &LockName, version: &Version) -> Result<(), Error> {
        let rows = self
            .query(
                "force-releasing",
                &self.sql.force_release,
                &[
                    (&name.as_str(), Type::TEXT),
                    (&version.as_str(), Type::TEXT),
                    (&self.table.channel, Type::TEXT),
                ],
            )
            .await?;
        if !rows.is_empty() {
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
            "If its holder is gone, the lock is free once its lease runs out by the server's clock \
             (the row's expires_at in table `{}`); to free it now, run `dlock release --force \
             '{name}' --if-version {version}`",
            self.table.shown
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_identifiers() {
        let t = Table::new("ops.locks").expect("valid");
        assert_eq!(t.quoted, "\"ops\".\"locks\"");
        assert_eq!(t.sequence, "\"ops\".\"locks_fencing\"");
        assert_eq!(t.channel, "locks");
        for bad in [
            "",
            "1locks",
            "locks; DROP TABLE x",
            "a.b.c",
            "lo\"cks",
            "lo'cks",
            "lö",
            &"x".repeat(56),
        ] {
            assert!(Table::new(bad).is_err(), "{bad:?}");
        }
        assert!(Table::new(&"x".repeat(55)).is_ok());
    }

    #[test]
    fn dlock_options_are_taken_out_of_the_url() {
        let o =
            split_dlock_options("postgres://u:p@h:5/db?sslmode=disable&table=locks&listen=false")
                .expect("valid");
        assert_eq!(o.driver_url, "postgres://u:p@h:5/db?sslmode=disable");
        assert_eq!(o.table.as_deref(), Some("locks"));
        assert_eq!(o.listen, Some(false));
        let o = split_dlock_options("host=h user=u").expect("key=value");
        assert_eq!(o.driver_url, "host=h user=u");
        assert!(split_dlock_options("postgres://h/db?listen=maybe").is_err());
    }

    #[test]
    fn statements_bind_every_name() {
        let s = Statements::new(&Table::new("locks").expect("valid"));
        for sql in [
            &s.acquire,
            &s.renew,
            &s.release,
            &s.force_release,
            &s.read,
            &s.list,
        ] {
            assert!(sql.contains("\"locks\""), "{sql}");
        }
        assert!(s.acquire.contains("nextval('\"locks_fencing\"')"));
        assert!(s.release.contains("pg_notify($4, name)"));
    }

    #[test]
    fn leases_are_clamped_for_the_server() {
        assert_eq!(ttl_millis(Duration::MAX), MAX_TTL_MS);
        assert_eq!(ttl_millis(Duration::ZERO), 1);
        assert_eq!(ttl_millis(Duration::from_secs(3)), 3000);
    }
}
