//! What a lock costs over the calls it must make: an acquire/release cycle through dlock
//! against the raw operations underneath (the file backend's open + flock + record write +
//! unlock, the memory backend's two map operations). Prints a table of mean times and ratios.
//!
//! ```text
//! cargo run --release -p dlock-examples --bin bench
//! ```
//!
//! With `--all-features` and the stand-ins' variables set (see tests/stand-ins/start.sh), it
//! also compares a lock cycle on S3, GCS, DynamoDB and MongoDB with the bare conditional
//! writes that take and free a lock, made through the same client library.

use dlock_runtime::distributed_lock;
use dlock_runtime::{
    AcquireOutcome, AcquireRequest, Backend, FileBackend, Lock, LockName, MemoryBackend, Owner,
    Registry,
};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error(transparent)]
    Lock(#[from] dlock_runtime::Error),
}

#[distributed_lock(name = "bench-macro-async", backend = "bench")]
async fn locked_async() -> Result<(), BenchError> {
    Ok(())
}

#[distributed_lock(name = "bench-macro-sync", backend = "bench")]
fn locked_sync() -> Result<(), BenchError> {
    Ok(())
}

/// Mean time per iteration of `f`, after a warm-up.
async fn mean<F, Fut>(iterations: u32, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..iterations / 10 {
        f().await;
    }
    let start = Instant::now();
    for _ in 0..iterations {
        f().await;
    }
    start.elapsed() / iterations
}

fn row(what: &str, time: Duration, baseline: Duration) {
    println!(
        "| {what:<62} | {:>9.2} | {:>5.2}x |",
        time.as_nanos() as f64 / 1000.0,
        time.as_nanos() as f64 / baseline.as_nanos().max(1) as f64
    );
}

/// The calls the file backend makes for one cycle, made directly: open (no follow), fstat
/// (the link-count check), flock, stat of the path (the file is still the one there), the
/// directory's fencing counter (flock, read, write, unlock), write the holder record; then
/// unlink the file while holding it, unlock and close. Not included: the `fcntl` calls of
/// first-come-first-served waiting and of the held mark (no libc in this example).
fn raw_file_cycle(path: &std::path::Path, counter: &File) {
    let file: File = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc_o_nofollow())
        .open(path)
        .expect("open");
    let meta = file.metadata().expect("fstat");
    assert_eq!(meta.nlink(), 1);
    file.try_lock().expect("uncontended");
    let at_path = std::fs::metadata(path).expect("stat");
    assert_eq!(at_path.ino(), meta.ino());
    counter.lock().expect("counter lock");
    let mut buf = [0u8; 64];
    let n = counter.read_at(&mut buf, 0).expect("read counter");
    let token = std::str::from_utf8(&buf[..n])
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .unwrap_or(0)
        + 1;
    let text = format!("{token}\n");
    counter
        .write_all_at(text.as_bytes(), 0)
        .expect("write counter");
    counter.unlock().expect("counter unlock");
    let held = format!(
        "dlock-lock v2\ntoken={token}\nowner=0123456789abcdef0123456789abcdef\nhost=h\npid=1\nacquired_at_ms=0\nend\n"
    );
    file.write_all_at(held.as_bytes(), 0).expect("write");
    file.set_len(held.len() as u64).expect("truncate");
    std::fs::remove_file(path).expect("unlink");
    file.unlock().expect("unlock");
}

/// `O_NOFOLLOW` (Linux value, to keep this example free of a libc dependency).
fn libc_o_nofollow() -> i32 {
    0o400000
}

/// The backend's two calls, without the runtime.
async fn backend_cycle(backend: &dyn Backend, name: &str) {
    let name = LockName::new(name).expect("name");
    let request = AcquireRequest::new(name, Owner::generate(), Duration::from_secs(30));
    let AcquireOutcome::Acquired(lease) = backend.try_acquire(&request).await.expect("acquire")
    else {
        panic!("uncontended")
    };
    backend.release(&lease).await.expect("release");
}

/// A cycle through the runtime: owner, guard (and renewal task where the backend has leases).
async fn lock_cycle(backend: Arc<dyn Backend>, name: &str) {
    let guard = Lock::new(name).acquire_on(backend).await.expect("acquire");
    guard.release().await.expect("release");
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = Arc::new(FileBackend::new(dir.path()).expect("dir"));
    let memory = Arc::new(MemoryBackend::new());
    Registry::builder()
        .backend_arc("bench", file.clone())
        .build()
        .expect("registry")
        .install()
        .expect("install");

    println!(
        "| {:<62} | mean (µs) | vs raw |",
        "cycle (acquire + release, uncontended)"
    );
    println!("|{}|-----------|--------|", "-".repeat(64));

    let path = dir.path().join("raw.lock");
    let counter = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.path().join("raw-fencing"))
        .expect("counter");
    let raw = mean(5000, || async { raw_file_cycle(&path, &counter) }).await;
    row("file: the same syscalls, made directly", raw, raw);
    let backend_only = mean(5000, || backend_cycle(file.as_ref(), "bench-backend")).await;
    row("file: Backend::try_acquire + release", backend_only, raw);
    let lock = mean(5000, || lock_cycle(file.clone(), "bench-lock")).await;
    row("file: Lock::acquire_on + release", lock, raw);
    let attr_async = mean(5000, || async { locked_async().await.expect("locked") }).await;
    row("file: #[distributed_lock] async fn", attr_async, raw);
    let attr_sync = mean(5000, || async { locked_sync().expect("locked") }).await;
    row(
        "file: #[distributed_lock] fn (blocking path)",
        attr_sync,
        raw,
    );

    let raw = mean(50_000, || backend_cycle(memory.as_ref(), "bench-memory")).await;
    row("memory: Backend::try_acquire + release", raw, raw);
    let lock = mean(50_000, || lock_cycle(memory.clone(), "bench-memory-lock")).await;
    row("memory: Lock::acquire_on + release", lock, raw);

    #[cfg(feature = "s3")]
    if let Ok(bucket) = std::env::var("DLOCK_TEST_S3_BUCKET") {
        cloud::s3(&bucket).await;
    }
    #[cfg(feature = "gcs")]
    if let Ok(bucket) = std::env::var("DLOCK_TEST_GCS_BUCKET") {
        cloud::gcs(&bucket).await;
    }
    #[cfg(feature = "dynamodb")]
    if let Ok(table) = std::env::var("DLOCK_TEST_DYNAMODB_TABLE") {
        cloud::dynamodb(&table).await;
    }
    #[cfg(feature = "mongodb")]
    if let Ok(uri) = std::env::var("DLOCK_TEST_MONGODB_URI") {
        cloud::mongodb(&uri).await;
    }
    #[cfg(feature = "postgres")]
    if let Ok(url) = std::env::var("DLOCK_TEST_POSTGRES_URL") {
        servers::postgres(&url).await;
    }
    #[cfg(feature = "redis")]
    if let Ok(url) = std::env::var("DLOCK_TEST_REDIS_URL") {
        servers::redis(&url).await;
    }
    #[cfg(feature = "etcd")]
    if let Ok(endpoint) = std::env::var("DLOCK_TEST_ETCD_ENDPOINT") {
        servers::etcd(&endpoint).await;
    }
}

/// Remote stores: a lock cycle costs one conditional write to take the lock and one to free it.
#[cfg(any(
    feature = "s3",
    feature = "gcs",
    feature = "dynamodb",
    feature = "mongodb",
    feature = "postgres",
    feature = "redis",
    feature = "etcd"
))]
mod cloud {
    pub(crate) use super::{lock_cycle, row};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// Means of a raw cycle and a lock cycle, measured in alternating batches so that both see
    /// the same server conditions (the stand-ins' latency drifts by a fifth between runs); the
    /// median batch mean of each.
    pub(crate) async fn paired<R, RF, L, LF>(mut raw: R, mut lock: L) -> (Duration, Duration)
    where
        R: FnMut() -> RF,
        RF: std::future::Future<Output = ()>,
        L: FnMut() -> LF,
        LF: std::future::Future<Output = ()>,
    {
        const BATCHES: usize = 15;
        const PER_BATCH: u32 = 20;
        for _ in 0..5 {
            raw().await;
            lock().await;
        }
        let (mut raws, mut locks) = (Vec::new(), Vec::new());
        for _ in 0..BATCHES {
            let start = Instant::now();
            for _ in 0..PER_BATCH {
                raw().await;
            }
            raws.push(start.elapsed() / PER_BATCH);
            let start = Instant::now();
            for _ in 0..PER_BATCH {
                lock().await;
            }
            locks.push(start.elapsed() / PER_BATCH);
        }
        raws.sort();
        locks.sort();
        (raws[BATCHES / 2], locks[BATCHES / 2])
    }

    /// The holder metadata the lock stores with its object, for the baselines' requests.
    #[cfg(any(feature = "s3", feature = "gcs"))]
    fn metadata() -> std::collections::HashMap<String, String> {
        [
            ("dlock-owner", "0123456789abcdef0123456789abcdef"),
            ("dlock-host", "host"),
            ("dlock-pid", "1"),
            ("dlock-acquired-at-ms", "1700000000000"),
            ("dlock-ttl-ms", "30000"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// A body the size of the lock's record.
    #[cfg(any(feature = "s3", feature = "gcs"))]
    const BODY: &[u8] = b"dlock lock record\nname=bench\nowner=0123456789abcdef0123456789abcdef\nhost=host\npid=1\nacquired_at_ms=1700000000000\nttl_ms=30000\nwrite=fedcba9876543210fedcba9876543210\n";

    #[cfg(feature = "s3")]
    pub async fn s3(bucket: &str) {
        use aws_sdk_s3::primitives::ByteStream;
        let sdk = aws_config::load_from_env().await;
        let client = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&sdk)
                .force_path_style(true)
                .build(),
        );
        let raw_cycle = || async {
            let put = client
                .put_object()
                .bucket(bucket)
                .key("bench/raw")
                .if_none_match("*")
                .set_metadata(Some(metadata()))
                .content_type("text/plain")
                .body(ByteStream::from_static(BODY))
                .send()
                .await
                .expect("put");
            let etag = put.e_tag().unwrap_or_default();
            client
                .delete_object()
                .bucket(bucket)
                .key("bench/raw")
                .if_match(etag)
                .send()
                .await
                .expect("delete");
        };
        let backend = dlock_runtime::S3Backend::from_env()
            .bucket(bucket)
            .prefix("bench")
            .build()
            .expect("s3");
        let backend: Arc<dyn dlock_runtime::Backend> = Arc::new(backend);
        let (raw, lock) = paired(raw_cycle, || lock_cycle(backend.clone(), "bench-s3")).await;
        row(
            "s3 (moto): the same PutObject If-None-Match + Delete If-Match",
            raw,
            raw,
        );
        row("s3 (moto): Lock::acquire_on + release", lock, raw);
    }

    #[cfg(feature = "gcs")]
    pub async fn gcs(bucket: &str) {
        use gcloud_storage::client::{Client, ClientConfig};
        use gcloud_storage::http::objects::Object;
        use gcloud_storage::http::objects::delete::DeleteObjectRequest;
        use gcloud_storage::http::objects::upload::{UploadObjectRequest, UploadType};
        let endpoint = std::env::var("STORAGE_EMULATOR_HOST").expect("STORAGE_EMULATOR_HOST");
        let config = ClientConfig {
            storage_endpoint: endpoint,
            ..ClientConfig::default()
        }
        .anonymous();
        let client = Client::new(config);
        let raw_cycle = || async {
            let request = UploadObjectRequest {
                bucket: bucket.into(),
                if_generation_match: Some(0),
                ..Default::default()
            };
            let upload = UploadType::Multipart(Box::new(Object {
                name: "bench/raw".into(),
                content_type: Some("text/plain".into()),
                metadata: Some(metadata()),
                ..Default::default()
            }));
            let object = client
                .upload_object(&request, BODY.to_vec(), &upload)
                .await
                .expect("upload");
            let delete = DeleteObjectRequest {
                bucket: bucket.into(),
                object: "bench/raw".into(),
                if_generation_match: Some(object.generation),
                ..Default::default()
            };
            client.delete_object(&delete).await.expect("delete");
        };
        let backend = dlock_runtime::GcsBackend::from_env()
            .bucket(bucket)
            .prefix("bench")
            .build()
            .expect("gcs");
        let backend: Arc<dyn dlock_runtime::Backend> = Arc::new(backend);
        let (raw, lock) = paired(raw_cycle, || lock_cycle(backend.clone(), "bench-gcs")).await;
        row(
            "gcs (fake-gcs-server): the same multipart create + DELETE",
            raw,
            raw,
        );
        row(
            "gcs (fake-gcs-server): Lock::acquire_on + release",
            lock,
            raw,
        );
    }

    #[cfg(feature = "dynamodb")]
    pub async fn dynamodb(table: &str) {
        use aws_sdk_dynamodb::types::{
            AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure,
        };
        let client = aws_sdk_dynamodb::Client::new(&aws_config::load_from_env().await);
        let s = |v: &str| AttributeValue::S(v.into());
        let n = |v: &str| AttributeValue::N(v.into());
        let names = [
            ("#o", "owner"),
            ("#h", "host"),
            ("#p", "pid"),
            ("#a", "acquired_at_ms"),
            ("#t", "ttl_ms"),
            ("#v", "record_version"),
        ];
        let owner = "0123456789abcdef0123456789abcdef";
        let version = "fedcba9876543210fedcba9876543210";
        // The same two requests the lock sends: the whole holder record, ALL_NEW, ALL_OLD.
        let raw_cycle = || async {
            let mut acquire = client
                .update_item()
                .table_name(table)
                .key("resource_id", s("bench-raw"))
                .update_expression(
                    "SET #o = :o, #h = :h, #p = :p, #a = :a, #t = :t, #v = :v ADD #f :one",
                )
                .condition_expression("attribute_not_exists(#o)")
                .expression_attribute_names("#f", "fencing_token")
                .expression_attribute_values(":o", s(owner))
                .expression_attribute_values(":h", s("host"))
                .expression_attribute_values(":p", n("1"))
                .expression_attribute_values(":a", n("1700000000000"))
                .expression_attribute_values(":t", n("30000"))
                .expression_attribute_values(":v", s(version))
                .expression_attribute_values(":one", n("1"))
                .return_values(ReturnValue::AllNew)
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                );
            let mut release = client
                .update_item()
                .table_name(table)
                .key("resource_id", s("bench-raw"))
                .update_expression("REMOVE #o, #h, #p, #a, #t, #v")
                .condition_expression("#o = :o AND #v = :v")
                .expression_attribute_values(":o", s(owner))
                .expression_attribute_values(":v", s(version))
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                );
            for (placeholder, name) in names {
                acquire = acquire.expression_attribute_names(placeholder, name);
                release = release.expression_attribute_names(placeholder, name);
            }
            acquire.send().await.expect("acquire");
            release.send().await.expect("release");
        };
        let backend = dlock_runtime::DynamoDbBackend::from_env()
            .table(table)
            .build()
            .expect("dynamodb");
        let backend: Arc<dyn dlock_runtime::Backend> = Arc::new(backend);
        let (raw, lock) = paired(raw_cycle, || lock_cycle(backend.clone(), "bench-dynamodb")).await;
        row(
            "dynamodb (moto): the same two conditional UpdateItems",
            raw,
            raw,
        );
        row("dynamodb (moto): Lock::acquire_on + release", lock, raw);
    }

    #[cfg(feature = "mongodb")]
    pub async fn mongodb(uri: &str) {
        use mongodb::bson::{Document, doc};
        let client = mongodb::Client::with_uri_str(uri).await.expect("client");
        let collection = client.database("dlock_bench").collection::<Document>("raw");
        let owner = "0123456789abcdef0123456789abcdef";
        let version = "fedcba9876543210fedcba9876543210";
        // The same two requests the lock sends.
        let raw_cycle = || async {
            let set = doc! { "owner": owner, "host": "host", "pid": 1_i64, "ttl_ms": 30000_i64, "record_version": version };
            collection
                .find_one_and_update(
                    doc! { "_id": "bench-raw", "owner": null },
                    doc! {
                        "$set": set,
                        "$inc": { "fencing_token": 1_i64 },
                        "$currentDate": { "acquired_at": true, "seen_at": true },
                    },
                )
                .upsert(true)
                .return_document(mongodb::options::ReturnDocument::After)
                .await
                .expect("acquire");
            let unset = doc! { "owner": "", "host": "", "pid": "", "ttl_ms": "", "record_version": "", "acquired_at": "" };
            collection
                .update_one(
                    doc! { "_id": "bench-raw", "owner": owner, "record_version": version },
                    doc! { "$unset": unset, "$currentDate": { "seen_at": true } },
                )
                .await
                .expect("release");
        };
        let backend = dlock_runtime::MongoBackend::builder()
            .uri(uri)
            .collection("bench")
            .build()
            .expect("mongodb");
        let backend: Arc<dyn dlock_runtime::Backend> = Arc::new(backend);
        let (raw, lock) = paired(raw_cycle, || lock_cycle(backend.clone(), "bench-mongodb")).await;
        row(
            "mongodb (SecantusDB): the same findOneAndUpdate + updateOne",
            raw,
            raw,
        );
        row(
            "mongodb (SecantusDB): Lock::acquire_on + release",
            lock,
            raw,
        );
    }
}

/// Servers with a lock of their own: the statements / commands a lock cycle sends, made
/// through the same client library as the backend.
#[cfg(any(feature = "postgres", feature = "redis", feature = "etcd"))]
mod servers {
    use super::cloud::{lock_cycle, paired, row};
    use std::sync::Arc;

    const OWNER: &str = "0123456789abcdef0123456789abcdef";
    const VERSION: &str = "fedcba9876543210fedcba9876543210";

    #[cfg(feature = "postgres")]
    pub async fn postgres(url: &str) {
        let backend = dlock_runtime::PostgresBackend::builder()
            .url(url)
            .table("dlock_bench")
            .build()
            .expect("postgres");
        backend.create_table().await.expect("create table");
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        // The shape of the backend's statements: one conditional upsert taking a token from the
        // sequence, one conditional update freeing the row and notifying waiters.
        let acquire = client
            .prepare(
                "INSERT INTO dlock_bench AS l (name, owner, host, pid, version, fencing_token, ttl_ms, acquired_at, expires_at) \
                 VALUES ($1, $2, 'host', 1, $3, nextval('dlock_bench_fencing'), 30000, now(), now() + interval '30 seconds') \
                 ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, host = excluded.host, pid = excluded.pid, \
                 version = excluded.version, fencing_token = nextval('dlock_bench_fencing'), ttl_ms = excluded.ttl_ms, \
                 acquired_at = excluded.acquired_at, expires_at = excluded.expires_at \
                 WHERE l.owner IS NULL OR l.expires_at <= now() RETURNING l.fencing_token",
            )
            .await
            .expect("prepare");
        let release = client
            .prepare(
                "WITH freed AS (UPDATE dlock_bench SET owner = NULL, host = NULL, pid = NULL, version = NULL, \
                 ttl_ms = NULL, acquired_at = NULL, expires_at = NULL \
                 WHERE name = $1 AND owner = $2 AND version = $3 RETURNING name) \
                 SELECT pg_notify('dlock_bench', name) FROM freed",
            )
            .await
            .expect("prepare");
        let raw_cycle = || async {
            let taken = client
                .query(&acquire, &[&"bench-raw", &OWNER, &VERSION])
                .await
                .expect("acquire");
            assert_eq!(taken.len(), 1, "uncontended");
            client
                .query(&release, &[&"bench-raw", &OWNER, &VERSION])
                .await
                .expect("release");
        };
        let backend: Arc<dyn dlock_runtime::Backend> = Arc::new(backend);
        let (raw, lock) = paired(raw_cycle, || lock_cycle(backend.clone(), "bench-postgres")).await;
        row("postgres: the same upsert + conditional update", raw, raw);
        row("postgres: Lock::acquire_on + release", lock, raw);
    }

    #[cfg(feature = "redis")]
    pub async fn redis(url: &str) {
        let client = redis::Client::open(url).expect("redis url");
        let connection = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        // One script that sets a hash if absent, expires it and takes a token; one that deletes
        // it if the owner and version match and publishes the release.
        let acquire = redis::Script::new(
            "if redis.call('EXISTS', KEYS[1]) == 1 then return false end \
             local token = redis.call('INCR', KEYS[2]) \
             redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'version', ARGV[2], 'token', token) \
             redis.call('PEXPIRE', KEYS[1], ARGV[3]) return token",
        );
        let release = redis::Script::new(
            "if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] and \
             redis.call('HGET', KEYS[1], 'version') == ARGV[2] then redis.call('DEL', KEYS[1]) \
             redis.call('PUBLISH', KEYS[2], KEYS[1]) return 1 end return 0",
        );
        let raw_cycle = || {
            let mut connection = connection.clone();
            let (acquire, release) = (&acquire, &release);
            async move {
                let token: Option<i64> = acquire
                    .key("dlock-bench:raw")
                    .key("dlock-bench:raw:fencing")
                    .arg(OWNER)
                    .arg(VERSION)
                    .arg(30_000)
                    .invoke_async(&mut connection)
                    .await
                    .expect("acquire");
                assert!(token.is_some(), "uncontended");
                let _: i64 = release
                    .key("dlock-bench:raw")
                    .key("dlock-bench:released")
                    .arg(OWNER)
                    .arg(VERSION)
                    .invoke_async(&mut connection)
                    .await
                    .expect("release");
            }
        };
        let backend = dlock_runtime::RedisBackend::from_url(url).expect("redis");
        let backend: Arc<dyn dlock_runtime::Backend> = Arc::new(backend);
        let (raw, lock) = paired(raw_cycle, || lock_cycle(backend.clone(), "bench-redis")).await;
        row("redis: two scripts of the same shape (EVALSHA)", raw, raw);
        row("redis: Lock::acquire_on + release", lock, raw);
    }

    #[cfg(feature = "etcd")]
    pub async fn etcd(endpoint: &str) {
        use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
        let client = etcd_client::Client::connect([endpoint], None)
            .await
            .expect("connect");
        let key = "dlock-bench/raw";
        let value = format!("{OWNER} {VERSION}");
        // A lease and a transaction creating the key on it if absent; a transaction deleting it
        // at its revision, and the lease revoked.
        let raw_cycle = || {
            let mut client = client.clone();
            let value = value.clone();
            async move {
                let lease = client.lease_grant(30, None).await.expect("lease").id();
                let create = Txn::new()
                    .when([Compare::create_revision(key, CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(
                        key,
                        value,
                        Some(PutOptions::new().with_lease(lease)),
                    )]);
                let taken = client.txn(create).await.expect("acquire");
                assert!(taken.succeeded(), "uncontended");
                let revision = taken.header().map_or(0, |h| h.revision());
                let delete = Txn::new()
                    .when([Compare::mod_revision(key, CompareOp::Equal, revision)])
                    .and_then([TxnOp::delete(key, None)]);
                client.txn(delete).await.expect("release");
                client.lease_revoke(lease).await.expect("revoke");
            }
        };
        let backend = dlock_runtime::EtcdBackend::from_url(&format!(
            "etcd://{}/dlock-bench/",
            endpoint.trim_start_matches("http://")
        ))
        .expect("etcd");
        let backend: Arc<dyn dlock_runtime::Backend> = Arc::new(backend);
        let (raw, lock) = paired(raw_cycle, || lock_cycle(backend.clone(), "bench-etcd")).await;
        row(
            "etcd: lease grant + create txn + delete txn + revoke",
            raw,
            raw,
        );
        row("etcd: Lock::acquire_on + release", lock, raw);
    }
}
