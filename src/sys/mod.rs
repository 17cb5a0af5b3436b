//! System calls: the operating-system calls std does not offer, each behind a safe function.
//! The bottom layer; one of the two places with `unsafe` (the other is `crate::vfs`).
//!
//! Everything here is a mechanism: one libc call, its error mapped to `io::Error`. The policy
//! (when to call what, what an error means) lives in the safe modules above. May use only
//! `libc` and std; nothing else in the crate.
//!
//! One platform module is chosen by `cfg`, each exporting the same functions: [`linux`],
//! `macos`, or `other` (which reports detection as unsupported); the last two take what only
//! Linux offers from `fallback`.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

#[cfg(not(target_os = "linux"))]
mod fallback;
#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
use linux as platform;
#[cfg(target_os = "macos")]
mod macos;
#[cfg(target_os = "macos")]
use macos as platform;
#[cfg(not(any(target_os = "linux", target_os = "macos")))]
mod other;
#[cfg(not(any(target_os = "linux", target_os = "macos")))]
use other as platform;

pub use platform::{
    drop_cached_pages, get_xattr, range_is_locked, revalidate_entry, server_size, set_range_lock,
    set_xattr, statfs,
};

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("path contains a NUL byte: {}", path.display()),
        )
    })
}

/// What `statfs(2)` says about the filesystem holding a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsStat {
    /// Linux `f_type` magic number (0 on other systems).
    pub magic: u64,
    /// macOS `f_fstypename` (empty on Linux, where `/proc/self/mountinfo` names the type).
    pub type_name: String,
    /// macOS `MNT_LOCAL`; on Linux always `None` (the kernel has no such flag).
    pub local_flag: Option<bool>,
    /// The filesystem is mounted read-only.
    pub read_only: bool,
}

/// Sets both of a file's timestamps to now (`futimens` with `UTIME_NOW`), which needs write
/// permission, not ownership. An attribute change is what makes a FUSE daemon with its own
/// attribute cache (sshfs) drop its entry for the file; the kernel takes the new attributes,
/// size included, from the reply.
pub fn touch(file: &std::fs::File) -> io::Result<()> {
    let now = libc::timespec {
        tv_sec: 0,
        tv_nsec: libc::UTIME_NOW,
    };
    let times = [now, now];
    // SAFETY: `file` is an open descriptor for the duration of the call, and `times` is an
    // array of the two timespec records futimens(2) reads.
    let rc = unsafe { libc::futimens(file.as_raw_fd(), times.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A byte-range lock on an open file description (Linux `F_OFD_*` locks).
///
/// Unlike classic POSIX locks these belong to the open file description, so closing another
/// descriptor of the same file never drops them, and two descriptors in one process conflict
/// exactly like two processes. They share the kernel's lock table with classic POSIX locks, so
/// a plain SQLite process on the same host sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeLock {
    Read,
    Write,
    Unlock,
}

/// Time since boot including suspend, so a lease held across a laptop's sleep is seen as
/// expired when it wakes (Rust's `Instant` stops during suspend on Linux).
pub fn boot_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is one the platform defines.
    let rc = unsafe { libc::clock_gettime(platform::BOOT_CLOCK, &mut ts) };
    debug_assert_eq!(rc, 0, "clock_gettime cannot fail for a supported clock");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Whether a process with this pid exists in our pid namespace (it may be a reused pid:
/// callers compare start times where the platform offers them).
pub fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 performs only the existence and permission check.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Whether this process may create files in `dir` (`access(W_OK)`; EROFS on a read-only mount).
pub fn check_writable_dir(dir: &Path) -> io::Result<()> {
    let c = c_path(dir)?;
    // SAFETY: a NUL-terminated path; access(2) only reads it.
    let rc = unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `truncate(2)` by path (for clients that refuse `ftruncate` on a descriptor).
pub fn truncate_path(path: &Path, size: u64) -> io::Result<()> {
    let c = c_path(path)?;
    let size = libc::off_t::try_from(size)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "size out of range"))?;
    // SAFETY: a NUL-terminated path; truncate(2) only reads it.
    let rc = unsafe { libc::truncate(c.as_ptr(), size) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
