//! A worker process for dlock's multi-process tests. It takes locks through
//! `#[distributed_lock]`, exactly as an application would.
//!
//! - `stress`: N times, take the lock and, inside it, log `enter`/`exit` lines (appended with
//!   one write each, so the log's order is the real order) and increment a counter file with
//!   an unsynchronised read-modify-write.
//! - `hold`: take the lock, print `acquired`, and sleep until killed.
//! - `once`: one attempt; exit 0 when acquired, 3 when busy (the error on stderr).
//! - `wait`: wait up to 60 s (taking over a dead holder's lock after its 3 s lease).

use clap::{Parser, Subcommand};
use dlock_runtime::{Error, Registry, distributed_lock};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
struct Cli {
    /// Backend URL, e.g. file:///tmp/locks
    #[arg(long)]
    backend: String,
    /// Lock name
    #[arg(long)]
    name: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Stress {
        #[arg(long)]
        iterations: u32,
        #[arg(long)]
        log: PathBuf,
        #[arg(long)]
        counter: PathBuf,
    },
    Hold,
    Once,
    /// Wait up to 60 s, taking over a dead holder's lock after its lease.
    Wait,
}

#[derive(Debug, thiserror::Error)]
enum WorkerError {
    #[error(transparent)]
    Lock(#[from] Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

#[distributed_lock(name = "{name}", timeout = "120s", ttl = "10s")]
fn critical_section(name: &str, round: u32, log: &Path, counter: &Path) -> Result<(), WorkerError> {
    let pid = std::process::id();
    append(log, &format!("enter {pid} {round}\n"))?;
    let value: u64 = std::fs::read_to_string(counter)?
        .trim()
        .parse()
        .unwrap_or(0);
    std::thread::sleep(Duration::from_micros(200));
    std::fs::write(counter, format!("{}\n", value + 1))?;
    append(log, &format!("exit {pid} {round}\n"))?;
    Ok(())
}

#[distributed_lock(name = "{name}", timeout = "0s", ttl = "3s")]
fn hold(name: &str) -> Result<(), WorkerError> {
    println!("acquired");
    std::io::stdout().flush()?;
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[distributed_lock(name = "{name}", timeout = "0s")]
fn once(name: &str) -> Result<(), WorkerError> {
    Ok(())
}

#[distributed_lock(name = "{name}", timeout = "60s", ttl = "3s")]
fn wait(name: &str) -> Result<(), WorkerError> {
    Ok(())
}

fn append(path: &Path, line: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)?;
    file.write_all(line.as_bytes())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match Registry::builder()
        .backend_url("test", &cli.backend)
        .build()
    {
        Ok(registry) => registry
            .install()
            .expect("the only install in this process"),
        Err(e) => {
            eprintln!("worker: {e}");
            return ExitCode::from(2);
        }
    }
    let result = match &cli.command {
        Command::Stress {
            iterations,
            log,
            counter,
        } => {
            (0..*iterations).try_for_each(|round| critical_section(&cli.name, round, log, counter))
        }
        Command::Hold => hold(&cli.name),
        Command::Once => once(&cli.name),
        Command::Wait => wait(&cli.name),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(WorkerError::Lock(e @ Error::Busy { .. })) => {
            eprintln!("{e}");
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("worker: {e}");
            ExitCode::FAILURE
        }
    }
}
