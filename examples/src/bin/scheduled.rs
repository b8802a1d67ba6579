//! A scheduled job that every replica runs on the same timer: each tick's report must be made
//! by exactly one of them. The lock name carries the tick, and `min_hold` keeps the lock for
//! most of the tick so that a replica that arrives late (its clock a bit behind, or just slow
//! to start) finds it taken instead of making the report a second time.
//!
//! ```text
//! cargo run -p dlock-examples --bin scheduled -- --ticks 3 &
//! cargo run -p dlock-examples --bin scheduled -- --ticks 3
//! ```

use clap::Parser;
use dlock_runtime::distributed_lock;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Parser)]
#[command(about = "Run a job every tick on exactly one replica")]
struct Cli {
    /// Where the locks live: file:///dir, memory://, s3://bucket/prefix, gs://bucket/prefix,
    /// dynamodb://table, mongodb://host/db?collection=locks
    #[arg(long, env = "DLOCK_BACKEND", default_value_t = dlock_examples::default_backend_url())]
    backend: String,
    /// How many ticks to run
    #[arg(long, default_value_t = 3)]
    ticks: u64,
    /// A name for this replica in the output
    #[arg(long, default_value_t = format!("pid {}", std::process::id()))]
    replica: String,
}

/// The tick period: 2 s, so the example is quick to watch.
const PERIOD: Duration = Duration::from_secs(2);

#[distributed_lock(name = "report-{tick}", timeout = "0s", min_hold = "1500ms")]
fn report(tick: u64, replica: &str) -> Option<()> {
    println!("tick {tick}: report made by {replica}");
    Some(())
}

fn main() -> ExitCode {
    dlock_examples::init_logging();
    let cli = Cli::parse();
    if let Err(e) = dlock_examples::install_registry(&cli.backend) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    for _ in 0..cli.ticks {
        // Sleep to the next tick boundary of the wall clock, as cron would.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let tick = now.as_millis() / PERIOD.as_millis() + 1;
        let at = Duration::from_millis((tick * PERIOD.as_millis()) as u64);
        std::thread::sleep(at.saturating_sub(now));
        if report(tick as u64, &cli.replica).is_none() {
            println!(
                "tick {tick}: skipped by {}, another replica has it",
                cli.replica
            );
        }
    }
    ExitCode::SUCCESS
}
