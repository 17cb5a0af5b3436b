//! The unsafe core. All `unsafe` in the crate lives here, each block with a `// SAFETY:`
//! reason:
//! - [`vfs`]: the C-facing VFS and I/O-method tables and their callbacks;
//! - [`conn`]: a private connection on raw SQLite calls (the WAL conversion's);
//! - [`os`]: the few system calls std does not wrap (statfs, statx, OFD locks, clocks).
#![allow(unsafe_code)]

pub mod conn;
pub mod os;
pub mod vfs;
