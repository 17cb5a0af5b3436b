//! Network mode: a database SQLite opens on a network filesystem, made safe there.
//!
//! | module | owns |
//! |---|---|
//! | [`opening`] | the decision at open: native, network, or refused with a message (and the refused file); the open-time lock-file and WAL checks |
//! | [`database`] | a main database as SQLite holds it: the network file behind the file contract, its file controls |
//! | [`file`] | the main database file: its I/O under the lease, its lock, the coherency reopen |
//! | [`journal`] | the rollback journal that is never deleted, fenced by the lease; the journal-mode pin; `xDelete` and `xAccess` of companions |
//! | [`wal`] | converting a WAL database to a rollback journal at open |
//!
//! Safe code only. May use `crate::lock` (the protocol and the connection's lock),
//! `crate::detect`, `crate::client_cache`, `crate::sys`, and the file contract of
//! `crate::vfs::file`, which its files implement; never the boundary's raw parts.

pub mod database;
pub mod file;
pub mod journal;
pub mod opening;
pub mod wal;
