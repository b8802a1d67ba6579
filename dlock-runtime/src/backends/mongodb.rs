//! MongoDB: one document per lock name (`_id` = the name), written with conditional updates.
//!
//! Acquire is one `findOneAndUpdate` with upsert on `_id` whose update (an aggregation
//! pipeline, MongoDB 4.2+) takes the record only if it is free (released) or — for a takeover —
//! still has the version a waiter saw unchanged for a whole lease, and leaves it as it is
//! otherwise. The answer is the record after the update: ours, or the holder's, so a refused
//! attempt needs no second request to learn who holds the lock. Two first attempts on a name
//! that has no record yet race on the upsert's insert: the loser gets a duplicate key (11000)
//! and reads the holder. Taking the lock adds one to a fencing counter that release keeps.
//! Times are the server's (`$$NOW`, `$currentDate`), never a client clock, and no decision
//! depends on them. An optional TTL index removes records unused for a long time; correctness
//! never relies on it (a removed record restarts its fencing tokens, so keep it long).

use super::protocol::{Condition, ConditionalStore, Write};
use crate::backend::{Capabilities, Holder, Lease, Owner, Version};
use crate::{Error, LockName};
use mongodb::bson::{Bson, Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{
    Acknowledgment, ClientOptions, CollectionOptions, IndexOptions, ReadConcern, ReturnDocument,
    UpdateModifications, WriteConcern,
};
use mongodb::{Client, Collection, IndexModel};
use std::fmt;
use std::time::Duration;
use tokio::sync::OnceCell;

const KIND: &str = "mongodb";
/// The collection used when none is configured.
pub(crate) const DEFAULT_COLLECTION: &str = "dlock_locks";
const DUPLICATE_KEY: i32 = 11000;
/// The shortest `gc_after`: an hour.
const MIN_GC_AFTER: Duration = Duration::from_secs(3600);
/// MongoDB's TTL monitor runs about once a minute, so it can remove a record up to a minute
/// late, never early; a held record is rewritten every third of its ttl.
const TTL_MONITOR_PERIOD: Duration = Duration::from_secs(60);

/// Locks as documents of a MongoDB collection (MongoDB 4.2 or later: an attempt is one update
/// with an aggregation pipeline, whose answer names the holder when the lock is taken).
///
/// Configure with [`MongoBackend::builder`], [`MongoBackend::from_env`] (`DLOCK_MONGODB_URI`)
/// or the URL `mongodb://host:port/db?collection=locks` (any MongoDB connection string; the
/// `collection` option is dlock's, the rest goes to the driver). The database is the one the
/// URI names (default `dlock`). Unless the URI says otherwise, a server that cannot be reached
/// fails after 5 s instead of the driver's 30.
///
/// Privileges needed: `find` and `update` on the collection (`createIndex` for
/// [`gc_after`](MongoBuilder::gc_after)).
///
/// ```no_run
/// use dlock_runtime::{MongoBackend, Registry};
///
/// let mongo = MongoBackend::builder()
///     .uri("mongodb://127.0.0.1:27017/app?directConnection=true")
///     .collection("locks")
///     .build()?;
/// Registry::builder().backend("mongodb", mongo).build()?.install().expect("once");
/// # Ok::<(), dlock_runtime::Error>(())
/// ```
pub struct MongoBackend {
    settings: MongoBuilder,
    collection: OnceCell<Collection<Document>>,
}

impl fmt::Debug for MongoBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MongoBackend")
            .field("collection", &self.settings.collection)
            .finish_non_exhaustive()
    }
}

/// Settings for a [`MongoBackend`]; setters never fail, [`build`](MongoBuilder::build) checks.
///
/// ```
/// use dlock_runtime::MongoBackend;
/// use std::time::Duration;
///
/// let backend = MongoBackend::builder()
///     .uri("mongodb://db1:27017/app")
///     .collection("locks")
///     .gc_after(Duration::from_secs(7 * 24 * 3600))
///     .build()?;
/// assert!(MongoBackend::builder().uri("db1:27017").build().is_err(), "a mongodb:// URI");
/// # drop(backend);
/// # Ok::<(), dlock_runtime::Error>(())
/// ```
#[derive(Clone)]
#[must_use = "call .build()"]
pub struct MongoBuilder {
    uri: String,
    collection: String,
    gc_after: Option<Duration>,
}

impl fmt::Debug for MongoBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URI may carry a password.
        f.debug_struct("MongoBuilder")
            .field("collection", &self.collection)
            .field("gc_after", &self.gc_after)
            .finish_non_exhaustive()
    }
}

impl Default for MongoBuilder {
    fn default() -> Self {
        MongoBuilder {
            uri: String::new(),
            collection: DEFAULT_COLLECTION.to_string(),
            gc_after: None,
        }
    }
}

impl MongoBuilder {
    /// The connection string (required).
    pub fn uri(mut self, uri: impl Into<String>) -> Self {
        self.uri = uri.into();
        self
    }

    /// The collection (default `dlock_locks`).
    pub fn collection(mut self, collection: impl Into<String>) -> Self {
        self.collection = collection.into();
        self
    }

    /// Creates a TTL index that deletes records not written for `after` (for lock names that
    /// are made up and never used again, such as per-day names). Keep it far longer than any
    /// lease: a deleted record restarts its fencing tokens.
    pub fn gc_after(mut self, after: Duration) -> Self {
        self.gc_after = Some(after);
        self
    }

    /// Checks the settings.
    pub fn build(self) -> Result<MongoBackend, Error> {
        if !(self.uri.starts_with("mongodb://") || self.uri.starts_with("mongodb+srv://")) {
            return Err(Error::Config {
                message: "mongodb: the URI must start with mongodb:// or mongodb+srv://; set it with `.uri(..)`, \
                          a `mongodb://host/db?collection=locks` URL or DLOCK_MONGODB_URI"
                    .into(),
            });
        }
        if let Some(after) = self.gc_after
            && after < MIN_GC_AFTER
        {
            return Err(Error::Config {
                message: format!(
                    "mongodb: gc_after is {}, shorter than the smallest allowed ({}): the \
                     server's TTL monitor deletes records not written for that long, and a \
                     deleted record restarts its fencing tokens; use days, not minutes",
                    humantime::format_duration(after),
                    humantime::format_duration(MIN_GC_AFTER)
                ),
            });
        }
        if self.collection.is_empty() || self.collection.contains('$') {
            return Err(Error::Config {
                message: format!("mongodb: `{}` is not a collection name", self.collection),
            });
        }
        Ok(MongoBackend {
            settings: self,
            collection: OnceCell::new(),
        })
    }
}

impl MongoBackend {
    /// Settings to fill in.
    pub fn builder() -> MongoBuilder {
        MongoBuilder::default()
    }

    /// Settings from the environment: `DLOCK_MONGODB_URI`, and `DLOCK_MONGODB_COLLECTION`.
    pub fn from_env() -> MongoBuilder {
        let mut builder =
            MongoBackend::builder().uri(std::env::var("DLOCK_MONGODB_URI").unwrap_or_default());
        if let Ok(collection) = std::env::var("DLOCK_MONGODB_COLLECTION") {
            builder = builder.collection(collection);
        }
        builder
    }

    /// `mongodb://host:port/db?collection=locks&...`: dlock takes `collection`, the driver
    /// the rest.
    pub fn from_url(url: &str) -> Result<Self, Error> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut collection = None;
        let rest: Vec<&str> = query
            .split('&')
            .filter(|kv| match kv.strip_prefix("collection=") {
                Some(name) => {
                    collection = Some(name.to_string());
                    false
                }
                None => !kv.is_empty(),
            })
            .collect();
        let uri = if rest.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        let mut builder = MongoBackend::builder().uri(uri);
        if let Some(collection) = collection {
            builder = builder.collection(collection);
        }
        builder.build()
    }

    async fn collection(&self) -> Result<&Collection<Document>, Error> {
        self.collection.get_or_try_init(|| self.connect()).await
    }

    async fn connect(&self) -> Result<Collection<Document>, Error> {
        let mut options = ClientOptions::parse(&self.settings.uri)
            .await
            .map_err(|e| {
                Error::permanent(KIND, format!("invalid MongoDB URI: {e}"), Some(Box::new(e)))
            })?;
        options
            .server_selection_timeout
            .get_or_insert(Duration::from_secs(5));
        options
            .connect_timeout
            .get_or_insert(Duration::from_secs(5));
        options.app_name.get_or_insert_with(|| "dlock".to_string());
        let database = options
            .default_database
            .clone()
            .unwrap_or_else(|| "dlock".to_string());
        let client = Client::with_options(options).map_err(|e| self.error("connecting", e))?;
        // Majority writes and reads: an acquisition a failover could roll back is no lock.
        let durable = CollectionOptions::builder()
            .write_concern(
                WriteConcern::builder()
                    .w(Acknowledgment::Majority)
                    .journal(true)
                    .build(),
            )
            .read_concern(ReadConcern::majority())
            .build();
        let collection = client
            .database(&database)
            .collection_with_options::<Document>(&self.settings.collection, durable);
        if let Some(after) = self.settings.gc_after {
            let index = IndexModel::builder()
                .keys(doc! { "seen_at": 1 })
                .options(
                    IndexOptions::builder()
                        .expire_after(after)
                        .name("dlock_gc".to_string())
                        .build(),
                )
                .build();
            collection
                .create_index(index)
                .await
                .map_err(|e| self.error("creating the TTL index", e))?;
        }
        Ok(collection)
    }

    fn error(&self, doing: &str, e: mongodb::error::Error) -> Error {
        let code = error_code(&e);
        let (temporary, message) = match &*e.kind {
            ErrorKind::ServerSelection { .. }
            | ErrorKind::Io(_)
            | ErrorKind::ConnectionPoolCleared { .. } => (
                true,
                format!(
                    "cannot reach MongoDB while {doing}: {e}; check the URI's hosts and the network"
                ),
            ),
            ErrorKind::Authentication { .. } => (
                false,
                format!("MongoDB refused the credentials while {doing}: {e}"),
            ),
            _ if code == Some(13) => (
                false,
                format!(
                    "not authorized while {doing} on collection `{}`: the user needs find and update on it: {e}",
                    self.settings.collection
                ),
            ),
            _ if e.contains_label("RetryableWriteError")
                || e.contains_label("TransientTransactionError") =>
            {
                (true, format!("{doing}: {e}"))
            }
            _ => (false, format!("{doing}: {e}")),
        };
        Error::backend_failure(KIND, temporary, message, Some(Box::new(e)))
    }
}

/// The server's error code, for command and write errors.
fn error_code(e: &mongodb::error::Error) -> Option<i32> {
    match &*e.kind {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        _ => None,
    }
}

/// The holder a document names, `None` for a free (absent or released) lock.
fn holder(document: Option<&Document>) -> Option<Holder> {
    let d = document?;
    let number = |k: &str| match d.get(k) {
        Some(Bson::Int64(n)) => u64::try_from(*n).ok(),
        Some(Bson::Int32(n)) => u64::try_from(*n).ok(),
        _ => None,
    };
    Some(Holder {
        owner: Owner {
            id: d.get_str("owner").ok()?.to_string(),
            host: d.get_str("host").unwrap_or_default().to_string(),
            pid: number("pid")
                .and_then(|p| u32::try_from(p).ok())
                .unwrap_or_default(),
        },
        version: Version::new(d.get_str("record_version").unwrap_or_default()),
        acquired_at: d
            .get_datetime("acquired_at")
            .ok()
            .and_then(|t| u64::try_from(t.timestamp_millis()).ok())
            .map(crate::time::from_unix_millis),
        ttl: number("ttl_ms").map(Duration::from_millis),
        fencing_token: number("fencing_token"),
    })
}

/// The update (an aggregation pipeline, MongoDB 4.2+) that takes the lock named by `_id` if it
/// is free — or, for a takeover, still has the `stale` version — and otherwise leaves the record
/// as it is. Either way the answer is the record after the update: ours (`version`), or the
/// holder's, so a refused attempt costs one request. The fencing counter goes up only when the
/// lock is taken; times are the server's (`$$NOW`). Every client value is a `$literal`, never
/// read as a field path or an operator.
fn take(lease: &Lease, version: &str, stale: Option<&str>) -> Vec<Document> {
    let free = doc! { "$eq": [{ "$ifNull": ["$owner", null] }, null] };
    let wins = match stale {
        Some(stale) => {
            doc! { "$or": [free, { "$eq": ["$record_version", { "$literal": stale }] }] }
        }
        None => free,
    };
    let if_won = |value: Bson, field: &str| -> Bson {
        doc! { "$cond": ["$_won", value, format!("${field}")] }.into()
    };
    let literal = |value: Bson| -> Bson { doc! { "$literal": value }.into() };
    let mut set = Document::new();
    for (field, value) in [
        ("owner", literal(lease.owner.id.clone().into())),
        ("host", literal(lease.owner.host.clone().into())),
        ("pid", literal(i64::from(lease.owner.pid).into())),
        ("ttl_ms", literal(millis(lease.ttl).into())),
        ("record_version", literal(version.into())),
        (
            "fencing_token",
            doc! { "$add": [{ "$ifNull": ["$fencing_token", 0_i64] }, 1_i64] }.into(),
        ),
        ("acquired_at", "$$NOW".into()),
        ("seen_at", "$$NOW".into()),
    ] {
        set.insert(field, if_won(value, field));
    }
    vec![
        doc! { "$set": { "_won": wins } },
        doc! {
            "$set": set
        },
        doc! { "$unset": "_won" },
    ]
}

fn millis(d: Duration) -> i64 {
    i64::try_from(crate::time::millis(d)).unwrap_or(i64::MAX)
}

#[async_trait::async_trait]
impl ConditionalStore for MongoBackend {
    const KIND: &'static str = KIND;

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            leases: true,
            fencing_tokens: true,
            // A refused write does not say who holds the lock (it would cost a read too):
            // waiters read, and write only when the lock looks free or stale.
            poll_with_reads: true,
            ..Capabilities::default()
        }
    }

    fn location(&self, name: &LockName) -> String {
        format!(
            "the document {{_id: {name:?}}} of collection `{}`",
            self.settings.collection
        )
    }

    async fn write(&self, lease: &Lease, condition: Condition<'_>) -> Result<Write, Error> {
        if let Some(after) = self.settings.gc_after {
            // A held record is rewritten every third of its ttl; the TTL index must never
            // delete it in between.
            if lease.ttl.saturating_add(TTL_MONITOR_PERIOD) >= after {
                return Err(Error::Config {
                    message: format!(
                        "mongodb: the lease of `{}` ({}) is too long for gc_after ({}): the TTL \
                         index could delete a held lock's record; make gc_after longer than any \
                         ttl plus a minute",
                        lease.name,
                        humantime::format_duration(lease.ttl),
                        humantime::format_duration(after)
                    ),
                });
            }
        }
        let collection = self.collection().await?;
        let version = crate::backend::random_id();
        let name = lease.name.as_str();
        let (filter, update, upsert) = match condition {
            Condition::Free | Condition::Replace(_) => {
                let stale = match condition {
                    Condition::Replace(stale) => Some(stale.as_str()),
                    _ => None,
                };
                let update = take(lease, &version, stale);
                (
                    doc! { "_id": name },
                    UpdateModifications::Pipeline(update),
                    true,
                )
            }
            Condition::Renew(current) => (
                doc! { "_id": name, "owner": &lease.owner.id, "record_version": current.as_str() },
                UpdateModifications::Document(doc! {
                    "$set": { "ttl_ms": millis(lease.ttl), "record_version": &version },
                    "$currentDate": { "seen_at": true },
                }),
                false,
            ),
        };
        let result = collection
            .find_one_and_update(filter, update)
            .upsert(upsert)
            .return_document(ReturnDocument::After)
            .await;
        match result {
            Ok(Some(document))
                if document.get_str("record_version").ok() == Some(version.as_str()) =>
            {
                Ok(Write::Done {
                    version: Version::new(version),
                    fencing_token: holder(Some(&document)).and_then(|h| h.fencing_token),
                })
            }
            // The record names another holder (or, after a lost answer, an earlier attempt
            // of ours): the refusal carries it, no read needed.
            Ok(Some(document)) => Ok(Write::Refused(holder(Some(&document)))),
            // A renewal that matched nothing, or the upsert's insert met a record created
            // meanwhile (a duplicate key; some servers answer no document instead).
            Ok(None) => Ok(Write::Refused(None)),
            Err(e) if error_code(&e) == Some(DUPLICATE_KEY) => Ok(Write::Refused(None)),
            Err(e) => Err(self.error("writing the lock record", e)),
        }
    }

    async fn read(&self, name: &LockName) -> Result<Option<Holder>, Error> {
        let collection = self.collection().await?;
        let document = collection
            .find_one(doc! { "_id": name.as_str() })
            .await
            .map_err(|e| self.error("reading the lock record", e))?;
        Ok(holder(document.as_ref()))
    }

    async fn delete(
        &self,
        name: &LockName,
        version: &Version,
        owner: Option<&Owner>,
    ) -> Result<bool, Error> {
        let collection = self.collection().await?;
        let mut filter = doc! { "_id": name.as_str(), "record_version": version.as_str() };
        if let Some(owner) = owner {
            filter.insert("owner", owner.id.as_str());
        }
        // Keep the document and its fencing counter: tokens go on increasing after release.
        let update = doc! {
            "$unset": { "owner": "", "host": "", "pid": "", "ttl_ms": "", "record_version": "", "acquired_at": "" },
            "$currentDate": { "seen_at": true },
        };
        let result = collection
            .update_one(filter, update)
            .await
            .map_err(|e| self.error("releasing the lock record", e))?;
        if result.matched_count == 1 {
            return Ok(true);
        }
        // Free already (a retry of our own release): fine. Someone else's: no.
        Ok(self.read(name).await?.is_none())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(LockName, Holder)>, Error> {
        let collection = self.collection().await?;
        // `_id` order from the prefix on: the first name without the prefix ends the list.
        let mut cursor = collection
            .find(doc! { "_id": { "$gte": prefix }, "owner": { "$type": "string" } })
            .sort(doc! { "_id": 1 })
            .await
            .map_err(|e| self.error("listing the lock records", e))?;
        let mut held = Vec::new();
        while cursor
            .advance()
            .await
            .map_err(|e| self.error("listing the lock records", e))?
        {
            let document = cursor
                .deserialize_current()
                .map_err(|e| self.error("listing the lock records", e))?;
            let Ok(id) = document.get_str("_id") else {
                continue;
            };
            if !id.starts_with(prefix) {
                break;
            }
            if let (Ok(name), Some(holder)) = (LockName::new(id), holder(Some(&document))) {
                held.push((name, holder));
            }
        }
        Ok(held)
    }
}
