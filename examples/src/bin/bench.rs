//! What a lock costs over the calls it must make: an acquire/release cycle through dlock
//! against the raw operations underneath (the file backend's open + flock + record write +
//! unlock, the memory backend's two map operations). Prints a table of mean times and ratios.
//!
//! ```text
//! cargo run --release -p dlock-examples --bin bench
//! ```
//!
//! With `--features s3,gcs` and the stand-ins' variables set (`AWS_ENDPOINT_URL`,
//! `DLOCK_TEST_S3_BUCKET`, `STORAGE_EMULATOR_HOST`, `DLOCK_TEST_GCS_BUCKET`; see
//! tests/stand-ins/start.sh), it also compares a lock cycle on S3 and GCS with the bare
//! conditional write and conditional delete made through the same client library.

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
/// (the link-count and size checks), flock, read the last fencing token, write the holder
/// record, then clear it, unlock and close.
fn raw_file_cycle(path: &std::path::Path) {
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
    let mut buf = [0u8; 4096];
    let _ = file.read_at(&mut buf, 0).expect("read");
    let held = b"dlock-lock v1\ntoken=1\nowner=0123456789abcdef0123456789abcdef\nhost=h\npid=1\nacquired_at_ms=0\nend\n";
    file.write_all_at(held, 0).expect("write");
    file.set_len(held.len() as u64).expect("truncate");
    let free = b"dlock-lock v1\ntoken=1\nend\n";
    file.write_all_at(free, 0).expect("write");
    file.set_len(free.len() as u64).expect("truncate");
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
    let raw = mean(5000, || async { raw_file_cycle(&path) }).await;
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
}

/// Object stores: a lock cycle costs a conditional create and a conditional delete.
#[cfg(any(feature = "s3", feature = "gcs"))]
mod cloud {
    use super::{lock_cycle, mean, row};
    use std::sync::Arc;

    const ITERATIONS: u32 = 300;

    #[cfg(feature = "s3")]
    pub async fn s3(bucket: &str) {
        use aws_sdk_s3::primitives::ByteStream;
        let sdk = aws_config::load_from_env().await;
        let client = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&sdk)
                .force_path_style(true)
                .build(),
        );
        let raw = mean(ITERATIONS, || async {
            let put = client
                .put_object()
                .bucket(bucket)
                .key("bench/raw")
                .if_none_match("*")
                .body(ByteStream::from_static(b"x"))
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
        })
        .await;
        row(
            "s3 (moto): PutObject If-None-Match + Delete If-Match",
            raw,
            raw,
        );
        let backend = dlock_runtime::S3Backend::from_env()
            .bucket(bucket)
            .prefix("bench")
            .build()
            .expect("s3");
        let backend: Arc<dyn dlock_runtime::Backend> = Arc::new(backend);
        let lock = mean(ITERATIONS, || lock_cycle(backend.clone(), "bench-s3")).await;
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
        let raw = mean(ITERATIONS, || async {
            let request = UploadObjectRequest {
                bucket: bucket.into(),
                if_generation_match: Some(0),
                ..Default::default()
            };
            let upload = UploadType::Multipart(Box::new(Object {
                name: "bench/raw".into(),
                ..Default::default()
            }));
            let object = client
                .upload_object(&request, b"x".to_vec(), &upload)
                .await
                .expect("upload");
            let delete = DeleteObjectRequest {
                bucket: bucket.into(),
                object: "bench/raw".into(),
                if_generation_match: Some(object.generation),
                ..Default::default()
            };
            client.delete_object(&delete).await.expect("delete");
        })
        .await;
        row(
            "gcs (fake-gcs-server): multipart ifGenerationMatch=0 + DELETE",
            raw,
            raw,
        );
        let backend = dlock_runtime::GcsBackend::from_env()
            .bucket(bucket)
            .prefix("bench")
            .build()
            .expect("gcs");
        let backend: Arc<dyn dlock_runtime::Backend> = Arc::new(backend);
        let lock = mean(ITERATIONS, || lock_cycle(backend.clone(), "bench-gcs")).await;
        row(
            "gcs (fake-gcs-server): Lock::acquire_on + release",
            lock,
            raw,
        );
    }
}
