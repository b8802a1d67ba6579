//! A CI/CD script's `build` and `deploy` steps, which also get run by hand: `build` writes the
//! artifacts that `deploy` ships, so the two must never overlap, and two deploys of the same
//! environment must not either. The locks are declared on the functions; `main` only says
//! where they live.
//!
//! ```text
//! cargo run -p dlock-examples --bin deploy -- build
//! cargo run -p dlock-examples --bin deploy -- deploy --env prod
//! DLOCK_BACKEND=file:///var/lock/ci cargo run -p dlock-examples --bin deploy -- build
//! cargo run -p dlock-examples --features s3 --bin deploy -- --backend s3://my-locks/ci build
//! cargo run -p dlock-examples --features gcs --bin deploy -- --backend gs://my-locks/ci build
//! cargo run -p dlock-examples --features dynamodb --bin deploy -- --backend dynamodb://dlock_locks build
//! cargo run -p dlock-examples --features mongodb --bin deploy -- --backend 'mongodb://db1/app?collection=locks' build
//! ```

use clap::{Parser, Subcommand};
use dlock_runtime::distributed_lock;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(about = "Build and deploy, one at a time across processes and machines")]
struct Cli {
    /// Where the locks live: file:///dir, memory://, s3://bucket/prefix, gs://bucket/prefix,
    /// dynamodb://table, mongodb://host/db?collection=locks
    #[arg(long, env = "DLOCK_BACKEND", default_value_t = dlock_examples::default_backend_url())]
    backend: String,
    /// Seconds each step pretends to work
    #[arg(long, default_value_t = 2)]
    work_secs: u64,
    #[command(subcommand)]
    step: Step,
}

#[derive(Subcommand)]
enum Step {
    /// Compile into the shared artifacts directory
    Build,
    /// Ship the artifacts to an environment
    Deploy {
        #[arg(long, default_value = "staging")]
        env: String,
    },
}

#[derive(Debug, thiserror::Error)]
enum AppError {
    #[error(transparent)]
    Lock(#[from] dlock_runtime::Error),
}

/// Builds the artifacts; waits up to 30 s for a running build or deploy to finish.
#[distributed_lock(name = "artifacts", timeout = "30s", ttl = "60s")]
async fn build(work: Duration) -> Result<(), AppError> {
    match dlock_runtime::current().and_then(|l| l.fencing_token()) {
        Some(token) => println!("build: compiling (fencing token {token})"),
        None => println!("build: compiling (this backend issues no fencing tokens)"),
    }
    tokio::time::sleep(work).await;
    println!("build: artifacts ready");
    Ok(())
}

/// Deploys one environment at a time; the artifacts must not change underneath it.
#[distributed_lock(name = "deploy-{env}", timeout = "60s", ttl = "60s")]
async fn deploy(env: &str, work: Duration) -> Result<(), AppError> {
    println!("deploy {env}: started");
    ship(env, work).await?;
    println!("deploy {env}: done");
    Ok(())
}

#[distributed_lock(name = "artifacts", timeout = "30s", ttl = "60s")]
async fn ship(env: &str, work: Duration) -> Result<(), AppError> {
    println!("deploy {env}: shipping artifacts");
    tokio::time::sleep(work).await;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    dlock_examples::init_logging();
    let cli = Cli::parse();
    if let Err(e) = dlock_examples::install_registry(&cli.backend) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let work = Duration::from_secs(cli.work_secs);
    let result = match &cli.step {
        Step::Build => build(work).await,
        Step::Deploy { env } => deploy(env, work).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
