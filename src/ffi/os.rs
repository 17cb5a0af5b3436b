//! The operating-system calls that std does not offer, each behind a safe function.
//!
//! Everything here is a thin wrapper: one libc call, its error mapped to `io::Error`.
//! The policy (when to call what, what an error means) lives in the safe modules.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

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

#[cfg(target_os = "linux")]
pub fn statfs(path: &Path) -> io::Result<FsStat> {
    let c = c_path(path)?;
    let mut buf = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `c` is a NUL-terminated path and `buf` points to writable memory of the
    // size statfs(2) fills; the buffer is read only after the call reported success.
    let rc = unsafe { libc::statfs(c.as_ptr(), buf.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statfs returned 0, so it initialised the whole struct.
    let st = unsafe { buf.assume_init() };
    // glibc's statfs hides f_flags; statvfs exposes the same mount flags as f_flag.
    let mut vfs = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: as above, a NUL-terminated path and a buffer of the size statvfs(3) fills.
    let rc = unsafe { libc::statvfs(c.as_ptr(), vfs.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised the whole struct.
    let vfs = unsafe { vfs.assume_init() };
    Ok(FsStat {
        // f_type is signed on some targets; the magic numbers are defined as unsigned 32-bit.
        magic: (st.f_type as u64) & 0xffff_ffff,
        type_name: String::new(),
        local_flag: None,
        read_only: vfs.f_flag & libc::ST_RDONLY != 0,
    })
}

#[cfg(target_os = "macos")]
pub fn statfs(path: &Path) -> io::Result<FsStat> {
    let c = c_path(path)?;
    let mut buf = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: as on Linux: a NUL-terminated path and a buffer of the right size.
    let rc = unsafe { libc::statfs(c.as_ptr(), buf.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statfs returned 0, so it initialised the whole struct.
    let st = unsafe { buf.assume_init() };
    let name: Vec<u8> = st
        .f_fstypename
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| b as u8)
        .collect();
    Ok(FsStat {
        magic: 0,
        type_name: String::from_utf8_lossy(&name).into_owned(),
        local_flag: Some(st.f_flags & (libc::MNT_LOCAL as u32) != 0),
        read_only: st.f_flags & (libc::MNT_RDONLY as u32) != 0,
    })
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
pub fn statfs(_path: &Path) -> io::Result<FsStat> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "filesystem detection is implemented for Linux and macOS only",
    ))
}

/// The size of a file as the file server has it now, bypassing the client's attribute cache.
///
/// Linux `statx(AT_STATX_FORCE_SYNC)` makes FUSE and NFS clients ask the server; the kernel's
/// cached `i_size` is refreshed as a side effect, so later reads past the old size work.
#[cfg(target_os = "linux")]
pub fn server_size(path: &Path) -> io::Result<u64> {
    let c = c_path(path)?;
    let mut buf = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: a NUL-terminated path relative to AT_FDCWD and a writable statx buffer.
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_STATX_FORCE_SYNC,
            libc::STATX_SIZE,
            buf.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statx returned 0, so it filled the struct.
    Ok(unsafe { buf.assume_init() }.stx_size)
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

#[cfg(not(target_os = "linux"))]
pub fn server_size(path: &Path) -> io::Result<u64> {
    // No forced revalidation is available; a fresh stat is the best the platform offers.
    Ok(std::fs::metadata(path)?.len())
}

/// Drops the clean pages the kernel caches for the file, whatever descriptor cached them:
/// the next reads go to the server. Dirty pages stay (they are written back first).
#[cfg(target_os = "linux")]
pub fn drop_cached_pages(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: `fd` is a live descriptor for the duration of the borrow; posix_fadvise only
    // reads its arguments.
    let rc = unsafe { libc::posix_fadvise(fd.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    // posix_fadvise returns the error number instead of setting errno.
    match rc {
        0 => Ok(()),
        // A filesystem without a page cache to advise (some FUSE mounts): nothing is cached.
        libc::EINVAL | libc::ESPIPE => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

#[cfg(not(target_os = "linux"))]
pub fn drop_cached_pages(_fd: BorrowedFd<'_>) -> io::Result<()> {
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

/// Try to set a range lock without waiting. `Ok(false)` means another holder conflicts.
#[cfg(target_os = "linux")]
pub fn set_range_lock(
    fd: BorrowedFd<'_>,
    kind: RangeLock,
    start: u64,
    len: u64,
) -> io::Result<bool> {
    let mut fl = range_flock(kind, start, len);
    // SAFETY: `fd` is a live descriptor for the duration of the borrow and `fl` is a fully
    // initialised flock record with l_pid 0, as F_OFD_SETLK requires.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
        _ => Err(err),
    }
}

/// Whether any other holder has a lock that would conflict with a write lock on the range.
#[cfg(target_os = "linux")]
pub fn range_is_locked(fd: BorrowedFd<'_>, start: u64, len: u64) -> io::Result<bool> {
    let mut fl = range_flock(RangeLock::Write, start, len);
    // SAFETY: as in `set_range_lock`; F_OFD_GETLK writes the conflicting lock (or F_UNLCK)
    // back into `fl`, which we own.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

#[cfg(target_os = "linux")]
fn range_flock(kind: RangeLock, start: u64, len: u64) -> libc::flock {
    // SAFETY: flock is a plain C struct for which all-zero bytes are a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = match kind {
        RangeLock::Read => libc::F_RDLCK,
        RangeLock::Write => libc::F_WRLCK,
        RangeLock::Unlock => libc::F_UNLCK,
    } as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start as libc::off_t;
    fl.l_len = len as libc::off_t;
    fl
}

#[cfg(not(target_os = "linux"))]
pub fn set_range_lock(_fd: BorrowedFd<'_>, _kind: RangeLock, _s: u64, _l: u64) -> io::Result<bool> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "open-file-description locks are Linux-only",
    ))
}

#[cfg(not(target_os = "linux"))]
pub fn range_is_locked(_fd: BorrowedFd<'_>, _start: u64, _len: u64) -> io::Result<bool> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "open-file-description locks are Linux-only",
    ))
}

/// Time since boot including suspend, so a lease held across a laptop's sleep is seen as
/// expired when it wakes (Rust's `Instant` stops during suspend on Linux).
pub fn boot_time() -> Duration {
    #[cfg(target_os = "linux")]
    const CLOCK: libc::clockid_t = libc::CLOCK_BOOTTIME;
    // Darwin's CLOCK_MONOTONIC keeps counting while asleep.
    #[cfg(not(target_os = "linux"))]
    const CLOCK: libc::clockid_t = libc::CLOCK_MONOTONIC;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is one the platform defines.
    let rc = unsafe { libc::clock_gettime(CLOCK, &mut ts) };
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
