//! What stands in, off Linux, for the calls only Linux offers: a plain `stat` for the
//! server's size, no page dropping, no OFD locks (same-host interop is then off). May use only
//! std.

use std::io;
use std::os::fd::BorrowedFd;
use std::path::Path;

use super::RangeLock;

pub fn server_size(path: &Path) -> io::Result<u64> {
    // No forced revalidation is available; a fresh stat is the best the platform offers.
    Ok(std::fs::metadata(path)?.len())
}

pub fn revalidate_entry(path: &Path) -> io::Result<()> {
    // No forced revalidation is available; a fresh `lstat` is the best the platform offers.
    std::fs::symlink_metadata(path).map(drop)
}

pub fn drop_cached_pages(_fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(())
}

pub fn set_range_lock(_fd: BorrowedFd<'_>, _kind: RangeLock, _s: u64, _l: u64) -> io::Result<bool> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "open-file-description locks are Linux-only",
    ))
}

pub fn range_is_locked(_fd: BorrowedFd<'_>, _start: u64, _len: u64) -> io::Result<bool> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "open-file-description locks are Linux-only",
    ))
}

fn no_xattrs() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "extended attributes are used only on Linux",
    )
}

pub fn set_xattr(_path: &Path, _name: &std::ffi::CStr, _value: &[u8]) -> io::Result<()> {
    Err(no_xattrs())
}

pub fn get_xattr(_path: &Path, _name: &std::ffi::CStr) -> io::Result<Option<Vec<u8>>> {
    Err(no_xattrs())
}
