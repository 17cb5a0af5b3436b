//! The VFS boundary: what SQLite calls. The top layer, and one of the two places with
//! `unsafe` (the other is `crate::sys`). It carries calls and results and decides nothing:
//! every decision is made by safe code it calls.
//!
//! | module | owns |
//! |---|---|
//! | this one | registering the `sqlite3_vfs`, its callbacks (`xOpen`, `xDelete`, `xAccess`, the rest forwarded to `unix`), the auto-extension that reports refused opens and runs `netfs_check=` |
//! | [`shim`] | the generic file shim: one allocation layout and one method table per file type, each callback once; the safe handles files get |
//! | [`file`] | the safe contract a file implements ([`file::SqliteFile`]), its errors and their result codes |
//! | [`conn`] | a private connection on raw SQLite calls (the WAL conversion's), so the shim needs no binding beyond libsqlite3-sys |
//!
//! May use `crate::network` (the open decision and the files), `crate::integrity` (the check at
//! open) and libsqlite3-sys.
//!
//! # What each file allocation holds
//! SQLite allocates `szOsFile` bytes per open file and passes the pointer to `xOpen`.
//! - Native mode, and any other file that is not a network-mode database's journal: the base
//!   `unix` VFS's `xOpen` fills the whole allocation with its own file object and method
//!   table; the shim is not involved in that file's I/O at all.
//! - Network mode: a `shim::ShimFile` of `crate::network::database::OpenDatabase`.
//! - Refused open: one of `crate::network::opening::Refusal`; its methods fail, and the
//!   auto-extension turns the refusal into `sqlite3_open`'s error message.
//! - The journal of a network-mode database: one of `crate::network::journal::FencedJournal`,
//!   with the base VFS's own file object, which does the I/O, in the same allocation.
#![allow(unsafe_code)]

pub mod conn;
pub mod file;
pub mod shim;

use std::ffi::{CStr, CString, OsStr, c_char, c_int, c_void};
use std::os::unix::ffi::OsStrExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::ptr;
use std::sync::Once;

use libsqlite3_sys as ffi;
use parking_lot::Mutex;

use crate::network::journal::{Companion, FencedJournal};
use crate::network::opening::{OpenPlan, OpenRequest};
use crate::{Error, Options};
use shim::{BaseFile, NETFS_FCNTL_OPEN_ERROR, OpenErrorReport, guarded, sqlite_string};

/// The state of one registered VFS, leaked: SQLite keeps pointers to it forever.
struct VfsState {
    base: *mut ffi::sqlite3_vfs,
    options: Options,
}

/// Addresses of the `sqlite3_vfs` structs this crate registered, with their options.
static REGISTERED: Mutex<Vec<(usize, Options)>> = Mutex::new(Vec::new());

/// Registers a VFS with `options`; see `crate::Builder`.
pub fn register(options: Options, make_default: bool) -> Result<(), Error> {
    let mut registered = REGISTERED.lock();
    let name = CString::new(options.vfs_name.clone())
        .map_err(|_| Error::InvalidName(options.vfs_name.clone()))?;
    // SAFETY: a NUL-terminated name; sqlite3_vfs_find initialises SQLite if needed.
    let existing = unsafe { ffi::sqlite3_vfs_find(name.as_ptr()) };
    if !existing.is_null() {
        let Some((_, opts)) = registered
            .iter()
            .find(|(addr, _)| *addr == existing as usize)
        else {
            return Err(Error::NameTaken(options.vfs_name));
        };
        if *opts != options {
            return Err(Error::AlreadyRegistered(options.vfs_name));
        }
        if make_default {
            // SAFETY: `existing` is our leaked, registered VFS; re-registering moves it to
            // the head of SQLite's list, which makes it the default.
            let rc = unsafe { ffi::sqlite3_vfs_register(existing, 1) };
            if rc != ffi::SQLITE_OK {
                return Err(Error::Sqlite(rc));
            }
        }
        return Ok(());
    }
    // SAFETY: as above.
    let base = unsafe { ffi::sqlite3_vfs_find(c"unix".as_ptr()) };
    if base.is_null() {
        return Err(Error::NoBaseVfs);
    }
    // SAFETY: `base` is SQLite's own registered unix VFS, valid for the life of the process.
    let (base_version, base_size, base_path) =
        unsafe { ((*base).iVersion, (*base).szOsFile, (*base).mxPathname) };
    let size = shim::allocation_size(base_size);
    let state = Box::leak(Box::new(VfsState {
        base,
        options: options.clone(),
    }));
    let vfs = Box::leak(Box::new(ffi::sqlite3_vfs {
        iVersion: base_version.min(3),
        szOsFile: size,
        mxPathname: base_path,
        pNext: ptr::null_mut(),
        zName: name.into_raw(),
        pAppData: state as *mut VfsState as *mut c_void,
        xOpen: Some(x_open),
        xDelete: Some(x_delete),
        xAccess: Some(x_access),
        xFullPathname: Some(x_full_pathname),
        xDlOpen: Some(x_dl_open),
        xDlError: Some(x_dl_error),
        xDlSym: Some(x_dl_sym),
        xDlClose: Some(x_dl_close),
        xRandomness: Some(x_randomness),
        xSleep: Some(x_sleep),
        xCurrentTime: Some(x_current_time),
        xGetLastError: Some(x_get_last_error),
        xCurrentTimeInt64: Some(x_current_time_int64),
        xSetSystemCall: Some(x_set_system_call),
        xGetSystemCall: Some(x_get_system_call),
        xNextSystemCall: Some(x_next_system_call),
    }));
    // SAFETY: `vfs` is leaked and fully initialised; SQLite may keep it forever.
    let rc = unsafe { ffi::sqlite3_vfs_register(vfs, c_int::from(make_default)) };
    if rc != ffi::SQLITE_OK {
        return Err(Error::Sqlite(rc));
    }
    registered.push((vfs as *mut ffi::sqlite3_vfs as usize, options));
    install_open_error_reporter();
    Ok(())
}

fn install_open_error_reporter() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        #[cfg(not(feature = "loadable_extension"))]
        let entry = report_refused_open;
        // The routines table declares the entry point as `void(*)(void)`; SQLite calls it
        // with the three arguments all the same (loadext.c casts it back).
        #[cfg(feature = "loadable_extension")]
        // SAFETY: a cast between function pointer types, as sqlite3ext.h's declaration asks;
        // SQLite calls the pointer with `report_refused_open`'s own signature.
        let entry = unsafe {
            std::mem::transmute::<
                unsafe extern "C" fn(
                    *mut ffi::sqlite3,
                    *mut *mut c_char,
                    *const ffi::sqlite3_api_routines,
                ) -> c_int,
                unsafe extern "C" fn(),
            >(report_refused_open)
        };
        // SAFETY: the entry point has the signature SQLite expects and lives forever.
        let rc = unsafe { ffi::sqlite3_auto_extension(Some(entry)) };
        if rc != ffi::SQLITE_OK {
            tracing::warn!(rc, "cannot install the open-error reporter; refused opens will say only 'unable to open database file'");
        }
    });
}

/// Runs at the end of every successful `sqlite3_open`: if our VFS refused the main database,
/// fail the open with the refusal's message and code.
unsafe extern "C" fn report_refused_open(
    db: *mut ffi::sqlite3,
    err_msg: *mut *mut c_char,
    _api: *const ffi::sqlite3_api_routines,
) -> c_int {
    guarded(ffi::SQLITE_OK, || {
        let mut report = OpenErrorReport {
            code: 0,
            message: ptr::null_mut(),
        };
        // SAFETY: `db` is the connection being opened; the opcode is ours, so only a refused
        // shim file answers it, writing into `report`, which outlives the call.
        let rc = unsafe {
            ffi::sqlite3_file_control(
                db,
                c"main".as_ptr(),
                NETFS_FCNTL_OPEN_ERROR,
                &mut report as *mut OpenErrorReport as *mut c_void,
            )
        };
        if rc != ffi::SQLITE_OK || report.code == ffi::SQLITE_OK {
            // SAFETY: `db` is the connection being opened; `err_msg` is SQLite's.
            return unsafe { check_integrity_at_open(db, err_msg) };
        }
        if err_msg.is_null() {
            // SAFETY: the message came from sqlite3_malloc64.
            unsafe { ffi::sqlite3_free(report.message as *mut c_void) };
        } else {
            // SAFETY: SQLite passes a valid out-pointer and frees the message itself.
            unsafe { *err_msg = report.message };
        }
        report.code
    })
}

/// The check `netfs_check=` asks for, on a connection opened through one of our VFSes (in
/// either mode): a damaged database fails the open with a message naming the way out
/// (`crate::integrity::check_at_open`).
///
/// # Safety
/// `db` must be a connection being opened, valid for the call; `err_msg` null or SQLite's
/// out-pointer for the open's error message.
unsafe fn check_integrity_at_open(db: *mut ffi::sqlite3, err_msg: *mut *mut c_char) -> c_int {
    let mut vfs: *mut ffi::sqlite3_vfs = ptr::null_mut();
    // SAFETY: SQLITE_FCNTL_VFS_POINTER writes the main database's VFS pointer into `vfs`.
    let rc = unsafe {
        ffi::sqlite3_file_control(
            db,
            c"main".as_ptr(),
            ffi::SQLITE_FCNTL_VFS_POINTER,
            &mut vfs as *mut *mut ffi::sqlite3_vfs as *mut c_void,
        )
    };
    let ours = REGISTERED
        .lock()
        .iter()
        .any(|(address, _)| *address == vfs as usize);
    if rc != ffi::SQLITE_OK || !ours {
        return ffi::SQLITE_OK;
    }
    // SAFETY: `db` is open; the name lives as long as the connection.
    let name = unsafe { ffi::sqlite3_db_filename(db, c"main".as_ptr()) };
    if name.is_null() {
        return ffi::SQLITE_OK;
    }
    // SAFETY: sqlite3_db_filename returns a database filename, which sqlite3_uri_parameter
    // accepts as it does xOpen's.
    let Some(value) = (unsafe { uri_parameter(name, c"netfs_check") }) else {
        return ffi::SQLITE_OK;
    };
    // SAFETY: non-null and NUL-terminated, as above.
    let path = unsafe { CStr::from_ptr(name) }
        .to_string_lossy()
        .into_owned();
    #[cfg(feature = "rusqlite")]
    // SAFETY: `db` stays open for this whole call, and a Connection made by from_handle
    // never closes the handle.
    let Ok(conn) = (unsafe { rusqlite::Connection::from_handle(db) }) else {
        return ffi::SQLITE_OK;
    };
    #[cfg(feature = "rusqlite")]
    let verdict = crate::integrity::check_at_open(&conn, value, &path);
    // The loadable extension has no rusqlite (the checks are written with it): refuse rather
    // than open a database whose check was asked for and not run.
    #[cfg(not(feature = "rusqlite"))]
    let verdict = Err::<(), _>((
        ffi::SQLITE_CANTOPEN,
        format!(
            "netfs: {path}: netfs_check={value} cannot run in the loadable extension; check with `sqlite-netfs doctor --check` and open without netfs_check="
        ),
    ));
    match verdict {
        Ok(()) => ffi::SQLITE_OK,
        Err((code, message)) => {
            if !err_msg.is_null() {
                // SAFETY: SQLite passes a valid out-pointer and frees the message itself.
                unsafe { *err_msg = sqlite_string(&message) };
            }
            code
        }
    }
}

/// Whether the main database of `conn` is open in network mode through this shim.
#[cfg(feature = "rusqlite")]
pub fn network_mode_active(conn: &rusqlite::Connection) -> bool {
    let mut active: c_int = 0;
    // SAFETY: the handle is valid while `conn` is borrowed; only our network files answer
    // this opcode, writing one int.
    let rc = unsafe {
        ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            shim::NETFS_FCNTL_NETWORK_MODE,
            &mut active as *mut c_int as *mut c_void,
        )
    };
    rc == ffi::SQLITE_OK && active == 1
}

/// # Safety
/// `vfs` must be a VFS this module registered.
unsafe fn state<'a>(vfs: *mut ffi::sqlite3_vfs) -> &'a VfsState {
    // SAFETY: pAppData of our VFS points to a leaked VfsState (see `register`).
    unsafe { &*((*vfs).pAppData as *const VfsState) }
}

/// A URI parameter (`netfs=`, `netfs_check=`) of a main-database name.
///
/// # Safety
/// `name` must be a filename SQLite passed to `xOpen` for a main database, or one
/// `sqlite3_db_filename` returned.
unsafe fn uri_parameter<'a>(name: *const c_char, key: &CStr) -> Option<&'a str> {
    // SAFETY: as required; sqlite3_uri_parameter returns null or a string inside `name`.
    let value = unsafe { ffi::sqlite3_uri_parameter(name, key.as_ptr()) };
    if value.is_null() {
        return None;
    }
    // SAFETY: non-null, NUL-terminated, alive as long as the filename.
    Some(
        unsafe { CStr::from_ptr(value) }
            .to_str()
            .unwrap_or("<not UTF-8>"),
    )
}

unsafe extern "C" fn x_open(
    vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    if vfs.is_null() || file.is_null() {
        return ffi::SQLITE_INTERNAL;
    }
    // SAFETY: SQLite calls xOpen on the VFS we registered.
    let st = unsafe { state(vfs) };
    let base = st.base;
    let pass_through = || {
        // SAFETY: forwarding SQLite's own arguments to the base VFS, which then owns `file`.
        unsafe { (*base).xOpen.expect("unix VFS has xOpen")(base, name, file, flags, out_flags) }
    };
    if name.is_null() || flags & ffi::SQLITE_OPEN_MAIN_DB == 0 {
        // SAFETY: SQLite passes a NUL-terminated name (or null), valid during xOpen.
        let Some(text) = (unsafe { name_text(name) }) else {
            return pass_through();
        };
        let companion = guarded(Err(()), || {
            Ok(crate::network::journal::companion_of_network_database(text))
        });
        return match companion {
            Ok(Some((Companion::Journal, refresh))) => {
                // SAFETY: `file` has szOsFile bytes, `shim::allocation_size` of the base's.
                unsafe { open_journal(base, name, text, refresh, file, flags, out_flags) }
            }
            Ok(Some((Companion::Wal, _))) => {
                crate::network::journal::open_with_patience(pass_through)
            }
            Ok(None) => pass_through(),
            Err(()) => {
                // SAFETY: a null method table tells SQLite there is nothing to close.
                unsafe { (*file).pMethods = ptr::null() };
                ffi::SQLITE_CANTOPEN
            }
        };
    }
    let plan = catch_unwind(AssertUnwindSafe(|| {
        #[cfg(test)]
        tests::injected_panic();
        // SAFETY: `name` is a main-database filename from SQLite, valid during xOpen.
        let name_bytes = unsafe { CStr::from_ptr(name) }.to_bytes();
        let request = OpenRequest {
            name: name_bytes,
            // SAFETY: as above.
            netfs: unsafe { uri_parameter(name, c"netfs") },
            read_write: flags & ffi::SQLITE_OPEN_READWRITE != 0,
            create: flags & ffi::SQLITE_OPEN_CREATE != 0,
            // SAFETY: as above.
            powersafe_overwrite: unsafe { ffi::sqlite3_uri_boolean(name, c"psow".as_ptr(), 1) }
                != 0,
            // SAFETY: as above.
            immutable: unsafe { ffi::sqlite3_uri_boolean(name, c"immutable".as_ptr(), 0) } != 0,
        };
        crate::network::opening::plan(&st.options, &request)
    }));
    match plan {
        Ok(OpenPlan::Native) => pass_through(),
        Ok(OpenPlan::Network(db)) => {
            let granted = db.open_flags(flags);
            // SAFETY: `file` points to szOsFile bytes, enough for a shim file; SQLite hands
            // the allocation to us until xClose. `out_flags` is null or SQLite's out-pointer.
            unsafe {
                shim::install(file, db);
                if !out_flags.is_null() {
                    *out_flags = granted;
                }
            }
            ffi::SQLITE_OK
        }
        Ok(OpenPlan::Refused(refusal)) => {
            // SAFETY: as above.
            unsafe {
                shim::install(file, Box::new(refusal));
                if !out_flags.is_null() {
                    *out_flags = flags;
                }
            }
            ffi::SQLITE_OK
        }
        Err(_) => {
            tracing::error!("panic while opening a database; reported as SQLITE_CANTOPEN");
            // SAFETY: a null method table tells SQLite there is nothing to close.
            unsafe { (*file).pMethods = ptr::null() };
            ffi::SQLITE_CANTOPEN
        }
    }
}

/// Opens the journal of a network-mode database through the base VFS, into the base slot of
/// a shim file, and installs its fence around it.
///
/// # Safety
/// As for `xOpen`, with `file` pointing to `shim::allocation_size` bytes and `name` the
/// string `journal` was read from.
unsafe fn open_journal(
    base: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    journal: &str,
    refresh: crate::client_cache::SizeRefresh,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    // SAFETY: as required, the slot lies inside the allocation, with room for the base file.
    let native = unsafe { shim::base_slot(file) };
    let rc = crate::network::journal::open_for_sqlite(flags, |flags| {
        // SAFETY: SQLite's own arguments (the flags perhaps without CREATE), with the base file
        // object placed inside ours; a failed open leaves it untouched.
        unsafe { (*base).xOpen.expect("unix VFS has xOpen")(base, name, native, flags, out_flags) }
    });
    if rc != ffi::SQLITE_OK {
        // SAFETY: the header lies inside the allocation; a failed open leaves nothing for
        // SQLite to close.
        unsafe { (*file).pMethods = ptr::null() };
        return rc;
    }
    // SAFETY: the base file was just opened in its slot; the shim closes it after the state.
    let base_file = unsafe { BaseFile::new(native) };
    let state = guarded(None, || {
        Some(Box::new(FencedJournal::new(
            journal.to_owned(),
            refresh,
            base_file,
        )))
    });
    // SAFETY: `file` is the allocation; the base file in its slot is open.
    unsafe {
        match state {
            Some(state) => shim::install(file, state),
            None => {
                // The state could not be made: close what was opened, report nothing to close.
                if let Some(close) = (*native).pMethods.as_ref().and_then(|m| m.xClose) {
                    close(native);
                }
                (*file).pMethods = ptr::null();
                return ffi::SQLITE_CANTOPEN;
            }
        }
    }
    ffi::SQLITE_OK
}

/// A file name SQLite passed, as text; `None` for null or a name that is not UTF-8 (never one
/// of ours: the crate's paths come from SQLite's own UTF-8 names).
///
/// # Safety
/// `name` must be null or a NUL-terminated string that outlives `'a`.
unsafe fn name_text<'a>(name: *const c_char) -> Option<&'a str> {
    if name.is_null() {
        return None;
    }
    // SAFETY: as required.
    unsafe { CStr::from_ptr(name) }.to_str().ok()
}

unsafe extern "C" fn x_delete(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    sync_dir: c_int,
) -> c_int {
    // SAFETY: our registered VFS.
    let base = unsafe { state(vfs) }.base;
    // SAFETY: SQLite passes a NUL-terminated name, valid for the call.
    if let Some(text) = unsafe { name_text(name) } {
        let outcome = guarded(Some(ffi::SQLITE_IOERR_DELETE), || {
            crate::network::journal::delete_for_sqlite(text, sync_dir != 0).map(file::result_code)
        });
        if let Some(rc) = outcome {
            return rc;
        }
    }
    // SAFETY: forwarding to the base VFS.
    unsafe { (*base).xDelete.expect("unix VFS has xDelete")(base, name, sync_dir) }
}

unsafe extern "C" fn x_access(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    flags: c_int,
    res_out: *mut c_int,
) -> c_int {
    if res_out.is_null() {
        return ffi::SQLITE_INTERNAL;
    }
    // SAFETY: our registered VFS.
    let base = unsafe { state(vfs) }.base;
    if flags == ffi::SQLITE_ACCESS_EXISTS
        // SAFETY: SQLite passes a NUL-terminated name, valid for the call.
        && let Some(text) = unsafe { name_text(name) }
    {
        let outcome = guarded(Some(Err(ffi::SQLITE_IOERR_ACCESS)), || {
            crate::network::journal::exists_for_sqlite(text)
                .map(|answer| answer.map_err(file::FileError::code))
        });
        match outcome {
            Some(Ok(exists)) => {
                // SAFETY: SQLite passes a valid, non-null out-pointer.
                unsafe { *res_out = c_int::from(exists) };
                return ffi::SQLITE_OK;
            }
            Some(Err(rc)) => return rc,
            None => {}
        }
    }
    // SAFETY: forwarding to the base VFS.
    unsafe { (*base).xAccess.expect("unix VFS has xAccess")(base, name, flags, res_out) }
}
// The remaining VFS methods belong to the base VFS; SQLite calls them with our pointer, and
// they are forwarded with the base's own.

unsafe extern "C" fn x_full_pathname(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    n: c_int,
    out: *mut c_char,
) -> c_int {
    // SAFETY: our registered VFS.
    let base = unsafe { state(vfs) }.base;
    let resolve = || {
        // SAFETY: arguments forwarded unchanged to the base, which writes at most `n` bytes.
        match unsafe {
            (*base).xFullPathname.expect("unix VFS has xFullPathname")(base, name, n, out)
        } {
            ffi::SQLITE_OK => Ok(()),
            rc => Err(rc),
        }
    };
    if name.is_null() {
        return resolve().err().unwrap_or(ffi::SQLITE_OK);
    }
    // SAFETY: SQLite passes a NUL-terminated name, valid for the call.
    let path = Path::new(OsStr::from_bytes(
        unsafe { CStr::from_ptr(name) }.to_bytes(),
    ));
    guarded(ffi::SQLITE_CANTOPEN, || {
        crate::client_cache::retry_path_resolution(ffi::SQLITE_CANTOPEN, path, resolve)
            .err()
            .unwrap_or(ffi::SQLITE_OK)
    })
}

unsafe extern "C" fn x_dl_open(vfs: *mut ffi::sqlite3_vfs, name: *const c_char) -> *mut c_void {
    // SAFETY: as for x_full_pathname.
    unsafe {
        let base = state(vfs).base;
        match (*base).xDlOpen {
            Some(f) => f(base, name),
            None => ptr::null_mut(),
        }
    }
}

unsafe extern "C" fn x_dl_error(vfs: *mut ffi::sqlite3_vfs, n: c_int, out: *mut c_char) {
    // SAFETY: as for x_full_pathname.
    unsafe {
        let base = state(vfs).base;
        if let Some(f) = (*base).xDlError {
            f(base, n, out)
        }
    }
}

type DlSym = unsafe extern "C" fn(*mut ffi::sqlite3_vfs, *mut c_void, *const c_char);

unsafe extern "C" fn x_dl_sym(
    vfs: *mut ffi::sqlite3_vfs,
    handle: *mut c_void,
    symbol: *const c_char,
) -> Option<DlSym> {
    // SAFETY: as for x_full_pathname.
    unsafe {
        let base = state(vfs).base;
        (*base).xDlSym.and_then(|f| f(base, handle, symbol))
    }
}

unsafe extern "C" fn x_dl_close(vfs: *mut ffi::sqlite3_vfs, handle: *mut c_void) {
    // SAFETY: as for x_full_pathname.
    unsafe {
        let base = state(vfs).base;
        if let Some(f) = (*base).xDlClose {
            f(base, handle)
        }
    }
}

unsafe extern "C" fn x_randomness(vfs: *mut ffi::sqlite3_vfs, n: c_int, out: *mut c_char) -> c_int {
    // SAFETY: as for x_full_pathname.
    unsafe {
        let base = state(vfs).base;
        (*base).xRandomness.expect("unix VFS has xRandomness")(base, n, out)
    }
}

unsafe extern "C" fn x_sleep(vfs: *mut ffi::sqlite3_vfs, micros: c_int) -> c_int {
    // SAFETY: as for x_full_pathname.
    unsafe {
        let base = state(vfs).base;
        (*base).xSleep.expect("unix VFS has xSleep")(base, micros)
    }
}

unsafe extern "C" fn x_current_time(vfs: *mut ffi::sqlite3_vfs, out: *mut f64) -> c_int {
    // SAFETY: as for x_full_pathname.
    unsafe {
        let base = state(vfs).base;
        (*base).xCurrentTime.expect("unix VFS has xCurrentTime")(base, out)
    }
}

unsafe extern "C" fn x_get_last_error(
    vfs: *mut ffi::sqlite3_vfs,
    n: c_int,
    out: *mut c_char,
) -> c_int {
    // SAFETY: as for x_full_pathname.
    unsafe {
        let base = state(vfs).base;
        match (*base).xGetLastError {
            Some(f) => f(base, n, out),
            None => 0,
        }
    }
}

unsafe extern "C" fn x_current_time_int64(
    vfs: *mut ffi::sqlite3_vfs,
    out: *mut ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: as for x_full_pathname; our iVersion is never above the base's.
    unsafe {
        let base = state(vfs).base;
        (*base)
            .xCurrentTimeInt64
            .expect("unix VFS has xCurrentTimeInt64")(base, out)
    }
}

unsafe extern "C" fn x_set_system_call(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    f: ffi::sqlite3_syscall_ptr,
) -> c_int {
    // SAFETY: as for x_full_pathname.
    unsafe {
        let base = state(vfs).base;
        match (*base).xSetSystemCall {
            Some(set) => set(base, name, f),
            None => ffi::SQLITE_NOTFOUND,
        }
    }
}

unsafe extern "C" fn x_get_system_call(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
) -> ffi::sqlite3_syscall_ptr {
    // SAFETY: as for x_full_pathname.
    unsafe {
        let base = state(vfs).base;
        (*base).xGetSystemCall.and_then(|get| get(base, name))
    }
}

unsafe extern "C" fn x_next_system_call(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
) -> *const c_char {
    // SAFETY: as for x_full_pathname.
    unsafe {
        let base = state(vfs).base;
        match (*base).xNextSystemCall {
            Some(next) => next(base, name),
            None => ptr::null(),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The proof that no panic crosses into C: a hook panics inside the n-th guarded callback
    //! (every callback that runs Rust code goes through `guarded` or, for `xOpen`, its own
    //! `catch_unwind`), for every n a workload reaches. SQLite must get an error code each
    //! time (an abort would end the test binary), and the database must stay intact.
    //! The callbacks outside the guard only forward to the base VFS's function pointers.

    use std::cell::Cell;

    use rusqlite::Connection;

    thread_local! {
        /// Panic at this guarded call (1-based) on this thread; `None`: never.
        static PANIC_AT: Cell<Option<u32>> = const { Cell::new(None) };
        static CALLS: Cell<u32> = const { Cell::new(0) };
    }

    pub(super) fn injected_panic() {
        let n = CALLS.get() + 1;
        CALLS.set(n);
        if PANIC_AT.get() == Some(n) {
            panic!("injected panic at guarded call {n}");
        }
    }

    fn arm(at: Option<u32>) {
        CALLS.set(0);
        PANIC_AT.set(at);
    }

    /// Keeps the injected panics out of the test output (with `RUST_BACKTRACE` set, each one
    /// printed a backtrace, hundreds of lines that buried real failures in CI's log). Any
    /// other panic still goes to the hook that was there before.
    fn silence_injected_panics() {
        static INSTALL: std::sync::Once = std::sync::Once::new();
        INSTALL.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                let message = info.payload().downcast_ref::<String>();
                if !message.is_some_and(|m| m.starts_with("injected panic")) {
                    previous(info);
                }
            }));
        });
    }

    fn transaction(conn: &Connection, i: i64) -> rusqlite::Result<()> {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let body = conn
            .execute("INSERT INTO t VALUES (?1, randomblob(3000))", [i])
            .and_then(|_| conn.execute_batch("COMMIT"));
        if body.is_err() && !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        body
    }

    #[test]
    fn a_panic_in_any_callback_reaches_sqlite_as_an_error_code() {
        crate::Builder::new()
            .vfs_name("netfs-panic-proof")
            .register()
            .unwrap();
        silence_injected_panics();
        let dir = tempfile::tempdir().unwrap();
        let uri = format!(
            "file:{}?vfs=netfs-panic-proof&netfs=on",
            dir.path().join("p.db").display()
        );

        // A panic while opening: SQLITE_CANTOPEN.
        arm(Some(1));
        let err = Connection::open(&uri).unwrap_err();
        arm(None);
        assert_eq!(
            err.sqlite_error_code(),
            Some(rusqlite::ErrorCode::CannotOpen),
            "{err}"
        );

        let conn = Connection::open(&uri).unwrap();
        conn.busy_timeout(std::time::Duration::ZERO).unwrap();
        conn.execute_batch("CREATE TABLE t(i INTEGER, b BLOB)")
            .unwrap();
        let (mut committed, mut failed, mut i) = (0i64, 0, 0);
        for at in 1.. {
            arm(Some(at));
            let result = transaction(&conn, i).and_then(|()| {
                conn.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
                    .map(|_| ())
            });
            let reached = CALLS.get() >= at;
            arm(None);
            match result {
                Ok(()) => {}
                Err(e) => {
                    failed += 1;
                    assert!(
                        e.sqlite_error_code().is_some(),
                        "panic at call {at}: not an SQLite error: {e}"
                    );
                }
            }
            i += 1;
            committed = conn
                .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                .unwrap();
            if !reached {
                break;
            }
        }
        assert!(failed > 0, "no injected panic ever reached SQLite");
        assert!(committed > 0 && committed <= i, "{committed} of {i}");
        drop(conn);
        let conn = Connection::open(&uri).unwrap();
        let ok: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
        let after: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(after, committed);
        eprintln!(
            "injected panics: {i} runs, {failed} reached SQLite as errors, {committed} commits kept"
        );
    }
}
