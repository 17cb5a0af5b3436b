//! The lock files beside a database, and the few filesystem operations the lock protocol is
//! allowed to trust on a network filesystem.
//!
//! | operation              | why it can be trusted across hosts                                 |
//! |------------------------|--------------------------------------------------------------------|
//! | exclusive create of a token | decided by the server: `O_CREAT\|O_EXCL`, `symlink` on NFS, or `mkdir` on SMB (see [`TokenStyle`]) |
//! | read of a fresh open   | a new open revalidates; a stale size is caught by the table checksum |
//! | read through the table descriptor kept on NFS | `O_DIRECT`: every read is a READ at the server ([`TableAccess`]) |
//! | read of a token link   | a forced `statx` of the entry first (a link's target is served from the client's cache without one) |
//! | table edit             | read and rewritten through one new descriptor, closed before the latch goes; on NFS through the kept one, after a forced `statx` of the name shows it is still that file, the direct write at the server when it returns |
//! | unlink, rmdir          | decided by the server                                               |
//!
//! Never trusted for an answer: `stat`/`access`/`readdir` (served from stale client caches).
//! They are used only where a stale answer costs a retry, never a wrong grant: `lstat` of a
//! token directory (smbnetfs, where the create itself decides), and whether the database's
//! directory exists or is writable, to tell an ambiguous refusal apart. Never used:
//! `flock`/`fcntl` (local to one client on sshfs, SMB and `local_lock` NFS mounts), rename
//! (refused for open files on SMB). Paths are opened with `O_NOFOLLOW`, token directories
//! are checked to be real directories, and a symbolic link is a token only if its target reads
//! as a token's contents ([`token_link_contents`]; it is never followed), so a planted symlink
//! is an error, never a redirection.
//!
//! The files, for a database `app.db`:
//! - `app.db-netfs-latch`: exists while one process edits the table (milliseconds); holds
//!   (as a symbolic link, points at; as a directory, names in an `owner` file or attribute)
//!   that process's owner id and a per-acquisition number.
//! - `app.db-netfs-table`: the lock table (`protocol::LockTable`).
//! - `app.db-netfs-break`: exists while one process removes a latch left by a dead holder.
//!
//! A refused exclusive create is ambiguous on some clients (sshfs answers "exists" from a
//! 20-second cache and reports a refusal as EPERM; smbnetfs reports a collision as EIO):
//! an open of the token asks the server, and on sshfs a failing open also drops the stale
//! cached entry.
//!
//! May use `super::protocol` (owner ids), `crate::client_cache` and `crate::sys`.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::client_cache::{SizeRefresh, retry_eio};

/// The names of the lock files, as suffixes of the database path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LockFileName {
    Latch,
    Table,
    Break,
}

impl LockFileName {
    pub fn suffix(self) -> &'static str {
        match self {
            LockFileName::Latch => "-netfs-latch",
            LockFileName::Table => "-netfs-table",
            LockFileName::Break => "-netfs-break",
        }
    }
}

/// The seam between the protocol and the filesystem (a fake implements it in tests).
pub trait LockFiles: Send {
    /// One open of the table file, for one edit.
    type Table: TableFile;
    /// Creates the file exclusively with `contents`. `Ok(false)`: it already exists.
    fn create_exclusive(&self, name: LockFileName, contents: &[u8]) -> io::Result<bool>;
    /// The whole file, read through a fresh open (a token link: its target, after the server
    /// confirmed the entry); `Ok(None)` if it does not exist.
    fn read(&self, name: LockFileName) -> io::Result<Option<Vec<u8>>>;
    /// Opens the table for one edit (creating it if missing): a fresh open, so what it reads
    /// is what the server has, and one descriptor for the read and the rewrite.
    fn open_table(&self) -> io::Result<Self::Table>;
    /// Removes the file; `Ok(false)` if it was not there.
    fn remove(&self, name: LockFileName) -> io::Result<bool>;
    /// For messages: where the files live.
    fn describe(&self, name: LockFileName) -> String;
}

/// The table file, opened for one edit.
pub trait TableFile {
    /// The whole file as this open sees it.
    fn read_all(&mut self) -> io::Result<Vec<u8>>;
    /// Opens the file again and makes the client refetch its size from the server, for a
    /// read that came back short or torn.
    fn revalidate(&mut self) -> io::Result<()>;
    /// Writes `contents` at offset 0.
    fn write_all(&mut self, contents: &[u8]) -> io::Result<()>;
}

/// How the exclusive tokens (latch, break) are made on a filesystem. Each primitive is broken
/// on one of the measured clients, so the choice follows the filesystem type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenStyle {
    /// A file made with `O_CREAT|O_EXCL`, holding the owner id. Exclusive at the server on
    /// NFS, kernel SMB, sshfs and local disks.
    File,
    /// A symbolic link whose target is the owner id, for NFS: made in one `CREATE` and read
    /// in one `READLINK`, where a file costs an exclusive open, a write, a close and the
    /// `SETATTR` that follows every NFSv4.1 exclusive create (the server keeps the create's
    /// verifier in the times), and each read an open, a read and a close. Readers of either
    /// style read both, so a host that sees the export as its local disk (`File`) shares
    /// the tokens with its NFS clients.
    Symlink,
    /// A directory made with `mkdir`, holding an `owner` file. For smbnetfs, whose exclusive
    /// create is not exclusive. Not for sshfs: its cache answers "exists" for a removed
    /// directory for 20 s, and unlike for a file, no failing open clears that.
    Directory,
    /// A directory made with `mkdir`, its owner id in an extended attribute: no token is ever
    /// opened by name. For the kernel SMB client, which keeps a closed file's handle open for
    /// a while (deferred close, `closetimeo`): an opened token stays "delete pending" at the
    /// server after its holder removed it, readable with its old owner and blocking a new
    /// create (seen with two kernel CIFS guests of one Samba: latches judged silent and broken
    /// under live holders). Reading and writing an attribute by path opens and closes a handle
    /// in one compound request, which the client does not keep.
    DirectoryWithAttribute,
}

impl TokenStyle {
    pub fn for_fs_type(fs_type: &str) -> TokenStyle {
        match fs_type {
            "fuse.smbnetfs" => TokenStyle::Directory,
            "cifs" | "smb3" | "smb2" => TokenStyle::DirectoryWithAttribute,
            "nfs" | "nfs4" => TokenStyle::Symlink,
            _ => TokenStyle::File,
        }
    }
}

/// How a [`DirLockFiles`] gets at the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableAccess {
    /// Opened by name for every look and every edit: each open asks the server afresh
    /// (close-to-open), which sshfs, SMB and FUSE clients need for a fresh view.
    OpenEachTime,
    /// One descriptor kept open; for the kernel NFS client, reading and writing past the
    /// client's cache (`direct`: `O_DIRECT`, so every read asks the server). Every open of a
    /// file is an NFSv4 OPEN, and a CLOSE follows; all processes of one user on a client
    /// share one open-owner, and Linux 6.1's client
    /// lets an OPEN wait in `update_open_stateid` for as long as other processes keep opening
    /// and closing the same file (kernel stacks sampled in a guest: a writer's heartbeat
    /// thread there for 362 s while the writer beside it committed 5 000 times; it went on
    /// the moment the others stopped). Before each edit the name is checked to still be this
    /// file, so a table deleted and made anew is opened again.
    KeptOpen { direct: bool },
}

impl TableAccess {
    pub fn for_fs_type(fs_type: &str) -> TableAccess {
        match fs_type {
            "nfs" | "nfs4" => TableAccess::KeptOpen { direct: true },
            _ => TableAccess::OpenEachTime,
        }
    }
}

/// Lock files next to a database file.
#[derive(Debug, Clone)]
pub struct DirLockFiles {
    db_path: PathBuf,
    style: TokenStyle,
    /// How the table's size is asked of the server when a read of it comes back short.
    size_refresh: SizeRefresh,
    table_access: TableAccess,
    /// The table's descriptor under [`TableAccess::KeptOpen`], once opened.
    kept_table: Arc<Mutex<Option<KeptTable>>>,
}

/// How long `remove` keeps retrying a file that SMB refuses to remove because another client
/// has it open for a moment (EBUSY).
const REMOVE_BUSY_RETRY: Duration = Duration::from_secs(5);

/// The file inside a token directory naming its holder.
const TOKEN_OWNER: &str = "owner";

/// The extended attribute of a token directory naming its holder
/// ([`TokenStyle::DirectoryWithAttribute`]).
const TOKEN_OWNER_ATTRIBUTE: &std::ffi::CStr = c"user.sqlite-netfs.owner";

impl DirLockFiles {
    pub fn new(db_path: &Path, style: TokenStyle, size_refresh: SizeRefresh) -> DirLockFiles {
        DirLockFiles {
            db_path: db_path.to_owned(),
            style,
            size_refresh,
            table_access: TableAccess::OpenEachTime,
            kept_table: Arc::default(),
        }
    }

    /// These lock files with the table reached as `access` says.
    pub fn with_table_access(mut self, access: TableAccess) -> DirLockFiles {
        self.table_access = access;
        self
    }

    /// The table's descriptor: a new one, or under [`TableAccess::KeptOpen`] the kept one,
    /// opened if there is none. `check_name`: first make sure the table's name still leads to
    /// the kept one (before an edit).
    fn table_descriptor(&self, check_name: bool) -> io::Result<Arc<File>> {
        let TableAccess::KeptOpen { direct } = self.table_access else {
            return Ok(Arc::new(self.open_table_file(0)?));
        };
        let mut kept = self.kept_table.lock();
        if let Some(table) = kept.as_ref() {
            if !check_name || self.names_the_table(table.identity)? {
                return Ok(table.file.clone());
            }
            tracing::warn!(table = %self.describe(LockFileName::Table), "the lock table was replaced; opening it again");
        }
        let file = self.open_table_file(if direct { libc::O_DIRECT } else { 0 })?;
        let identity = file_identity(
            &file
                .metadata()
                .map_err(|e| self.context(LockFileName::Table, "stat", e))?,
        );
        let file = Arc::new(file);
        *kept = Some(KeptTable {
            file: file.clone(),
            identity,
        });
        Ok(file)
    }

    /// Whether the table's name leads to the file `identity` names (not to a table deleted and
    /// made anew, nor to nothing). A planted link there is an error, as the open with
    /// `O_NOFOLLOW` would be.
    fn names_the_table(&self, identity: (u64, u64)) -> io::Result<bool> {
        let path = self.path(LockFileName::Table);
        // The name as the server has it now, not as the client's caches remember it: a table
        // made anew by another host is a new file there. (ESTALE here makes the kernel look
        // the name up afresh for the stat below.)
        if let Err(e) = retry_eio(|| crate::sys::revalidate_entry(&path))
            && e.kind() == io::ErrorKind::NotFound
        {
            return Ok(false);
        }
        let at_name = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(self.context(LockFileName::Table, "stat", e)),
        };
        if at_name.file_type().is_symlink() {
            return Err(self.context(
                LockFileName::Table,
                "open",
                io::Error::from_raw_os_error(libc::ELOOP),
            ));
        }
        Ok(file_identity(&at_name) == identity)
    }

    /// Forgets a kept table descriptor that failed: the next use opens the table again.
    fn drop_kept_table(&self) {
        *self.kept_table.lock() = None;
    }

    /// `O_CREAT|O_EXCL`; `Ok(false)` when the file is there.
    fn create_token_file(&self, name: LockFileName, contents: &[u8]) -> io::Result<bool> {
        let path = self.path(name);
        let create = || {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
        };
        let mut created = create();
        for _ in 0..3 {
            let Err(e) = &created else { break };
            let ambiguous = matches!(
                e.raw_os_error(),
                Some(libc::EEXIST | libc::EPERM | libc::EACCES | libc::ENOENT)
            );
            if !ambiguous
                || (e.kind() == io::ErrorKind::NotFound
                    && !self.db_path.parent().is_some_and(Path::is_dir))
            {
                break;
            }
            // "Exists" may be a cached answer (sshfs keeps one for 20 s after another client
            // removed the file, and reports a refused create as EPERM, SFTP having no
            // "exists" status). An open asks the server; when it fails, sshfs also drops the
            // cached entry, so the create can be tried again.
            match self.open_existing(name) {
                Ok(Some(_)) => return Ok(false),
                Ok(None) => created = create(),
                Err(open_err)
                    if matches!(open_err.raw_os_error(), Some(libc::EPERM | libc::EACCES)) =>
                {
                    break;
                }
                Err(_) => return Ok(false),
            }
        }
        let mut file = match created {
            Ok(f) => f,
            Err(e)
                if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ENOENT))
                    && self.db_path.parent().is_some_and(Path::is_dir) =>
            {
                return Ok(false);
            }
            // Still ambiguous after every round: the token came and went between our create
            // and our open each time (a busy latch on sshfs). A directory we may write in
            // means the refusal was the token, not a permission.
            Err(e)
                if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES))
                    && self
                        .db_path
                        .parent()
                        .is_some_and(|dir| crate::sys::check_writable_dir(dir).is_ok()) =>
            {
                return Ok(false);
            }
            Err(e) => return Err(self.context(name, "create", e)),
        };
        // The owner id is informational (for stale-latch recovery); if writing it fails the
        // file still excludes others, and a holder without an id recovers by lease.
        if let Err(e) = file.write_all(contents) {
            tracing::debug!(token = %path.display(), error = %e, "owner id not recorded");
        }
        Ok(true)
    }

    /// `symlink` with the contents as the target; `Ok(false)` when the token is there.
    fn create_token_link(&self, name: LockFileName, contents: &[u8]) -> io::Result<bool> {
        use std::os::unix::ffi::OsStrExt;
        let target = std::ffi::OsStr::from_bytes(contents);
        let path = self.path(name);
        match std::os::unix::fs::symlink(target, &path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            // The NFSv3 client looks a new link up when the server's reply carries no handle,
            // and that lookup can fail although the link was made (seen with ganesha: "No such
            // file or directory" from `symlink`). Our contents, unique to this acquisition,
            // say whether it was; anything else is answered "held" and looked at again.
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    && self.db_path.parent().is_some_and(Path::is_dir) =>
            {
                Ok(token_link_contents(&path).is_ok_and(|found| found == contents))
            }
            // An export whose filesystem makes no links (FAT, some NAS servers): files.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EPERM | libc::EOPNOTSUPP | libc::ENOSYS)
                ) =>
            {
                self.create_token_file(name, contents)
            }
            Err(e) => Err(self.context(name, "create", e)),
        }
    }

    /// A token of the `File` or `Symlink` style, whichever a peer made: a link is read first
    /// where links are made, a file first elsewhere.
    fn read_token(&self, name: LockFileName) -> io::Result<Option<Vec<u8>>> {
        let path = self.path(name);
        let read_link = || match token_link_contents(&path) {
            Ok(contents) => Ok(Some(contents)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        };
        if self.style == TokenStyle::Symlink {
            match read_link() {
                // Not a link: a file made by a peer that sees the export as its local disk.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                read => return read.map_err(|e| self.context(name, "read", e)),
            }
        }
        match self.read_path(name, &path) {
            Err(e) if os_error_code(&e) == Some(libc::ELOOP) => {
                read_link().map_err(|e| self.context(name, "read", e))
            }
            read => read,
        }
    }

    pub fn path(&self, name: LockFileName) -> PathBuf {
        let mut p = self.db_path.clone().into_os_string();
        p.push(name.suffix());
        PathBuf::from(p)
    }

    /// Whether the token directory exists (checked with `lstat`, so a symlink in its place
    /// is an error rather than a directory somewhere else). smbnetfs reports a directory that
    /// other clients keep creating and removing as a plain file, for a moment and at times for
    /// over a second under contention (a reader's request failed so on the SMB testbed), so a
    /// plain file is looked at again for about a second and a half before it is called foreign.
    fn token_dir_exists(&self, name: LockFileName) -> io::Result<bool> {
        let path = self.path(name);
        let mut pause = Duration::from_millis(10);
        loop {
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(self.context(
                        name,
                        "use",
                        io::Error::from_raw_os_error(libc::ELOOP),
                    ));
                }
                Ok(_) if pause <= Duration::from_millis(640) => {
                    std::thread::sleep(pause);
                    pause *= 2;
                }
                Ok(_) => {
                    return Err(self.context(
                        name,
                        "use",
                        io::Error::from_raw_os_error(libc::ENOTDIR),
                    ));
                }
                Err(e) => return Err(self.context(name, "stat", e)),
            }
        }
    }

    fn read_path(&self, name: LockFileName, path: &Path) -> io::Result<Option<Vec<u8>>> {
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.context(name, "open", e)),
        };
        read_whole(&file)
            .map(Some)
            .map_err(|e| self.context(name, "read", e))
    }

    fn remove_path(&self, name: LockFileName, path: &Path, is_dir: bool) -> io::Result<bool> {
        let started = crate::sys::boot_time();
        let mut pause = Duration::from_micros(200);
        loop {
            let removed = if is_dir {
                std::fs::remove_dir(path)
            } else {
                std::fs::remove_file(path)
            };
            match removed {
                Ok(()) => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                // SMB refuses to remove a file another client holds open; lock files are
                // opened only for a moment, so wait for that moment to pass. A token
                // directory stays "not empty" for as long: Samba deletes its owner file,
                // which another client had open to judge its staleness, only when that
                // client closes it (delete on close), and the rmdir meanwhile fails (seen on
                // the SMB testbed: the latch stayed, and every client waited a lease).
                Err(e)
                    if (e.raw_os_error() == Some(libc::EBUSY)
                        || (is_dir && e.raw_os_error() == Some(libc::ENOTEMPTY)))
                        && crate::sys::boot_time() - started < REMOVE_BUSY_RETRY =>
                {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
                Err(e) => return Err(self.context(name, "remove", e)),
            }
        }
    }

    fn open_existing(&self, name: LockFileName) -> io::Result<Option<File>> {
        match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.path(name))
        {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.context(name, "open", e)),
        }
    }

    /// Read-write, created if missing; read-only where the filesystem allows no more, so a
    /// reader still gets the table's own error message from the rewrite. `flags`: more
    /// open flags (`O_DIRECT`).
    fn open_table_file(&self, flags: i32) -> io::Result<File> {
        let path = self.path(LockFileName::Table);
        let open = |write: bool| {
            retry_eio(|| {
                OpenOptions::new()
                    .read(true)
                    .write(write)
                    .create(write)
                    .custom_flags(libc::O_NOFOLLOW | flags)
                    .open(&path)
            })
        };
        match open(true) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EROFS | libc::EACCES)) => {
                open(false).map_err(|_| self.context(LockFileName::Table, "open", e))
            }
            opened => opened.map_err(|e| self.context(LockFileName::Table, "open", e)),
        }
    }

    fn context(&self, name: LockFileName, op: &str, e: io::Error) -> io::Error {
        let hint = match e.raw_os_error() {
            Some(libc::EACCES) | Some(libc::EPERM) => {
                " (the directory of the database must be writable for its lock files)"
            }
            Some(libc::EROFS) => " (read-only filesystem)",
            Some(libc::ELOOP) => " (a symbolic link stands where a lock file belongs)",
            Some(libc::ENOTDIR) => " (a plain file stands where a lock directory belongs)",
            _ => "",
        };
        let message = format!(
            "cannot {op} lock file {}: {e}{hint}",
            self.path(name).display()
        );
        io::Error::new(e.kind(), InContext { message, source: e })
    }
}

/// An error of the lock files with what was being done to which file; the system's error
/// stays inside it, for [`os_error_code`].
#[derive(Debug)]
struct InContext {
    message: String,
    source: io::Error,
}

impl std::fmt::Display for InContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for InContext {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// The system's error number behind `e`, also when the lock files wrapped it in context.
pub fn os_error_code(e: &io::Error) -> Option<i32> {
    e.raw_os_error().or_else(|| {
        e.get_ref()?
            .downcast_ref::<InContext>()
            .and_then(|c| os_error_code(&c.source))
    })
}

/// The contents of a token made as a symbolic link ([`TokenStyle::Symlink`]): its target,
/// read and never followed. A link whose target does not read as a token (an owner id and an
/// acquisition number) was put there by something else: `ELOOP`, as an `O_NOFOLLOW` open
/// says. `EINVAL`: no link there.
pub fn token_link_contents(path: &Path) -> io::Result<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    // A link's target is served from the client's cache, the entry included, with no request
    // while the directory looks unchanged: a holder re-reading its latch after a long stall
    // could read its own removed link and then remove a newer holder's by name. Ask first.
    crate::sys::revalidate_entry(path)?;
    let target = std::fs::read_link(path)?;
    let contents = target.as_os_str().as_bytes();
    let is_token = std::str::from_utf8(contents).is_ok_and(|s| {
        let mut fields = s.split_whitespace();
        super::protocol::OwnerId::parse_fields(&mut fields).is_some()
            && fields.next().is_some_and(|n| n.parse::<u64>().is_ok())
            && fields.next().is_none()
    });
    if !is_token {
        return Err(io::Error::from_raw_os_error(libc::ELOOP));
    }
    Ok(contents.to_vec())
}

/// Whether the symbolic link seen at a token's place was planted: its target is no token's
/// contents. One gone since it was seen, or replaced by a file, was not.
pub fn planted_link(path: &Path) -> bool {
    token_link_contents(path).is_err_and(|e| e.raw_os_error() == Some(libc::ELOOP))
}

/// Says once per process that latches on this server carry no owner id.
fn warn_once_no_attributes(token: &Path, e: &io::Error) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(token = %token.display(), error = %e, "the file server keeps no extended attributes, so a latch left by a crashed process is recovered after a lease rather than at once (Samba: ea support = yes)");
    }
}

impl LockFiles for DirLockFiles {
    type Table = DirTableFile;

    fn create_exclusive(&self, name: LockFileName, contents: &[u8]) -> io::Result<bool> {
        debug_assert!(name != LockFileName::Table, "the table is not a token");
        match self.style {
            TokenStyle::File => return self.create_token_file(name, contents),
            TokenStyle::Symlink => return self.create_token_link(name, contents),
            TokenStyle::Directory | TokenStyle::DirectoryWithAttribute => {}
        }
        let dir = self.path(name);
        let created = std::fs::create_dir(&dir);
        match created {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) if e.raw_os_error() == Some(libc::EIO) => return Ok(false),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) && self.token_dir_exists(name)? => {
                return Ok(false);
            }
            Err(e) => return Err(self.context(name, "create", e)),
        }
        // The owner id is informational (for stale-latch recovery); if writing it fails the
        // directory still excludes others, and a holder without an id recovers by lease.
        let written = if self.style == TokenStyle::DirectoryWithAttribute {
            crate::sys::set_xattr(&dir, TOKEN_OWNER_ATTRIBUTE, contents)
        } else {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(dir.join(TOKEN_OWNER))
                .and_then(|mut f| f.write_all(contents))
        };
        if let Err(e) = written {
            tracing::debug!(token = %dir.display(), error = %e, "owner id not recorded");
            if self.style == TokenStyle::DirectoryWithAttribute
                && e.raw_os_error() == Some(libc::EOPNOTSUPP)
            {
                warn_once_no_attributes(&dir, &e);
            }
        }
        Ok(true)
    }

    fn read(&self, name: LockFileName) -> io::Result<Option<Vec<u8>>> {
        if name != LockFileName::Table && self.style == TokenStyle::DirectoryWithAttribute {
            if !self.token_dir_exists(name)? {
                return Ok(None);
            }
            // A token whose owner is not (yet) recorded reads as empty.
            return match crate::sys::get_xattr(&self.path(name), TOKEN_OWNER_ATTRIBUTE) {
                Ok(owner) => Ok(Some(owner.unwrap_or_default())),
                // Removed between the look and the read.
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(self.context(name, "read the owner of", e)),
            };
        }
        if name != LockFileName::Table && self.style == TokenStyle::Directory {
            if !self.token_dir_exists(name)? {
                return Ok(None);
            }
            // A token whose owner is not (yet) recorded reads as empty.
            return Ok(Some(
                self.read_path(name, &self.path(name).join(TOKEN_OWNER))?
                    .unwrap_or_default(),
            ));
        }
        if name == LockFileName::Table && self.table_access != TableAccess::OpenEachTime {
            let file = self.table_descriptor(false)?;
            return read_whole(&file).map(Some).map_err(|e| {
                self.drop_kept_table();
                self.context(name, "read", e)
            });
        }
        if name == LockFileName::Table {
            return self.read_path(name, &self.path(name));
        }
        self.read_token(name)
    }

    fn open_table(&self) -> io::Result<DirTableFile> {
        let file = self.table_descriptor(true)?;
        Ok(DirTableFile {
            files: self.clone(),
            file,
        })
    }

    fn remove(&self, name: LockFileName) -> io::Result<bool> {
        match self.style {
            _ if name == LockFileName::Table => self.remove_path(name, &self.path(name), false),
            TokenStyle::File | TokenStyle::Symlink => {
                self.remove_path(name, &self.path(name), false)
            }
            // Nothing inside to remove first: `rmdir` alone, one request per release.
            TokenStyle::DirectoryWithAttribute => self.remove_path(name, &self.path(name), true),
            TokenStyle::Directory => {
                if !self.token_dir_exists(name)? {
                    return Ok(false);
                }
                self.remove_path(name, &self.path(name).join(TOKEN_OWNER), false)?;
                self.remove_path(name, &self.path(name), true)
            }
        }
    }

    fn describe(&self, name: LockFileName) -> String {
        self.path(name).display().to_string()
    }
}

/// A whole lock file, by positioned reads into a buffer larger than a usual table: one
/// request to the server, no size query or seek first (lock files are read on every lock
/// change and every latch-free look).
fn read_whole(file: &File) -> io::Result<Vec<u8>> {
    let mut bytes = vec![0u8; 2 * crate::lock::protocol::TABLE_BLOCK];
    let mut len = 0;
    loop {
        let n = retry_eio(|| file.read_at(&mut bytes[len..], len as u64))?;
        len += n;
        if n == 0 || len < bytes.len() {
            bytes.truncate(len);
            return Ok(bytes);
        }
        bytes.resize(bytes.len() * 2, 0);
    }
}

/// The kept table descriptor and the (device, inode) of its file, taken when it was opened.
#[derive(Debug)]
struct KeptTable {
    file: Arc<File>,
    identity: (u64, u64),
}

fn file_identity(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

/// The table of a [`DirLockFiles`], open for one edit.
pub struct DirTableFile {
    files: DirLockFiles,
    file: Arc<File>,
}

impl TableFile for DirTableFile {
    fn read_all(&mut self) -> io::Result<Vec<u8>> {
        match read_whole(&self.file) {
            Ok(bytes) => Ok(bytes),
            // A kept descriptor whose file the server no longer has (ESTALE), or whose open
            // state it lost: once more, through a fresh open by name, within this edit.
            Err(_) if self.files.table_access != TableAccess::OpenEachTime => {
                self.files.drop_kept_table();
                self.file = self.files.table_descriptor(false)?;
                read_whole(&self.file).map_err(|e| self.failed("read", e))
            }
            Err(e) => Err(self.failed("read", e)),
        }
    }

    fn revalidate(&mut self) -> io::Result<()> {
        // A new descriptor, then the size from the server as this client must be asked for
        // it (see [`SizeRefresh`]): on sshfs the open's refresh alone loses its race with any
        // other write on the mount, so a table another process had just grown kept reading
        // short until the edit gave up with an I/O error (seen under ordinary contention).
        self.files.drop_kept_table();
        self.file = self.files.table_descriptor(false)?;
        let path = self.files.path(LockFileName::Table);
        let refresh = self.files.size_refresh;
        retry_eio(|| refresh.server_size(&self.file, &path))
            .map(drop)
            .map_err(|e| self.files.context(LockFileName::Table, "stat", e))
    }

    /// Closing (when the edit ends) is enough for the next latch holder, on another client,
    /// to read it: sshfs and smbnetfs send writes before close returns, NFS flushes on close
    /// (close-to-open). No fsync: the table need not survive a server crash, and on a local
    /// disk an fsync per lock transition would double a transaction's cost.
    fn write_all(&mut self, contents: &[u8]) -> io::Result<()> {
        self.file
            .write_all_at(contents, 0)
            .map_err(|e| self.failed("write", e))
    }
}

impl DirTableFile {
    /// A failed kept descriptor is not used again (the file may be gone, or the server lost
    /// its state).
    fn failed(&self, op: &str, e: io::Error) -> io::Error {
        self.files.drop_kept_table();
        self.files.context(LockFileName::Table, op, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lock files of the database at `db`, whose sizes come from a forced `statx`.
    fn files_for(db: &Path, style: TokenStyle) -> DirLockFiles {
        DirLockFiles::new(db, style, SizeRefresh::ForcedStat)
    }

    #[test]
    fn only_sshfs_sizes_are_asked_after_an_attribute_change() {
        assert_eq!(
            SizeRefresh::for_fs_type("fuse.sshfs"),
            SizeRefresh::TouchFirst
        );
        for other in [
            "nfs4",
            "cifs",
            "fuse.smbnetfs",
            "fuse.s3fs",
            "9p",
            "ext4",
            "",
        ] {
            assert_eq!(
                SizeRefresh::for_fs_type(other),
                SizeRefresh::ForcedStat,
                "{other}"
            );
        }
    }

    #[test]
    fn the_attribute_change_goes_through_a_read_only_descriptor_and_leaves_the_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![1u8; 5000]).unwrap();
        let an_hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(an_hour_ago)
            .unwrap();
        let file = File::open(&path).unwrap(); // read-only, as the journal check opens it
        assert_eq!(
            SizeRefresh::TouchFirst.server_size(&file, &path).unwrap(),
            5000
        );
        let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
        assert!(
            modified > an_hour_ago + Duration::from_secs(3000),
            "times not set"
        );
        assert_eq!(std::fs::read(&path).unwrap(), vec![1u8; 5000]);
    }

    #[test]
    fn a_kept_table_descriptor_serves_looks_and_edits_and_an_edit_follows_a_table_made_anew() {
        let dir = tempfile::tempdir().unwrap();
        let files = files_for(&dir.path().join("app.db"), TokenStyle::File)
            .with_table_access(TableAccess::KeptOpen { direct: false });
        files.open_table().unwrap().write_all(b"first").unwrap();
        assert_eq!(files.read(LockFileName::Table).unwrap().unwrap(), b"first");
        // Somebody deletes the table and makes a new one under its name.
        let path = files.path(LockFileName::Table);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"second").unwrap();
        // A look may still read the old file; an edit checks the name and opens the new one.
        let mut edit = files.open_table().unwrap();
        assert_eq!(edit.read_all().unwrap(), b"second");
        assert_eq!(files.read(LockFileName::Table).unwrap().unwrap(), b"second");
        // A link planted at the name is refused, as the open by name refuses it.
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), &path).unwrap();
        let refused = files.open_table().err().expect("a planted link");
        assert_eq!(os_error_code(&refused), Some(libc::ELOOP), "{refused}");
    }

    #[test]
    fn only_nfs_keeps_its_table_open() {
        for fs in ["nfs", "nfs4"] {
            assert_eq!(
                TableAccess::for_fs_type(fs),
                TableAccess::KeptOpen { direct: true }
            );
        }
        for fs in ["fuse.sshfs", "cifs", "9p", "virtiofs", "ext4"] {
            assert_eq!(
                TableAccess::for_fs_type(fs),
                TableAccess::OpenEachTime,
                "{fs}"
            );
        }
    }

    #[test]
    fn create_exclusive_read_write_remove() {
        let dir = tempfile::tempdir().unwrap();
        let files = files_for(&dir.path().join("app.db"), TokenStyle::File);
        assert!(
            files
                .create_exclusive(LockFileName::Latch, b"me 1\n")
                .unwrap()
        );
        assert!(
            !files
                .create_exclusive(LockFileName::Latch, b"you 2\n")
                .unwrap()
        );
        assert_eq!(files.read(LockFileName::Latch).unwrap().unwrap(), b"me 1\n");
        assert!(files.remove(LockFileName::Latch).unwrap());
        assert!(!files.remove(LockFileName::Latch).unwrap());
        assert_eq!(files.read(LockFileName::Table).unwrap(), None);
        let mut table = files.open_table().unwrap();
        assert_eq!(table.read_all().unwrap(), b"");
        table.write_all(b"abc").unwrap();
        table.revalidate().unwrap();
        assert_eq!(table.read_all().unwrap(), b"abc");
        drop(table);
        assert!(dir.path().join("app.db-netfs-table").exists());
    }

    #[test]
    fn planted_symlink_is_an_error_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("victim");
        std::fs::write(&target, b"precious").unwrap();
        let files = files_for(&dir.path().join("app.db"), TokenStyle::File);
        std::os::unix::fs::symlink(&target, files.path(LockFileName::Table)).unwrap();
        std::os::unix::fs::symlink(&target, files.path(LockFileName::Latch)).unwrap();
        let err = files.open_table().err().unwrap();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(files.read(LockFileName::Table).is_err());
        // Exclusive create refuses to go through a symlink (it "exists").
        assert!(!files.create_exclusive(LockFileName::Latch, b"x").unwrap());
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");
    }

    #[test]
    fn a_planted_symlink_is_no_token_in_either_token_style() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("victim");
        std::fs::write(&target, b"precious").unwrap();
        for style in [TokenStyle::File, TokenStyle::Symlink] {
            let files = files_for(&dir.path().join("app.db"), style);
            std::os::unix::fs::symlink(&target, files.path(LockFileName::Latch)).unwrap();
            let err = files.read(LockFileName::Latch).unwrap_err();
            assert_eq!(os_error_code(&err), Some(libc::ELOOP), "{style:?}: {err}");
            assert!(err.to_string().contains("symbolic link"), "{err}");
            assert!(
                !files
                    .create_exclusive(LockFileName::Latch, b"h 1 2 3 4\n")
                    .unwrap()
            );
            std::fs::remove_file(files.path(LockFileName::Latch)).unwrap();
        }
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");
    }

    #[test]
    fn link_tokens_exclude_file_tokens_and_each_style_reads_the_other() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        let (nfs, local) = (
            files_for(&db, TokenStyle::Symlink),
            files_for(&db, TokenStyle::File),
        );
        let id = b"h1 41 7 2 9\n";
        for (maker, other) in [(&nfs, &local), (&local, &nfs)] {
            assert!(maker.create_exclusive(LockFileName::Latch, id).unwrap());
            assert!(!maker.create_exclusive(LockFileName::Latch, id).unwrap());
            assert!(!other.create_exclusive(LockFileName::Latch, id).unwrap());
            for reader in [maker, other] {
                assert_eq!(reader.read(LockFileName::Latch).unwrap().unwrap(), id);
            }
            assert!(other.remove(LockFileName::Latch).unwrap());
            assert_eq!(maker.read(LockFileName::Latch).unwrap(), None);
            assert_eq!(other.read(LockFileName::Latch).unwrap(), None);
        }
        // A link token is a link, made in one call: nothing to open, nothing half-written.
        assert!(nfs.create_exclusive(LockFileName::Break, id).unwrap());
        let link = std::fs::symlink_metadata(nfs.path(LockFileName::Break)).unwrap();
        assert!(link.file_type().is_symlink());
    }

    #[test]
    fn only_nfs_makes_its_tokens_as_links() {
        for fs in ["nfs", "nfs4"] {
            assert_eq!(TokenStyle::for_fs_type(fs), TokenStyle::Symlink, "{fs}");
        }
        for fs in ["ext4", "fuse.sshfs", "9p", "virtiofs", "tmpfs", ""] {
            assert_eq!(TokenStyle::for_fs_type(fs), TokenStyle::File, "{fs}");
        }
        for fs in ["cifs", "smb3", "fuse.smbnetfs"] {
            assert_ne!(TokenStyle::for_fs_type(fs), TokenStyle::Symlink, "{fs}");
        }
    }

    #[test]
    fn only_a_link_whose_target_is_no_token_counts_as_planted() {
        let dir = tempfile::tempdir().unwrap();
        let at = |name: &str| dir.path().join(name);
        std::os::unix::fs::symlink("h1 41 7 2 9\n", at("token")).unwrap();
        std::os::unix::fs::symlink(at("victim"), at("planted")).unwrap();
        std::os::unix::fs::symlink("h1 41 7 2\n", at("no-count")).unwrap();
        std::fs::write(at("file"), b"h1 41 7 2 9\n").unwrap();
        assert!(!planted_link(&at("token")));
        assert!(planted_link(&at("planted")));
        assert!(planted_link(&at("no-count")));
        // Released, or made again as a file by a peer, since it was seen as a link.
        assert!(!planted_link(&at("gone")));
        assert!(!planted_link(&at("file")));
    }

    #[test]
    fn a_token_directory_is_removed_once_a_file_another_client_keeps_in_it_goes() {
        let dir = tempfile::tempdir().unwrap();
        let files = files_for(&dir.path().join("app.db"), TokenStyle::Directory);
        assert!(
            files
                .create_exclusive(LockFileName::Latch, b"me 1\n")
                .unwrap()
        );
        // As Samba keeps an owner file that another client still has open after its unlink.
        let lingering = files.path(LockFileName::Latch).join("pending-delete");
        std::fs::write(&lingering, b"").unwrap();
        let closer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            std::fs::remove_file(lingering).unwrap();
        });
        assert!(files.remove(LockFileName::Latch).unwrap());
        closer.join().unwrap();
        assert!(!files.path(LockFileName::Latch).exists());
    }

    #[test]
    fn a_token_with_its_owner_in_an_attribute_is_made_read_and_removed_without_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let files = files_for(
            &dir.path().join("app.db"),
            TokenStyle::DirectoryWithAttribute,
        );
        assert_eq!(files.read(LockFileName::Latch).unwrap(), None);
        assert!(
            files
                .create_exclusive(LockFileName::Latch, b"me 1\n")
                .unwrap()
        );
        let latch = files.path(LockFileName::Latch);
        assert!(latch.is_dir());
        assert_eq!(
            std::fs::read_dir(&latch).unwrap().count(),
            0,
            "no file is ever opened inside it"
        );
        assert_eq!(
            files.read(LockFileName::Latch).unwrap().as_deref(),
            Some(&b"me 1\n"[..])
        );
        assert!(
            !files
                .create_exclusive(LockFileName::Latch, b"other 1\n")
                .unwrap(),
            "exclusive"
        );
        assert!(files.remove(LockFileName::Latch).unwrap());
        assert!(!latch.exists());
        assert!(!files.remove(LockFileName::Latch).unwrap());
        // A token made without its attribute (a holder killed in between) reads as empty.
        std::fs::create_dir(&latch).unwrap();
        assert_eq!(
            files.read(LockFileName::Latch).unwrap().as_deref(),
            Some(&b""[..])
        );
    }

    #[test]
    fn a_token_directory_reported_for_a_while_as_a_plain_file_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let files = files_for(&dir.path().join("app.db"), TokenStyle::Directory);
        let latch = files.path(LockFileName::Latch);
        // As smbnetfs shows a directory other clients keep creating and removing.
        std::fs::write(&latch, b"").unwrap();
        let fixer = {
            let latch = latch.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                std::fs::remove_file(&latch).unwrap();
                std::fs::create_dir(&latch).unwrap();
            })
        };
        assert!(files.token_dir_exists(LockFileName::Latch).unwrap());
        fixer.join().unwrap();

        // One that stays is foreign, and named.
        std::fs::remove_dir(&latch).unwrap();
        std::fs::write(&latch, b"").unwrap();
        let err = files.token_dir_exists(LockFileName::Latch).unwrap_err();
        assert_eq!(os_error_code(&err), Some(libc::ENOTDIR));
        assert!(err.to_string().contains("plain file"), "{err}");
    }

    #[test]
    fn an_error_in_context_keeps_its_system_error_number() {
        let files = files_for(Path::new("/x/app.db"), TokenStyle::File);
        let e = files.context(
            LockFileName::Table,
            "read",
            io::Error::from_raw_os_error(libc::EIO),
        );
        assert_eq!(os_error_code(&e), Some(libc::EIO));
        assert!(
            e.to_string()
                .contains("cannot read lock file /x/app.db-netfs-table"),
            "{e}"
        );
        assert_eq!(os_error_code(&io::Error::other("no number")), None);
    }

    #[test]
    fn unwritable_directory_error_names_the_file_and_the_cause() {
        let dir = tempfile::tempdir().unwrap();
        for style in [TokenStyle::Directory, TokenStyle::Symlink] {
            let files = files_for(&dir.path().join("missing-dir").join("app.db"), style);
            let err = files
                .create_exclusive(LockFileName::Latch, b"h 1 2 3 4\n")
                .unwrap_err();
            assert!(err.to_string().contains("app.db-netfs-latch"), "{err}");
        }
    }
}
