//! The one generic file shim: a `#[repr(C)]` allocation layout and one `sqlite3_io_methods`
//! table per [`SqliteFile`] type, built from generic `extern "C"` callbacks. Every callback
//! has the same shape and exists once: check the pointers SQLite passed (null:
//! `SQLITE_INTERNAL`; a closed file: `SQLITE_MISUSE`), run the file's safe method under
//! [`guarded`] (a panic never unwinds into C), and flatten its result into a result code
//! ([`FileError::code`]).
//!
//! Also the safe handles a file gets instead of pointers: [`BaseFile`] (the base VFS's file
//! in the same allocation), [`FileControl`] (a file-control request, decoded on demand),
//! [`TextOut`] and [`ReportOut`] (answers SQLite frees).
//!
//! # Ownership of a file allocation
//! SQLite allocates `szOsFile` bytes per open file, passes them to `xOpen`, and calls `xClose`
//! once before it frees them. A [`ShimFile<T>`] there holds SQLite's `sqlite3_file` header
//! first (the "subclass" layout SQLite expects), then a `Box<T>` pointer that [`install`]
//! writes and `xClose` takes back, then room for the base VFS's own file object, used when
//! `T::WRAPS_BASE` (the journal) and closed by `xClose` after `T` is dropped.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_int, c_void};
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;

use libsqlite3_sys as ffi;

use super::file::{FileError, Request, SqliteFile, result_code};
use crate::lock::protocol::Level;

/// Private file-control opcodes (SQLite's own are small numbers).
pub(super) const NETFS_FCNTL_OPEN_ERROR: c_int = 0x4e46_5301;
pub(super) const NETFS_FCNTL_NETWORK_MODE: c_int = 0x4e46_5302;

/// Runs `f`, turning a panic into `fallback`: nothing unwinds into SQLite.
pub(super) fn guarded<R>(fallback: R, f: impl FnOnce() -> R) -> R {
    catch_unwind(AssertUnwindSafe(|| {
        #[cfg(test)]
        super::tests::injected_panic();
        f()
    }))
    .unwrap_or_else(|_| {
        tracing::error!("panic inside a VFS callback; reported to SQLite as an error");
        fallback
    })
}

/// A copy of `s` in SQLite's allocator (SQLite frees it with `sqlite3_free`); null if out of
/// memory.
pub(super) fn sqlite_string(s: &str) -> *mut c_char {
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

/// The layout of every file allocation this VFS fills (see the module documentation).
#[repr(C)]
pub(super) struct ShimFile<T> {
    /// Must be first: SQLite sees only this header.
    header: ffi::sqlite3_file,
    state: *mut T,
    /// The base VFS's file object: from here on, the base VFS's `szOsFile` bytes are its own.
    base: ffi::sqlite3_file,
}

/// The bytes a file allocation needs for every kind of file, with a base file of
/// `base_size` bytes.
pub(super) fn allocation_size(base_size: c_int) -> c_int {
    // The state pointer's type does not change the layout.
    let shim = std::mem::offset_of!(ShimFile<()>, base) as c_int + base_size;
    shim.max(base_size)
}

/// The place in `file`'s allocation where a base file is opened.
///
/// # Safety
/// `file` must point to an allocation of [`allocation_size`] bytes.
pub(super) unsafe fn base_slot(file: *mut ffi::sqlite3_file) -> *mut ffi::sqlite3_file {
    // SAFETY: as required, the slot lies inside the allocation.
    unsafe { &raw mut (*(file as *mut ShimFile<()>)).base }
}

/// Makes `file` a `T`: writes the header with `T`'s method table, and the state.
///
/// # Safety
/// `file` must point to an allocation of [`allocation_size`] bytes that SQLite passed to
/// `xOpen`; if `T::WRAPS_BASE`, its base slot must hold an open base file.
pub(super) unsafe fn install<T: SqliteFile>(file: *mut ffi::sqlite3_file, state: Box<T>) {
    let shim = file as *mut ShimFile<T>;
    // SAFETY: as required; SQLite hands the allocation to us until xClose, which takes the
    // Box back. The header and state fields are written without reading what was there.
    unsafe {
        ptr::write(&raw mut (*shim).state, Box::into_raw(state));
        ptr::write(
            &raw mut (*shim).header,
            ffi::sqlite3_file {
                pMethods: methods::<T>(),
            },
        );
    }
}

/// `T`'s method table. Version 1: no `xShm*` (so SQLite will not use WAL) and no `xFetch`
/// (no memory-mapped I/O, which would bypass the coherency reopen).
fn methods<T: SqliteFile>() -> &'static ffi::sqlite3_io_methods {
    struct Table<T>(PhantomData<T>);
    impl<T: SqliteFile> Table<T> {
        const METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
            iVersion: 1,
            xClose: Some(x_close::<T>),
            xRead: Some(x_read::<T>),
            xWrite: Some(x_write::<T>),
            xTruncate: Some(x_truncate::<T>),
            xSync: Some(x_sync::<T>),
            xFileSize: Some(x_file_size::<T>),
            xLock: Some(x_lock::<T>),
            xUnlock: Some(x_unlock::<T>),
            xCheckReservedLock: Some(x_check_reserved_lock::<T>),
            xFileControl: Some(x_file_control::<T>),
            xSectorSize: Some(x_sector_size::<T>),
            xDeviceCharacteristics: Some(x_device_characteristics::<T>),
            xShmMap: None,
            xShmLock: None,
            xShmBarrier: None,
            xShmUnmap: None,
            xFetch: None,
            xUnfetch: None,
        };
    }
    &Table::<T>::METHODS
}

/// Runs `f` on the state behind `file`, guarded: the shape of every callback.
///
/// # Safety
/// `file` must be null or a file [`install`]ed as a `T` (its state null once closed). SQLite
/// serialises calls on one file, so the reference is unique for the call.
unsafe fn with_state<T: SqliteFile>(
    file: *mut ffi::sqlite3_file,
    fallback: c_int,
    f: impl FnOnce(&mut T) -> c_int,
) -> c_int {
    if file.is_null() {
        return ffi::SQLITE_INTERNAL;
    }
    // SAFETY: as required.
    match unsafe { (*(file as *mut ShimFile<T>)).state.as_mut() } {
        Some(state) => guarded(fallback, || f(state)),
        None => ffi::SQLITE_MISUSE,
    }
}

unsafe extern "C" fn x_close<T: SqliteFile>(file: *mut ffi::sqlite3_file) -> c_int {
    if file.is_null() {
        return ffi::SQLITE_INTERNAL;
    }
    let shim = file as *mut ShimFile<T>;
    // SAFETY: SQLite calls xClose once on a file `install` set up; the pointer is taken and
    // cleared, so nothing can use the state again.
    let state = unsafe { std::mem::replace(&mut (*shim).state, ptr::null_mut()) };
    let mut rc = ffi::SQLITE_OK;
    if !state.is_null() {
        rc = guarded(ffi::SQLITE_IOERR_CLOSE, || {
            // SAFETY: `state` came from Box::into_raw in `install` and is dropped once.
            drop(unsafe { Box::from_raw(state) });
            ffi::SQLITE_OK
        });
    }
    if T::WRAPS_BASE {
        // SAFETY: the base file was opened in its slot before `install` (as `install`
        // requires) and is closed here once, by its own method, after the state that used it.
        let base_rc = unsafe {
            let base = &raw mut (*shim).base;
            match (*base).pMethods.as_ref().and_then(|m| m.xClose) {
                Some(close) => close(base),
                None => ffi::SQLITE_OK,
            }
        };
        if rc == ffi::SQLITE_OK {
            rc = base_rc;
        }
    }
    rc
}

unsafe extern "C" fn x_read<T: SqliteFile>(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    if buf.is_null() || amount < 0 || offset < 0 {
        return ffi::SQLITE_INTERNAL;
    }
    // SAFETY: SQLite passes a buffer of `amount` writable bytes, unused elsewhere during the
    // call; `file` is a `T`.
    unsafe {
        let buf = std::slice::from_raw_parts_mut(buf as *mut u8, amount as usize);
        with_state(file, ffi::SQLITE_IOERR_READ, |f: &mut T| {
            result_code(f.read(buf, offset as u64))
        })
    }
}

unsafe extern "C" fn x_write<T: SqliteFile>(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    if buf.is_null() || amount < 0 || offset < 0 {
        return ffi::SQLITE_INTERNAL;
    }
    // SAFETY: SQLite passes `amount` readable bytes; `file` is a `T`.
    unsafe {
        let buf = std::slice::from_raw_parts(buf as *const u8, amount as usize);
        with_state(file, ffi::SQLITE_IOERR_WRITE, |f: &mut T| {
            result_code(f.write(buf, offset as u64))
        })
    }
}

unsafe extern "C" fn x_truncate<T: SqliteFile>(
    file: *mut ffi::sqlite3_file,
    size: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: `file` is a `T`.
    unsafe {
        with_state(file, ffi::SQLITE_IOERR_TRUNCATE, |f: &mut T| {
            result_code(f.truncate(size.max(0) as u64))
        })
    }
}

unsafe extern "C" fn x_sync<T: SqliteFile>(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    // SAFETY: `file` is a `T`.
    unsafe {
        with_state(file, ffi::SQLITE_IOERR_FSYNC, |f: &mut T| {
            result_code(f.sync(flags))
        })
    }
}

unsafe extern "C" fn x_file_size<T: SqliteFile>(
    file: *mut ffi::sqlite3_file,
    size: *mut ffi::sqlite3_int64,
) -> c_int {
    if size.is_null() {
        return ffi::SQLITE_INTERNAL;
    }
    // SAFETY: `file` is a `T`; `size` is SQLite's non-null out-pointer.
    unsafe {
        with_state(file, ffi::SQLITE_IOERR_FSTAT, |f: &mut T| {
            match f.file_size() {
                Ok(n) => {
                    *size = n as ffi::sqlite3_int64;
                    ffi::SQLITE_OK
                }
                Err(e) => e.code(),
            }
        })
    }
}

unsafe extern "C" fn x_lock<T: SqliteFile>(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: `file` is a `T`.
    unsafe {
        with_state(
            file,
            ffi::SQLITE_IOERR_LOCK,
            |f: &mut T| match Level::from_sqlite(level) {
                Some(level) => result_code(f.lock(level)),
                None => ffi::SQLITE_MISUSE,
            },
        )
    }
}

unsafe extern "C" fn x_unlock<T: SqliteFile>(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: `file` is a `T`.
    unsafe {
        with_state(
            file,
            ffi::SQLITE_IOERR_UNLOCK,
            |f: &mut T| match Level::from_sqlite(level) {
                Some(level) => result_code(f.unlock(level)),
                None => ffi::SQLITE_MISUSE,
            },
        )
    }
}

unsafe extern "C" fn x_check_reserved_lock<T: SqliteFile>(
    file: *mut ffi::sqlite3_file,
    res_out: *mut c_int,
) -> c_int {
    if res_out.is_null() {
        return ffi::SQLITE_INTERNAL;
    }
    // SAFETY: `file` is a `T`; `res_out` is SQLite's non-null out-pointer.
    unsafe {
        with_state(
            file,
            ffi::SQLITE_IOERR_CHECKRESERVEDLOCK,
            |f: &mut T| match f.reserved_held() {
                Ok(held) => {
                    *res_out = c_int::from(held);
                    ffi::SQLITE_OK
                }
                Err(e) => e.code(),
            },
        )
    }
}

unsafe extern "C" fn x_file_control<T: SqliteFile>(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    let control = FileControl {
        op,
        arg,
        _call: PhantomData,
    };
    // SAFETY: `file` is a `T`; `op` and `arg` are SQLite's, as FileControl requires.
    unsafe {
        with_state(file, ffi::SQLITE_NOTFOUND, |f: &mut T| {
            match f.file_control(control) {
                Ok(true) => ffi::SQLITE_OK,
                Ok(false) => ffi::SQLITE_NOTFOUND,
                Err(e) => e.code(),
            }
        })
    }
}

unsafe extern "C" fn x_sector_size<T: SqliteFile>(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: `file` is a `T`.
    unsafe { with_state(file, 4096, |f: &mut T| f.sector_size()) }
}

unsafe extern "C" fn x_device_characteristics<T: SqliteFile>(
    file: *mut ffi::sqlite3_file,
) -> c_int {
    // SAFETY: `file` is a `T`.
    unsafe { with_state(file, 0, |f: &mut T| f.device_characteristics()) }
}

/// One `xFileControl` call's opcode and argument, valid for that call only (the lifetime).
/// Decoded on demand ([`FileControl::request`]) or passed on whole ([`BaseFile::file_control`]).
pub struct FileControl<'call> {
    op: c_int,
    arg: *mut c_void,
    _call: PhantomData<&'call mut c_void>,
}

impl<'call> FileControl<'call> {
    /// The request, with its argument typed as SQLite documents it for the opcode.
    pub fn request(self) -> Request<'call> {
        if self.arg.is_null() {
            return Request::Other;
        }
        // SAFETY: for each opcode matched, SQLite (or this crate's caller, for its own
        // opcodes) passes the documented type behind a non-null `arg`, valid for the call.
        unsafe {
            match self.op {
                ffi::SQLITE_FCNTL_LOCKSTATE => Request::LockState(&mut *(self.arg as *mut c_int)),
                ffi::SQLITE_FCNTL_VFSNAME => Request::VfsName(TextOut {
                    out: self.arg as *mut *mut c_char,
                    _call: PhantomData,
                }),
                ffi::SQLITE_FCNTL_HAS_MOVED => Request::HasMoved(&mut *(self.arg as *mut c_int)),
                ffi::SQLITE_FCNTL_POWERSAFE_OVERWRITE => {
                    Request::PowersafeOverwrite(&mut *(self.arg as *mut c_int))
                }
                ffi::SQLITE_FCNTL_PRAGMA => {
                    // [result, name, value-or-null]
                    let args = self.arg as *mut *mut c_char;
                    let (name, value) = (*args.add(1), *args.add(2));
                    if name.is_null() {
                        return Request::Other;
                    }
                    let text = |p: *mut c_char| CStr::from_ptr(p).to_string_lossy();
                    let name = text(name);
                    let value = (!value.is_null()).then(|| text(value));
                    Request::Pragma {
                        name,
                        value,
                        result: TextOut {
                            out: args,
                            _call: PhantomData,
                        },
                    }
                }
                NETFS_FCNTL_NETWORK_MODE => Request::NetworkMode(&mut *(self.arg as *mut c_int)),
                NETFS_FCNTL_OPEN_ERROR => Request::OpenError(ReportOut {
                    report: &mut *(self.arg as *mut OpenErrorReport),
                }),
                _ => Request::Other,
            }
        }
    }
}

/// A string answer SQLite frees with `sqlite3_free` (a VFS name, a pragma's result).
pub struct TextOut<'call> {
    out: *mut *mut c_char,
    _call: PhantomData<&'call mut c_void>,
}

impl TextOut<'_> {
    pub fn set(self, text: &str) {
        // SAFETY: `out` is the non-null out-pointer of the request that made this TextOut,
        // valid for the call; SQLite takes ownership of the string.
        unsafe { *self.out = sqlite_string(text) };
    }
}

/// Filled by the refused file's `xFileControl(NETFS_FCNTL_OPEN_ERROR)`.
#[repr(C)]
pub(super) struct OpenErrorReport {
    pub(super) code: c_int,
    pub(super) message: *mut c_char,
}

/// The answer to this crate's open-error request: a result code and a message.
pub struct ReportOut<'call> {
    report: &'call mut OpenErrorReport,
}

impl ReportOut<'_> {
    pub fn set(self, code: c_int, message: &str) {
        self.report.code = code;
        self.report.message = sqlite_string(message);
    }
}

/// The base VFS's file object inside a shim allocation, opened by the base VFS; its methods
/// forward to the base file's own method table and pass its result codes on.
pub struct BaseFile {
    file: *mut ffi::sqlite3_file,
}

impl BaseFile {
    /// # Safety
    /// `file` must be a base file opened successfully in its slot of a shim allocation, and
    /// stay open while the returned value lives (the shim closes it after dropping the state
    /// that owns this value).
    pub(super) unsafe fn new(file: *mut ffi::sqlite3_file) -> BaseFile {
        BaseFile { file }
    }

    fn methods(&self) -> &ffi::sqlite3_io_methods {
        // SAFETY: an open base file's method table is the base VFS's static table.
        unsafe { &*(*self.file).pMethods }
    }

    pub fn read(&mut self, buf: &mut [u8], offset: u64) -> Result<(), FileError> {
        let read = self.methods().xRead.expect("base xRead");
        // SAFETY: the open base file, and a buffer of the length passed.
        FileError::check(unsafe {
            read(
                self.file,
                buf.as_mut_ptr() as *mut c_void,
                buf.len() as c_int,
                offset as ffi::sqlite3_int64,
            )
        })
    }

    pub fn write(&mut self, buf: &[u8], offset: u64) -> Result<(), FileError> {
        let write = self.methods().xWrite.expect("base xWrite");
        // SAFETY: as for `read`; the base file only reads the buffer.
        FileError::check(unsafe {
            write(
                self.file,
                buf.as_ptr() as *const c_void,
                buf.len() as c_int,
                offset as ffi::sqlite3_int64,
            )
        })
    }

    pub fn truncate(&mut self, size: u64) -> Result<(), FileError> {
        let truncate = self.methods().xTruncate.expect("base xTruncate");
        // SAFETY: the open base file.
        FileError::check(unsafe { truncate(self.file, size as ffi::sqlite3_int64) })
    }

    pub fn sync(&mut self, flags: c_int) -> Result<(), FileError> {
        let sync = self.methods().xSync.expect("base xSync");
        // SAFETY: the open base file.
        FileError::check(unsafe { sync(self.file, flags) })
    }

    pub fn file_size(&mut self) -> Result<u64, FileError> {
        let file_size = self.methods().xFileSize.expect("base xFileSize");
        let mut size: ffi::sqlite3_int64 = 0;
        // SAFETY: the open base file and an out-pointer to a local.
        FileError::check(unsafe { file_size(self.file, &mut size) })?;
        Ok(size.max(0) as u64)
    }

    pub fn lock(&mut self, level: Level) -> Result<(), FileError> {
        let lock = self.methods().xLock.expect("base xLock");
        // SAFETY: the open base file.
        FileError::check(unsafe { lock(self.file, level as c_int) })
    }

    pub fn unlock(&mut self, level: Level) -> Result<(), FileError> {
        let unlock = self.methods().xUnlock.expect("base xUnlock");
        // SAFETY: the open base file.
        FileError::check(unsafe { unlock(self.file, level as c_int) })
    }

    pub fn reserved_held(&mut self) -> Result<bool, FileError> {
        let check = self
            .methods()
            .xCheckReservedLock
            .expect("base xCheckReservedLock");
        let mut held: c_int = 0;
        // SAFETY: the open base file and an out-pointer to a local.
        FileError::check(unsafe { check(self.file, &mut held) })?;
        Ok(held != 0)
    }

    /// Passes the whole request on, as SQLite made it.
    pub fn file_control(&mut self, control: FileControl<'_>) -> Result<bool, FileError> {
        let file_control = self.methods().xFileControl.expect("base xFileControl");
        // SAFETY: the open base file, with the opcode and argument of the call in progress
        // (the FileControl's lifetime), unchanged.
        match unsafe { file_control(self.file, control.op, control.arg) } {
            ffi::SQLITE_NOTFOUND => Ok(false),
            rc => FileError::check(rc).map(|()| true),
        }
    }

    pub fn sector_size(&mut self) -> c_int {
        let sector_size = self.methods().xSectorSize.expect("base xSectorSize");
        // SAFETY: the open base file.
        unsafe { sector_size(self.file) }
    }

    pub fn device_characteristics(&mut self) -> c_int {
        let characteristics = self
            .methods()
            .xDeviceCharacteristics
            .expect("base xDeviceCharacteristics");
        // SAFETY: the open base file.
        unsafe { characteristics(self.file) }
    }
}
