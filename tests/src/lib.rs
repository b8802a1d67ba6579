//! Helpers shared by dlock's integration tests: running worker processes against a backend URL
//! and checking what they did.

pub mod fault_matrix;
pub mod fault_proxy;
pub mod servers;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What a multi-process stress run did, read back from its log and counter.
#[derive(Debug, PartialEq, Eq)]
pub struct StressReport {
    /// Critical sections entered.
    pub entries: usize,
    /// Times a process entered while another was inside.
    pub overlaps: usize,
    /// The counter the processes incremented without synchronisation of their own.
    pub counter: u64,
}

/// Runs `processes` workers at once, each taking the lock `name` `iterations` times through
/// the backend at `backend_url`, and reports what the log shows.
pub fn run_stress(
    worker: &Path,
    backend_url: &str,
    name: &str,
    processes: usize,
    iterations: u32,
) -> StressReport {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("log");
    let counter = dir.path().join("counter");
    std::fs::write(&counter, "0\n").expect("counter");
    let children: Vec<Child> = (0..processes)
        .map(|_| {
            Command::new(worker)
                .args(["--backend", backend_url, "--name", name, "stress"])
                .arg("--iterations")
                .arg(iterations.to_string())
                .arg("--log")
                .arg(&log)
                .arg("--counter")
                .arg(&counter)
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn worker")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "worker failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = std::fs::read_to_string(&log).expect("log");
    let mut inside: Option<&str> = None;
    let (mut entries, mut overlaps) = (0, 0);
    for line in text.lines() {
        let mut parts = line.split(' ');
        match (parts.next(), parts.next()) {
            (Some("enter"), Some(pid)) => {
                entries += 1;
                if inside.is_some() {
                    overlaps += 1;
                }
                inside = Some(pid);
            }
            (Some("exit"), Some(pid)) => {
                if inside == Some(pid) {
                    inside = None;
                }
            }
            _ => panic!("bad log line {line:?}"),
        }
    }
    let counter = std::fs::read_to_string(&counter)
        .expect("counter")
        .trim()
        .parse()
        .expect("number");
    StressReport {
        entries,
        overlaps,
        counter,
    }
}

/// A worker that holds a lock until killed.
pub struct Holder {
    child: Child,
}

impl Holder {
    /// Starts a worker that takes `name` and holds it; returns once it has the lock.
    pub fn start(worker: &Path, backend_url: &str, name: &str) -> Holder {
        Holder::start_with(Command::new(worker), backend_url, name)
    }

    /// [`Holder::start`] with a prepared command (another user, say).
    pub fn start_with(mut command: Command, backend_url: &str, name: &str) -> Holder {
        let mut child = command
            .args(["--backend", backend_url, "--name", name, "hold"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn holder");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read");
        assert_eq!(line.trim(), "acquired", "the holder did not get the lock");
        Holder { child }
    }

    /// The holder's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`: no chance to release anything.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One attempt by a separate process: `Ok(())` when it got the lock, `Err(stderr)` when busy.
pub fn try_once(worker: &Path, backend_url: &str, name: &str) -> Result<(), String> {
    try_once_with(Command::new(worker), backend_url, name)
}

/// [`try_once`] with a prepared command (another user, say).
pub fn try_once_with(mut command: Command, backend_url: &str, name: &str) -> Result<(), String> {
    let out = command
        .args(["--backend", backend_url, "--name", name, "once"])
        .output()
        .expect("run worker");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    match out.status.code() {
        Some(0) => Ok(()),
        Some(3) => Err(stderr),
        other => panic!("worker failed ({other:?}): {stderr}"),
    }
}

/// Polls [`try_once`] until it succeeds; returns how long that took.
pub fn wait_until_free(worker: &Path, backend_url: &str, name: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        match try_once(worker, backend_url, name) {
            Ok(()) => return start.elapsed(),
            Err(busy) if start.elapsed() < limit => {
                let _ = busy;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(busy) => panic!("still busy after {limit:?}: {busy}"),
        }
    }
}

/// A fresh lock name for one test run.
pub fn fresh_name(prefix: &str) -> String {
    format!("{prefix}-{}", &dlock_runtime::Owner::generate().id[..12])
}

/// The worker binary, copied where every user can run it (the build directory may not be).
pub fn worker_copy_for_all_users(worker: &Path, dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let copy = dir.join("dlock-worker");
    std::fs::copy(worker, &copy).expect("copy worker");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    copy
}

/// A stand-in's setting, from the variables `tests/run-all.sh` exports. Panics (never skips)
/// when it is missing.
pub fn stand_in(var: &str) -> String {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => value,
        _ => panic!(
            "{var} is not set: this test needs the local stand-ins of the cloud backends; run \
             `bash tests/run-all.sh`, which installs and starts them on 127.0.0.1"
        ),
    }
}

/// Runs [`run_stress`] and asserts what every backend must show: every entry made, no
/// overlap, no lost update.
pub fn assert_exclusive_across_processes(
    worker: &Path,
    backend_url: &str,
    processes: usize,
    iterations: u32,
) {
    let report = run_stress(
        worker,
        backend_url,
        &fresh_name("stress"),
        processes,
        iterations,
    );
    let total = processes * iterations as usize;
    assert_eq!(report.entries, total, "{report:?}");
    assert_eq!(
        report.overlaps, 0,
        "critical sections overlapped: {report:?}"
    );
    assert_eq!(report.counter, total as u64, "lost updates: {report:?}");
}

/// `kill -9`s a holder (3 s lease, see the worker) and returns how long a waiting process then
/// took to get the lock.
pub fn takeover_after_kill(worker: &Path, backend_url: &str) -> Duration {
    let name = fresh_name("killed");
    let holder = Holder::start(worker, backend_url, &name);
    let busy = try_once(worker, backend_url, &name).expect_err("held");
    assert!(
        busy.contains(&format!("pid {}", holder.pid())),
        "the busy error names the holder: {busy}"
    );
    holder.kill();
    let start = Instant::now();
    let out = Command::new(worker)
        .args(["--backend", backend_url, "--name", &name, "wait"])
        .output()
        .expect("run waiter");
    assert!(
        out.status.success(),
        "the waiter did not get the lock: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    start.elapsed()
}

/// A loopback HTTP server that answers with canned responses, in order (the last one repeats),
/// and records what it was sent: for proving requests on the wire where a stand-in does not
/// enforce what the real service does.
pub struct Recorder {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// One canned response: status, extra headers, body.
pub type Canned = (u16, Vec<(&'static str, &'static str)>, &'static str);

impl Recorder {
    /// Serves `responses` on a free 127.0.0.1 port until the process ends.
    pub fn start(responses: Vec<Canned>) -> Recorder {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for (i, stream) in listener.incoming().enumerate() {
                let Ok(mut stream) = stream else { return };
                let mut raw = Vec::new();
                let mut buf = [0u8; 8192];
                // Read the head, then as much body as Content-Length says.
                let head_end = loop {
                    let n = stream.read(&mut buf).unwrap_or(0);
                    if n == 0 {
                        break None;
                    }
                    raw.extend_from_slice(&buf[..n]);
                    if let Some(pos) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                        break Some(pos + 4);
                    }
                };
                let Some(head_end) = head_end else { continue };
                let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
                let length = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().to_string())
                    })
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0);
                while raw.len() < head_end + length {
                    let n = stream.read(&mut buf).unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    raw.extend_from_slice(&buf[..n]);
                }
                seen.lock().expect("record").push(head);
                let (status, headers, body) = &responses[i.min(responses.len() - 1)];
                let mut response = format!(
                    "HTTP/1.1 {status} Canned\r\nContent-Length: {}\r\nConnection: close\r\n",
                    body.len()
                );
                for (name, value) in headers {
                    response.push_str(&format!("{name}: {value}\r\n"));
                }
                response.push_str("\r\n");
                response.push_str(body);
                let _ = stream.write_all(response.as_bytes());
            }
        });
        Recorder { url, requests }
    }

    /// The request heads received so far (request line and headers).
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("record").clone()
    }
}

/// A worker `kill -9`'d while holding a lock (3 s lease) loses it to a waiter only after the
/// lease: not before, and not much later. The lease runs from the worker's acquisition (or a
/// server's expiry from its grant), a few milliseconds before the test sees "acquired" and
/// kills it, hence the 100 ms allowance.
pub fn assert_takeover_after_lease(worker: &Path, backend_url: &str) {
    let waited = takeover_after_kill(worker, backend_url);
    assert!(
        waited >= Duration::from_millis(2900),
        "taken over after {waited:?}, inside the 3 s lease"
    );
    assert!(waited < Duration::from_secs(10), "took {waited:?}");
}

/// A backend pointed at a bucket that does not exist fails at once, permanently, naming it.
pub async fn assert_missing_bucket_is_permanent(
    backend: std::sync::Arc<dyn dlock_runtime::Backend>,
    bucket: &str,
) {
    let start = Instant::now();
    let err = dlock_runtime::Lock::new("x")
        .timeout(Duration::from_secs(30))
        .acquire_on(backend)
        .await
        .expect_err("no bucket");
    assert!(!err.is_temporary(), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("bucket `{bucket}` does not exist")),
        "{err}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "not retried until the timeout"
    );
}

/// A backend pointed at a closed port fails with an error that says so.
pub async fn assert_unreachable_is_explained(
    backend: std::sync::Arc<dyn dlock_runtime::Backend>,
    expected: &str,
) {
    let err = dlock_runtime::Lock::new("x")
        .acquire_on(backend)
        .await
        .expect_err("nothing listens");
    assert!(err.to_string().contains(expected), "{err}");
}

/// DESIGN's rule for ambiguous retries: a conditional write sent again by the same owner (as
/// an SDK retry of a write that had succeeded would be) comes back refused, and the backend
/// must read the record back and answer acquired. Another owner is then told it is busy, with
/// the holder named. Returns the first lease and the holder the second owner saw.
pub async fn assert_repeated_acquire_is_ours(
    backend: &dyn dlock_runtime::Backend,
) -> (dlock_runtime::Lease, dlock_runtime::Holder) {
    use dlock_runtime::{AcquireOutcome, AcquireRequest, LockName, Owner};
    let name = LockName::new(fresh_name("retry")).expect("name");
    let request = AcquireRequest::new(name.clone(), Owner::generate(), Duration::from_secs(30));
    let AcquireOutcome::Acquired(first) = backend.try_acquire(&request).await.expect("acquire")
    else {
        panic!("a fresh lock was busy");
    };
    let AcquireOutcome::Acquired(again) = backend.try_acquire(&request).await.expect("acquire")
    else {
        panic!("a refused write on our own record must resolve to acquired");
    };
    assert_eq!(
        (&again.version, again.fencing_token),
        (&first.version, first.fencing_token)
    );
    let other = AcquireRequest::new(name, Owner::generate(), Duration::from_secs(30));
    let holder = match backend.try_acquire(&other).await.expect("answer") {
        AcquireOutcome::Busy(holder) => holder,
        AcquireOutcome::Acquired(_) => panic!("a second owner acquired a held lock"),
    };
    assert_eq!(
        holder.owner, first.owner,
        "the busy answer names the holder"
    );
    backend.release(&first).await.expect("release");
    (first, holder)
}
