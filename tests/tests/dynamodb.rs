//! The DynamoDB backend against moto server on 127.0.0.1, served one request at a time
//! (started by tests/run-all.sh).

use dlock_runtime::{DynamoDbBackend, Lock, Owner};
use dlock_tests::{
    assert_exclusive_across_processes, assert_repeated_acquire_is_ours,
    assert_takeover_after_lease, assert_unreachable_is_explained, stand_in,
};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const WORKER: &str = env!("CARGO_BIN_EXE_dlock-worker");

fn table() -> String {
    stand_in("AWS_ENDPOINT_URL");
    stand_in("DLOCK_TEST_DYNAMODB_TABLE")
}

fn dynamodb() -> DynamoDbBackend {
    DynamoDbBackend::from_env()
        .table(table())
        .build()
        .expect("dynamodb backend")
}

dlock_runtime::conformance_tests!(conformance, dynamodb(), Duration::from_secs(1));

#[test]
fn four_processes_never_overlap() {
    assert_exclusive_across_processes(
        Path::new(WORKER),
        &format!("dynamodb://{}", table()),
        4,
        125,
    );
}

#[test]
fn a_killed_holders_lock_is_taken_over_after_its_lease() {
    assert_takeover_after_lease(Path::new(WORKER), &format!("dynamodb://{}", table()));
}

#[tokio::test]
async fn a_refused_write_names_the_holder_and_a_retried_one_is_ours() {
    let (first, holder) = assert_repeated_acquire_is_ours(&dynamodb()).await;
    assert_eq!(
        holder.fencing_token, first.fencing_token,
        "ALL_OLD carries the token"
    );
}

#[tokio::test]
async fn create_table_makes_a_working_table_and_a_missing_one_is_explained() {
    let name = format!("dlock_created_{}", &Owner::generate().id[..8]);
    table();
    let missing = Arc::new(
        DynamoDbBackend::from_env()
            .table(&name)
            .build()
            .expect("settings"),
    );
    let err = Lock::new("x")
        .timeout(Duration::from_secs(30))
        .acquire_on(missing.clone())
        .await
        .expect_err("no table");
    assert!(!err.is_temporary(), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("table `{name}` does not exist")),
        "{err}"
    );
    assert!(
        err.to_string().contains("create_table"),
        "says how to create it: {err}"
    );

    missing.create_table().await.expect("create");
    missing
        .create_table()
        .await
        .expect("creating an existing table is fine");
    let guard = Lock::new("x")
        .acquire_on(missing)
        .await
        .expect("the new table works");
    assert_eq!(guard.fencing_token(), Some(1));
    guard.release().await.expect("release");
}

#[tokio::test]
async fn a_custom_key_attribute_works() {
    table();
    let name = format!("dlock_keyed_{}", &Owner::generate().id[..8]);
    let backend = DynamoDbBackend::from_env()
        .table(&name)
        .key_attribute("lock_name")
        .build()
        .expect("settings");
    backend.create_table().await.expect("create");
    let guard = Lock::new("k")
        .acquire_on(Arc::new(backend))
        .await
        .expect("acquire");
    guard.release().await.expect("release");
}

#[tokio::test]
async fn an_unreachable_endpoint_is_a_clear_error() {
    let backend = DynamoDbBackend::builder()
        .table("t_table")
        .endpoint("http://127.0.0.1:9")
        .region("us-east-1")
        .credentials("test", "test")
        .build()
        .expect("settings");
    assert_unreachable_is_explained(
        Arc::new(backend),
        "cannot reach DynamoDB at http://127.0.0.1:9",
    )
    .await;
}

#[test]
fn bad_settings_are_rejected() {
    let err = DynamoDbBackend::builder()
        .table("x")
        .build()
        .expect_err("too short");
    assert!(err.to_string().contains("is not a table name"), "{err}");
    let err = DynamoDbBackend::builder()
        .table("locks")
        .key_attribute("owner")
        .build()
        .expect_err("clash");
    assert!(
        err.to_string().contains("cannot be the key attribute"),
        "{err}"
    );
    assert!(dlock_runtime::backend_from_url("dynamodb://dlock_locks").is_ok());
}

fn fault_target() -> dlock_tests::fault_matrix::Target {
    let endpoint = stand_in("AWS_ENDPOINT_URL");
    dlock_tests::fault_matrix::Target {
        name: "dynamodb",
        upstream: dlock_tests::fault_matrix::upstream_of(&endpoint),
        through: Box::new(|proxy| {
            Arc::new(
                DynamoDbBackend::builder()
                    .table(table())
                    .endpoint(proxy.url())
                    .region("us-east-1")
                    .credentials("test", "test")
                    .build()
                    .expect("settings"),
            )
        }),
        direct: Arc::new(dynamodb()),
        // Every DynamoDB request is a lock request (there is no start-up check).
        requests: |request| dlock_tests::fault_matrix::contains(request, "x-amz-target: dynamodb"),
        http: true,
        multiplexed: false,
    }
}

dlock_tests::fault_matrix_tests!(fault_target());
