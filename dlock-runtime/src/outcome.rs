//! How a locked function reports a lock it could not take.

use crate::Error;

/// Turns a lock failure (busy, timeout, backend error) into a value of a locked function's
/// return type. The attribute requires it of the return type:
///
/// - `Result<T, E>` with `E: From<dlock_runtime::Error>` returns `Err`;
/// - `Option<T>` returns `None`;
/// - `()` skips the body.
///
/// Contention (the lock is busy, or stayed busy for the whole timeout) is the only thing
/// `Option` and `()` functions skip quietly (logged at DEBUG and INFO level). Every other
/// failure — no registry, an unknown backend, an unreachable server, a missing bucket or an
/// invalid name — is also logged at ERROR level by the attribute, whatever the return type.
///
/// Implement it for your own return types to decide yourself:
///
/// ```
/// use dlock_runtime::{Error, LockOutcome};
///
/// enum JobStatus { Done, Skipped(String) }
///
/// impl LockOutcome for JobStatus {
///     fn from_lock_error(error: Error) -> Self {
///         JobStatus::Skipped(error.to_string())
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "#[distributed_lock] cannot report a busy or failed lock through `{Self}`",
    label = "this return type cannot carry a lock failure",
    note = "return `Result<T, E>` with `E: From<dlock_runtime::Error>`, `Option<T>` (None when the lock is not taken) or `()` (the body is skipped and the failure logged)",
    note = "`std::io::Result<T>` works as it is (dlock's errors convert into `std::io::Error`); for another error type `E`, add `impl From<dlock_runtime::Error> for E` (thiserror: a `#[from] dlock_runtime::Error` variant)",
    note = "or implement `dlock_runtime::LockOutcome` for this type"
)]
pub trait LockOutcome {
    /// The value the function returns when the lock was not taken.
    fn from_lock_error(error: Error) -> Self;
}

impl<T, E: From<Error>> LockOutcome for Result<T, E> {
    fn from_lock_error(error: Error) -> Self {
        Err(E::from(error))
    }
}

impl<T> LockOutcome for Option<T> {
    fn from_lock_error(error: Error) -> Self {
        if error.is_contention() {
            tracing::debug!(error = %error, "lock not taken; returning None");
        }
        None
    }
}

impl LockOutcome for () {
    fn from_lock_error(error: Error) {
        if error.is_contention() {
            tracing::info!(error = %error, "lock not taken; skipped the locked function");
        }
    }
}
