//! Any other Unix: no filesystem detection (every path is "unknown", so network mode), and
//! the rest from [`super::fallback`]. May use only `libc` and std.

use std::io;
use std::path::Path;

use super::FsStat;

pub use super::fallback::{
    drop_cached_pages, get_xattr, range_is_locked, revalidate_entry, server_size, set_range_lock,
    set_xattr,
};

/// The monotonic clock; whether it counts through suspend depends on the system.
pub const BOOT_CLOCK: libc::clockid_t = libc::CLOCK_MONOTONIC;

pub fn statfs(_path: &Path) -> io::Result<FsStat> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "filesystem detection is implemented for Linux and macOS only",
    ))
}
