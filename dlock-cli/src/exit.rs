//! Exit codes (sysexits where one applies) and the failures that end `dlock`.

use dlock_runtime::{Error, ErrorKind};

/// `status`: the lock is free.
pub const FREE: u8 = 1;
/// Bad input: nothing was acquired (EX_USAGE).
pub const USAGE: u8 = 64;
/// `release --force`: the lock no longer has the version given (EX_DATAERR).
pub const STALE_VERSION: u8 = 65;
/// The backend is unavailable: unreachable, throttled, timed out (EX_UNAVAILABLE).
pub const UNAVAILABLE: u8 = 69;
/// An internal error (EX_SOFTWARE).
pub const SOFTWARE: u8 = 70;
/// The command could not be started for a system reason (EX_OSERR).
pub const OS_ERROR: u8 = 71;
/// `run`: the lock stayed busy for the whole timeout (EX_TEMPFAIL); `--conflict-exit-code`.
pub const CONFLICT: u8 = 75;
/// The backend refused in a way retrying will not fix (EX_CONFIG).
pub const CONFIG: u8 = 78;
/// `run`: the lease was lost while the command ran.
pub const LOST: u8 = 79;
/// `run`: the command was found but could not be executed (as shells and timeout(1) do).
pub const CANNOT_EXECUTE: u8 = 126;
/// `run`: the command was not found (as shells and timeout(1) do).
pub const NOT_FOUND: u8 = 127;

/// The shells' status for a process killed by `signal`: 128 + N.
pub fn signalled(signal: i32) -> u8 {
    u8::try_from(128 + signal.clamp(1, 127)).unwrap_or(u8::MAX)
}

/// Why `dlock` stops without success of its own.
#[derive(Debug)]
pub enum Failure {
    /// Bad input, reported the way clap reports it (with the usage line), exit 64.
    Usage(Box<clap::Error>),
    /// Anything else: a message for stderr and an exit code.
    Exit {
        /// The exit code.
        code: u8,
        /// What happened and what to do; printed after `dlock: `.
        message: String,
    },
}

impl Failure {
    /// A failure with `code` and `message`.
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Failure::Exit {
            code,
            message: message.into(),
        }
    }

    /// A usage error of subcommand `sub` (the top level if `None`), shown with its usage line.
    pub fn usage(sub: Option<&str>, message: impl std::fmt::Display) -> Self {
        use clap::CommandFactory;
        let mut command = crate::cli::Cli::command();
        command.build();
        let command = match sub.and_then(|s| command.find_subcommand_mut(s)) {
            Some(sub) => sub.clone(),
            None => command,
        };
        let mut command = command;
        Failure::Usage(Box::new(
            command.error(clap::error::ErrorKind::ValueValidation, message),
        ))
    }

    /// A runtime error, with the code its kind calls for (`conflict` for busy and timeout).
    pub fn from_error(error: &Error, conflict: u8) -> Self {
        Failure::new(code_of(error, conflict), error.to_string())
    }

    /// Prints the failure on stderr and returns its exit code.
    pub fn report(self) -> u8 {
        match self {
            Failure::Usage(error) => {
                let _ = error.print();
                USAGE
            }
            Failure::Exit { code, message } => {
                if !message.is_empty() {
                    eprintln!("dlock: {message}");
                }
                code
            }
        }
    }
}

/// The exit code for a runtime error.
pub fn code_of(error: &Error, conflict: u8) -> u8 {
    match error.kind() {
        ErrorKind::Busy | ErrorKind::Timeout => conflict,
        ErrorKind::Lost => LOST,
        ErrorKind::Changed => STALE_VERSION,
        ErrorKind::InvalidName => USAGE,
        ErrorKind::Unavailable => UNAVAILABLE,
        ErrorKind::Config | ErrorKind::Backend => CONFIG,
        _ => SOFTWARE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_map_like_shells() {
        assert_eq!(signalled(15), 143);
        assert_eq!(signalled(2), 130);
        assert_eq!(signalled(9), 137);
    }

    #[test]
    fn runtime_errors_map_to_sysexits() {
        let busy = Error::Busy {
            name: "x".into(),
            holder: None,
            hint: String::new(),
        };
        assert_eq!(code_of(&busy, CONFLICT), 75);
        assert_eq!(code_of(&busy, 0), 0);
        assert_eq!(
            code_of(&Error::temporary("s3", "503", None), CONFLICT),
            UNAVAILABLE
        );
        assert_eq!(
            code_of(&Error::permanent("s3", "no bucket", None), CONFLICT),
            CONFIG
        );
        assert_eq!(code_of(&Error::Lost { name: "x".into() }, CONFLICT), LOST);
    }
}
