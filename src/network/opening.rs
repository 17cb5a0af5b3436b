//! What happens when SQLite opens a main database through the shim: the mode decision, the
//! checks that turn bad input into a clear message, the WAL conversion, and the assembly of a
//! network-mode file. Safe code; the VFS boundary only carries the result to SQLite.
//!
//! May use everything in `crate::network`, `crate::lock`, `crate::detect`, `crate::client_cache`,
//! `crate::sys` and the file contract (`crate::vfs::file`).

use std::ffi::{OsStr, c_int};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::Options;
use crate::client_cache::SizeRefresh;
use crate::detect::mode::{self, Detection, Mode};
use crate::lock::files::{DirLockFiles, LockFileName, TableAccess, TokenStyle};
use crate::lock::protocol::Level;
use crate::lock::{DbLock, SystemEnvironment};
use crate::network::database::OpenDatabase;
use crate::network::file::NetworkFile;
use crate::vfs::file::{FileControl, FileError, Request, SqliteFile};

/// Why an open was refused, with SQLite's result code for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: Refused,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    CantOpen,
    ReadOnly,
}

impl Refusal {
    /// SQLite's result code for this refusal.
    fn result_code(&self) -> c_int {
        match self.code {
            Refused::ReadOnly => libsqlite3_sys::SQLITE_READONLY,
            Refused::CantOpen => libsqlite3_sys::SQLITE_CANTOPEN,
        }
    }

    fn refused(&self) -> Result<(), FileError> {
        Err(FileError::Code(self.result_code()))
    }
}

/// A refused open, as SQLite holds it until the auto-extension fails `sqlite3_open` with its
/// message: every method fails with the refusal's code, except the header read SQLite makes
/// inside `sqlite3_open` (zeros, so the open gets as far as the auto-extension), the size
/// (empty), the unlock and the reserved check, which have nothing to refuse.
impl SqliteFile for Refusal {
    fn read(&mut self, buf: &mut [u8], _offset: u64) -> Result<(), FileError> {
        buf.fill(0);
        Err(FileError::ShortRead)
    }

    fn write(&mut self, _buf: &[u8], _offset: u64) -> Result<(), FileError> {
        self.refused()
    }

    fn truncate(&mut self, _size: u64) -> Result<(), FileError> {
        self.refused()
    }

    fn sync(&mut self, _flags: c_int) -> Result<(), FileError> {
        self.refused()
    }

    fn file_size(&mut self) -> Result<u64, FileError> {
        Ok(0)
    }

    fn lock(&mut self, _level: Level) -> Result<(), FileError> {
        self.refused()
    }

    fn unlock(&mut self, _level: Level) -> Result<(), FileError> {
        Ok(())
    }

    fn reserved_held(&mut self) -> Result<bool, FileError> {
        Ok(false)
    }

    fn file_control(&mut self, control: FileControl<'_>) -> Result<bool, FileError> {
        let Request::OpenError(report) = control.request() else {
            return Ok(false);
        };
        report.set(self.result_code(), &self.message);
        Ok(true)
    }

    fn sector_size(&mut self) -> c_int {
        crate::network::database::SECTOR_SIZE
    }

    fn device_characteristics(&mut self) -> c_int {
        0
    }
}

pub enum OpenPlan {
    Native,
    Network(Box<OpenDatabase>),
    Refused(Refusal),
}

/// The request as SQLite made it.
pub struct OpenRequest<'a> {
    /// The full path SQLite derived (`xFullPathname`).
    pub name: &'a [u8],
    /// The `netfs=` URI parameter, if given.
    pub netfs: Option<&'a str>,
    pub read_write: bool,
    pub create: bool,
    /// The `psow=` URI parameter (SQLite's default: on).
    pub powersafe_overwrite: bool,
    /// The `immutable=` URI parameter: the user promises nothing changes the file.
    pub immutable: bool,
}

fn refuse(message: String) -> OpenPlan {
    tracing::error!(%message, "open refused");
    OpenPlan::Refused(Refusal {
        code: Refused::CantOpen,
        message,
    })
}

pub fn plan(options: &Options, req: &OpenRequest<'_>) -> OpenPlan {
    let path = PathBuf::from(OsStr::from_bytes(req.name));
    let detection = match mode::decide(&path, req.netfs) {
        Ok(d) => d,
        Err(message) => return refuse(format!("netfs: {message}")),
    };
    trace_decision(&path, &detection);
    if detection.mode == Mode::Native {
        return OpenPlan::Native;
    }
    // SQLite takes no locks on an immutable database and caches nothing across a change that
    // cannot happen, so the lock files (which a read-only directory or mount could not hold)
    // have nothing to protect: the file is SQLite's own, as in native mode.
    if req.immutable {
        tracing::info!(path = %path.display(), "immutable=1: no lock files, opened as native");
        return OpenPlan::Native;
    }
    match open_network(options, &path, req, &detection) {
        Ok(db) => OpenPlan::Network(Box::new(db)),
        Err(refusal) => {
            tracing::error!(message = %refusal.message, "open refused");
            OpenPlan::Refused(refusal)
        }
    }
}

fn trace_decision(path: &Path, d: &Detection) {
    tracing::info!(
        path = %path.display(),
        fs_type = %d.fs_type,
        mode = %d.mode,
        source = %d.source,
        reason = %d.reason,
        "database classified"
    );
}

fn open_network(
    options: &Options,
    path: &Path,
    req: &OpenRequest<'_>,
    detection: &Detection,
) -> Result<OpenDatabase, Refusal> {
    let cant = |message: String| Refusal {
        code: Refused::CantOpen,
        message,
    };
    let dir = path.parent().unwrap_or(Path::new("/"));
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(cant(format!(
                "netfs: cannot open {}: {} is not a directory",
                path.display(),
                dir.display()
            )));
        }
        Err(e) => {
            return Err(cant(format!(
                "netfs: cannot open {}: directory {}: {e}",
                path.display(),
                dir.display()
            )));
        }
    }
    if std::fs::metadata(path).is_ok_and(|m| m.is_dir()) {
        return Err(cant(format!(
            "netfs: cannot open {}: it is a directory",
            path.display()
        )));
    }
    // Lock files live beside the database: network mode needs the directory writable.
    if let Err(e) = crate::sys::check_writable_dir(dir) {
        let why = if detection.read_only || e.raw_os_error() == Some(libc::EROFS) {
            "the filesystem is mounted read-only".to_owned()
        } else {
            e.to_string()
        };
        return Err(Refusal {
            code: if detection.read_only {
                Refused::ReadOnly
            } else {
                Refused::CantOpen
            },
            message: format!(
                "netfs: network mode keeps its lock files beside the database, but directory {} is not writable ({why}); a database that nothing writes to can be read with the URI parameter immutable=1",
                dir.display()
            ),
        });
    }
    let refresh = SizeRefresh::for_fs_type(&detection.fs_type);
    let files = DirLockFiles::new(path, TokenStyle::for_fs_type(&detection.fs_type), refresh)
        .with_table_access(TableAccess::for_fs_type(&detection.fs_type));
    check_lock_files(&files).map_err(cant)?;
    let lock = Arc::new(Mutex::new(DbLock::new(
        files,
        SystemEnvironment,
        crate::lock::owner::new_owner(),
        options.lease,
    )));
    crate::lock::heartbeat::watch(&lock);
    match crate::network::wal::needs_conversion(path, refresh) {
        Ok(false) => {}
        Ok(true) if !req.read_write => {
            return Err(cant(format!(
                "netfs: {} is in WAL mode; open it read-write once so it can be converted for network mode",
                path.display()
            )));
        }
        Ok(true) => {
            if let Some(why) =
                crate::network::wal::in_use_by_a_native_process(path, detection.class)
                    .map_err(|e| cant(format!("netfs: cannot read {}: {e}", path.display())))?
            {
                return Err(cant(format!("netfs: {why}")));
            }
            crate::network::wal::convert_under_lock(path, &lock, options.lease, refresh)
                .map_err(|m| cant(format!("netfs: {m}")))?;
        }
        Err(e) => return Err(cant(format!("netfs: cannot read {}: {e}", path.display()))),
    }
    // Same-host interop with plain SQLite, except where a server would keep the lock bytes of
    // a crashed client past the shim's lease.
    let mirror_native_locks = !crate::detect::server_keeps_byte_range_locks(&detection.fs_type);
    let file = open_file_with_fallback(path, req, lock, refresh, mirror_native_locks)
        .map_err(|e| cant(format!("netfs: cannot open {}: {e}", path.display())))?;
    let registry_name = String::from_utf8_lossy(req.name).into_owned();
    crate::network::journal::register_database(
        &registry_name,
        refresh,
        file.journal_permit().clone(),
    );
    Ok(OpenDatabase::new(file, registry_name))
}

/// Refuses lock files left in a state no lock request could get past, naming the file: a
/// symbolic link in a lock file's place that is no token (never followed: it could point
/// anywhere), or a file
/// this user cannot open as the protocol must (another user's file with mode 0600). Found
/// later, by a lock request, these surface only as a disk I/O error and a traced message.
/// Other errors are left to the lock protocol, which retries or reports them.
fn check_lock_files(files: &DirLockFiles) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    for name in [
        LockFileName::Table,
        LockFileName::Latch,
        LockFileName::Break,
    ] {
        let file = files.path(name);
        let opened = std::fs::OpenOptions::new()
            .read(true)
            // Only the table is written in place; tokens are created and removed. The table
            // is created now, before the database is touched: it is the mark that makes shim
            // processes on a host that sees a local disk use network mode too (`mode`).
            .write(name == LockFileName::Table)
            .create(name == LockFileName::Table)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&file);
        let e = match opened {
            Ok(_) => continue,
            Err(e) => e,
        };
        match e.raw_os_error() {
            // A token made as a link by a peer on NFS is a live latch, not a planted link; so is
            // one gone or replaced by a file since the open saw it.
            Some(libc::ELOOP)
                if name != LockFileName::Table && !crate::lock::files::planted_link(&file) =>
            {
                continue;
            }
            Some(libc::ELOOP) => {
                return Err(format!(
                    "netfs: a symbolic link stands where lock file {} belongs; lock files are never followed through links, remove it",
                    file.display()
                ));
            }
            Some(libc::EACCES | libc::EPERM) => {
                let owner = std::fs::symlink_metadata(&file).map_or(String::new(), |m| {
                    format!(" (owner uid {}, mode {:o})", m.uid(), m.mode() & 0o7777)
                });
                return Err(format!(
                    "netfs: lock file {} cannot be {} by this user{owner}: every user of the database needs read and write access to its lock files",
                    file.display(),
                    if name == LockFileName::Table {
                        "read and written"
                    } else {
                        "read"
                    }
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// As SQLite's `unix` VFS does: a database that cannot be opened read-write is opened
/// read-only (SQLite then reports SQLITE_READONLY on writes).
fn open_file_with_fallback(
    path: &Path,
    req: &OpenRequest<'_>,
    lock: crate::lock::LockHandle,
    refresh: SizeRefresh,
    mirror_native_locks: bool,
) -> io::Result<NetworkFile> {
    if req.read_write {
        match NetworkFile::open(
            path,
            true,
            req.create,
            lock.clone(),
            refresh,
            req.powersafe_overwrite,
            mirror_native_locks,
        ) {
            Ok(f) => return Ok(f),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EACCES | libc::EROFS | libc::EPERM)
                ) => {}
            Err(e) => return Err(e),
        }
    }
    NetworkFile::open(
        path,
        false,
        false,
        lock,
        refresh,
        req.powersafe_overwrite,
        mirror_native_locks,
    )
}
