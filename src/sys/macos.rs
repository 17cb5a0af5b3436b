//! macOS: `statfs` with `f_fstypename` and `MNT_LOCAL`; the rest from [`super::fallback`].
//! May use only `libc` and std.

use std::io;
use std::path::Path;

use super::{FsStat, c_path};

pub use super::fallback::{
    drop_cached_pages, get_xattr, range_is_locked, revalidate_entry, server_size, set_range_lock,
    set_xattr,
};

/// Darwin's CLOCK_MONOTONIC keeps counting while asleep.
pub const BOOT_CLOCK: libc::clockid_t = libc::CLOCK_MONOTONIC;

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
