//! Converting a database found in WAL mode (or with a leftover `-wal`) to a rollback journal,
//! so it opens in network mode without "unable to open database file" and without losing a
//! committed transaction.
//!
//! Network mode has no shared memory, so SQLite refuses to open a WAL database through it.
//! The conversion is SQLite's own: under our EXCLUSIVE lock, a private connection through the
//! native `unix` VFS sets `locking_mode=EXCLUSIVE` first (so its WAL index lives in heap
//! memory, not in a `-shm` that cannot be shared) and then `journal_mode=DELETE`, which
//! checkpoints every committed frame into the database and removes the WAL.
//!
//! May use `crate::lock`, `crate::detect`, `crate::client_cache`, `crate::sys`, and SQLite on
//! the native `unix` VFS through `crate::vfs::conn` (a raw connection, so that the loadable
//! extension, which has no rusqlite, converts too).

use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::client_cache::SizeRefresh;
use crate::detect::FsClass;
use crate::lock::LockHandle;
use crate::lock::protocol::Level;
use crate::lock::{Acquired, LockError};
use crate::sys;

fn sibling(db: &Path, suffix: &str) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// The header says WAL (bytes 18 and 19 are the read and write format versions: 2 = WAL), or
/// a WAL file with content lies beside the database.
pub fn needs_conversion(db: &Path, refresh: SizeRefresh) -> io::Result<bool> {
    if crate::network::journal::has_content(&sibling(db, "-wal"), refresh)? {
        return Ok(true);
    }
    let Some((file, size)) = crate::client_cache::open_revalidated(db, refresh)? else {
        return Ok(false);
    };
    if size < 20 {
        return Ok(false);
    }
    let mut header = [0u8; 20];
    file.read_exact_at(&mut header, 0)?;
    Ok(header.starts_with(b"SQLite format 3\0") && (header[18] == 2 || header[19] == 2))
}

/// SQLite's `unix` VFS read-locks this byte of the `-shm` for as long as a connection has the
/// WAL index open (`UNIX_SHM_DMS` in os_unix.c).
const SHM_DEADMAN_BYTE: u64 = 128;

/// Why a WAL database must not be converted now, if it must not: a native process may be
/// writing it in WAL mode. Converting would checkpoint and drop the WAL under that process,
/// and its later commits would go to a WAL nobody else reads (a host writing its local disk
/// while a VM's shim converted the database through 9p lost every one of the VM's commits).
///
/// A native process in WAL mode keeps the `-shm` and a read lock on its dead-man byte. On a
/// local disk the lock is seen, so a `-shm` without it is a crashed process's and the
/// conversion goes ahead. Through a network filesystem the lock of a process on the other side
/// is not seen (9p, virtiofs, sshfs and SMB clients keep locks to themselves), so there a
/// `-shm` alone refuses the open, with what to do.
pub fn in_use_by_a_native_process(db: &Path, class: FsClass) -> io::Result<Option<String>> {
    let shm = sibling(db, "-shm");
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&shm)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let locked = match sys::range_is_locked(file.as_fd(), SHM_DEADMAN_BYTE, 1) {
        Ok(locked) => locked,
        Err(e) => {
            tracing::debug!(shm = %shm.display(), error = %e, "cannot ask for the WAL index's locks");
            false
        }
    };
    if locked {
        return Ok(Some(format!(
            "{} is open in WAL mode by a process that does not use network mode (it holds the lock of {}); close it, or open the database through this shim with netfs=on (or SQLITE_NETFS=on) there as well",
            db.display(),
            shm.display()
        )));
    }
    if class == FsClass::Local {
        return Ok(None);
    }
    Ok(Some(format!(
        "{} is in WAL mode and its shared-memory index {} exists: a process on a host that sees this directory as its local disk (the host of this VM or container) may be writing it in WAL mode, which cannot be shared across hosts. Close the database there, or have the shim use network mode there (netfs=on, or SQLITE_NETFS=on; in auto mode it does so by itself at its next open, now that this database's lock files exist). If no process uses the database, remove {}",
        db.display(),
        shm.display(),
        shm.display()
    )))
}

/// Converts under an EXCLUSIVE lock, waiting up to `wait` for other holders to leave.
/// Returns whether a conversion was done.
pub fn convert_under_lock(
    db: &Path,
    lock: &LockHandle,
    wait: Duration,
    refresh: SizeRefresh,
) -> Result<bool, String> {
    let started = sys::boot_time();
    loop {
        match take_exclusive(lock) {
            Ok(true) => break,
            Ok(false) if sys::boot_time() - started < wait => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Ok(false) => {
                return Err(format!(
                    "database {} is in WAL mode and must be converted for network mode, but other processes kept it locked for {wait:?}",
                    db.display()
                ));
            }
            Err(e) => {
                return Err(format!(
                    "cannot lock {} to convert it from WAL: {e}",
                    db.display()
                ));
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

/// Climbs to EXCLUSIVE, or drops back to no lock at the first BUSY. Holding SHARED while
/// waiting would keep out another converter that holds SHARED too and waits for EXCLUSIVE:
/// several processes opening one WAL database at once would each wait out `wait` and fail.
fn take_exclusive(lock: &LockHandle) -> Result<bool, LockError> {
    let mut held = lock.lock();
    for level in [Level::Shared, Level::Reserved, Level::Exclusive] {
        let outcome = held.lock(level);
        if !matches!(outcome, Ok(Acquired::Granted { .. })) {
            if let Err(e) = held.unlock(Level::None, false) {
                tracing::debug!(path = ?level, error = %e, "release after a refused WAL conversion lock failed");
            }
            return outcome.map(|_| false);
        }
    }
    Ok(true)
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
    crate::client_cache::open_revalidated(&wal, refresh)
        .map_err(|e| fail("stat of the WAL", &e))?;
    crate::client_cache::open_revalidated(db, refresh).map_err(|e| fail("stat", &e))?;
    // The one call up to the boundary layer: a raw SQLite connection is SQLite-facing
    // unsafe code, kept with the rest of it.
    let conn = crate::vfs::conn::Connection::open(db, c"unix").map_err(|e| fail("open", &e))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| fail("busy timeout", &e))?;
    let mode = conn
        .pragma(c"PRAGMA locking_mode=EXCLUSIVE")
        .map_err(|e| fail("locking_mode", &e))?;
    debug_assert_eq!(mode, "exclusive");
    let mode = conn
        .pragma(c"PRAGMA journal_mode=DELETE")
        .map_err(|e| fail("journal_mode", &e))?;
    if mode != "delete" {
        return Err(fail("journal_mode", &format!("SQLite kept {mode:?}")));
    }
    conn.close().map_err(|e| fail("close", &e))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::files::{DirLockFiles, TokenStyle};
    use crate::lock::{DbLock, SystemEnvironment};
    use std::sync::Arc;

    fn connection_lock(db: &Path) -> LockHandle {
        let files = DirLockFiles::new(db, TokenStyle::File, SizeRefresh::ForcedStat);
        let lock = DbLock::new(
            files,
            SystemEnvironment,
            crate::lock::owner::new_owner(),
            Duration::from_secs(10),
        );
        Arc::new(parking_lot::Mutex::new(lock))
    }

    /// A database SQLite left in WAL mode (header bytes 18 and 19 set to 2, no `-wal`).
    fn wal_database(db: &Path) {
        let conn = rusqlite::Connection::open(db).unwrap();
        conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
            .unwrap();
        conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1)")
            .unwrap();
    }

    /// Runs the conversion on a thread, so a deadlock fails the test instead of hanging it.
    fn convert_within(db: &Path, lock: &LockHandle, wait: Duration) -> Result<bool, String> {
        let (db, lock) = (db.to_owned(), lock.clone());
        let (done, result) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(convert_under_lock(
                &db,
                &lock,
                wait,
                SizeRefresh::ForcedStat,
            ));
        });
        result
            .recv_timeout(wait + Duration::from_secs(20))
            .expect("the conversion never returned: it deadlocked")
    }

    #[test]
    fn a_conversion_kept_out_by_another_holder_fails_after_its_wait_and_holds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("w.db");
        wal_database(&db);
        let reader = connection_lock(&db);
        assert!(matches!(
            reader.lock().lock(Level::Shared),
            Ok(Acquired::Granted { .. })
        ));
        let converter = connection_lock(&db);
        let refused = convert_within(&db, &converter, Duration::from_millis(300));
        assert!(
            refused
                .as_ref()
                .is_err_and(|m| m.contains("kept it locked")),
            "{refused:?}"
        );
        assert_eq!(converter.lock().level(), Level::None);

        // The refused converter left no lock behind: another one, once the reader left,
        // converts at once.
        reader.lock().unlock(Level::None, false).unwrap();
        reader.lock().settle_before_close().unwrap();
        assert_eq!(
            convert_within(&db, &converter, Duration::from_secs(5)),
            Ok(true)
        );
        assert!(!needs_conversion(&db, SizeRefresh::ForcedStat).unwrap());
    }

    #[test]
    fn converters_that_open_one_wal_database_together_all_get_through() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("w.db");
        wal_database(&db);
        let converters: Vec<_> = (0..4)
            .map(|_| {
                let db = db.clone();
                std::thread::spawn(move || {
                    let lock = connection_lock(&db);
                    convert_within(&db, &lock, Duration::from_secs(5))
                })
            })
            .collect();
        let results: Vec<_> = converters.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
        assert_eq!(
            results.iter().filter(|r| **r == Ok(true)).count(),
            1,
            "one converts, the others find it done: {results:?}"
        );
    }
}
