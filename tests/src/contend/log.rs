//! The shared append-only log and the O_EXCL marker file: the witness that sits outside dlock.
//!
//! Every line is `KIND ID TOKEN T_NS [EXTRA]`, written with one `write` on a file opened with
//! `O_APPEND`, so the file's order is the order in which the writes happened, across
//! processes. `T_NS` is `CLOCK_MONOTONIC` in nanoseconds (the same clock in every process of
//! the machine); `TOKEN` is the fencing token or `-`; `ID` is a process id (`4242`) or, in
//! `--tasks` mode, a process id and a task number (`4242.3`).
//!
//! | kind | written by | when |
//! |---|---|---|
//! | `go` | parent | the start signal is sent (wall time is measured from it) |
//! | `want` | worker | it starts waiting for the lock |
//! | `enter` | worker | it holds the lock and created the marker (after `overlap`, if any) |
//! | `overlap` | worker | its O_EXCL create of the marker failed: someone else's marker was there (`EXTRA` = that holder's id) |
//! | `exit` | worker | it leaves its section with a guard that is not lost (before removing the marker and releasing) |
//! | `lost` | worker | it leaves its section and its guard reports the lease lost |
//! | `kill` | parent | it is about to `kill -9` this holder (stopped first, marker removed) |
//! | `stop` / `cont` | parent | it `SIGSTOP`ped / `SIGCONT`ed this holder |

use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

/// `CLOCK_MONOTONIC` in nanoseconds: comparable between processes on one machine.
pub fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64) * 1_000_000_000 + t.tv_nsec as u64
}

/// An append-only log file, one `write` per line.
pub struct Log {
    file: File,
}

impl Log {
    /// Opens (creating) the log for appending.
    pub fn open(path: &Path) -> io::Result<Log> {
        let file = OpenOptions::new().append(true).create(true).open(path)?;
        Ok(Log { file })
    }

    /// Appends `KIND ID TOKEN NOW [EXTRA]` and returns the timestamp written.
    pub fn line(
        &self,
        kind: &str,
        id: &str,
        token: Option<u64>,
        extra: Option<&str>,
    ) -> io::Result<u64> {
        let t = now_ns();
        self.line_at(kind, id, token, t, extra)?;
        Ok(t)
    }

    /// Appends a line with a given timestamp.
    pub fn line_at(
        &self,
        kind: &str,
        id: &str,
        token: Option<u64>,
        t: u64,
        extra: Option<&str>,
    ) -> io::Result<()> {
        let token = token.map_or_else(|| "-".to_string(), |t| t.to_string());
        let line = match extra {
            Some(extra) => format!("{kind} {id} {token} {t} {extra}\n"),
            None => format!("{kind} {id} {token} {t}\n"),
        };
        // One write on an O_APPEND file: atomic with respect to other appenders.
        (&self.file).write_all(line.as_bytes())
    }
}

/// The marker: a file created with `O_EXCL` on enter and removed on exit. Its content is the
/// holder's id, so the parent can see who holds the lock and a worker that finds it can say
/// whose it was.
pub struct Marker {
    path: PathBuf,
}

impl Marker {
    /// The marker at `path` (not created yet).
    pub fn new(path: &Path) -> Marker {
        Marker {
            path: path.to_path_buf(),
        }
    }

    /// Creates the marker for `id`. When it already exists (an overlap), returns the id that
    /// was in it and takes the marker over (writes `id` into it); never fails on overlap.
    pub fn enter(&self, id: &str) -> io::Result<Option<String>> {
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&self.path)
        {
            Ok(mut file) => {
                file.write_all(id.as_bytes())?;
                Ok(None)
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                let previous = self.holder().unwrap_or_default();
                std::fs::write(&self.path, id.as_bytes())?;
                Ok(Some(if previous.is_empty() {
                    "?".to_string()
                } else {
                    previous
                }))
            }
            Err(e) => Err(e),
        }
    }

    /// Removes the marker if it is still `id`'s (a lost holder must not remove the next
    /// holder's marker).
    pub fn exit(&self, id: &str) -> io::Result<()> {
        if self.holder().as_deref() == Some(id) {
            match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// The id in the marker, if there is one.
    pub fn holder(&self) -> Option<String> {
        let mut text = String::new();
        File::open(&self.path)
            .ok()?
            .read_to_string(&mut text)
            .ok()?;
        Some(text)
    }

    /// Removes the marker whoever it belongs to (the parent, for a holder it is about to kill).
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
