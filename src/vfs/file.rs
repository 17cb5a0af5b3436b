//! The contract between the VFS boundary and a file SQLite talks to: the safe trait
//! [`SqliteFile`], the requests a file control carries, and the errors a file answers with,
//! sorted by what SQLite does next. Safe code only.
//!
//! Implemented by the network database file and the fenced journal
//! (`crate::network::database`, `crate::network::journal`) and by a refused open
//! (`crate::network::opening`). The boundary (`super::shim`) turns each into one method table;
//! no callback body exists twice. May use `crate::lock` (lock levels and errors) and the
//! boundary's safe handles ([`FileControl`], [`BaseFile`]).

#![deny(unsafe_code)]

use std::borrow::Cow;
use std::ffi::c_int;
use std::io;

use libsqlite3_sys as ffi;

pub use super::shim::{BaseFile, FileControl, ReportOut, TextOut};
use crate::lock::LockError;
use crate::lock::protocol::Level;

/// A file SQLite opened through this VFS, one method per `sqlite3_io_methods` entry.
///
/// SQLite serialises the calls on one file, so every method takes `&mut self`. A method
/// never sees a raw pointer: the boundary has checked them and hands over slices, levels and
/// decoded requests. A panic in any method reaches SQLite as that method's error code.
pub trait SqliteFile: Sized {
    /// Whether the allocation holds a file of the base VFS after this one's state, which the
    /// boundary closes after dropping the state (the fenced journal's [`BaseFile`]).
    const WRAPS_BASE: bool = false;

    /// Fills `buf` from `offset`. At the end of the file: the rest zeroed, and
    /// [`FileError::ShortRead`].
    fn read(&mut self, buf: &mut [u8], offset: u64) -> Result<(), FileError>;
    fn write(&mut self, buf: &[u8], offset: u64) -> Result<(), FileError>;
    fn truncate(&mut self, size: u64) -> Result<(), FileError>;
    /// `flags`: SQLite's `SQLITE_SYNC_*` bits.
    fn sync(&mut self, flags: c_int) -> Result<(), FileError>;
    fn file_size(&mut self) -> Result<u64, FileError>;
    fn lock(&mut self, level: Level) -> Result<(), FileError>;
    fn unlock(&mut self, level: Level) -> Result<(), FileError>;
    /// Whether any connection holds RESERVED or more (`xCheckReservedLock`).
    fn reserved_held(&mut self) -> Result<bool, FileError>;
    /// `Ok(false)`: not this file's request (`SQLITE_NOTFOUND`).
    fn file_control(&mut self, control: FileControl<'_>) -> Result<bool, FileError>;
    fn sector_size(&mut self) -> c_int;
    /// `SQLITE_IOCAP_*` bits.
    fn device_characteristics(&mut self) -> c_int;
}

/// A file control decoded by the boundary (see [`FileControl::request`]).
pub enum Request<'a> {
    /// `SQLITE_FCNTL_LOCKSTATE`: the level this file holds.
    LockState(&'a mut c_int),
    /// `SQLITE_FCNTL_VFSNAME`: the VFS stack's name.
    VfsName(TextOut<'a>),
    /// `SQLITE_FCNTL_HAS_MOVED`: whether the file was renamed or removed under us.
    HasMoved(&'a mut c_int),
    /// `SQLITE_FCNTL_POWERSAFE_OVERWRITE`: negative asks, 0 or 1 sets.
    PowersafeOverwrite(&'a mut c_int),
    /// `SQLITE_FCNTL_PRAGMA`, offered before SQLite runs `PRAGMA name[=value]`: answering it
    /// (with an optional result) means SQLite does not run it.
    Pragma {
        name: Cow<'a, str>,
        value: Option<Cow<'a, str>>,
        result: TextOut<'a>,
    },
    /// This crate's own opcode: is this a network-mode file? (`crate::network_mode_active`)
    NetworkMode(&'a mut c_int),
    /// This crate's own opcode: the refusal behind a refused open, for `sqlite3_open`'s error.
    OpenError(ReportOut<'a>),
    /// Any other opcode, or one whose argument was null.
    Other,
}

/// The operation that failed, for SQLite's extended error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOp {
    Read,
    Write,
    Truncate,
    Fsync,
    Fstat,
    Lock,
    Unlock,
    CheckReserved,
}

/// Why an operation on a file failed, sorted by what SQLite does next.
#[derive(Debug)]
pub enum FileError {
    /// Another holder stands in the way: SQLite may retry (busy handler).
    Busy,
    /// The read reached the end of the file; the rest of the buffer was zeroed.
    ShortRead,
    /// No space left on the device (or quota).
    Full,
    /// The lock's lease may have run out: nothing is read or written under it any more.
    LeaseExpired,
    /// The lock files could not be used.
    Lock(LockError),
    Io {
        op: IoOp,
        error: io::Error,
    },
    /// A result code decided already: the base VFS's own answer passed on, or one a file
    /// chose (and traced) itself.
    Code(c_int),
}

impl FileError {
    pub fn io(op: IoOp, error: io::Error) -> FileError {
        match error.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => FileError::Full,
            _ => FileError::Io { op, error },
        }
    }

    /// A base VFS's result code as a result (`SQLITE_IOERR_SHORT_READ` as
    /// [`FileError::ShortRead`]).
    pub fn check(rc: c_int) -> Result<(), FileError> {
        match rc {
            ffi::SQLITE_OK => Ok(()),
            ffi::SQLITE_IOERR_SHORT_READ => Err(FileError::ShortRead),
            rc => Err(FileError::Code(rc)),
        }
    }

    /// The one place where errors become SQLite result codes.
    pub fn code(self) -> c_int {
        match self {
            FileError::Busy => ffi::SQLITE_BUSY,
            FileError::ShortRead => ffi::SQLITE_IOERR_SHORT_READ,
            FileError::Full => ffi::SQLITE_FULL,
            FileError::LeaseExpired => ffi::SQLITE_IOERR_LOCK,
            FileError::Code(rc) => rc,
            FileError::Lock(e) => {
                tracing::error!(error = %e, "lock files unusable");
                // A lock file that cannot be created or grown for want of space is the same
                // fault, with the same remedy, as a database that cannot grow: say so.
                match &e {
                    LockError::Io(io)
                        if matches!(
                            io.kind(),
                            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
                        ) =>
                    {
                        ffi::SQLITE_FULL
                    }
                    _ => ffi::SQLITE_IOERR_LOCK,
                }
            }
            FileError::Io { op, error } => {
                tracing::error!(?op, %error, "I/O error");
                match op {
                    IoOp::Read => ffi::SQLITE_IOERR_READ,
                    IoOp::Write => ffi::SQLITE_IOERR_WRITE,
                    IoOp::Truncate => ffi::SQLITE_IOERR_TRUNCATE,
                    IoOp::Fsync => ffi::SQLITE_IOERR_FSYNC,
                    IoOp::Fstat => ffi::SQLITE_IOERR_FSTAT,
                    IoOp::Lock => ffi::SQLITE_IOERR_LOCK,
                    IoOp::Unlock => ffi::SQLITE_IOERR_UNLOCK,
                    IoOp::CheckReserved => ffi::SQLITE_IOERR_CHECKRESERVEDLOCK,
                }
            }
        }
    }
}

/// A result as a result code (`SQLITE_OK` for success).
pub fn result_code(result: Result<(), FileError>) -> c_int {
    result.map_or_else(FileError::code, |()| ffi::SQLITE_OK)
}
