//! `dlock run`: acquire, run the command with the lease renewed meanwhile (the runtime's guard
//! does that), release when it ends, and pass its exit status through.

use crate::child::{self, Child, Signals, signal_name};
use crate::cli::{OnLost, RunArgs};
use crate::connect::{self, Target};
use crate::exit::{self, Failure};
use crate::waiting;
use dlock_runtime::{ErrorKind, Lock};
use rustix::process::Signal;
use std::time::Duration;
use tokio::time::Instant;

/// How long a command has to exit after SIGTERM, when its lease was lost, before SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(5);

/// How `dlock run` talks on stderr.
#[derive(Clone, Copy, Debug)]
pub struct Ui {
    /// Show the status line while waiting (stderr is a terminal and not `--quiet`).
    pub status_line: bool,
    /// `--quiet`.
    pub quiet: bool,
}

/// `dlock run`. Returns the command's exit status (or dlock's own code).
pub async fn run(target: &Target, args: &RunArgs, ui: Ui) -> Result<u8, Failure> {
    let name = connect::name(&args.name, "run")?;
    let caps = target.backend.capabilities();
    if let Some(var) = &args.fencing_env
        && !caps.fencing_tokens
    {
        return Err(Failure::new(
            exit::CONFIG,
            format!(
                "--fencing-env {var}: the {} backend ({}) issues no fencing tokens, so there is \
                 nothing to put in {var}; drop the option, or keep the lock on a backend that \
                 issues them (file, dynamodb, mongodb, postgres, redis, etcd). Nothing was acquired",
                target.backend.kind(),
                target.shown
            ),
        ));
    }
    let on_lost = args.on_lost.unwrap_or(if caps.leases {
        OnLost::Kill
    } else {
        OnLost::Warn
    });
    let mut signals = Signals::catch()?;

    let mut lock = Lock::new(name.as_str())
        .timeout(args.timeout.as_duration())
        .ttl(args.ttl);
    if let Some(min_hold) = args.min_hold {
        lock = lock.min_hold(min_hold);
    }
    tracing::info!(lock = %name, backend = %target.shown, timeout = %args.timeout, "acquiring");
    let acquire = waiting::acquire_with_status(
        lock.acquire_on(target.backend.clone()),
        target.backend.clone(),
        &name,
        args.timeout,
        ui.status_line,
    );
    let guard = tokio::select! {
        result = acquire => match result {
            Ok(guard) => guard,
            Err(e) if e.is_contention() => {
                let code = args.conflict_exit_code;
                let message = if ui.quiet && code == 0 { String::new() } else { e.to_string() };
                return Err(Failure::new(code, message));
            }
            Err(e) => return Err(Failure::from_error(&e, args.conflict_exit_code)),
        },
        signal = signals.recv() => {
            return Err(Failure::new(
                exit::signalled(signal.as_raw()),
                format!("{} while waiting for lock `{name}`; the command was not run", signal_name(signal)),
            ));
        }
    };
    let acquired = Instant::now();
    tracing::info!(lock = %name, fencing_token = ?guard.fencing_token(), "acquired");

    let token = guard.fencing_token().map(|t| t.to_string());
    let mut env = vec![("DLOCK_NAME".to_string(), name.to_string())];
    let mut unset = Vec::new();
    match &token {
        Some(token) => {
            env.push(("DLOCK_FENCING_TOKEN".into(), token.clone()));
            if let Some(var) = &args.fencing_env {
                env.push((var.clone(), token.clone()));
            }
        }
        // A token from an enclosing dlock would be wrong for this lock.
        None => unset.push("DLOCK_FENCING_TOKEN"),
    }
    let mut child = match Child::spawn(&args.command, &env, &unset) {
        Ok(child) => child,
        Err(failure) => {
            if let Err(e) = guard.release().await {
                tracing::warn!(lock = %name, error = %e, "could not release the lock");
            }
            return Err(failure);
        }
    };

    let handle = guard.handle();
    let mut lost = false;
    let mut kill_at: Option<Instant> = None;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            signal = signals.recv() => {
                tracing::info!(signal = signal_name(signal), "forwarding to the command's process group");
                child.signal_group(signal);
            }
            () = handle.lost(), if !lost => {
                lost = true;
                let why = format!(
                    "lost lock `{name}` while `{}` runs: its lease ran out before a renewal was \
                     confirmed, or another owner took it over",
                    child.program()
                );
                match on_lost {
                    OnLost::Kill => {
                        eprintln!(
                            "dlock: {why}. Stopping it (--on-lost kill): SIGTERM to its process \
                             group now, SIGKILL in {}s if it is still running",
                            KILL_GRACE.as_secs()
                        );
                        child.signal_group(Signal::TERM);
                        kill_at = Some(Instant::now() + KILL_GRACE);
                    }
                    OnLost::Warn => eprintln!(
                        "dlock: warning: {why}. It keeps running (--on-lost warn); its work may \
                         overlap with another holder's"
                    ),
                }
            }
            () = sleep_until(kill_at), if kill_at.is_some() => {
                kill_at = None;
                child.signal_group(Signal::KILL);
            }
        }
    };
    let code = match status {
        Ok(status) => child::exit_code(status),
        Err(e) => {
            eprintln!("dlock: lost track of `{}`: {e}", child.program());
            exit::OS_ERROR
        }
    };
    // --min-hold: a lease backend keeps the record for the rest of it after the release; a
    // lock without a lease (a file lock) ends with this process, so dlock stays until then.
    if let Some(min_hold) = args.min_hold
        && !caps.leases
    {
        let left = min_hold.saturating_sub(acquired.elapsed());
        if !left.is_zero() {
            tracing::info!(lock = %name, left = ?left, "holding the lock for the rest of --min-hold");
            tokio::select! {
                () = tokio::time::sleep(left) => {}
                signal = signals.recv() => {
                    tracing::info!(signal = signal_name(signal), "releasing before --min-hold is over");
                }
            }
        }
    }
    match guard.release().await {
        Ok(()) => tracing::info!(lock = %name, "released"),
        Err(e) if e.kind() == ErrorKind::Lost => {
            if !lost {
                lost = true;
                if on_lost == OnLost::Warn {
                    eprintln!("dlock: warning: {e}");
                }
            }
        }
        Err(e) => eprintln!(
            "dlock: warning: could not release lock `{name}`: {e}; it is freed when its lease \
             (ttl {}) runs out",
            humantime::format_duration(args.ttl)
        ),
    }
    if lost && on_lost == OnLost::Kill {
        return Err(Failure::new(
            exit::LOST,
            format!(
                "lock `{name}` was lost while `{}` ran (it exited with status {code}); its work \
                 may overlap with another holder's (exit {})",
                child.program(),
                exit::LOST
            ),
        ));
    }
    Ok(code)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
