//! Linux: `statfs`/`statvfs`, `statx(AT_STATX_FORCE_SYNC)`, `posix_fadvise`, OFD byte-range
//! locks and `CLOCK_BOOTTIME`. May use only `libc` and std.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

use super::{FsStat, RangeLock, c_path};

/// Counts through suspend, so a lease held across a laptop's sleep is seen as expired when it
/// wakes (Rust's `Instant` stops during suspend on Linux).
pub const BOOT_CLOCK: libc::clockid_t = libc::CLOCK_BOOTTIME;

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

/// The size of a file as the file server has it now, bypassing the client's attribute cache.
///
/// Linux `statx(AT_STATX_FORCE_SYNC)` makes FUSE and NFS clients ask the server; the kernel's
/// cached `i_size` is refreshed as a side effect, so later reads past the old size work.
pub fn server_size(path: &Path) -> io::Result<u64> {
    Ok(forced_statx(path, 0, libc::STATX_SIZE)?.stx_size)
}

/// Asks the file server for the attributes of whatever `path` names now, not following a
/// link (`statx(AT_STATX_FORCE_SYNC | AT_SYMLINK_NOFOLLOW)`). On NFS a link read from a
/// cached entry could be one the server no longer has; the forced request fails on it with
/// ESTALE, and the kernel then looks the name up afresh.
pub fn revalidate_entry(path: &Path) -> io::Result<()> {
    forced_statx(path, libc::AT_SYMLINK_NOFOLLOW, libc::STATX_TYPE).map(drop)
}

/// `statx(AT_STATX_FORCE_SYNC | flags)` of `path` for the fields in `mask`.
fn forced_statx(path: &Path, flags: libc::c_int, mask: libc::c_uint) -> io::Result<libc::statx> {
    let c = c_path(path)?;
    let mut buf = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: a NUL-terminated path relative to AT_FDCWD and a writable statx buffer.
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_STATX_FORCE_SYNC | flags,
            mask,
            buf.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statx returned 0, so it filled the struct.
    Ok(unsafe { buf.assume_init() })
}

/// Drops the clean pages the kernel caches for the file, whatever descriptor cached them:
/// the next reads go to the server. Dirty pages stay (they are written back first).
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

/// Try to set a range lock without waiting. `Ok(false)` means another holder conflicts.
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

/// Sets the extended attribute `name` of `path` itself (`lsetxattr`; a symbolic link's own).
pub fn set_xattr(path: &Path, name: &std::ffi::CStr, value: &[u8]) -> io::Result<()> {
    let c = c_path(path)?;
    // SAFETY: NUL-terminated path and name; `value` is valid for `value.len()` bytes, which
    // the call only reads.
    let rc = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The extended attribute `name` of `path` itself (`lgetxattr`); `None` if it has none.
pub fn get_xattr(path: &Path, name: &std::ffi::CStr) -> io::Result<Option<Vec<u8>>> {
    let c = c_path(path)?;
    // Owner ids are short; one generous buffer avoids asking for the size first (a second
    // round trip to the file server).
    let mut buf = vec![0u8; 1024];
    // SAFETY: NUL-terminated path and name; the call writes at most `buf.len()` bytes.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n >= 0 {
        buf.truncate(n as usize);
        return Ok(Some(buf));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENODATA) {
        Ok(None)
    } else {
        Err(e)
    }
}
