//! Damaged databases: finding them (SQLite's `quick_check` or `integrity_check`, for
//! `sqlite-netfs doctor --check` and the `netfs_check=` URI parameter at open) and salvaging
//! what can still be read (`sqlite-netfs recover`).
//!
//! It owns the checks' verdicts and the salvage with its per-table report. It may use
//! `lock` (a SHARED lock of the protocol, held without a heartbeat while the damaged file is
//! copied), `lock::files` and `detect::mode` to find that lock, the crate's `Builder` to open through
//! the shim for `doctor --check`, and SQLite's own `unix` VFS for the work copies: `recover`
//! opens only its copy of the damaged file with SQLite, never the file itself.
//!
//! # Salvage (`recover`)
//! The bundled SQLite has no recovery extension (`sqlite3_recover_*` and the `sqlite_dbpage`
//! table it needs are not compiled into libsqlite3-sys's amalgamation), so salvage goes table
//! by table through SQL:
//! 1. the damaged file (with its journal and WAL, if any) is copied into a work directory
//!    beside the new file, so the broken file is only ever read; a database with a lock
//!    table is copied under network mode's read lock, so no writer of the protocol changes
//!    it meanwhile; SQLite then rolls back a hot journal or replays a WAL in the copy as it
//!    would at any open;
//! 2. the schema is read from `sqlite_master` (with `writable_schema` on, so an unparsable
//!    entry is skipped rather than failing every statement), the new file gets the old
//!    page size, encoding and header values, and every table is created from its SQL;
//! 3. rows are copied table by table (`walk`):
//!    - first a plain scan, which SQLite makes from the leftmost leaf without comparing keys,
//!      so damaged keys in an interior page do not misdirect it; a row that cannot be read
//!      (its record runs off its page) is stepped over with `OFFSET`, which moves the cursor
//!      without reading rows, or, with `partial`, kept with NULL for the values that cannot
//!      be read;
//!    - where the cursor itself cannot move on (a damaged page), seeks go on at the smallest
//!      rowid past the damage that a seek can reach (found by doubling, then bisecting), so
//!      one bad page costs only the rows on it;
//!    - where an index of the table still reads through, every rowid it lists that was not
//!      copied is looked up on its own, which reaches rows behind a damaged interior page;
//!    - where such an index is on plain columns, every row is checked against its entries:
//!      a row whose values disagree with all of them (or whose rowid it does not list) is
//!      counted as doubtful, and left out with `strict`. A damaged page can decode into a
//!      row nobody wrote (seen on what native SQLite left on sshfs); but writers without
//!      working locks also leave real rows their index lost track of, often hundreds, so
//!      leaving them out is the user's choice;
//! 4. indexes, views and triggers are created last (triggers so they do not fire on the copy);
//!    any that fail are reported;
//! 5. the new file passes `integrity_check` before it is moved into place, so a half-made
//!    file never appears under the new name, and never over a file made there meanwhile.
//!
//! Rows lost are counted exactly where an index of the table is still readable (its entry
//! count is the table's row count at the last commit); otherwise as the rows stepped over
//! plus the rowids the seeks skipped, which is exact for consecutive rowids (the usual
//! `INTEGER PRIMARY KEY`) and an upper bound otherwise. A skipped stretch open at either end
//! leaves only a lower bound.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags};

use crate::client_cache::SizeRefresh;
use crate::lock::files::{DirLockFiles, LockFileName, TableAccess, TokenStyle};
use crate::lock::protocol::Level;
use crate::lock::{Acquired, DbLock, SystemEnvironment};

/// Which check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    /// `PRAGMA quick_check`: every page and record, without comparing indexes to tables.
    Quick,
    /// `PRAGMA integrity_check`: also that every index matches its table.
    Full,
}

impl CheckKind {
    pub fn pragma(self) -> &'static str {
        match self {
            CheckKind::Quick => "quick_check",
            CheckKind::Full => "integrity_check",
        }
    }

    /// The check a `netfs_check=` value asks for (`None`: off).
    pub fn parse(value: &str, origin: &str) -> Result<Option<CheckKind>, String> {
        match value.trim().to_ascii_lowercase().as_str() {
            "quick" | "1" | "on" | "yes" | "true" => Ok(Some(CheckKind::Quick)),
            "full" | "integrity" => Ok(Some(CheckKind::Full)),
            "off" | "0" | "no" | "false" | "" => Ok(None),
            _ => Err(format!(
                "unknown value {value:?} for {origin} (expected quick, full or off)"
            )),
        }
    }
}

/// The URI parameter that asks for a check at open.
pub const CHECK_URI_PARAMETER: &str = "netfs_check";

/// What a check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Healthy,
    /// SQLite's description of the damage (up to 100 lines).
    Damaged(Vec<String>),
    /// Not an SQLite database at all (or its header is destroyed): nothing to salvage.
    NotADatabase(String),
}

/// Runs the check on `conn`'s main database. `Err` only when the check could not run (a
/// lock it could not get, an I/O error).
pub fn check(conn: &Connection, kind: CheckKind) -> rusqlite::Result<Verdict> {
    let lines = conn
        .prepare(&format!("PRAGMA main.{}(100)", kind.pragma()))
        .and_then(|mut stmt| {
            stmt.query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<String>>>()
        });
    match lines {
        Ok(lines) if lines.len() == 1 && lines[0] == "ok" => Ok(Verdict::Healthy),
        Ok(lines) => Ok(Verdict::Damaged(lines)),
        // Damage bad enough to stop the check itself.
        Err(e) => match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseCorrupt) => Ok(Verdict::Damaged(vec![e.to_string()])),
            Some(rusqlite::ErrorCode::NotADatabase) => Ok(Verdict::NotADatabase(e.to_string())),
            _ => Err(e),
        },
    }
}

/// Opens `db` through the shim (as any application would: a dead writer's hot journal is
/// rolled back as at any open) and runs the check under its lock. `lease` must be the
/// applications' lease: a reader that renews more slowly than they expect is judged dead
/// while it reads, and could read pages a writer changes under it. Errors name the file.
pub fn check_through_shim(db: &Path, kind: CheckKind, lease: Duration) -> Result<Verdict, String> {
    // One VFS per lease, so that checks with different leases can share a process.
    let vfs = format!("netfs-check-{}ms", lease.as_millis());
    crate::Builder::new()
        .vfs_name(&vfs)
        .lease(lease)
        .register()
        .map_err(|e| format!("cannot register the netfs VFS: {e}"))?;
    let uri = format!("{}?vfs={vfs}", file_uri(db));
    let conn = Connection::open_with_flags(
        &uri,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(|e| format!("cannot open {}: {e}", db.display()))?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    check(&conn, kind).map_err(|e| format!("{} of {}: {e}", kind.pragma(), db.display()))
}

/// The check `netfs_check=VALUE` asks for, run on a connection just opened (by the FFI layer's
/// open hook). `Err((code, message))` fails the open: the message names the damage and the
/// way out (`sqlite-netfs recover`).
pub(crate) fn check_at_open(
    conn: &Connection,
    value: &str,
    path: &str,
) -> Result<(), (i32, String)> {
    let kind = CheckKind::parse(value, &format!("URI parameter {CHECK_URI_PARAMETER}"))
        .map_err(|m| (rusqlite::ffi::SQLITE_CANTOPEN, format!("netfs: {m}")))?;
    let Some(kind) = kind else {
        return Ok(());
    };
    // A new connection has no busy handler; another connection's write lock must not turn
    // the check into "database is locked". The application sets its own timeout afterwards.
    let _ = conn.busy_timeout(Duration::from_secs(5));
    let verdict = check(conn, kind);
    let _ = conn.busy_timeout(Duration::ZERO);
    let messages = match verdict {
        Ok(Verdict::Healthy) => return Ok(()),
        Ok(Verdict::Damaged(m)) => m,
        Ok(Verdict::NotADatabase(m)) => {
            return Err((
                rusqlite::ffi::SQLITE_NOTADB,
                format!("netfs: {path} is not an SQLite database ({m})"),
            ));
        }
        Err(e) => {
            return Err((
                extended_code(&e),
                format!("netfs: the {} of {path} could not run: {e}", kind.pragma()),
            ));
        }
    };
    let shown: Vec<&str> = messages.iter().take(3).map(String::as_str).collect();
    Err((
        rusqlite::ffi::SQLITE_CORRUPT,
        format!(
            "netfs: {path} is damaged ({}: {}{}); salvage its readable rows into a new file with `sqlite-netfs recover {path} NEW.db`, then use the new file",
            kind.pragma(),
            shown.join("; "),
            if messages.len() > 3 { "; ..." } else { "" }
        ),
    ))
}

fn extended_code(e: &rusqlite::Error) -> i32 {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => f.extended_code,
        _ => rusqlite::ffi::SQLITE_ERROR,
    }
}

/// `path` as an SQLite `file:` URI that names exactly its bytes: `%`, `?` and `#`, and bytes
/// that are not UTF-8, are %-escaped (SQLite decodes `%HH` into the byte); everything else is
/// kept. An absolute path gets an empty authority (`file:///...`), so one that starts with
/// `//` is not read as `file://HOST/...`.
pub fn file_uri(path: &Path) -> String {
    let bytes = path.as_os_str().as_encoded_bytes();
    let authority = if bytes.starts_with(b"/") { "//" } else { "" };
    let mut uri = format!("file:{authority}");
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '%' => uri.push_str("%25"),
                '?' => uri.push_str("%3f"),
                '#' => uri.push_str("%23"),
                c => uri.push(c),
            }
        }
        for b in chunk.invalid() {
            uri.push_str(&format!("%{b:02x}"));
        }
    }
    uri
}

/// What `recover` did for one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRecovery {
    pub table: String,
    pub recovered: u64,
    /// Rows known lost (see `lost_basis`); `None` if nothing tells.
    pub lost: Option<u64>,
    /// How `lost` was counted: by an intact index (exact), from the rowids skipped (exact for
    /// consecutive rowids, else an upper bound), or `unknown`.
    pub lost_basis: String,
    /// Where `lost` is unknown: rows known unreadable all the same.
    pub lost_at_least: u64,
    /// Rows kept with their unreadable values set to NULL (only with `partial`), among
    /// `recovered`.
    pub partial: u64,
    /// Rows read whole whose values disagree with every entry an intact index holds for their
    /// rowid (or it holds none): damage that decoded into a row nobody wrote, or a real row
    /// the index lost track of (writers without working locks leave both). Kept, among
    /// `recovered`, unless `doubtful_left_out`.
    pub doubtful: u64,
    /// `RecoverOptions::strict`: the doubtful rows were left out (and count among the lost).
    pub doubtful_left_out: bool,
    /// The index every copied row was checked against, if one could be read whole.
    pub checked_against: Option<String>,
    /// Rowid ranges that could not be read, inclusive (`i64::MIN`/`i64::MAX`: open ends).
    pub damaged: Vec<(i64, i64)>,
    /// Why the table could not be (fully) copied, beyond damaged pages.
    pub error: Option<String>,
}

/// What `recover` did.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    pub tables: Vec<TableRecovery>,
    /// Indexes, views and triggers that could not be made again, with SQLite's reason.
    pub schema_errors: Vec<String>,
    /// Schema entries skipped on purpose (`sqlite_stat1`, which `ANALYZE` rebuilds).
    pub skipped: Vec<String>,
}

impl Recovery {
    pub fn rows_recovered(&self) -> u64 {
        self.tables.iter().map(|t| t.recovered).sum()
    }
}

/// How far a recovery has come, for a progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress<'a> {
    /// Copying the damaged file into the work directory: bytes so far, of the whole.
    Copying { done: u64, total: u64 },
    /// Rows copied so far from one table.
    Table { name: &'a str, rows: u64 },
}

/// Told of a recovery's progress now and then.
pub type ProgressFn<'a> = &'a mut dyn FnMut(Progress<'_>);

/// Copies `from` to `to` in large pieces, telling `progress`, and keeping `lock`'s lease.
fn copy_with_progress(
    from: &Path,
    to: &Path,
    lock: &mut ReadLock,
    progress: ProgressFn<'_>,
) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut src = std::fs::File::open(from)?;
    let total = src.metadata()?.len();
    let mut dst = std::fs::File::create_new(to)?;
    let mut buf = vec![0u8; 8 << 20];
    let mut done = 0;
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        dst.write_all(&buf[..n])?;
        done += n as u64;
        progress(Progress::Copying { done, total });
        lock.keep()?;
    }
    Ok(())
}

/// A SHARED lock of network mode's protocol on a database with a lock table, held while its
/// files are copied. Without a heartbeat thread, the copy renews it between pieces.
struct ReadLock(Option<DbLock<DirLockFiles, SystemEnvironment>>);

impl ReadLock {
    /// Waits for the lock as a reader would: behind a writer's PENDING or EXCLUSIVE, and for
    /// a dead writer's entry to be judged stale (another host's: a lease). `None` inside when
    /// the database has no lock table (nobody uses it in network mode).
    fn take(db: &Path, lease: Duration) -> Result<ReadLock, String> {
        let mut table = db.as_os_str().to_owned();
        table.push(LockFileName::Table.suffix());
        if std::fs::symlink_metadata(&table).is_err() {
            return Ok(ReadLock(None));
        }
        let fs_type = crate::detect::mode::decide(db, None)
            .map(|d| d.fs_type)
            .unwrap_or_default();
        let files = DirLockFiles::new(
            db,
            TokenStyle::for_fs_type(&fs_type),
            SizeRefresh::for_fs_type(&fs_type),
        )
        .with_table_access(TableAccess::for_fs_type(&fs_type));
        let mut lock = DbLock::new(
            files,
            SystemEnvironment,
            crate::lock::owner::new_owner(),
            lease,
        );
        let started = crate::sys::boot_time();
        loop {
            match lock.lock(Level::Shared) {
                Ok(Acquired::Granted { .. }) => return Ok(ReadLock(Some(lock))),
                Ok(Acquired::Busy)
                    if crate::sys::boot_time().saturating_sub(started) < lease * 2 =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(Acquired::Busy) => {
                    return Err(format!(
                        "{}: a writer has held the database for {} s; stop the applications using it, then run recover again",
                        db.display(),
                        (lease * 2).as_secs()
                    ));
                }
                Err(e) => {
                    return Err(format!(
                        "{}: cannot take its read lock ({e}); `sqlite-netfs doctor` says more",
                        db.display()
                    ));
                }
            }
        }
    }

    /// Renews the lease when due; an error once the lock cannot be kept (a copy made after
    /// that could mix two versions of the file).
    fn keep(&mut self) -> std::io::Result<()> {
        match &mut self.0 {
            Some(lock) if lock.renewal_due() => lock
                .renew()
                .map_err(|e| std::io::Error::other(format!("read lock lost: {e}"))),
            _ => Ok(()),
        }
    }

    fn release(&mut self) {
        if let Some(mut lock) = self.0.take()
            && let Err(e) = lock.unlock(Level::None, false)
        {
            tracing::warn!(error = %e, "read lock not released; it lingers until judged stale");
        }
    }
}

impl Drop for ReadLock {
    fn drop(&mut self) {
        self.release();
    }
}

/// How to recover.
#[derive(Debug, Clone, Copy)]
pub struct RecoverOptions {
    /// The applications' lease, for the read lock of a network-mode database.
    pub lease: Duration,
    /// Keep rows whose values cannot all be read, with NULL for the unreadable ones.
    /// Off: such rows count as lost.
    pub partial: bool,
    /// Leave out rows whose values disagree with an intact index of their table. Off: they
    /// are kept and counted (`TableRecovery::doubtful`).
    pub strict: bool,
}

/// Removes the work directory however `recover` ends.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Salvages every readable row of the database at `broken` into a new database at `new`
/// (which must not exist). `broken` is only read. A database that network mode uses is copied
/// under a read lock of its protocol (`lease`: the applications' lease), so no writer of the
/// protocol changes it meanwhile. See the module documentation.
pub fn recover(
    broken: &Path,
    new: &Path,
    options: RecoverOptions,
    progress: ProgressFn<'_>,
) -> Result<Recovery, String> {
    let lease = options.lease;
    for (which, path) in [("BROKEN", broken), ("NEW", new)] {
        if path.as_os_str().is_empty() {
            return Err(format!("{which} is empty: an empty path names no file"));
        }
    }
    match std::fs::metadata(broken) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Err(format!("{}: not a database file", broken.display())),
        Err(e) => return Err(format!("{}: {e}", broken.display())),
    }
    if std::fs::symlink_metadata(new).is_ok() {
        return Err(format!(
            "{} exists; recover writes a new file and never replaces one",
            new.display()
        ));
    }
    let new = std::path::absolute(new).map_err(|e| format!("{}: {e}", new.display()))?;
    let dir = new.parent().unwrap_or(Path::new("/"));
    if !dir.is_dir() {
        return Err(format!(
            "{}: no such directory for the new file",
            dir.display()
        ));
    }
    let work = WorkDir(dir.join(format!(
        ".{}.recovering-{}",
        new.file_name().map_or("db".into(), |n| n.to_string_lossy()),
        std::process::id()
    )));
    std::fs::create_dir(&work.0)
        .map_err(|e| format!("cannot make work directory {}: {e}", work.0.display()))?;
    let copy = work.0.join("broken.db");
    let mut lock = ReadLock::take(broken, lease)?;
    copy_with_progress(broken, &copy, &mut lock, progress)
        .map_err(|e| format!("cannot copy {}: {e}", broken.display()))?;
    for suffix in ["-journal", "-wal"] {
        let mut from = broken.as_os_str().to_owned();
        from.push(suffix);
        if std::fs::metadata(&from).is_ok_and(|m| m.len() > 0) {
            let mut to = copy.as_os_str().to_owned();
            to.push(suffix);
            copy_with_progress(Path::new(&from), Path::new(&to), &mut lock, &mut |_| {})
                .map_err(|e| format!("cannot copy {}: {e}", Path::new(&from).display()))?;
        }
    }
    lock.release();
    let old = open_copy(&copy).map_err(|e| format!("{}: {e}", broken.display()))?;
    let made = work.0.join("new.db");
    let out = Connection::open_with_flags_and_vfs(
        &made,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        c"unix",
    )
    .map_err(|e| format!("cannot create {}: {e}", made.display()))?;
    copy_header(&old, &out)?;

    let schema = read_schema(&old)?;
    let mut recovery = Recovery::default();
    out.execute_batch("BEGIN")
        .map_err(|e| format!("new database: {e}"))?;
    // Virtual tables first: making one makes its shadow tables, which then get their rows.
    let (virtuals, tables): (Vec<&SchemaEntry>, Vec<&SchemaEntry>) = schema
        .iter()
        .filter(|e| e.kind == "table")
        .partition(|e| e.sql.to_ascii_uppercase().starts_with("CREATE VIRTUAL"));
    for v in &virtuals {
        if let Err(e) = out.execute_batch(&v.sql) {
            recovery
                .schema_errors
                .push(format!("virtual table {}: {e}", v.name));
        }
    }
    for t in tables {
        if t.name.starts_with("sqlite_") {
            if t.name == "sqlite_sequence" {
                continue; // made by AUTOINCREMENT tables; its rows are copied below
            }
            recovery.skipped.push(format!(
                "{} (statistics; `ANALYZE` makes them again)",
                t.name
            ));
            continue;
        }
        let exists = table_exists(&out, &t.name);
        if !exists && let Err(e) = out.execute_batch(&t.sql) {
            recovery.tables.push(TableRecovery {
                error: Some(format!("cannot create it in the new file: {e}")),
                ..TableRecovery::default_for(&t.name)
            });
            continue;
        }
        let indexes: Vec<&str> = schema
            .iter()
            .filter(|e| e.kind == "index" && e.table == t.name)
            .map(|e| e.name.as_str())
            .collect();
        let mut report = |rows| {
            progress(Progress::Table {
                name: &t.name,
                rows,
            })
        };
        recovery.tables.push(salvage_table(
            &old,
            &out,
            t,
            exists,
            &options,
            &indexes,
            &mut report,
        ));
    }
    if table_exists(&out, "sqlite_sequence")
        && let Err(e) = copy_sequence(&old, &out)
    {
        recovery.schema_errors.push(format!(
            "sqlite_sequence: {e} (AUTOINCREMENT may reuse the rowids of lost rows at the end of a table)"
        ));
    }
    for kind in ["index", "view", "trigger"] {
        for e in schema
            .iter()
            .filter(|e| e.kind == kind && !e.sql.is_empty())
        {
            if let Err(err) = out.execute_batch(&e.sql) {
                recovery
                    .schema_errors
                    .push(format!("{kind} {}: {err}", e.name));
            }
        }
    }
    out.execute_batch("COMMIT")
        .map_err(|e| format!("new database: {e}"))?;
    match check(&out, CheckKind::Full).map_err(|e| format!("new database: {e}"))? {
        Verdict::Healthy => {}
        Verdict::Damaged(lines) => {
            return Err(format!(
                "the new database fails its integrity check ({}); nothing was written to {}",
                lines.join("; "),
                new.display()
            ));
        }
        Verdict::NotADatabase(m) => return Err(format!("new database: {m}")),
    }
    out.close().map_err(|(_, e)| format!("new database: {e}"))?;
    drop(old);
    std::fs::File::open(&made)
        .and_then(|f| f.sync_all())
        .and_then(|()| place_without_replacing(&made, &new))
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => format!(
                "{} appeared while recover ran; recover never replaces a file, and made nothing",
                new.display()
            ),
            _ => format!("cannot move the new database to {}: {e}", new.display()),
        })?;
    Ok(recovery)
}

/// Gives `made` the name `new`, failing with `AlreadyExists` if `new` exists: `rename`
/// alone would replace a file made there while recover ran. A hard link is the no-replace
/// rename that needs no system call outside `ffi` (`made` goes with the work directory);
/// where the filesystem has no hard links, a rename after one more look is the best left.
fn place_without_replacing(made: &Path, new: &Path) -> std::io::Result<()> {
    match std::fs::hard_link(made, new) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(e),
        Err(_) if std::fs::symlink_metadata(new).is_err() => std::fs::rename(made, new),
        Err(e) => Err(e),
    }
}

impl TableRecovery {
    fn default_for(table: &str) -> TableRecovery {
        TableRecovery {
            table: table.to_owned(),
            recovered: 0,
            lost: None,
            lost_basis: "unknown".into(),
            lost_at_least: 0,
            partial: 0,
            doubtful: 0,
            doubtful_left_out: false,
            checked_against: None,
            damaged: Vec::new(),
            error: None,
        }
    }
}

/// AUTOINCREMENT's memory of the largest rowid each table ever used, so that new rows do not
/// reuse the rowids of lost ones. The copy's inserts already recorded the largest rowid
/// recovered; the old value is kept where it is larger.
fn copy_sequence(old: &Connection, out: &Connection) -> rusqlite::Result<()> {
    let mut stmt = old.prepare("SELECT name, seq FROM sqlite_sequence")?;
    let rows: Vec<(String, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (name, seq) in rows {
        let updated = out.execute(
            "UPDATE sqlite_sequence SET seq = max(seq, ?2) WHERE name = ?1",
            (&name, seq),
        )?;
        if updated == 0 {
            out.execute(
                "INSERT INTO sqlite_sequence(name, seq) VALUES (?1, ?2)",
                (&name, seq),
            )?;
        }
    }
    Ok(())
}

/// Opens the work copy; a journal or WAL that cannot be applied is set aside, and the file is
/// read as it stands.
fn open_copy(copy: &Path) -> Result<Connection, String> {
    let open = || {
        let conn =
            Connection::open_with_flags_and_vfs(copy, OpenFlags::SQLITE_OPEN_READ_WRITE, c"unix")?;
        // An unparsable schema entry is skipped instead of failing every statement, and
        // every cell is checked for size before it is read.
        conn.execute_batch("PRAGMA writable_schema=ON; PRAGMA cell_size_check=ON;")?;
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))?;
        Ok::<_, rusqlite::Error>(conn)
    };
    match open() {
        Ok(c) => Ok(c),
        Err(first) => {
            for suffix in ["-journal", "-wal"] {
                let mut p = copy.as_os_str().to_owned();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
            open().map_err(|e| {
                let also = if e.to_string() == first.to_string() {
                    String::new()
                } else {
                    format!("; with its journal or WAL: {first}")
                };
                format!("cannot read the database's schema: {e}{also}")
            })
        }
    }
}

fn copy_header(old: &Connection, out: &Connection) -> Result<(), String> {
    let get = |pragma: &str| -> Result<Value, String> {
        old.query_row(&format!("PRAGMA {pragma}"), [], |r| r.get(0))
            .map_err(|e| format!("cannot read PRAGMA {pragma} of the damaged database: {e}"))
    };
    let text = |v: Value| match v {
        Value::Integer(i) => i.to_string(),
        Value::Text(t) => format!("'{}'", t.replace('\'', "''")),
        _ => "0".into(),
    };
    // Page size, encoding and auto-vacuum only take effect before the first table.
    let mut settings = String::from("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;");
    for pragma in [
        "page_size",
        "encoding",
        "auto_vacuum",
        "user_version",
        "application_id",
    ] {
        settings.push_str(&format!("PRAGMA {pragma}={};", text(get(pragma)?)));
    }
    out.execute_batch(&settings)
        .map_err(|e| format!("new database: {e}"))
}

struct SchemaEntry {
    kind: String,
    name: String,
    table: String,
    sql: String,
}

/// `sqlite_master`'s rows, read like any table's: past damaged pages where possible.
fn read_schema(old: &Connection) -> Result<Vec<SchemaEntry>, String> {
    let mut entries = Vec::new();
    let columns = ["type", "name", "tbl_name", "sql"].map(String::from);
    let walked = walk(old, "sqlite_master", &columns, false, &mut |row| {
        let text = |i| match &row[i] {
            Value::Text(t) => t.clone(),
            _ => String::new(),
        };
        entries.push(SchemaEntry {
            kind: text(1),
            name: text(2),
            table: text(3),
            sql: text(4),
        });
        Ok(true)
    });
    match walked.first_error {
        Some(error) if entries.is_empty() => Err(format!(
            "the damaged database's schema cannot be read: {error}"
        )),
        _ => Ok(entries),
    }
}

/// What [`walk`] found besides the rows.
#[derive(Debug, Default)]
struct Walk {
    /// Rowid ranges that could not be read, inclusive (`i64::MIN`/`MAX` at an open end).
    damaged: Vec<(i64, i64)>,
    /// Rows known to be unreadable: one for each row the plain scan failed on, plus the
    /// rowids inside ranges the seeks skipped, where both ends are known.
    skipped: u64,
    /// A range with an open end: how many rows it held is not known.
    open_ended: bool,
    /// `take` refused a row with an error: the walk stopped there.
    stopped: bool,
    first_error: Option<String>,
    /// Rows kept with their unreadable values set to NULL (`partial`).
    partial: u64,
}

/// How a walk reads on.
#[derive(Debug, Clone, Copy)]
enum Pass {
    /// In the b-tree's own order, skipping this many rows without reading them.
    Plain { offset: i64 },
    /// Rowids from this one on, by seeking.
    Seek { start: i64 },
}

/// After how many rows the plain scan failed on, the walk only seeks: each new plain pass
/// steps again over every row before the damage.
const PLAIN_RESTARTS: u32 = 10_000;

/// Hands every row of the rowid table `table` (rowid first, then `columns`) that can be read
/// to `take`; an error from `take` stops the walk.
///
/// First a plain scan, which SQLite makes from the b-tree's leftmost leaf without comparing
/// keys, so an interior page with damaged keys does not misdirect it. A row it cannot read
/// is stepped over with `OFFSET`, which moves the cursor without reading rows. Where the
/// cursor itself cannot move on (a damaged page), the walk seeks past the damage (see
/// [`resume_after`]).
fn walk(
    conn: &Connection,
    table: &str,
    column_list: &[String],
    partial: bool,
    take: &mut dyn FnMut(&[Value]) -> rusqlite::Result<bool>,
) -> Walk {
    let columns = column_list.join(", ");
    let plain = format!(
        "SELECT rowid, {columns} FROM main.{} LIMIT -1 OFFSET ?1",
        quote(table)
    );
    let seek = format!(
        "SELECT rowid, {columns} FROM main.{} WHERE rowid >= ?1 ORDER BY rowid",
        quote(table)
    );
    let mut walked = Walk::default();
    let mut pass = Pass::Plain { offset: 0 };
    // The largest rowid read so far.
    let mut high: Option<i64> = None;
    // A row the plain scan could not read lies after this rowid, before the next one read.
    let mut gap_after: Option<i64> = None;
    let mut restarts = 0u32;
    loop {
        let scanned = match pass {
            Pass::Plain { offset } => scan(conn, &plain, offset, false, take),
            Pass::Seek { start } => scan(conn, &seek, start, true, take),
        };
        if let Some(first) = scanned.first
            && let Some(after) = gap_after.take()
            && first > after.saturating_add(1)
        {
            walked.damaged.push((after.saturating_add(1), first - 1));
        }
        high = high.max(scanned.last);
        let error = match scanned.end {
            End::Done => break,
            End::Stopped(e) => {
                walked.first_error.get_or_insert(e);
                walked.stopped = true;
                break;
            }
            End::Failed(e) => e,
        };
        walked.first_error.get_or_insert(error);
        if let Pass::Plain { offset } = pass
            && restarts < PLAIN_RESTARTS
        {
            // Can the cursor reach the row that failed? Then only that row is damaged:
            // step over it. If not, the b-tree itself is, and seeks go on past it.
            let failed_at = offset + scanned.read as i64;
            let cursor = conn.query_row(
                &format!("SELECT rowid FROM main.{} LIMIT 1 OFFSET ?1", quote(table)),
                [failed_at],
                |r| r.get::<_, i64>(0),
            );
            match cursor {
                Ok(rowid) => {
                    restarts += 1;
                    pass = Pass::Plain {
                        offset: failed_at + 1,
                    };
                    if partial {
                        // Each value read on its own; an unreadable one is NULL.
                        let mut values = vec![Value::Integer(rowid)];
                        for c in column_list {
                            values.push(
                                conn.query_row(
                                    &format!(
                                        "SELECT {c} FROM main.{} LIMIT 1 OFFSET ?1",
                                        quote(table)
                                    ),
                                    [failed_at],
                                    |r| r.get::<_, Value>(0),
                                )
                                .unwrap_or(Value::Null),
                            );
                        }
                        match take(&values) {
                            Ok(true) => {
                                walked.partial += 1;
                                high = high.max(Some(rowid));
                                continue;
                            }
                            // Refused by its table's constraints: `take` counts it.
                            Ok(false) => continue,
                            Err(e) => {
                                walked.first_error = Some(e.to_string());
                                walked.stopped = true;
                                break;
                            }
                        }
                    }
                    walked.skipped += 1;
                    gap_after = gap_after.or(Some(high.unwrap_or(i64::MIN)));
                    continue;
                }
                // The failure was the end of the table after all.
                Err(rusqlite::Error::QueryReturnedNoRows) => break,
                Err(_) => {}
            }
        }
        // Rows from `lost_from` on were not read, except those a plain pass stepped over,
        // which are counted already.
        let lost_from = match (high, pass) {
            (Some(h), _) => match h.checked_add(1) {
                Some(f) => f,
                None => break,
            },
            (None, Pass::Seek { start }) => start,
            (None, Pass::Plain { .. }) => i64::MIN,
        };
        gap_after = None;
        // Nothing read in this pass: the first row its seek finds is the failing one.
        let from = match (scanned.read, pass) {
            (0, Pass::Seek { .. }) => match first_rowid_from(conn, table, lost_from) {
                Some(unreadable) => unreadable.checked_add(1),
                None => Some(lost_from),
            },
            _ => Some(lost_from),
        };
        let Some(next) = from.and_then(|f| resume_after(conn, table, f)) else {
            walked.damaged.push((lost_from, i64::MAX));
            walked.open_ended = true;
            break;
        };
        // The first row readable from `next` on bounds what was skipped.
        let first = first_rowid_from(conn, table, next).unwrap_or(next);
        if first > lost_from {
            walked.damaged.push((lost_from, first - 1));
            if high.is_none() {
                walked.open_ended = true; // from the smallest rowid on: no count
            } else {
                walked.skipped += first.abs_diff(lost_from);
            }
        }
        // Always forward, so a seek that keeps failing at one place cannot loop.
        let floor = match pass {
            Pass::Seek { start } => start.saturating_add(1),
            Pass::Plain { .. } => i64::MIN,
        };
        pass = Pass::Seek {
            start: first.max(next).max(floor),
        };
    }
    if gap_after.is_some() {
        // The last row the plain scan failed on came after every row read.
        walked
            .damaged
            .push((gap_after.unwrap_or(i64::MIN).saturating_add(1), i64::MAX));
    }
    walked
}

/// How a scan ended.
enum End {
    Done,
    /// A read failed (damage).
    Failed(String),
    /// `take` refused a row.
    Stopped(String),
}

/// What one scan read.
struct Scanned {
    /// Rows handed to `take`.
    read: u64,
    first: Option<i64>,
    /// The largest rowid read.
    last: Option<i64>,
    end: End,
}

/// Steps through `sql` (its first column a rowid, bound to `?1 = bind`), handing each row to
/// `take`, until the end or an error. With `ordered`, rowids must increase: a damaged
/// b-tree that goes back is treated as damage. A plain scan's are not checked: a damaged
/// tree may hold them out of order, and the new table's key refuses a repeated one.
fn scan(
    conn: &Connection,
    sql: &str,
    bind: i64,
    ordered: bool,
    take: &mut dyn FnMut(&[Value]) -> rusqlite::Result<bool>,
) -> Scanned {
    let mut scanned = Scanned {
        read: 0,
        first: None,
        last: None,
        end: End::Done,
    };
    let mut stmt = match conn.prepare(sql) {
        Ok(s) => s,
        Err(e) => {
            scanned.end = End::Failed(e.to_string());
            return scanned;
        }
    };
    let n = stmt.column_count();
    let bound = (stmt.parameter_count() == 1).then_some(bind);
    let mut rows = match stmt.query(rusqlite::params_from_iter(bound)) {
        Ok(r) => r,
        Err(e) => {
            scanned.end = End::Failed(e.to_string());
            return scanned;
        }
    };
    loop {
        let row = match rows.next() {
            Ok(None) => return scanned,
            Ok(Some(row)) => row,
            Err(e) => {
                scanned.end = End::Failed(e.to_string());
                return scanned;
            }
        };
        let values = match (0..n)
            .map(|i| row.get(i))
            .collect::<rusqlite::Result<Vec<Value>>>()
        {
            Ok(v) => v,
            Err(e) => {
                scanned.end = End::Failed(e.to_string());
                return scanned;
            }
        };
        let rowid = match values[0] {
            Value::Integer(r) => r,
            _ => 0, // the constant of a table without rowid
        };
        if ordered && scanned.last.is_some_and(|l| rowid <= l) {
            scanned.end = End::Failed(format!("rowid {rowid} out of order"));
            return scanned;
        }
        if let Err(e) = take(&values) {
            scanned.end = End::Stopped(e.to_string());
            return scanned;
        }
        scanned.read += 1;
        scanned.first.get_or_insert(rowid);
        scanned.last = scanned.last.max(Some(rowid));
    }
}

/// The smallest rowid at or after `from` where a scan of `table` can start again past a
/// damaged page: `from` itself (a scan that stopped at rowids out of order), else doubling
/// steps find one that works, then bisection the first. `None` if no seek from `from` on
/// succeeds.
fn resume_after(conn: &Connection, table: &str, from: i64) -> Option<i64> {
    let sql = format!(
        "SELECT rowid FROM main.{} WHERE rowid >= ?1 ORDER BY rowid LIMIT 1",
        quote(table)
    );
    let works = |start: i64| {
        conn.prepare(&sql)
            .and_then(|mut s| s.query([start]).and_then(|mut r| r.next().map(|_| ())))
            .is_ok()
    };
    if works(from) {
        return Some(from);
    }
    let mut failing = from;
    let mut step: i64 = 1;
    let found = loop {
        // Saturating, so a search from the smallest rowid still reaches the positive ones.
        let probe = failing.saturating_add(step);
        if probe == failing {
            return None;
        }
        if works(probe) {
            break probe;
        }
        failing = probe;
        step = step.saturating_mul(2);
    };
    let (mut bad, mut good) = (failing, found);
    while good - bad > 1 {
        let mid = bad + (good - bad) / 2;
        if works(mid) {
            good = mid;
        } else {
            bad = mid;
        }
    }
    Some(good)
}

fn table_exists(conn: &Connection, name: &str) -> bool {
    conn.query_row(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?1",
        [name],
        |_| Ok(()),
    )
    .is_ok()
}

/// Copies every readable row of `t` from `old` into `out`.
fn salvage_table(
    old: &Connection,
    out: &Connection,
    t: &SchemaEntry,
    replace: bool,
    options: &RecoverOptions,
    indexes: &[&str],
    progress: &mut dyn FnMut(u64),
) -> TableRecovery {
    let RecoverOptions {
        partial, strict, ..
    } = *options;
    let mut result = TableRecovery::default_for(&t.name);
    let columns = match insertable_columns(out, &t.name) {
        Ok(c) => c,
        Err(e) => {
            result.error = Some(e);
            return result;
        }
    };
    let quoted: Vec<String> = columns.iter().map(|c| quote(c)).collect();
    let list = quoted.join(", ");
    let without_rowid = old
        .prepare(&format!(
            "SELECT rowid FROM main.{} LIMIT 0",
            quote(&t.name)
        ))
        .is_err();
    let verb = if replace {
        "INSERT OR REPLACE"
    } else {
        "INSERT"
    };
    // A rowid table's rows come with their rowid first, and keep it.
    let (rowid_column, first_value) = if without_rowid {
        ("", 1)
    } else {
        ("rowid, ", 0)
    };
    let holes: Vec<String> = (1..=columns.len() + 1 - first_value)
        .map(|i| format!("?{i}"))
        .collect();
    let insert = format!(
        "{verb} INTO main.{}({rowid_column}{list}) VALUES ({})",
        quote(&t.name),
        holes.join(", ")
    );
    let mut insert = match out.prepare(&insert) {
        Ok(s) => s,
        Err(e) => {
            result.error = Some(format!("cannot insert into it: {e}"));
            return result;
        }
    };
    let recovered = Cell::new(0u64);
    let refused = Cell::new(0u64);
    let index_view = if without_rowid {
        None
    } else {
        indexes
            .iter()
            .find_map(|&index| IndexView::read(old, &t.name, index, &columns))
    };
    let mut doubtful: HashSet<i64> = HashSet::new();
    let mut take = |row: &[Value]| {
        if let Some(view) = &index_view
            && !view.agrees_with(row)
        {
            if let Value::Integer(rowid) = row[0] {
                doubtful.insert(rowid);
            }
            if strict {
                return Ok(false);
            }
        }
        match insert.execute(rusqlite::params_from_iter(&row[first_value..])) {
            Ok(_) => {
                recovered.set(recovered.get() + 1);
                if recovered.get().is_multiple_of(1000) {
                    progress(recovered.get());
                }
                Ok(true)
            }
            // A damaged row that breaks a constraint of its own table is lost, not fatal.
            Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation) => {
                refused.set(refused.get() + 1);
                Ok(false)
            }
            // The new file cannot take rows (disk full?): nothing more can be copied.
            Err(e) => Err(e),
        }
    };
    let walked = if without_rowid {
        // No rowid to seek past damage with: one plain scan, up to the first damage. The
        // constant first column stands where a rowid would.
        let sql = format!("SELECT 0, {list} FROM main.{}", quote(&t.name));
        match scan(old, &sql, 0, false, &mut take).end {
            End::Done => Walk::default(),
            End::Failed(e) => Walk {
                open_ended: true,
                first_error: Some(e),
                ..Walk::default()
            },
            End::Stopped(e) => Walk {
                stopped: true,
                first_error: Some(e),
                ..Walk::default()
            },
        }
    } else {
        walk(old, &t.name, &quoted, partial, &mut take)
    };
    let Walk {
        mut damaged,
        skipped,
        mut open_ended,
        stopped,
        first_error,
        partial: kept_partly,
    } = walked;
    result.partial = kept_partly;
    result.error = first_error.map(|e| {
        if stopped {
            format!("cannot write to the new file: {e}")
        } else {
            e
        }
    });
    // An index that reads through lists every rowid the table had at its last commit. Where
    // the walk met damage, a lookup by each rowid it did not copy reaches the rows it could
    // not: behind a damaged interior page, or in a stretch the seeks past damage jumped.
    let listed = if without_rowid {
        None
    } else if let Some(view) = &index_view {
        Some((view.index, view.rowids()))
    } else {
        indexes
            .iter()
            .find_map(|&index| index_rowids(old, &t.name, index).map(|rowids| (index, rowids)))
    };
    if let Some((_, rowids)) = &listed
        && result.error.is_some()
        && !stopped
    {
        let mut missing = copy_by_rowid(old, out, &t.name, &list, rowids, &mut take);
        // Read, but left out (`strict`): not unreadable.
        missing.retain(|rowid| !doubtful.contains(rowid));
        damaged = ranges(&missing);
        open_ended = false;
    }
    result.doubtful = doubtful.len() as u64;
    result.doubtful_left_out = strict;
    result.checked_against = index_view.map(|v| v.index.to_owned());
    let recovered = recovered.get();
    progress(recovered);
    result.recovered = recovered;
    result.damaged = damaged;
    let counted = listed
        .map(|(index, rowids)| (index, rowids.len() as u64))
        .or_else(|| indexes.iter().find_map(|i| index_count(old, &t.name, i)));
    match counted {
        Some((index, n)) if n >= recovered => {
            result.lost = Some(n - recovered);
            result.lost_basis = format!("counted by index {index}");
        }
        _ if open_ended || stopped => {
            result.lost = None;
            result.lost_at_least = skipped + refused.get();
            result.lost_basis = "unknown".into();
        }
        _ => {
            result.lost = Some(skipped + refused.get());
            result.lost_basis =
                "rows stepped over and rowids skipped; exact if rowids were consecutive".into();
        }
    }
    result
}

/// Copies the rows of `rowids` that `out` does not hold yet, one lookup each, through
/// `take`; returns the rowids that could not be read (sorted).
fn copy_by_rowid(
    old: &Connection,
    out: &Connection,
    table: &str,
    columns: &str,
    rowids: &[i64],
    take: &mut dyn FnMut(&[Value]) -> rusqlite::Result<bool>,
) -> Vec<i64> {
    let lookup = format!(
        "SELECT rowid, {columns} FROM main.{} WHERE rowid = ?1",
        quote(table)
    );
    let present = format!("SELECT 1 FROM main.{} WHERE rowid = ?1", quote(table));
    let (Ok(mut lookup), Ok(mut present)) = (old.prepare(&lookup), out.prepare(&present)) else {
        return Vec::new();
    };
    let width = lookup.column_count();
    let mut missing = Vec::new();
    for &rowid in rowids {
        if present.exists([rowid]).unwrap_or(false) {
            continue;
        }
        let row = lookup.query_row([rowid], |r| {
            (0..width)
                .map(|i| r.get::<_, Value>(i))
                .collect::<rusqlite::Result<Vec<Value>>>()
        });
        let copied = row.is_ok_and(|values| take(&values).unwrap_or(false))
            && present.exists([rowid]).unwrap_or(false);
        if !copied {
            missing.push(rowid);
        }
    }
    missing.sort_unstable();
    missing
}

/// Sorted rowids as inclusive ranges of consecutive values.
fn ranges(sorted: &[i64]) -> Vec<(i64, i64)> {
    let mut out: Vec<(i64, i64)> = Vec::new();
    for &r in sorted {
        match out.last_mut() {
            Some((_, end)) if end.checked_add(1) == Some(r) => *end = r,
            _ => out.push((r, r)),
        }
    }
    out
}

/// The SQL that reads `what` for every entry of `index` (on `table`) from the index alone;
/// `None` for an index that cannot stand for the table's rows (partial, or led by an
/// expression). `count(*)` alone would read the table, even with `INDEXED BY`; a condition
/// on the index's first column that every row meets makes SQLite scan the covering index.
fn from_index_alone(conn: &Connection, table: &str, index: &str, what: &str) -> Option<String> {
    let partial: i64 = conn
        .query_row(
            &format!(
                "SELECT partial FROM pragma_index_list({}) WHERE name = ?1",
                quote_literal(table)
            ),
            [index],
            |r| r.get(0),
        )
        .ok()?;
    let first: String = conn
        .query_row(
            &format!(
                "SELECT name FROM pragma_index_info({}) WHERE seqno = 0",
                quote_literal(index)
            ),
            [],
            |r| r.get(0),
        )
        .ok()?;
    (partial == 0).then(|| {
        format!(
            "SELECT {what} FROM main.{} INDEXED BY {} WHERE {c} IS NOT NULL OR {c} IS NULL",
            quote(table),
            quote(index),
            c = quote(&first)
        )
    })
}

/// What an intact index on plain columns says each row of its table holds: for every rowid,
/// a hash of each key value (a few bytes a row, whatever the values' size), read from the
/// index alone (see [`from_index_alone`]).
struct IndexView<'a> {
    index: &'a str,
    /// Where each key column is among a row's values (the rowid first, then the columns).
    positions: Vec<usize>,
    /// Every entry the index holds for a rowid: more than one where writers without working
    /// locks gave one rowid to two rows, and the index kept both.
    keys: HashMap<i64, Vec<Vec<u64>>>,
}

/// A hash of one value, its type included (1 and 1.0 and '1' differ, as in a record).
fn value_hash(value: &Value) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match value {
        Value::Null => 0u8.hash(&mut h),
        Value::Integer(i) => (1u8, i).hash(&mut h),
        Value::Real(r) => (2u8, r.to_bits()).hash(&mut h),
        Value::Text(t) => (3u8, t).hash(&mut h),
        Value::Blob(b) => (4u8, b).hash(&mut h),
    }
    h.finish()
}

impl<'a> IndexView<'a> {
    /// `None` if the index cannot be read whole, or one of its keys is an expression or a
    /// column the copy does not insert (a generated one).
    fn read(
        conn: &Connection,
        table: &str,
        index: &'a str,
        columns: &[String],
    ) -> Option<IndexView<'a>> {
        let mut stmt = conn
            .prepare(&format!(
                "SELECT cid, name FROM pragma_index_xinfo({}) WHERE key = 1 ORDER BY seqno",
                quote_literal(index)
            ))
            .ok()?;
        let key_columns = stmt
            .query_map([], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Option<String>>(1)?))
            })
            .ok()?
            .collect::<rusqlite::Result<Vec<_>>>()
            .ok()?;
        let mut names = Vec::new();
        let mut positions = Vec::new();
        for (cid, name) in key_columns {
            let name = name.filter(|_| cid >= 0)?;
            positions.push(1 + columns.iter().position(|c| *c == name)?);
            names.push(quote(&name));
        }
        if names.is_empty() {
            return None;
        }
        let what = format!("rowid, {}", names.join(", "));
        let sql = from_index_alone(conn, table, index, &what)?;
        let mut stmt = conn.prepare(&sql).ok()?;
        let width = names.len();
        let entries = stmt
            .query_map([], |r| {
                let key = (1..=width)
                    .map(|i| r.get::<_, Value>(i).map(|v| value_hash(&v)))
                    .collect::<rusqlite::Result<Vec<u64>>>()?;
                Ok((r.get::<_, i64>(0)?, key))
            })
            .ok()?
            .collect::<rusqlite::Result<Vec<(i64, Vec<u64>)>>>()
            .ok()?;
        let mut keys: HashMap<i64, Vec<Vec<u64>>> = HashMap::new();
        for (rowid, key) in entries {
            keys.entry(rowid).or_default().push(key);
        }
        Some(IndexView {
            index,
            positions,
            keys,
        })
    }

    /// Whether the index lists `row`'s rowid with `row`'s values. A NULL in the row is not
    /// compared: `--partial` puts it where a value could not be read.
    fn agrees_with(&self, row: &[Value]) -> bool {
        let Value::Integer(rowid) = row[0] else {
            return false;
        };
        self.keys.get(&rowid).is_some_and(|entries| {
            entries.iter().any(|key| {
                self.positions.iter().zip(key).all(|(&at, &indexed)| {
                    row[at] == Value::Null || value_hash(&row[at]) == indexed
                })
            })
        })
    }

    /// Every rowid the index lists, sorted.
    fn rowids(&self) -> Vec<i64> {
        let mut rowids: Vec<i64> = self.keys.keys().copied().collect();
        rowids.sort_unstable();
        rowids
    }
}

/// The rowids of every entry of `index`, read from the index alone (see
/// [`from_index_alone`]); `None` if it does not read through.
fn index_rowids(conn: &Connection, table: &str, index: &str) -> Option<Vec<i64>> {
    let sql = from_index_alone(conn, table, index, "rowid")?;
    let mut stmt = conn.prepare(&sql).ok()?;
    let rows = stmt.query_map([], |r| r.get::<_, i64>(0)).ok()?;
    rows.collect::<rusqlite::Result<Vec<i64>>>().ok()
}

/// The number of entries of `index` (on `table`), read from the index alone (see
/// [`from_index_alone`]): the table's row count at its last commit. For tables without a
/// rowid, whose index entries `index_rowids` cannot list.
fn index_count<'a>(conn: &Connection, table: &str, index: &'a str) -> Option<(&'a str, u64)> {
    let sql = from_index_alone(conn, table, index, "count(*)")?;
    let n: i64 = conn.query_row(&sql, [], |r| r.get(0)).ok()?;
    Some((index, u64::try_from(n).ok()?))
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The first rowid a scan from `start` reads, if it reads one.
fn first_rowid_from(conn: &Connection, table: &str, start: i64) -> Option<i64> {
    conn.query_row(
        &format!(
            "SELECT rowid FROM main.{} WHERE rowid >= ?1 ORDER BY rowid LIMIT 1",
            quote(table)
        ),
        [start],
        |r| r.get(0),
    )
    .ok()
}

/// The columns of `table` (in the new file, whose schema is the old one's) that an INSERT
/// may name: generated columns are computed, not stored.
fn insertable_columns(conn: &Connection, table: &str) -> Result<Vec<String>, String> {
    let mut stmt = conn
        .prepare(&format!("PRAGMA main.table_xinfo({})", quote(table)))
        .map_err(|e| e.to_string())?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(1)?, r.get::<_, i64>(6)?)))
        .map_err(|e| e.to_string())?;
    let mut columns = Vec::new();
    for row in rows {
        let (name, hidden) = row.map_err(|e| e.to_string())?;
        if hidden == 0 {
            columns.push(name);
        }
    }
    if columns.is_empty() {
        return Err(format!("table {table} has no columns in the new file"));
    }
    Ok(columns)
}

impl fmt::Display for TableRecovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} rows recovered", self.table, self.recovered)?;
        if self.partial > 0 {
            write!(f, " ({} with unreadable values set to NULL)", self.partial)?;
        }
        match self.lost {
            Some(0) if self.damaged.is_empty() => f.write_str(", none lost")?,
            Some(n) => write!(f, ", {n} lost ({})", self.lost_basis)?,
            None if self.lost_at_least > 0 => write!(
                f,
                ", at least {} lost (how many more is unknown)",
                self.lost_at_least
            )?,
            None => f.write_str(", rows lost unknown")?,
        }
        if self.doubtful > 0 {
            let index = self.checked_against.as_deref().unwrap_or("?");
            if self.doubtful_left_out {
                write!(
                    f,
                    "; {} left out: read whole, but their values disagree with index {index}",
                    self.doubtful
                )?;
            } else {
                write!(
                    f,
                    "; {} kept whose values disagree with index {index} (--strict leaves them out)",
                    self.doubtful
                )?;
            }
        }
        for &(from, to) in &self.damaged {
            match (from, to) {
                (i64::MIN, i64::MAX) => write!(f, "; no rowid readable")?,
                (i64::MIN, to) => write!(f, "; rowids up to {to} unreadable")?,
                (from, i64::MAX) => write!(f, "; rowids from {from} on unreadable")?,
                (from, to) => write!(f, "; rowids {from}..={to} unreadable")?,
            }
        }
        if let Some(e) = &self.error {
            write!(f, " [{e}]")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_values_parse_and_errors_name_origin_and_value() {
        assert_eq!(CheckKind::parse("quick", "x"), Ok(Some(CheckKind::Quick)));
        assert_eq!(CheckKind::parse("FULL", "x"), Ok(Some(CheckKind::Full)));
        assert_eq!(CheckKind::parse("off", "x"), Ok(None));
        let e = CheckKind::parse("thorough", "URI parameter netfs_check").unwrap_err();
        assert!(
            e.contains("netfs_check") && e.contains("\"thorough\""),
            "{e}"
        );
    }

    #[test]
    fn the_new_file_never_replaces_one_made_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let (made, new) = (dir.path().join("made"), dir.path().join("new"));
        std::fs::write(&made, b"salvage").unwrap();
        std::fs::write(&new, b"theirs").unwrap();
        let e = place_without_replacing(&made, &new).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&new).unwrap(), b"theirs");
        std::fs::remove_file(&new).unwrap();
        place_without_replacing(&made, &new).unwrap();
        assert_eq!(std::fs::read(&new).unwrap(), b"salvage");
    }

    #[test]
    fn uris_escape_only_what_sqlite_would_misread() {
        use std::os::unix::ffi::OsStrExt;
        assert_eq!(
            file_uri(Path::new("/a b/c%d?e#f.db")),
            "file:///a b/c%25d%3fe%23f.db"
        );
        assert_eq!(
            file_uri(Path::new(std::ffi::OsStr::from_bytes(
                b"//caf\xe9/\xc3\xa9.db"
            ))),
            "file:////caf%e9/\u{e9}.db",
            "a leading // is a path, and a byte that is not UTF-8 is kept as that byte"
        );
        assert_eq!(file_uri(Path::new("rel.db")), "file:rel.db");
    }
}
