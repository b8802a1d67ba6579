//! `dlock-contend`: many processes (or tasks) fighting for one dlock lock, measured and checked
//! by a witness that lives outside dlock.
//!
//! # Commands
//!
//! `dlock-contend bench --backend URL --processes N --acquisitions K [--hold 1ms] [--tasks]`
//!
//! The contended benchmark ("waiting well"). N children (this binary re-executed as
//! `dlock-contend child …`) each take the same lock K times through [`Lock`] (the same acquire
//! loop `#[distributed_lock]` expands to), hold it for `--hold`, and release it. It prints a
//! Markdown table: wall time against the ideal `N × K × hold` and against the time actually
//! spent inside sections, the lock's cost per acquisition (wall time outside sections divided
//! by the acquisitions), handoff latency p50/p90/p99 (from a release with others waiting to the next
//! enter), backend calls per acquisition (every backend, counted by wrapping it in
//! `FaultyBackend`), wire requests per acquisition (remote backends: the children talk to the
//! server through a [`FaultProxy`] in pass-through mode started by the parent, which counts
//! requests, driver heartbeats included), fairness (per-worker acquisitions, mean and longest
//! wait, Jain's index of the mean waits, and barging: how often the releaser took the lock
//! again first while others waited), and the raw floor: the same number of
//! `try_acquire` + `release` cycles made directly on the backend, without waiting. `--tasks`
//! runs N tokio tasks in this process instead of N processes (the only way for `memory://`).
//!
//! `dlock-contend scale --backend URL --processes 4 --acquisitions 10000 [--faults RATE]
//! [--kill-every D] [--stop-every D] [--restart CMD]`
//!
//! Scale run with an external witness. The same children; inside its section a worker logs
//! `enter`, creates a marker file with `O_EXCL` (a failed create is logged as `overlap`, never
//! a panic), holds, then removes the marker and logs `exit` — or `lost` when its guard reports
//! the lease lost before it leaves. Checked afterwards, from the log alone:
//!
//! - no overlap: no holder entered while another was inside, unless that other holder
//!   reported `lost` before leaving (the holder-knows-first rule: a paused holder may be taken
//!   over, but it must know before it leaves its section); marker collisions likewise;
//! - fencing tokens strictly increase in enter order (backends with tokens);
//! - every enter has an exit, a `lost` or a kill; every worker finished its acquisitions;
//! - after a `kill -9`, the next holder entered within `ttl + --slack`.
//!
//! `--faults RATE` puts the proxy in its seeded random mode (`--seed`): each request, with
//! probability RATE, gets a delay, a slow answer, a reset, a lost answer or (HTTP stores) a
//! 429/500/503. `--kill-every D` stops the holder, removes its marker, logs `kill` and
//! `kill -9`s it, then starts a replacement for its remaining acquisitions. `--stop-every D`
//! `SIGSTOP`s the holder for `ttl + 1s`, then `SIGCONT`s it. `--restart CMD` runs `sh -c CMD`
//! every `--restart-every` (a server restart) and drops the proxy's connections. It prints a
//! Markdown table row and exits 1 if any check fails.
//!
//! `--no-lock` (hidden) skips the lock: the self-check that the witness sees overlaps.
//!
//! Timestamps are `CLOCK_MONOTONIC` nanoseconds, comparable across the processes of one
//! machine; the log's lines are appended with one write each, so its order is the real order.

#[path = "../contend/analysis.rs"]
mod analysis;
#[path = "../contend/log.rs"]
mod log;
#[path = "../contend/route.rs"]
mod route;

use analysis::{Analysis, human, quantile};
use clap::{Args, Parser, Subcommand};
use dlock_runtime::conformance::{Calls, FaultyBackend};
use dlock_runtime::{
    AcquireOutcome, AcquireRequest, Backend, Backoff, Error, Lock, LockName, Owner, Registry,
    backend_from_url,
};
use dlock_tests::fault_proxy::{Fault, FaultCounts, FaultProxy, Mode};
use log::{Log, Marker};
use route::Route;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command as Process, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "dlock-contend",
    about = "Contended benchmark and scale runs of dlock locks, checked by an external witness"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Contended benchmark: wall time, handoff latency, requests, fairness.
    Bench(BenchArgs),
    /// Scale run with faults, kills and stops, checked by the witness.
    Scale(ScaleArgs),
    /// One worker process (started by `bench` and `scale`).
    #[command(hide = true)]
    Child(ChildArgs),
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Backend URL: file:///tmp/x, memory:// (with --tasks), s3://bucket/prefix, ...
    #[arg(long)]
    backend: String,
    /// Workers (processes, or tasks with --tasks).
    #[arg(long, default_value_t = 4)]
    processes: usize,
    /// Acquisitions per worker.
    #[arg(long)]
    acquisitions: u32,
    /// How long each holder holds the lock (`1ms`, `0`, `500us`).
    #[arg(long, default_value = "1ms", value_parser = parse_duration)]
    hold: Duration,
    /// N tokio tasks in this process instead of N processes.
    #[arg(long)]
    tasks: bool,
    /// The lease (default: 30s for bench, 3s for scale).
    #[arg(long, value_parser = parse_duration)]
    ttl: Option<Duration>,
    /// Lock name (default: a fresh one).
    #[arg(long)]
    name: Option<String>,
    /// Keep the log and marker in this directory (default: a temporary one).
    #[arg(long)]
    keep: Option<PathBuf>,
    /// Skip the lock (self-check of the witness: it must see overlaps).
    #[arg(long, hide = true)]
    no_lock: bool,
    /// The shortest gap between a polling waiter's looks (`Backoff::with_poll_gap`; default:
    /// about a round trip).
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    poll_gap: Duration,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Do not measure the raw floor.
    #[arg(long)]
    no_floor: bool,
}

#[derive(Args)]
struct ScaleArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Probability (0 to 1) that a request through the proxy gets a fault.
    #[arg(long, default_value_t = 0.0)]
    faults: f64,
    /// Seed of the proxy's fault choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Kill -9 the holder this often (and start a replacement).
    #[arg(long, value_parser = parse_duration)]
    kill_every: Option<Duration>,
    /// SIGSTOP the holder this often, for ttl + 1s.
    #[arg(long, value_parser = parse_duration)]
    stop_every: Option<Duration>,
    /// A shell command that restarts the server, run every --restart-every.
    #[arg(long)]
    restart: Option<String>,
    /// How often --restart runs.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    restart_every: Duration,
    /// Allowed on top of the ttl between a kill and the next enter.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    slack: Duration,
}

#[derive(Args)]
struct ChildArgs {
    #[arg(long)]
    backend: String,
    #[arg(long)]
    name: String,
    #[arg(long)]
    acquisitions: u32,
    #[arg(long, value_parser = parse_duration)]
    hold: Duration,
    #[arg(long, value_parser = parse_duration)]
    ttl: Duration,
    #[arg(long)]
    log: PathBuf,
    #[arg(long)]
    marker: PathBuf,
    #[arg(long)]
    no_lock: bool,
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    poll_gap: Duration,
}

/// `1ms`, `250us`, `2s`, `1m`, `100ns`, `0`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("`{text}`: give a unit (ns, us, ms, s, m)"))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}`: not a duration"))?;
    let seconds = match unit.trim() {
        "ns" => number / 1e9,
        "us" | "µs" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        "m" | "min" => number * 60.0,
        other => return Err(format!("`{text}`: unknown unit `{other}`")),
    };
    Ok(Duration::from_secs_f64(seconds))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Child(args) => child(&args).map(|()| true),
        Command::Bench(args) => bench(&args),
        Command::Scale(args) => scale(&args),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("dlock-contend: {e}");
            ExitCode::from(2)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Workers

/// What one worker (process or task) counted besides the log.
#[derive(Debug, Default, Clone, Copy)]
struct WorkerCounts {
    /// Acquire attempts that failed with a temporary error (then retried).
    acquire_errors: u64,
    /// Releases answered `Lost`.
    release_lost: u64,
    /// Releases that failed otherwise (finished in the background).
    release_errors: u64,
}

impl std::ops::AddAssign for WorkerCounts {
    fn add_assign(&mut self, other: Self) {
        self.acquire_errors += other.acquire_errors;
        self.release_lost += other.release_lost;
        self.release_errors += other.release_errors;
    }
}

/// The witness a worker writes: the shared log and the marker.
struct Witness {
    log: Log,
    marker: Marker,
}

impl Witness {
    fn open(log: &Path, marker: &Path) -> Result<Witness, String> {
        Ok(Witness {
            log: Log::open(log).map_err(|e| format!("{}: {e}", log.display()))?,
            marker: Marker::new(marker),
        })
    }

    fn want(&self, id: &str) -> std::io::Result<()> {
        self.log.line("want", id, None, None).map(drop)
    }

    /// Logs the enter, then creates the marker (logging a collision).
    fn enter(&self, id: &str, token: Option<u64>) -> std::io::Result<()> {
        self.log.line("enter", id, token, None)?;
        if let Some(previous) = self.marker.enter(id)? {
            self.log.line("overlap", id, token, Some(&previous))?;
        }
        Ok(())
    }

    /// Removes the marker (if ours), then logs `exit` or `lost`.
    /// Ends a section: the marker goes first, then the section's end is timestamped and only
    /// then is the guard asked whether the lock was lost. A guard that still holds at that
    /// moment held at the timestamp too, so a pause between the question and the log write
    /// cannot make a section that ended in time look as if it lasted through the pause.
    fn exit(
        &self,
        id: &str,
        token: Option<u64>,
        lost: impl FnOnce() -> bool,
    ) -> std::io::Result<()> {
        self.marker.exit(id)?;
        let t = log::now_ns();
        let kind = if lost() { "lost" } else { "exit" };
        self.log.line_at(kind, id, token, t, None)
    }
}

fn io(e: std::io::Error) -> String {
    format!("witness: {e}")
}

/// The lock every worker takes, the way an application does.
fn lock(name: &str, ttl: Duration, poll_gap: Duration) -> Lock {
    Lock::new(name)
        .ttl(ttl)
        .backoff(Backoff::default().with_poll_gap(poll_gap))
        .wait_forever()
}

/// One worker process: `ready` on stdout, waits for a line on stdin, runs, then prints its
/// backend calls and error counts.
fn child(args: &ChildArgs) -> Result<(), String> {
    if std::env::var_os("RUST_LOG").is_some() {
        // The runtime's own account of each attempt, on stderr, for diagnosis.
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let id = std::process::id().to_string();
    let faulty = Arc::new(FaultyBackend::new(
        backend_from_url(&args.backend).map_err(|e| e.to_string())?,
    ));
    Registry::builder()
        .backend_arc("test", faulty.clone())
        .build()
        .map_err(|e| e.to_string())?
        .install()
        .map_err(|_| "installed twice".to_string())?;
    let witness = Witness::open(&args.log, &args.marker)?;
    if !args.no_lock {
        // First use (connections, bucket checks) before the start, on another name.
        let warm = Lock::new(format!("{}-warm-{id}", args.name))
            .ttl(args.ttl)
            .timeout(Duration::from_secs(60))
            .acquire_blocking()
            .map_err(|e| format!("warm-up: {e}"))?;
        let _ = warm.release_blocking();
    }
    let base = faulty.calls();
    println!("ready");
    std::io::stdout().flush().map_err(io)?;
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).map_err(io)?;
    let mut counts = WorkerCounts::default();
    for _ in 0..args.acquisitions {
        witness.want(&id).map_err(io)?;
        let guard = if args.no_lock {
            None
        } else {
            Some(loop {
                match lock(&args.name, args.ttl, args.poll_gap).acquire_blocking() {
                    Ok(guard) => break guard,
                    Err(e) if e.is_temporary() => counts.acquire_errors += 1,
                    Err(e) => return Err(format!("acquire: {e}")),
                }
            })
        };
        let token = guard.as_ref().and_then(|g| g.fencing_token());
        witness.enter(&id, token).map_err(io)?;
        if !args.hold.is_zero() {
            std::thread::sleep(args.hold);
        }
        witness
            .exit(&id, token, || guard.as_ref().is_some_and(|g| g.is_lost()))
            .map_err(io)?;
        if let Some(guard) = guard {
            match guard.release_blocking() {
                Ok(()) => {}
                Err(Error::Lost { .. }) => counts.release_lost += 1,
                Err(_) => counts.release_errors += 1,
            }
        }
    }
    let calls = minus(faulty.calls(), base);
    println!(
        "calls {} {} {} {} {}",
        calls.acquires, calls.renewals, calls.releases, calls.reads, calls.waits
    );
    println!(
        "counts {} {} {}",
        counts.acquire_errors, counts.release_lost, counts.release_errors
    );
    std::io::stdout().flush().map_err(io)
}

fn minus(a: Calls, b: Calls) -> Calls {
    Calls {
        acquires: a.acquires - b.acquires,
        renewals: a.renewals - b.renewals,
        releases: a.releases - b.releases,
        reads: a.reads - b.reads,
        waits: a.waits - b.waits,
    }
}

fn plus(a: Calls, b: Calls) -> Calls {
    Calls {
        acquires: a.acquires + b.acquires,
        renewals: a.renewals + b.renewals,
        releases: a.releases + b.releases,
        reads: a.reads + b.reads,
        waits: a.waits + b.waits,
    }
}

/// `--tasks`: N tokio tasks in this process, same loop as a child.
fn run_tasks(run: &RunArgs, ttl: Duration, files: &Files) -> Result<Outcome, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let faulty = Arc::new(FaultyBackend::new(
            backend_from_url(&run.backend).map_err(|e| e.to_string())?,
        ));
        Registry::builder()
            .backend_arc("test", faulty.clone())
            .build()
            .map_err(|e| e.to_string())?
            .install()
            .map_err(|_| "installed twice".to_string())?;
        if !run.no_lock {
            let warm = Lock::new(format!("{}-warm", files.name))
                .ttl(ttl)
                .timeout(Duration::from_secs(60))
                .acquire()
                .await
                .map_err(|e| format!("warm-up: {e}"))?;
            let _ = warm.release().await;
        }
        let base = faulty.calls();
        let witness = Arc::new(Witness::open(&files.log, &files.marker)?);
        witness.log.line("go", "parent", None, None).map_err(io)?;
        let pid = std::process::id();
        let mut tasks = Vec::new();
        for task in 0..run.processes {
            let (witness, name, hold, no_lock, poll_gap) = (
                witness.clone(),
                files.name.clone(),
                run.hold,
                run.no_lock,
                run.poll_gap,
            );
            let acquisitions = run.acquisitions;
            tasks.push(tokio::spawn(async move {
                let id = format!("{pid}.{task}");
                let mut counts = WorkerCounts::default();
                for _ in 0..acquisitions {
                    witness.want(&id).map_err(io)?;
                    let guard = if no_lock {
                        None
                    } else {
                        Some(loop {
                            match lock(&name, ttl, poll_gap).acquire().await {
                                Ok(guard) => break guard,
                                Err(e) if e.is_temporary() => counts.acquire_errors += 1,
                                Err(e) => return Err(format!("acquire: {e}")),
                            }
                        })
                    };
                    let token = guard.as_ref().and_then(|g| g.fencing_token());
                    witness.enter(&id, token).map_err(io)?;
                    if hold.is_zero() {
                        tokio::task::yield_now().await;
                    } else {
                        tokio::time::sleep(hold).await;
                    }
                    witness
                        .exit(&id, token, || guard.as_ref().is_some_and(|g| g.is_lost()))
                        .map_err(io)?;
                    if let Some(guard) = guard {
                        match guard.release().await {
                            Ok(()) => {}
                            Err(Error::Lost { .. }) => counts.release_lost += 1,
                            Err(_) => counts.release_errors += 1,
                        }
                    }
                }
                Ok::<_, String>(counts)
            }));
        }
        let mut outcome = Outcome::default();
        for task in tasks {
            outcome.counts += task.await.map_err(|e| format!("task: {e}"))??;
        }
        outcome.calls = minus(faulty.calls(), base);
        Ok(outcome)
    })
}

// ---------------------------------------------------------------------------------------------
// The parent

/// Where a run's files are, and its lock name.
struct Files {
    _dir: Option<tempfile::TempDir>,
    log: PathBuf,
    marker: PathBuf,
    name: String,
}

impl Files {
    fn new(run: &RunArgs) -> Result<Files, String> {
        let (dir, path) = match &run.keep {
            Some(path) => {
                std::fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()))?;
                (None, path.clone())
            }
            None => {
                let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
                let path = dir.path().to_path_buf();
                (Some(dir), path)
            }
        };
        let log = path.join("contend.log");
        let _ = std::fs::remove_file(&log);
        let marker = path.join("marker");
        let _ = std::fs::remove_file(&marker);
        Ok(Files {
            _dir: dir,
            log,
            marker,
            name: run
                .name
                .clone()
                .unwrap_or_else(|| dlock_tests::fresh_name("contend")),
        })
    }
}

/// What the workers reported besides the log.
#[derive(Debug, Default)]
struct Outcome {
    calls: Calls,
    counts: WorkerCounts,
    /// Requests the proxy saw after the start (remote backends).
    requests: Option<u64>,
    faults: Option<FaultCounts>,
    /// Children that failed (exit status, not killed by us).
    failures: Vec<String>,
    restarts: usize,
}

/// A running child process.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    acquisitions: u32,
}

/// How children are started: the binary, its arguments, the URL and environment.
struct Spawner {
    exe: PathBuf,
    url: String,
    env: Vec<(&'static str, String)>,
    name: String,
    hold: Duration,
    ttl: Duration,
    log: PathBuf,
    marker: PathBuf,
    no_lock: bool,
    poll_gap: Duration,
}

impl Spawner {
    fn spawn(&self, acquisitions: u32) -> Result<Worker, String> {
        let mut command = Process::new(&self.exe);
        command
            .arg("child")
            .args(["--backend", &self.url, "--name", &self.name])
            .args(["--acquisitions", &acquisitions.to_string()])
            .args(["--hold", &format!("{}ns", self.hold.as_nanos())])
            .args(["--ttl", &format!("{}ns", self.ttl.as_nanos())])
            .args(["--poll-gap", &format!("{}ns", self.poll_gap.as_nanos())])
            .arg("--log")
            .arg(&self.log)
            .arg("--marker")
            .arg(&self.marker)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if self.no_lock {
            command.arg("--no-lock");
        }
        for (var, value) in &self.env {
            command.env(var, value);
        }
        let mut child = command.spawn().map_err(|e| format!("spawn: {e}"))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line).map_err(|e| e.to_string())?;
        if line.trim() != "ready" {
            let status = child.wait().map_err(|e| e.to_string())?;
            return Err(format!("a child did not start ({status})"));
        }
        Ok(Worker {
            child,
            stdin,
            stdout,
            acquisitions,
        })
    }
}

impl Worker {
    fn go(&mut self) -> Result<(), String> {
        self.stdin
            .write_all(b"go\n")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("start a child: {e}"))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads what a finished child printed.
    fn report(&mut self, outcome: &mut Outcome) {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut self.stdout, &mut text);
        for line in text.lines() {
            let numbers: Vec<u64> = line
                .split(' ')
                .skip(1)
                .filter_map(|n| n.parse().ok())
                .collect();
            match (line.split(' ').next(), numbers.as_slice()) {
                (Some("calls"), [a, r, rel, reads, waits]) => {
                    outcome.calls = plus(
                        outcome.calls,
                        Calls {
                            acquires: *a as usize,
                            renewals: *r as usize,
                            releases: *rel as usize,
                            reads: *reads as usize,
                            waits: *waits as usize,
                        },
                    );
                }
                (Some("counts"), [acquire, lost, release]) => {
                    outcome.counts += WorkerCounts {
                        acquire_errors: *acquire,
                        release_lost: *lost,
                        release_errors: *release,
                    };
                }
                _ => {}
            }
        }
    }
}

/// What the parent does to the children while they run (scale).
#[derive(Default)]
struct Chaos {
    faults: f64,
    seed: u64,
    kill_every: Option<Duration>,
    stop_every: Option<Duration>,
    restart: Option<String>,
    restart_every: Duration,
}

/// Prepares a backend before the children use it (a Postgres table).
fn prepare(url: &str) -> Result<(), String> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let backend =
                dlock_runtime::PostgresBackend::from_url(url).map_err(|e| e.to_string())?;
            backend
                .create_table()
                .await
                .map_err(|e| format!("create the table: {e}"))
        })?;
    }
    Ok(())
}

/// The faults a proxy draws from for a store.
fn fault_kinds(http: bool) -> Vec<Fault> {
    let mut kinds = vec![
        Fault::Delay(Duration::from_millis(100)),
        Fault::DelayAnswer(Duration::from_millis(100)),
        Fault::Reset,
        Fault::DropAnswer,
    ];
    if http {
        kinds.extend([
            Fault::HttpStatus(429),
            Fault::HttpStatus(500),
            Fault::HttpStatus(503),
        ]);
    }
    kinds
}

/// Runs N children (or tasks) to the end, doing `chaos` to them. The log is in `files`.
fn run_workers(
    run: &RunArgs,
    ttl: Duration,
    files: &Files,
    chaos: &Chaos,
) -> Result<Outcome, String> {
    if run.tasks {
        if chaos.kill_every.is_some() || chaos.stop_every.is_some() || chaos.faults > 0.0 {
            return Err(
                "--tasks runs in one process: no --faults, --kill-every or --stop-every".into(),
            );
        }
        return run_tasks(run, ttl, files);
    }
    if run.backend.starts_with("memory:") {
        return Err("memory:// lives in one process: use --tasks".into());
    }
    let route = Route::of(&run.backend)?;
    let proxy = route.upstream().map(FaultProxy::start);
    let (url, env) = match &proxy {
        Some(proxy) => route.through(&run.backend, proxy.addr()),
        None => (run.backend.clone(), Vec::new()),
    };
    if chaos.faults > 0.0 && proxy.is_none() {
        return Err(format!(
            "{}: --faults needs a remote backend (its requests go through the proxy)",
            run.backend
        ));
    }
    let spawner = Spawner {
        exe: std::env::current_exe().map_err(|e| e.to_string())?,
        url,
        env,
        name: files.name.clone(),
        hold: run.hold,
        ttl,
        log: files.log.clone(),
        marker: files.marker.clone(),
        no_lock: run.no_lock,
        poll_gap: run.poll_gap,
    };
    let mut workers = Vec::new();
    for _ in 0..run.processes {
        workers.push(spawner.spawn(run.acquisitions)?);
    }
    let log = Log::open(&files.log).map_err(io)?;
    let marker = Marker::new(&files.marker);
    let base_requests = proxy.as_ref().map_or(0, FaultProxy::requests);
    let base_counts = proxy.as_ref().map(FaultProxy::counts).unwrap_or_default();
    if let Some(proxy) = &proxy
        && chaos.faults > 0.0
    {
        let http = !matches!(route, Route::Authority { .. });
        proxy.set_mode(Mode::Random {
            seed: chaos.seed,
            rate: chaos.faults,
            kinds: fault_kinds(http),
        });
    }
    log.line("go", "parent", None, None).map_err(io)?;
    for worker in &mut workers {
        worker.go()?;
    }
    let start = Instant::now();
    let mut next_kill = chaos.kill_every.map(|d| start + d);
    let mut next_stop = chaos.stop_every.map(|d| start + d);
    let mut next_restart = chaos.restart.as_ref().map(|_| start + chaos.restart_every);
    let mut outcome = Outcome::default();
    let mut rng = chaos.seed ^ 0x5DEE_CE66;
    while !workers.is_empty() {
        let mut i = 0;
        while i < workers.len() {
            match workers[i].child.try_wait() {
                Ok(Some(status)) => {
                    let mut worker = workers.swap_remove(i);
                    if !status.success() {
                        outcome
                            .failures
                            .push(format!("child {} ended with {status}", worker.pid()));
                    }
                    worker.report(&mut outcome);
                }
                Ok(None) => i += 1,
                Err(e) => return Err(format!("wait: {e}")),
            }
        }
        if workers.is_empty() {
            break;
        }
        let now = Instant::now();
        if let Some(at) = next_kill
            && now >= at
        {
            if let Some(i) = stop_holder(&mut workers, &marker)? {
                let mut victim = workers.swap_remove(i);
                let id = victim.pid().to_string();
                marker.remove();
                log.line("kill", &id, None, None).map_err(io)?;
                let _ = victim.child.kill();
                let _ = victim.child.wait();
                let done = completed_by(&files.log, &id)?;
                let left = victim.acquisitions.saturating_sub(done);
                if left > 0 {
                    let mut replacement = spawner.spawn(left)?;
                    replacement.go()?;
                    workers.push(replacement);
                }
            }
            next_kill = chaos
                .kill_every
                .map(|d| Instant::now() + jitter(d, &mut rng));
        }
        if let Some(at) = next_stop
            && now >= at
        {
            if let Some(i) = stop_holder(&mut workers, &marker)? {
                let id = workers[i].pid().to_string();
                log.line("stop", &id, None, None).map_err(io)?;
                std::thread::sleep(ttl + Duration::from_secs(1));
                signal(workers[i].pid(), rustix::process::Signal::CONT)?;
                log.line("cont", &id, None, None).map_err(io)?;
            }
            next_stop = chaos
                .stop_every
                .map(|d| Instant::now() + jitter(d, &mut rng));
        }
        if let (Some(at), Some(command)) = (next_restart, &chaos.restart)
            && now >= at
        {
            let status = Process::new("sh")
                .args(["-c", command])
                .status()
                .map_err(|e| format!("--restart: {e}"))?;
            if !status.success() {
                return Err(format!("--restart `{command}` failed: {status}"));
            }
            if let Some(proxy) = &proxy {
                proxy.disconnect_all();
            }
            outcome.restarts += 1;
            next_restart = Some(Instant::now() + chaos.restart_every);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    if let Some(proxy) = &proxy {
        proxy.heal();
        outcome.requests = Some(proxy.requests() - base_requests);
        let c = proxy.counts();
        outcome.faults = Some(FaultCounts {
            passed: c.passed - base_counts.passed,
            drop_answer: c.drop_answer - base_counts.drop_answer,
            reset: c.reset - base_counts.reset,
            delay: c.delay - base_counts.delay,
            delay_answer: c.delay_answer - base_counts.delay_answer,
            blackhole: c.blackhole - base_counts.blackhole,
            http_status: c.http_status - base_counts.http_status,
        });
    }
    Ok(outcome)
}

/// Somewhere in `[d/2, 3d/2)`, so kills and stops do not fall in step with the holds.
fn jitter(d: Duration, state: &mut u64) -> Duration {
    *state = state
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    let fraction = (*state >> 11) as f64 / (1u64 << 53) as f64;
    d.mul_f64(0.5 + fraction)
}

fn signal(pid: u32, signal: rustix::process::Signal) -> Result<(), String> {
    let pid = rustix::process::Pid::from_raw(pid as i32).ok_or("pid 0")?;
    rustix::process::kill_process(pid, signal).map_err(|e| format!("signal {pid:?}: {e}"))
}

/// Whether `/proc/PID/stat` says the process is stopped.
fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('T'))
        })
        .unwrap_or(false)
}

/// Finds the child that holds the lock now (by the marker) and leaves it stopped
/// (`SIGSTOP`), inside its section: returns its index. Tries for up to 2 s.
fn stop_holder(workers: &mut [Worker], marker: &Marker) -> Result<Option<usize>, String> {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let holder = marker.holder().unwrap_or_default();
        let found = workers.iter().position(|w| w.pid().to_string() == holder);
        let Some(i) = found else {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        };
        let pid = workers[i].pid();
        signal(pid, rustix::process::Signal::STOP)?;
        let stopped_by = Instant::now() + Duration::from_millis(500);
        while !is_stopped(pid) && Instant::now() < stopped_by {
            std::thread::sleep(Duration::from_micros(100));
        }
        // Stopped: the marker cannot change under us if it is still its.
        if is_stopped(pid) && marker.holder().as_deref() == Some(holder.as_str()) {
            return Ok(Some(i));
        }
        signal(pid, rustix::process::Signal::CONT)?;
        std::thread::sleep(Duration::from_micros(500));
    }
    Ok(None)
}

/// Sections `id` finished (`exit` or `lost` lines).
fn completed_by(log: &Path, id: &str) -> Result<u32, String> {
    let text = std::fs::read_to_string(log).map_err(io)?;
    Ok(text
        .lines()
        .filter(|line| {
            let mut parts = line.split(' ');
            matches!(parts.next(), Some("exit" | "lost")) && parts.next() == Some(id)
        })
        .count() as u32)
}

fn read_log(files: &Files) -> Result<Analysis, String> {
    let text = std::fs::read_to_string(&files.log).map_err(io)?;
    analysis::analyse(&text)
}

/// A short name for a backend URL: its scheme (`file`, `s3`, ...).
fn kind(url: &str) -> &str {
    match url.split_once("://").map_or(url, |(scheme, _)| scheme) {
        "gs" => "gcs",
        "postgresql" => "postgres",
        other => other,
    }
}

fn workers_label(run: &RunArgs) -> String {
    let unit = if run.tasks { "tasks" } else { "proc" };
    format!("{} {unit} × {}", run.processes, run.acquisitions)
}

// ---------------------------------------------------------------------------------------------
// bench

/// The raw floor: `n` `try_acquire` + `release` cycles made directly, one after another.
fn raw_floor(url: &str, n: usize) -> Result<Duration, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let backend: Arc<dyn Backend> = backend_from_url(url).map_err(|e| e.to_string())?;
        let name = LockName::new(dlock_tests::fresh_name("floor")).map_err(|e| e.to_string())?;
        let cycle = || async {
            let request =
                AcquireRequest::new(name.clone(), Owner::generate(), Duration::from_secs(30));
            match backend
                .try_acquire(&request)
                .await
                .map_err(|e| e.to_string())?
            {
                AcquireOutcome::Acquired(lease) => {
                    backend.release(&lease).await.map_err(|e| e.to_string())
                }
                AcquireOutcome::Busy(holder) => Err(format!("floor: busy ({})", holder.owner)),
            }
        };
        // First use (connections, bucket checks) is not part of the floor.
        cycle().await?;
        let start = Instant::now();
        for _ in 0..n {
            cycle().await?;
        }
        Ok(start.elapsed())
    })
}

fn bench(args: &BenchArgs) -> Result<bool, String> {
    let run = &args.run;
    let ttl = run.ttl.unwrap_or(Duration::from_secs(30));
    prepare(&run.backend)?;
    let files = Files::new(run)?;
    let outcome = run_workers(run, ttl, &files, &Chaos::default())?;
    let a = read_log(&files)?;
    let n = run.processes * run.acquisitions as usize;
    let floor = if args.no_floor {
        None
    } else {
        Some(raw_floor(&run.backend, n)?)
    };
    let ideal = run.hold.as_nanos() as u64 * n as u64;
    let per = |count: f64| format!("{:.2}", count / a.entries.max(1) as f64);
    let requests = outcome
        .requests
        .map_or_else(|| "—".to_string(), |r| per(r as f64));
    // The lock's cost: wall time not spent inside a section (the holds as measured, so a
    // sleep's overshoot is not charged to the lock).
    let cost = a.wall.saturating_sub(a.held) / a.entries.max(1) as u64;
    let q = |q: f64| quantile(&a.handoffs, q).map_or_else(|| "—".to_string(), human);
    let contended = a.handoffs.len();
    println!(
        "\ndlock-contend bench: {}, {}, hold {:?}, ttl {:?}\n",
        run.backend,
        workers_label(run),
        run.hold,
        ttl
    );
    println!(
        "| backend | workers × acquisitions | hold | wall | ideal (N×K×hold) | held (measured) | lock cost / acq | handoff p50 | p90 | p99 | backend calls / acq | requests / acq | raw floor / cycle | Jain (waits) | barging |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.3} | {} of {} ({:.1}%) |",
        kind(&run.backend),
        workers_label(run),
        human(run.hold.as_nanos() as u64),
        human(a.wall),
        human(ideal),
        human(a.held),
        human(cost),
        q(0.5),
        q(0.9),
        q(0.99),
        per(outcome.calls.requests() as f64),
        requests,
        floor.map_or_else(
            || "—".to_string(),
            |f| human(f.as_nanos() as u64 / n.max(1) as u64)
        ),
        a.jain(),
        a.barges,
        contended,
        100.0 * a.barges as f64 / contended.max(1) as f64,
    );
    println!(
        "\nbackend calls: {} acquire, {} renew, {} release, {} read, {} wait (not a request){}",
        outcome.calls.acquires,
        outcome.calls.renewals,
        outcome.calls.releases,
        outcome.calls.reads,
        outcome.calls.waits,
        floor.map_or_else(String::new, |f| format!(
            "; raw floor: {n} cycles in {}",
            human(f.as_nanos() as u64)
        )),
    );
    println!("\n| worker | acquisitions | mean wait | max wait |\n|---|---|---|---|");
    for (id, worker) in &a.workers {
        println!(
            "| {id} | {} | {} | {} |",
            worker.entries,
            human(worker.mean_wait() as u64),
            human(worker.max_wait())
        );
    }
    let mut ok = true;
    let all_done = a.workers.len() == run.processes
        && a.workers
            .values()
            .all(|w| w.entries == run.acquisitions as usize);
    if !all_done || !outcome.failures.is_empty() {
        println!(
            "\nFAILED: not every worker finished its acquisitions: {:?}",
            outcome.failures
        );
        ok = false;
    }
    if a.unexcused_overlaps() > 0 || a.unexcused_collisions() > 0 {
        println!(
            "\nFAILED: {} overlaps, {} marker collisions",
            a.unexcused_overlaps(),
            a.unexcused_collisions()
        );
        ok = false;
    }
    Ok(ok)
}

// ---------------------------------------------------------------------------------------------
// scale

fn scale(args: &ScaleArgs) -> Result<bool, String> {
    let run = &args.run;
    let ttl = run.ttl.unwrap_or(Duration::from_secs(3));
    if !(0.0..=1.0).contains(&args.faults) {
        return Err("--faults is a probability, 0 to 1".into());
    }
    prepare(&run.backend)?;
    let files = Files::new(run)?;
    let chaos = Chaos {
        faults: args.faults,
        seed: args.seed,
        kill_every: args.kill_every,
        stop_every: args.stop_every,
        restart: args.restart.clone(),
        restart_every: args.restart_every,
    };
    let started = Instant::now();
    let outcome = run_workers(run, ttl, &files, &chaos)?;
    let took = started.elapsed();
    let a = read_log(&files)?;
    let expected = run.processes * run.acquisitions as usize;
    let completed = a.exits + a.lost;
    let stranded_max = a.stranded.iter().copied().max();
    let stranded_limit = ttl + args.slack;

    let mut failures = Vec::new();
    if a.unexcused_overlaps() > 0 {
        let first: Vec<String> = a
            .overlaps
            .iter()
            .filter(|o| !o.excused)
            .take(3)
            .map(|o| format!("{} entered while {} was inside", o.later, o.earlier))
            .collect();
        failures.push(format!(
            "{} overlaps among holders that did not report loss (e.g. {})",
            a.unexcused_overlaps(),
            first.join("; ")
        ));
    }
    if a.unexcused_collisions() > 0 {
        failures.push(format!(
            "{} O_EXCL marker collisions not excused by a reported loss",
            a.unexcused_collisions()
        ));
    }
    if !a.token_regressions.is_empty() {
        failures.push(format!(
            "fencing tokens not increasing in enter order: {} times, first {:?}",
            a.token_regressions.len(),
            a.token_regressions[0]
        ));
    }
    if !a.unfinished.is_empty() {
        failures.push(format!(
            "{} enters without an exit, a loss or a kill (workers {:?})",
            a.unfinished.len(),
            a.unfinished.iter().take(3).collect::<Vec<_>>()
        ));
    }
    if completed != expected {
        failures.push(format!(
            "{completed} sections completed, expected {expected}"
        ));
    }
    if !outcome.failures.is_empty() {
        failures.push(format!("children failed: {:?}", outcome.failures));
    }
    if let Some(max) = stranded_max
        && Duration::from_nanos(max) > stranded_limit
    {
        failures.push(format!(
            "a killed holder's lock stayed stranded {} (limit ttl + slack = {:?})",
            human(max),
            stranded_limit
        ));
    }
    let tokens = if run.no_lock || a.tokens == 0 {
        "none (backend has no tokens)".to_string()
    } else if a.tokens < a.entries {
        format!("only {} of {} enters had one", a.tokens, a.entries)
    } else if a.token_regressions.is_empty() {
        "strictly increasing".to_string()
    } else {
        format!("{} regressions", a.token_regressions.len())
    };
    if a.tokens > 0 && a.tokens < a.entries {
        failures.push(format!(
            "{tokens}: a backend with tokens gave none to some holders"
        ));
    }
    let faults = match outcome.faults {
        Some(c) if c.faults() > 0 => format!(
            "{} of {} requests: {} delayed, {} slow answers, {} resets, {} answers dropped, {} 429/5xx",
            c.faults(),
            outcome.requests.unwrap_or(0),
            c.delay,
            c.delay_answer,
            c.reset,
            c.drop_answer,
            c.http_status
        ),
        Some(_) => format!("none ({} requests)", outcome.requests.unwrap_or(0)),
        None => "none".to_string(),
    };
    let lock_note = if run.no_lock {
        " **(no lock: self-check)**"
    } else {
        ""
    };
    println!(
        "\ndlock-contend scale: {}{lock_note}, {}, hold {:?}, ttl {:?}, took {:.1} s\n",
        run.backend,
        workers_label(run),
        run.hold,
        ttl,
        took.as_secs_f64()
    );
    println!(
        "overlaps by the log: {} ({} excused: the earlier holder reported `lost` before leaving; {} such holders were taken over while stopped or cut off); O_EXCL marker collisions: {} ({} excused)",
        a.overlaps.len(),
        a.excused_overlaps(),
        a.taken_over(),
        a.marker_collisions.len(),
        a.marker_collisions.len() - a.unexcused_collisions()
    );
    println!(
        "sections: {} entered, {} exit, {} lost, {} killed; releases answered lost: {}, failed: {}; acquire errors retried: {}; restarts: {}",
        a.entries,
        a.exits,
        a.lost,
        a.kills,
        outcome.counts.release_lost,
        outcome.counts.release_errors,
        outcome.counts.acquire_errors,
        outcome.restarts
    );
    if !a.stranded.is_empty() {
        println!(
            "stranded after a kill: {} (limit {:?})",
            a.stranded
                .iter()
                .map(|s| human(*s))
                .collect::<Vec<_>>()
                .join(", "),
            stranded_limit
        );
    }
    println!();
    println!(
        "| backend | processes | acquisitions | faults injected | kills | stops | server restarts | holder knew first (lost) | overlaps | fencing tokens | longest stranded | result |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {}{lock_note} | {} | {} | {} | {} | {} | {} | {} ({} taken over) | {} | {} | {} | {} |",
        kind(&run.backend),
        workers_label(run),
        a.entries,
        faults,
        a.kills,
        a.stops,
        outcome.restarts,
        a.lost,
        a.taken_over(),
        a.unexcused_overlaps() + a.unexcused_collisions(),
        tokens,
        stranded_max.map_or_else(|| "—".to_string(), human),
        if failures.is_empty() { "ok" } else { "FAILED" }
    );
    for failure in &failures {
        println!("\nFAILED: {failure}");
    }
    Ok(failures.is_empty())
}
