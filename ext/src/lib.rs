//! sqlite-netfs as a SQLite loadable extension (`libsqlite_netfs.so`).
//!
//! Loading it (`.load`, `load_extension()`, `db.loadExtension()`) registers the `netfs` VFS and
//! makes it SQLite's default, so programs that cannot pass `?vfs=netfs` (Bun's `bun:sqlite`
//! opens without the URI flag; better-sqlite3 compiles URIs off) go through the shim too. In
//! auto mode a database on a local disk still gets SQLite's own `unix` VFS untouched.
//!
//! - `SQLITE_NETFS_DEFAULT_VFS=0` registers `netfs` without making it the default (select it
//!   per database with `?vfs=netfs`); unset or `1` makes it the default; anything else fails
//!   the load with a message naming the variable.
//! - The extension stays loaded for the life of the process (`SQLITE_OK_LOAD_PERMANENTLY`):
//!   the VFS outlives the connection that loaded it.
//! - It calls SQLite only through the routines table the host hands it, so it works with
//!   whichever SQLite the program runs: the system's (sqlite3 CLI, Python) or one compiled into
//!   the program (Bun, better-sqlite3). That SQLite must be 3.40.1 or newer; an older one gets
//!   a refusal that says so.
//!
//! This crate is all boundary: every `unsafe` block here says why it holds.

use std::ffi::{c_char, c_int};

use libsqlite3_sys as ffi;

/// The environment variable that keeps the extension from making `netfs` the default VFS.
pub const DEFAULT_VFS_ENV: &str = "SQLITE_NETFS_DEFAULT_VFS";

/// The entry point SQLite finds by its naming rule for `libsqlite_netfs.so`.
///
/// # Safety
/// Called by SQLite's extension loader with the loading connection, its error-message
/// out-pointer and its API routines table.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sqlite3_sqlitenetfs_init(
    _db: *mut ffi::sqlite3,
    pz_err_msg: *mut *mut c_char,
    p_api: *mut ffi::sqlite3_api_routines,
) -> c_int {
    if p_api.is_null() {
        // Linked into a program rather than loaded: there is no table to call through.
        return ffi::SQLITE_ERROR;
    }
    // SAFETY: SQLite's loader passes its routines table, valid for the life of the process.
    let outcome = match unsafe { ffi::rusqlite_extension_init2(p_api) } {
        Err(e) => Err(refusal(e)),
        Ok(()) => std::panic::catch_unwind(register)
            .unwrap_or_else(|_| Err("sqlite-netfs: registering the VFS panicked".to_owned())),
    };
    match outcome {
        Ok(()) => ffi::SQLITE_OK_LOAD_PERMANENTLY,
        Err(message) => {
            // SAFETY: `pz_err_msg` is the loader's out-pointer (or null); `sqlite3_malloc` is
            // set up by `rusqlite_extension_init2` before anything it can refuse.
            unsafe { report(pz_err_msg, &message) };
            ffi::SQLITE_ERROR
        }
    }
}

/// Registers `netfs`, as the default unless `SQLITE_NETFS_DEFAULT_VFS=0`.
fn register() -> Result<(), String> {
    let as_default = match std::env::var(DEFAULT_VFS_ENV).as_deref() {
        Err(std::env::VarError::NotPresent) | Ok("1") => true,
        Ok("0") => false,
        Ok(other) => {
            return Err(format!(
                "sqlite-netfs: {DEFAULT_VFS_ENV}={other:?} is neither 0 nor 1"
            ));
        }
        Err(std::env::VarError::NotUnicode(v)) => {
            return Err(format!(
                "sqlite-netfs: {DEFAULT_VFS_ENV}={v:?} is neither 0 nor 1"
            ));
        }
    };
    let registered = if as_default {
        sqlite_netfs_core::register_as_default()
    } else {
        sqlite_netfs_core::register()
    };
    registered.map_err(|e| format!("sqlite-netfs: {e}"))
}

/// The message for a host SQLite the extension cannot work with.
fn refusal(e: ffi::InitError) -> String {
    match e {
        ffi::InitError::VersionMismatch {
            compile_time,
            runtime,
        } => format!(
            "sqlite-netfs needs SQLite {} or newer; this program runs SQLite {}",
            version(compile_time),
            version(runtime)
        ),
        other => format!("sqlite-netfs cannot use this program's SQLite: {other}"),
    }
}

/// `3040001` as `3.40.1`.
fn version(number: i32) -> String {
    format!(
        "{}.{}.{}",
        number / 1_000_000,
        number / 1000 % 1000,
        number % 1000
    )
}

/// Hands `message` to SQLite as the load's error message.
///
/// # Safety
/// `pz_err_msg` is null or a valid out-pointer that SQLite frees with `sqlite3_free`;
/// `sqlite3_malloc` must be callable.
unsafe fn report(pz_err_msg: *mut *mut c_char, message: &str) {
    if pz_err_msg.is_null() {
        return;
    }
    let bytes = message.as_bytes();
    let Ok(size) = c_int::try_from(bytes.len() + 1) else {
        return;
    };
    // SAFETY: sqlite3_malloc is set up (see the caller); a null result is handled below.
    let copy = unsafe { ffi::sqlite3_malloc(size) } as *mut u8;
    if copy.is_null() {
        return;
    }
    // SAFETY: `copy` holds `bytes.len() + 1` bytes, written once each; SQLite takes ownership.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), copy, bytes.len());
        *copy.add(bytes.len()) = 0;
        *pz_err_msg = copy as *mut c_char;
    }
}
