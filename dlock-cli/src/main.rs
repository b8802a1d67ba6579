//! `dlock`: run any shell command under a distributed lock, and inspect or free locks.
//!
//! ```text
//! dlock run --backend s3://ci-locks/app --name deploy-prod --timeout 10m -- ./deploy.sh prod
//! dlock status deploy-prod --json
//! dlock release --force deploy-prod --if-version 3
//! ```
//!
//! Built on `dlock-runtime` only; `dlock --help` documents every option and exit code.

mod child;
mod cli;
mod connect;
mod exit;
mod inspect;
mod logging;
mod man;
mod output;
mod run;
mod waiting;

use clap::{CommandFactory, Parser};
use cli::{Cli, Command};
use exit::Failure;
use std::io::IsTerminal;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(mut e) => {
            // Help and version go to stdout with 0; usage errors are EX_USAGE, not clap's 2.
            hint_the_double_dash(&mut e);
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { exit::USAGE } else { 0 });
        }
    };
    logging::init(cli.global.quiet, cli.global.verbose);
    let code = match dispatch(cli) {
        Ok(code) => code,
        Err(failure) => failure.report(),
    };
    ExitCode::from(code)
}

/// `dlock run --name x make deploy` (no `--`): say where the command goes.
fn hint_the_double_dash(e: &mut clap::Error) {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    if e.kind() == ErrorKind::UnknownArgument
        && args.first().is_some_and(|a| a == "run")
        && !args.iter().any(|a| a == "--")
    {
        e.insert(
            ContextKind::Suggested,
            ContextValue::StyledStrs(vec![
                "put the command after `--`: dlock run --name NAME -- COMMAND [ARGS...]".into(),
            ]),
        );
    }
}

fn dispatch(cli: Cli) -> Result<u8, Failure> {
    let sub = match &cli.command {
        Command::Completions(args) => {
            let mut command = Cli::command();
            clap_complete::generate(args.shell, &mut command, "dlock", &mut std::io::stdout());
            return Ok(0);
        }
        Command::Man(args) => {
            man::render(args.subcommand.as_deref(), &mut std::io::stdout())
                .map_err(|e| Failure::new(exit::OS_ERROR, format!("cannot write: {e}")))?;
            return Ok(0);
        }
        Command::Run(_) => "run",
        Command::Status(_) => "status",
        Command::List(_) => "list",
        Command::Release(_) => "release",
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(exit::OS_ERROR, format!("cannot start: {e}")))?;
    runtime.block_on(async {
        let target = connect::open(cli.global.backend.as_deref(), sub)?;
        tracing::debug!(backend = %target.shown, kind = target.backend.kind(), "backend");
        match &cli.command {
            Command::Run(args) => {
                let ui = run::Ui {
                    status_line: !cli.global.quiet && std::io::stderr().is_terminal(),
                    quiet: cli.global.quiet,
                };
                run::run(&target, args, ui).await
            }
            Command::Status(args) => inspect::status(&target, args).await,
            Command::List(args) => inspect::list(&target, args).await,
            Command::Release(args) => inspect::release(&target, args).await,
            Command::Completions(_) | Command::Man(_) => Ok(0),
        }
    })
}
