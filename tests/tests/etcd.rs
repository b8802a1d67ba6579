//! The etcd backend against Debian's etcd 3.4 on 127.0.0.1 (started by tests/run-all.sh, which
//! exports `DLOCK_TEST_ETCD_ENDPOINT`). Raw requests for set-up (deleting a key, enabling
//! authentication on a separate server) go through etcd's JSON gateway (`/v3/...`) with curl.

use dlock_runtime::{Backend, EtcdBackend, Lock};
use dlock_tests::fault_proxy::FaultProxy;
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

/// `http://127.0.0.1:PORT`
fn endpoint() -> String {
    stand_in("DLOCK_TEST_ETCD_ENDPOINT")
}

/// `127.0.0.1:PORT`
fn host() -> String {
    endpoint()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

/// The URL of the test server with a key prefix.
fn url(prefix: &str) -> String {
    format!("etcd://{}/{prefix}", host())
}

fn backend(prefix: &str) -> EtcdBackend {
    EtcdBackend::builder()
        .endpoint(endpoint())
        .prefix(prefix)
        .build()
        .expect("settings")
}

/// Standard base64, for the JSON gateway's byte fields.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// POSTs `body` to etcd's JSON gateway at `endpoint` (`http://host:port`); returns the answer.
fn gateway(endpoint: &str, path: &str, body: serde_json::Value) -> serde_json::Value {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-X", "POST", "-d"])
        .arg(body.to_string())
        .arg(format!("{endpoint}{path}"))
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{path}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

dlock_runtime::conformance_tests!(
    conformance,
    backend("dlock-conformance/"),
    Duration::from_secs(1)
);

#[test]
fn four_processes_never_overlap() {
    assert_exclusive_across_processes(Path::new(WORKER), &url("dlock-stress"), 4, 125);
}

#[test]
fn a_killed_holders_lock_is_taken_over_after_its_lease() {
    assert_takeover_after_lease(Path::new(WORKER), &url("dlock-killed"));
}

#[tokio::test]
async fn a_retried_acquire_that_had_landed_is_ours() {
    let backend = backend("dlock-retries/");
    let (first, holder) = assert_repeated_acquire_is_ours(&backend).await;
    assert_eq!(holder.fencing_token, first.fencing_token);
    assert_eq!(
        holder.fencing_token.map(|t| t.to_string()).as_deref(),
        Some(first.version.as_str()),
        "a fresh key: its create revision is its mod revision"
    );
}

#[tokio::test]
async fn an_unreachable_server_is_a_clear_error_fast() {
    let backend = EtcdBackend::from_url("etcd://127.0.0.1:9/dlock").expect("settings");
    let started = Instant::now();
    assert_unreachable_is_explained(Arc::new(backend), "cannot reach etcd at 127.0.0.1:9").await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Several endpoints, none up: all are named.
    let backend = EtcdBackend::from_url("etcd://127.0.0.1:9,127.0.0.1:7/dlock").expect("settings");
    let err = Lock::new("x")
        .acquire_on(Arc::new(backend))
        .await
        .expect_err("nothing listens");
    assert!(err.is_temporary(), "{err}");
    assert!(
        err.to_string()
            .contains("cannot reach etcd at 127.0.0.1:9,127.0.0.1:7"),
        "{err}"
    );
}

/// A free TCP port on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A separate etcd server (with its own data directory), stopped when dropped.
struct OwnEtcd {
    child: Child,
    endpoint: String,
    _dir: tempfile::TempDir,
}

impl OwnEtcd {
    fn start() -> OwnEtcd {
        let dir = tempfile::tempdir().expect("tempdir");
        let (client, peer) = (free_port(), free_port());
        let endpoint = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .args(["--name", "dlock-auth-test", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &endpoint])
            .args(["--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("dlock-auth-test={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd (Debian's etcd-server)");
        let etcd = OwnEtcd {
            child,
            endpoint,
            _dir: dir,
        };
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let health = Command::new("curl")
                .args(["-sS", "--max-time", "1"])
                .arg(format!("{}/health", etcd.endpoint))
                .output()
                .expect("curl");
            if String::from_utf8_lossy(&health.stdout).contains("\"health\":\"true\"") {
                return etcd;
            }
            assert!(Instant::now() < until, "the separate etcd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for OwnEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn wrong_credentials_are_a_permanent_error() {
    let etcd = OwnEtcd::start();
    let at = etcd.endpoint.clone();
    // etcdctl is not installed with Debian's etcd-server: the gateway does what
    // `etcdctl user add root; etcdctl user grant-role root root; etcdctl auth enable` does.
    gateway(
        &at,
        "/v3/auth/user/add",
        serde_json::json!({"name": "root", "password": "rootpw"}),
    );
    gateway(
        &at,
        "/v3/auth/user/grant",
        serde_json::json!({"user": "root", "role": "root"}),
    );
    let enabled = gateway(&at, "/v3/auth/enable", serde_json::json!({}));
    assert!(enabled.get("header").is_some(), "auth enable: {enabled}");
    let host = at.trim_start_matches("http://");

    let wrong = Arc::new(
        EtcdBackend::from_url(&format!("etcd://root:not-the-password@{host}/dlock"))
            .expect("settings"),
    );
    assert!(
        !format!("{wrong:?}").contains("not-the-password"),
        "Debug shows no password"
    );
    servers::assert_refused(wrong, "refused the credentials", Some("not-the-password")).await;

    let anonymous =
        Arc::new(EtcdBackend::from_url(&format!("etcd://{host}/dlock")).expect("settings"));
    servers::assert_refused(anonymous, "sent no user", None).await;

    let right = Arc::new(
        EtcdBackend::from_url(&format!("etcd://root:rootpw@{host}/dlock")).expect("settings"),
    );
    let guard = Lock::new("x")
        .acquire_on(right)
        .await
        .expect("the right password works");
    guard.release().await.expect("release");
}

#[test]
fn urls_and_bad_settings() {
    let check = |result: Result<EtcdBackend, dlock_runtime::Error>, expected: &str| {
        let err = result.expect_err(expected);
        assert!(matches!(err, dlock_runtime::Error::Config { .. }), "{err}");
        assert!(err.to_string().contains(expected), "{err}");
    };
    check(EtcdBackend::builder().build(), "no endpoint");
    check(EtcdBackend::from_url("etcds://h:2379/x"), "no TLS support");
    check(
        EtcdBackend::from_url("etcd://h:2379/x?pool=3"),
        "unknown URL option",
    );
    check(
        EtcdBackend::from_url("etcd://h:2379//"),
        "must not be empty",
    );
    let backend = dlock_runtime::backend_from_url(&url("dlock-from-url")).expect("from_url arm");
    assert_eq!(backend.kind(), "etcd");
}

#[test]
fn from_env_reads_the_variables() {
    servers::run_from_env_child(&[
        (
            "DLOCK_ETCD_ENDPOINTS",
            &format!("http://127.0.0.1:9,{}", endpoint()),
        ),
        ("DLOCK_ETCD_PREFIX", "dlock-from-env"),
    ]);
}

#[tokio::test]
#[ignore = "run by from_env_reads_the_variables, in a child process with the variables set"]
async fn from_env_child() {
    let backend = EtcdBackend::from_env()
        .build()
        .expect("from the environment");
    assert_eq!(backend.prefix(), "dlock-from-env/");
    let guard = Lock::new(fresh_name("env"))
        .acquire_on(Arc::new(backend))
        .await
        .expect("acquire through the environment's settings (one endpoint of two is up)");
    guard.release().await.expect("release");
}

#[tokio::test]
async fn names_are_keys_under_the_prefix() {
    let backend: Arc<dyn Backend> = Arc::new(backend("dlock-names/"));
    let base = fresh_name("names");
    let tricky = [
        format!("{base}/../../escape"),
        format!("{base}/\"quoted\" \\ backslash"),
        format!("{base}/%_ wildcards *"),
        format!("{base}/ünïcødé ✓"),
        format!("{base}/{}", "n".repeat(1024 - base.len() - 1)),
    ];
    let guards = servers::acquire_each(&backend, &tricky).await;
    // The key is exactly prefix + name: `..` does not leave the prefix.
    let read = gateway(
        &endpoint(),
        "/v3/kv/range",
        serde_json::json!({"key": base64(format!("dlock-names/{}", tricky[0]).as_bytes())}),
    );
    assert_eq!(read["count"], "1", "{read}");
    // A prefix is matched as bytes: `%`, `_` and `*` are not wildcards.
    servers::assert_lists(&*backend, &format!("{base}/%_"), &[&tricky[2]]).await;
    servers::assert_lists(&*backend, &format!("{base}/_"), &[]).await;
    let all: Vec<&str> = tricky.iter().map(String::as_str).collect();
    servers::assert_lists(&*backend, &format!("{base}/"), &all).await;
    servers::release_all_and_refuse_a_long_name(&backend, guards).await;
}

#[tokio::test]
async fn fencing_tokens_keep_increasing_after_the_key_is_deleted() {
    let backend = Arc::new(backend("dlock-fencing/"));
    let lock = fresh_name("fencing");
    let first = Lock::new(&lock)
        .acquire_on(backend.clone())
        .await
        .expect("acquire");
    let token = first.fencing_token().expect("a token");
    // Deleted by hand, under the holder.
    gateway(
        &endpoint(),
        "/v3/kv/deleterange",
        serde_json::json!({"key": base64(format!("dlock-fencing/{lock}").as_bytes())}),
    );
    let err = first.release().await;
    assert!(
        err.is_ok() || matches!(err, Err(dlock_runtime::Error::Lost { .. })),
        "{err:?}"
    );
    let second = Lock::new(&lock)
        .acquire_on(backend.clone())
        .await
        .expect("acquire after the key was deleted");
    let next = second.fencing_token().expect("a token");
    assert!(next > token, "token {next} after {token}: restarted");
    second.release().await.expect("release");
}

#[tokio::test]
async fn expiry_is_decided_by_the_servers_lease() {
    let backend = backend("dlock-expiry/");
    let lock = name(&fresh_name("expiry"));
    let dead =
        servers::assert_short_lease_is_held(&backend, &lock, Duration::from_millis(300)).await;
    // Never renewed: etcd deletes the key when the lease (1 s asked for; etcd's minimum,
    // about 2 s, granted) runs out on the leader's clock.
    let started = Instant::now();
    while backend.inspect(&lock).await.expect("inspect").is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the lease never ran out"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "a 300 ms lease ended on the server after {:?}",
        started.elapsed()
    );
    // A plain attempt (no takeover version) takes it.
    servers::assert_expired_lease_is_replaced(&backend, &lock, dead).await;
}

// No turns test here (`servers::turns_taken_out_of_order`, run on Redis and PostgreSQL): on
// etcd it does not tell the courtesy from its absence. Without the pause the releaser overtook
// its woken waiter 0-2 times in 10 turns, with it up to 3 times under a loaded test run: an
// etcd acquisition (a transaction and a keep-alive, each synced to disk) races the watch
// either way. The 4 x 100 bench shows the effect instead (barging 62% -> 6%).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_wakes_a_waiting_process_within_milliseconds() {
    let holder: Arc<dyn Backend> = Arc::new(backend("dlock-wake/"));
    // Another backend instance: to the runtime, another process (no shared local queue).
    let waiter: Arc<dyn Backend> = Arc::new(backend("dlock-wake/"));
    // Every handoff counts. Without the watch the waiter would sleep until its 10 s recheck.
    servers::assert_release_wakes_another_process_within(
        &holder,
        &waiter,
        false,
        Duration::from_millis(250),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_watch_connection_is_replaced_and_waiters_still_wake() {
    let upstream = dlock_tests::fault_matrix::upstream_of(&endpoint());
    let proxy = FaultProxy::start(upstream);
    let holder: Arc<dyn Backend> = Arc::new(backend("dlock-rewatch/"));
    let waiter: Arc<dyn Backend> = Arc::new(
        EtcdBackend::builder()
            .endpoint(proxy.url())
            .prefix("dlock-rewatch/")
            .build()
            .expect("settings"),
    );
    let lock = fresh_name("rewatch");
    let guard = servers::hold(&holder, &lock).await;
    let waiting = servers::spawn_waiter(&waiter, &lock);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(proxy.connections(), 1, "the waiter's connection");
    // The connection carrying the watch drops (a server restart, to the client).
    proxy.disconnect_all();
    // The waiter looks again after a short pause, reconnects and watches anew.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(proxy.connections(), 1, "connected again");
    let got =
        servers::assert_release_wakes_within(guard, waiting, Duration::from_millis(250)).await;
    got.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_revision_was_compacted_still_wakes_on_release() {
    let holder: Arc<dyn Backend> = Arc::new(backend("dlock-compacted/"));
    // The waiter talks through a proxy that counts its requests.
    let proxy = FaultProxy::start(dlock_tests::fault_matrix::upstream_of(&endpoint()));
    let waiter: Arc<dyn Backend> = Arc::new(
        EtcdBackend::builder()
            .endpoint(proxy.url())
            .prefix("dlock-compacted/")
            .build()
            .expect("settings"),
    );
    let lock = fresh_name("compacted");
    let guard = servers::hold(&holder, &lock).await;
    // Other writes, then a compaction past the holder's version: a watch from the revision
    // after it is refused by etcd.
    for _ in 0..3 {
        Lock::new(fresh_name("compacted-other"))
            .acquire_on(holder.clone())
            .await
            .expect("acquire")
            .release()
            .await
            .expect("release");
    }
    let now = gateway(
        &endpoint(),
        "/v3/kv/range",
        serde_json::json!({"key": base64(b"x")}),
    );
    let revision = now["header"]["revision"]
        .as_str()
        .expect("revision")
        .to_string();
    gateway(
        &endpoint(),
        "/v3/kv/compaction",
        serde_json::json!({"revision": revision, "physical": true}),
    );
    let waiting = servers::spawn_waiter(&waiter, &lock);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = proxy.requests();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let requests = proxy.requests() - before;
    eprintln!("requests while waiting: {requests}");
    // A waiter that found no history to watch would try again and again.
    assert!(requests < 4, "{requests} requests in a second of waiting");
    let got =
        servers::assert_release_wakes_within(guard, waiting, Duration::from_millis(250)).await;
    got.release().await.expect("release");
}

#[tokio::test]
async fn force_release_frees_only_the_version_seen_and_wakes_waiters() {
    let backend: Arc<dyn Backend> = Arc::new(backend("dlock-force/"));
    let waiter: Arc<dyn Backend> = Arc::new(self::backend("dlock-force/"));
    servers::assert_force_release_frees_only_the_version_seen(&backend, &waiter).await;
}

/// Which client writes start an etcd request. etcd speaks gRPC over one multiplexed HTTP/2
/// connection: a request is a HEADERS frame (whose path HPACK encodes, after its first use on
/// the connection as an index into the connection's header table) followed by DATA frames
/// (the protobuf, with the key) that the client often writes separately. The proxy's matcher
/// sees only the first client write after the server last spoke, so it cannot tell a lock
/// transaction from a lease grant reliably; this one matches every write that starts a
/// request (it holds a HEADERS frame), and none that only carries pings, window updates or
/// settings. Faults thus land on lease grants, keep-alives, watches and transactions alike.
fn etcd_request(request: &[u8]) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut rest = request.strip_prefix(PREFACE).unwrap_or(request);
    while rest.len() >= 9 {
        let length =
            (usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]);
        if rest[3] == 0x1 {
            return true;
        }
        rest = rest.get(9 + length..).unwrap_or_default();
    }
    dlock_tests::fault_matrix::contains(request, "dlock-faults/")
}

fn fault_target() -> dlock_tests::fault_matrix::Target {
    dlock_tests::fault_matrix::Target {
        name: "etcd",
        upstream: dlock_tests::fault_matrix::upstream_of(&endpoint()),
        through: Box::new(move |proxy| {
            Arc::new(
                EtcdBackend::builder()
                    .endpoint(proxy.url())
                    .prefix("dlock-faults/")
                    .build()
                    .expect("settings"),
            )
        }),
        direct: Arc::new(backend("dlock-faults/")),
        requests: etcd_request,
        http: false,
        multiplexed: true,
    }
}

dlock_tests::fault_matrix_tests!(fault_target());

/// A waiter's refused attempts share its acquisition's lease: one grant, then one transaction
/// per attempt (a lease granted and revoked per attempt was three calls each). The lock
/// taken on that older lease is kept alive first, so etcd's lease runs its full TTL from the
/// acquisition, not from the grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_attempts_of_one_acquisition_share_a_lease_renewed_when_it_wins() {
    use dlock_runtime::{AcquireOutcome, AcquireRequest, Owner};
    let holder = backend("dlock-spare/");
    let proxy = FaultProxy::start(dlock_tests::fault_matrix::upstream_of(&endpoint()));
    let waiter = EtcdBackend::builder()
        .endpoint(proxy.url())
        .prefix("dlock-spare/")
        .build()
        .expect("settings");
    let lock = name(&fresh_name("spare"));
    let AcquireOutcome::Acquired(held) =
        servers::raw_acquire(&holder, &lock, Duration::from_secs(30)).await
    else {
        panic!("a fresh lock is free")
    };
    waiter.inspect(&lock).await.expect("connect");
    let ttl = Duration::from_secs(10);
    let request = AcquireRequest::new(lock.clone(), Owner::generate(), ttl);
    let before = proxy.requests();
    for _ in 0..10 {
        let outcome = waiter.try_acquire(&request).await.expect("attempt");
        assert!(matches!(outcome, AcquireOutcome::Busy(_)), "{outcome:?}");
    }
    // The proxy counts the HTTP/2 traffic that follows an answer (window updates, pings) as a
    // request too: up to twice the calls made.
    let refused = proxy.requests() - before;
    eprintln!("ten refused attempts: {refused} requests on the wire");
    assert!(
        refused <= 30,
        "one grant and ten transactions (a lease per attempt would be 30 calls), not {refused}"
    );

    // Three seconds later the lease granted for the first attempt has ~7 s left; the lock
    // taken on it must still have its full 10 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    holder.release(&held).await.expect("release");
    let AcquireOutcome::Acquired(mine) = waiter.try_acquire(&request).await.expect("attempt")
    else {
        panic!("released")
    };
    let key = format!("dlock-spare/{lock}");
    let range = gateway(
        &endpoint(),
        "/v3/kv/range",
        serde_json::json!({"key": base64(key.as_bytes())}),
    );
    let lease = range["kvs"][0]["lease"]
        .as_str()
        .expect("the key has a lease");
    let alive = gateway(
        &endpoint(),
        "/v3/lease/timetolive",
        serde_json::json!({"ID": lease}),
    );
    let left: u64 = alive["TTL"].as_str().expect("TTL").parse().expect("number");
    assert!(
        left >= 9,
        "the lease was renewed when the lock was taken: {alive}"
    );
    waiter.release(&mine).await.expect("release");
}
