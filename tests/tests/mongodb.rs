//! The MongoDB backend against SecantusDB (MongoDB wire protocol) on 127.0.0.1 (started by
//! tests/run-all.sh).

use dlock_runtime::{Lock, MongoBackend};
use dlock_tests::{
    assert_exclusive_across_processes, assert_repeated_acquire_is_ours,
    assert_takeover_after_lease, assert_unreachable_is_explained, stand_in,
};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const WORKER: &str = env!("CARGO_BIN_EXE_dlock-worker");

fn uri() -> String {
    stand_in("DLOCK_TEST_MONGODB_URI")
}

fn mongo(collection: &str) -> MongoBackend {
    MongoBackend::builder()
        .uri(uri())
        .collection(collection)
        .build()
        .expect("mongodb backend")
}

/// `mongodb://host:port/db?collection=NAME&directConnection=true`
fn url(collection: &str) -> String {
    let uri = uri();
    let (base, query) = uri.split_once('?').unwrap_or((&uri, ""));
    format!("{base}?collection={collection}&{query}")
}

dlock_runtime::conformance_tests!(conformance, mongo("conformance"), Duration::from_secs(1));

#[test]
fn four_processes_never_overlap() {
    assert_exclusive_across_processes(Path::new(WORKER), &url("stress"), 4, 125);
}

#[test]
fn a_killed_holders_lock_is_taken_over_after_its_lease() {
    assert_takeover_after_lease(Path::new(WORKER), &url("killed"));
}

#[tokio::test]
async fn a_lost_race_is_a_duplicate_key_answered_as_busy_and_a_retry_is_ours() {
    let (first, holder) = assert_repeated_acquire_is_ours(&mongo("races")).await;
    assert!(
        holder.acquired_at.is_some(),
        "the server's time is recorded"
    );
    assert_eq!(holder.fencing_token, first.fencing_token);
}

/// A refused attempt is one request whose answer names the holder: the update leaves a held
/// record as it is and returns it (a refusal as a duplicate key needed a read after it, two
/// requests per refused attempt). The fencing counter moves only when the lock is taken.
#[tokio::test]
async fn a_refused_attempt_is_one_request_that_names_the_holder() {
    use dlock_runtime::{AcquireOutcome, AcquireRequest, Backend, LockName, Owner};
    use dlock_tests::fault_proxy::FaultProxy;
    let holder = mongo("refusals");
    let proxy = FaultProxy::start(dlock_tests::fault_matrix::upstream_of(&uri()));
    let waiter = MongoBackend::builder()
        .uri(format!(
            "mongodb://{}/dlock_test?directConnection=true",
            proxy.addr()
        ))
        .collection("refusals")
        .build()
        .expect("settings");
    let lock = LockName::new(dlock_tests::fresh_name("refused")).expect("name");
    let ttl = Duration::from_secs(30);
    let request = AcquireRequest::new(lock.clone(), Owner::generate(), ttl);
    let AcquireOutcome::Acquired(held) = holder
        .try_acquire(&AcquireRequest::new(lock.clone(), Owner::generate(), ttl))
        .await
        .expect("attempt")
    else {
        panic!("a fresh lock is free")
    };
    waiter.inspect(&lock).await.expect("connect");
    let before = proxy.requests();
    for _ in 0..10 {
        match waiter.try_acquire(&request).await.expect("attempt") {
            AcquireOutcome::Busy(h) => {
                assert_eq!(
                    (&h.owner.id, &h.version, h.fencing_token),
                    (&held.owner.id, &held.version, held.fencing_token)
                );
            }
            other => panic!("held: {other:?}"),
        }
    }
    // The driver's monitoring may add a heartbeat or two in between.
    let refused = proxy.requests() - before;
    eprintln!("ten refused attempts: {refused} requests on the wire");
    assert!(
        refused <= 12,
        "ten refused attempts, one request each (with a read after each: 20), not {refused}"
    );
    holder.release(&held).await.expect("release");
    let AcquireOutcome::Acquired(mine) = waiter.try_acquire(&request).await.expect("attempt")
    else {
        panic!("released")
    };
    assert_eq!(
        mine.fencing_token,
        held.fencing_token.map(|t| t + 1),
        "ten refusals did not move the counter"
    );
    waiter.release(&mine).await.expect("release");
}

#[tokio::test]
async fn the_gc_index_is_created() {
    let backend = MongoBackend::builder()
        .uri(uri())
        .collection("with_gc")
        .gc_after(Duration::from_secs(7 * 24 * 3600))
        .build()
        .expect("settings");
    let guard = Lock::new("gc")
        .acquire_on(Arc::new(backend))
        .await
        .expect("acquire with a TTL index");
    guard.release().await.expect("release");
}

#[tokio::test]
async fn an_unreachable_server_is_a_clear_error() {
    let backend = MongoBackend::builder()
        .uri("mongodb://127.0.0.1:9/?directConnection=true&serverSelectionTimeoutMS=500")
        .build()
        .expect("settings");
    assert_unreachable_is_explained(Arc::new(backend), "cannot reach MongoDB").await;
}

#[test]
fn urls_and_bad_settings() {
    let err = MongoBackend::builder()
        .uri("http://x")
        .build()
        .expect_err("not mongodb");
    assert!(
        err.to_string().contains("must start with mongodb://"),
        "{err}"
    );
    assert!(
        dlock_runtime::backend_from_url(
            "mongodb://127.0.0.1:27017/app?collection=locks&directConnection=true"
        )
        .is_ok()
    );
}

#[tokio::test]
async fn gc_after_is_checked_against_the_lease() {
    let uri = stand_in("DLOCK_TEST_MONGODB_URI");
    let err = MongoBackend::builder()
        .uri(&uri)
        .gc_after(Duration::from_secs(60))
        .build()
        .expect_err("a minute is too short");
    assert!(err.to_string().contains("gc_after"), "{err}");
    let backend = MongoBackend::builder()
        .uri(&uri)
        .collection(format!("gc_{}", &dlock_runtime::Owner::generate().id[..8]))
        .gc_after(Duration::from_secs(3600))
        .build()
        .expect("an hour is fine");
    let err = Lock::new("long-lease")
        .ttl(Duration::from_secs(7200))
        .acquire_on(Arc::new(backend))
        .await
        .expect_err("a lease longer than gc_after");
    assert!(err.to_string().contains("too long for gc_after"), "{err}");
}

/// The lock's commands, not the driver's heartbeats (`hello`) or session housekeeping.
fn mongo_lock_request(request: &[u8]) -> bool {
    use dlock_tests::fault_matrix::contains;
    contains(request, "findAndModify")
        || contains(request, "update\0")
        || contains(request, "find\0")
}

fn fault_target() -> dlock_tests::fault_matrix::Target {
    let uri = uri();
    dlock_tests::fault_matrix::Target {
        name: "mongodb",
        upstream: dlock_tests::fault_matrix::upstream_of(&uri),
        through: Box::new(|proxy| {
            Arc::new(
                MongoBackend::builder()
                    .uri(format!(
                        "mongodb://{}/dlock_test?directConnection=true",
                        proxy.addr()
                    ))
                    .collection("faults")
                    .build()
                    .expect("settings"),
            )
        }),
        direct: Arc::new(mongo("faults")),
        requests: mongo_lock_request,
        http: false,
        multiplexed: false,
    }
}

dlock_tests::fault_matrix_tests!(fault_target());
