//! # sqlite-netfs
//!
//! A SQLite VFS shim that keeps databases correct on network filesystems (NFS, SMB, sshfs,
//! virtiofs, 9p, ...), where SQLite's defaults lose commits: kernel locks do not cross hosts,
//! WAL's shared memory cannot be shared, and client caches serve stale pages.
//!
//! Register it once at process start, then open databases as usual:
//!
//! ```no_run
//! use sqlite_netfs::rusqlite::Connection;
//!
//! sqlite_netfs::register().unwrap();
//! let conn = Connection::open("file:/home/me/.local/share/tool/tool.db?vfs=netfs").unwrap();
//! conn.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
//! ```
//!
//! On a local disk the shim hands the file to SQLite's own `unix` VFS untouched (WAL and all).
//! On a network filesystem it switches to *network mode*: lockfile-based locking with leases,
//! a rollback journal, and cache revalidation at every lock. `DESIGN.md` states the protocol.
//!
//! The tree follows DESIGN.md's parts, bottom to top; each layer uses only those above it in
//! this table (the files of network mode also implement the VFS boundary's file contract;
//! DESIGN.md's module map says more):
//!
//! | module | owns |
//! |---|---|
//! | `sys` | the system calls std does not wrap, one module per platform (`unsafe`) |
//! | `client_cache` | the workarounds for what network clients' caches answer wrongly |
//! | `lock` | one connection's lock (stale recovery, lease); `lock::latch`, `lock::table`: the latch and the table's reading; `lock::protocol`: the lock table and its transitions (pure); `lock::files`: the lock files and the operations trusted across hosts; `lock::owner`: identity and liveness; `lock::heartbeat`: lease renewal |
//! | `detect` | classifying a path's filesystem; `detect::mode`: the per-database decision (URI `netfs=`, `SQLITE_NETFS`, lock files, detection) |
//! | `network` | network mode: the database file, the journal, WAL conversion, the decision at open |
//! | [`integrity`] | integrity checks (`doctor --check`, `netfs_check=` at open) and salvage of damaged databases (`recover`) |
//! | [`inspect`] | what the `sqlite-netfs` command sees: lock holders, lock files, journal, mount hazards; removing dead holders' leftovers |
//! | `vfs` | the VFS boundary SQLite calls (`unsafe`): registration, the generic file shim, the safe file contract, the WAL conversion's raw connection |
#![deny(unsafe_code)]

mod client_cache;
mod detect;
pub mod inspect;
#[cfg(feature = "rusqlite")]
pub mod integrity;
mod lock;
mod network;
mod sys;
mod vfs;

use std::path::Path;
use std::time::Duration;

pub use detect::FsClass;
pub use detect::mode::{DecisionSource, Detection, Mode};
pub use lock::owner::HOST_ID_ENV;
#[cfg(feature = "rusqlite")]
pub use rusqlite;

/// The VFS name [`register`] uses.
pub const DEFAULT_VFS_NAME: &str = "netfs";
/// The default lease: how long a holder on another host may stay silent before its locks are
/// broken. Live holders renew every quarter lease.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// Settings of one registered VFS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub(crate) vfs_name: String,
    pub(crate) lease: Duration,
}

/// Registration failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The VFS name contains a NUL byte or is empty.
    InvalidName(String),
    /// Another (not this crate's) VFS is registered under the name.
    NameTaken(String),
    /// This crate registered the name already, with other options.
    AlreadyRegistered(String),
    /// The lease is outside what the protocol supports.
    InvalidLease(Duration),
    /// SQLite has no `unix` VFS to delegate to (not a Unix build).
    NoBaseVfs,
    /// SQLite refused the registration with this result code.
    Sqlite(i32),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::InvalidName(n) => write!(f, "invalid VFS name {n:?}"),
            Error::NameTaken(n) => {
                write!(f, "a VFS named {n:?} is already registered by someone else")
            }
            Error::AlreadyRegistered(n) => {
                write!(f, "VFS {n:?} is already registered with different options")
            }
            Error::InvalidLease(d) => write!(f, "lease {d:?} is out of range (1 s to 1 hour)"),
            Error::NoBaseVfs => f.write_str("SQLite has no unix VFS to build on"),
            Error::Sqlite(rc) => write!(f, "sqlite3_vfs_register failed with code {rc}"),
        }
    }
}

impl std::error::Error for Error {}

/// Options for registering the VFS.
#[derive(Debug, Clone)]
pub struct Builder {
    options: Options,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            options: Options {
                vfs_name: DEFAULT_VFS_NAME.to_owned(),
                lease: DEFAULT_LEASE,
            },
        }
    }
}

impl Builder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The name databases select with `?vfs=NAME` (default `netfs`).
    pub fn vfs_name(mut self, name: &str) -> Self {
        self.options.vfs_name = name.to_owned();
        self
    }

    /// How long a silent holder on another host keeps its locks (default 10 s). Shorter
    /// recovers faster from crashed hosts; longer tolerates longer server stalls (a holder
    /// that cannot renew for three quarters of a lease stops using the database).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.options.lease = lease;
        self
    }

    fn validated(self) -> Result<Options, Error> {
        if self.options.vfs_name.is_empty() {
            return Err(Error::InvalidName(self.options.vfs_name));
        }
        if self.options.lease < Duration::from_secs(1)
            || self.options.lease > Duration::from_secs(3600)
        {
            return Err(Error::InvalidLease(self.options.lease));
        }
        Ok(self.options)
    }

    /// Registers the VFS (not as the default). Registering the same options twice is fine.
    pub fn register(self) -> Result<(), Error> {
        vfs::register(self.validated()?, false)
    }

    /// Registers the VFS and makes it SQLite's default, so plain paths use it too.
    pub fn register_as_default(self) -> Result<(), Error> {
        vfs::register(self.validated()?, true)
    }
}

/// Registers the `netfs` VFS with default options. Calling it again is fine.
pub fn register() -> Result<(), Error> {
    Builder::new().register()
}

/// Registers the `netfs` VFS with default options and makes it SQLite's default VFS.
pub fn register_as_default() -> Result<(), Error> {
    Builder::new().register_as_default()
}

/// What the shim decides for a database at `path` (with no `netfs=` URI parameter): the mode,
/// the filesystem type, and why. The path need not exist yet.
pub fn detect(path: &Path) -> Result<Detection, String> {
    detect::mode::decide(path, None)
}

/// Whether `conn`'s main database is open through this shim in network mode.
#[cfg(feature = "rusqlite")]
pub fn network_mode_active(conn: &rusqlite::Connection) -> bool {
    vfs::network_mode_active(conn)
}
