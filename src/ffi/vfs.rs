//! The VFS as SQLite sees it: the `sqlite3_vfs` and `sqlite3_io_methods` tables and their
//! callbacks. Each callback has the same shape: recover the Rust object from the pointer
//! SQLite hands back, run safe code under `catch_unwind` (a panic never unwinds into C), and
//! flatten the result into a SQLite result code in one place ([`result_code`]).
//!
//! # Ownership of a file allocation
//! SQLite allocates `szOsFile` bytes per open file and passes the pointer to `xOpen`.
//! - Native mode: the base `unix` VFS's `xOpen` fills the whole allocation with its own file
//!   object and its own method table; the shim is not involved in that file's I/O at all.
//! - Network mode: the allocation holds a [`NetworkShimFile`]: SQLite's `sqlite3_file` header
//!   first (the "subclass" layout SQLite expects) and a `Box<OpenDatabase>` pointer, which
//!   `xClose` takes back and drops.
//! - Refused open: a [`RefusedShimFile`] with a `Box<Refusal>`; its methods fail, and the
//!   auto-extension turns the refusal into `sqlite3_open`'s error message.
//! - The journal of a network-mode database: a [`JournalShimFile`], our header, a
//!   `Box<OpenJournal>`, then the base VFS's own file object, which does the I/O. Writes and
//!   truncations pass the journal fence first; after a failed change, reads and syncs fail
//!   (`crate::journal`).

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::ptr;
use std::sync::Once;

use libsqlite3_sys as ffi;
use parking_lot::Mutex;

use crate::journal::OpenJournal;
use crate::lockfile::SizeRefresh;
use crate::network_file::{FileError, IoOp};
use crate::opening::{OpenDatabase, OpenPlan, OpenRequest, Refusal, Refused};
use crate::protocol::Level;
use crate::{Error, Options};

/// Private file-control opcodes (SQLite's own are small numbers).
const NETFS_FCNTL_OPEN_ERROR: c_int = 0x4e46_5301;
const NETFS_FCNTL_NETWORK_MODE: c_int = 0x4e46_5302;

/// Returned by `PRAGMA journal_mode=<anything else>` in network mode: the pinned mode.
const PINNED_JOURNAL_MODE: &str = "delete";

/// The state of one registered VFS, leaked: SQLite keeps pointers to it forever.
struct VfsState {
    base: *mut ffi::sqlite3_vfs,
    options: Options,
}

#[repr(C)]
struct NetworkShimFile {
    /// Must be first: SQLite sees only this header.
    header: ffi::sqlite3_file,
    db: *mut OpenDatabase,
}

#[repr(C)]
struct RefusedShimFile {
    header: ffi::sqlite3_file,
    refusal: *mut Refusal,
}

#[repr(C)]
struct JournalShimFile {
    header: ffi::sqlite3_file,
    journal: *mut crate::journal::OpenJournal,
    /// The base VFS's file object: from here on, the base VFS's `szOsFile` bytes are its own.
    native: ffi::sqlite3_file,
}

/// Filled by the refused file's `xFileControl(NETFS_FCNTL_OPEN_ERROR)`.
#[repr(C)]
struct OpenErrorReport {
    code: c_int,
    message: *mut c_char,
}

/// Addresses of the `sqlite3_vfs` structs this crate registered, with their options.
static REGISTERED: Mutex<Vec<(usize, Options)>> = Mutex::new(Vec::new());

fn guarded(fallback: c_int, f: impl FnOnce() -> c_int) -> c_int {
    catch_unwind(AssertUnwindSafe(|| {
        #[cfg(test)]
        tests::injected_panic();
        f()
    }))
    .unwrap_or_else(|_| {
        tracing::error!("panic inside a VFS callback; reported to SQLite as an error");
        fallback
    })
}

/// The one place where errors become SQLite result codes.
fn result_code(result: Result<(), FileError>) -> c_int {
    let error = match result {
        Ok(()) => return ffi::SQLITE_OK,
        Err(e) => e,
    };
    match error {
        FileError::Busy => ffi::SQLITE_BUSY,
        FileError::ShortRead => ffi::SQLITE_IOERR_SHORT_READ,
        FileError::Full => ffi::SQLITE_FULL,
        FileError::LeaseExpired => ffi::SQLITE_IOERR_LOCK,
        FileError::Lock(e) => {
            tracing::error!(error = %e, "lock files unusable");
            // A lock file that cannot be created or grown for want of space is the same
            // fault, with the same remedy, as a database that cannot grow: say so.
            match &e {
                crate::lock::LockError::Io(io)
                    if matches!(
                        io.kind(),
                        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                    ) =>
                {
                    ffi::SQLITE_FULL
                }
                _ => ffi::SQLITE_IOERR_LOCK,
            }
        }
        FileError::Io { op, error } => {
            tracing::error!(?op, %error, "I/O error");
            match op {
                IoOp::Read => ffi::SQLITE_IOERR_READ,
                IoOp::Write => ffi::SQLITE_IOERR_WRITE,
                IoOp::Truncate => ffi::SQLITE_IOERR_TRUNCATE,
                IoOp::Fsync => ffi::SQLITE_IOERR_FSYNC,
                IoOp::Fstat => ffi::SQLITE_IOERR_FSTAT,
                IoOp::Lock => ffi::SQLITE_IOERR_LOCK,
                IoOp::Unlock => ffi::SQLITE_IOERR_UNLOCK,
                IoOp::CheckReserved => ffi::SQLITE_IOERR_CHECKRESERVEDLOCK,
            }
        }
    }
}

/// A copy of `s` in SQLite's allocator (SQLite frees it with `sqlite3_free`).
fn sqlite_string(s: &str) -> *mut c_char {
    let bytes = s.as_bytes();
    // SAFETY: sqlite3_malloc64 returns null or a block of the requested size.
    let p = unsafe { ffi::sqlite3_malloc64(bytes.len() as u64 + 1) } as *mut u8;
    if !p.is_null() {
        // SAFETY: `p` has room for the bytes and the terminating NUL; the regions are distinct.
        unsafe {
            ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
            *p.add(bytes.len()) = 0;
        }
    }
    p as *mut c_char
}

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
    let size = base_size
        .max(std::mem::size_of::<NetworkShimFile>() as c_int)
        .max(std::mem::size_of::<RefusedShimFile>() as c_int)
        .max(std::mem::offset_of!(JournalShimFile, native) as c_int + base_size);
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
            NETFS_FCNTL_NETWORK_MODE,
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
    // SAFETY: SQLite calls xOpen on the VFS we registered.
    let st = unsafe { state(vfs) };
    let base = st.base;
    let pass_through = || {
        // SAFETY: forwarding SQLite's own arguments to the base VFS, which then owns `file`.
        unsafe { (*base).xOpen.expect("unix VFS has xOpen")(base, name, file, flags, out_flags) }
    };
    if name.is_null() || flags & ffi::SQLITE_OPEN_MAIN_DB == 0 {
        // SAFETY: SQLite passes a NUL-terminated name (or null, which `companion` accepts).
        return match unsafe { companion(name) } {
            Some((crate::journal::Companion::Journal, refresh, path)) => {
                // SAFETY: `file` has szOsFile bytes, enough for a JournalShimFile whose
                // `native` part has the base VFS's szOsFile bytes.
                unsafe { open_journal(base, name, path, refresh, file, flags, out_flags) }
            }
            Some((crate::journal::Companion::Wal, _, _)) => retry_cantopen(pass_through),
            None => pass_through(),
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
        crate::opening::plan(&st.options, &request)
    }));
    match plan {
        Ok(OpenPlan::Native) => pass_through(),
        Ok(OpenPlan::Network(db)) => {
            let writable = db.file.writable();
            // SAFETY: `file` points to szOsFile bytes, enough for a NetworkShimFile; SQLite
            // hands ownership of the Box to us until xClose.
            unsafe {
                ptr::write(
                    file as *mut NetworkShimFile,
                    NetworkShimFile {
                        header: ffi::sqlite3_file {
                            pMethods: &NETWORK_METHODS,
                        },
                        db: Box::into_raw(db),
                    },
                );
                if !out_flags.is_null() {
                    *out_flags = if writable {
                        flags
                    } else {
                        (flags & !(ffi::SQLITE_OPEN_READWRITE | ffi::SQLITE_OPEN_CREATE))
                            | ffi::SQLITE_OPEN_READONLY
                    };
                }
            }
            ffi::SQLITE_OK
        }
        Ok(OpenPlan::Refused(refusal)) => {
            // SAFETY: as above, for a RefusedShimFile.
            unsafe {
                ptr::write(
                    file as *mut RefusedShimFile,
                    RefusedShimFile {
                        header: ffi::sqlite3_file {
                            pMethods: &REFUSED_METHODS,
                        },
                        refusal: Box::into_raw(Box::new(refusal)),
                    },
                );
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

/// Runs a base-VFS open again while it fails with SQLITE_CANTOPEN, for about two seconds:
/// smbnetfs fails opens with a passing EIO under load, which the base VFS reports as
/// SQLITE_CANTOPEN. A failed base open leaves the file untouched, so it can be tried again.
fn retry_cantopen(mut open: impl FnMut() -> c_int) -> c_int {
    let mut pause = std::time::Duration::from_millis(2);
    loop {
        let rc = open();
        if rc != ffi::SQLITE_CANTOPEN || pause > std::time::Duration::from_millis(1024) {
            return rc;
        }
        std::thread::sleep(pause);
        pause *= 2;
    }
}

/// Opens the journal of a network-mode database through the base VFS, inside a
/// [`JournalShimFile`].
///
/// # Safety
/// As for `xOpen`, with `file` pointing to at least
/// `offset_of!(JournalShimFile, native)` + the base VFS's `szOsFile` bytes.
unsafe fn open_journal(
    base: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    journal: &Path,
    refresh: SizeRefresh,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let shim = file as *mut JournalShimFile;
    // SAFETY: as required, `native` lies inside the allocation, with room for the base file.
    let native = unsafe { &raw mut (*shim).native };
    let rc = retry_cantopen(|| {
        // SAFETY: SQLite's own arguments, with the base file object placed inside ours.
        unsafe { (*base).xOpen.expect("unix VFS has xOpen")(base, name, native, flags, out_flags) }
    });
    // SAFETY: the header and `name` lie inside the allocation, before the base file object.
    unsafe {
        if rc != ffi::SQLITE_OK {
            // A failed open leaves nothing for SQLite to close.
            (*shim).header.pMethods = ptr::null();
            return rc;
        }
        let state =
            crate::journal::OpenJournal::new(journal.to_string_lossy().into_owned(), refresh);
        ptr::write(&raw mut (*shim).journal, Box::into_raw(Box::new(state)));
        (*shim).header.pMethods = &JOURNAL_METHODS;
    }
    ffi::SQLITE_OK
}

/// The journal or WAL of a network-mode database, by the name SQLite uses.
///
/// # Safety
/// `name` must be null or a NUL-terminated string.
unsafe fn companion(
    name: *const c_char,
) -> Option<(crate::journal::Companion, SizeRefresh, &'static Path)> {
    if name.is_null() {
        return None;
    }
    // SAFETY: as required; the string outlives the callback in which we use it.
    let text: &'static CStr = unsafe { CStr::from_ptr(name) };
    let text = text.to_str().ok()?;
    crate::journal::companion_of_network_database(text)
        .map(|(kind, refresh)| (kind, refresh, Path::new(text)))
}

unsafe extern "C" fn x_delete(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    sync_dir: c_int,
) -> c_int {
    // SAFETY: our registered VFS.
    let base = unsafe { state(vfs) }.base;
    // SAFETY: SQLite passes a NUL-terminated name.
    if let Some((crate::journal::Companion::Journal, _, path)) = unsafe { companion(name) } {
        return guarded(ffi::SQLITE_IOERR_DELETE, || {
            if let Some(refused) = journal_fence(path, "empty") {
                return refused;
            }
            match crate::journal::discard(path, sync_dir != 0) {
                Ok(()) => ffi::SQLITE_OK,
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot empty the journal");
                    ffi::SQLITE_IOERR_DELETE
                }
            }
        });
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
    // SAFETY: our registered VFS.
    let base = unsafe { state(vfs) }.base;
    if flags == ffi::SQLITE_ACCESS_EXISTS
        // SAFETY: SQLite passes a NUL-terminated name.
        && let Some((kind, refresh, path)) = unsafe { companion(name) }
    {
        return guarded(
            ffi::SQLITE_IOERR_ACCESS,
            || match crate::journal::has_content(path, refresh) {
                Ok(exists) => {
                    // SAFETY: SQLite passes a valid out-pointer.
                    unsafe { *res_out = c_int::from(exists) };
                    ffi::SQLITE_OK
                }
                // Network mode never has a WAL (it was converted at open): an unanswerable
                // question about one is answered "none". A journal must be answered truly.
                Err(e) if kind == crate::journal::Companion::Wal => {
                    tracing::debug!(path = %path.display(), error = %e, "cannot check for a WAL; assuming none");
                    // SAFETY: as above.
                    unsafe { *res_out = 0 };
                    ffi::SQLITE_OK
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot check the journal");
                    ffi::SQLITE_IOERR_ACCESS
                }
            },
        );
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
    // SAFETY: our registered VFS; arguments forwarded unchanged to the base.
    unsafe {
        let base = state(vfs).base;
        (*base).xFullPathname.expect("unix VFS has xFullPathname")(base, name, n, out)
    }
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

// ---------------------------------------------------------------------------------------------
// Network-mode files. Version 1 of the method table: no xShm* (so SQLite will not use WAL) and
// no xFetch (no memory-mapped I/O, which would bypass the coherency reopen).

static NETWORK_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(net_close),
    xRead: Some(net_read),
    xWrite: Some(net_write),
    xTruncate: Some(net_truncate),
    xSync: Some(net_sync),
    xFileSize: Some(net_file_size),
    xLock: Some(net_lock),
    xUnlock: Some(net_unlock),
    xCheckReservedLock: Some(net_check_reserved_lock),
    xFileControl: Some(net_file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(net_device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

/// # Safety
/// `file` must be a file opened by `x_open` in network mode and not yet closed.
unsafe fn open_db<'a>(file: *mut ffi::sqlite3_file) -> Option<&'a mut OpenDatabase> {
    // SAFETY: as required, the allocation holds a NetworkShimFile whose `db` is a live Box
    // (or null after close); SQLite serialises calls on one file.
    unsafe { (*(file as *mut NetworkShimFile)).db.as_mut() }
}

/// Runs `f` on the open database behind `file`, guarded.
///
/// # Safety
/// As for [`open_db`].
unsafe fn with_db(
    file: *mut ffi::sqlite3_file,
    fallback: c_int,
    f: impl FnOnce(&mut OpenDatabase) -> c_int,
) -> c_int {
    // SAFETY: as required.
    match unsafe { open_db(file) } {
        Some(db) => guarded(fallback, || f(db)),
        None => ffi::SQLITE_MISUSE,
    }
}

unsafe extern "C" fn net_close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite calls xClose once on a file x_open set up; we take the Box back and
    // clear the pointer so nothing can use it again.
    let db = unsafe {
        let shim = file as *mut NetworkShimFile;
        let db = (*shim).db;
        (*shim).db = ptr::null_mut();
        db
    };
    if db.is_null() {
        return ffi::SQLITE_OK;
    }
    // SAFETY: `db` came from Box::into_raw in x_open and is dropped exactly once.
    guarded(ffi::SQLITE_IOERR_CLOSE, || {
        drop(unsafe { Box::from_raw(db) });
        ffi::SQLITE_OK
    })
}

unsafe extern "C" fn net_read(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: SQLite passes a buffer of `amount` writable bytes; `file` is ours.
    unsafe {
        let buf = std::slice::from_raw_parts_mut(buf as *mut u8, amount.max(0) as usize);
        with_db(file, ffi::SQLITE_IOERR_READ, |db| {
            result_code(db.file.read_at(buf, offset as u64))
        })
    }
}

unsafe extern "C" fn net_write(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: SQLite passes `amount` readable bytes; `file` is ours.
    unsafe {
        let buf = std::slice::from_raw_parts(buf as *const u8, amount.max(0) as usize);
        with_db(file, ffi::SQLITE_IOERR_WRITE, |db| {
            result_code(db.file.write_at(buf, offset as u64))
        })
    }
}

unsafe extern "C" fn net_truncate(file: *mut ffi::sqlite3_file, size: ffi::sqlite3_int64) -> c_int {
    // SAFETY: `file` is ours.
    unsafe {
        with_db(file, ffi::SQLITE_IOERR_TRUNCATE, |db| {
            result_code(db.file.truncate(size.max(0) as u64))
        })
    }
}

unsafe extern "C" fn net_sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    let data_only = flags & ffi::SQLITE_SYNC_DATAONLY != 0;
    // SAFETY: `file` is ours.
    unsafe {
        with_db(file, ffi::SQLITE_IOERR_FSYNC, |db| {
            result_code(db.file.sync(data_only))
        })
    }
}

unsafe extern "C" fn net_file_size(
    file: *mut ffi::sqlite3_file,
    size: *mut ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: `file` is ours; SQLite passes a valid out-pointer.
    unsafe {
        with_db(file, ffi::SQLITE_IOERR_FSTAT, |db| match db.file.size() {
            Ok(n) => {
                *size = n as ffi::sqlite3_int64;
                ffi::SQLITE_OK
            }
            Err(e) => result_code(Err(e)),
        })
    }
}

unsafe extern "C" fn net_lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: `file` is ours.
    unsafe {
        with_db(
            file,
            ffi::SQLITE_IOERR_LOCK,
            |db| match Level::from_sqlite(level) {
                Some(level) => result_code(db.file.lock(level)),
                None => ffi::SQLITE_MISUSE,
            },
        )
    }
}

unsafe extern "C" fn net_unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: `file` is ours.
    unsafe {
        with_db(
            file,
            ffi::SQLITE_IOERR_UNLOCK,
            |db| match Level::from_sqlite(level) {
                Some(level) => result_code(db.file.unlock(level)),
                None => ffi::SQLITE_MISUSE,
            },
        )
    }
}

unsafe extern "C" fn net_check_reserved_lock(
    file: *mut ffi::sqlite3_file,
    res_out: *mut c_int,
) -> c_int {
    // SAFETY: `file` is ours; SQLite passes a valid out-pointer.
    unsafe {
        with_db(file, ffi::SQLITE_IOERR_CHECKRESERVEDLOCK, |db| {
            match db.file.reserved_held() {
                Ok(held) => {
                    *res_out = c_int::from(held);
                    ffi::SQLITE_OK
                }
                Err(e) => result_code(Err(e)),
            }
        })
    }
}

unsafe extern "C" fn net_file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    // SAFETY: `file` is ours; for each opcode SQLite documents the type `arg` points to, and
    // we write only that type.
    unsafe {
        with_db(file, ffi::SQLITE_NOTFOUND, |db| match op {
            ffi::SQLITE_FCNTL_LOCKSTATE => {
                *(arg as *mut c_int) = db.file.level() as c_int;
                ffi::SQLITE_OK
            }
            ffi::SQLITE_FCNTL_VFSNAME => {
                *(arg as *mut *mut c_char) = sqlite_string("netfs(network)/unix");
                ffi::SQLITE_OK
            }
            ffi::SQLITE_FCNTL_HAS_MOVED => {
                *(arg as *mut c_int) = c_int::from(db.file.has_moved());
                ffi::SQLITE_OK
            }
            ffi::SQLITE_FCNTL_POWERSAFE_OVERWRITE => {
                let v = arg as *mut c_int;
                if *v < 0 {
                    *v = c_int::from(db.file.powersafe_overwrite());
                } else {
                    db.file.set_powersafe_overwrite(*v != 0);
                }
                ffi::SQLITE_OK
            }
            ffi::SQLITE_FCNTL_PRAGMA => pin_journal_mode(arg as *mut *mut c_char),
            NETFS_FCNTL_NETWORK_MODE => {
                *(arg as *mut c_int) = 1;
                ffi::SQLITE_OK
            }
            _ => ffi::SQLITE_NOTFOUND,
        })
    }
}

/// `PRAGMA journal_mode=X` in network mode: any mode but the pinned one is answered with the
/// pinned one and not applied (WAL needs shared memory; TRUNCATE and PERSIST would keep a
/// journal descriptor open across transactions, whose cached bytes can go stale; MEMORY and
/// OFF lose atomicity on a crash).
///
/// # Safety
/// `args` is SQLite's `SQLITE_FCNTL_PRAGMA` argument array: [result, name, value-or-null].
unsafe fn pin_journal_mode(args: *mut *mut c_char) -> c_int {
    // SAFETY: as required.
    let (name, value) = unsafe { (*args.add(1), *args.add(2)) };
    // SAFETY: SQLite passes NUL-terminated strings (the value may be null).
    let name = unsafe { CStr::from_ptr(name) }.to_string_lossy();
    if !name.eq_ignore_ascii_case("journal_mode") || value.is_null() {
        return ffi::SQLITE_NOTFOUND;
    }
    // SAFETY: non-null and NUL-terminated.
    let value = unsafe { CStr::from_ptr(value) }
        .to_string_lossy()
        .to_ascii_lowercase();
    if value == PINNED_JOURNAL_MODE {
        return ffi::SQLITE_NOTFOUND;
    }
    tracing::info!(requested = %value, kept = PINNED_JOURNAL_MODE, "journal_mode change ignored in network mode");
    // SAFETY: SQLite frees a result string placed in args[0] with sqlite3_free.
    unsafe { *args = sqlite_string(PINNED_JOURNAL_MODE) };
    ffi::SQLITE_OK
}

unsafe extern "C" fn sector_size(_file: *mut ffi::sqlite3_file) -> c_int {
    // The unix VFS's default; SQLite pads journal records to it.
    4096
}

unsafe extern "C" fn net_device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: `file` is ours.
    unsafe {
        with_db(file, 0, |db| {
            if db.file.powersafe_overwrite() {
                ffi::SQLITE_IOCAP_POWERSAFE_OVERWRITE
            } else {
                0
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The journal of a network-mode database: the base VFS's file, fenced. Version 1 of the method
// table, as for the database: SQLite maps no journal into memory.

static JOURNAL_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(journal_close),
    xRead: Some(journal_read),
    xWrite: Some(journal_write),
    xTruncate: Some(journal_truncate),
    xSync: Some(journal_sync),
    xFileSize: Some(journal_file_size),
    xLock: Some(journal_lock),
    xUnlock: Some(journal_unlock),
    xCheckReservedLock: Some(journal_check_reserved_lock),
    xFileControl: Some(journal_file_control),
    xSectorSize: Some(journal_sector_size),
    xDeviceCharacteristics: Some(journal_device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

/// SQLITE_IOERR_LOCK (as for the database under a lost lease) if no connection of this
/// process may change the journal at `path` now; `what` names the refused change.
fn journal_fence(path: &Path, what: &str) -> Option<c_int> {
    let name = path.to_string_lossy();
    if crate::journal::may_write(&name, super::os::boot_time()) {
        return None;
    }
    tracing::error!(journal = %name, refused = what, "journal change refused: no connection here holds the write lock under a live lease (taken over after a stall or an outage?)");
    Some(ffi::SQLITE_IOERR_LOCK)
}

/// The base file inside a journal and its method table.
///
/// # Safety
/// `file` must be a journal opened by `open_journal` and not yet closed.
unsafe fn native_journal(
    file: *mut ffi::sqlite3_file,
) -> (*mut ffi::sqlite3_file, &'static ffi::sqlite3_io_methods) {
    // SAFETY: as required, the base file object was opened in place and its method table is
    // the base VFS's static table.
    unsafe {
        let native = &raw mut (*(file as *mut JournalShimFile)).native;
        (native, &*(*native).pMethods)
    }
}

/// The shim's state of the journal `file`.
///
/// # Safety
/// As for [`native_journal`]; SQLite serialises calls on one file, so the reference is unique.
unsafe fn open_journal_state<'a>(file: *mut ffi::sqlite3_file) -> &'a mut OpenJournal {
    // SAFETY: as required, `journal` is the live Box set by `open_journal`.
    unsafe { &mut *(*(file as *mut JournalShimFile)).journal }
}

/// The fence for a change to the journal `file`: `None` if it may go ahead.
///
/// # Safety
/// As for [`native_journal`].
unsafe fn journal_change_refused(file: *mut ffi::sqlite3_file, what: &str) -> Option<c_int> {
    // SAFETY: as required.
    let journal = unsafe { open_journal_state(file) };
    let refused = guarded(ffi::SQLITE_IOERR_LOCK, || {
        journal_fence(Path::new(journal.name()), what).unwrap_or(ffi::SQLITE_OK)
    });
    (refused != ffi::SQLITE_OK).then_some(refused)
}

/// Passes `rc`, the base file's answer to `what`, on; a failure makes the journal untrusted.
///
/// # Safety
/// As for [`native_journal`].
unsafe fn journal_outcome(file: *mut ffi::sqlite3_file, what: &'static str, rc: c_int) -> c_int {
    if rc != ffi::SQLITE_OK {
        // SAFETY: as required.
        let journal = unsafe { open_journal_state(file) };
        guarded(rc, || {
            journal.note_failure(what);
            rc
        });
    }
    rc
}

/// `fail_with` if a change to the journal `file` has failed (see `journal::OpenJournal`).
///
/// # Safety
/// As for [`native_journal`].
unsafe fn journal_untrusted(file: *mut ffi::sqlite3_file, fail_with: c_int) -> Option<c_int> {
    // SAFETY: as required.
    let trusted = unsafe { open_journal_state(file) }.trusted();
    (!trusted).then_some(fail_with)
}

unsafe extern "C" fn journal_close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite closes a journal `open_journal` set up, once; the state's Box is taken
    // back and the base file closed by its own method.
    unsafe {
        let shim = file as *mut JournalShimFile;
        let journal = (*shim).journal;
        (*shim).journal = ptr::null_mut();
        if !journal.is_null() {
            drop(Box::from_raw(journal));
        }
        let (native, methods) = native_journal(file);
        methods.xClose.expect("base xClose")(native)
    }
}

/// Journal methods that go to the base file as they are.
macro_rules! forward_to_base_journal {
    ($($callback:ident => $method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        unsafe extern "C" fn $callback(file: *mut ffi::sqlite3_file, $($arg: $ty),*) -> c_int {
            // SAFETY: SQLite calls this on a journal `open_journal` set up; its arguments go
            // unchanged to the base file's own method.
            unsafe {
                let (native, methods) = native_journal(file);
                methods.$method.expect(concat!("base ", stringify!($method)))(native, $($arg),*)
            }
        }
    )*};
}

forward_to_base_journal! {
    journal_file_size => xFileSize(size: *mut ffi::sqlite3_int64);
    journal_lock => xLock(level: c_int);
    journal_unlock => xUnlock(level: c_int);
    journal_check_reserved_lock => xCheckReservedLock(res_out: *mut c_int);
    journal_file_control => xFileControl(op: c_int, arg: *mut c_void);
    journal_sector_size => xSectorSize();
    journal_device_characteristics => xDeviceCharacteristics();
}

unsafe extern "C" fn journal_read(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: `file` is a journal; then forwarding SQLite's arguments to the base file, and
    // for a short read, SQLite's buffer of `amount` writable bytes.
    unsafe {
        if let Some(rc) = journal_untrusted(file, ffi::SQLITE_IOERR_READ) {
            return rc;
        }
        let (native, methods) = native_journal(file);
        let rc = methods.xRead.expect("base xRead")(native, buf, amount, offset);
        if rc == ffi::SQLITE_IOERR_CORRUPTFS {
            // The base VFS answers a read's EIO with "the filesystem is corrupt", which SQLite
            // reports as "database disk image is malformed". From a network client, EIO is
            // the connection, not the disk (sshfs fails every descriptor opened before a
            // reconnect with EIO; seen in the sshfs outage test after the server came back).
            tracing::warn!("journal read failed with EIO; reported as an I/O error");
            return ffi::SQLITE_IOERR_READ;
        }
        if rc != ffi::SQLITE_IOERR_SHORT_READ {
            return rc;
        }
        let journal = open_journal_state(file);
        let buf = std::slice::from_raw_parts_mut(buf as *mut u8, amount.max(0) as usize);
        guarded(ffi::SQLITE_IOERR_READ, || {
            match journal.read_again_after_short_read(buf, offset as u64) {
                Ok(true) => ffi::SQLITE_IOERR_SHORT_READ,
                Ok(false) => {
                    tracing::debug!(
                        journal = journal.name(),
                        offset,
                        amount,
                        "short journal read inside the server's file; read again in full"
                    );
                    ffi::SQLITE_OK
                }
                Err(e) => {
                    tracing::warn!(error = %e, "journal read cut short by the client");
                    ffi::SQLITE_IOERR_READ
                }
            }
        })
    }
}

unsafe extern "C" fn journal_write(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: `file` is a journal; then forwarding SQLite's arguments to the base file.
    unsafe {
        if let Some(refused) = journal_change_refused(file, "write") {
            return refused;
        }
        let (native, methods) = native_journal(file);
        let rc = methods.xWrite.expect("base xWrite")(native, buf, amount, offset);
        journal_outcome(file, "write", rc)
    }
}

unsafe extern "C" fn journal_truncate(
    file: *mut ffi::sqlite3_file,
    size: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: as for journal_write.
    unsafe {
        if let Some(refused) = journal_change_refused(file, "truncate") {
            return refused;
        }
        let (native, methods) = native_journal(file);
        let rc = methods.xTruncate.expect("base xTruncate")(native, size);
        journal_outcome(file, "truncate", rc)
    }
}

unsafe extern "C" fn journal_sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    // SAFETY: as for journal_read. A sync after a failed one is not asked: sshfs reports a
    // refused write to one fsync only, and the next would say all is well.
    unsafe {
        if let Some(rc) = journal_untrusted(file, ffi::SQLITE_IOERR_FSYNC) {
            return rc;
        }
        let (native, methods) = native_journal(file);
        let rc = methods.xSync.expect("base xSync")(native, flags);
        journal_outcome(file, "sync", rc)
    }
}

// ---------------------------------------------------------------------------------------------
// Refused opens: every method fails with the refusal's code, except the header read SQLite
// makes inside sqlite3_open (zeros, so the open gets as far as the auto-extension that reports
// the refusal) and xClose.

static REFUSED_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(refused_close),
    xRead: Some(refused_read),
    xWrite: Some(refused_write),
    xTruncate: Some(refused_truncate),
    xSync: Some(refused_sync),
    xFileSize: Some(refused_file_size),
    xLock: Some(refused_lock),
    xUnlock: Some(refused_unlock),
    xCheckReservedLock: Some(refused_check_reserved_lock),
    xFileControl: Some(refused_file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(refused_device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

/// # Safety
/// `file` must be a refused file set up by `x_open` and not yet closed.
unsafe fn refusal<'a>(file: *mut ffi::sqlite3_file) -> Option<&'a Refusal> {
    // SAFETY: as required.
    unsafe { (*(file as *mut RefusedShimFile)).refusal.as_ref() }
}

fn refusal_code(r: Option<&Refusal>) -> c_int {
    match r.map(|r| r.code) {
        Some(Refused::ReadOnly) => ffi::SQLITE_READONLY,
        _ => ffi::SQLITE_CANTOPEN,
    }
}

unsafe extern "C" fn refused_close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: called once by SQLite; the Box came from x_open.
    unsafe {
        let shim = file as *mut RefusedShimFile;
        let r = (*shim).refusal;
        (*shim).refusal = ptr::null_mut();
        if !r.is_null() {
            drop(Box::from_raw(r));
        }
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn refused_read(
    _file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amount: c_int,
    _offset: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: SQLite passes `amount` writable bytes.
    unsafe { ptr::write_bytes(buf as *mut u8, 0, amount.max(0) as usize) };
    ffi::SQLITE_IOERR_SHORT_READ
}

unsafe extern "C" fn refused_write(
    file: *mut ffi::sqlite3_file,
    _b: *const c_void,
    _n: c_int,
    _o: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: `file` is a refused file.
    refusal_code(unsafe { refusal(file) })
}

unsafe extern "C" fn refused_truncate(
    file: *mut ffi::sqlite3_file,
    _size: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: `file` is a refused file.
    refusal_code(unsafe { refusal(file) })
}

unsafe extern "C" fn refused_sync(file: *mut ffi::sqlite3_file, _flags: c_int) -> c_int {
    // SAFETY: `file` is a refused file.
    refusal_code(unsafe { refusal(file) })
}

unsafe extern "C" fn refused_file_size(
    _file: *mut ffi::sqlite3_file,
    size: *mut ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: SQLite passes a valid out-pointer.
    unsafe { *size = 0 };
    ffi::SQLITE_OK
}

unsafe extern "C" fn refused_lock(file: *mut ffi::sqlite3_file, _level: c_int) -> c_int {
    // SAFETY: `file` is a refused file.
    refusal_code(unsafe { refusal(file) })
}

unsafe extern "C" fn refused_unlock(_file: *mut ffi::sqlite3_file, _level: c_int) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn refused_check_reserved_lock(
    _file: *mut ffi::sqlite3_file,
    res_out: *mut c_int,
) -> c_int {
    // SAFETY: SQLite passes a valid out-pointer.
    unsafe { *res_out = 0 };
    ffi::SQLITE_OK
}

unsafe extern "C" fn refused_file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    if op != NETFS_FCNTL_OPEN_ERROR {
        return ffi::SQLITE_NOTFOUND;
    }
    // SAFETY: `file` is a refused file; the opcode is ours and its argument is the report
    // struct of `report_refused_open`.
    unsafe {
        let Some(r) = refusal(file) else {
            return ffi::SQLITE_NOTFOUND;
        };
        let report = arg as *mut OpenErrorReport;
        (*report).code = refusal_code(Some(r));
        (*report).message = sqlite_string(&r.message);
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn refused_device_characteristics(_file: *mut ffi::sqlite3_file) -> c_int {
    0
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
