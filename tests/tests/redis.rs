//! The Redis backend against Debian's redis-server on 127.0.0.1 (started by tests/run-all.sh,
//! which exports `DLOCK_TEST_REDIS_URL`). Raw commands for set-up (ACL users, CLIENT KILL,
//! deleting a key) go through `redis-cli`; the tests that need a server of their own (a
//! password, a replica) start one on a free port and kill it at the end.

use dlock_runtime::{AcquireOutcome, AcquireRequest, Backend, Error, Lock, Owner, RedisBackend};
use dlock_tests::servers::{self, name};
use dlock_tests::{
    assert_exclusive_across_processes, assert_repeated_acquire_is_ours,
    assert_takeover_after_lease, assert_unreachable_is_explained, fresh_name, stand_in,
};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WORKER: &str = env!("CARGO_BIN_EXE_dlock-worker");

/// `redis://127.0.0.1:PORT`
fn url() -> String {
    stand_in("DLOCK_TEST_REDIS_URL")
}

/// The URL with query options.
fn url_with(options: &str) -> String {
    let url = url();
    let base = url.trim_end_matches('/');
    format!("{base}/?{options}")
}

fn settings(prefix: &str) -> dlock_runtime::RedisBuilder {
    RedisBackend::builder().url(url()).prefix(prefix)
}

/// A backend on its own key prefix, connected.
async fn backend(prefix: &str) -> RedisBackend {
    let backend = settings(prefix).build().expect("settings");
    backend.inspect(&name("warm-up")).await.expect("connect");
    backend
}

/// Runs `redis-cli` against the test server; returns its output.
fn cli(args: &[&str]) -> String {
    cli_at(&url(), args)
}

fn cli_at(url: &str, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .arg("-u")
        .arg(url)
        .args(args)
        .output()
        .expect("run redis-cli (redis-tools)");
    assert!(
        out.status.success(),
        "redis-cli {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A prefix no other run uses.
fn fresh_prefix(what: &str) -> String {
    format!("dlock-test:{what}:{}:", &Owner::generate().id[..10])
}

/// A redis-server of the test's own on a free port, killed when dropped.
struct OwnServer {
    child: Child,
    port: u16,
}

impl OwnServer {
    fn start(extra: &[&str]) -> OwnServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("a free port")
            .local_addr()
            .expect("addr")
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let server = OwnServer { child, port };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

dlock_runtime::conformance_tests!(
    conformance,
    backend("dlock-conformance:").await,
    Duration::from_secs(1)
);

#[test]
fn four_processes_never_overlap() {
    assert_exclusive_across_processes(
        Path::new(WORKER),
        &url_with(&format!("prefix={}", fresh_prefix("stress"))),
        4,
        125,
    );
}

#[test]
fn a_killed_holders_lock_is_taken_over_after_its_lease() {
    assert_takeover_after_lease(Path::new(WORKER), &url_with("prefix=dlock-killed:"));
}

#[tokio::test]
async fn a_retried_acquire_that_had_landed_is_ours() {
    let (first, holder) = assert_repeated_acquire_is_ours(&backend("dlock-retries:").await).await;
    assert_eq!(holder.fencing_token, first.fencing_token);
    assert!(holder.acquired_at.is_some());
    assert_eq!(holder.ttl, Some(Duration::from_secs(30)));
}

#[tokio::test]
async fn an_unreachable_server_is_a_clear_error_fast() {
    let backend = RedisBackend::from_url("redis://127.0.0.1:9/").expect("settings");
    let started = Instant::now();
    assert_unreachable_is_explained(Arc::new(backend), "cannot reach Redis at 127.0.0.1:9").await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let err = RedisBackend::from_url("redis://127.0.0.1:9/")
        .expect("settings")
        .inspect(&name("x"))
        .await
        .expect_err("nothing listens");
    assert!(err.is_temporary(), "{err}");
}

/// Asserts that taking a lock through `backend` fails at once, permanently, saying `expected`.
async fn assert_refused(backend: RedisBackend, expected: &str, secret: Option<&str>) {
    servers::assert_refused(Arc::new(backend), expected, secret).await;
}

#[tokio::test]
async fn wrong_or_missing_passwords_are_a_permanent_error() {
    let server = OwnServer::start(&["--requirepass", "right-password"]);
    let port = server.port;
    let wrong = RedisBackend::from_url(&format!("redis://:not-the-password@127.0.0.1:{port}/"))
        .expect("settings");
    assert!(!format!("{wrong:?}").contains("not-the-password"));
    assert_refused(wrong, "refused the credentials", Some("not-the-password")).await;
    let none = RedisBackend::from_url(&format!("redis://127.0.0.1:{port}/")).expect("settings");
    assert_refused(none, "requires a password", None).await;
    let right = Arc::new(
        RedisBackend::from_url(&format!("redis://:right-password@127.0.0.1:{port}/"))
            .expect("settings"),
    );
    Lock::new("x")
        .acquire_on(right)
        .await
        .expect("the right password works")
        .release()
        .await
        .expect("release");
}

#[tokio::test]
async fn an_acl_user_with_a_wrong_password_is_refused() {
    let user = format!("dlock-test-{}", &Owner::generate().id[..10]);
    cli(&[
        "ACL",
        "SETUSER",
        &user,
        "on",
        ">user-password",
        "~*",
        "&*",
        "+@all",
    ]);
    let rest = url().split_once("://").expect("scheme").1.to_string();
    let wrong = RedisBackend::from_url(&format!("redis://{user}:wrong@{rest}")).expect("settings");
    assert_refused(wrong, "refused the credentials", Some("wrong@")).await;
    let right = Arc::new(
        RedisBackend::from_url(&format!("redis://{user}:user-password@{rest}")).expect("settings"),
    );
    Lock::new(fresh_name("acl"))
        .acquire_on(right)
        .await
        .expect("the right user and password work")
        .release()
        .await
        .expect("release");
    cli(&["ACL", "DELUSER", &user]);
}

#[tokio::test]
async fn a_read_only_replica_is_a_clear_error() {
    let primary = OwnServer::start(&[]);
    let replica = OwnServer::start(&["--replicaof", "127.0.0.1", &primary.port.to_string()]);
    let backend = Arc::new(
        RedisBackend::from_url(&format!("redis://127.0.0.1:{}/", replica.port)).expect("settings"),
    );
    let err = Lock::new("x")
        .acquire_on(backend)
        .await
        .expect_err("a replica refuses writes");
    assert!(err.to_string().contains("read-only replica"), "{err}");
    assert!(
        err.to_string().contains("point the URL at the primary"),
        "{err}"
    );
}

#[tokio::test]
async fn an_out_of_memory_server_is_a_clear_error() {
    let server = OwnServer::start(&["--maxmemory", "1", "--maxmemory-policy", "noeviction"]);
    let backend = Arc::new(
        RedisBackend::from_url(&format!("redis://127.0.0.1:{}/", server.port)).expect("settings"),
    );
    let err = Lock::new("x")
        .acquire_on(backend)
        .await
        .expect_err("no memory");
    assert!(err.to_string().contains("out of memory (OOM"), "{err}");
}

#[tokio::test]
async fn a_key_of_another_program_is_a_clear_error() {
    let prefix = fresh_prefix("wrongtype");
    cli(&["SET", &format!("{prefix}lock:taken"), "not a hash"]);
    let err = Lock::new("taken")
        .acquire_on(Arc::new(settings(&prefix).build().expect("settings")))
        .await
        .expect_err("a string where the hash goes");
    assert!(!err.is_temporary(), "{err}");
    assert!(err.to_string().contains("WRONGTYPE"), "{err}");
    cli(&["DEL", &format!("{prefix}lock:taken")]);
}

#[test]
fn urls_and_bad_settings() {
    let check = |result: Result<RedisBackend, Error>, expected: &str| {
        let err = result.expect_err(expected);
        assert!(matches!(err, Error::Config { .. }), "{err}");
        assert!(err.to_string().contains(expected), "{err}");
    };
    check(RedisBackend::builder().build(), "no server URL");
    check(RedisBackend::from_url("http://cache1/"), "cannot be used");
    check(
        RedisBackend::from_url("redis://cache1/?listen=perhaps"),
        "listen=true or listen=false",
    );
    check(
        RedisBackend::from_url("redis://cache1/?prefix=%ff%fe"),
        "percent-encoded UTF-8",
    );
    check(
        RedisBackend::builder()
            .url("redis://cache1/")
            .prefix("a\nb")
            .build(),
        "control character",
    );
    check(
        RedisBackend::builder()
            .url("redis://cache1/")
            .request_timeout(Duration::ZERO)
            .build(),
        "greater than zero",
    );
    let backend =
        dlock_runtime::backend_from_url("redis://:s3cret@cache1:6380/3?prefix=ci:&listen=false")
            .expect("a redis:// URL");
    assert_eq!(backend.kind(), "redis");
    assert!(!backend.capabilities().notified_waiting);
    assert!(backend.capabilities().leases && backend.capabilities().fencing_tokens);
    let shown = format!("{backend:?}");
    assert!(
        shown.contains("cache1:6380/3") && shown.contains("ci:"),
        "{shown}"
    );
    assert!(!shown.contains("s3cret"), "{shown}");
    let user = RedisBackend::from_url("redis://app:s3cret@cache1/").expect("user and password");
    assert!(!format!("{user:?}").contains("s3cret"));
}

/// `from_env` is checked in a child process (this same test binary), so the variables it sets
/// never leak into other tests.
#[test]
fn from_env_reads_the_variables() {
    servers::run_from_env_child(&[
        ("DLOCK_REDIS_URL", &url_with("prefix=ignored-by-the-next:")),
        ("DLOCK_REDIS_PREFIX", "dlock-from-env:"),
    ]);
}

#[tokio::test]
#[ignore = "run by from_env_reads_the_variables, in a child process with the variables set"]
async fn from_env_child() {
    let backend = RedisBackend::from_env()
        .build()
        .expect("from the environment");
    assert!(
        format!("{backend:?}").contains("dlock-from-env:"),
        "{backend:?}"
    );
    let lock = fresh_name("env");
    let guard = Lock::new(&lock)
        .acquire_on(Arc::new(backend))
        .await
        .expect("acquire through the environment's settings");
    assert_eq!(
        cli(&["EXISTS", &format!("dlock-from-env:lock:{lock}")]),
        "1",
        "the key is under the prefix"
    );
    guard.release().await.expect("release");
}

#[tokio::test]
async fn names_are_keys_and_glob_characters_do_not_leak_into_list() {
    let prefix = fresh_prefix("names");
    let backend: Arc<dyn Backend> = Arc::new(backend(&prefix).await);
    let base = fresh_name("names");
    let tricky = [
        format!("{base}/*"),
        format!("{base}/?x"),
        format!("{base}/[ab]"),
        format!("{base}/\\ backslash"),
        format!("{base}/ünïcødé ✓ ' \" ; EVAL"),
        format!("{base}/{}", "n".repeat(1024 - base.len() - 1)),
    ];
    let mut guards = servers::acquire_each(&backend, &tricky).await;
    // Another lock that a glob would match, but the text does not.
    let other_name = format!("{base}/a");
    let other = Lock::new(&other_name)
        .acquire_on(backend.clone())
        .await
        .expect("acquire");
    servers::assert_lists(&*backend, &format!("{base}/*"), &[&tricky[0]]).await;
    servers::assert_lists(&*backend, &format!("{base}/?"), &[&tricky[1]]).await;
    servers::assert_lists(&*backend, &format!("{base}/[ab"), &[&tricky[2]]).await;
    servers::assert_lists(&*backend, &format!("{base}/\\"), &[&tricky[3]]).await;
    servers::assert_lists(&*backend, &format!("{base}/b"), &[]).await;
    let mut all: Vec<&str> = tricky.iter().map(String::as_str).collect();
    all.push(&other_name);
    servers::assert_lists(&*backend, &format!("{base}/"), &all).await;
    // Keys are exactly the prefix, `lock:` and the name.
    assert_eq!(
        cli(&["EXISTS", &format!("{prefix}lock:{}", tricky[0])]),
        "1"
    );
    guards.push(other);
    servers::release_all_and_refuse_a_long_name(&backend, guards).await;
}

#[tokio::test]
async fn fencing_tokens_keep_increasing_after_release_and_a_lost_counter() {
    let prefix = fresh_prefix("fencing");
    let backend = Arc::new(backend(&prefix).await);
    let lock = fresh_name("fencing");
    let first = Lock::new(&lock)
        .acquire_on(backend.clone())
        .await
        .expect("acquire");
    let token = first.fencing_token().expect("a token");
    first.release().await.expect("release");
    assert_eq!(
        cli(&["GET", &format!("{prefix}fencing:{lock}")]),
        token.to_string(),
        "the counter stays after release"
    );
    assert_eq!(cli(&["EXISTS", &format!("{prefix}lock:{lock}")]), "0");
    let second = Lock::new(&lock)
        .acquire_on(backend.clone())
        .await
        .expect("acquire");
    let next = second.fencing_token().expect("a token");
    assert!(next > token, "token {next} after {token}");
    // The counter deleted under a live record: the next token still exceeds the record's.
    cli(&["DEL", &format!("{prefix}fencing:{lock}")]);
    let lock_name = name(&lock);
    let held = backend
        .inspect(&lock_name)
        .await
        .expect("inspect")
        .expect("held");
    let AcquireOutcome::Acquired(taken) = backend
        .try_acquire(
            &AcquireRequest::new(lock_name.clone(), Owner::generate(), Duration::from_secs(5))
                .replacing(held.version),
        )
        .await
        .expect("takeover")
    else {
        panic!("a takeover at the current version");
    };
    assert!(
        taken.fencing_token.expect("token") > next,
        "{:?} after {next}",
        taken.fencing_token
    );
    // The replaced holder's release changes nothing.
    let _ = second.release().await;
    let now = backend
        .inspect(&lock_name)
        .await
        .expect("inspect")
        .expect("held");
    assert_eq!(now.owner, taken.owner, "the new holder keeps the lock");
    backend.release(&taken).await.expect("release");
}

#[tokio::test]
async fn expiry_is_decided_by_the_servers_clock() {
    let backend = backend("dlock-expiry:").await;
    let lock = name(&fresh_name("expiry"));
    let dead =
        servers::assert_short_lease_is_held(&backend, &lock, Duration::from_millis(300)).await;
    let pttl: i64 = cli(&["PTTL", &format!("dlock-expiry:lock:{lock}")])
        .parse()
        .expect("PTTL");
    assert!(
        (1..=300).contains(&pttl),
        "the key expires with the lease: {pttl}"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(backend.inspect(&lock).await.expect("inspect").is_none());
    servers::assert_expired_lease_is_replaced(&backend, &lock, dead).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_releaser_that_asks_again_lets_the_woken_waiter_in_first() {
    // Two backend instances: to the runtime, two processes.
    let a: Arc<dyn Backend> = Arc::new(backend("dlock-turns:").await);
    let b: Arc<dyn Backend> = Arc::new(backend("dlock-turns:").await);
    let out_of_order = servers::turns_taken_out_of_order(&a, &b, &fresh_name("turns"), 10).await;
    // On a loaded machine a woken waiter can, once, be slower than the releaser's pause.
    assert!(
        out_of_order <= 1,
        "a releaser overtook the waiter it had woken {out_of_order} times"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_wakes_a_waiting_process_within_milliseconds() {
    let holder: Arc<dyn Backend> = Arc::new(backend("dlock-wake:").await);
    // Another backend instance: to the runtime, another process (no shared local queue).
    let waiter: Arc<dyn Backend> = Arc::new(backend("dlock-wake:").await);
    // The first handoff, while the waiter's listener connects, is not counted. Without the
    // notification the waiter would sleep until its recheck (seconds, by the holder's 30 s
    // lease).
    servers::assert_release_wakes_another_process_within(
        &holder,
        &waiter,
        true,
        Duration::from_millis(100),
    )
    .await;
}

/// The ids of the server's connections of `user` whose last command was (or was not) a
/// subscription.
fn connections_of(user: &str, subscribed: bool) -> Vec<String> {
    cli(&["CLIENT", "LIST"])
        .lines()
        .filter(|line| line.contains(&format!(" user={user} ")))
        .filter(|line| line.contains(" sub=1 ") == subscribed)
        .filter_map(|line| {
            line.split(' ')
                .find_map(|f| f.strip_prefix("id="))
                .map(str::to_string)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_are_replaced_and_waiters_still_wake() {
    // A user of its own, so this test finds its connections among the others'.
    let user = format!("dlock-kill-{}", &Owner::generate().id[..10]);
    cli(&["ACL", "SETUSER", &user, "on", ">pw", "~*", "&*", "+@all"]);
    let rest = url().split_once("://").expect("scheme").1.to_string();
    let holder: Arc<dyn Backend> = Arc::new(backend("dlock-kill:").await);
    let waiter: Arc<dyn Backend> = Arc::new(
        RedisBackend::builder()
            .url(format!("redis://{user}:pw@{rest}"))
            .prefix("dlock-kill:")
            .build()
            .expect("settings"),
    );
    let lock = fresh_name("kill");
    let guard = servers::hold(&holder, &lock).await;
    let waiting = servers::spawn_waiter(&waiter, &lock);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let listeners = connections_of(&user, true);
    assert_eq!(listeners.len(), 1, "one listening connection");
    assert_eq!(cli(&["CLIENT", "KILL", "ID", &listeners[0]]), "1");
    // It resubscribes after a short pause; then a release wakes the waiter as before.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = connections_of(&user, true);
    assert_eq!(again.len(), 1, "listening again");
    assert_ne!(again, listeners, "on a new connection");
    let got =
        servers::assert_release_wakes_within(guard, waiting, Duration::from_millis(250)).await;
    // Kill the command connection under a held lock: the next call works (it may fail once
    // while the manager reconnects; the runtime's calls retry it).
    let commands = connections_of(&user, false);
    assert_eq!(commands.len(), 1, "one command connection");
    assert_eq!(cli(&["CLIENT", "KILL", "ID", &commands[0]]), "1");
    got.release()
        .await
        .expect("release after the connection was killed");
    let lock = name(&lock);
    let mut answered = None;
    for _ in 0..3 {
        match waiter.inspect(&lock).await {
            Ok(holder) => {
                answered = Some(holder);
                break;
            }
            Err(e) => {
                assert!(e.is_temporary(), "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert_eq!(
        answered,
        Some(None),
        "the next call works, and the lock is free"
    );
    let _ = servers::handoff(&holder, &waiter, &fresh_name("kill")).await;
    cli(&["ACL", "DELUSER", &user]);
}

#[tokio::test]
async fn waiters_poll_when_notifications_are_off() {
    let holder: Arc<dyn Backend> = Arc::new(backend("dlock-wake:").await);
    let waiter: Arc<dyn Backend> = Arc::new(
        settings("dlock-wake:")
            .notifications(false)
            .build()
            .expect("settings"),
    );
    servers::assert_polling_waiter_wakes(&holder, &waiter).await;
}

#[tokio::test]
async fn force_release_frees_only_the_version_seen_and_wakes_waiters() {
    let backend: Arc<dyn Backend> = Arc::new(backend("dlock-force:").await);
    let waiter: Arc<dyn Backend> = Arc::new(settings("dlock-force:").build().expect("settings"));
    servers::assert_force_release_frees_only_the_version_seen(&backend, &waiter).await;
}

/// The lock's scripts on the fault prefix (EVALSHA/EVAL carry their keys), not reads, the
/// listener's pings or the connection's start-up.
fn redis_lock_request(request: &[u8]) -> bool {
    dlock_tests::fault_matrix::contains(request, "EVAL")
        && dlock_tests::fault_matrix::contains(request, "dlock-faults:")
}

fn fault_target() -> dlock_tests::fault_matrix::Target {
    let upstream = dlock_tests::fault_matrix::upstream_of(&url());
    dlock_tests::fault_matrix::Target {
        name: "redis",
        upstream,
        through: Box::new(move |proxy| {
            Arc::new(
                RedisBackend::builder()
                    .url(format!("redis://{}/", proxy.addr()))
                    .prefix("dlock-faults:")
                    .build()
                    .expect("settings"),
            )
        }),
        direct: Arc::new(settings("dlock-faults:").build().expect("settings")),
        requests: redis_lock_request,
        http: false,
        multiplexed: false,
    }
}

dlock_tests::fault_matrix_tests!(fault_target());
