//! `flock` on one file per lock name in a directory: many processes and users on one machine.
//!
//! The traps this module avoids (seed 004 and the usual lock-file attacks):
//! - a lock file created by one user must be lockable by another, also in a sticky,
//!   world-writable directory such as `/tmp`, where Linux's `fs.protected_regular` makes an
//!   `O_CREAT` open of another user's file fail even for root: existing files are opened
//!   without `O_CREAT`, new ones are created with `O_EXCL` and mode 0666;
//! - a symlink or hard link planted where the lock file goes is never followed or written
//!   through (`O_NOFOLLOW`, and a link count of one is required);
//! - lock names never leave the directory: they are percent-encoded into one file name;
//! - the locked body's own I/O errors are never mistaken for "already locked": locking is a
//!   separate step that finishes before the body starts;
//! - lock files are never deleted, because deleting a lock file that another process still has
//!   open silently breaks mutual exclusion.

use crate::backend::{
    AcquireOutcome, AcquireRequest, Backend, Capabilities, Holder, Lease, Owner, Version,
};
use crate::{Error, LockName};
use std::collections::HashMap;
use std::fs::{File, OpenOptions, Permissions, TryLockError};
use std::io::{self, ErrorKind};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const KIND: &str = "file";
/// A lock file holds one short record; anything larger is not ours.
const MAX_RECORD: u64 = 4096;
const MAGIC: &str = "dlock-lock v1";
/// Longer encoded names are shortened and hashed, well below the usual 255-byte file name limit.
const MAX_ENCODED: usize = 180;

/// Locks as `flock(2)` on files in one directory.
///
/// The kernel frees a lock the moment its process exits, however it exits (`kill -9`
/// included), so this backend needs no leases and no takeover. A fencing token is kept in each
/// lock file and increases with every acquisition, as long as the file is not deleted.
///
/// ```
/// use dlock_runtime::{FileBackend, Lock};
/// use std::sync::Arc;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), dlock_runtime::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// let backend = Arc::new(FileBackend::new(dir.path())?);
/// let guard = Lock::new("../../etc/passwd").acquire_on(backend.clone()).await?;
/// // The name stays inside the directory, encoded:
/// assert!(backend.path_for(guard.name()).starts_with(dir.path()));
/// guard.release().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct FileBackend {
    dir: PathBuf,
    /// Open lock files by owner id: the lock lives exactly as long as its file stays open.
    held: Arc<Mutex<HashMap<String, File>>>,
}

impl FileBackend {
    /// Locks in `dir`, created if missing with mode 1777 (sticky and world-writable, like
    /// `/tmp`) so that every user of the machine can create lock files there.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, Error> {
        let dir = dir.into();
        ensure_dir(&dir)?;
        Ok(FileBackend {
            dir,
            held: Arc::default(),
        })
    }

    /// Locks in `$DLOCK_FILE_DIR`, or in [`FileBackend::default_dir`] when it is unset.
    pub fn from_env() -> Result<Self, Error> {
        match std::env::var_os("DLOCK_FILE_DIR") {
            Some(dir) if !dir.is_empty() => Self::new(dir),
            _ => Self::new(Self::default_dir()),
        }
    }

    /// `$TMPDIR/dlock` (usually `/tmp/dlock`).
    pub fn default_dir() -> PathBuf {
        std::env::temp_dir().join("dlock")
    }

    /// The directory of the lock files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The lock file of `name`: always directly inside [`dir`](FileBackend::dir).
    pub fn path_for(&self, name: &LockName) -> PathBuf {
        self.dir.join(file_name(name))
    }

    fn held(&self) -> MutexGuard<'_, HashMap<String, File>> {
        // Every update is one insert or remove: a panic elsewhere cannot leave it inconsistent.
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn open(&self, name: &LockName, create: bool) -> Result<Option<File>, Error> {
        let path = self.path_for(name);
        open_lock_file(&path, create).map_err(|e| io_error(&path, e))
    }

    fn unlock(&self, lease: &Lease) -> Result<(), Error> {
        let file = self
            .held()
            .remove(&lease.owner.id)
            .ok_or_else(|| Error::Lost {
                name: lease.name.to_string(),
            })?;
        // Clear the holder but keep the token, so the next holder continues from it.
        let token = lease.fencing_token.unwrap_or_default();
        if let Err(e) = write_record(
            &file,
            &Record {
                token,
                holder: None,
            },
        ) {
            tracing::warn!(lock = %lease.name, error = %e, "could not clear the lock file's holder record");
        }
        file.unlock()
            .map_err(|e| io_error(&self.path_for(&lease.name), e))
        // Dropping `file` closes it.
    }
}

#[async_trait::async_trait]
impl Backend for FileBackend {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            freed_on_exit: true,
            fencing_tokens: true,
            ..Capabilities::default()
        }
    }

    async fn try_acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, Error> {
        let path = self.path_for(&request.name);
        let Some(file) = self.open(&request.name, true)? else {
            return Err(io_error(&path, io::Error::from(ErrorKind::NotFound)));
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Ok(AcquireOutcome::Busy(read_holder(&file).await));
            }
            Err(TryLockError::Error(e)) => return Err(io_error(&path, e)),
        }
        // We hold the lock: nobody else writes the record now.
        let previous = read_record(&file).map(|r| r.token).unwrap_or(0);
        let lease = Lease {
            name: request.name.clone(),
            owner: request.owner.clone(),
            version: Version::new((previous + 1).to_string()),
            ttl: request.ttl,
            fencing_token: Some(previous + 1),
            acquired_at: SystemTime::now(),
        };
        let record = Record {
            token: previous + 1,
            holder: Some(lease.holder()),
        };
        if let Err(e) = write_record(&file, &record) {
            let _ = file.unlock();
            return Err(io_error(&path, e));
        }
        self.held().insert(request.owner.id.clone(), file);
        Ok(AcquireOutcome::Acquired(lease))
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, Error> {
        // flock has no expiry: the lock is ours as long as we keep the file open.
        if self.held().contains_key(&lease.owner.id) {
            Ok(Lease {
                ttl,
                ..lease.clone()
            })
        } else {
            Err(Error::Lost {
                name: lease.name.to_string(),
            })
        }
    }

    async fn release(&self, lease: &Lease) -> Result<(), Error> {
        self.unlock(lease)
    }

    async fn inspect(&self, name: &LockName) -> Result<Option<Holder>, Error> {
        let Some(file) = self.open(name, false)? else {
            return Ok(None);
        };
        match file.try_lock_shared() {
            Ok(()) => {
                let _ = file.unlock();
                Ok(None)
            }
            Err(TryLockError::WouldBlock) => Ok(Some(read_holder(&file).await)),
            Err(TryLockError::Error(e)) => Err(io_error(&self.path_for(name), e)),
        }
    }

    fn release_now(&self, lease: &Lease) -> Option<Result<(), Error>> {
        Some(self.unlock(lease))
    }

    fn stale_lock_hint(&self, name: &LockName, holder: Option<&Holder>) -> String {
        let who = match holder {
            Some(h) if !h.owner.is_unknown() => {
                format!("pid {} on host {}", h.owner.pid, h.owner.host)
            }
            _ => "the holding process".to_string(),
        };
        format!(
            "The kernel frees it when {who} exits; if that process hangs, stop it. Do not delete {}: \
             processes that still have it open would stop excluding each other",
            self.path_for(name).display()
        )
    }
}

/// The lock file's name: the encoded lock name (see [`LockName::encoded`]) plus `.lock`.
fn file_name(name: &LockName) -> String {
    format!("{}.lock", name.encoded(MAX_ENCODED))
}

fn ensure_dir(dir: &Path) -> Result<(), Error> {
    let fail = |what: &str, e: io::Error| {
        Error::permanent(
            KIND,
            format!("lock directory {}: {what}: {e}", dir.display()),
            Some(Box::new(e)),
        )
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::permanent(
            KIND,
            format!(
                "{} is not a directory; point the file backend at a directory",
                dir.display()
            ),
            None,
        )),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| fail("cannot create it", e))?;
            // create_dir_all applies the umask; make it shared like /tmp on purpose.
            std::fs::set_permissions(dir, Permissions::from_mode(0o1777))
                .map_err(|e| fail("cannot make it shared (mode 1777)", e))
        }
        Err(e) => Err(fail("cannot read it", e)),
    }
}

/// Opens the lock file for reading and writing without following links. `create` makes it
/// (mode 0666) when missing; otherwise a missing file is `None`.
fn open_lock_file(path: &Path, create: bool) -> io::Result<Option<File>> {
    loop {
        // Existing file: never O_CREAT, which protected_regular refuses for other users'
        // files in sticky directories.
        match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
        {
            Ok(file) => return check_regular(file).map(Some),
            Err(e) if e.kind() == ErrorKind::NotFound && create => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        }
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o666)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
        {
            Ok(file) => {
                // The umask narrowed the mode; other users must be able to open it too.
                file.set_permissions(Permissions::from_mode(0o666))?;
                return Ok(Some(file));
            }
            // Another process created it between our two opens: open theirs.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

fn check_regular(file: File) -> io::Result<File> {
    let meta = file.metadata()?;
    let refuse = |why: String| Err(io::Error::new(ErrorKind::InvalidData, why));
    if !meta.is_file() {
        return refuse("it is not a regular file".into());
    }
    if meta.nlink() != 1 {
        return refuse(format!(
            "it has {} hard links; a lock file has exactly one, so another name may point at a file that must not be written",
            meta.nlink()
        ));
    }
    if meta.len() > MAX_RECORD {
        return refuse(format!(
            "it holds {} bytes, more than a dlock lock file ever does",
            meta.len()
        ));
    }
    Ok(file)
}

fn io_error(path: &Path, e: io::Error) -> Error {
    let what = match (e.raw_os_error(), e.kind()) {
        (Some(libc::ELOOP), _) => format!(
            "refusing to follow the symbolic link at {}: something replaced the lock file with a link; remove it",
            path.display()
        ),
        (_, ErrorKind::PermissionDenied) => format!(
            "permission denied on {}: dlock makes lock files mode 0666 in a directory of mode 1777; \
             make the file readable and writable by every user of the lock (chmod 0666) or the \
             directory writable (chmod 1777)",
            path.display()
        ),
        (_, ErrorKind::InvalidData) => format!(
            "refusing to use {} as a lock file: {e}; remove it",
            path.display()
        ),
        _ => format!("lock file {}: {e}", path.display()),
    };
    Error::permanent(KIND, what, Some(Box::new(e)))
}

/// What a lock file says: the last fencing token, and the holder while held.
struct Record {
    token: u64,
    holder: Option<Holder>,
}

fn write_record(file: &File, record: &Record) -> io::Result<()> {
    let mut text = format!("{MAGIC}\ntoken={}\n", record.token);
    if let Some(h) = &record.holder {
        let millis = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0)
        };
        text.push_str(&format!(
            "owner={}\nhost={}\npid={}\nacquired_at_ms={}\n",
            h.owner.id,
            h.owner.host.replace('\n', " "),
            h.owner.pid,
            h.acquired_at.map(millis).unwrap_or(0),
        ));
    }
    text.push_str("end\n");
    // Write in place, then cut: a concurrent reader sees the old or the new record (each ends
    // with `end`), never an empty file.
    file.write_all_at(text.as_bytes(), 0)?;
    file.set_len(text.len() as u64)
}

fn read_record(file: &File) -> Option<Record> {
    let mut buf = vec![0u8; MAX_RECORD as usize];
    let mut len = 0;
    while len < buf.len() {
        match file.read_at(&mut buf[len..], len as u64) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(_) => return None,
        }
    }
    let text = std::str::from_utf8(&buf[..len]).ok()?;
    let body = text.strip_prefix(MAGIC)?.split("\nend\n").next()?;
    if !text.contains("\nend\n") {
        return None;
    }
    let fields: HashMap<&str, &str> = body.lines().filter_map(|l| l.split_once('=')).collect();
    let token: u64 = fields.get("token")?.parse().ok()?;
    let holder = (|| {
        let owner = Owner {
            id: fields.get("owner")?.to_string(),
            host: fields.get("host")?.to_string(),
            pid: fields.get("pid")?.parse().ok()?,
        };
        let ms: u64 = fields.get("acquired_at_ms")?.parse().ok()?;
        Some(Holder {
            owner,
            version: Version::new(token.to_string()),
            acquired_at: Some(UNIX_EPOCH + Duration::from_millis(ms)),
            ttl: None,
            fencing_token: Some(token),
        })
    })();
    Some(Record { token, holder })
}

/// The holder of a busy lock file. A new holder writes its record just after locking, so a
/// record without a holder is re-read a few times before the holder is reported unknown.
async fn read_holder(file: &File) -> Holder {
    for _ in 0..5 {
        if let Some(Record {
            holder: Some(h), ..
        }) = read_record(file)
        {
            return h;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Holder {
        owner: Owner::unknown(),
        version: Version::new("unknown"),
        acquired_at: None,
        ttl: None,
        fencing_token: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_reject_garbage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.lock");
        let file = open_lock_file(&path, true).expect("open").expect("created");
        assert!(read_record(&file).is_none(), "an empty file has no record");
        let owner = Owner::generate();
        let holder = Holder {
            owner: owner.clone(),
            version: Version::new("7"),
            acquired_at: Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)),
            ttl: None,
            fencing_token: Some(7),
        };
        write_record(
            &file,
            &Record {
                token: 7,
                holder: Some(holder.clone()),
            },
        )
        .expect("write");
        let back = read_record(&file).expect("parses");
        assert_eq!(back.token, 7);
        assert_eq!(back.holder, Some(holder));
        write_record(
            &file,
            &Record {
                token: 7,
                holder: None,
            },
        )
        .expect("write");
        let back = read_record(&file).expect("parses");
        assert!(back.holder.is_none());
        assert_eq!(
            std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777,
            0o666
        );
    }
}
