//! A writer on raw libsqlite3-sys calls, as a program with its own thin SQLite layer (zed's
//! kind) would use the shim: `register()`, then the VFS name `netfs` to `sqlite3_open_v2`.
//! Usage: `raw-writer DB WRITER_ID TRANSACTIONS`; prints the journal mode SQLite runs and
//! `ack N` after each COMMIT that returned SQLITE_OK. Exits non-zero at the first error.
//!
//! All of this program is FFI boundary: each `unsafe` block says why it holds.

use std::error::Error;
use std::ffi::{CStr, CString, c_int};
use std::ptr;

use libsqlite3_sys as ffi;

/// An open connection, closed on drop.
struct Db(*mut ffi::sqlite3);

impl Db {
    fn open(path: &str) -> Result<Db, String> {
        let name = CString::new(path).map_err(|_| "the path contains a NUL byte".to_owned())?;
        let mut db = ptr::null_mut();
        // SAFETY: both strings are NUL-terminated and outlive the call; SQLite writes the
        // handle (allocated even when the open fails, and then closed by `Db`'s drop).
        let rc = unsafe {
            ffi::sqlite3_open_v2(
                name.as_ptr(),
                &mut db,
                ffi::SQLITE_OPEN_READWRITE | ffi::SQLITE_OPEN_CREATE,
                c"netfs".as_ptr(),
            )
        };
        let db = Db(db);
        db.check(rc)?;
        // SAFETY: the handle is open.
        db.check(unsafe { ffi::sqlite3_busy_timeout(db.0, 30_000) })?;
        Ok(db)
    }

    fn check(&self, rc: c_int) -> Result<(), String> {
        if rc == ffi::SQLITE_OK {
            return Ok(());
        }
        // SAFETY: the handle is valid (open, or a failed open's); the message is copied at once.
        let message = unsafe { CStr::from_ptr(ffi::sqlite3_errmsg(self.0)) };
        Err(format!("{} (code {rc})", message.to_string_lossy()))
    }

    fn exec(&self, sql: &CStr) -> Result<(), String> {
        // SAFETY: the handle is open and `sql` NUL-terminated; no callback, no error string.
        let rc = unsafe {
            ffi::sqlite3_exec(self.0, sql.as_ptr(), None, ptr::null_mut(), ptr::null_mut())
        };
        self.check(rc)
    }

    /// The first column of the first row of `sql`, as text.
    fn text(&self, sql: &CStr) -> Result<String, String> {
        let mut stmt = ptr::null_mut();
        // SAFETY: the handle is open; `sql` is NUL-terminated (-1: read to the NUL).
        let rc = unsafe {
            ffi::sqlite3_prepare_v2(self.0, sql.as_ptr(), -1, &mut stmt, ptr::null_mut())
        };
        self.check(rc)?;
        // SAFETY: `stmt` was prepared above; the column text is copied before the statement is
        // finalized, exactly once.
        unsafe {
            let rc = ffi::sqlite3_step(stmt);
            let text = if rc == ffi::SQLITE_ROW && !ffi::sqlite3_column_text(stmt, 0).is_null() {
                Ok(CStr::from_ptr(ffi::sqlite3_column_text(stmt, 0).cast())
                    .to_string_lossy()
                    .into_owned())
            } else {
                Err(rc)
            };
            ffi::sqlite3_finalize(stmt);
            text.or_else(|rc| self.check(rc).map(|()| String::new()))
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        // SAFETY: the handle is ours, every statement is finalized, and it is closed once.
        unsafe { ffi::sqlite3_close(self.0) };
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [db, writer, transactions] = args.as_slice() else {
        return Err("usage: raw-writer DB WRITER_ID TRANSACTIONS".into());
    };
    let writer: i64 = writer.parse()?;
    let transactions: i64 = transactions.parse()?;
    sqlite_netfs::register()?;
    let db = Db::open(db)?;
    println!("journal_mode {}", db.text(c"PRAGMA journal_mode=WAL")?);
    db.exec(
        c"CREATE TABLE IF NOT EXISTS rows(worker INTEGER, seq INTEGER, PRIMARY KEY(worker, seq))",
    )?;
    for seq in 0..transactions {
        let sql = CString::new(format!(
            "BEGIN IMMEDIATE; INSERT INTO rows VALUES ({writer}, {seq}); COMMIT;"
        ))?;
        if let Err(e) = db.exec(&sql) {
            let _ = db.exec(c"ROLLBACK");
            return Err(e.into());
        }
        println!("ack {seq}");
    }
    Ok(())
}
