//! The rollback journal of a network-mode database.
//!
//! SQLite's pager stays in its default DELETE journal mode, but this VFS never deletes the
//! journal: "delete" truncates it to zero bytes, and "does it exist" asks the server for its
//! size, unless the lock table's generation shows it cannot be hot ([`KnownJournal`]). A
//! journal that disappears and reappears is what breaks DELETE mode on network filesystems
//! (another client's cached directory entry still says it exists; its next open fails with
//! "unable to open database file"); on SMB the delete itself fails while another client has
//! the journal open. A journal that is always there, empty between transactions,
//! avoids both, and every transaction still opens it afresh, so a hot-journal check never
//! reads stale bytes through a long-lived descriptor (which TRUNCATE and PERSIST modes keep).
//!
//! The same applies to the `-wal` name: it exists for SQLite only if it has bytes at the
//! server, so a deleted WAL is not resurrected by a stale cache.
//!
//! The journal is fenced by the lease like the database file ([`JournalPermit`]): it is
//! written, truncated or emptied only while a connection of this process to its database holds
//! the write lock under a lease that cannot have run out. A writer that stalled past its lease
//! and was taken over still believes it holds the lock when it runs again; without the fence,
//! its COMMIT would write its journal header into the next writer's journal, and its failed
//! COMMIT would empty that journal, leaving the next writer's spilled pages with nothing to
//! roll them back.
//!
//! May use `crate::lock` (levels, the lease view), `crate::client_cache`, `crate::sys` and the file
//! contract with its base-file handle (`crate::vfs::file`).

use std::collections::HashMap;
use std::ffi::c_int;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use libsqlite3_sys as ffi;
use parking_lot::Mutex;

use crate::client_cache::SizeRefresh;
use crate::lock::LeaseView;
use crate::lock::protocol::Level;
use crate::vfs::file::{BaseFile, FileControl, FileError, SqliteFile};

/// Main databases open in network mode in this process, by full path.
static NETWORK_DATABASES: Mutex<Option<HashMap<String, NetworkDatabase>>> = Mutex::new(None);

/// What the VFS needs to know about a network-mode database when SQLite names its journal.
#[derive(Debug, Default)]
struct NetworkDatabase {
    /// How its client is made to tell a size from the server.
    refresh: SizeRefresh,
    /// The journal permit of each connection.
    permits: Vec<Arc<JournalPermit>>,
    /// What this process knows of the journal without asking the server.
    known: KnownJournal,
}

/// What this process knows of a database's journal, so that SQLite's hot-journal check at
/// every SHARED lock need not ask the server (an open, a forced size and a close, in read
/// transactions too).
///
/// | event | what is known after it |
/// |---|---|
/// | the server says the journal exists and is empty, asked by a connection holding SHARED granted at generation G (every connection of this process at SHARED or above granted at G) | not hot at G |
/// | a connection here emptied the journal (its commit, or its rollback completed) after it last took RESERVED or more and after its last write to the journal, and its release is published at generation G | not hot at G |
/// | this process writes or truncates the journal | nothing |
///
/// Why "not hot at G" holds for every later SHARED granted at G: a journal becomes hot only
/// when a writer that has changed the database file stops (it dies, or stalls and is taken
/// over) while at EXCLUSIVE, and stops being hot only when a connection at EXCLUSIVE rolls
/// it back. Either way the generation moves on: a writer leaving EXCLUSIVE after changing the
/// file bumps it, as does the removal of a stale holder at RESERVED or above; no SHARED is
/// granted while anyone is at PENDING or above; and generations never repeat (a new table
/// starts at a fresh random one). A journal written by a live writer at RESERVED is not hot
/// either (SQLite asks `xCheckReservedLock` and would find the writer).
///
/// One writer is outside the lock table: a plain SQLite process on this host, which the
/// byte-range locks let in beside us (see `network::file`). Its journal writes change the
/// size this host's kernel reports at once, so the check is skipped only while the journal
/// reads as empty to a local `stat` (answered from the client's cache, or one request).
#[derive(Debug, Default)]
struct KnownJournal {
    /// The journal is not hot while the table's generation is this.
    not_hot_at: Option<u64>,
}

/// A file SQLite names that belongs to a network-mode database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Companion {
    Journal,
    Wal,
}

/// One connection's right to write its database's journal: the lock level SQLite believes
/// the connection holds, that lock's lease, and a way to confirm the lock is still held once
/// the lease has run out on this process's clock. The network file keeps the level current.
pub struct JournalPermit {
    level: AtomicU8,
    /// The table generation the connection's SHARED was granted at ([`NO_GENERATION`]
    /// at NONE).
    shared_granted_at: AtomicU64,
    /// The connection emptied the journal since it last took RESERVED or more, and has not
    /// written it since: its next published release may vouch for an empty journal. Cleared
    /// at RESERVED, so a rollback of someone else's hot journal that fails halfway (it takes
    /// EXCLUSIVE, writes the database, and never empties the journal) cannot inherit an
    /// emptying from an earlier transaction.
    emptied_journal: AtomicBool,
    lease: LeaseView,
    confirm_held: Box<dyn Fn() -> bool + Send + Sync>,
}

/// `shared_granted_at` of a connection that holds no lock.
const NO_GENERATION: u64 = u64::MAX;

impl std::fmt::Debug for JournalPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalPermit")
            .field("level", &self.level)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl JournalPermit {
    /// `confirm_held` answers, under the lock table's latch, whether the connection's lock is
    /// still its own, renewing the lease if so (see `DbLock::confirm_held`).
    pub fn new(
        lease: LeaseView,
        confirm_held: Box<dyn Fn() -> bool + Send + Sync>,
    ) -> JournalPermit {
        JournalPermit {
            level: AtomicU8::new(Level::None as u8),
            shared_granted_at: AtomicU64::new(NO_GENERATION),
            emptied_journal: AtomicBool::new(false),
            lease,
            confirm_held,
        }
    }

    pub fn set_level(&self, level: Level) {
        if level == Level::None {
            self.shared_granted_at
                .store(NO_GENERATION, Ordering::Release);
        }
        if level >= Level::Reserved {
            self.emptied_journal.store(false, Ordering::Release);
        }
        self.level.store(level as u8, Ordering::Release);
    }

    /// Records that the connection's SHARED was granted at table generation `generation`.
    pub fn set_shared_granted_at(&self, generation: u64) {
        self.shared_granted_at.store(generation, Ordering::Release);
    }

    fn level(&self) -> Level {
        Level::from_sqlite(self.level.load(Ordering::Acquire).into()).unwrap_or(Level::None)
    }

    /// RESERVED or more (SQLite writes its journal only then), under a lease that cannot have
    /// run out (a lost lease reads as run out until SQLite unlocks to NONE).
    fn allows_writes(&self, now: Duration) -> bool {
        self.level.load(Ordering::Acquire) >= Level::Reserved as u8 && !self.lease.expired(now)
    }
}

pub fn register_database(path: &str, refresh: SizeRefresh, permit: Arc<JournalPermit>) {
    let mut guard = NETWORK_DATABASES.lock();
    let db = guard
        .get_or_insert_with(HashMap::new)
        .entry(path.to_owned())
        .or_default();
    db.refresh = refresh;
    db.permits.push(permit);
}

pub fn unregister_database(path: &str, permit: &Arc<JournalPermit>) {
    let mut guard = NETWORK_DATABASES.lock();
    if let Some(map) = guard.as_mut()
        && let Some(db) = map.get_mut(path)
    {
        db.permits.retain(|p| !Arc::ptr_eq(p, permit));
        if db.permits.is_empty() {
            map.remove(path);
        }
    }
}

/// Whether `name` is the journal or WAL of a database open in network mode here, and how
/// that database's client is made to tell sizes.
pub fn companion_of_network_database(name: &str) -> Option<(Companion, SizeRefresh)> {
    with_companion_database(name, |kind, db| (kind, db.refresh))
}

/// `look` applied to what the registry holds for the database whose journal or WAL is
/// `name`, with which of the two it is.
fn with_companion_database<R>(
    name: &str,
    look: impl FnOnce(Companion, &NetworkDatabase) -> R,
) -> Option<R> {
    let (db, kind) = if let Some(db) = name.strip_suffix("-journal") {
        (db, Companion::Journal)
    } else if let Some(db) = name.strip_suffix("-wal") {
        (db, Companion::Wal)
    } else {
        return None;
    };
    let guard = NETWORK_DATABASES.lock();
    guard.as_ref()?.get(db).map(|db| look(kind, db))
}

/// `change` applied to what the registry holds for the database whose journal is `journal`.
fn with_database_of<R>(journal: &str, change: impl FnOnce(&mut NetworkDatabase) -> R) -> Option<R> {
    let db = journal.strip_suffix("-journal")?;
    NETWORK_DATABASES.lock().as_mut()?.get_mut(db).map(change)
}

/// The generation every connection of this process at SHARED or above was granted its SHARED
/// at; `None` if there is no such connection, or they differ.
fn sharers_generation(permits: &[Arc<JournalPermit>]) -> Option<u64> {
    let mut sharers = permits.iter().filter(|p| p.level() >= Level::Shared);
    let first = sharers.next()?.shared_granted_at.load(Ordering::Acquire);
    let common = sharers.all(|p| p.shared_granted_at.load(Ordering::Acquire) == first);
    (common && first != NO_GENERATION).then_some(first)
}

impl NetworkDatabase {
    /// Whether the journal is known not to be hot for the connection asking SQLite's
    /// hot-journal check ([`KnownJournal`]). The asker holds SHARED, so it is among the
    /// sharers.
    fn journal_known_not_hot(&self) -> bool {
        self.known.not_hot_at.is_some()
            && sharers_generation(&self.permits) == self.known.not_hot_at
    }
}

/// The server said the journal `journal` is empty, asked for a connection at SHARED.
fn note_seen_empty(journal: &str) {
    with_database_of(journal, |db| {
        if let Some(generation) = sharers_generation(&db.permits) {
            db.known.not_hot_at = Some(generation);
        }
    });
}

/// This process is about to write or truncate the journal `journal`: nothing is known of it.
fn note_changing(journal: &str) {
    with_database_of(journal, |db| {
        db.known = KnownJournal::default();
        for permit in &db.permits {
            permit.emptied_journal.store(false, Ordering::Release);
        }
    });
}

/// The connection holding `permit` published the end of its write transaction at table
/// generation `generation`, for its database `database` (the name it is registered under).
pub fn note_write_published(database: &str, permit: &JournalPermit, generation: u64) {
    let mut guard = NETWORK_DATABASES.lock();
    if let Some(db) = guard.as_mut().and_then(|map| map.get_mut(database))
        && permit.emptied_journal.swap(false, Ordering::AcqRel)
    {
        db.known.not_hot_at = Some(generation);
    }
}

/// Whether this host's kernel reports the journal at `path` as empty or absent: it would
/// report a same-host writer's bytes at once.
fn locally_empty(path: &Path) -> bool {
    match std::fs::metadata(path) {
        Ok(m) => m.len() == 0,
        Err(e) => e.kind() == io::ErrorKind::NotFound,
    }
}

/// Whether the journal named `journal` may be written, truncated or emptied now: some
/// connection of this process to its database holds the write lock under a live lease.
/// (Within one process, a connection whose lease was lost cannot be told apart from another
/// that holds the lock rightly; the write lock is held by one connection at a time, so the
/// other case needs two connections of one process, one of them stalled past its lease.)
///
/// A write lock whose lease ran out on this process's clock is confirmed first, as the
/// database file does before its own I/O: that may wait for the lock table's latch.
fn may_write(journal: &str, now: Duration) -> bool {
    let Some(db) = journal.strip_suffix("-journal") else {
        return false;
    };
    let permits: Vec<Arc<JournalPermit>> = {
        let guard = NETWORK_DATABASES.lock();
        match guard.as_ref().and_then(|map| map.get(db)) {
            Some(db) => db.permits.clone(),
            None => return false,
        }
    };
    permits.iter().any(|p| p.allows_writes(now))
        || permits
            .iter()
            .any(|p| p.level.load(Ordering::Acquire) >= Level::Reserved as u8 && (p.confirm_held)())
}

/// One open journal of a network-mode database: its name, for the fence, and whether what
/// this client reads back from it is still what SQLite wrote.
///
/// A network client may acknowledge a write before the server has it, and report a failure
/// only at the next fsync, once (sshfs does; the NFS client alike), while its cache holds the
/// bytes the server refused. After a failed journal write or sync, reading the journal back
/// would not return what SQLite wrote. SQLite reads it back exactly then: a failed
/// transaction restores its page cache from the journal, and a short or torn record ends that
/// playback early without an error, leaving uncommitted changes in the cache of a connection
/// that carries on ("database disk image is malformed" until it reconnects; seen on sshfs
/// with the server's disk full). So once a write, truncation or sync of this journal has
/// failed, its reads and syncs fail too: SQLite's pager goes into its error state, which
/// throws the page cache away, and the journal, if it matters, is rolled back from the
/// server's copy by the next transaction's hot-journal check.
///
/// A short read is passed on only once the server confirms it: SQLite takes a short journal
/// read for the journal's end. In the hot-journal check, a first byte that reads short means
/// "not hot", and the reader goes on to read a half-written database; in a rollback, a short
/// record ends the playback and the journal is then emptied, leaving the rest of the dead
/// writer's pages in the file. A client cuts a read short for a stale cached size, or when its
/// connection dies mid-reply (FUSE clients answer that as end-of-file).
#[derive(Debug)]
pub struct OpenJournal {
    name: String,
    refresh: SizeRefresh,
    failed: bool,
}

impl OpenJournal {
    pub fn new(name: String, refresh: SizeRefresh) -> OpenJournal {
        OpenJournal {
            name,
            refresh,
            failed: false,
        }
    }

    /// Reads `buf` again from `offset` through a fresh descriptor whose size the server gave,
    /// after the base file's read came back short. `Ok(true)`: the journal does end inside
    /// `buf`, whose rest is zeroed (a short read for SQLite); `Ok(false)`: `buf` is full. A
    /// read that stays short of the server's size is an error. EIO is asked through as
    /// patiently as "does the journal exist" ([`ACCESS_EIO_PATIENCE`]): both decide whether a
    /// journal is hot.
    fn read_again_after_short_read(&self, buf: &mut [u8], offset: u64) -> io::Result<bool> {
        with_access_patience(|| self.read_through_fresh_descriptor(buf, offset)).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("journal {} read again at {offset}: {e}", self.name),
            )
        })
    }

    fn read_through_fresh_descriptor(&self, buf: &mut [u8], offset: u64) -> io::Result<bool> {
        let Some((file, size)) =
            crate::client_cache::open_revalidated(Path::new(&self.name), self.refresh)?
        else {
            buf.fill(0);
            return Ok(true);
        };
        let present = size.saturating_sub(offset).min(buf.len() as u64) as usize;
        crate::client_cache::retry_eio(|| file.read_exact_at(&mut buf[..present], offset))?;
        buf[present..].fill(0);
        Ok(present < buf.len())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Records that `what` (write, truncate, sync) failed on this journal.
    pub fn note_failure(&mut self, what: &'static str) {
        if !self.failed {
            tracing::warn!(journal = %self.name, failed = what, "journal no longer read back: a change to it failed, and the client may hold bytes the server refused");
            self.failed = true;
        }
    }

    /// Whether reads and syncs may go to the file: no change to it has failed.
    pub fn trusted(&self) -> bool {
        !self.failed
    }
}

/// The journal as SQLite holds it: the base VFS's file, which does the I/O, behind the fence
/// and the read-back rule of [`OpenJournal`].
pub struct FencedJournal {
    journal: OpenJournal,
    base: BaseFile,
}

impl FencedJournal {
    pub fn new(name: String, refresh: SizeRefresh, base: BaseFile) -> FencedJournal {
        FencedJournal {
            journal: OpenJournal::new(name, refresh),
            base,
        }
    }

    /// Passes `result`, the base file's answer to `what`, on; a failure makes the journal
    /// untrusted.
    fn outcome(
        &mut self,
        what: &'static str,
        result: Result<(), FileError>,
    ) -> Result<(), FileError> {
        if result.is_err() {
            self.journal.note_failure(what);
        }
        result
    }

    /// `Err(fail_with)` once a change to this journal has failed.
    fn trusted(&self, fail_with: c_int) -> Result<(), FileError> {
        if self.journal.trusted() {
            Ok(())
        } else {
            Err(FileError::Code(fail_with))
        }
    }
}

/// Writes, truncations and syncs are fenced or watched; everything else goes to the base file
/// as it is. Version 1 of the method table, as for the database: SQLite maps no journal into
/// memory.
impl SqliteFile for FencedJournal {
    const WRAPS_BASE: bool = true;

    fn read(&mut self, buf: &mut [u8], offset: u64) -> Result<(), FileError> {
        self.trusted(ffi::SQLITE_IOERR_READ)?;
        match self.base.read(buf, offset) {
            // The base VFS answers a read's EIO with "the filesystem is corrupt", which SQLite
            // reports as "database disk image is malformed". From a network client, EIO is
            // the connection, not the disk (sshfs fails every descriptor opened before a
            // reconnect with EIO; seen in the sshfs outage test after the server came back).
            Err(FileError::Code(ffi::SQLITE_IOERR_CORRUPTFS)) => {
                tracing::warn!("journal read failed with EIO; reported as an I/O error");
                Err(FileError::Code(ffi::SQLITE_IOERR_READ))
            }
            Err(FileError::ShortRead) => {
                match self.journal.read_again_after_short_read(buf, offset) {
                    Ok(true) => Err(FileError::ShortRead),
                    Ok(false) => {
                        tracing::debug!(
                            journal = self.journal.name(),
                            offset,
                            amount = buf.len(),
                            "short journal read inside the server's file; read again in full"
                        );
                        Ok(())
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "journal read cut short by the client");
                        Err(FileError::Code(ffi::SQLITE_IOERR_READ))
                    }
                }
            }
            other => other,
        }
    }

    fn write(&mut self, buf: &[u8], offset: u64) -> Result<(), FileError> {
        fence(&self.journal.name, "write")?;
        note_changing(&self.journal.name);
        let result = self.base.write(buf, offset);
        self.outcome("write", result)
    }

    fn truncate(&mut self, size: u64) -> Result<(), FileError> {
        fence(&self.journal.name, "truncate")?;
        note_changing(&self.journal.name);
        let result = self.base.truncate(size);
        self.outcome("truncate", result)
    }

    /// A sync after a failed one is not asked: sshfs reports a refused write to one fsync
    /// only, and the next would say all is well.
    fn sync(&mut self, flags: c_int) -> Result<(), FileError> {
        self.trusted(ffi::SQLITE_IOERR_FSYNC)?;
        let result = self.base.sync(flags);
        self.outcome("sync", result)
    }

    fn file_size(&mut self) -> Result<u64, FileError> {
        self.base.file_size()
    }

    fn lock(&mut self, level: Level) -> Result<(), FileError> {
        self.base.lock(level)
    }

    fn unlock(&mut self, level: Level) -> Result<(), FileError> {
        self.base.unlock(level)
    }

    fn reserved_held(&mut self) -> Result<bool, FileError> {
        self.base.reserved_held()
    }

    fn file_control(&mut self, control: FileControl<'_>) -> Result<bool, FileError> {
        self.base.file_control(control)
    }

    fn sector_size(&mut self) -> c_int {
        self.base.sector_size()
    }

    fn device_characteristics(&mut self) -> c_int {
        self.base.device_characteristics()
    }
}

/// `SQLITE_IOERR_LOCK` (as for the database under a lost lease) if no connection of this
/// process may change the journal `journal` now; `what` names the refused change.
fn fence(journal: &str, what: &str) -> Result<(), FileError> {
    if may_write(journal, crate::sys::boot_time()) {
        return Ok(());
    }
    tracing::error!(
        journal,
        refused = what,
        "journal change refused: no connection here holds the write lock under a live lease (taken over after a stall or an outage?)"
    );
    Err(FileError::Code(ffi::SQLITE_IOERR_LOCK))
}

/// `xDelete` of `name`, if it is a network-mode database's journal: emptied, not deleted,
/// behind the fence. `None`: not ours, the base VFS deletes it.
pub fn delete_for_sqlite(name: &str, sync_dir: bool) -> Option<Result<(), FileError>> {
    let (Companion::Journal, _) = companion_of_network_database(name)? else {
        return None;
    };
    Some(fence(name, "empty").and_then(|()| {
        note_changing(name);
        discard(Path::new(name), sync_dir).map_err(|e| {
            tracing::error!(path = name, error = %e, "cannot empty the journal");
            FileError::Code(ffi::SQLITE_IOERR_DELETE)
        })?;
        with_database_of(name, |db| {
            for permit in db.permits.iter().filter(|p| p.level() >= Level::Reserved) {
                permit.emptied_journal.store(true, Ordering::Release);
            }
        });
        Ok(())
    }))
}

/// `xAccess(EXISTS)` of `name`, if it is a network-mode database's journal or WAL: whether it
/// has bytes at the server. `None`: not ours, the base VFS answers.
///
/// SQLite asks for the journal to learn whether it is hot, at every SHARED lock. A journal
/// known not to be hot ([`KnownJournal`]) is answered "none" without asking the server: what
/// SQLite then does is what it does for an empty journal.
pub fn exists_for_sqlite(name: &str) -> Option<Result<bool, FileError>> {
    let (kind, refresh, known_not_hot) = companion_for_existence_check(name)?;
    let path = Path::new(name);
    if known_not_hot && locally_empty(path) {
        tracing::trace!(
            journal = name,
            "hot-journal check answered by the generation"
        );
        return Some(Ok(false));
    }
    Some(match server_size(path, refresh) {
        Ok(size) => {
            // Only a journal that is there counts as seen empty: an absent one may be a
            // cached "no such file" from before another client created it.
            if kind == Companion::Journal && size == Some(0) {
                note_seen_empty(name);
            }
            Ok(size.is_some_and(|n| n > 0))
        }
        // Network mode never has a WAL (it was converted at open): an unanswerable question
        // about one is answered "none". A journal must be answered truly.
        Err(e) if kind == Companion::Wal => {
            tracing::debug!(path = name, error = %e, "cannot check for a WAL; assuming none");
            Ok(false)
        }
        Err(e) => {
            tracing::error!(path = name, error = %e, "cannot check the journal");
            Err(FileError::Code(ffi::SQLITE_IOERR_ACCESS))
        }
    })
}

/// What the existence check of `name` needs from the registry, in one lookup: which companion
/// it is, how its database's client tells sizes, and whether it is a journal known not hot.
fn companion_for_existence_check(name: &str) -> Option<(Companion, SizeRefresh, bool)> {
    with_companion_database(name, |kind, db| {
        let known_not_hot = kind == Companion::Journal && db.journal_known_not_hot();
        (kind, db.refresh, known_not_hot)
    })
}

/// Opens a network-mode database's journal for SQLite with `open` (the base VFS's open, given
/// the flags to use), answering with its result code.
///
/// The journal is never deleted here, so after a database's first transaction it always
/// exists: the open is tried without `SQLITE_OPEN_CREATE` first, and with it only if that
/// fails. SQLite's unix VFS marks a journal opened with `SQLITE_OPEN_CREATE` as new, and its
/// first sync then opens and syncs the directory: one more open at the file server in every
/// write transaction (traced on NFS), for a name that was made durable when the journal was
/// first created. A failed open with `SQLITE_OPEN_CREATE` is tried again as any other open is
/// ([`crate::client_cache::retry_cantopen`]: smbnetfs fails opens with a passing EIO).
pub fn open_for_sqlite(flags: c_int, mut open: impl FnMut(c_int) -> c_int) -> c_int {
    if flags & ffi::SQLITE_OPEN_CREATE != 0 {
        let existing = open(flags & !ffi::SQLITE_OPEN_CREATE);
        if existing != ffi::SQLITE_CANTOPEN {
            return existing;
        }
    }
    open_with_patience(|| open(flags))
}

/// A base VFS `open` of a companion file (journal or WAL), tried again while it fails with
/// `SQLITE_CANTOPEN` ([`crate::client_cache::retry_cantopen`]); its result code.
pub fn open_with_patience(mut open: impl FnMut() -> c_int) -> c_int {
    let outcome = crate::client_cache::retry_cantopen(ffi::SQLITE_CANTOPEN, || match open() {
        ffi::SQLITE_OK => Ok(()),
        rc => Err(rc),
    });
    outcome.err().unwrap_or(ffi::SQLITE_OK)
}

/// Returned by `PRAGMA journal_mode=<anything else>` in network mode: the pinned mode.
const PINNED_JOURNAL_MODE: &str = "delete";

/// The answer to `PRAGMA name=value` in network mode, if it is a journal-mode change to pin:
/// any mode but the pinned one is answered with the pinned one and not applied (WAL needs
/// shared memory; TRUNCATE and PERSIST would keep a journal descriptor open across
/// transactions, whose cached bytes can go stale; MEMORY and OFF lose atomicity on a crash).
/// `None`: SQLite runs the pragma itself.
pub fn pinned_journal_mode(name: &str, value: Option<&str>) -> Option<&'static str> {
    let value = value?.to_ascii_lowercase();
    if !name.eq_ignore_ascii_case("journal_mode") || value == PINNED_JOURNAL_MODE {
        return None;
    }
    tracing::info!(requested = %value, kept = PINNED_JOURNAL_MODE, "journal_mode change ignored in network mode");
    Some(PINNED_JOURNAL_MODE)
}

/// How long "does the journal exist" keeps asking through EIO. SQLite asks at every SHARED
/// lock, and an error fails the caller's statement: the SMB testbed's client has answered EIO
/// for longer than the 2 s every single request is retried (a reader failed with
/// `SQLITE_IOERR_ACCESS` in CI), so this question gets more patience.
const ACCESS_EIO_PATIENCE: Duration = Duration::from_secs(8);

/// "Exists" for SQLite: has bytes at the server (a missed hot journal would let a reader see
/// a half-written database, so no cached size is trusted).
pub fn has_content(path: &Path, refresh: SizeRefresh) -> io::Result<bool> {
    Ok(server_size(path, refresh)?.is_some_and(|size| size > 0))
}

/// The size the server gives the file at `path`; `None` if it does not exist.
fn server_size(path: &Path, refresh: SizeRefresh) -> io::Result<Option<u64>> {
    let opened = with_access_patience(|| crate::client_cache::open_revalidated(path, refresh))?;
    Ok(opened.map(|(_, size)| size))
}

/// Runs `op` again while it fails with EIO, for up to [`ACCESS_EIO_PATIENCE`].
fn with_access_patience<T>(mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    let started = Instant::now();
    loop {
        match op() {
            Err(e)
                if e.raw_os_error() == Some(libc::EIO)
                    && started.elapsed() < ACCESS_EIO_PATIENCE => {}
            result => return result,
        }
    }
}

/// "Delete" for SQLite: truncate to zero bytes (and sync if asked), keeping the file.
///
/// Without a sync, by path: `truncate(2)` is one request at an NFS server (SETATTR) where an
/// `O_TRUNC` open is three (OPEN, SETATTR, CLOSE), once per write transaction. The path is
/// not checked for a symlink, as the `O_NOFOLLOW` open would: SQLite opened this journal with
/// `O_NOFOLLOW` in the transaction that now deletes it. With a sync (`synchronous=EXTRA`),
/// through an `O_TRUNC` open, to have a descriptor to sync. Never `ftruncate`: smbnetfs fails
/// it with EIO but honours both `O_TRUNC` and `truncate(path)`.
fn discard(path: &Path, sync: bool) -> io::Result<()> {
    let emptied = if sync {
        OpenOptions::new()
            .write(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .and_then(|file| file.sync_all())
    } else {
        crate::sys::truncate_path(path, 0)
    };
    match emptied {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether SQLite's hot-journal check on `journal` would be answered without the server
    /// (given a journal that reads as empty here).
    fn known_not_hot(journal: &str) -> bool {
        companion_for_existence_check(journal).is_some_and(|(_, _, known_not_hot)| known_not_hot)
    }

    fn permit() -> Arc<JournalPermit> {
        permit_ending_at(Duration::ZERO, false)
    }

    /// A permit whose lease ends at `end`; `still_held` is what confirming the lock finds.
    fn permit_ending_at(end: Duration, still_held: bool) -> Arc<JournalPermit> {
        Arc::new(JournalPermit::new(
            LeaseView::ending_at(end),
            Box::new(move || still_held),
        ))
    }

    #[test]
    fn companions_are_recognised_only_for_registered_databases() {
        let permit = permit();
        register_database(
            "/x/companion-test.db",
            SizeRefresh::ForcedStat,
            permit.clone(),
        );
        assert_eq!(
            companion_of_network_database("/x/companion-test.db-journal"),
            Some((Companion::Journal, SizeRefresh::ForcedStat))
        );
        assert_eq!(
            companion_of_network_database("/x/companion-test.db-wal"),
            Some((Companion::Wal, SizeRefresh::ForcedStat))
        );
        assert_eq!(companion_of_network_database("/x/other.db-journal"), None);
        unregister_database("/x/companion-test.db", &permit);
        assert_eq!(
            companion_of_network_database("/x/companion-test.db-journal"),
            None
        );
    }

    #[test]
    fn only_a_write_lock_under_a_live_lease_may_write_the_journal() {
        let db = "/x/permit-test.db";
        let journal = "/x/permit-test.db-journal";
        let now = Duration::from_secs(100);
        let reader = permit();
        register_database(db, SizeRefresh::ForcedStat, reader.clone());
        reader.set_level(Level::Shared);
        assert!(
            !may_write(journal, now),
            "a reader never writes the journal"
        );

        let writer = permit_ending_at(now * 2, true);
        register_database(db, SizeRefresh::ForcedStat, writer.clone());
        for level in [Level::Reserved, Level::Pending, Level::Exclusive] {
            writer.set_level(level);
            assert!(may_write(journal, now), "{level}");
        }
        assert!(!may_write("/x/other.db-journal", now));
        assert!(!may_write(db, now), "not a journal name");

        let run_out = permit_ending_at(now, false);
        run_out.set_level(Level::Exclusive);
        let lost = permit_ending_at(Duration::from_nanos(1), false);
        lost.set_level(Level::Reserved);
        unregister_database(db, &writer);
        register_database(db, SizeRefresh::ForcedStat, run_out.clone());
        register_database(db, SizeRefresh::ForcedStat, lost.clone());
        assert!(!may_write(journal, now), "lease run out or lost");

        register_database(db, SizeRefresh::ForcedStat, writer.clone());
        assert!(may_write(journal, now), "one rightful writer among them");
        writer.set_level(Level::Shared);
        assert!(!may_write(journal, now), "the writer went back to SHARED");
        for p in [&reader, &writer, &run_out, &lost] {
            unregister_database(db, p);
        }
        assert_eq!(companion_of_network_database(journal), None);
    }

    #[test]
    fn a_write_lock_whose_lease_ran_out_may_write_the_journal_once_confirmed_still_held() {
        let db = "/x/confirm-test.db";
        let journal = "/x/confirm-test.db-journal";
        let now = Duration::from_secs(100);
        let taken_over = permit_ending_at(now, false);
        taken_over.set_level(Level::Reserved);
        register_database(db, SizeRefresh::ForcedStat, taken_over.clone());
        assert!(!may_write(journal, now), "the lock was taken over");
        let still_held = permit_ending_at(now, true);
        register_database(db, SizeRefresh::ForcedStat, still_held.clone());
        assert!(!may_write(journal, now), "confirmed only for a write lock");
        still_held.set_level(Level::Reserved);
        assert!(may_write(journal, now), "confirmed still held");
        for p in [&taken_over, &still_held] {
            unregister_database(db, p);
        }
    }

    #[test]
    fn a_journal_is_not_read_back_after_a_change_to_it_failed() {
        let mut journal = OpenJournal::new("/x/a.db-journal".into(), SizeRefresh::ForcedStat);
        assert!(journal.trusted());
        assert_eq!(journal.name(), "/x/a.db-journal");
        journal.note_failure("sync");
        assert!(!journal.trusted());
        journal.note_failure("write");
        assert!(!journal.trusted(), "it stays untrusted until closed");
    }

    #[test]
    fn a_short_journal_read_is_read_again_and_passed_on_only_at_the_servers_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db-journal");
        let contents: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8 + 1).collect();
        std::fs::write(&path, &contents).unwrap();
        let journal =
            OpenJournal::new(path.to_string_lossy().into_owned(), SizeRefresh::ForcedStat);

        // A read the client cut short inside the file: read again in full.
        let mut buf = vec![0u8; 512];
        assert!(!journal.read_again_after_short_read(&mut buf, 1024).unwrap());
        assert_eq!(buf, contents[1024..1536]);
        // Reaching the end the server has: short, the rest zeroed.
        let mut buf = vec![0xffu8; 512];
        assert!(journal.read_again_after_short_read(&mut buf, 2800).unwrap());
        assert_eq!(&buf[..200], &contents[2800..]);
        assert!(buf[200..].iter().all(|&b| b == 0));
        // Gone or emptied: all short.
        std::fs::remove_file(&path).unwrap();
        let mut buf = vec![0xffu8; 16];
        assert!(journal.read_again_after_short_read(&mut buf, 0).unwrap());
        assert_eq!(buf, vec![0u8; 16]);
    }

    #[test]
    fn discard_keeps_the_file_empty_and_has_content_follows_size() {
        let dir = tempfile::tempdir().unwrap();
        let j = dir.path().join("a.db-journal");
        assert!(!has_content(&j, SizeRefresh::ForcedStat).unwrap());
        for sync in [false, true] {
            discard(&j, sync).unwrap(); // absent: nothing to do
            assert!(!j.exists());
            std::fs::write(&j, b"journal bytes").unwrap();
            assert!(has_content(&j, SizeRefresh::ForcedStat).unwrap());
            discard(&j, sync).unwrap();
            assert!(j.exists());
            assert!(!has_content(&j, SizeRefresh::ForcedStat).unwrap());
            std::fs::remove_file(&j).unwrap();
        }
    }

    /// A database `name` in a new directory, registered with a reader's and a writer's
    /// permit, and its journal's name.
    fn registered_database(
        dir: &tempfile::TempDir,
        name: &str,
    ) -> (String, String, Arc<JournalPermit>, Arc<JournalPermit>) {
        let db = dir.path().join(name).to_string_lossy().into_owned();
        let (reader, writer) = (permit(), permit_ending_at(Duration::ZERO, true));
        register_database(&db, SizeRefresh::ForcedStat, reader.clone());
        register_database(&db, SizeRefresh::ForcedStat, writer.clone());
        let journal = format!("{db}-journal");
        (db, journal, reader, writer)
    }

    fn granted_shared_at(permit: &JournalPermit, generation: u64) {
        permit.set_level(Level::Shared);
        permit.set_shared_granted_at(generation);
    }

    #[test]
    fn a_journal_is_known_not_hot_only_at_the_generation_it_was_seen_empty_or_emptied_at() {
        let dir = tempfile::tempdir().unwrap();
        let (db, journal, reader, writer) = registered_database(&dir, "known.db");
        std::fs::write(&journal, b"").unwrap();
        granted_shared_at(&reader, 5);
        assert!(!known_not_hot(&journal), "nothing seen yet");
        assert!(matches!(exists_for_sqlite(&journal), Some(Ok(false))));
        assert!(known_not_hot(&journal), "the server said empty at 5");
        // Another connection here granted at 6: the asker may be either.
        granted_shared_at(&writer, 6);
        assert!(!known_not_hot(&journal));
        reader.set_level(Level::None);
        assert!(!known_not_hot(&journal), "6 is not 5");

        // The writer commits: writes the journal, empties it, publishes its release at 7.
        writer.set_level(Level::Exclusive);
        note_changing(&journal);
        assert!(matches!(delete_for_sqlite(&journal, false), Some(Ok(()))));
        note_write_published(&db, &writer, 7);
        writer.set_level(Level::None);
        granted_shared_at(&reader, 7);
        assert!(
            known_not_hot(&journal),
            "emptied by the writer published at 7"
        );

        // A journal written again after it was emptied (a new write transaction before the
        // release was published): the release says nothing of it.
        reader.set_level(Level::None);
        writer.set_level(Level::Exclusive);
        assert!(matches!(delete_for_sqlite(&journal, false), Some(Ok(()))));
        note_changing(&journal);
        note_write_published(&db, &writer, 8);
        writer.set_level(Level::None);
        granted_shared_at(&reader, 8);
        assert!(!known_not_hot(&journal));

        // A transaction rolled back at RESERVED empties the journal and publishes nothing
        // (it never changed the file). Later a connection here rolls back another writer's
        // hot journal: EXCLUSIVE, pages written, and the playback fails before the journal
        // is emptied. Its release must not vouch for the journal.
        reader.set_level(Level::None);
        writer.set_level(Level::Reserved);
        assert!(matches!(delete_for_sqlite(&journal, false), Some(Ok(()))));
        writer.set_level(Level::None);
        writer.set_level(Level::Exclusive);
        note_write_published(&db, &writer, 9);
        writer.set_level(Level::None);
        granted_shared_at(&reader, 9);
        assert!(
            !known_not_hot(&journal),
            "the journal was not emptied after EXCLUSIVE"
        );
        unregister_database(&db, &reader);
        unregister_database(&db, &writer);
    }

    #[test]
    fn an_absent_journal_is_not_taken_as_seen_empty() {
        let dir = tempfile::tempdir().unwrap();
        let (db, journal, reader, writer) = registered_database(&dir, "absent.db");
        granted_shared_at(&reader, 4);
        // "No such file" may be a client's cached answer from before another host created
        // the journal: asked again at the next SHARED.
        assert!(matches!(exists_for_sqlite(&journal), Some(Ok(false))));
        assert!(!known_not_hot(&journal));
        std::fs::write(&journal, b"").unwrap();
        assert!(matches!(exists_for_sqlite(&journal), Some(Ok(false))));
        assert!(known_not_hot(&journal));
        unregister_database(&db, &reader);
        unregister_database(&db, &writer);
    }

    #[test]
    fn a_journal_with_bytes_on_this_host_is_asked_of_the_server_whatever_is_known() {
        let dir = tempfile::tempdir().unwrap();
        let (db, journal, reader, writer) = registered_database(&dir, "local.db");
        std::fs::write(&journal, b"").unwrap();
        granted_shared_at(&reader, 3);
        assert!(matches!(exists_for_sqlite(&journal), Some(Ok(false))));
        assert!(known_not_hot(&journal));
        // A plain SQLite process on this host writes the journal: no generation moves.
        std::fs::write(&journal, b"a plain SQLite's journal").unwrap();
        assert!(matches!(exists_for_sqlite(&journal), Some(Ok(true))));
        unregister_database(&db, &reader);
        unregister_database(&db, &writer);
    }

    #[test]
    fn an_existing_journal_is_opened_without_create_so_no_directory_sync_follows() {
        let rw_create =
            ffi::SQLITE_OPEN_READWRITE | ffi::SQLITE_OPEN_CREATE | ffi::SQLITE_OPEN_MAIN_JOURNAL;
        let opens_with = |answers: &[c_int], flags: c_int| {
            let mut asked = Vec::new();
            let rc = open_for_sqlite(flags, |f| {
                asked.push(f);
                answers[(asked.len() - 1).min(answers.len() - 1)]
            });
            (rc, asked)
        };
        // The journal exists: one open, without CREATE.
        let (rc, asked) = opens_with(&[ffi::SQLITE_OK], rw_create);
        assert_eq!(rc, ffi::SQLITE_OK);
        assert_eq!(asked, [rw_create & !ffi::SQLITE_OPEN_CREATE]);
        // It does not (a new database): then with CREATE, as SQLite asked.
        let (rc, asked) = opens_with(&[ffi::SQLITE_CANTOPEN, ffi::SQLITE_OK], rw_create);
        assert_eq!(rc, ffi::SQLITE_OK);
        assert_eq!(asked, [rw_create & !ffi::SQLITE_OPEN_CREATE, rw_create]);
        // Any other failure of the first open is SQLite's answer.
        let (rc, asked) = opens_with(&[ffi::SQLITE_IOERR], rw_create);
        assert_eq!((rc, asked.len()), (ffi::SQLITE_IOERR, 1));
        // A read-only open (the hot-journal check) is made as asked.
        let read_only = ffi::SQLITE_OPEN_READONLY | ffi::SQLITE_OPEN_MAIN_JOURNAL;
        let (rc, asked) = opens_with(&[ffi::SQLITE_OK], read_only);
        assert_eq!((rc, asked), (ffi::SQLITE_OK, vec![read_only]));
    }

    #[test]
    fn only_a_change_to_another_journal_mode_is_pinned() {
        assert_eq!(
            pinned_journal_mode("journal_mode", Some("WAL")),
            Some("delete")
        );
        assert_eq!(
            pinned_journal_mode("JOURNAL_MODE", Some("memory")),
            Some("delete")
        );
        assert_eq!(pinned_journal_mode("journal_mode", Some("DELETE")), None);
        assert_eq!(pinned_journal_mode("journal_mode", None), None, "a query");
        assert_eq!(pinned_journal_mode("cache_size", Some("10")), None);
    }

    #[test]
    fn companions_of_databases_not_open_in_network_mode_are_left_to_the_base_vfs() {
        assert!(delete_for_sqlite("/x/not-open.db-journal", false).is_none());
        assert!(exists_for_sqlite("/x/not-open.db-journal").is_none());
        assert!(exists_for_sqlite("/x/not-open.db-wal").is_none());
    }

    #[test]
    fn an_unanswerable_wal_check_answers_none_and_an_unanswerable_journal_check_fails() {
        let dir = tempfile::tempdir().unwrap();
        // A file where a directory belongs: every open below it fails with ENOTDIR.
        let not_a_dir = dir.path().join("f");
        std::fs::write(&not_a_dir, b"").unwrap();
        let db = not_a_dir.join("x.db").to_string_lossy().into_owned();
        let permit = permit();
        register_database(&db, SizeRefresh::ForcedStat, permit.clone());
        assert!(matches!(
            exists_for_sqlite(&format!("{db}-wal")),
            Some(Ok(false))
        ));
        assert!(matches!(
            exists_for_sqlite(&format!("{db}-journal")),
            Some(Err(FileError::Code(ffi::SQLITE_IOERR_ACCESS)))
        ));
        unregister_database(&db, &permit);
    }

    #[test]
    fn emptying_the_journal_is_refused_without_the_write_lock() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db").to_string_lossy().into_owned();
        let journal = format!("{db}-journal");
        std::fs::write(&journal, b"a live writer's journal").unwrap();
        let permit = permit();
        register_database(&db, SizeRefresh::ForcedStat, permit.clone());
        assert!(matches!(
            delete_for_sqlite(&journal, false),
            Some(Err(FileError::Code(ffi::SQLITE_IOERR_LOCK)))
        ));
        assert_eq!(std::fs::read(&journal).unwrap(), b"a live writer's journal");
        unregister_database(&db, &permit);
    }
}
