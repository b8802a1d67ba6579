//! The backend a command works on: `--backend`, `DLOCK_BACKEND`, or the file backend's default
//! directory.

use crate::exit::{self, Failure};
use dlock_runtime::{Backend, ErrorKind, FileBackend, LockName};
use std::sync::Arc;

/// An opened backend and how to name it to a person.
#[derive(Debug)]
pub struct Target {
    /// The backend.
    pub backend: Arc<dyn Backend>,
    /// The URL as given (flag or environment), `None` for the default file directory.
    pub url: Option<String>,
    /// The URL, or `file://DIR` for the default, for messages.
    pub shown: String,
}

impl Target {
    /// `--backend URL ` as the user gave it, for commands printed back to them (empty for the
    /// default backend).
    pub fn backend_flag(&self) -> String {
        match &self.url {
            Some(url) => format!("--backend {} ", crate::output::shell_quote(url)),
            None => String::new(),
        }
    }
}

/// Opens the backend `url` names (`sub` is the subcommand, for usage errors). Makes no request:
/// the backends connect at their first call.
pub fn open(url: Option<&str>, sub: &str) -> Result<Target, Failure> {
    let url = url.map(str::trim).filter(|u| !u.is_empty());
    let Some(url) = url else {
        let dir = FileBackend::default_dir();
        let backend = FileBackend::new(&dir).map_err(|e| {
            Failure::new(
                exit::code_of(&e, exit::CONFIG),
                format!(
                    "{e} (this is the default backend, used because neither --backend nor \
                     DLOCK_BACKEND is set)"
                ),
            )
        })?;
        return Ok(Target {
            backend: Arc::new(backend),
            url: None,
            shown: format!("file://{}", dir.display()),
        });
    };
    if url.split_once("://").map(|(scheme, _)| scheme) == Some("memory") {
        return Err(Failure::usage(
            Some(sub),
            format!(
                "`{url}` is refused: a memory lock lives in the memory of one process, and each \
                 dlock command is a process of its own that exits at once, so such a lock would \
                 protect nothing\n\n  tip: use file:///var/lock/NAME for the processes of one \
                 machine, or a shared store (s3://, gs://, dynamodb://, mongodb://, postgres://, redis://, \
                 etcd://) across machines"
            ),
        ));
    }
    match dlock_runtime::backend_from_url(url) {
        Ok(backend) => Ok(Target {
            backend,
            url: Some(url.to_string()),
            shown: url.to_string(),
        }),
        Err(e) if e.kind() == ErrorKind::Config => Err(Failure::usage(
            Some(sub),
            format!(
                "bad --backend (or DLOCK_BACKEND) `{url}`: {e}\n\n  tip: for example \
                 file:///var/lock/app, s3://bucket/prefix, gs://bucket/prefix, dynamodb://table, \
                 mongodb://host:27017/db?collection=locks, postgres://user@host/db, \
                 redis://host:6379/, etcd://host:2379/prefix"
            ),
        )),
        Err(e) => Err(Failure::from_error(&e, exit::CONFLICT)),
    }
}

/// Validates a lock name before anything is acquired or asked.
pub fn name(name: &str, sub: &str) -> Result<LockName, Failure> {
    LockName::new(name).map_err(|e| Failure::usage(Some(sub), e))
}
