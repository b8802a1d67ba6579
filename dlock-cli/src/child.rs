//! The guarded command: started in its own process group, signalled as a group, and the
//! signals `dlock` itself receives.

use crate::exit::{self, Failure};
use rustix::process::{Pid, Signal, kill_process_group};
use std::ffi::OsString;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use tokio::signal::unix::{SignalKind, signal};

/// A running command, leader of its own process group.
#[derive(Debug)]
pub struct Child {
    child: tokio::process::Child,
    /// The process group id (the leader's pid).
    group: Pid,
    /// The program, for messages.
    program: String,
}

impl Child {
    /// Starts `command` (program and arguments) in a new process group, with `env` added to
    /// dlock's environment and `unset` removed from it.
    pub fn spawn(
        command: &[OsString],
        env: &[(String, String)],
        unset: &[&str],
    ) -> Result<Child, Failure> {
        let (program, args) = command
            .split_first()
            .ok_or_else(|| Failure::usage(Some("run"), "no command to run after `--`"))?;
        let shown = program.to_string_lossy().into_owned();
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args).process_group(0);
        for var in unset {
            cmd.env_remove(var);
        }
        for (var, value) in env {
            cmd.env(var, value);
        }
        let child = cmd.spawn().map_err(|e| {
            let code = match e.kind() {
                io::ErrorKind::NotFound => exit::NOT_FOUND,
                io::ErrorKind::PermissionDenied => exit::CANNOT_EXECUTE,
                _ => exit::OS_ERROR,
            };
            Failure::new(code, format!("cannot run `{shown}`: {e}"))
        })?;
        let group = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(Pid::from_raw)
            .ok_or_else(|| Failure::new(exit::SOFTWARE, "the started command has no pid"))?;
        Ok(Child {
            child,
            group,
            program: shown,
        })
    }

    /// The program's name as given.
    pub fn program(&self) -> &str {
        &self.program
    }

    /// Sends `signal` to the command's whole process group, unless the command has exited
    /// already (then its group id may no longer be its own).
    pub fn signal_group(&mut self, signal: Signal) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        if let Err(e) = kill_process_group(self.group, signal) {
            // ESRCH: the group is gone already.
            if e != rustix::io::Errno::SRCH {
                tracing::warn!(error = %e, signal = ?signal, "could not signal the command's process group");
            }
        }
    }

    /// Waits for the command to exit (cancel-safe).
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        self.child.wait().await
    }
}

/// The exit code a shell would show for `status`: the code, or 128 + the signal.
pub fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(exit::SOFTWARE),
        (None, Some(signal)) => exit::signalled(signal),
        (None, None) => exit::SOFTWARE,
    }
}

/// SIGINT, SIGTERM and SIGHUP to `dlock`: caught from the start, so that they are forwarded to
/// the command (or stop the wait) instead of killing dlock with the lock held.
#[derive(Debug)]
pub struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Starts catching them.
    pub fn catch() -> Result<Signals, Failure> {
        let catch = |kind| {
            signal(kind)
                .map_err(|e| Failure::new(exit::OS_ERROR, format!("cannot catch signals: {e}")))
        };
        Ok(Signals {
            interrupt: catch(SignalKind::interrupt())?,
            terminate: catch(SignalKind::terminate())?,
            hangup: catch(SignalKind::hangup())?,
        })
    }

    /// The next signal received (cancel-safe).
    pub async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.interrupt.recv() => Signal::INT,
            _ = self.terminate.recv() => Signal::TERM,
            _ = self.hangup.recv() => Signal::HUP,
        }
    }
}

/// `SIGTERM`, for messages.
pub fn signal_name(signal: Signal) -> &'static str {
    match signal {
        Signal::INT => "SIGINT",
        Signal::TERM => "SIGTERM",
        Signal::HUP => "SIGHUP",
        Signal::KILL => "SIGKILL",
        _ => "a signal",
    }
}
