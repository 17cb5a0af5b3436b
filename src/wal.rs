//! Converting a database found in WAL mode (or with a leftover `-wal`) to a rollback journal,
//! so it opens in network mode without "unable to open database file" and without losing a
//! committed transaction.
//!
//! Network mode has no shared memory, so SQLite refuses to open a WAL database through it.
//! The conversion is SQLite's own: under our EXCLUSIVE lock, a private connection through the
//! native `unix` VFS sets `locking_mode=EXCLUSIVE` first (so its WAL index lives in heap
//! memory, not in a `-shm` that cannot be shared) and then `journal_mode=DELETE`, which
//! checkpoints every committed frame into the database and removes the WAL.

use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::ffi::os;
use crate::lock::Acquired;
use crate::lockfile::SizeRefresh;
use crate::network_file::SharedLock;
use crate::protocol::Level;

fn sibling(db: &Path, suffix: &str) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// The header says WAL (bytes 18 and 19 are the read and write format versions: 2 = WAL), or
/// a WAL file with content lies beside the database.
pub fn needs_conversion(db: &Path, refresh: SizeRefresh) -> io::Result<bool> {
    if crate::journal::has_content(&sibling(db, "-wal"), refresh)? {
        return Ok(true);
    }
    let Some((file, size)) = crate::lockfile::open_revalidated(db, refresh)? else {
        return Ok(false);
    };
    if size < 20 {
        return Ok(false);
    }
    let mut header = [0u8; 20];
    file.read_exact_at(&mut header, 0)?;
    Ok(header.starts_with(b"SQLite format 3\0") && (header[18] == 2 || header[19] == 2))
}

/// Converts under the shared lock, waiting up to `wait` for other holders to leave.
/// Returns whether a conversion was done.
pub fn convert_under_lock(
    db: &Path,
    lock: &SharedLock,
    wait: Duration,
    refresh: SizeRefresh,
) -> Result<bool, String> {
    let started = os::boot_time();
    for level in [Level::Shared, Level::Reserved, Level::Exclusive] {
        loop {
            match lock.lock().lock(level) {
                Ok(Acquired::Granted { .. }) => break,
                Ok(Acquired::Busy) if os::boot_time() - started < wait => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(Acquired::Busy) => {
                    let _ = lock.lock().unlock(Level::None, false);
                    return Err(format!(
                        "database {} is in WAL mode and must be converted for network mode, but other processes kept it locked for {wait:?}",
                        db.display()
                    ));
                }
                Err(e) => {
                    let _ = lock.lock().unlock(Level::None, false);
                    return Err(format!(
                        "cannot lock {} to convert it from WAL: {e}",
                        db.display()
                    ));
                }
            }
        }
    }
    let converted = match needs_conversion(db, refresh) {
        Ok(true) => convert(db, refresh).map(|()| true),
        Ok(false) => Ok(false), // another process converted it while we waited
        Err(e) => Err(format!("cannot read {}: {e}", db.display())),
    };
    let released = lock.lock().unlock(Level::None, converted == Ok(true));
    if let Err(e) = released {
        tracing::warn!(path = %db.display(), error = %e, "lock release after WAL conversion failed");
    }
    converted
}

fn convert(db: &Path, refresh: SizeRefresh) -> Result<(), String> {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        format!(
            "converting {} from WAL to a rollback journal: {what}: {e}",
            db.display()
        )
    };
    // Let SQLite see the sizes the server has, not a stale cached size that hides frames.
    let wal = sibling(db, "-wal");
    crate::lockfile::open_revalidated(&wal, refresh).map_err(|e| fail("stat of the WAL", &e))?;
    crate::lockfile::open_revalidated(db, refresh).map_err(|e| fail("stat", &e))?;
    let flags =
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = rusqlite::Connection::open_with_flags_and_vfs(db, flags, c"unix")
        .map_err(|e| fail("open", &e))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| fail("busy timeout", &e))?;
    let mode: String = conn
        .query_row("PRAGMA locking_mode=EXCLUSIVE", [], |r| r.get(0))
        .map_err(|e| fail("locking_mode", &e))?;
    debug_assert_eq!(mode, "exclusive");
    let mode: String = conn
        .query_row("PRAGMA journal_mode=DELETE", [], |r| r.get(0))
        .map_err(|e| fail("journal_mode", &e))?;
    if mode != "delete" {
        return Err(fail("journal_mode", &format!("SQLite kept {mode:?}")));
    }
    conn.close().map_err(|(_, e)| fail("close", &e))?;
    // The -shm of a past native session is useless now, and a -wal (if SQLite left one) is empty.
    for leftover in [sibling(db, "-shm"), wal] {
        match std::fs::remove_file(&leftover) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail(&format!("remove {}", leftover.display()), &e)),
        }
    }
    tracing::info!(path = %db.display(), "database converted from WAL to a rollback journal for network mode");
    Ok(())
}
