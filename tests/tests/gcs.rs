//! The GCS backend against fake-gcs-server on 127.0.0.1 (started by tests/run-all.sh, behind
//! `tests/stand-ins/gcs_preconditions.py`, which enforces the `ifGenerationMatch` on DELETE
//! that fake-gcs-server ignores), and on the wire for what dlock sends on DELETE.

use dlock_runtime::{Backend, Error, GcsBackend, Lease, Lock, LockName, Owner, Version};
use dlock_tests::{
    Recorder, assert_exclusive_across_processes, assert_missing_bucket_is_permanent,
    assert_takeover_after_lease, assert_unreachable_is_explained, fresh_name, stand_in,
};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const WORKER: &str = env!("CARGO_BIN_EXE_dlock-worker");

fn bucket() -> String {
    stand_in("STORAGE_EMULATOR_HOST");
    stand_in("DLOCK_TEST_GCS_BUCKET")
}

fn gcs(prefix: &str) -> GcsBackend {
    GcsBackend::from_env()
        .bucket(bucket())
        .prefix(prefix)
        .build()
        .expect("gcs backend")
}

dlock_runtime::conformance_tests!(conformance, gcs("conformance/"), Duration::from_secs(1));

#[test]
fn four_processes_never_overlap() {
    assert_exclusive_across_processes(
        Path::new(WORKER),
        &format!("gs://{}/stress", bucket()),
        4,
        125,
    );
}

#[test]
fn a_killed_holders_lock_is_taken_over_after_its_lease() {
    assert_takeover_after_lease(Path::new(WORKER), &format!("gs://{}/killed", bucket()));
}

#[tokio::test]
async fn stale_renewals_and_takeovers_are_refused_by_the_server() {
    // fake-gcs-server does enforce ifGenerationMatch on (multipart) uploads: a stale owner can
    // neither renew nor take over with an old generation.
    let backend = Arc::new(gcs("stale/"));
    let name = fresh_name("stale");
    let first = Lock::new(name.as_str())
        .acquire_on(backend.clone())
        .await
        .expect("acquire");
    let holder = backend
        .inspect(&LockName::new(name.as_str()).expect("name"))
        .await
        .expect("read")
        .expect("held");
    let stale = Lease {
        name: LockName::new(name.as_str()).expect("name"),
        owner: Owner::generate(),
        version: Version::new(
            (holder.version.as_str().parse::<i64>().expect("generation") - 1).to_string(),
        ),
        ttl: Duration::from_secs(1),
        fencing_token: None,
        acquired_at: SystemTime::now(),
    };
    let err = backend
        .renew(&stale, Duration::from_secs(1))
        .await
        .expect_err("old generation");
    assert!(matches!(err, Error::Lost { .. }), "{err}");
    first.release().await.expect("release");
}

#[tokio::test]
async fn a_missing_bucket_fails_at_once_and_says_so() {
    bucket();
    let backend = GcsBackend::from_env()
        .bucket("no-such-bucket-dlock")
        .build()
        .expect("settings");
    assert_missing_bucket_is_permanent(Arc::new(backend), "no-such-bucket-dlock").await;
}

#[tokio::test]
async fn an_unreachable_endpoint_is_a_clear_error() {
    let backend = GcsBackend::builder()
        .bucket("b")
        .endpoint("http://127.0.0.1:9")
        .build()
        .expect("settings");
    assert_unreachable_is_explained(
        Arc::new(backend),
        "cannot reach Cloud Storage at http://127.0.0.1:9",
    )
    .await;
}

/// fake-gcs-server's answer to a bucket GET, captured from it.
const BUCKET: &str = r#"{"kind":"storage#bucket","id":"b","defaultEventBasedHold":false,"name":"b","versioning":{"enabled":false},"timeCreated":"2026-11-22T15:17:52.364483Z","updated":"2026-11-22T15:17:52.364483Z","location":"US-CENTRAL1","storageClass":"STANDARD","projectNumber":"0","metageneration":"1","etag":"RVRhZw==","locationType":"region"}"#;

/// fake-gcs-server's answer for a missing object.
const NOT_FOUND: &str = r#"{"error":{"code":404,"message":"No such object","errors":[{"domain":"global","reason":"notFound","message":"No such object"}]}}"#;

/// On the wire: release is a DELETE with `ifGenerationMatch=<the lease's generation>`, and a
/// 412 answer (what GCS sends when the generation moved on) is reported as a lost lock once a
/// read shows the record is not this owner's.
#[tokio::test]
async fn release_is_conditional_on_the_generation_on_the_wire() {
    let precondition = r#"{"error":{"code":412,"message":"conditionNotMet","errors":[{"domain":"global","reason":"conditionNotMet","message":"Precondition Failed"}]}}"#;
    let recorder = Recorder::start(vec![
        (200, vec![("Content-Type", "application/json")], BUCKET), // bucket check
        (
            412,
            vec![("Content-Type", "application/json")],
            precondition,
        ), // stale delete
        (404, vec![("Content-Type", "application/json")], NOT_FOUND), // read-back: not ours
        (204, vec![], ""),                                         // current delete
    ]);
    let backend = GcsBackend::builder()
        .bucket("b")
        .prefix("p")
        .endpoint(&recorder.url)
        .build()
        .expect("settings");
    let lease = |generation: &str| Lease {
        name: LockName::new("deploy/prod").expect("name"),
        owner: Owner::generate(),
        version: Version::new(generation),
        ttl: Duration::from_secs(30),
        fencing_token: None,
        acquired_at: SystemTime::now(),
    };
    let err = backend
        .release(&lease("1700000000000001"))
        .await
        .expect_err("412");
    assert!(matches!(err, Error::Lost { .. }), "{err}");
    backend
        .release(&lease("1700000000000002"))
        .await
        .expect("204");
    let deletes: Vec<String> = recorder
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("DELETE "))
        .collect();
    assert_eq!(deletes.len(), 2, "{deletes:#?}");
    let line = |r: &String| r.lines().next().unwrap_or_default().to_string();
    assert!(
        line(&deletes[0]).contains("/b/b/o/p%2Fdeploy%252Fprod?"),
        "{}",
        line(&deletes[0])
    );
    assert!(
        line(&deletes[0]).contains("ifGenerationMatch=1700000000000001"),
        "{}",
        line(&deletes[0])
    );
    assert!(
        line(&deletes[1]).contains("ifGenerationMatch=1700000000000002"),
        "{}",
        line(&deletes[1])
    );
}

#[test]
fn gs_urls_configure_the_backend() {
    let err = dlock_runtime::backend_from_url("gs://").expect_err("no bucket");
    assert!(matches!(err, Error::Config { .. }), "{err}");
    assert!(dlock_runtime::backend_from_url("gs://bucket/prefix").is_ok());
}

#[tokio::test]
async fn a_version_that_is_not_a_generation_is_a_clear_error() {
    let backend = gcs("versions/");
    let err = backend
        .force_release(&LockName::new("x").expect("name"), &Version::new("abc"))
        .await
        .expect_err("not a generation");
    assert!(!matches!(err, Error::Lost { .. }), "not a lost lock: {err}");
    assert!(err.to_string().contains("not a GCS generation"), "{err}");
}

/// Object requests (`.../b/BUCKET/o...`), not the start-up bucket check (`.../b/BUCKET`).
fn gcs_lock_request(request: &[u8]) -> bool {
    let path = dlock_tests::fault_matrix::http_path(request);
    let path = path.split('?').next().unwrap_or_default();
    path.contains("/o/") || path.ends_with("/o")
}

fn fault_target() -> dlock_tests::fault_matrix::Target {
    let endpoint = stand_in("STORAGE_EMULATOR_HOST");
    dlock_tests::fault_matrix::Target {
        name: "gcs",
        upstream: dlock_tests::fault_matrix::upstream_of(&endpoint),
        through: Box::new(|proxy| {
            Arc::new(
                GcsBackend::builder()
                    .bucket(bucket())
                    .prefix("faults/")
                    .endpoint(proxy.url())
                    .build()
                    .expect("settings"),
            )
        }),
        direct: Arc::new(gcs("faults/")),
        requests: gcs_lock_request,
        http: true,
        multiplexed: false,
    }
}

dlock_tests::fault_matrix_tests!(fault_target());
