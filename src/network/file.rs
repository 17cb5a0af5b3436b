//! A main database file in network mode: its I/O, its lock, and the coherency rules that make
//! a stale client cache harmless.
//!
//! | moment                          | what this file does                                        | why |
//! |---------------------------------|------------------------------------------------------------|-----|
//! | NONE -> SHARED granted          | if the table's generation moved since our last look, or the descriptor has failed: reopen the file and refetch its size from the server | a fresh open drops the client's cached pages (FUSE, NFS close-to-open, SMB); `statx(FORCE_SYNC)` fixes a stale cached size; after a file-server restart sshfs fails every old descriptor with EIO for good |
//! | every read and write            | refuse once the lease may have run out                     | a holder others may have judged dead must not touch the file |
//! | before a lock is lowered        | `fsync` if anything was written since the last sync        | the next holder, on another host, must find the bytes at the server |
//! | lowering from a write           | the table's generation moves on                            | tells every other reader to drop its cache |
//!
//! Besides the lock files, the file takes the same byte-range locks SQLite's `unix` VFS takes,
//! as open-file-description locks (Linux). They do nothing across hosts, but they make a
//! plain SQLite process on the same host (without this shim) wait for us and us for it.
//!
//! May use `crate::lock`, `crate::client_cache`, `crate::sys`, `super::journal` (the permit it
//! keeps current) and the file contract's errors (`crate::vfs::file`).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::client_cache::SizeRefresh;
use crate::lock::protocol::Level;
use crate::lock::{Acquired, LeaseView, LockError, LockHandle};
use crate::network::journal::JournalPermit;
use crate::sys::{self, RangeLock};
use crate::vfs::file::{FileError, IoOp};

// SQLite's lock bytes (os.h): the same bytes the `unix` VFS locks.
const PENDING_BYTE: u64 = 0x4000_0000;
const RESERVED_BYTE: u64 = PENDING_BYTE + 1;
const SHARED_FIRST: u64 = PENDING_BYTE + 2;
const SHARED_SIZE: u64 = 510;

/// SQLite's byte-range locks, mirrored for same-host interoperability (table in os.h and
/// `unixLock`). Disabled for the file on the first "not supported" answer.
#[derive(Debug)]
struct NativeRangeLocks {
    enabled: bool,
    level: Level,
}

impl NativeRangeLocks {
    fn new(wanted: bool) -> Self {
        NativeRangeLocks {
            enabled: wanted && cfg!(target_os = "linux"),
            level: Level::None,
        }
    }

    fn set(&mut self, file: &File, kind: RangeLock, start: u64, len: u64) -> io::Result<bool> {
        if !self.enabled {
            return Ok(true);
        }
        match sys::set_range_lock(file.as_fd(), kind, start, len) {
            Ok(got) => Ok(got),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOLCK | libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL)
                ) =>
            {
                tracing::info!(error = %e, "byte-range locks unsupported here; same-host interop with plain SQLite is off for this file");
                self.enabled = false;
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    /// Raises to `want`; `Ok(false)` if a same-host process holds a conflicting lock.
    fn lock(&mut self, file: &File, want: Level) -> io::Result<bool> {
        if want <= self.level {
            return Ok(true);
        }
        let got = match want {
            Level::None => true,
            Level::Shared => {
                // As unixLock: the PENDING byte is read-locked while the range is taken, so a
                // writer holding PENDING keeps new readers out.
                if !self.set(file, RangeLock::Read, PENDING_BYTE, 1)? {
                    return Ok(false);
                }
                let got = self.set(file, RangeLock::Read, SHARED_FIRST, SHARED_SIZE)?;
                self.set(file, RangeLock::Unlock, PENDING_BYTE, 1)?;
                got
            }
            Level::Reserved => self.set(file, RangeLock::Write, RESERVED_BYTE, 1)?,
            Level::Pending => self.set(file, RangeLock::Write, PENDING_BYTE, 1)?,
            Level::Exclusive => {
                if self.level < Level::Pending
                    && !self.set(file, RangeLock::Write, PENDING_BYTE, 1)?
                {
                    return Ok(false);
                }
                self.level = self.level.max(Level::Pending);
                self.set(file, RangeLock::Write, SHARED_FIRST, SHARED_SIZE)?
            }
        };
        if got {
            self.level = want;
        }
        Ok(got)
    }

    fn unlock(&mut self, file: &File, to: Level) -> io::Result<()> {
        if to >= self.level {
            return Ok(());
        }
        if to == Level::Shared {
            if self.level >= Level::Exclusive {
                self.set(file, RangeLock::Read, SHARED_FIRST, SHARED_SIZE)?;
            }
            self.set(file, RangeLock::Unlock, PENDING_BYTE, 2)?;
        } else {
            self.set(file, RangeLock::Unlock, PENDING_BYTE, 2 + SHARED_SIZE)?;
        }
        self.level = to;
        Ok(())
    }

    /// Gives back a PENDING taken on the way to an EXCLUSIVE that was refused, keeping the
    /// level held before it.
    fn release_pending(&mut self, file: &File, back_to: Level) -> io::Result<()> {
        if self.level == Level::Pending {
            self.set(file, RangeLock::Unlock, PENDING_BYTE, 1)?;
            self.level = back_to;
        }
        Ok(())
    }

    fn reserved_elsewhere(&self, file: &File) -> io::Result<bool> {
        if !self.enabled {
            return Ok(false);
        }
        sys::range_is_locked(file.as_fd(), RESERVED_BYTE, 1)
    }
}

/// Runs `op` again while it fails with EIO (as `client_cache::retry_eio`), but not once the
/// lease of a held lock may have run out: a write retried past it could land after another
/// host has taken the lock over (smbnetfs answers EIO for seconds under load). `Err(None)`:
/// given up because of the lease.
fn retry_eio_within_lease<T>(
    lease: &LeaseView,
    held: bool,
    mut op: impl FnMut() -> io::Result<T>,
) -> Result<T, Option<io::Error>> {
    let mut fenced = false;
    let result = crate::client_cache::retry_eio(|| {
        if held && lease.expired(sys::boot_time()) {
            fenced = true;
            return Err(io::Error::other("the lock's lease may have run out"));
        }
        op()
    });
    match result {
        _ if fenced => Err(None),
        Ok(v) => Ok(v),
        Err(e) => Err(Some(e)),
    }
}

pub struct NetworkFile {
    path: PathBuf,
    file: File,
    writable: bool,
    lock: LockHandle,
    lease: LeaseView,
    native: NativeRangeLocks,
    /// The level SQLite believes it holds (change it with `set_level`).
    level: Level,
    /// That level and the lease, for the journal's fence.
    journal_permit: Arc<JournalPermit>,
    /// The table generation our cached view of the file matches.
    synced_generation: Option<u64>,
    /// Written since the last fsync.
    unsynced: bool,
    /// Written since the lock was last lowered (moves the generation on).
    changed: bool,
    /// Our own change, flushed, whose generation bump is not in the table yet (its release
    /// lingers): when it is published, our cache matches that generation.
    own_change_unpublished: bool,
    /// The generation at which the last unlock published our own write transaction's end,
    /// for the journal registry to take.
    published_write: Option<u64>,
    /// An operation on the descriptor failed with an I/O error: reopen it at the next SHARED.
    /// sshfs reconnects after a file-server restart but answers EIO for every descriptor
    /// opened before, forever; smbnetfs reopens its handles itself.
    descriptor_failed: bool,
    /// How this client is made to tell the file's size from the server.
    size_refresh: SizeRefresh,
    powersafe_overwrite: bool,
    /// The level SQLite has been refused since this moment (busy handler retrying).
    waiting_since: Option<(Level, Duration)>,
    /// Lock requests failing with EIO, answered BUSY for a while.
    eio_patience: EioPatience,
}

/// A lock wait longer than this is reported (SQLite's busy handler retries in between).
const SLOW_LOCK_WAIT: Duration = Duration::from_millis(500);

/// How long lock requests that fail with EIO answer BUSY before the error is reported. Under
/// contention smbnetfs answers EIO to opens and reads of files other clients are busy with,
/// for longer than the two seconds each request is retried (seen: a coherency reopen and a
/// lock-table read failing a reader's and a writer's transaction with "disk I/O error" in an
/// acceptance run without any fault). No lock is taken meanwhile, so BUSY is true: SQLite's
/// busy handler asks again. A server that is really gone is reported once this has passed.
const LOCK_EIO_PATIENCE: Duration = Duration::from_secs(8);

/// Since when lock requests have failed with EIO, none succeeding in between.
#[derive(Debug, Default)]
struct EioPatience {
    since: Option<Duration>,
}

impl EioPatience {
    /// Notes how a request ended at `now`; true if it failed with EIO and is to answer BUSY.
    fn answer_busy(&mut self, now: Duration, succeeded: bool, eio: bool) -> bool {
        if succeeded {
            self.since = None;
            return false;
        }
        if !eio {
            return false;
        }
        let since = *self.since.get_or_insert(now);
        now.saturating_sub(since) < LOCK_EIO_PATIENCE
    }
}

impl NetworkFile {
    pub fn open(
        path: &Path,
        writable: bool,
        create: bool,
        lock: LockHandle,
        size_refresh: SizeRefresh,
        powersafe_overwrite: bool,
        mirror_native_locks: bool,
    ) -> io::Result<NetworkFile> {
        let file = Self::open_file(path, writable, create)?;
        let lease = lock.lock().lease_view();
        let confirm_lock = Arc::downgrade(&lock);
        let confirm_held = Box::new(move || {
            confirm_lock
                .upgrade()
                .is_some_and(|lock| lock.lock().confirm_held().unwrap_or(false))
        });
        Ok(NetworkFile {
            path: path.to_owned(),
            file,
            writable,
            lock,
            journal_permit: Arc::new(JournalPermit::new(lease.clone(), confirm_held)),
            lease,
            native: NativeRangeLocks::new(mirror_native_locks),
            level: Level::None,
            synced_generation: None,
            unsynced: false,
            changed: false,
            own_change_unpublished: false,
            published_write: None,
            descriptor_failed: false,
            size_refresh,
            powersafe_overwrite,
            waiting_since: None,
            eio_patience: EioPatience::default(),
        })
    }

    fn open_file(path: &Path, writable: bool, create: bool) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(writable)
            .create(writable && create)
            .open(path)
    }

    pub fn level(&self) -> Level {
        self.level
    }

    fn set_level(&mut self, level: Level) {
        self.level = level;
        self.journal_permit.set_level(level);
    }

    /// What the journal of this connection may do, kept current with the lock.
    pub fn journal_permit(&self) -> &Arc<JournalPermit> {
        &self.journal_permit
    }

    /// Opened for writing (a read-write request may fall back to read-only).
    pub fn writable(&self) -> bool {
        self.writable
    }

    pub fn powersafe_overwrite(&self) -> bool {
        self.powersafe_overwrite
    }

    pub fn set_powersafe_overwrite(&mut self, on: bool) {
        self.powersafe_overwrite = on;
    }

    /// Lets I/O go on only under a lease that cannot have run out. One that ran out on our
    /// clock is confirmed first: if the lock is still ours (the latch was stuck, so nobody
    /// could renew or judge), it is renewed and I/O goes on; if the file server is out of
    /// reach or others took the lock over, I/O is refused.
    fn check_lease(&self) -> Result<(), FileError> {
        if self.level == Level::None || !self.lease.expired(sys::boot_time()) {
            return Ok(());
        }
        let confirmed = self.lock.lock().confirm_held();
        match confirmed {
            Ok(true) => {
                tracing::info!(path = %self.path.display(), level = %self.level, "lease ran out on this clock, but the lock was still ours: renewed");
                Ok(())
            }
            Ok(false) => {
                tracing::error!(path = %self.path.display(), "lock lease expired and the lock table stayed out of reach for a lease and a half more (file server unreachable?); refusing I/O");
                Err(FileError::LeaseExpired)
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "lock lease expired (file server unreachable or process stalled); refusing I/O");
                Err(FileError::LeaseExpired)
            }
        }
    }

    /// Notes an I/O error of the descriptor (see `descriptor_failed`) and passes it on.
    fn descriptor_error(&mut self, op: IoOp, e: io::Error) -> FileError {
        self.descriptor_failed = true;
        FileError::io(op, e)
    }

    /// Fills `buf` from `offset`; a read past the end zero-fills and reports `ShortRead`.
    ///
    /// SQLite takes a short read for the end of the file and the missing bytes for zeros, so
    /// one is passed on only once the server confirms the file ends there. A read the client
    /// cuts short (a stale cached size; a connection dying mid-reply, which a FUSE client
    /// answers as end-of-file) would otherwise hand the pager a zeroed page: "database disk
    /// image is malformed" to a reader, or worse under a writer. After the size is asked the
    /// read is tried once more (the client's size and cached pages are then current); still
    /// short of what the server has, it is an I/O error.
    pub fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), FileError> {
        self.check_lease()?;
        let mut tries = 0;
        loop {
            let done = self.read_until_end(buf, offset)?;
            if done == buf.len() {
                return Ok(());
            }
            let end = offset + done as u64;
            let server_size = crate::client_cache::retry_eio(|| {
                self.size_refresh.server_size(&self.file, &self.path)
            })
            .map_err(|e| self.descriptor_error(IoOp::Read, e))?;
            if server_size <= end {
                buf[done..].fill(0);
                return Err(FileError::ShortRead);
            }
            tries += 1;
            if tries == 2 {
                let cut = io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "the read of {} bytes at {offset} ended after {done}, but the server's file has {server_size} bytes",
                        buf.len()
                    ),
                );
                tracing::warn!(path = %self.path.display(), error = %cut, "read cut short by the client");
                return Err(self.descriptor_error(IoOp::Read, cut));
            }
            tracing::debug!(path = %self.path.display(), offset, len = buf.len(), done, server_size, "short read inside the server's file; reading again");
        }
    }

    /// Reads into `buf` until it is full or the client reports the end; returns the count.
    fn read_until_end(&mut self, buf: &mut [u8], offset: u64) -> Result<usize, FileError> {
        let mut done = 0;
        while done < buf.len() {
            // Reads are idempotent: a passing EIO from smbnetfs is asked again.
            let chunk = &mut buf[done..];
            match crate::client_cache::retry_eio(|| self.file.read_at(chunk, offset + done as u64))
            {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.descriptor_error(IoOp::Read, e)),
            }
        }
        Ok(done)
    }

    pub fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), FileError> {
        self.check_lease()?;
        self.unsynced = true;
        self.changed = true;
        // Rewriting the same bytes at the same offset is idempotent, so a passing EIO is
        // retried; a failed fsync never is (the kernel may have dropped the dirty pages).
        let held = self.level > Level::None;
        loop {
            match retry_eio_within_lease(&self.lease, held, || self.file.write_all_at(buf, offset))
            {
                Ok(()) => return Ok(()),
                // The lease ran out while EIO was retried: write on only under a renewed one.
                Err(None) => self.check_lease()?,
                Err(Some(e)) => return Err(self.descriptor_error(IoOp::Write, e)),
            }
        }
    }

    pub fn truncate(&mut self, size: u64) -> Result<(), FileError> {
        self.check_lease()?;
        self.unsynced = true;
        self.changed = true;
        match self.file.set_len(size) {
            Ok(()) => Ok(()),
            // smbnetfs fails ftruncate(2) with EIO but honours truncate(2) on the path.
            Err(e) => {
                sys::truncate_path(&self.path, size).map_err(|_| FileError::io(IoOp::Truncate, e))
            }
        }
    }

    pub fn sync(&mut self, data_only: bool) -> Result<(), FileError> {
        self.check_lease()?;
        let synced = if data_only {
            self.file.sync_data()
        } else {
            self.file.sync_all()
        };
        synced.map_err(|e| self.descriptor_error(IoOp::Fsync, e))?;
        self.unsynced = false;
        Ok(())
    }

    pub fn size(&mut self) -> Result<u64, FileError> {
        let e = match crate::client_cache::retry_eio(|| self.file.metadata()) {
            Ok(m) => {
                tracing::trace!(path = %self.path.display(), size = m.len(), "size");
                return Ok(m.len());
            }
            Err(e) => e,
        };
        self.descriptor_failed = true;
        // smbnetfs can keep failing a descriptor while the path still answers.
        match crate::client_cache::open_revalidated(&self.path, self.size_refresh) {
            Ok(Some((_, size))) => Ok(size),
            _ => Err(FileError::io(IoOp::Fstat, e)),
        }
    }

    /// SQLite's `xLock`.
    pub fn lock(&mut self, want: Level) -> Result<(), FileError> {
        if want <= self.level {
            return Ok(());
        }
        let result = match want {
            Level::Shared => self.lock_shared(),
            Level::Reserved => self.lock_reserved(),
            _ => self.lock_exclusive(want),
        };
        let result = self.passing_eio_as_busy(result);
        self.note_wait(want, &result);
        match &result {
            Ok(()) => tracing::trace!(path = %self.path.display(), level = %want, "locked"),
            Err(FileError::Busy) => {}
            Err(e) => {
                tracing::trace!(path = %self.path.display(), level = %want, error = ?e, "lock failed")
            }
        }
        result
    }

    /// A lock request that failed with EIO answers BUSY until EIO has lasted
    /// [`LOCK_EIO_PATIENCE`] without a request succeeding.
    fn passing_eio_as_busy<T>(&mut self, result: Result<T, FileError>) -> Result<T, FileError> {
        let eio = match &result {
            Err(FileError::Io { error, .. }) | Err(FileError::Lock(LockError::Io(error))) => {
                crate::lock::files::os_error_code(error) == Some(libc::EIO)
            }
            _ => false,
        };
        if eio {
            // The client's connection broke or stumbled. A read in flight at that moment can
            // have been answered short, its pages zero-filled and kept in the client's cache
            // with the size unchanged (FUSE does so when attributes arrive meanwhile): only a
            // new descriptor drops them, so the next SHARED opens one.
            self.descriptor_failed = true;
        }
        if !self
            .eio_patience
            .answer_busy(sys::boot_time(), result.is_ok(), eio)
        {
            return result;
        }
        if let Err(e) = &result {
            tracing::debug!(path = %self.path.display(), error = ?e, "lock request failed with EIO; answered BUSY");
        }
        Err(FileError::Busy)
    }

    /// Reports lock waits that took long, counted from the first refusal of a level to its
    /// grant (SQLite retries through its busy handler in between).
    fn note_wait(&mut self, want: Level, result: &Result<(), FileError>) {
        let now = sys::boot_time();
        match (result, self.waiting_since) {
            (Err(FileError::Busy), Some((level, _))) if level == want => {}
            (Err(FileError::Busy), _) => self.waiting_since = Some((want, now)),
            (Ok(()), Some((level, since))) if level == want => {
                let waited = now.saturating_sub(since);
                if waited >= SLOW_LOCK_WAIT {
                    tracing::info!(path = %self.path.display(), level = %want, waited_ms = waited.as_millis() as u64, "lock acquired after a long wait");
                }
                self.waiting_since = None;
            }
            _ => self.waiting_since = None,
        }
    }

    fn lock_files(&self, want: Level) -> Result<Acquired, FileError> {
        self.lock.lock().lock(want).map_err(FileError::Lock)
    }

    fn lock_shared(&mut self) -> Result<(), FileError> {
        let Acquired::Granted { generation, kept } = self.lock_files(Level::Shared)? else {
            return Err(FileError::Busy);
        };
        self.set_level(Level::Shared);
        self.journal_permit.set_shared_granted_at(generation);
        if kept && self.own_change_unpublished {
            // Nobody can have passed our kept write lock: what we wrote last is, for us, as
            // good as published at this generation (our cache matches it, and a journal we
            // emptied is still empty).
            self.synced_generation = Some(generation);
            self.published_write = Some(generation);
            self.own_change_unpublished = false;
        }
        let native = self.refresh_if_changed(generation).and_then(|()| {
            self.native
                .lock(&self.file, Level::Shared)
                .map_err(|e| FileError::io(IoOp::Lock, e))
        });
        match native {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.unlock(Level::None)?;
                Err(FileError::Busy)
            }
            Err(e) => {
                let _ = self.unlock(Level::None);
                Err(e)
            }
        }
    }

    fn lock_reserved(&mut self) -> Result<(), FileError> {
        if self.lock_files(Level::Reserved)? == Acquired::Busy {
            return Err(FileError::Busy);
        }
        let got = self
            .native
            .lock(&self.file, Level::Reserved)
            .map_err(|e| FileError::io(IoOp::Lock, e));
        if got.as_ref().is_ok_and(|&g| g) {
            self.set_level(Level::Reserved);
            return Ok(());
        }
        self.lock
            .lock()
            .unlock(Level::Shared, false)
            .map_err(FileError::Lock)?;
        got.and(Err(FileError::Busy))
    }

    fn lock_exclusive(&mut self, want: Level) -> Result<(), FileError> {
        let had_native_pending = self.native.level >= Level::Pending;
        if !self
            .native
            .lock(&self.file, Level::Pending)
            .map_err(|e| FileError::io(IoOp::Lock, e))?
        {
            return Err(FileError::Busy);
        }
        let outcome = self.lock_files(want)?;
        let files_level = self.lock.lock().level();
        if outcome == Acquired::Busy {
            if files_level >= Level::Pending {
                self.set_level(Level::Pending);
            } else if !had_native_pending {
                // We never got PENDING in the table: do not keep same-host readers out.
                self.native
                    .release_pending(&self.file, self.level)
                    .map_err(|e| FileError::io(IoOp::Unlock, e))?;
            }
            return Err(FileError::Busy);
        }
        self.set_level(self.level.max(Level::Pending));
        if want == Level::Pending {
            return Ok(());
        }
        if !self
            .native
            .lock(&self.file, Level::Exclusive)
            .map_err(|e| FileError::io(IoOp::Lock, e))?
        {
            return Err(FileError::Busy);
        }
        self.set_level(Level::Exclusive);
        Ok(())
    }

    /// Reopens the file and refetches its size when another holder may have changed it, or
    /// when the descriptor has failed.
    fn refresh_if_changed(&mut self, generation: u64) -> Result<(), FileError> {
        if self.synced_generation == Some(generation) && !self.descriptor_failed {
            return Ok(());
        }
        // A new descriptor: the client drops (FUSE, SMB) or revalidates (NFS) cached pages.
        // No byte-range lock is held at this point, so closing the old one loses nothing.
        debug_assert_eq!(self.native.level, Level::None);
        let reopen = || Self::open_file(&self.path, self.writable, false);
        let reopened = crate::client_cache::retry_eio(reopen).and_then(|f| {
            // The size from the server refreshes the kernel's: SQLite is about to ask it.
            let size =
                crate::client_cache::retry_eio(|| self.size_refresh.server_size(&f, &self.path))?;
            Ok((f, size))
        });
        let fresh = match reopened {
            Ok((f, size)) => {
                tracing::trace!(path = %self.path.display(), generation, was = ?self.synced_generation, descriptor_failed = self.descriptor_failed, size, "reopened for a fresh view");
                f
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "coherency reopen failed; the lock is not taken");
                return Err(FileError::io(IoOp::Lock, e));
            }
        };
        self.file = fresh;
        self.synced_generation = Some(generation);
        // A fresh view of the file: it matches this generation, whatever we owed before.
        self.own_change_unpublished = false;
        self.descriptor_failed = false;
        Ok(())
    }

    /// SQLite's `xUnlock`.
    pub fn unlock(&mut self, to: Level) -> Result<(), FileError> {
        if to >= self.level {
            return Ok(());
        }
        // Our writes must be at the server before anyone else may read them.
        let flushed = if self.unsynced {
            self.file
                .sync_data()
                .map(|()| self.unsynced = false)
                .map_err(|e| self.descriptor_error(IoOp::Fsync, e))
        } else {
            Ok(())
        };
        let native = self
            .native
            .unlock(&self.file, to)
            .map_err(|e| FileError::io(IoOp::Unlock, e));
        // A change is published even if the flush failed: whatever reached the server,
        // readers must not trust their caches. (If the lock table cannot be updated, `DbLock`
        // owes the generation bump to its next edit.)
        let changed = self.changed;
        let published = self.lock.lock().unlock(to, changed);
        tracing::trace!(path = %self.path.display(), from = %self.level, to = %to, changed, flushed = flushed.is_ok(), published = ?published, "unlocked");
        self.set_level(to);
        self.changed = false;
        let own_change_current = if changed {
            flushed.is_ok()
        } else {
            self.own_change_unpublished
        };
        match published {
            Ok(Some(generation)) => {
                if changed || self.own_change_unpublished {
                    // Our own writes are what the server now has: our cache is current, unless
                    // the flush failed.
                    self.synced_generation = own_change_current.then_some(generation);
                    self.published_write = own_change_current.then_some(generation);
                }
                // Otherwise the generation did not move while we held the lock: nobody else
                // could write.
                self.own_change_unpublished = false;
            }
            // Not in the table yet: the generation it will get is not known. If another
            // process publishes it, ours will differ and the next SHARED reopens the file.
            Ok(None) => self.own_change_unpublished = own_change_current,
            Err(e) => {
                self.synced_generation = None;
                self.own_change_unpublished = false;
                return Err(FileError::Lock(e));
            }
        }
        flushed?;
        native
    }

    /// The generation at which the last unlock published the end of our own write
    /// transaction, if it did and its flush succeeded; taken once.
    pub fn take_published_write(&mut self) -> Option<u64> {
        self.published_write.take()
    }

    /// SQLite's `xCheckReservedLock`.
    pub fn reserved_held(&mut self) -> Result<bool, FileError> {
        if self
            .native
            .reserved_elsewhere(&self.file)
            .map_err(|e| FileError::io(IoOp::CheckReserved, e))?
        {
            return Ok(true);
        }
        let held = match self.lock.lock().reserved_held() {
            Ok(Some(held)) => Ok(held),
            Ok(None) => Err(FileError::Busy),
            Err(e) => Err(FileError::Lock(e)),
        };
        self.passing_eio_as_busy(held)
    }

    /// SQLite's `SQLITE_FCNTL_HAS_MOVED`: the path no longer names our file.
    pub fn has_moved(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(&self.path), self.file.metadata()) {
            (Ok(by_path), Ok(ours)) => by_path.ino() != ours.ino() || by_path.dev() != ours.dev(),
            _ => true,
        }
    }
}

impl Drop for NetworkFile {
    fn drop(&mut self) {
        if self.level > Level::None
            && let Err(e) = self.unlock(Level::None)
        {
            tracing::warn!(path = %self.path.display(), error = ?e, "lock not released at close; it will be recovered as stale");
        }
        if let Err(e) = self.lock.lock().settle_before_close() {
            tracing::warn!(path = %self.path.display(), error = %e, "lock release not published at close; it will be recovered as stale");
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use crate::lock::{DbLock, SystemEnvironment};
    use parking_lot::Mutex;

    fn two_handles() -> (tempfile::TempDir, File, File) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        std::fs::write(&path, b"x").unwrap();
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap()
        };
        (dir, open(), open())
    }

    #[test]
    fn a_write_is_not_retried_once_the_lease_may_have_run_out() {
        let eio = || Err::<(), _>(io::Error::from_raw_os_error(libc::EIO));
        let started = std::time::Instant::now();
        let soon = LeaseView::ending_at(sys::boot_time() + Duration::from_millis(30));
        assert!(matches!(
            retry_eio_within_lease(&soon, true, eio),
            Err(None)
        ));
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "retried past the lease for {:?}",
            started.elapsed()
        );

        let long = LeaseView::ending_at(sys::boot_time() + Duration::from_secs(60));
        let mut attempts = 0;
        let flaky = || {
            attempts += 1;
            if attempts < 3 { eio() } else { Ok(()) }
        };
        assert!(retry_eio_within_lease(&long, true, flaky).is_ok());

        let run_out = LeaseView::ending_at(Duration::from_nanos(1));
        assert!(
            retry_eio_within_lease(&run_out, false, || Ok(())).is_ok(),
            "no lock held: no lease to respect"
        );
        assert!(matches!(
            retry_eio_within_lease(&run_out, true, || Ok(())),
            Err(None)
        ));
    }

    fn network_file(path: &Path) -> NetworkFile {
        let files = crate::lock::files::DirLockFiles::new(
            path,
            crate::lock::files::TokenStyle::File,
            SizeRefresh::ForcedStat,
        );
        let lock = DbLock::new(
            files,
            SystemEnvironment,
            crate::lock::owner::new_owner(),
            Duration::from_secs(10),
        );
        let lock = Arc::new(Mutex::new(lock));
        NetworkFile::open(
            path,
            true,
            false,
            lock,
            SizeRefresh::ForcedStat,
            false,
            true,
        )
        .unwrap()
    }

    #[test]
    fn a_read_cut_short_inside_the_servers_file_is_an_error_never_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        std::fs::write(&path, vec![7u8; 8192]).unwrap();
        let mut file = network_file(&path);
        // The server's file is now longer than what this client's descriptor can read, as
        // when a client cuts a read short (a stale size, a connection dying mid-reply).
        let longer = dir.path().join("longer");
        std::fs::write(&longer, vec![9u8; 16384]).unwrap();
        std::fs::rename(&longer, &path).unwrap();
        let mut page = vec![0xffu8; 4096];
        match file.read_at(&mut page, 8192) {
            Err(FileError::Io { op: IoOp::Read, .. }) => {}
            other => panic!("expected a read error, got {other:?}"),
        }
        assert!(file.descriptor_failed, "the next SHARED reopens the file");

        // A read past the end the server has is a short read, zero-filled.
        let mut file = network_file(&path);
        let mut page = vec![0xffu8; 4096];
        assert!(matches!(
            file.read_at(&mut page, 14336),
            Err(FileError::ShortRead)
        ));
        assert!(page[..2048].iter().all(|&b| b == 9));
        assert!(page[2048..].iter().all(|&b| b == 0));
        file.read_at(&mut page, 4096).unwrap();
    }

    #[test]
    fn lock_requests_failing_with_eio_answer_busy_until_the_patience_has_passed() {
        let mut patience = EioPatience::default();
        let t = |ms: u64| Duration::from_millis(ms);
        assert!(patience.answer_busy(t(1000), false, true));
        assert!(patience.answer_busy(t(1000) + LOCK_EIO_PATIENCE - t(1), false, true));
        assert!(
            !patience.answer_busy(t(1000) + LOCK_EIO_PATIENCE, false, true),
            "EIO for the whole patience: the server is gone, say so"
        );
        assert!(!patience.answer_busy(t(20_000), false, false), "not EIO");
        assert!(!patience.answer_busy(t(20_001), true, false));
        assert!(
            patience.answer_busy(t(20_002), false, true),
            "a success starts the patience afresh"
        );
    }

    #[test]
    fn native_range_locks_follow_sqlite_levels_between_descriptors() {
        let (_dir, fa, fb) = two_handles();
        let (mut a, mut b) = (NativeRangeLocks::new(true), NativeRangeLocks::new(true));
        assert!(a.lock(&fa, Level::Shared).unwrap());
        assert!(b.lock(&fb, Level::Shared).unwrap());
        assert!(a.lock(&fa, Level::Reserved).unwrap());
        assert!(
            !b.lock(&fb, Level::Reserved).unwrap(),
            "one RESERVED at a time"
        );
        assert!(b.reserved_elsewhere(&fb).unwrap());
        // a cannot go EXCLUSIVE while b reads, but holds PENDING.
        assert!(!a.lock(&fa, Level::Exclusive).unwrap());
        assert_eq!(a.level, Level::Pending);
        let mut c = NativeRangeLocks::new(true);
        b.unlock(&fb, Level::None).unwrap();
        assert!(a.lock(&fa, Level::Exclusive).unwrap());
        assert!(
            !c.lock(&fb, Level::Shared).unwrap(),
            "EXCLUSIVE keeps readers out"
        );
        a.unlock(&fa, Level::Shared).unwrap();
        assert!(c.lock(&fb, Level::Shared).unwrap());
    }

    #[test]
    fn refused_exclusive_gives_back_only_pending() {
        let (_dir, fa, fb) = two_handles();
        let (mut a, mut b) = (NativeRangeLocks::new(true), NativeRangeLocks::new(true));
        assert!(a.lock(&fa, Level::Shared).unwrap());
        assert!(a.lock(&fa, Level::Reserved).unwrap());
        assert!(a.lock(&fa, Level::Pending).unwrap());
        a.release_pending(&fa, Level::Reserved).unwrap();
        assert_eq!(a.level, Level::Reserved);
        // Still RESERVED and SHARED: b sees the reservation and can read.
        assert!(b.reserved_elsewhere(&fb).unwrap());
        assert!(b.lock(&fb, Level::Shared).unwrap());
    }
}
