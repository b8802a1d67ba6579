//! The `dlock` command, end to end: the real binary, run as a pipeline would run it, on the file
//! backend and on every cloud stand-in (S3 and DynamoDB on moto, GCS on fake-gcs-server,
//! MongoDB on SecantusDB; their addresses come from the variables `tests/run-all.sh` exports).
//!
//! The binary is built once per test run by `cargo build -p dlock-cli --bin dlock
//! --message-format=json`, with the cargo running these tests and into the same target
//! directory; its path is read from cargo's own artifact message rather than guessed. This
//! crate does not depend on `dlock-cli`: a bin target of another package cannot be a dependency
//! on stable cargo (artifact dependencies are unstable), and `CARGO_BIN_EXE_*` only names this
//! package's binaries.

use dlock_tests::{fresh_name, stand_in};
use rustix::process::{Pid, Signal};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

/// The `dlock` binary, built on first use.
fn dlock_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(build_dlock)
}

fn build_dlock() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace holds tests/");
    let mut build = Command::new(cargo);
    build.current_dir(workspace).args([
        "build",
        "-p",
        "dlock-cli",
        "--bin",
        "dlock",
        "--message-format=json-render-diagnostics",
    ]);
    // This test binary is TARGET/PROFILE/deps/cli-HASH: build into the same TARGET and PROFILE
    // (CARGO_TARGET_DIR, when set, is inherited and says the same).
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe.parent().and_then(Path::parent).expect("profile dir");
    if std::env::var_os("CARGO_TARGET_DIR").is_none()
        && let Some(target_dir) = profile_dir.parent()
    {
        build.arg("--target-dir").arg(target_dir);
    }
    if profile_dir.file_name().is_some_and(|p| p == "release") {
        build.arg("--release");
    }
    let out = build.output().expect("run cargo build");
    assert!(
        out.status.success(),
        "cargo build -p dlock-cli failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "dlock")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .expect("cargo named the dlock executable")
}

/// Where one test's locks live.
struct Store {
    url: String,
    /// Locks outlive a killed holder (until their ttl), and can be lost.
    leases: bool,
    /// The backend issues fencing tokens.
    tokens: bool,
    _dir: Option<tempfile::TempDir>,
}

fn file() -> Store {
    let dir = tempfile::tempdir().expect("tempdir");
    Store {
        url: format!("file://{}", dir.path().display()),
        leases: false,
        tokens: true,
        _dir: Some(dir),
    }
}

fn s3() -> Store {
    stand_in("AWS_ENDPOINT_URL");
    let bucket = stand_in("DLOCK_TEST_S3_BUCKET");
    Store {
        url: format!("s3://{bucket}/{}", fresh_name("cli")),
        leases: true,
        tokens: false,
        _dir: None,
    }
}

fn gcs() -> Store {
    stand_in("STORAGE_EMULATOR_HOST");
    let bucket = stand_in("DLOCK_TEST_GCS_BUCKET");
    Store {
        url: format!("gs://{bucket}/{}", fresh_name("cli")),
        leases: true,
        tokens: false,
        _dir: None,
    }
}

fn dynamodb() -> Store {
    stand_in("AWS_ENDPOINT_URL");
    Store {
        url: format!("dynamodb://{}", stand_in("DLOCK_TEST_DYNAMODB_TABLE")),
        leases: true,
        tokens: true,
        _dir: None,
    }
}

fn mongodb() -> Store {
    Store {
        url: stand_in("DLOCK_TEST_MONGODB_URI"),
        leases: true,
        tokens: true,
        _dir: None,
    }
}

fn postgres() -> Store {
    let url = stand_in("DLOCK_TEST_POSTGRES_URL");
    // The CLI never creates tables: make the one these tests use.
    let backend = dlock_runtime::PostgresBackend::builder()
        .url(url.clone())
        .table("dlock_cli")
        .build()
        .expect("postgres settings");
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(backend.create_table())
        .expect("create the CLI's table");
    Store {
        url: format!("{url}?table=dlock_cli"),
        leases: true,
        tokens: true,
        _dir: None,
    }
}

fn redis() -> Store {
    Store {
        url: format!(
            "{}/?prefix={}:",
            stand_in("DLOCK_TEST_REDIS_URL"),
            fresh_name("cli")
        ),
        leases: true,
        tokens: true,
        _dir: None,
    }
}

fn etcd() -> Store {
    let endpoint = stand_in("DLOCK_TEST_ETCD_ENDPOINT");
    let host = endpoint.trim_start_matches("http://");
    Store {
        url: format!("etcd://{host}/{}/", fresh_name("cli")),
        leases: true,
        tokens: true,
        _dir: None,
    }
}

impl Store {
    /// `dlock ARGS` on this store (through `DLOCK_BACKEND`, as a pipeline would set it).
    fn dlock<const N: usize>(&self, args: [&str; N]) -> Command {
        let mut command = Command::new(dlock_bin());
        command
            .env("DLOCK_BACKEND", &self.url)
            .env_remove("RUST_LOG")
            .args(args);
        command
    }

    /// Runs `dlock ARGS` to the end (at most `limit`).
    fn output<const N: usize>(&self, args: [&str; N], limit: Duration) -> Output {
        finish(
            self.dlock(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn dlock"),
            limit,
        )
    }

    /// `dlock status --json NAME`: the exit code and the parsed object.
    fn status(&self, name: &str) -> (i32, Value) {
        let out = self.output(["status", "--json", name], Duration::from_secs(20));
        let json = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("status --json printed no JSON ({e}): {}", text(&out)));
        (out.status.code().expect("exit code"), json)
    }

    /// Starts `dlock run EXTRA... --name NAME -- sh -c SCRIPT`; `SCRIPT` must print a line that
    /// starts with `ready` once it runs. Returns when it has.
    fn hold(&self, name: &str, extra: &[&str], script: &str) -> Running {
        // stderr goes to a file, not a pipe: a command left running by a killed dlock would
        // keep a pipe open.
        let stderr = tempfile::NamedTempFile::new().expect("stderr file");
        let mut command = self.dlock(["run", "--name", name, "--timeout", "30s"]);
        command
            .args(extra)
            .args(["--", "sh", "-c", script])
            .stdout(Stdio::piped())
            .stderr(stderr.reopen().expect("reopen"));
        let mut dlock = command.spawn().expect("spawn dlock run");
        let mut stdout = BufReader::new(dlock.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read");
        let mut running = Running {
            dlock: Some(dlock),
            _stdout: stdout,
            stderr,
            words: line.split_whitespace().map(String::from).collect(),
        };
        if !line.starts_with("ready") {
            let out = running.finish(Duration::from_secs(5));
            panic!("the command did not start: {line:?} {}", text(&out));
        }
        running
    }
}

/// A `dlock run` in the background whose command has started.
struct Running {
    dlock: Option<Child>,
    /// Kept open: the command may still write to it.
    _stdout: BufReader<ChildStdout>,
    stderr: tempfile::NamedTempFile,
    /// The words of the command's `ready` line.
    words: Vec<String>,
}

impl Running {
    fn pid(&self) -> u32 {
        self.dlock.as_ref().expect("running").id()
    }

    /// The `n`th word of the `ready` line, as a pid.
    fn word_pid(&self, n: usize) -> u32 {
        self.words[n].parse().expect("a pid")
    }

    fn signal(&self, signal: Signal) {
        rustix::process::kill_process(pid(self.pid()), signal).expect("signal dlock");
    }

    /// Waits for dlock to exit (at most `limit`); the command may live on.
    fn finish(&mut self, limit: Duration) -> Output {
        let mut out = finish(self.dlock.take().expect("running"), limit);
        out.stderr = std::fs::read(self.stderr.path()).expect("stderr");
        out
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut dlock) = self.dlock.take() {
            let _ = dlock.kill();
            let _ = dlock.wait();
        }
        // The command's process group (its leader printed its pid first), if still there.
        if let Some(leader) = self.words.get(1).and_then(|w| w.parse().ok()) {
            let _ = rustix::process::kill_process_group(pid(leader), Signal::KILL);
        }
    }
}

fn pid(raw: u32) -> Pid {
    Pid::from_raw(raw as i32).expect("a pid")
}

/// Waits for `child` to exit, killing it and failing after `limit`.
fn finish(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    loop {
        match child.try_wait().expect("wait") {
            Some(_) => return child.wait_with_output().expect("output"),
            None if start.elapsed() > limit => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("output");
                panic!("dlock still running after {limit:?}: {}", text(&out));
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn code(status: ExitStatus) -> i32 {
    status.code().expect("exited, not killed")
}

/// Whether process `pid` is gone (or a zombie nobody has reaped yet).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

fn eventually_gone(pid: u32, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if gone(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    gone(pid)
}

// ---------------------------------------------------------------------------------------------
// The scenarios, each run on every store.

/// Two `dlock run` at once: with `--timeout 0s` the second exits with the conflict code (75)
/// without running its command and names the holder; with a timeout it waits, then runs after
/// the first command has finished.
fn second_run_waits_or_conflicts(store: Store) {
    let name = fresh_name("cli-two");
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("log");
    let marker = dir.path().join("marker");
    let mut first = store.hold(
        &name,
        &[],
        &format!("echo ready; sleep 2; echo first >> '{}'", log.display()),
    );
    let busy = store.output(
        [
            "run",
            "--name",
            &name,
            "--timeout",
            "0s",
            "--",
            "touch",
            marker.to_str().expect("utf-8"),
        ],
        Duration::from_secs(20),
    );
    assert_eq!(code(busy.status), 75, "{}", text(&busy));
    let stderr = String::from_utf8_lossy(&busy.stderr);
    assert!(
        stderr.contains("is busy") && stderr.contains(&format!("pid {}", first.pid())),
        "the conflict names the holder: {stderr}"
    );
    assert!(!marker.exists(), "a busy run must not run its command");

    let start = Instant::now();
    let second = store.output(
        [
            "run",
            "--name",
            &name,
            "--timeout",
            "30s",
            "--",
            "sh",
            "-c",
            &format!("echo second >> '{}'", log.display()),
        ],
        Duration::from_secs(40),
    );
    assert_eq!(code(second.status), 0, "{}", text(&second));
    assert_eq!(
        std::fs::read_to_string(&log).expect("log"),
        "first\nsecond\n",
        "the second command ran after the first, not beside it"
    );
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "{:?}",
        start.elapsed()
    );
    let done = first.finish(Duration::from_secs(10));
    assert_eq!(code(done.status), 0, "{}", text(&done));
}

/// The command's exit status passes through: 3 stays 3, death by SIGTERM is 143. SIGTERM to
/// dlock is forwarded to the command's whole process group (a background `sleep` of the
/// command dies too), the command's own status passes through, and the lock is free after.
fn status_and_signals_pass_through(store: Store) {
    let name = fresh_name("cli-exit");
    let three = store.output(
        ["run", "--name", &name, "--", "sh", "-c", "exit 3"],
        Duration::from_secs(20),
    );
    assert_eq!(code(three.status), 3, "{}", text(&three));
    let killed = store.output(
        ["run", "--name", &name, "--", "sh", "-c", "kill -TERM $$"],
        Duration::from_secs(20),
    );
    assert_eq!(code(killed.status), 143, "{}", text(&killed));

    let mut running = store.hold(
        &name,
        &[],
        r#"trap 'exit 7' TERM; sleep 30 & echo ready $$ $!; wait"#,
    );
    let (sh, sleep) = (running.word_pid(1), running.word_pid(2));
    // The shell prints `ready` right after forking `sleep`: wait until the child has become
    // `sleep` (before its exec, the shell's trap would catch the signal on its behalf).
    let start = Instant::now();
    while std::fs::read_to_string(format!("/proc/{sleep}/comm"))
        .ok()
        .as_deref()
        != Some("sleep\n")
    {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "sleep never started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    running.signal(Signal::TERM);
    let out = running.finish(Duration::from_secs(10));
    assert_eq!(
        code(out.status),
        7,
        "the command's status after its trap: {}",
        text(&out)
    );
    assert!(gone(sh), "the command has exited");
    assert!(
        eventually_gone(sleep, Duration::from_secs(2)),
        "the signal reached the command's whole process group"
    );
    let (exit, json) = store.status(&name);
    assert_eq!((exit, &json["held"]), (1, &Value::Bool(false)), "{json}");
}

/// `kill -9` of dlock frees the lock: the file lock at once (the kernel), a lease after its ttl
/// (3 s), not before. The lease runs from the holder's acquisition (or a server's grant), a few
/// milliseconds before the test reads "ready" and kills it: never earlier than 3 s after the
/// holder was started, and at most 100 ms earlier than 3 s after the kill.
fn kill_9_frees_the_lock(store: Store) {
    let name = fresh_name("cli-kill9");
    let spawned = Instant::now();
    let mut running = store.hold(&name, &["--ttl", "3s"], "echo ready $$; exec sleep 60");
    let command = running.word_pid(1);
    running.signal(Signal::KILL);
    let out = running.finish(Duration::from_secs(5));
    assert!(out.status.code().is_none(), "killed: {}", text(&out));
    // The command is an orphan now, in its own process group: it does not hold the lock.
    assert!(!gone(command));
    let start = Instant::now();
    let next = store.output(
        ["run", "--name", &name, "--timeout", "20s", "--", "true"],
        Duration::from_secs(30),
    );
    let waited = start.elapsed();
    assert_eq!(code(next.status), 0, "{}", text(&next));
    if store.leases {
        assert!(
            start.duration_since(spawned) + waited >= Duration::from_secs(3),
            "taken over {:?} after the holder was started, inside the ttl",
            start.duration_since(spawned) + waited
        );
        assert!(
            waited >= Duration::from_millis(2900),
            "taken over {waited:?} after the kill, inside the ttl"
        );
        assert!(waited < Duration::from_secs(15), "took {waited:?}");
    } else {
        assert!(waited < Duration::from_secs(2), "took {waited:?}");
    }
    let _ = rustix::process::kill_process_group(pid(command), Signal::KILL);
}

/// `dlock status --json` and `dlock list --json`, field by field, and what the command sees in
/// its environment (the lock name and the same fencing token).
fn status_list_json_and_environment(store: Store) {
    let name = fresh_name("cli-json");
    let extra: &[&str] = if store.tokens {
        &["--ttl", "20s", "--fencing-env", "MY_TOKEN"]
    } else {
        &["--ttl", "20s"]
    };
    let before = SystemTime::now() - Duration::from_secs(2);
    let mut running = store.hold(
        &name,
        extra,
        r#"echo ready $$ "$DLOCK_NAME" "${DLOCK_FENCING_TOKEN-none}" "${MY_TOKEN-none}"; exec sleep 60"#,
    );
    let (exit, status) = store.status(&name);
    assert_eq!(exit, 0, "held: {status}");
    let object = status.as_object().expect("an object");
    assert_eq!(object.len(), 3, "{status}");
    assert_eq!(status["name"], Value::from(name.as_str()));
    assert_eq!(status["held"], Value::Bool(true));
    let holder = status["holder"].as_object().expect("a holder");
    let fields: Vec<&str> = holder.keys().map(String::as_str).collect();
    assert_eq!(
        fields,
        [
            "fencing_token",
            "host",
            "owner",
            "pid",
            "since",
            "ttl_ms",
            "version"
        ],
        "{status}"
    );
    let owner = holder["owner"].as_str().expect("owner");
    assert!(
        owner.len() == 32 && owner.chars().all(|c| c.is_ascii_hexdigit()),
        "{owner}"
    );
    assert_eq!(holder["host"], Value::from(dlock_runtime::host_name()));
    assert_eq!(holder["pid"], Value::from(running.pid()));
    let since =
        humantime::parse_rfc3339(holder["since"].as_str().expect("since")).expect("RFC 3339");
    assert!(
        since >= before && since <= SystemTime::now() + Duration::from_secs(2),
        "{status}"
    );
    assert_eq!(
        holder["ttl_ms"],
        if store.leases {
            Value::from(20_000)
        } else {
            Value::Null
        },
        "{status}"
    );
    assert!(
        !holder["version"].as_str().expect("version").is_empty(),
        "{status}"
    );
    assert_eq!(running.words[2], name, "DLOCK_NAME");
    if store.tokens {
        let token = holder["fencing_token"].as_u64().expect("a fencing token");
        assert_eq!(running.words[3], token.to_string(), "DLOCK_FENCING_TOKEN");
        assert_eq!(
            running.words[4],
            token.to_string(),
            "--fencing-env MY_TOKEN"
        );
    } else {
        assert_eq!(holder["fencing_token"], Value::Null);
        assert_eq!(
            running.words[3], "none",
            "no DLOCK_FENCING_TOKEN without tokens"
        );
    }

    let out = store.output(["list", "--json", &name], Duration::from_secs(20));
    assert_eq!(code(out.status), 0, "{}", text(&out));
    let list: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(list, Value::Array(vec![status.clone()]), "list = [status]");

    running.signal(Signal::TERM);
    let out = running.finish(Duration::from_secs(10));
    assert_eq!(code(out.status), 143, "{}", text(&out));
    let (exit, free) = store.status(&name);
    assert_eq!(exit, 1, "free: {free}");
    assert_eq!(
        free,
        serde_json::json!({"name": name, "held": false, "holder": null})
    );
    let out = store.output(["list", "--json", &name], Duration::from_secs(20));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
}

/// `release --force`: a version from an earlier holder is refused (65) and frees nothing, so
/// a newer holder's lock is never freed; without `--if-version` it refuses (64) and prints the
/// exact command. On a lease backend that printed command frees the lock, and the running
/// `dlock run` (default `--on-lost kill` there) kills its command's process group and exits 79.
/// A file lock cannot be forced (78): it lives exactly as long as its process.
fn forced_release_and_lost_lease(store: Store) {
    let name = fresh_name("cli-force");
    let version_of = |store: &Store| {
        let (exit, status) = store.status(&name);
        assert_eq!(exit, 0, "held: {status}");
        status["holder"]["version"]
            .as_str()
            .expect("version")
            .to_string()
    };
    let mut earlier = store.hold(&name, &[], "echo ready $$; exec sleep 60");
    let stale_version = version_of(&store);
    earlier.signal(Signal::TERM);
    assert_eq!(code(earlier.finish(Duration::from_secs(10)).status), 143);
    drop(earlier);

    // A long lease: a renewal gives the record a new version, and the steps below need the
    // version they read to stay (PostgreSQL's SCRAM log-in makes each debug `dlock` slow).
    let mut running = store.hold(&name, &["--ttl", "30s"], "echo ready $$; exec sleep 60");
    let command = running.word_pid(1);
    let version = version_of(&store);
    assert_ne!(version, stale_version);
    let stale = store.output(
        ["release", "--force", &name, "--if-version", &stale_version],
        Duration::from_secs(20),
    );
    assert_eq!(code(stale.status), 65, "{}", text(&stale));
    assert!(
        String::from_utf8_lossy(&stale.stderr)
            .contains(&format!("no longer has version {stale_version}")),
        "{}",
        text(&stale)
    );
    assert_eq!(version_of(&store), version, "a stale version frees nothing");

    let refused = store.output(["release", "--force", &name], Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&refused.stderr).into_owned();
    if !store.leases {
        assert_eq!(code(refused.status), 78, "{}", text(&refused));
        assert!(stderr.contains("cannot be forced"), "{stderr}");
        let forced = store.output(
            ["release", "--force", &name, "--if-version", &version],
            Duration::from_secs(20),
        );
        assert_eq!(code(forced.status), 78, "{}", text(&forced));
        assert_eq!(version_of(&store), version, "still held");
        return;
    }
    assert_eq!(code(refused.status), 64, "{}", text(&refused));
    let printed = stderr
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("dlock release "))
        .unwrap_or_else(|| panic!("no command printed: {stderr}"));
    assert!(
        printed.contains(&format!("--force {name} --if-version ")),
        "{printed}"
    );
    assert!(printed.contains(&version), "{printed}");
    assert_eq!(version_of(&store), version, "a refusal frees nothing");

    // Run exactly what was printed (with this build of dlock).
    let start = Instant::now();
    let line = printed.replacen("dlock", &format!("'{}'", dlock_bin().display()), 1);
    let freed = finish(
        Command::new("sh")
            .args(["-c", &line])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sh"),
        Duration::from_secs(20),
    );
    assert_eq!(code(freed.status), 0, "{line}: {}", text(&freed));

    // The holder finds the lock gone at its next renewal, a third of the lease later.
    let out = running.finish(Duration::from_secs(25));
    assert_eq!(code(out.status), 79, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lost lock"),
        "{}",
        text(&out)
    );
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "noticed after {:?} (renewals every 10 s)",
        start.elapsed()
    );
    assert!(
        eventually_gone(command, Duration::from_secs(2)),
        "the command was killed"
    );
}

/// A scenario's name and body.
type Scenario = (&'static str, fn(Store));

/// Runs every scenario on a fresh store of one kind, at once (they use different lock names):
/// most of their time is spent waiting, and the machine may have two cores only.
fn on_store(kind: fn() -> Store) {
    let scenarios: [Scenario; 5] = [
        (
            "second_run_waits_or_conflicts",
            second_run_waits_or_conflicts,
        ),
        (
            "status_and_signals_pass_through",
            status_and_signals_pass_through,
        ),
        ("kill_9_frees_the_lock", kill_9_frees_the_lock),
        (
            "status_list_json_and_environment",
            status_list_json_and_environment,
        ),
        (
            "forced_release_and_lost_lease",
            forced_release_and_lost_lease,
        ),
    ];
    dlock_bin();
    let running: Vec<_> = scenarios
        .into_iter()
        .map(|(name, scenario)| (name, std::thread::spawn(move || scenario(kind()))))
        .collect();
    let failed: Vec<&str> = running
        .into_iter()
        .filter_map(|(name, thread)| thread.join().is_err().then_some(name))
        .collect();
    assert!(failed.is_empty(), "failed (panics above): {failed:?}");
}

#[test]
fn on_file() {
    on_store(file);
}

#[test]
fn on_s3() {
    on_store(s3);
}

#[test]
fn on_gcs() {
    on_store(gcs);
}

#[test]
fn on_dynamodb() {
    on_store(dynamodb);
}

#[test]
fn on_mongodb() {
    on_store(mongodb);
}

#[test]
fn on_postgres() {
    on_store(postgres);
}

#[test]
fn on_redis() {
    on_store(redis);
}

#[test]
fn on_etcd() {
    on_store(etcd);
}
// ---------------------------------------------------------------------------------------------
// Store-independent behaviour.

/// Bad input is a usage error (64) with a hint, and nothing is acquired or run.
#[test]
fn bad_input_is_a_usage_error_and_acquires_nothing() {
    let store = file();
    let name = fresh_name("cli-bad");
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("marker");
    let touch = marker.to_str().expect("utf-8");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "run",
                "--backend",
                "ftp://x/y",
                "--name",
                &name,
                "--",
                "touch",
                touch,
            ],
            "unknown backend scheme `ftp`",
        ),
        (
            vec![
                "run",
                "--backend",
                "memory://",
                "--name",
                &name,
                "--",
                "touch",
                touch,
            ],
            "protect nothing",
        ),
        (vec!["run", "--name", &name], "<COMMAND>"),
        (vec!["run", "--name", &name, "--"], "<COMMAND>"),
        (
            vec!["run", "--name", &name, "touch", touch],
            "put the command after `--`",
        ),
        (
            vec![
                "run",
                "--name",
                &name,
                "--timeout",
                "5x",
                "--",
                "touch",
                touch,
            ],
            "`0s` for one attempt, or `forever`",
        ),
        (
            vec![
                "run", "--name", &name, "--ttl", "forever", "--", "touch", touch,
            ],
            "cannot be `forever`",
        ),
        (
            vec![
                "run",
                "--name",
                &name,
                "--min-hold",
                "soon",
                "--",
                "touch",
                touch,
            ],
            "like 500ms, 30s",
        ),
        (
            vec!["run", "--name", "", "--", "touch", touch],
            "must not be empty",
        ),
        (
            vec!["run", "--name", "bad\nname", "--", "touch", touch],
            "control character",
        ),
        (
            vec![
                "run",
                "--name",
                &name,
                "--fencing-env",
                "1X",
                "--",
                "touch",
                touch,
            ],
            "not an environment variable name",
        ),
        (
            vec![
                "run",
                "--name",
                &name,
                "--on-lost",
                "ignore",
                "--",
                "touch",
                touch,
            ],
            "possible values: kill, warn",
        ),
        (vec!["release", &name], "--force"),
        (vec!["status"], "<NAME>"),
        (vec!["frobnicate"], "unrecognized subcommand"),
    ];
    for (args, hint) in cases {
        let out = finish(
            Command::new(dlock_bin())
                .env("DLOCK_BACKEND", &store.url)
                .args(&args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn"),
            Duration::from_secs(20),
        );
        assert_eq!(code(out.status), 64, "{args:?}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(hint),
            "{args:?}: wanted {hint:?} in {stderr}"
        );
        assert!(stderr.contains("try '--help'"), "{args:?}: {stderr}");
        assert!(!marker.exists(), "{args:?} ran the command");
    }
    assert_eq!(store.status(&name).0, 1, "nothing was acquired");
}

/// With `--conflict-exit-code 0 --quiet`, a busy lock is skipped silently (cron); SIGINT while
/// waiting stops the wait (130) without running the command; a missing command is 127.
#[test]
fn skipping_interrupting_and_missing_commands() {
    let store = file();
    let name = fresh_name("cli-skip");
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("marker");
    let touch = marker.to_str().expect("utf-8");
    let holder = store.hold(&name, &[], "echo ready $$; exec sleep 60");

    let skipped = store.output(
        [
            "run",
            "--quiet",
            "--name",
            &name,
            "--timeout",
            "0s",
            "--conflict-exit-code",
            "0",
            "--",
            "touch",
            touch,
        ],
        Duration::from_secs(20),
    );
    assert_eq!(code(skipped.status), 0, "{}", text(&skipped));
    assert!(
        skipped.stderr.is_empty() && skipped.stdout.is_empty(),
        "{}",
        text(&skipped)
    );

    let waiter = store
        .dlock(["run", "--name", &name, "--", "touch", touch])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_millis(500));
    rustix::process::kill_process(pid(waiter.id()), Signal::INT).expect("SIGINT");
    let out = finish(waiter, Duration::from_secs(10));
    assert_eq!(code(out.status), 130, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the command was not run"),
        "{}",
        text(&out)
    );
    assert!(!marker.exists());
    drop(holder);

    let missing = store.output(
        [
            "run",
            "--name",
            &name,
            "--timeout",
            "10s",
            "--",
            "no-such-command-dlock-test",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(code(missing.status), 127, "{}", text(&missing));
    assert_eq!(
        store.status(&name).0,
        1,
        "released after a command that could not start"
    );
}

/// `--fencing-env` on a backend without fencing tokens is refused before acquiring (78).
#[test]
fn fencing_env_is_refused_without_tokens() {
    let store = s3();
    let name = fresh_name("cli-fence");
    let out = store.output(
        [
            "run",
            "--name",
            &name,
            "--fencing-env",
            "TOKEN",
            "--",
            "true",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(code(out.status), 78, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("issues no fencing tokens"),
        "{}",
        text(&out)
    );
    assert_eq!(store.status(&name).0, 1, "nothing was acquired");
}

/// `--help` documents the exit codes; completions and the man page come from the same
/// definitions.
#[test]
fn help_completions_and_man_page() {
    let run = |args: &[&str]| {
        let out = Command::new(dlock_bin()).args(args).output().expect("run");
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let help = run(&["--help"]);
    for needle in ["EXIT CODES", "75", "79", "DLOCK_BACKEND", "dlock-"] {
        assert!(help.contains(needle), "--help lacks {needle}: {help}");
    }
    let run_help = run(&["run", "--help"]);
    for needle in ["DLOCK_FENCING_TOKEN", "--on-lost", "[default: forever]"] {
        assert!(run_help.contains(needle), "run --help lacks {needle}");
    }
    assert!(run(&["status", "--help"]).contains("\"fencing_token\""));
    assert!(run(&["completions", "bash"]).contains("_dlock()"));
    assert!(run(&["completions", "zsh"]).starts_with("#compdef dlock"));
    assert!(run(&["completions", "fish"]).contains("complete -c dlock"));
    let man = run(&["man"]);
    assert!(man.contains(".TH dlock"), "{man}");
    assert!(
        man.contains("EXIT CODES"),
        "the man page has the exit codes"
    );
}
