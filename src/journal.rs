//! The rollback journal of a network-mode database.
//!
//! SQLite's pager stays in its default DELETE journal mode, but this VFS never deletes the
//! journal: "delete" truncates it to zero bytes, and "does it exist" asks the server for its
//! size. A journal that disappears and reappears is what breaks DELETE mode on network
//! filesystems (another client's cached directory entry still says it exists; its next open
//! fails with "unable to open database file"); on SMB the delete itself fails while another
//! client has the journal open. A journal that is always there, empty between transactions,
//! avoids both, and every transaction still opens it afresh, so a hot-journal check never
//! reads stale bytes through a long-lived descriptor (which TRUNCATE and PERSIST modes keep).
//!
//! The same applies to the `-wal` name: it exists for SQLite only if it has bytes at the
//! server, so a deleted WAL is not resurrected by a stale cache.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Main databases open in network mode in this process, by full path, with open counts.
static NETWORK_DATABASES: Mutex<Option<HashMap<String, usize>>> = Mutex::new(None);

/// A file SQLite names that belongs to a network-mode database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Companion {
    Journal,
    Wal,
}

pub fn register_database(path: &str) {
    *NETWORK_DATABASES
        .lock()
        .get_or_insert_with(HashMap::new)
        .entry(path.to_owned())
        .or_default() += 1;
}

pub fn unregister_database(path: &str) {
    let mut guard = NETWORK_DATABASES.lock();
    if let Some(map) = guard.as_mut()
        && let Some(count) = map.get_mut(path)
    {
        *count -= 1;
        if *count == 0 {
            map.remove(path);
        }
    }
}

/// Whether `name` is the journal or WAL of a database open in network mode here.
pub fn companion_of_network_database(name: &str) -> Option<Companion> {
    let (db, kind) = if let Some(db) = name.strip_suffix("-journal") {
        (db, Companion::Journal)
    } else if let Some(db) = name.strip_suffix("-wal") {
        (db, Companion::Wal)
    } else {
        return None;
    };
    let guard = NETWORK_DATABASES.lock();
    guard.as_ref()?.contains_key(db).then_some(kind)
}

/// How long "does the journal exist" keeps asking through EIO. SQLite asks at every SHARED
/// lock, and an error fails the caller's statement: the SMB testbed's client has answered EIO
/// for longer than the 2 s every single request is retried (a reader failed with
/// `SQLITE_IOERR_ACCESS` in CI), so this question gets more patience.
const ACCESS_EIO_PATIENCE: Duration = Duration::from_secs(8);

/// "Exists" for SQLite: has bytes at the server (a missed hot journal would let a reader see
/// a half-written database, so no cached size is trusted).
pub fn has_content(path: &Path) -> io::Result<bool> {
    let started = Instant::now();
    loop {
        match crate::lockfile::open_revalidated(path) {
            Err(e)
                if e.raw_os_error() == Some(libc::EIO)
                    && started.elapsed() < ACCESS_EIO_PATIENCE => {}
            result => return Ok(result?.is_some_and(|(_, size)| size > 0)),
        }
    }
}

/// "Delete" for SQLite: truncate to zero bytes (and sync if asked), keeping the file.
/// `O_TRUNC` rather than `ftruncate`: smbnetfs fails `ftruncate` with EIO but honours both
/// `O_TRUNC` and `truncate(path)`.
pub fn discard(path: &Path, sync: bool) -> io::Result<()> {
    let file = match OpenOptions::new()
        .write(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if sync {
        file.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn companions_are_recognised_only_for_registered_databases() {
        register_database("/x/companion-test.db");
        assert_eq!(
            companion_of_network_database("/x/companion-test.db-journal"),
            Some(Companion::Journal)
        );
        assert_eq!(
            companion_of_network_database("/x/companion-test.db-wal"),
            Some(Companion::Wal)
        );
        assert_eq!(companion_of_network_database("/x/other.db-journal"), None);
        unregister_database("/x/companion-test.db");
        assert_eq!(
            companion_of_network_database("/x/companion-test.db-journal"),
            None
        );
    }

    #[test]
    fn discard_keeps_the_file_empty_and_has_content_follows_size() {
        let dir = tempfile::tempdir().unwrap();
        let j = dir.path().join("a.db-journal");
        assert!(!has_content(&j).unwrap());
        discard(&j, true).unwrap(); // absent: nothing to do
        std::fs::write(&j, b"journal bytes").unwrap();
        assert!(has_content(&j).unwrap());
        discard(&j, true).unwrap();
        assert!(j.exists());
        assert!(!has_content(&j).unwrap());
    }
}
