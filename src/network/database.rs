//! A main database SQLite holds open in network mode: the [`NetworkFile`] behind the file
//! contract SQLite calls (`crate::vfs::file::SqliteFile`), its answers to file controls, and
//! its entry in the journal registry while it lives. Safe code.

use std::ffi::c_int;

use libsqlite3_sys as ffi;

use crate::lock::protocol::Level;
use crate::network::file::NetworkFile;
use crate::network::journal;
use crate::vfs::file::{FileControl, FileError, Request, SqliteFile};

/// What `xSectorSize` answers: the `unix` VFS's default; SQLite pads journal records to it.
pub const SECTOR_SIZE: c_int = 4096;

/// A main database open in network mode, known to the journal registry while it lives.
pub struct OpenDatabase {
    pub file: NetworkFile,
    registry_name: String,
}

impl OpenDatabase {
    /// `file`, registered (by the caller) in the journal registry as `registry_name`.
    pub fn new(file: NetworkFile, registry_name: String) -> OpenDatabase {
        OpenDatabase {
            file,
            registry_name,
        }
    }

    /// The open flags SQLite is told it got for `asked`: read-only if the file could only be
    /// opened for reading.
    pub fn open_flags(&self, asked: c_int) -> c_int {
        if self.file.writable() {
            asked
        } else {
            (asked & !(ffi::SQLITE_OPEN_READWRITE | ffi::SQLITE_OPEN_CREATE))
                | ffi::SQLITE_OPEN_READONLY
        }
    }

    /// Tells the journal registry that the end of our last write transaction is published
    /// (or, under a kept write lock, as good as published), if a lock call just made it so.
    fn note_published_write(&mut self) {
        if let Some(generation) = self.file.take_published_write() {
            journal::note_write_published(
                &self.registry_name,
                self.file.journal_permit(),
                generation,
            );
        }
    }
}

impl Drop for OpenDatabase {
    fn drop(&mut self) {
        journal::unregister_database(&self.registry_name, self.file.journal_permit());
    }
}

impl SqliteFile for OpenDatabase {
    fn read(&mut self, buf: &mut [u8], offset: u64) -> Result<(), FileError> {
        self.file.read_at(buf, offset)
    }

    fn write(&mut self, buf: &[u8], offset: u64) -> Result<(), FileError> {
        self.file.write_at(buf, offset)
    }

    fn truncate(&mut self, size: u64) -> Result<(), FileError> {
        self.file.truncate(size)
    }

    fn sync(&mut self, flags: c_int) -> Result<(), FileError> {
        self.file.sync(flags & ffi::SQLITE_SYNC_DATAONLY != 0)
    }

    fn file_size(&mut self) -> Result<u64, FileError> {
        self.file.size()
    }

    fn lock(&mut self, level: Level) -> Result<(), FileError> {
        let locked = self.file.lock(level);
        self.note_published_write();
        locked
    }

    fn unlock(&mut self, level: Level) -> Result<(), FileError> {
        let unlocked = self.file.unlock(level);
        self.note_published_write();
        unlocked
    }

    fn reserved_held(&mut self) -> Result<bool, FileError> {
        self.file.reserved_held()
    }

    fn file_control(&mut self, control: FileControl<'_>) -> Result<bool, FileError> {
        match control.request() {
            Request::LockState(level) => *level = self.file.level() as c_int,
            Request::VfsName(name) => name.set("netfs(network)/unix"),
            Request::HasMoved(moved) => *moved = c_int::from(self.file.has_moved()),
            Request::PowersafeOverwrite(psow) => {
                if *psow < 0 {
                    *psow = c_int::from(self.file.powersafe_overwrite());
                } else {
                    self.file.set_powersafe_overwrite(*psow != 0);
                }
            }
            Request::Pragma {
                name,
                value,
                result,
            } => match journal::pinned_journal_mode(&name, value.as_deref()) {
                Some(mode) => result.set(mode),
                None => return Ok(false),
            },
            Request::NetworkMode(active) => *active = 1,
            Request::OpenError(_) | Request::Other => return Ok(false),
        }
        Ok(true)
    }

    fn sector_size(&mut self) -> c_int {
        SECTOR_SIZE
    }

    fn device_characteristics(&mut self) -> c_int {
        if self.file.powersafe_overwrite() {
            ffi::SQLITE_IOCAP_POWERSAFE_OVERWRITE
        } else {
            0
        }
    }
}
