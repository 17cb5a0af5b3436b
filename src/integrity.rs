//! Damaged databases: finding them (SQLite's `quick_check` or `integrity_check`, for
//! `sqlite-netfs doctor --check` and the `netfs_check=` URI parameter at open) and salvaging
//! what can still be read (`sqlite-netfs recover`).
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
//! 3. rows are copied in rowid order. A read that fails (a damaged page) ends that scan; the
//!    scan starts again at the smallest rowid past the damage that a seek can reach (found by
//!    doubling, then bisecting), so one bad page costs only the rows on it;
//! 4. indexes, views and triggers are created last (triggers so they do not fire on the copy);
//!    any that fail are reported;
//! 5. the new file passes `integrity_check` before it is renamed into place, so a half-made
//!    file never appears under the new name.
//!
//! Rows lost are counted exactly where an index of the table is still readable (its entry
//! count is the table's row count at the last commit); otherwise from the rowids skipped
//! around the damage, which is exact for consecutive rowids (the usual `INTEGER PRIMARY KEY`)
//! and an upper bound otherwise.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags};

use crate::lock::{Acquired, DbLock, SystemEnvironment};
use crate::lockfile::{DirLockFiles, LockFileName, SizeRefresh, TokenStyle};
use crate::protocol::Level;

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

/// `path` as an SQLite `file:` URI: `%`, `?` and `#` are escaped, everything else is kept.
pub fn file_uri(path: &Path) -> String {
    let mut uri = String::from("file:");
    for c in path.to_string_lossy().chars() {
        match c {
            '%' => uri.push_str("%25"),
            '?' => uri.push_str("%3f"),
            '#' => uri.push_str("%23"),
            c => uri.push(c),
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
    /// Rowid ranges that could not be read, inclusive.
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
        let fs_type = crate::mode::decide(db, None)
            .map(|d| d.fs_type)
            .unwrap_or_default();
        let files = DirLockFiles::new(
            db,
            TokenStyle::for_fs_type(&fs_type),
            SizeRefresh::for_fs_type(&fs_type),
        );
        let mut lock = DbLock::new(files, SystemEnvironment, crate::owner::new_owner(), lease);
        let started = crate::ffi::os::boot_time();
        loop {
            match lock.lock(Level::Shared) {
                Ok(Acquired::Granted { .. }) => return Ok(ReadLock(Some(lock))),
                Ok(Acquired::Busy)
                    if crate::ffi::os::boot_time().saturating_sub(started) < lease * 2 =>
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
    lease: Duration,
    progress: ProgressFn<'_>,
) -> Result<Recovery, String> {
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
        recovery
            .tables
            .push(salvage_table(&old, &out, t, exists, &indexes, &mut report));
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
        .and_then(|()| std::fs::rename(&made, &new))
        .map_err(|e| format!("cannot move the new database to {}: {e}", new.display()))?;
    Ok(recovery)
}

impl TableRecovery {
    fn default_for(table: &str) -> TableRecovery {
        TableRecovery {
            table: table.to_owned(),
            recovered: 0,
            lost: None,
            lost_basis: "unknown".into(),
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
    let mut start = i64::MIN;
    loop {
        let scanned = scan_from(
            old,
            "SELECT rowid, type, name, tbl_name, sql FROM sqlite_master WHERE rowid >= ?1 ORDER BY rowid",
            start,
            &mut |row| {
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
                Ok(())
            },
        );
        match scanned {
            Scan::Done => break,
            Scan::Failed { last, error } => {
                let next = after_failure(old, "sqlite_master", start, last)
                    .and_then(|from| resume_after(old, "sqlite_master", from));
                match next {
                    Some(next) => start = next,
                    None if entries.is_empty() => {
                        return Err(format!(
                            "the damaged database's schema cannot be read: {error}"
                        ));
                    }
                    None => break,
                }
            }
        }
    }
    Ok(entries)
}

enum Scan {
    Done,
    /// The scan failed after `last` (the last rowid read), or before any row.
    Failed {
        last: Option<i64>,
        error: String,
    },
}

/// Steps through `sql`, handing each row to `take`, until the end or an error. With a rowid
/// (`sql`'s first column, from `?1 = start` on), rowids must increase: a damaged b-tree that
/// goes back is treated as damage. A WITHOUT ROWID table's scan has no `?1` and a constant
/// first column.
fn scan_from(
    conn: &Connection,
    sql: &str,
    start: i64,
    take: &mut dyn FnMut(&[Value]) -> rusqlite::Result<()>,
) -> Scan {
    let failed = |last, error: String| Scan::Failed { last, error };
    let mut stmt = match conn.prepare(sql) {
        Ok(s) => s,
        Err(e) => return failed(None, e.to_string()),
    };
    let n = stmt.column_count();
    let with_rowid = stmt.parameter_count() == 1;
    let bound = if with_rowid { vec![start] } else { Vec::new() };
    let mut rows = match stmt.query(rusqlite::params_from_iter(bound)) {
        Ok(r) => r,
        Err(e) => return failed(None, e.to_string()),
    };
    let mut last: Option<i64> = None;
    loop {
        match rows.next() {
            Ok(None) => return Scan::Done,
            Ok(Some(row)) => {
                let values: rusqlite::Result<Vec<Value>> = (0..n).map(|i| row.get(i)).collect();
                let values = match values {
                    Ok(v) => v,
                    Err(e) => return failed(last, e.to_string()),
                };
                let Value::Integer(rowid) = values[0] else {
                    return failed(last, "a row without an integer rowid".into());
                };
                if with_rowid && last.is_some_and(|l| rowid <= l) {
                    return failed(last, format!("rowid {rowid} out of order"));
                }
                if let Err(e) = take(&values) {
                    return failed(Some(rowid), e.to_string());
                }
                last = Some(rowid);
            }
            Err(e) => return failed(last, e.to_string()),
        }
    }
}

/// Where a scan of `table` from `start` that failed after reading `last` (if anything) goes
/// on: past the last row read, or, if none was read, past the row whose seek worked but
/// whose read failed (that row is lost). `None`: past the largest rowid.
fn after_failure(conn: &Connection, table: &str, start: i64, last: Option<i64>) -> Option<i64> {
    match last {
        Some(l) => l.checked_add(1),
        None => match first_rowid_from(conn, table, start) {
            Some(unreadable) => unreadable.checked_add(1),
            // The seek itself fails: `resume_after` looks past it.
            None => Some(start),
        },
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
        let probe = failing.checked_add(step)?;
        if works(probe) {
            break probe;
        }
        failing = probe;
        step = step.checked_mul(2)?;
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
    indexes: &[&str],
    progress: &mut dyn FnMut(u64),
) -> TableRecovery {
    let mut result = TableRecovery::default_for(&t.name);
    let columns = match insertable_columns(out, &t.name) {
        Ok(c) => c,
        Err(e) => {
            result.error = Some(e);
            return result;
        }
    };
    let list: Vec<String> = columns.iter().map(|c| quote(c)).collect();
    let list = list.join(", ");
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
    let (select, insert) = if without_rowid {
        let holes: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
        (
            // A constant first column keeps one scan loop for both kinds of table.
            format!("SELECT 0, {list} FROM main.{}", quote(&t.name)),
            format!(
                "{verb} INTO main.{}({list}) VALUES ({})",
                quote(&t.name),
                holes.join(", ")
            ),
        )
    } else {
        let holes: Vec<String> = (1..=columns.len() + 1).map(|i| format!("?{i}")).collect();
        (
            format!(
                "SELECT rowid, {list} FROM main.{} WHERE rowid >= ?1 ORDER BY rowid",
                quote(&t.name)
            ),
            format!(
                "{verb} INTO main.{}(rowid, {list}) VALUES ({})",
                quote(&t.name),
                holes.join(", ")
            ),
        )
    };
    let mut insert = match out.prepare(&insert) {
        Ok(s) => s,
        Err(e) => {
            result.error = Some(format!("cannot insert into it: {e}"));
            return result;
        }
    };
    let mut recovered = 0u64;
    let mut refused = 0u64;
    let insert_error = std::cell::RefCell::new(None);
    let mut take = |row: &[Value]| {
        let values = if without_rowid { &row[1..] } else { row };
        match insert.execute(rusqlite::params_from_iter(values)) {
            Ok(_) => {
                recovered += 1;
                if recovered.is_multiple_of(1000) {
                    progress(recovered);
                }
            }
            // A damaged row that breaks a constraint of its own table is lost, not fatal.
            Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation) => {
                refused += 1;
            }
            // The new file cannot take rows (disk full?): nothing more can be copied.
            Err(e) => {
                *insert_error.borrow_mut() = Some(format!("cannot write to the new file: {e}"));
                return Err(e);
            }
        }
        Ok(())
    };
    let mut start = i64::MIN;
    let mut skipped: u64 = 0;
    let mut unknown_tail = false;
    loop {
        match scan_from(old, &select, start, &mut take) {
            Scan::Done => break,
            Scan::Failed { last, error } => {
                if result.error.is_none() {
                    result.error = Some(error);
                }
                if let Some(e) = insert_error.borrow_mut().take() {
                    result.error = Some(e);
                    unknown_tail = true;
                    break;
                }
                if without_rowid {
                    unknown_tail = true;
                    break;
                }
                // Rows from `lost_from` on were not copied; the scan goes on at `next`.
                let lost_from = last.map_or(Some(start), |l| l.checked_add(1));
                let Some(lost_from) = lost_from else { break };
                let next = after_failure(old, &t.name, start, last)
                    .and_then(|from| resume_after(old, &t.name, from));
                match next {
                    Some(next) => {
                        // The first row readable from `next` on bounds what was skipped.
                        let first = first_rowid_from(old, &t.name, next).unwrap_or(next);
                        if first > lost_from {
                            result.damaged.push((lost_from, first - 1));
                            skipped += first.abs_diff(lost_from);
                        }
                        start = first.max(next);
                    }
                    None => {
                        result.damaged.push((lost_from, i64::MAX));
                        unknown_tail = true;
                        break;
                    }
                }
            }
        }
    }
    progress(recovered);
    result.recovered = recovered;
    // An index that reads through counts the rows the table had.
    if let Some((index, n)) = indexes.iter().find_map(|i| index_count(old, &t.name, i))
        && n >= recovered
    {
        result.lost = Some(n - recovered);
        result.lost_basis = format!("counted by index {index}");
        return result;
    }
    if unknown_tail {
        result.lost = None;
        result.lost_basis = "unknown".into();
    } else {
        result.lost = Some(skipped + refused);
        result.lost_basis = "the rowids skipped; exact if they were consecutive".into();
    }
    result
}

/// The number of entries of `index` (on `table`), read from the index alone; `None` for an
/// index that cannot tell the table's row count (partial, led by an expression) or does not
/// read through. `count(*)` alone would read the table, even with `INDEXED BY`; a condition
/// on the index's first column that every row meets makes SQLite scan the covering index.
fn index_count<'a>(conn: &Connection, table: &str, index: &'a str) -> Option<(&'a str, u64)> {
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
    if partial != 0 {
        return None;
    }
    let n: i64 = conn
        .query_row(
            &format!(
                "SELECT count(*) FROM main.{} INDEXED BY {} WHERE {c} IS NOT NULL OR {c} IS NULL",
                quote(table),
                quote(index),
                c = quote(&first)
            ),
            [],
            |r| r.get(0),
        )
        .ok()?;
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
        write!(f, "{}: {} rows recovered, ", self.table, self.recovered)?;
        match self.lost {
            Some(0) if self.damaged.is_empty() => f.write_str("none lost")?,
            Some(n) => write!(f, "{n} lost ({})", self.lost_basis)?,
            None => f.write_str("rows lost unknown")?,
        }
        for (from, to) in &self.damaged {
            if *to == i64::MAX {
                write!(f, "; rowids from {from} on unreadable")?;
            } else {
                write!(f, "; rowids {from}..={to} unreadable")?;
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
    fn uris_escape_only_what_sqlite_would_misread() {
        assert_eq!(
            file_uri(Path::new("/a b/c%d?e#f.db")),
            "file:/a b/c%25d%3fe%23f.db"
        );
    }
}
