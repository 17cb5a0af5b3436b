//! A private connection of the shim's own (the WAL conversion's), on raw SQLite calls, so the
//! shim itself needs no SQLite binding beyond libsqlite3-sys: the loadable extension, which
//! calls SQLite through its host's routines table, has no rusqlite.

use std::ffi::{CStr, CString, c_int};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr;
use std::time::Duration;

use libsqlite3_sys as ffi;

/// An open `sqlite3*`, closed on drop.
pub struct Connection {
    db: *mut ffi::sqlite3,
}

impl Connection {
    /// Opens `path` read-write (it must exist) through the VFS `vfs`.
    pub fn open(path: &Path, vfs: &CStr) -> Result<Connection, String> {
        let name = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| "the path contains a NUL byte".to_owned())?;
        let mut db = ptr::null_mut();
        // SAFETY: `name` and `vfs` are NUL-terminated and outlive the call; `db` receives the
        // handle, which SQLite allocates even when the open fails (closed by drop below).
        let rc = unsafe {
            ffi::sqlite3_open_v2(
                name.as_ptr(),
                &mut db,
                ffi::SQLITE_OPEN_READWRITE | ffi::SQLITE_OPEN_NOMUTEX,
                vfs.as_ptr(),
            )
        };
        let conn = Connection { db };
        if rc != ffi::SQLITE_OK {
            return Err(conn.error(rc));
        }
        Ok(conn)
    }

    pub fn busy_timeout(&self, timeout: Duration) -> Result<(), String> {
        let ms = c_int::try_from(timeout.as_millis()).unwrap_or(c_int::MAX);
        // SAFETY: the handle is open.
        let rc = unsafe { ffi::sqlite3_busy_timeout(self.db, ms) };
        if rc != ffi::SQLITE_OK {
            return Err(self.error(rc));
        }
        Ok(())
    }

    /// Runs `pragma` (one statement) and returns the first column of its first row as text.
    pub fn pragma(&self, pragma: &CStr) -> Result<String, String> {
        let mut stmt = ptr::null_mut();
        // SAFETY: the handle is open; `pragma` is NUL-terminated (-1: read to the NUL).
        let rc = unsafe {
            ffi::sqlite3_prepare_v2(self.db, pragma.as_ptr(), -1, &mut stmt, ptr::null_mut())
        };
        if rc != ffi::SQLITE_OK {
            return Err(self.error(rc));
        }
        // SAFETY: `stmt` was prepared above and is finalized once, below.
        let rc = unsafe { ffi::sqlite3_step(stmt) };
        let answer = if rc == ffi::SQLITE_ROW {
            // SAFETY: the statement has a current row; the text lives until the next step or
            // finalize, and is copied before either.
            let text = unsafe { ffi::sqlite3_column_text(stmt, 0) };
            Ok(if text.is_null() {
                String::new()
            } else {
                // SAFETY: SQLite's column text is NUL-terminated.
                unsafe { CStr::from_ptr(text.cast()) }
                    .to_string_lossy()
                    .into_owned()
            })
        } else {
            Err(self.error(rc))
        };
        // SAFETY: `stmt` is a prepared statement, finalized exactly once.
        unsafe { ffi::sqlite3_finalize(stmt) };
        answer
    }

    /// Closes the connection, reporting what SQLite says if it cannot.
    pub fn close(mut self) -> Result<(), String> {
        // SAFETY: the handle is open and has no statements left (each is finalized).
        let rc = unsafe { ffi::sqlite3_close(self.db) };
        if rc != ffi::SQLITE_OK {
            return Err(self.error(rc));
        }
        self.db = ptr::null_mut();
        Ok(())
    }

    /// SQLite's message for the last failure on this handle, with its code.
    fn error(&self, rc: c_int) -> String {
        if self.db.is_null() {
            return format!("SQLite error {rc}");
        }
        // SAFETY: the handle is valid (open, or a failed open's handle); the message is
        // NUL-terminated and copied at once.
        let message = unsafe { CStr::from_ptr(ffi::sqlite3_errmsg(self.db)) };
        format!("{} (code {rc})", message.to_string_lossy())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if !self.db.is_null() {
            // SAFETY: the handle is ours and not yet closed, with no statement left (each is
            // finalized where it is prepared); close also takes a failed open's handle.
            unsafe { ffi::sqlite3_close(self.db) };
        }
    }
}
