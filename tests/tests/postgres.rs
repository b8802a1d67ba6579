//! The PostgreSQL backend against Debian's postgresql on 127.0.0.1 (started by
//! tests/run-all.sh, which exports `DLOCK_TEST_POSTGRES_URL`). Raw SQL for set-up (deleting a
//! row, revoking privileges, ending a connection) goes through `psql`.

use dlock_runtime::{Backend, Error, Lock, Owner, PostgresBackend};
use dlock_tests::servers::{self, name};
use dlock_tests::{
    assert_exclusive_across_processes, assert_repeated_acquire_is_ours,
    assert_takeover_after_lease, assert_unreachable_is_explained, fresh_name, stand_in,
};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

const WORKER: &str = env!("CARGO_BIN_EXE_dlock-worker");

/// `postgres://dlock:dlock@127.0.0.1:PORT/dlock_test`
fn url() -> String {
    stand_in("DLOCK_TEST_POSTGRES_URL")
}

/// The URL with more query options.
fn url_with(options: &str) -> String {
    let url = url();
    let joiner = if url.contains('?') { '&' } else { '?' };
    format!("{url}{joiner}{options}")
}

fn settings(table: &str) -> dlock_runtime::PostgresBuilder {
    PostgresBackend::builder().url(url()).table(table)
}

/// A backend on `table`, which it creates if needed, with a few connections open.
///
/// Opening a connection costs SCRAM authentication, which takes about 100 ms of CPU in a
/// debug build (the PBKDF2 of `sha2` without optimisation; about 1 ms in a release build), and
/// dlock's background runtime runs on one thread. A check that starts several acquisitions at
/// once on a new backend would otherwise see its first writes answered only after a few of
/// those, and the runtime rightly dates a lease from the first write that may have landed.
async fn backend(table: &str) -> PostgresBackend {
    let backend = settings(table).build().expect("settings");
    backend.create_table().await.expect("create the table");
    let warm = name("warm-up");
    let (a, b, c, d) = tokio::join!(
        backend.inspect(&warm),
        backend.inspect(&warm),
        backend.inspect(&warm),
        backend.inspect(&warm)
    );
    for read in [a, b, c, d] {
        read.expect("connect");
    }
    backend
}

/// Creates `table` from synchronous code.
fn create_table(table: &str) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(backend(table));
}

/// Runs SQL with psql against the test database; returns its unaligned output.
fn psql(sql: &str) -> String {
    let url = url();
    let out = Command::new("psql")
        .args([
            &url,
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .output()
        .expect("run psql (postgresql-client)");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A table name no other run uses.
fn fresh_table(prefix: &str) -> String {
    format!("{prefix}_{}", &Owner::generate().id[..10])
}

dlock_runtime::conformance_tests!(
    conformance,
    backend("dlock_conformance").await,
    Duration::from_secs(1)
);

#[test]
fn four_processes_never_overlap() {
    create_table("dlock_stress");
    assert_exclusive_across_processes(Path::new(WORKER), &url_with("table=dlock_stress"), 4, 125);
}

#[test]
fn a_killed_holders_lock_is_taken_over_after_its_lease() {
    create_table("dlock_killed");
    assert_takeover_after_lease(Path::new(WORKER), &url_with("table=dlock_killed"));
}

#[tokio::test]
async fn a_retried_acquire_that_had_landed_is_ours() {
    let (first, holder) = assert_repeated_acquire_is_ours(&backend("dlock_retries").await).await;
    assert_eq!(holder.fencing_token, first.fencing_token);
    assert!(
        holder.acquired_at.is_some(),
        "the server's time is recorded"
    );
    assert_eq!(holder.ttl, Some(Duration::from_secs(30)));
}

#[tokio::test]
async fn an_unreachable_server_is_a_clear_error_fast() {
    let backend = PostgresBackend::from_url("postgres://dlock:dlock@127.0.0.1:9/dlock_test")
        .expect("settings");
    let started = Instant::now();
    assert_unreachable_is_explained(Arc::new(backend), "cannot reach PostgreSQL at 127.0.0.1:9")
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn wrong_credentials_are_a_permanent_error() {
    let wrong = url().replacen("dlock:dlock@", "dlock:not-the-password@", 1);
    assert_ne!(wrong, url(), "the test URL carries user:password");
    let backend = Arc::new(
        PostgresBackend::builder()
            .url(wrong)
            .build()
            .expect("settings"),
    );
    assert!(
        !format!("{backend:?}").contains("not-the-password"),
        "Debug shows no password"
    );
    servers::assert_refused(backend, "refused the credentials", Some("not-the-password")).await;
}

#[tokio::test]
async fn a_missing_table_says_how_to_create_it_and_create_table_makes_it() {
    let table = fresh_table("dlock_missing");
    let missing = Arc::new(settings(&table).build().expect("settings"));
    let started = Instant::now();
    let err = Lock::new("x")
        .timeout(Duration::from_secs(30))
        .acquire_on(missing.clone())
        .await
        .expect_err("no table");
    assert!(!err.is_temporary(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("the table `{table}`")) && text.contains("does not exist"),
        "{text}"
    );
    assert!(text.contains("create_table()"), "{text}");
    assert!(
        text.contains(&format!("CREATE TABLE IF NOT EXISTS \"{table}\"")),
        "prints the DDL: {text}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // Several processes may create it at once.
    let creators: Vec<_> = (0..4)
        .map(|_| {
            let b = settings(&table).build().expect("settings");
            tokio::spawn(async move { b.create_table().await })
        })
        .collect();
    for creator in creators {
        creator.await.expect("join").expect("create");
    }
    missing.create_table().await.expect("again: fine");
    let guard = Lock::new("x")
        .acquire_on(missing.clone())
        .await
        .expect("the new table works");
    assert_eq!(guard.fencing_token(), Some(1), "a new sequence");
    guard.release().await.expect("release");
    psql(&format!(
        "DROP TABLE \"{table}\"; DROP SEQUENCE \"{table}_fencing\""
    ));
}

#[tokio::test]
async fn missing_privileges_are_a_permanent_error_that_names_the_grants() {
    let table = fresh_table("dlock_denied");
    backend(&table).await;
    let superuser = psql("SELECT rolsuper FROM pg_roles WHERE rolname = current_user") == "t";
    let (denied_url, role) = if superuser {
        // A superuser passes every privilege check: use a role that may only read.
        let role = fresh_table("dlock_reader");
        psql(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD 'reader'; GRANT SELECT ON \"{table}\" TO {role}"
        ));
        let rest = url().split_once('@').expect("user@host").1.to_string();
        (format!("postgres://{role}:reader@{rest}"), Some(role))
    } else {
        // The owner may revoke its own privileges.
        psql(&format!(
            "REVOKE INSERT, UPDATE ON \"{table}\" FROM CURRENT_USER"
        ));
        (url(), None)
    };
    let denied = Arc::new(
        PostgresBackend::builder()
            .url(denied_url)
            .table(&table)
            .build()
            .expect("settings"),
    );
    let err = Lock::new("x")
        .timeout(Duration::from_secs(30))
        .acquire_on(denied)
        .await
        .expect_err("no INSERT/UPDATE");
    assert!(!err.is_temporary(), "{err}");
    let text = err.to_string();
    assert!(text.contains("permission denied"), "{text}");
    assert!(
        text.contains(&format!("GRANT SELECT, INSERT, UPDATE ON \"{table}\""))
            && text.contains(&format!("GRANT USAGE ON SEQUENCE \"{table}_fencing\"")),
        "{text}"
    );
    psql(&format!(
        "DROP TABLE \"{table}\"; DROP SEQUENCE \"{table}_fencing\""
    ));
    if let Some(role) = role {
        psql(&format!("DROP ROLE {role}"));
    }
}

#[test]
fn urls_and_bad_settings() {
    let check = |result: Result<PostgresBackend, Error>, expected: &str| {
        let err = result.expect_err(expected);
        assert!(matches!(err, Error::Config { .. }), "{err}");
        assert!(err.to_string().contains(expected), "{err}");
    };
    check(PostgresBackend::builder().build(), "no connection URL");
    check(
        PostgresBackend::from_url("postgres://h/db?sslmode=require"),
        "without TLS",
    );
    check(
        PostgresBackend::from_url("postgres://h/db?table=x;drop"),
        "not a table name",
    );
    check(
        PostgresBackend::from_url("postgres://h/db?table=Robert'); DROP TABLE students;--"),
        "not a table name",
    );
    check(
        PostgresBackend::from_url("postgres://h/db?listen=perhaps"),
        "listen=true or listen=false",
    );
    check(
        PostgresBackend::from_url("postgres://h:notaport/db"),
        "cannot be parsed",
    );
    check(
        PostgresBackend::builder()
            .url("postgres://h/db")
            .pool_size(0)
            .build(),
        "pool size",
    );
    check(
        PostgresBackend::builder()
            .url("postgres://h/db")
            .request_timeout(Duration::ZERO)
            .build(),
        "request timeout",
    );
    check(
        PostgresBackend::builder().url("dbname=x user=y").build(),
        "names no host",
    );
    let backend = dlock_runtime::backend_from_url(
        "postgresql://app:s3cret@db1:5433/app?table=ops.locks&listen=false&connect_timeout=2",
    )
    .expect("a postgresql:// URL");
    assert_eq!(backend.kind(), "postgres");
    assert!(!backend.capabilities().notified_waiting);
    assert!(backend.capabilities().leases && backend.capabilities().fencing_tokens);
    let shown = format!("{backend:?}");
    assert!(
        shown.contains("db1:5433/app") && shown.contains("ops.locks"),
        "{shown}"
    );
    assert!(!shown.contains("s3cret"), "{shown}");
    let keyed = PostgresBackend::builder()
        .url("host=db1 port=5433 user=app password=s3cret dbname=app")
        .table("locks")
        .build()
        .expect("a libpq key=value string");
    assert!(!format!("{keyed:?}").contains("s3cret"));
}

/// `from_env` is checked in a child process (this same test binary), so the variables it sets
/// never leak into other tests.
#[test]
fn from_env_reads_the_variables() {
    let table = "dlock_from_env";
    create_table(table);
    servers::run_from_env_child(&[
        ("DLOCK_POSTGRES_URL", &url_with("table=ignored_by_the_next")),
        ("DLOCK_POSTGRES_TABLE", table),
    ]);
}

#[tokio::test]
#[ignore = "run by from_env_reads_the_variables, in a child process with the variables set"]
async fn from_env_child() {
    let backend = PostgresBackend::from_env()
        .build()
        .expect("from the environment");
    assert!(
        format!("{backend:?}").contains("dlock_from_env"),
        "{backend:?}"
    );
    let guard = Lock::new(fresh_name("env"))
        .acquire_on(Arc::new(backend))
        .await
        .expect("acquire through the environment's settings");
    guard.release().await.expect("release");
}

#[tokio::test]
async fn names_are_bound_parameters_never_sql() {
    let table = "dlock_names";
    let backend: Arc<dyn Backend> = Arc::new(backend(table).await);
    let base = fresh_name("names");
    let tricky = [
        format!("{base}/'; DROP TABLE {table}; --"),
        format!("{base}/\"quoted\" \\ backslash"),
        format!("{base}/%_ wildcards"),
        format!("{base}/ünïcødé ✓"),
        format!("{base}/{}", "n".repeat(1024 - base.len() - 1)),
    ];
    let guards = servers::acquire_each(&backend, &tricky).await;
    // A prefix is matched as text: `%` and `_` are not wildcards.
    servers::assert_lists(&*backend, &format!("{base}/%_"), &[&tricky[2]]).await;
    servers::assert_lists(&*backend, &format!("{base}/_"), &[]).await;
    let all: Vec<&str> = tricky.iter().map(String::as_str).collect();
    servers::assert_lists(&*backend, &format!("{base}/"), &all).await;
    servers::release_all_and_refuse_a_long_name(&backend, guards).await;
    assert_eq!(
        psql(&format!("SELECT count(*) > 0 FROM \"{table}\"")),
        "t",
        "the table is still there"
    );
}

#[tokio::test]
async fn fencing_tokens_keep_increasing_after_the_row_is_deleted() {
    let table = "dlock_fencing";
    let backend = Arc::new(backend(table).await);
    let lock = fresh_name("fencing");
    let first = Lock::new(&lock)
        .acquire_on(backend.clone())
        .await
        .expect("acquire");
    let token = first.fencing_token().expect("a token");
    first.release().await.expect("release");
    let row = psql(&format!(
        "SELECT fencing_token, owner IS NULL FROM \"{table}\" WHERE name = '{lock}'"
    ));
    assert_eq!(
        row,
        format!("{token}|t"),
        "release keeps the row and its token"
    );
    psql(&format!("DELETE FROM \"{table}\" WHERE name = '{lock}'"));
    let second = Lock::new(&lock)
        .acquire_on(backend.clone())
        .await
        .expect("acquire after the row was deleted");
    let next = second.fencing_token().expect("a token");
    assert!(next > token, "token {next} after {token}: restarted");
    second.release().await.expect("release");
}

#[tokio::test]
async fn expiry_is_decided_by_the_servers_clock() {
    let backend = backend("dlock_expiry").await;
    let lock = name(&fresh_name("expiry"));
    let dead =
        servers::assert_short_lease_is_held(&backend, &lock, Duration::from_millis(300)).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        backend.inspect(&lock).await.expect("inspect").is_none(),
        "an expired lease shows as free"
    );
    // A plain attempt (no takeover version) takes it: the server's now() passed expires_at.
    servers::assert_expired_lease_is_replaced(&backend, &lock, dead).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_releaser_that_asks_again_lets_the_woken_waiter_in_first() {
    // Two backend instances: to the runtime, two processes.
    let a: Arc<dyn Backend> = Arc::new(backend("dlock_turns").await);
    let b: Arc<dyn Backend> = Arc::new(backend("dlock_turns").await);
    let out_of_order = servers::turns_taken_out_of_order(&a, &b, &fresh_name("turns"), 10).await;
    // On a loaded machine a woken waiter can, once, be slower than the releaser's pause.
    assert!(
        out_of_order <= 1,
        "a releaser overtook the waiter it had woken {out_of_order} times"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_wakes_a_waiting_process_within_milliseconds() {
    let holder: Arc<dyn Backend> = Arc::new(backend("dlock_wake").await);
    // Another backend instance: to the runtime, another process (no shared local queue).
    let waiter: Arc<dyn Backend> = Arc::new(backend("dlock_wake").await);
    // The first wait of a backend also opens its listening connection (SCRAM authentication
    // alone takes a few hundred milliseconds in a debug build); the waiter polls meanwhile, so
    // that handoff is not counted. Without the notification the waiter would sleep until its
    // 10 s recheck.
    servers::assert_release_wakes_another_process_within(
        &holder,
        &waiter,
        true,
        Duration::from_millis(250),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_listening_connection_is_replaced_and_waiters_still_wake() {
    let app = fresh_table("dlock_relisten");
    let holder: Arc<dyn Backend> = Arc::new(backend("dlock_wake").await);
    let waiter: Arc<dyn Backend> = Arc::new(
        PostgresBackend::builder()
            .url(url_with(&format!("application_name={app}")))
            .table("dlock_wake")
            .build()
            .expect("settings"),
    );
    let lock = fresh_name("relisten");
    let guard = servers::hold(&holder, &lock).await;
    let waiting = servers::spawn_waiter(&waiter, &lock);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let listeners = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{app} (listener)'"
    );
    assert_eq!(psql(&listeners), "1", "one listening connection");
    psql(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{app} (listener)'"
    ));
    // It reconnects after a short pause; then a release wakes the waiter as before.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(psql(&listeners), "1", "listening again");
    let got =
        servers::assert_release_wakes_within(guard, waiting, Duration::from_millis(250)).await;
    got.release().await.expect("release");
    let _ = servers::handoff(&holder, &waiter, &fresh_name("relisten")).await;
}

#[tokio::test]
async fn waiters_poll_when_notifications_are_off() {
    let holder: Arc<dyn Backend> = Arc::new(backend("dlock_wake").await);
    let waiter: Arc<dyn Backend> = Arc::new(
        PostgresBackend::builder()
            .url(url_with("listen=false"))
            .table("dlock_wake")
            .build()
            .expect("settings"),
    );
    servers::assert_polling_waiter_wakes(&holder, &waiter).await;
}

#[tokio::test]
async fn force_release_frees_only_the_version_seen_and_wakes_waiters() {
    let backend: Arc<dyn Backend> = Arc::new(backend("dlock_force").await);
    let waiter: Arc<dyn Backend> = Arc::new(settings("dlock_force").build().expect("settings"));
    servers::assert_force_release_frees_only_the_version_seen(&backend, &waiter).await;
}

/// The lock's statements (the extended protocol's Parse message carries their text), not the
/// listener's `LISTEN` and pings or the connection start-up.
fn postgres_lock_request(request: &[u8]) -> bool {
    request.first() == Some(&b'P') && dlock_tests::fault_matrix::contains(request, "dlock_faults")
}

fn fault_target() -> dlock_tests::fault_matrix::Target {
    let url = url();
    let (credentials, rest) = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .expect("postgres://user:password@host:port/db");
    let (host, database) = rest.split_once('/').expect("a database");
    let upstream = host.parse().expect("host:port");
    let (credentials, database) = (credentials.to_string(), database.to_string());
    create_table_in_background("dlock_faults");
    dlock_tests::fault_matrix::Target {
        name: "postgres",
        upstream,
        through: Box::new(move |proxy| {
            Arc::new(
                PostgresBackend::builder()
                    .url(format!(
                        "postgres://{credentials}@{}/{database}",
                        proxy.addr()
                    ))
                    .table("dlock_faults")
                    .build()
                    .expect("settings"),
            )
        }),
        direct: Arc::new(settings("dlock_faults").build().expect("settings")),
        requests: postgres_lock_request,
        http: false,
        multiplexed: false,
    }
}

/// `fault_target` is called inside a test's runtime: create the table from another thread.
fn create_table_in_background(table: &'static str) {
    std::thread::spawn(move || create_table(table))
        .join()
        .expect("create the table");
}

dlock_tests::fault_matrix_tests!(fault_target());
