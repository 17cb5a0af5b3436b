//! Client-cache workarounds: what network filesystem clients answer from their caches or get
//! wrong for a moment, and the few ways this crate makes them ask the server instead.
//!
//! | client habit | workaround here |
//! |---|---|
//! | a cached size (sshfs for up to 20 s, even for a forced `statx`; SMB and NFS for about 1 s) | [`SizeRefresh`]: a fresh open, then a forced `statx` or, on sshfs, an attribute change first; the cached pages are dropped with it |
//! | a passing EIO under load (smbnetfs, for tens to hundreds of milliseconds) | [`retry_eio`]: idempotent requests again for about 2 s |
//! | the same EIO on an open, which SQLite's `unix` VFS reports as `SQLITE_CANTOPEN` | [`retry_cantopen`]: for about 2 s |
//! | EIO for seconds on a lookup of the database (smbnetfs), which SQLite's path resolution reports as `SQLITE_CANTOPEN` | [`retry_path_resolution`]: while the path answers a lookup or EIO, for up to 8 s |
//!
//! Used by the lock files (`crate::lock::files`), the network file, journal and WAL check
//! (`crate::network`), and the VFS boundary's opens of companion files. May use `crate::sys`
//! and std only.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Opens `path` for reading and makes the client refetch its size from the server; `None`
/// if it does not exist.
pub fn open_revalidated(path: &Path, refresh: SizeRefresh) -> io::Result<Option<(File, u64)>> {
    retry_eio(|| {
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        match refresh.server_size(&file, path) {
            Ok(size) => Ok(Some((file, size))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    })
}

/// Runs `op` again while it fails with EIO, with doubling pauses for about two seconds in
/// all: smbnetfs answers requests with EIO for a while at a time under load (seen on the SMB
/// testbed for tens to hundreds of milliseconds), then recovers.
pub fn retry_eio<T>(mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    let mut pause = Duration::from_millis(2);
    loop {
        match op() {
            Err(e)
                if e.raw_os_error() == Some(libc::EIO) && pause <= Duration::from_millis(1024) =>
            {
                std::thread::sleep(pause);
                pause *= 2;
            }
            result => return result,
        }
    }
}

/// How a client is made to tell a file's size as the server has it now. A size from a cache
/// hides a hot journal (a reader then reads a dead writer's half-written database) or makes a
/// grown database look short ("database disk image is malformed").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SizeRefresh {
    /// A fresh open, then `statx(AT_STATX_FORCE_SYNC)`, which the NFS and SMB clients (and
    /// smbnetfs) answer from the server.
    #[default]
    ForcedStat,
    /// A fresh open and an attribute change (both times set to now), whose reply carries
    /// the size. sshfs answers even a forced `statx` from its own 20-second attribute cache. An open
    /// refreshes that cache, except when another write on the same mount completes while the
    /// open is in flight: sshfs then throws the fresh answer away and keeps the old one (the
    /// soak's "malformed"; at nearly every open while another file on the mount is written
    /// without pause). An attribute change always drops the entry, and the kernel takes the
    /// size from its reply.
    TouchFirst,
}

impl SizeRefresh {
    pub fn for_fs_type(fs_type: &str) -> SizeRefresh {
        match fs_type {
            "fuse.sshfs" => SizeRefresh::TouchFirst,
            _ => SizeRefresh::ForcedStat,
        }
    }

    /// The size of `file` (open at `path`) at the server, with the client's cached pages of
    /// the file dropped, so that reads that follow fetch what the server has now.
    ///
    /// Why the pages too: a kernel NFS client keeps them while the file's change attribute
    /// looks unchanged to it, or while it holds a delegation. With SQLite's lock bytes
    /// no longer mirrored there (every lock request made the client drop them), two kernel
    /// NFSv4.1 guests lost each other's commits: one wrote pages over a stale copy.
    pub fn server_size(self, file: &File, path: &Path) -> io::Result<u64> {
        let size = self.size_at_server(file, path)?;
        crate::sys::drop_cached_pages(file.as_fd())?;
        Ok(size)
    }

    fn size_at_server(self, file: &File, path: &Path) -> io::Result<u64> {
        if self == SizeRefresh::TouchFirst {
            match crate::sys::touch(file) {
                // The kernel took the attributes sshfs fetched from the server for its reply,
                // so the descriptor's own size is current: no second request.
                Ok(()) => return Ok(file.metadata()?.len()),
                // Not allowed to change the times: the open's refresh is all there is.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EPERM | libc::EACCES | libc::EROFS)
                    ) =>
                {
                    warn_once_untouchable(path, &e);
                }
                Err(e) => return Err(e),
            }
        }
        crate::sys::server_size(path)
    }
}

/// Says once per process that sizes on this client may be stale for lack of permission.
fn warn_once_untouchable(path: &Path, e: &io::Error) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(path = %path.display(), error = %e, "cannot set this file's times, so sshfs may report its size from a cache up to 20 s old; give this user write permission on the database and its journal");
    }
}

/// Runs SQLite's path resolution of `path` again while it fails with `cantopen` and the path
/// itself answers a lookup (or answers EIO), for up to [`PATH_EIO_PATIENCE`]: SQLite's `unix`
/// VFS reports a passing EIO of `lstat` as `SQLITE_CANTOPEN` before any open ("unable to open
/// database file"; smbnetfs answers lookups with EIO for seconds under contention, seen by
/// every process restarted after a kill on the SMB testbed). A path that is really missing or
/// forbidden is reported at once.
pub fn retry_path_resolution<E: PartialEq>(
    cantopen: E,
    path: &Path,
    resolve: impl FnMut() -> Result<(), E>,
) -> Result<(), E> {
    retry_cantopen_while(
        cantopen,
        PATH_EIO_PATIENCE,
        resolve,
        || match std::fs::symlink_metadata(path) {
            Ok(_) => true,
            Err(lookup) => lookup.raw_os_error() == Some(libc::EIO),
        },
    )
}

/// Runs an open of the base VFS again while it fails with `cantopen`, for about two seconds:
/// smbnetfs fails opens with a passing EIO under load, which the base VFS reports as
/// `SQLITE_CANTOPEN`. A failed base open leaves its file untouched, so it can be tried again.
pub fn retry_cantopen<E: PartialEq>(
    cantopen: E,
    open: impl FnMut() -> Result<(), E>,
) -> Result<(), E> {
    retry_cantopen_while(cantopen, OPEN_PATIENCE, open, || true)
}

/// How long a failed open is tried again: any open, whether or not the failure can pass, so
/// a real failure (a missing file, no permission) is not held up much longer.
const OPEN_PATIENCE: Duration = Duration::from_secs(2);

/// How long a path resolution is tried again while the path answers a lookup or answers EIO:
/// as long as a lock request waits through EIO. smbnetfs answered a reader's lookups of the
/// database with EIO for 2.05 s in a CI run, one pause past two seconds of patience.
const PATH_EIO_PATIENCE: Duration = Duration::from_secs(8);

/// The longest pause between two tries.
const MAX_PAUSE: Duration = Duration::from_millis(256);

/// Runs `op` again while it fails with `cantopen` and `passing` says the failure may pass,
/// with doubling pauses (at most [`MAX_PAUSE`]) until `patience` would be passed.
fn retry_cantopen_while<E: PartialEq>(
    cantopen: E,
    patience: Duration,
    mut op: impl FnMut() -> Result<(), E>,
    mut passing: impl FnMut() -> bool,
) -> Result<(), E> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        match op() {
            Err(e) if e == cantopen && started.elapsed() + pause <= patience => {
                if !passing() {
                    return Err(e);
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(MAX_PAUSE);
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANTOPEN: i32 = 14;

    #[test]
    fn a_path_resolution_that_failed_for_a_path_that_is_there_is_tried_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut calls = 0;
        let result = retry_path_resolution(CANTOPEN, dir.path(), || {
            calls += 1;
            if calls < 3 { Err(CANTOPEN) } else { Ok(()) }
        });
        assert_eq!(result, Ok(()));
        assert_eq!(calls, 3);
    }

    #[test]
    fn a_path_resolution_failing_for_longer_than_two_seconds_is_still_tried_again() {
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let result = retry_path_resolution(CANTOPEN, dir.path(), || {
            if started.elapsed() < Duration::from_millis(2500) {
                Err(CANTOPEN)
            } else {
                Ok(())
            }
        });
        assert_eq!(result, Ok(()));
    }

    #[test]
    fn a_path_resolution_that_failed_for_a_missing_path_is_reported_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-dir/db");
        let mut calls = 0;
        let result = retry_path_resolution(CANTOPEN, &missing, || {
            calls += 1;
            Err(CANTOPEN)
        });
        assert_eq!(result, Err(CANTOPEN));
        assert_eq!(calls, 1);
    }

    #[test]
    fn other_errors_of_a_path_resolution_are_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let mut calls = 0;
        let result = retry_path_resolution(CANTOPEN, dir.path(), || {
            calls += 1;
            Err(1)
        });
        assert_eq!(result, Err(1));
        assert_eq!(calls, 1);
    }
}
