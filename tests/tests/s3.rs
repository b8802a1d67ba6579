//! The S3 backend against moto server on 127.0.0.1 (started by tests/run-all.sh), and on the
//! wire where moto cannot answer like S3 (409 ConditionalRequestConflict).

use dlock_runtime::{Backend, Error, Lock, LockName, S3Backend};
use dlock_tests::{
    Recorder, assert_exclusive_across_processes, assert_missing_bucket_is_permanent,
    assert_repeated_acquire_is_ours, assert_takeover_after_lease, assert_unreachable_is_explained,
    stand_in,
};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const WORKER: &str = env!("CARGO_BIN_EXE_dlock-worker");

fn bucket() -> String {
    stand_in("AWS_ENDPOINT_URL");
    stand_in("DLOCK_TEST_S3_BUCKET")
}

fn s3(prefix: &str) -> S3Backend {
    S3Backend::from_env()
        .bucket(bucket())
        .prefix(prefix)
        .build()
        .expect("s3 backend")
}

dlock_runtime::conformance_tests!(conformance, s3("conformance/"), Duration::from_secs(1));

#[test]
fn four_processes_never_overlap() {
    assert_exclusive_across_processes(
        Path::new(WORKER),
        &format!("s3://{}/stress", bucket()),
        4,
        125,
    );
}

#[test]
fn a_killed_holders_lock_is_taken_over_after_its_lease() {
    assert_takeover_after_lease(Path::new(WORKER), &format!("s3://{}/killed", bucket()));
}

#[tokio::test]
async fn a_retried_write_that_had_succeeded_is_recognised_as_ours() {
    let (_, _) = assert_repeated_acquire_is_ours(&s3("ambiguous/")).await;
}

#[tokio::test]
async fn lock_keys_never_leave_the_prefix() {
    let backend = Arc::new(s3("tenant-a/"));
    let guard = Lock::new("../tenant-b/lock")
        .acquire_on(backend.clone())
        .await
        .expect("acquire");
    assert_eq!(
        backend.key_for(guard.name()),
        "tenant-a/%2E.%2Ftenant-b%2Flock"
    );
    let other = s3("tenant-b/");
    assert!(
        other
            .inspect(&LockName::new("lock").expect("name"))
            .await
            .expect("inspect")
            .is_none()
    );
    guard.release().await.expect("release");
}

#[tokio::test]
async fn a_missing_bucket_fails_at_once_and_says_so() {
    bucket();
    let backend = S3Backend::from_env()
        .bucket("no-such-bucket-dlock")
        .build()
        .expect("settings");
    assert_missing_bucket_is_permanent(Arc::new(backend), "no-such-bucket-dlock").await;
}

#[tokio::test]
async fn an_unreachable_endpoint_is_a_clear_error() {
    let backend = S3Backend::builder()
        .bucket("b")
        .endpoint("http://127.0.0.1:9")
        .region("us-east-1")
        .credentials("test", "test")
        .build()
        .expect("settings");
    assert_unreachable_is_explained(Arc::new(backend), "cannot reach S3 at http://127.0.0.1:9")
        .await;
}

/// Real S3 answers a conditional write that races another on the same key with 409
/// ConditionalRequestConflict; moto never does. On the wire: the 409 is retried, and every
/// attempt is still conditional.
#[tokio::test]
async fn a_409_conflict_is_retried_on_the_wire() {
    let conflict = "<?xml version=\"1.0\"?><Error><Code>ConditionalRequestConflict</Code><Message>A conflicting conditional operation is currently in progress</Message></Error>";
    let recorder = Recorder::start(vec![
        (200, vec![], ""),                                          // HeadBucket
        (409, vec![("Content-Type", "application/xml")], conflict), // PutObject
        (200, vec![("ETag", "\"abc\"")], ""),                       // PutObject again
    ]);
    let backend = S3Backend::builder()
        .bucket("b")
        .endpoint(&recorder.url)
        .region("us-east-1")
        .credentials("test", "test")
        .build()
        .expect("settings");
    let guard = Lock::new("conflict")
        .timeout(Duration::from_secs(10))
        .acquire_on(Arc::new(backend))
        .await
        .expect("acquired after the conflict");
    let puts: Vec<String> = recorder
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("PUT "))
        .collect();
    assert_eq!(puts.len(), 2, "{puts:#?}");
    assert!(
        puts.iter()
            .all(|r| r.to_ascii_lowercase().contains("\r\nif-none-match: *\r\n")),
        "{puts:#?}"
    );
    std::mem::forget(guard); // the recorder would answer its delete with the PutObject response
}

#[test]
fn s3_urls_configure_the_backend() {
    let err = dlock_runtime::backend_from_url("s3://").expect_err("no bucket");
    assert!(matches!(err, Error::Config { .. }), "{err}");
    assert!(dlock_runtime::backend_from_url("s3://bucket/some/prefix").is_ok());
}

/// S3 answers 400 RequestTimeout when a request's connection idled too long: a retry helps, so
/// it is temporary (on the wire: the second PutObject goes out, still conditional).
#[tokio::test]
async fn a_400_request_timeout_is_retried() {
    let timeout = "<?xml version=\"1.0\"?><Error><Code>RequestTimeout</Code><Message>Your socket connection to the server was not read from or written to within the timeout period.</Message></Error>";
    let recorder = Recorder::start(vec![
        (200, vec![], ""),                                         // HeadBucket
        (400, vec![("Content-Type", "application/xml")], timeout), // PutObject
        (200, vec![("ETag", "\"abc\"")], ""),                      // PutObject again
    ]);
    let backend = S3Backend::builder()
        .bucket("b")
        .endpoint(&recorder.url)
        .region("us-east-1")
        .credentials("test", "test")
        .build()
        .expect("settings");
    let guard = Lock::new("request-timeout")
        .timeout(Duration::from_secs(10))
        .acquire_on(Arc::new(backend))
        .await
        .expect("acquired after the 400 RequestTimeout");
    let puts = recorder
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("PUT "))
        .count();
    assert!(puts >= 2, "retried: {puts} PUTs");
    std::mem::forget(guard); // the recorder would answer its delete with the PutObject response
}

#[test]
fn settings_never_show_the_secret_key() {
    let builder = S3Backend::builder()
        .bucket("b")
        .credentials("AKIAEXAMPLE", "wJalrXUtnFEMI-secret");
    let shown = format!("{builder:?}");
    assert!(shown.contains("AKIAEXAMPLE"), "{shown}");
    assert!(!shown.contains("secret"), "{shown}");
    let shown = format!(
        "{:?}",
        dlock_runtime::DynamoDbBackend::builder()
            .table("t")
            .credentials("AKIAEXAMPLE", "wJalrXUtnFEMI-secret")
    );
    assert!(!shown.contains("secret"), "{shown}");
}

/// Object requests (`/bucket/key`), not the start-up bucket check (`/bucket`).
fn s3_lock_request(request: &[u8]) -> bool {
    let path = dlock_tests::fault_matrix::http_path(request);
    path.split('?')
        .next()
        .unwrap_or_default()
        .matches('/')
        .count()
        >= 2
}

fn fault_target() -> dlock_tests::fault_matrix::Target {
    let endpoint = stand_in("AWS_ENDPOINT_URL");
    dlock_tests::fault_matrix::Target {
        name: "s3",
        upstream: dlock_tests::fault_matrix::upstream_of(&endpoint),
        through: Box::new(|proxy| {
            Arc::new(
                S3Backend::builder()
                    .bucket(bucket())
                    .prefix("faults/")
                    .endpoint(proxy.url())
                    .region("us-east-1")
                    .credentials("test", "test")
                    .build()
                    .expect("settings"),
            )
        }),
        direct: Arc::new(s3("faults/")),
        requests: s3_lock_request,
        http: true,
        multiplexed: false,
    }
}

dlock_tests::fault_matrix_tests!(fault_target());
