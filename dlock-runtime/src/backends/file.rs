//! `flock` on one file per lock name in a directory: many processes (and, in a shared
//! directory, many users) on one machine.
//!
//! The traps this module avoids (the multi-user traps of shared lock directories, and the
//! usual lock-file attacks):
//! - in a shared directory (mode 1777, like `/tmp`), a lock file created by one user must be
//!   lockable by another, where Linux's `fs.protected_regular` makes an `O_CREAT` open of
//!   another user's file fail even for root: existing files are opened without `O_CREAT`, new
//!   ones are created with `O_EXCL`;
//! - a symlink or hard link planted where the lock file goes is never followed or written
//!   through (`O_NOFOLLOW`, and a link count of one is required);
//! - lock names never leave the directory: they are percent-encoded into one file name;
//! - the locked body's own I/O errors are never mistaken for "already locked": locking is a
//!   separate step that finishes before the body starts;
//! - lock files do not pile up: the holder removes its file when it releases, while it still
//!   holds the lock, and a process that locked a file checks that it is still the one at the
//!   lock's path (same inode) before it counts as the holder — so a removal never lets two
//!   processes hold the same name;
//! - fencing tokens come from one counter file per directory, so removing a lock file (or a
//!   damaged record) never restarts them;
//! - reading who holds a lock (status, list) never takes the lock, not even a shared one: the
//!   kernel's table of locks (`/proc/locks`) says whether a file is locked;
//! - first come, first served across processes: a waiter marks its place with a read lock on one
//!   byte of the lock file (an open-file-description lock, separate from `flock` and dropped by
//!   the kernel when the waiter exits) at an offset that is the time it started waiting (the
//!   machine's boot clock, the same for every process). A free lock goes to the waiter with the
//!   lowest mark; anyone else, including a process that has just released it, lets that waiter
//!   have it first, for at most 20 ms (so a stopped waiter cannot hold everyone up).

use crate::backend::{
    AcquireOutcome, AcquireRequest, Backend, Capabilities, Holder, Lease, Owner, Version,
};
use crate::time::{from_unix_millis, unix_millis};
use crate::{Error, LockName};
use rustix::fs::inotify;
use std::collections::HashMap;
use std::fs::{File, OpenOptions, Permissions, TryLockError};
use std::io::{self, ErrorKind};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

const KIND: &str = "file";
/// A lock file holds one short record; anything larger is not ours.
const MAX_RECORD: u64 = 4096;
const MAGIC: &str = "dlock-lock v2";
/// Longer encoded names are shortened and hashed, well below the usual 255-byte file name limit.
const MAX_ENCODED: usize = 180;
/// The directory's fencing counter. Encoded lock names never start with `.`, so it cannot
/// collide with a lock file.
const COUNTER: &str = ".dlock-fencing";
/// How often a lock is retried when its file was removed between opening and locking it.
const REOPENS: usize = 16;
/// How long a free lock is left to a waiter that has waited longer: a live waiter woken by the
/// kernel takes it in microseconds; one that is stopped or starved loses its turn after this.
pub(crate) const YIELD: Duration = Duration::from_millis(20);

/// Locks as `flock(2)` on files in one directory.
///
/// The kernel frees a lock the moment its process exits, however it exits (`kill -9`
/// included), so this backend needs no leases and no takeover; waiters are woken by the kernel
/// (inotify on the lock file) the moment it is freed. Fencing tokens come from a counter file
/// in the directory (`.dlock-fencing`) and increase with every acquisition of any name there;
/// do not delete it.
///
/// Two kinds of directory:
/// - [`FileBackend::new`]: private to the user (created with mode 0700, lock files 0600).
/// - [`FileBackend::shared`]: for several users of one machine (created with mode 1777 like
///   `/tmp`, lock files 0666), safe against the multi-user traps above. As URL:
///   `file:///var/lock/app?shared=true`.
///
/// ```
/// use dlock_runtime::{FileBackend, Lock};
/// use std::sync::Arc;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), dlock_runtime::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// let backend = Arc::new(FileBackend::new(dir.path().join("locks"))?);
/// let guard = Lock::new("../../etc/passwd").acquire_on(backend.clone()).await?;
/// // The name stays inside the directory, encoded:
/// assert!(backend.path_for(guard.name()).starts_with(dir.path()));
/// guard.release().await?;
/// // A free lock leaves no file behind.
/// assert!(!backend.path_for(&"../../etc/passwd".parse()?).exists());
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct FileBackend {
    dir: PathBuf,
    shared: bool,
    /// Open lock files by owner id: the lock lives exactly as long as its file stays open.
    held: Arc<Mutex<HashMap<String, File>>>,
    /// The fencing counter, opened once.
    counter: Arc<Mutex<Option<File>>>,
    /// The places of this process's waiters, by owner id.
    waiting: Arc<Mutex<HashMap<String, Place>>>,
}

/// A waiter's place in the queue of one lock file: a read lock on the byte at `ticket`, held
/// through `file` (its own open file description) while it waits.
#[derive(Debug)]
struct Place {
    file: File,
    ticket: i64,
}

impl FileBackend {
    /// Locks in `dir`, private to this user: created if missing with mode 0700, lock files
    /// 0600. An existing directory keeps its permissions.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, Error> {
        Self::with_mode(dir.into(), false)
    }

    /// Locks in `dir`, shared by every user of the machine: created if missing with mode 1777
    /// (sticky and world-writable, like `/tmp`), lock files 0666, so that any user can lock a
    /// file another user created.
    pub fn shared(dir: impl Into<PathBuf>) -> Result<Self, Error> {
        Self::with_mode(dir.into(), true)
    }

    fn with_mode(dir: PathBuf, shared: bool) -> Result<Self, Error> {
        ensure_dir(&dir, shared)?;
        Ok(FileBackend {
            dir,
            shared,
            held: Arc::default(),
            counter: Arc::default(),
            waiting: Arc::default(),
        })
    }

    /// Locks in `$DLOCK_FILE_DIR`, or in [`FileBackend::default_dir`] when it is unset;
    /// private unless `DLOCK_FILE_SHARED=true`.
    pub fn from_env() -> Result<Self, Error> {
        let shared = std::env::var("DLOCK_FILE_SHARED").is_ok_and(|v| v == "true" || v == "1");
        let dir = match std::env::var_os("DLOCK_FILE_DIR") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => Self::default_dir(),
        };
        Self::with_mode(dir, shared)
    }

    /// `$TMPDIR/dlock-UID` (usually `/tmp/dlock-1000`): this user's own lock directory.
    pub fn default_dir() -> PathBuf {
        std::env::temp_dir().join(format!("dlock-{}", rustix::process::getuid().as_raw()))
    }

    /// The directory of the lock files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the directory is shared by every user (see [`FileBackend::shared`]).
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// The lock file of `name`: always directly inside [`dir`](FileBackend::dir).
    pub fn path_for(&self, name: &LockName) -> PathBuf {
        self.dir.join(file_name(name))
    }

    fn file_mode(&self) -> u32 {
        if self.shared { 0o666 } else { 0o600 }
    }

    fn held(&self) -> MutexGuard<'_, HashMap<String, File>> {
        // Every update is one insert or remove: a panic elsewhere cannot leave it inconsistent.
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn open(&self, path: &Path, create: bool) -> Result<Option<File>, Error> {
        open_lock_file(path, create, self.file_mode()).map_err(|e| io_error(path, e))
    }

    fn waiting(&self) -> MutexGuard<'_, HashMap<String, Place>> {
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Marks `owner`'s place in the queue of the lock file `file` (keeping the ticket it had,
    /// if the file was replaced since).
    fn take_place(&self, owner: &Owner, file: &File) {
        let mut waiting = self.waiting();
        let ticket = match waiting.get(&owner.id) {
            Some(place) if same_inode(&place.file, file) => return,
            Some(place) => place.ticket,
            None => boot_micros(),
        };
        let Ok(marker) = file.try_clone() else {
            return;
        };
        if set_mark(&marker, ticket).is_ok() {
            waiting.insert(
                owner.id.clone(),
                Place {
                    file: marker,
                    ticket,
                },
            );
        }
    }

    /// Lets a waiter that has waited longer than `owner` (anyone, if `owner` is not waiting)
    /// take the free lock of `file` first, for at most [`YIELD`]. Returns the holder if
    /// someone took it meanwhile.
    async fn yield_to_seniors(
        &self,
        owner: &Owner,
        file: &File,
        path: &Path,
    ) -> Result<Option<Holder>, Error> {
        let ticket = self
            .waiting()
            .get(&owner.id)
            .map_or(i64::MAX, |place| place.ticket);
        if !marked_below(file, ticket) {
            return Ok(None);
        }
        let watch = Watch::new(path)?;
        let until = tokio::time::Instant::now() + YIELD;
        loop {
            if holder_marked(file) {
                return Ok(Some(read_holder(file, None, false).await));
            }
            if !marked_below(file, ticket) || !same_file(file, path) {
                return Ok(None);
            }
            if tokio::time::timeout_at(until, watch.changed())
                .await
                .is_err()
            {
                tracing::debug!(path = %path.display(), "a waiter that came first did not take the lock in time");
                return Ok(None);
            }
        }
    }

    /// The next fencing token of the directory: strictly greater than every one handed out
    /// before, whatever happened to the lock files.
    fn next_token(&self) -> Result<u64, Error> {
        let path = self.dir.join(COUNTER);
        let mut counter = self
            .counter
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for _ in 0..REOPENS {
            let file = match counter.take() {
                Some(file) => file,
                None => self
                    .open(&path, true)?
                    .ok_or_else(|| io_error(&path, io::Error::from(ErrorKind::NotFound)))?,
            };
            file.lock().map_err(|e| io_error(&path, e))?;
            // Someone replaced the counter file: use the one at the path now.
            if !same_file(&file, &path) {
                continue;
            }
            let result = bump(&file).map_err(|e| io_error(&path, e));
            let _ = file.unlock();
            *counter = Some(file);
            return result;
        }
        Err(io_error(
            &path,
            io::Error::other("the counter file keeps being replaced"),
        ))
    }

    /// Frees the lock of `lease` (which must be held here): removes the lock file while still
    /// holding it, then unlocks by closing it.
    fn unlock(&self, lease: &Lease) -> Result<(), Error> {
        let file = self
            .held()
            .remove(&lease.owner.id)
            .ok_or_else(|| Error::Lost {
                name: lease.name.to_string(),
            })?;
        let path = self.path_for(&lease.name);
        // Waiters have their places marked on this file: keep it for them (a new file would
        // lose their order). Otherwise remove it, so files do not pile up.
        let removed = if marked_below(&file, i64::MAX) {
            Err(io::Error::from(ErrorKind::AlreadyExists))
        } else {
            std::fs::remove_file(&path)
        };
        match removed {
            Ok(()) => {}
            // Not ours to remove (another user's file in a sticky directory), or gone: leave
            // it, marked free.
            Err(e) => {
                if !matches!(e.kind(), ErrorKind::NotFound | ErrorKind::AlreadyExists) {
                    tracing::debug!(path = %path.display(), error = %e, "left the lock file in place");
                }
                if let Err(e) = write_record(&file, None) {
                    tracing::warn!(lock = %lease.name, error = %e, "could not clear the lock file's holder record");
                }
            }
        }
        unmark_held(&file);
        file.unlock().map_err(|e| io_error(&path, e))
        // Dropping `file` closes it.
    }

    /// The holder of an open lock file, if it is locked: from the kernel's lock table, which
    /// reading does not disturb, and the holder's record.
    /// With `patient`, a holder that has not written its record yet is waited for a little
    /// (for `inspect` and `list`); without, it is reported as not yet known at once (for
    /// waiting, which the record's write wakes anyway).
    async fn holder_of(&self, file: &File, patient: bool) -> Result<Option<Holder>, Error> {
        let meta = file
            .metadata()
            .map_err(|e| Error::permanent(KIND, e.to_string(), None))?;
        if holder_marked(file) {
            return Ok(Some(read_holder(file, None, patient).await));
        }
        // Not marked: free, or held by a process that has not marked it yet (or by an older
        // dlock): ask the kernel's lock table, which is slow (reading it waits for an RCU
        // grace period, milliseconds) but exact.
        match kernel_lock_pid(&meta) {
            Some(Some(pid)) => Ok(Some(read_holder(file, Some(pid), patient).await)),
            Some(None) => Ok(None),
            // No kernel lock table to read: ask for a shared lock instead (a concurrent
            // acquirer may then see the lock busy for a moment).
            None => match file.try_lock_shared() {
                Ok(()) => {
                    let _ = file.unlock();
                    Ok(None)
                }
                Err(TryLockError::WouldBlock) => {
                    Ok(Some(read_holder(file, Some(0), patient).await))
                }
                Err(TryLockError::Error(e)) => Err(Error::permanent(KIND, e.to_string(), None)),
            },
        }
    }
}

/// Reads the counter, writes it plus one, and returns the new value.
fn bump(file: &File) -> io::Result<u64> {
    let mut buf = [0u8; 64];
    let len = file.read_at(&mut buf, 0)?;
    let text = std::str::from_utf8(&buf[..len]).unwrap_or("?").trim();
    let last: u64 = if text.is_empty() {
        0
    } else {
        text.parse().map_err(|_| {
            io::Error::new(
                ErrorKind::InvalidData,
                format!(
                    "the fencing counter holds {text:?}, not a number; tokens must never repeat, so \
                     write a number larger than any token handed out (e.g. the current Unix time in \
                     microseconds) into it"
                ),
            )
        })?
    };
    let next = last + 1;
    let text = format!("{next}\n");
    file.write_all_at(text.as_bytes(), 0)?;
    file.set_len(text.len() as u64)?;
    Ok(next)
}

#[async_trait::async_trait]
impl Backend for FileBackend {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            fencing_tokens: true,
            notified_waiting: true,
            local_calls: true,
            fair_waiting: true,
            ..Capabilities::default()
        }
    }

    async fn try_acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, Error> {
        let path = self.path_for(&request.name);
        for _ in 0..REOPENS {
            // Held right now: answer busy through a read-only descriptor. Closing a file opened
            // for writing wakes every waiter's watch (IN_CLOSE_WRITE); closing this one wakes
            // nobody, so waiters' own attempts do not wake each other.
            if let Some(seen) = open_read_only(&path).map_err(|e| io_error(&path, e))? {
                if holder_marked(&seen) && same_file(&seen, &path) {
                    self.take_place(&request.owner, &seen);
                    return Ok(AcquireOutcome::Busy(read_holder(&seen, None, false).await));
                }
                // Free (or being taken): let a waiter that came first take it, still through
                // the read-only descriptor (a junior that opened the file for writing woke
                // every waiter again when it closed it).
                if let Some(holder) = self.yield_to_seniors(&request.owner, &seen, &path).await? {
                    self.take_place(&request.owner, &seen);
                    return Ok(AcquireOutcome::Busy(holder));
                }
            }
            // Opened for writing only to take the lock. (Waiters that marked a file created or
            // replaced since the look above are not waited for: arrivals that close together
            // are not ordered.)
            let Some(file) = self.open(&path, true)? else {
                continue;
            };
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    // The place first: it orders this waiter, and the holder may be releasing.
                    self.take_place(&request.owner, &file);
                    return Ok(AcquireOutcome::Busy(read_holder(&file, None, false).await));
                }
                Err(TryLockError::Error(e)) => return Err(io_error(&path, e)),
            }
            // The previous holder may have removed this file after we opened it: a lock on a
            // file that is no longer at the path excludes nobody. Try the one there now.
            if !same_file(&file, &path) {
                continue;
            }
            mark_held(&file);
            let token = match self.next_token() {
                Ok(token) => token,
                Err(e) => {
                    let _ = file.unlock();
                    return Err(e);
                }
            };
            let lease = Lease {
                name: request.name.clone(),
                owner: request.owner.clone(),
                version: Version::new(token.to_string()),
                ttl: request.ttl,
                fencing_token: Some(token),
                acquired_at: std::time::SystemTime::now(),
            };
            if let Err(e) = write_record(&file, Some(&lease)) {
                let _ = file.unlock();
                return Err(io_error(&path, e));
            }
            self.held().insert(request.owner.id.clone(), file);
            // Its place in the queue is no longer needed: the kernel drops the mark.
            self.waiting().remove(&request.owner.id);
            return Ok(AcquireOutcome::Acquired(lease));
        }
        Err(Error::temporary(
            KIND,
            format!(
                "{}: the lock file kept being removed and recreated while it was locked; retrying",
                path.display()
            ),
            None,
        ))
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
        let path = self.path_for(name);
        match self.open(&path, false)? {
            None => Ok(None),
            Some(file) => self.holder_of(&file, true).await,
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(LockName, Holder)>, Error> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| io_error(&self.dir, e))?;
        let mut held = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_error(&self.dir, e))?;
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue;
            };
            if !file_name.ends_with(".lock") || file_name.starts_with('.') {
                continue;
            }
            // A file that is not ours (a link, a directory, something large) is skipped, not
            // an error: listing is for people.
            let Ok(Some(file)) = open_lock_file(&entry.path(), false, self.file_mode()) else {
                continue;
            };
            let Some(holder) = self.holder_of(&file, true).await? else {
                continue;
            };
            let name = read_record(&file)
                .and_then(|r| r.name)
                .and_then(|n| LockName::new(n).ok())
                .or_else(|| decode_file_name(file_name));
            if let Some(name) = name.filter(|n| n.as_str().starts_with(prefix)) {
                held.push((name, holder));
            }
        }
        held.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(held)
    }

    async fn force_release(&self, name: &LockName, version: &Version) -> Result<(), Error> {
        let Some(holder) = self.inspect(name).await? else {
            return Ok(());
        };
        if &holder.version != version {
            return Err(Error::Changed {
                name: name.to_string(),
                expected: version.clone(),
                holder: Some(Box::new(holder)),
            });
        }
        Err(Error::permanent(
            KIND,
            format!(
                "`{name}` is held by a live process ({}): a file lock is freed by the kernel when \
                 its process exits, and cannot be taken from it; stop that process",
                holder.owner
            ),
            None,
        ))
    }

    async fn wait_for_change(
        &self,
        name: &LockName,
        seen: &Version,
        _since: std::time::Instant,
    ) -> Result<(), Error> {
        let path = self.path_for(name);
        // Read-only: closing a descriptor opened for writing wakes every waiter's watch
        // (IN_CLOSE_WRITE), and each woken waiter would close its own and wake the others
        // again (8 waiters kept each other busy at ~2,400 looks per acquisition).
        let Some(file) = open_read_only(&path).map_err(|e| io_error(&path, e))? else {
            return Ok(());
        };
        // Watch first, then look: a release between the two still wakes us.
        let watch = Watch::new(&path)?;
        // Removed or replaced since it was opened (a release removes the file when nobody
        // waits on it): look again at the one there now.
        if !same_file(&file, &path) {
            return Ok(());
        }
        // Not marked as held: free (released, or its holder died), or taken by a holder that
        // has not marked it yet (it marks right after its flock): either way, look again now.
        // Never the kernel's lock table here: reading /proc/locks costs milliseconds.
        if !holder_marked(&file) {
            return Ok(());
        }
        let holder = read_holder(&file, None, false).await;
        if holder.version != *seen && !holder.owner.is_unknown() {
            return Ok(());
        }
        watch.changed().await
    }

    async fn stop_waiting(&self, _name: &LockName, owner: &Owner) -> Result<(), Error> {
        self.waiting().remove(&owner.id);
        Ok(())
    }

    fn release_now(&self, lease: &Lease) -> Option<Result<(), Error>> {
        Some(self.unlock(lease))
    }

    fn stale_lock_hint(&self, name: &LockName, holder: Option<&Holder>) -> String {
        let who = match holder {
            Some(h) if h.owner.pid != 0 => format!("pid {} on host {}", h.owner.pid, h.owner.host),
            _ => "the holding process".to_string(),
        };
        format!(
            "The kernel frees it when {who} exits; if that process hangs, stop it. Do not delete {}: \
             processes that still have it open would stop excluding each other",
            self.path_for(name).display()
        )
    }
}

/// An inotify watch on one lock file: woken when a holder closes it (also when the kernel
/// closes it for a killed process), removes it, or writes a new record.
///
/// Inotify instances are reused (see [`INOTIFY_POOL`]): closing one waits for the kernel's
/// SRCU grace period, 10-15 ms, which a waiter would otherwise pay after every wake-up.
struct Watch {
    fd: Option<tokio::io::unix::AsyncFd<OwnedFd>>,
    wd: i32,
}

/// The most idle inotify instances this process keeps for reuse (the kernel allows 128 per
/// user by default).
const INOTIFY_POOL: usize = 8;

fn inotify_pool() -> MutexGuard<'static, Vec<OwnedFd>> {
    static POOL: std::sync::OnceLock<Mutex<Vec<OwnedFd>>> = std::sync::OnceLock::new();
    POOL.get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Watch {
    fn new(path: &Path) -> Result<Self, Error> {
        let fail = |what: &str, e: io::Error| {
            Error::temporary(KIND, format!("{what} {}: {e}", path.display()), None)
        };
        let fd = match inotify_pool().pop() {
            Some(fd) => fd,
            None => inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
                .map_err(|e| fail("cannot watch", e.into()))?,
        };
        let events = inotify::WatchFlags::CLOSE_WRITE
            | inotify::WatchFlags::ATTRIB
            | inotify::WatchFlags::MODIFY
            | inotify::WatchFlags::DELETE_SELF
            | inotify::WatchFlags::MOVE_SELF
            | inotify::WatchFlags::DONT_FOLLOW;
        let wd = match inotify::add_watch(&fd, path, events) {
            Ok(wd) => wd,
            Err(e) => {
                recycle(fd);
                return Err(fail("cannot watch", e.into()));
            }
        };
        // SAFETY: the descriptor is an `OwnedFd` moved into the `AsyncFd`, which owns it until
        // the registration ends (`into_inner` in `drop`): it is never closed or reused while
        // registered.
        #[allow(unsafe_code)]
        let fd = unsafe { tokio::io::unix::AsyncFd::register(fd) }
            .map_err(|e| fail("cannot wait on a watch of", e.into()))?;
        Ok(Watch { fd: Some(fd), wd })
    }

    async fn changed(&self) -> Result<(), Error> {
        let Some(fd) = &self.fd else {
            return Ok(());
        };
        let mut guard = fd
            .readable()
            .await
            .map_err(|e| Error::temporary(KIND, e.to_string(), None))?;
        guard.clear_ready();
        Ok(())
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(fd) = self.fd.take() {
            let fd = fd.into_inner();
            // The file may be gone, which removed the watch already.
            let _ = inotify::remove_watch(&fd, self.wd);
            recycle(fd);
        }
    }
}

/// Empties an idle inotify instance of the events of its old watch and keeps it for reuse.
fn recycle(fd: OwnedFd) {
    let mut buf = [0u8; 4096];
    while matches!(rustix::io::read(&fd, &mut buf), Ok(n) if n > 0) {}
    let mut pool = inotify_pool();
    if pool.len() < INOTIFY_POOL {
        pool.push(fd);
    }
}

/// The lock file's name: the encoded lock name (see [`LockName::encoded`]) plus `.lock`.
fn file_name(name: &LockName) -> String {
    format!("{}.lock", name.encoded(MAX_ENCODED))
}

/// The lock name a lock file's name encodes, unless it was shortened with a hash.
fn decode_file_name(file_name: &str) -> Option<LockName> {
    LockName::decode(file_name.strip_suffix(".lock")?)
}

fn ensure_dir(dir: &Path, shared: bool) -> Result<(), Error> {
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
            // create_dir_all applies the umask; set the mode this backend promises.
            let mode = if shared { 0o1777 } else { 0o700 };
            std::fs::set_permissions(dir, Permissions::from_mode(mode))
                .map_err(|e| fail(&format!("cannot set its mode to {mode:o}"), e))
        }
        Err(e) => Err(fail("cannot read it", e)),
    }
}

/// Opens a lock file for reading and writing without following links. `create` makes it
/// (with `mode`) when missing; otherwise a missing file is `None`.
fn open_lock_file(path: &Path, create: bool, mode: u32) -> io::Result<Option<File>> {
    loop {
        // Existing file: never O_CREAT, which protected_regular refuses for other users'
        // files in sticky directories.
        match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
        {
            Ok(file) => {
                let meta = file.metadata()?;
                if meta.nlink() == 0 {
                    // Removed by its last holder just after we opened it: open again.
                    continue;
                }
                return check_regular(file, &meta).map(Some);
            }
            Err(e) if e.kind() == ErrorKind::NotFound && create => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        }
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
        {
            Ok(file) => {
                // The umask narrowed the mode; in a shared directory other users must be
                // able to open it too.
                file.set_permissions(Permissions::from_mode(mode))?;
                return Ok(Some(file));
            }
            // Another process created it between our two opens: open theirs.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Opens an existing lock file read-only, without following links; `None` if there is none.
fn open_read_only(path: &Path) -> io::Result<Option<File>> {
    match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => {
            let meta = file.metadata()?;
            check_regular(file, &meta).map(Some)
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn check_regular(file: File, meta: &std::fs::Metadata) -> io::Result<File> {
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

/// Whether two open files are the same file.
fn same_inode(a: &File, b: &File) -> bool {
    match (a.metadata(), b.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Microseconds on the machine's boot clock: the same clock for every process of the machine,
/// so waiters of different processes can be ordered by when they started waiting.
fn boot_micros() -> i64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    t.tv_sec.saturating_mul(1_000_000) + t.tv_nsec / 1_000
}

/// An open-file-description lock on the byte at `offset` (`len` 1), or, with `len` 0, a probe
/// from `offset` to the end of the file.
fn byte_lock(kind: libc::c_short, offset: i64, len: i64) -> libc::flock {
    libc::flock {
        l_type: kind,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: offset,
        l_len: len,
        l_pid: 0,
    }
}

/// Marks a waiter's place: a read lock on the byte at `ticket`, held by this open file
/// description until it is closed (or the process exits).
fn set_mark(file: &File, ticket: i64) -> io::Result<()> {
    let mark = byte_lock(libc::F_RDLCK as libc::c_short, ticket, 1);
    nix::fcntl::fcntl(file, nix::fcntl::FcntlArg::F_OFD_SETLK(&mark))
        .map(drop)
        .map_err(io::Error::from)
}

/// Whether another open file description marks a place below `ticket` on this file.
fn marked_below(file: &File, ticket: i64) -> bool {
    if ticket <= 1 {
        return false;
    }
    // From byte 1: byte 0 is the holder's mark, not a place.
    let mut probe = byte_lock(libc::F_WRLCK as libc::c_short, 1, ticket - 1);
    match nix::fcntl::fcntl(file, nix::fcntl::FcntlArg::F_OFD_GETLK(&mut probe)) {
        Ok(_) => probe.l_type != libc::F_UNLCK as libc::c_short,
        Err(_) => false,
    }
}

/// Marks the lock of `file` as held, for readers: a write lock on byte 0 (an
/// open-file-description lock, so the kernel drops it when the holder's file is closed, also
/// when its process is killed). `flock` decides who holds the lock; this mark only lets others
/// see that it is held without reading `/proc/locks`, which costs milliseconds. A mark that
/// cannot be set only makes waiting slower.
fn mark_held(file: &File) {
    let mark = byte_lock(libc::F_WRLCK as libc::c_short, 0, 1);
    if let Err(e) = nix::fcntl::fcntl(file, nix::fcntl::FcntlArg::F_OFD_SETLK(&mark)) {
        tracing::debug!(error = %e, "could not mark a held lock file");
    }
}

/// Removes the mark of [`mark_held`] (before the `flock` is released).
fn unmark_held(file: &File) {
    let mark = byte_lock(libc::F_UNLCK as libc::c_short, 0, 1);
    let _ = nix::fcntl::fcntl(file, nix::fcntl::FcntlArg::F_OFD_SETLK(&mark));
}

/// Whether another open file description marks the lock of this file as held.
fn holder_marked(file: &File) -> bool {
    let mut probe = byte_lock(libc::F_RDLCK as libc::c_short, 0, 1);
    match nix::fcntl::fcntl(file, nix::fcntl::FcntlArg::F_OFD_GETLK(&mut probe)) {
        Ok(_) => probe.l_type != libc::F_UNLCK as libc::c_short,
        Err(_) => false,
    }
}

/// Whether the open `file` is the one at `path` now (not removed or replaced).
fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Who holds an exclusive `flock` on the file `meta` describes, from `/proc/locks`:
/// `Some(Some(pid))` when locked, `Some(None)` when not, `None` when the table cannot be read.
fn kernel_lock_pid(meta: &std::fs::Metadata) -> Option<Option<u32>> {
    let table = std::fs::read_to_string("/proc/locks").ok()?;
    let dev = meta.dev();
    let wanted = format!(
        "{:02x}:{:02x}:{}",
        rustix::fs::major(dev),
        rustix::fs::minor(dev),
        meta.ino()
    );
    Some(table.lines().find_map(|line| {
        // "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"; waiters have "->" after the id.
        let mut fields = line.split_whitespace().skip(1);
        let (kind, _, access, pid, id) = (
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
        );
        (kind == "FLOCK" && access == "WRITE" && id == wanted).then(|| pid.parse().unwrap_or(0))
    }))
}

fn io_error(path: &Path, e: io::Error) -> Error {
    let what = match (e.raw_os_error(), e.kind()) {
        (Some(libc::ELOOP), _) => format!(
            "refusing to follow the symbolic link at {}: something replaced the lock file with a link; remove it",
            path.display()
        ),
        (_, ErrorKind::PermissionDenied) => format!(
            "permission denied on {}: a private lock directory (FileBackend::new) belongs to the user \
             who created it; for locks shared by several users use a shared directory \
             (FileBackend::shared, or `file://DIR?shared=true`), whose files are mode 0666 in a \
             directory of mode 1777",
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

/// What a lock file says while held: who holds it, with which token, under which name.
struct Record {
    holder: Option<Holder>,
    name: Option<String>,
}

/// Writes the holder record of `lease`, or a free record for `None`.
fn write_record(file: &File, lease: Option<&Lease>) -> io::Result<()> {
    let mut text = format!("{MAGIC}\n");
    if let Some(l) = lease {
        text.push_str(&format!(
            "token={}\nowner={}\nhost={}\npid={}\nacquired_at_ms={}\nname={}\n",
            l.fencing_token.unwrap_or_default(),
            l.owner.id,
            l.owner.host.replace('\n', " "),
            l.owner.pid,
            unix_millis(l.acquired_at),
            l.name,
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
    let holder = (|| {
        let token: u64 = fields.get("token")?.parse().ok()?;
        let owner = Owner {
            id: fields.get("owner")?.to_string(),
            host: fields.get("host")?.to_string(),
            pid: fields.get("pid")?.parse().ok()?,
        };
        let ms: u64 = fields.get("acquired_at_ms")?.parse().ok()?;
        Some(Holder {
            owner,
            version: Version::new(token.to_string()),
            acquired_at: Some(from_unix_millis(ms)),
            ttl: None,
            fencing_token: Some(token),
        })
    })();
    Some(Record {
        holder,
        name: fields.get("name").map(|n| n.to_string()),
    })
}

/// The holder of a locked file, from its record. A new holder writes its record just after
/// locking, so with `patient` a file marked held without one is re-read a few times before the
/// holder is reported as not yet known, with pid `pid` (0 if not known).
async fn read_holder(file: &File, pid: Option<u32>, patient: bool) -> Holder {
    for _ in 0..if patient { 5 } else { 1 } {
        if let Some(Record {
            holder: Some(h), ..
        }) = read_record(file)
        {
            return h;
        }
        // A holder marks the file before it writes its record: without the mark the lock has
        // been freed meanwhile (or its holder does not mark), and the caller should look again
        // rather than wait here.
        if !patient || !holder_marked(file) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Holder {
        owner: Owner {
            pid: pid.unwrap_or(0),
            host: if pid.unwrap_or(0) == 0 {
                String::new()
            } else {
                crate::host_name().to_string()
            },
            ..Owner::unknown()
        },
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
        let file = open_lock_file(&path, true, 0o666)
            .expect("open")
            .expect("created");
        assert!(read_record(&file).is_none(), "an empty file has no record");
        let lease = Lease {
            name: LockName::new("a=b c").expect("name"),
            owner: Owner::generate(),
            version: Version::new("7"),
            ttl: Duration::from_secs(1),
            fencing_token: Some(7),
            acquired_at: from_unix_millis(1_700_000_000_123),
        };
        write_record(&file, Some(&lease)).expect("write");
        let back = read_record(&file).expect("parses");
        let holder = back.holder.expect("holder");
        assert_eq!(holder.owner, lease.owner);
        assert_eq!(holder.fencing_token, Some(7));
        assert_eq!(back.name.as_deref(), Some("a=b c"));
        write_record(&file, None).expect("write");
        assert!(read_record(&file).expect("parses").holder.is_none());
        assert_eq!(
            std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777,
            0o666
        );
    }

    #[test]
    fn file_names_decode_back_to_lock_names() {
        for name in ["deploy-prod", "../x/y", "a%b", ".hidden", "ü"] {
            let name = LockName::new(name).expect("name");
            assert_eq!(decode_file_name(&file_name(&name)), Some(name));
        }
        let long = LockName::new("x".repeat(500)).expect("name");
        assert_eq!(decode_file_name(&file_name(&long)), None, "hashed");
    }

    #[test]
    fn a_damaged_counter_is_an_error_not_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = FileBackend::new(dir.path()).expect("dir");
        assert_eq!(backend.next_token().expect("token"), 1);
        assert_eq!(backend.next_token().expect("token"), 2);
        std::fs::write(dir.path().join(COUNTER), "garbage").expect("damage");
        let err = backend.next_token().expect_err("damaged");
        assert!(err.to_string().contains("not a number"), "{err}");
    }

    #[test]
    fn the_kernel_lock_table_shows_holders_without_locking() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.lock");
        let file = open_lock_file(&path, true, 0o600)
            .expect("open")
            .expect("created");
        let meta = file.metadata().expect("stat");
        assert_eq!(kernel_lock_pid(&meta), Some(None));
        file.lock().expect("lock");
        assert_eq!(kernel_lock_pid(&meta), Some(Some(std::process::id())));
        file.unlock().expect("unlock");
        assert_eq!(kernel_lock_pid(&meta), Some(None));
    }
}
