//! What the `sqlite-netfs` command sees of a database, and the one clean-up it may make.
//!
//! This module owns two operations:
//! - [`examine`] (`sqlite-netfs doctor`): a read-only look at the mode decision, the lock table
//!   and tokens (parsed by `protocol`, read through `lock::files` with `O_NOFOLLOW`, or as a
//!   token link's target), the holders' liveness, the waiting lines and the writers' queue,
//!   the journal, `-wal`/`-shm` companions, the lock files' type, owner and mode, and
//!   hazards in the mount table. It creates, writes and removes nothing.
//! - [`unlock_stale`] (`sqlite-netfs unlock --stale`): removal of what dead holders left, by
//!   the lock protocol's own edit (`lock::DbLock::sweep_stale`) under its latch.
//!
//! # Liveness, as the protocol judges it (`lock`'s staleness table)
//! | holder | verdict |
//! |---|---|
//! | this host, process gone (or pid reused) | dead |
//! | any host, entry unchanged for a whole lease while watched | stale (its lease has passed) |
//! | entry changed while watched | renewing |
//! | this host, process runs, not silent for a lease | alive |
//! | another host, not watched for a lease | unknown |
//!
//! A holder on another host cannot be asked; only watching its entry for a lease tells, and
//! that lease is the applications' (`Builder::lease`), which the table does not record: the
//! caller passes it. Time since a renewal is "since its entry last changed while watched",
//! because the table holds no times (ADR 6: clocks are never compared across hosts).

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::client_cache::SizeRefresh;
use crate::detect::mode::{self, Detection, Mode};
use crate::detect::{self, MountEntry};
use crate::lock::files::{DirLockFiles, LockFileName, LockFiles, TokenStyle};
use crate::lock::protocol::{Level, LockTable, OwnerId, ParseError, fnv1a};
use crate::lock::{DbLock, LATCH_WAIT, Removed, SystemEnvironment};

/// How bad a finding is. The command's exit status is the worst one's: 0, 1 or 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Worth knowing; nothing to do.
    Info,
    /// Something to clean up or change; the database is not at risk from it now.
    Warning,
    /// Data is at risk, or connections will fail, until it is fixed.
    Problem,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Problem => "problem",
        })
    }
}

/// One thing the examination found. `code` is stable (README lists them); the message is for
/// people and may change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub code: &'static str,
    pub severity: Severity,
    pub message: String,
}

/// A holder's or token's verdict (see the module's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    Dead,
    Renewing,
    Stale,
    Unknown,
}

impl fmt::Display for Liveness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Liveness::Alive => "alive",
            Liveness::Dead => "dead",
            Liveness::Renewing => "renewing",
            Liveness::Stale => "stale",
            Liveness::Unknown => "unknown",
        })
    }
}

/// One entry of the lock table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderReport {
    pub host: String,
    pub pid: u32,
    /// Process start time in the holder's host's clock ticks (0: not recorded).
    pub start: u64,
    /// Connection number within the process.
    pub connection: u64,
    /// `SHARED`, `RESERVED`, `PENDING` or `EXCLUSIVE`.
    pub level: String,
    pub this_host: bool,
    pub liveness: Liveness,
    /// How long its entry has been seen unchanged: since its renewal, if one was seen
    /// (`renewal_seen`); else at least this long. `None` if it was not watched.
    pub silent_for: Option<Duration>,
    pub renewal_seen: bool,
}

impl HolderReport {
    /// Its host as people read it: `this host`, or the other host's id.
    pub fn host_label(&self) -> &str {
        labelled(&self.host, self.this_host)
    }
}

/// A latch or break token that exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenReport {
    pub path: PathBuf,
    /// What it holds: `host pid start conn number`, or empty if its owner was not recorded.
    pub contents: String,
    pub liveness: Liveness,
}

impl TokenReport {
    /// Its owner as people read it.
    pub fn owner_label(&self) -> &str {
        owner_label(&self.contents)
    }
}

/// A token's contents as people read them: empty means its owner was not recorded.
fn owner_label(contents: &str) -> &str {
    if contents.is_empty() {
        "owner not recorded"
    } else {
        contents
    }
}

/// A holder's host as people read it, `this host` when it is `me`.
fn host_label<'a>(host: &'a str, me: &str) -> &'a str {
    labelled(host, host == me)
}

fn labelled(host: &str, this_host: bool) -> &str {
    if this_host { "this host" } else { host }
}

/// The lock table file as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableState {
    /// No table: no process ever opened the database in network mode.
    Missing,
    Present {
        generation: u64,
        latch_breaks: u64,
    },
    Unreadable(String),
}

/// The rollback journal as found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalState {
    Missing,
    /// Zero bytes, or a header zeroed at commit: nothing to roll back.
    Empty,
    /// Holds a transaction, and a holder at RESERVED or above (a live writer) owns it.
    InUse {
        bytes: u64,
    },
    /// Holds a transaction that no live holder in the lock table owns: the next connection
    /// rolls it back. With no lock table (native mode) a live native writer is not seen,
    /// and its transaction is reported so too.
    Hot {
        bytes: u64,
    },
}

/// One waiting line of the lock table: a connection refused SHARED or RESERVED for a while
/// (`lock`, "Waiting lines").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaiterReport {
    pub host: String,
    pub pid: u32,
    pub connection: u64,
    /// `SHARED` or `RESERVED`.
    pub wants: String,
    pub this_host: bool,
    /// Its place in the writers' queue, from 1, if it waits for RESERVED: only the first may
    /// be granted RESERVED.
    pub place: Option<usize>,
}

impl WaiterReport {
    /// Its host as people read it: `this host`, or the other host's id.
    pub fn host_label(&self) -> &str {
        labelled(&self.host, self.this_host)
    }
}

/// What [`examine`] found.
#[derive(Debug, Clone)]
pub struct Report {
    pub database: PathBuf,
    /// The decision for this host, with no URI parameter (`sqlite_netfs::detect`).
    pub detection: Detection,
    pub table: TableState,
    pub holders: Vec<HolderReport>,
    /// The waiting lines, in the table's order.
    pub waiters: Vec<WaiterReport>,
    pub latch: Option<TokenReport>,
    pub break_token: Option<TokenReport>,
    pub journal: JournalState,
    /// How long the holders were watched.
    pub watched: Duration,
    pub findings: Vec<Finding>,
}

impl Report {
    /// The worst severity found, if any.
    pub fn worst(&self) -> Option<Severity> {
        self.findings.iter().map(|f| f.severity).max()
    }

    /// The command's exit status: 0 healthy (nothing, or only information), 1 warnings,
    /// 2 problems.
    pub fn exit_code(&self) -> i32 {
        match self.worst() {
            None | Some(Severity::Info) => 0,
            Some(Severity::Warning) => 1,
            Some(Severity::Problem) => 2,
        }
    }

    /// The exit status in words, as the text and JSON reports show it.
    pub fn status(&self) -> &'static str {
        match self.exit_code() {
            0 => "healthy",
            1 => "warnings",
            _ => "problems",
        }
    }

    /// Adds a finding (the `--check` result is added by the command, after examining).
    pub fn add(&mut self, code: &'static str, severity: Severity, message: String) {
        self.findings.push(Finding {
            code,
            severity,
            message,
        });
    }
}

/// How to examine.
#[derive(Debug, Clone, Copy)]
pub struct ExamineOptions {
    /// The applications' lease (`Builder::lease`; default [`crate::DEFAULT_LEASE`]).
    pub lease: Duration,
    /// Watch holders and tokens that only time can judge, for up to one lease.
    pub watch: bool,
}

/// How often a watch reads the table: well under the quarter lease at which holders renew.
const WATCH_TICK: Duration = Duration::from_millis(200);

/// Looks at the database at `db` without changing anything. `progress` is told, once, when
/// the examination waits to watch holders. Errors: the database cannot be found or is not a
/// file.
pub fn examine(
    db: &Path,
    options: ExamineOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Report, String> {
    let db = existing_database(db)?;
    let detection = mode::decide(&db, None).map_err(|e| format!("{}: {e}", db.display()))?;
    // ForcedStat even on sshfs, where connections use TouchFirst: touching sets the lock
    // file's times, and doctor writes nothing. A size sshfs cached costs little here: the
    // table is padded to whole blocks (`protocol::TABLE_BLOCK`), and a torn read fails its
    // checksum and is read again.
    let files = DirLockFiles::new(
        &db,
        TokenStyle::for_fs_type(&detection.fs_type),
        SizeRefresh::ForcedStat,
    );
    let mut findings = Vec::new();
    let me = crate::lock::owner::host_id();
    let mut watch = Watcher::default();
    let started = crate::sys::boot_time();
    let mut told = false;
    let snapshot = loop {
        let snapshot = Snapshot::read(&files);
        let watched = crate::sys::boot_time().saturating_sub(started);
        watch.observe(&snapshot, watched);
        let undecided = snapshot.undecided(me, &watch, options.lease);
        if !options.watch || undecided == 0 || watched >= options.lease {
            break snapshot;
        }
        if !told {
            progress(&format!(
                "watching {undecided} lock holder(s) or token(s) for up to {} s (one lease) to see whether they renew",
                options.lease.as_secs_f64()
            ));
            told = true;
        }
        std::thread::sleep(WATCH_TICK);
    };
    let watched = crate::sys::boot_time().saturating_sub(started);

    let table = match &snapshot.table {
        Ok(None) => TableState::Missing,
        Ok(Some(t)) => TableState::Present {
            generation: t.generation,
            latch_breaks: t.latch_breaks,
        },
        Err(why) => TableState::Unreadable(why.clone()),
    };
    let parsed = snapshot.table.as_ref().ok().and_then(Option::as_ref);
    let holders: Vec<HolderReport> = parsed
        .map(|t| {
            t.holders
                .iter()
                .map(|h| {
                    let silent = watch.silent_for(&Seen::Holder(h.owner.clone()), h.seq);
                    HolderReport {
                        host: h.owner.host.clone(),
                        pid: h.owner.pid,
                        start: h.owner.start,
                        connection: h.owner.conn,
                        level: h.level.to_string(),
                        this_host: h.owner.host == me,
                        liveness: verdict(&h.owner, me, silent, watched, options.lease),
                        silent_for: silent
                            .filter(|&(_, changed)| changed || watched >= WATCH_TICK)
                            .map(|(d, _)| d),
                        renewal_seen: silent.is_some_and(|(_, changed)| changed),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let waiters = parsed.map(|t| waiter_reports(t, me)).unwrap_or_default();
    let token = |name: LockFileName, read: &Result<Option<Vec<u8>>, String>| {
        let contents = read.as_ref().ok()?.as_ref()?;
        let owner = parse_owner(contents);
        let silent = watch.silent_for(&Seen::Token(name), fnv1a(contents));
        let liveness = match &owner {
            Some(o) => verdict(o, me, silent, watched, options.lease),
            None => verdict_by_silence(silent, watched, options.lease),
        };
        Some(TokenReport {
            path: files.path(name),
            contents: String::from_utf8_lossy(contents).trim().to_owned(),
            liveness,
        })
    };
    let latch = token(LockFileName::Latch, &snapshot.latch);
    let break_token = token(LockFileName::Break, &snapshot.break_token);

    let levels = parsed.map(|t| t.holders.iter().map(|h| h.level));
    let writer_alive = levels
        .into_iter()
        .flatten()
        .zip(&holders)
        .any(|(level, h)| {
            level >= Level::Reserved
                && matches!(
                    h.liveness,
                    Liveness::Alive | Liveness::Renewing | Liveness::Unknown
                )
        });
    // Nothing below reads the database's pages, so a file this user cannot open would
    // otherwise pass for healthy.
    if let Err(e) = std::fs::File::open(&db) {
        findings.push(Finding {
            code: "database-unreadable",
            severity: Severity::Problem,
            message: format!(
                "this user cannot read {} ({e}): its connections fail to open it, and doctor cannot tell whether it is in WAL mode",
                db.display()
            ),
        });
    }
    let journal = journal_state(&db, writer_alive, &mut findings);

    let mut report = Report {
        database: db.clone(),
        detection,
        table,
        holders,
        waiters,
        latch,
        break_token,
        journal,
        watched,
        findings,
    };
    lock_findings(&mut report, &snapshot, &files, options.lease);
    companion_findings(&mut report);
    lock_file_findings(&mut report, &files);
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mount_findings(&mut report, &detect::parse_mountinfo(&mountinfo));
    Ok(report)
}

/// The database path made absolute, after checking that it names an existing file.
fn waiter_reports(table: &LockTable, me: &str) -> Vec<WaiterReport> {
    let mut writers_ahead = 0;
    table
        .waiters
        .iter()
        .map(|w| {
            let place = (w.wants >= Level::Reserved).then(|| {
                writers_ahead += 1;
                writers_ahead
            });
            WaiterReport {
                host: w.owner.host.clone(),
                pid: w.owner.pid,
                connection: w.owner.conn,
                wants: w.wants.to_string(),
                this_host: w.owner.host == me,
                place,
            }
        })
        .collect()
}

fn existing_database(db: &Path) -> Result<PathBuf, String> {
    if db.as_os_str().is_empty() {
        return Err("an empty path names no database".into());
    }
    let absolute = std::path::absolute(db).map_err(|e| format!("{}: {e}", db.display()))?;
    match std::fs::metadata(&absolute) {
        Ok(m) if m.is_file() => Ok(absolute),
        Ok(_) => Err(format!("{}: not a database file", absolute.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(format!("{}: no such file", absolute.display()))
        }
        Err(e) => Err(format!("{}: {e}", absolute.display())),
    }
}

/// Looks at the journal again after something may have rolled it back (`doctor --check`'s
/// connection does so for a dead writer's journal, as any connection would): a hot journal
/// that is gone turns its finding into information.
pub fn recheck_journal(report: &mut Report) {
    if !matches!(report.journal, JournalState::Hot { .. }) {
        return;
    }
    report.journal = journal_state(&report.database, false, &mut Vec::new());
    if matches!(report.journal, JournalState::Hot { .. }) {
        return;
    }
    report.findings.retain(|f| f.code != "journal-hot");
    report.add(
        "journal-rolled-back",
        Severity::Info,
        "the journal held a dead writer's unfinished transaction; the check's connection rolled it back".into(),
    );
}

/// The lock files as read at one moment.
struct Snapshot {
    table: Result<Option<LockTable>, String>,
    latch: Result<Option<Vec<u8>>, String>,
    break_token: Result<Option<Vec<u8>>, String>,
}

impl Snapshot {
    fn read(files: &DirLockFiles) -> Snapshot {
        let read = |name| files.read(name).map_err(|e| e.to_string());
        Snapshot {
            table: read_table(files),
            latch: read(LockFileName::Latch),
            break_token: read(LockFileName::Break),
        }
    }

    /// How many holders and tokens only a longer watch can judge.
    fn undecided(&self, me: &str, watch: &Watcher, lease: Duration) -> usize {
        let holders = self.table.as_ref().ok().and_then(Option::as_ref);
        let holders = holders.map_or(0, |t| {
            t.holders
                .iter()
                .filter(|h| {
                    h.owner.host != me
                        && watch
                            .silent_for(&Seen::Holder(h.owner.clone()), h.seq)
                            .is_some_and(|(d, changed)| !changed && d < lease)
                })
                .count()
        });
        let tokens = [
            (LockFileName::Latch, &self.latch),
            (LockFileName::Break, &self.break_token),
        ]
        .into_iter()
        .filter(|(name, read)| {
            let Ok(Some(contents)) = read else {
                return false;
            };
            let foreign = parse_owner(contents).is_none_or(|o| o.host != me);
            foreign
                && watch
                    .silent_for(&Seen::Token(*name), fnv1a(contents))
                    .is_some_and(|(d, changed)| !changed && d < lease)
        })
        .count();
        holders + tokens
    }
}

/// Reads the table; a read that races a rewrite fails its checksum and is read again.
fn read_table(files: &DirLockFiles) -> Result<Option<LockTable>, String> {
    let mut last = String::new();
    for _ in 0..5 {
        let bytes = match files.read(LockFileName::Table) {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        match LockTable::decode(&bytes) {
            Ok(t) => return Ok(Some(t)),
            Err(ParseError::Incomplete) => last = "torn or truncated (checksum fails)".into(),
            Err(ParseError::Malformed(why)) => return Err(why),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(last)
}

/// What a watch keeps apart: each holder, and each token file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Seen {
    Holder(OwnerId),
    Token(LockFileName),
}

/// When each holder's sequence number (or token's contents) was first seen, and whether it
/// was seen to change: the observer-clock timing of `protocol::StaleTracker`, kept here with
/// the times themselves, which a report shows.
#[derive(Default)]
struct Watcher {
    seen: HashMap<Seen, (u64, Duration, bool)>,
    now: Duration,
}

impl Watcher {
    fn observe(&mut self, snapshot: &Snapshot, now: Duration) {
        self.now = now;
        if let Ok(Some(t)) = &snapshot.table {
            for h in &t.holders {
                self.note(Seen::Holder(h.owner.clone()), h.seq);
            }
        }
        for (name, read) in [
            (LockFileName::Latch, &snapshot.latch),
            (LockFileName::Break, &snapshot.break_token),
        ] {
            if let Ok(Some(contents)) = read {
                self.note(Seen::Token(name), fnv1a(contents));
            }
        }
    }

    fn note(&mut self, key: Seen, value: u64) {
        let now = self.now;
        match self.seen.get_mut(&key) {
            Some((v, since, changed)) if *v != value => {
                *v = value;
                *since = now;
                *changed = true;
            }
            Some(_) => {}
            None => {
                self.seen.insert(key, (value, now, false));
            }
        }
    }

    /// How long `key` has shown `value`, and whether it was seen to change before that.
    fn silent_for(&self, key: &Seen, value: u64) -> Option<(Duration, bool)> {
        let (v, since, changed) = self.seen.get(key)?;
        (*v == value).then(|| (self.now.saturating_sub(*since), *changed))
    }
}

fn verdict(
    owner: &OwnerId,
    me: &str,
    silent: Option<(Duration, bool)>,
    watched: Duration,
    lease: Duration,
) -> Liveness {
    if owner.host == me && !crate::lock::owner::same_host_process_alive(owner) {
        return Liveness::Dead;
    }
    match verdict_by_silence(silent, watched, lease) {
        Liveness::Unknown if owner.host == me => Liveness::Alive,
        other => other,
    }
}

fn verdict_by_silence(
    silent: Option<(Duration, bool)>,
    watched: Duration,
    lease: Duration,
) -> Liveness {
    match silent {
        Some((d, _)) if d >= lease && watched >= lease => Liveness::Stale,
        Some((_, true)) => Liveness::Renewing,
        _ => Liveness::Unknown,
    }
}

fn parse_owner(contents: &[u8]) -> Option<OwnerId> {
    let text = std::str::from_utf8(contents).ok()?;
    OwnerId::parse_fields(&mut text.split_whitespace())
}

/// Whether the journal holds a transaction to roll back, as SQLite's `hasHotJournal` decides:
/// not empty, and a first byte that is not zero. SQLite writes the header's magic only when
/// it syncs the journal, before it overwrites any database page, and zeroes or truncates it
/// at commit; until then there is nothing to undo. Read with a fresh open; on sshfs the size
/// may be up to 20 s old, since changing the file's times to refresh it would be a write.
fn journal_state(db: &Path, writer_alive: bool, findings: &mut Vec<Finding>) -> JournalState {
    let path = companion(db, "-journal");
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return JournalState::Missing,
        Err(e) => {
            findings.push(Finding {
                code: "journal-unreadable",
                severity: Severity::Problem,
                message: format!("cannot read the journal {}: {e}", path.display()),
            });
            return JournalState::Missing;
        }
    };
    let bytes = file.metadata().map_or(0, |m| m.len());
    let mut first = [0u8; 1];
    let hot = bytes > 0
        && std::os::unix::fs::FileExt::read_at(&file, &mut first, 0).is_ok_and(|n| n == 1)
        && first[0] != 0;
    match (hot, writer_alive) {
        (false, _) => JournalState::Empty,
        (true, true) => JournalState::InUse { bytes },
        (true, false) => JournalState::Hot { bytes },
    }
}

fn companion(db: &Path, suffix: &str) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// Findings about holders, tokens, the table and the journal.
fn lock_findings(report: &mut Report, snapshot: &Snapshot, files: &DirLockFiles, lease: Duration) {
    let lease_s = lease.as_secs_f64();
    if let TableState::Unreadable(why) = &report.table {
        report.add(
            "table-unreadable",
            Severity::Problem,
            format!(
                "the lock table {} cannot be read ({why}); lock requests fail until connections replace it, once it stays unchanged for a lease",
                files.path(LockFileName::Table).display()
            ),
        );
    }
    for (name, read) in [
        (LockFileName::Latch, &snapshot.latch),
        (LockFileName::Break, &snapshot.break_token),
    ] {
        if let Err(e) = read {
            report.add(
                "token-unreadable",
                Severity::Problem,
                format!("cannot read {}: {e}", files.path(name).display()),
            );
        }
    }
    let mut new = Vec::new();
    for h in &report.holders {
        let who = format!(
            "{} on {} (pid {}, connection {})",
            h.level,
            h.host_label(),
            h.pid,
            h.connection
        );
        match h.liveness {
            Liveness::Dead => new.push((
                "holder-dead",
                Severity::Warning,
                format!("{who}: its process is gone; the next lock request removes its entry, or run `sqlite-netfs unlock --stale`"),
            )),
            Liveness::Stale => new.push((
                "holder-stale",
                Severity::Warning,
                format!("{who}: unchanged for a whole lease ({lease_s} s), so it no longer uses the database; the next lock request removes it, or run `sqlite-netfs unlock --stale`"),
            )),
            Liveness::Unknown => new.push((
                "holder-unjudged",
                Severity::Info,
                format!("{who}: on another host and not watched for a lease, so not judged"),
            )),
            Liveness::Alive | Liveness::Renewing => {}
        }
    }
    for (token, what) in [
        (&report.latch, "latch"),
        (&report.break_token, "lock-break token"),
    ] {
        let Some(t) = token else { continue };
        match t.liveness {
            Liveness::Dead | Liveness::Stale => new.push((
                "token-stale",
                Severity::Warning,
                format!(
                    "the {what} {} ({}) was left by a holder that is {}; lock requests break it, or run `sqlite-netfs unlock --stale`",
                    t.path.display(),
                    t.owner_label(),
                    t.liveness
                ),
            )),
            _ => new.push((
                "token-held",
                Severity::Info,
                format!("the {what} {} is held ({}): an edit in progress", t.path.display(), t.owner_label()),
            )),
        }
    }
    match report.journal {
        // Without a lock table the writers are native SQLite's, whose locks (fcntl) the
        // examination does not read: a live one's transaction looks the same.
        JournalState::Hot { bytes } if report.table == TableState::Missing => new.push((
            "journal-hot",
            Severity::Warning,
            format!(
                "the journal holds an unfinished transaction ({bytes} bytes), and with no lock table doctor cannot see native writers: a process using the database may be in the middle of it; if none is, the next connection rolls it back; keep the journal, it is what makes the rollback possible"
            ),
        )),
        JournalState::Hot { bytes } => new.push((
            "journal-hot",
            Severity::Warning,
            format!(
                "the journal holds a transaction no live writer owns ({bytes} bytes): the next connection rolls it back; keep the journal, it is what makes the rollback possible"
            ),
        )),
        JournalState::InUse { bytes } => new.push((
            "journal-in-use",
            Severity::Info,
            format!("a live writer's transaction is in the journal ({bytes} bytes)"),
        )),
        JournalState::Missing | JournalState::Empty => {}
    }
    for (code, severity, message) in new {
        report.add(code, severity, message);
    }
}

/// `-wal`/`-shm` beside a database that network mode uses, and a host deciding differently
/// from the lock files.
fn companion_findings(report: &mut Report) {
    let network_here = report.detection.mode == Mode::Network;
    let table_present = !matches!(report.table, TableState::Missing);
    let present: Vec<String> = ["-wal", "-shm"]
        .into_iter()
        .map(|s| companion(&report.database, s))
        .filter(|p| std::fs::symlink_metadata(p).is_ok())
        .map(|p| p.display().to_string())
        .collect();
    if !present.is_empty() && (network_here || table_present) {
        // Header bytes 18 and 19 (file format read and write versions) are 2 in WAL mode.
        let mut header = [0u8; 20];
        let wal_mode = std::fs::File::open(&report.database)
            .and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut header, 0))
            .is_ok_and(|()| header[18] == 2 && header[19] == 2);
        let wal_pending =
            std::fs::metadata(companion(&report.database, "-wal")).is_ok_and(|m| m.len() > 0);
        if wal_mode || wal_pending {
            report.add(
                "wal-files",
                Severity::Problem,
                format!(
                    "the database is in WAL mode ({} beside it): a process opened it natively, and other hosts never see its WAL or locks. Network-mode opens convert it once no native process holds it, and refuse while one may (on a network filesystem: while the -shm exists); close that process",
                    present.join(", ")
                ),
            );
        } else {
            report.add(
                "wal-files",
                Severity::Warning,
                format!(
                    "{} beside a database that network mode uses: left by a process that opened it natively; remove them while nothing uses the database",
                    present.join(", ")
                ),
            );
        }
    }
    if !network_here && table_present {
        report.add(
            "mixed-modes",
            Severity::Problem,
            format!(
                "this host would open the database natively ({}), but network mode's lock table is beside it: processes in different modes do not see each other's locks. Use SQLITE_NETFS=on (or netfs=on) for every process, or remove the -netfs-* files while nothing uses the database",
                report.detection.reason
            ),
        );
    }
}

/// Lock files that a process of the database's users could not use: symbolic links, other
/// file types, files this user cannot open, modes narrower than the database's.
fn lock_file_findings(report: &mut Report, files: &DirLockFiles) {
    use std::os::unix::fs::OpenOptionsExt;
    let db_mode = std::fs::metadata(&report.database).map_or(0, |m| m.mode());
    for name in [
        LockFileName::Table,
        LockFileName::Latch,
        LockFileName::Break,
    ] {
        let path = files.path(name);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            // A token made as a link (NFS) is a lock held for a moment, not a problem; so is
            // one released since the look above.
            if name != LockFileName::Table && !crate::lock::files::planted_link(&path) {
                continue;
            }
            report.add(
                "lock-file-symlink",
                Severity::Problem,
                format!(
                    "a symbolic link stands where lock file {} belongs: network-mode opens are refused; remove it",
                    path.display()
                ),
            );
            continue;
        }
        let token_dir = name != LockFileName::Table && meta.is_dir();
        if !meta.is_file() && !token_dir {
            report.add(
                "lock-file-type",
                Severity::Problem,
                format!("{} is not a regular file; remove it", path.display()),
            );
            continue;
        }
        let owner = format!("owner uid {}, mode {:o}", meta.uid(), meta.mode() & 0o7777);
        if !token_dir {
            let opened = std::fs::OpenOptions::new()
                .read(true)
                .write(name == LockFileName::Table)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path);
            if let Err(e) = opened
                && matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM))
            {
                report.add(
                    "lock-file-access",
                    Severity::Problem,
                    format!(
                        "this user cannot {} lock file {} ({owner}): network-mode opens are refused; every user of the database needs read and write access to its lock files",
                        if name == LockFileName::Table { "read and write" } else { "read" },
                        path.display()
                    ),
                );
                continue;
            }
        }
        // Readers take locks too (a SHARED lock is an entry written into the table), so the
        // group and other users need on the lock files at least the read and write access
        // the database gives them.
        let missing = db_mode & 0o066 & !meta.mode();
        if !token_dir && missing != 0 {
            report.add(
                "lock-file-mode",
                Severity::Warning,
                format!(
                    "lock file {} ({owner}) gives other users less access than the database (mode {:o}): some users who can open the database cannot take its locks",
                    path.display(),
                    db_mode & 0o7777
                ),
            );
        }
    }
}

/// Hazards the mount table shows: a database or companion that is itself a bind-mounted file,
/// and mount options known to break locking or to cost speed.
fn mount_findings(report: &mut Report, entries: &[MountEntry]) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let file = companion(&report.database, suffix);
        let Ok(resolved) = std::fs::canonicalize(&file) else {
            continue;
        };
        if let Some(m) = entries.iter().rev().find(|m| m.mount_point == resolved) {
            report.add(
                "bind-mounted-file",
                Severity::Problem,
                format!(
                    "{} is itself a mount ({} of {} on {}): the journal, lock files and -wal/-shm beside it are made in this side's directory, which the other side never sees, so its locks and rollbacks do not reach the other side. Mount the directory that holds the database instead",
                    file.display(),
                    m.root.display(),
                    m.source,
                    m.fstype
                ),
            );
        }
    }
    let resolved = std::fs::canonicalize(&report.database).unwrap_or(report.database.clone());
    let dev = std::fs::metadata(&resolved)
        .ok()
        .map(|m| (libc::major(m.dev()), libc::minor(m.dev())));
    let Some(mount) = detect::find_mount(entries, &resolved, dev) else {
        return;
    };
    let options: Vec<&str> = mount.options.split(',').collect();
    let native = report.detection.mode == Mode::Native;
    let kernel_nfs = mount.fstype.starts_with("nfs");
    let kernel_smb = matches!(mount.fstype.as_str(), "cifs" | "smb3");
    if kernel_nfs || kernel_smb {
        // NFS's `nolock`/`local_lock=`, and CIFS's `nobrl` (no byte-range locks sent).
        let no_lock = options.iter().find(|o| {
            **o == "nolock"
                || **o == "nobrl"
                || o.strip_prefix("local_lock=").is_some_and(|v| v != "none")
        });
        if let Some(opt) = no_lock {
            report.add(
                "nfs-local-locks",
                if native { Severity::Problem } else { Severity::Warning },
                format!(
                    "{} is mounted with {opt}: fcntl and flock locks stay on this client, so SQLite without the shim (or with netfs=off) is not protected from other hosts; network mode does not rely on them",
                    mount.mount_point.display()
                ),
            );
        }
        if kernel_nfs
            && let Some(opt) = options.iter().find(|o| **o == "noac" || **o == "actimeo=0")
        {
            report.add(
                "nfs-no-attribute-cache",
                Severity::Info,
                format!(
                    "{} is mounted with {opt}: every lookup asks the server, which is safe but makes each lock edit slower",
                    mount.mount_point.display()
                ),
            );
        }
    }
    if mount.fstype == "fuse.sshfs" {
        match sshfs_reconnects(&mount.mount_point) {
            Some(true) => {}
            Some(false) => report.add(
                "sshfs-no-reconnect",
                Severity::Warning,
                format!(
                    "the sshfs serving {} runs without -o reconnect: after a dropped connection every request fails until it is mounted again; mount with -o reconnect,ServerAliveInterval=15",
                    mount.mount_point.display()
                ),
            ),
            None => report.add(
                "sshfs-options-unknown",
                Severity::Info,
                format!(
                    "cannot see the sshfs process serving {} (another pid namespace or user?), so whether it reconnects is not known",
                    mount.mount_point.display()
                ),
            ),
        }
    }
}

/// Whether the sshfs process serving `mount_point` was started with `reconnect`; `None` if
/// no such process is visible. The mount table does not show sshfs's own options.
fn sshfs_reconnects(mount_point: &Path) -> Option<bool> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        let args: Vec<&str> = cmdline.split('\0').filter(|a| !a.is_empty()).collect();
        let is_sshfs = args
            .first()
            .is_some_and(|a| a.rsplit('/').next() == Some("sshfs"));
        // A relative mount point is relative to the sshfs process's directory.
        let cwd = entry.path().join("cwd");
        if !is_sshfs
            || !args
                .iter()
                .any(|a| std::fs::canonicalize(cwd.join(a)).is_ok_and(|p| p == mount_point))
        {
            continue;
        }
        return Some(asks_for_reconnect(&args));
    }
    None
}

/// Whether an sshfs command line has `reconnect` among its options, which come as `-o a,b`
/// or `-oa,b`.
fn asks_for_reconnect(args: &[&str]) -> bool {
    let mut options = Vec::new();
    for (i, a) in args.iter().enumerate() {
        match a.strip_prefix("-o") {
            Some("") => options.extend(args.get(i + 1)),
            Some(joined) => options.push(joined),
            None => {}
        }
    }
    options
        .iter()
        .flat_map(|o| o.split(','))
        .any(|o| o == "reconnect")
}

/// What [`unlock_stale`] did.
#[derive(Debug, Clone, Default)]
pub struct UnlockReport {
    /// One line per removed entry or token: what it was and why it was judged dead.
    pub removed: Vec<String>,
    /// Holders left in the table: live, or not silent for a lease while watched.
    pub kept: Vec<String>,
    /// The journal holds a transaction that a removed writer left: the next connection
    /// rolls it back.
    pub hot_journal: bool,
    /// Why the last sweep did not get through (the latch stayed busy, or an error): what
    /// is left in the table was then not judged, and `kept` is empty. `removed` still
    /// lists what earlier sweeps removed.
    pub unfinished: Option<String>,
}

/// Removes what dead holders left, through the lock protocol's own edit
/// (`lock::DbLock::sweep_stale`): entries and tokens of this host's processes that are gone at
/// once, those of other hosts once unchanged for `lease` (watched meanwhile, so this takes
/// about a lease when another host's holder is in the table). A live holder's entry is never
/// removed: it renews every quarter lease, and each observation restarts at a change.
pub fn unlock_stale(
    db: &Path,
    lease: Duration,
    progress: &mut dyn FnMut(&str),
) -> Result<UnlockReport, String> {
    let db = existing_database(db)?;
    let detection = mode::decide(&db, None).map_err(|e| format!("{}: {e}", db.display()))?;
    let files = DirLockFiles::new(
        &db,
        TokenStyle::for_fs_type(&detection.fs_type),
        SizeRefresh::for_fs_type(&detection.fs_type),
    );
    // An edit would create a missing table, and a table beside a database on a local disk
    // switches it to network mode (ADR 16): with no table there is nothing to unlock anyway.
    let table_path = files.path(LockFileName::Table);
    if std::fs::symlink_metadata(&table_path).is_err() {
        return Err(format!(
            "{}: no lock table ({} does not exist): the database was never opened in network mode, so there is nothing to unlock",
            db.display(),
            table_path.display()
        ));
    }
    let me = crate::lock::owner::host_id();
    let mut lock = DbLock::new(
        files.clone(),
        SystemEnvironment,
        crate::lock::owner::new_owner(),
        lease,
    );
    let mut report = UnlockReport::default();
    let started = crate::sys::boot_time();
    // Two observations a lease apart are needed for another host's holder; a little more
    // than a lease lets the last sweep see the silence through.
    let deadline = lease + lease / 8 + WATCH_TICK;
    let mut told = false;
    let mut unfinished: Option<String>;
    let unreadable_before = read_table(&files).err();
    let mut writer_removed = false;
    loop {
        let (removed, outcome) = lock.sweep_stale();
        writer_removed |= removed.iter().any(
            |r| matches!(r, Removed::Holder { holder, .. } if holder.level >= Level::Reserved),
        );
        report
            .removed
            .extend(removed.iter().map(|r| describe_removal(r, me)));
        let edited = match outcome {
            Ok(true) => {
                unfinished = None;
                true
            }
            Ok(false) => {
                unfinished = Some(format!(
                    "the latch stayed taken (another connection editing the table) for {} ms at each try; run unlock again",
                    LATCH_WAIT.as_millis()
                ));
                false
            }
            // A table that cannot be read is replaced by the protocol once unchanged for a
            // lease; until then each edit says why.
            Err(e) => {
                unfinished = Some(e.to_string());
                false
            }
        };
        let elapsed = crate::sys::boot_time().saturating_sub(started);
        let waiting_for = undecided_by_time(&files, me);
        if (edited && waiting_for == 0) || elapsed >= deadline {
            break;
        }
        if !told && waiting_for > 0 {
            progress(&format!(
                "{waiting_for} holder(s) or token(s) of other hosts: watching them for one lease ({} s) before judging",
                lease.as_secs_f64()
            ));
            told = true;
        }
        std::thread::sleep(WATCH_TICK.min(lease / 8));
    }
    report.hot_journal = writer_removed
        && matches!(
            journal_state(&db, false, &mut Vec::new()),
            JournalState::Hot { .. }
        );
    // Any connection replaces a table that stays unreadable for a lease (see `lock`); the
    // sweep's edit did so.
    if let Some(why) = unreadable_before
        && read_table(&files).is_ok()
    {
        report.removed.push(format!(
            "the unreadable lock table ({why}), replaced by an empty one after a lease unchanged"
        ));
    }
    if let Some(why) = unfinished {
        // What earlier sweeps removed is reported all the same.
        report.unfinished = Some(format!("{}: {why}", db.display()));
        return Ok(report);
    }
    if let Ok(Some(table)) = read_table(&files) {
        report.kept = table
            .holders
            .iter()
            .map(|h| {
                format!(
                    "{} {} pid {} connection {}",
                    h.level,
                    host_label(&h.owner.host, me),
                    h.owner.pid,
                    h.owner.conn
                )
            })
            .collect();
    }
    Ok(report)
}

/// Holders and tokens that only silence can judge: another host's, or a token whose owner is
/// not recorded.
fn undecided_by_time(files: &DirLockFiles, me: &str) -> usize {
    let holders = read_table(files).ok().flatten().map_or(0, |t| {
        t.holders.iter().filter(|h| h.owner.host != me).count()
    });
    let tokens = [LockFileName::Latch, LockFileName::Break]
        .into_iter()
        .filter(|&name| match files.read(name) {
            Ok(Some(contents)) => parse_owner(&contents).is_none_or(|o| o.host != me),
            _ => false,
        })
        .count();
    holders + tokens
}

fn describe_removal(r: &Removed, me: &str) -> String {
    match r {
        Removed::Holder { holder, reason } => format!(
            "lock table entry {} of {} pid {} connection {} ({reason})",
            holder.level,
            host_label(&holder.owner.host, me),
            holder.owner.pid,
            holder.owner.conn
        ),
        Removed::Token {
            name,
            contents,
            reason,
        } => format!(
            "{} token [{}] ({reason})",
            name.suffix().trim_start_matches('-'),
            owner_label(contents)
        ),
    }
}

/// The report as JSON, in the shape README's "doctor --json" documents (`"version": 1`; new
/// fields may be added, none removed or changed in meaning within a version).
pub fn to_json(report: &Report, check: Option<&CheckJson<'_>>) -> String {
    let mut out = String::from("{");
    field(&mut out, "version", "1");
    field(
        &mut out,
        "database",
        &json_str(&report.database.display().to_string()),
    );
    field(
        &mut out,
        "mode",
        &json_str(&report.detection.mode.to_string()),
    );
    field(&mut out, "filesystem", &json_str(&report.detection.fs_type));
    field(
        &mut out,
        "source",
        &json_str(&report.detection.source.to_string()),
    );
    field(&mut out, "reason", &json_str(&report.detection.reason));
    let table = match &report.table {
        TableState::Missing => r#"{"state":"missing"}"#.to_owned(),
        TableState::Present {
            generation,
            latch_breaks,
        } => format!(
            r#"{{"state":"present","generation":{generation},"latch_breaks":{latch_breaks}}}"#
        ),
        TableState::Unreadable(why) => {
            format!(r#"{{"state":"unreadable","error":{}}}"#, json_str(why))
        }
    };
    field(&mut out, "lock_table", &table);
    let holders: Vec<String> = report
        .holders
        .iter()
        .map(|h| {
            format!(
                r#"{{"host":{},"pid":{},"start":{},"connection":{},"level":{},"this_host":{},"state":{},"silent_for_ms":{},"renewal_seen":{}}}"#,
                json_str(&h.host),
                h.pid,
                h.start,
                h.connection,
                json_str(&h.level),
                h.this_host,
                json_str(&h.liveness.to_string()),
                h.silent_for.map_or("null".to_owned(), |d| d.as_millis().to_string()),
                h.renewal_seen
            )
        })
        .collect();
    field(&mut out, "holders", &format!("[{}]", holders.join(",")));
    let waiters: Vec<String> = report
        .waiters
        .iter()
        .map(|w| {
            format!(
                r#"{{"host":{},"pid":{},"connection":{},"wants":{},"this_host":{},"writers_queue_place":{}}}"#,
                json_str(&w.host),
                w.pid,
                w.connection,
                json_str(&w.wants),
                w.this_host,
                w.place.map_or("null".to_owned(), |p| p.to_string()),
            )
        })
        .collect();
    field(&mut out, "waiting", &format!("[{}]", waiters.join(",")));
    for (key, token) in [("latch", &report.latch), ("break", &report.break_token)] {
        let value = token.as_ref().map_or("null".to_owned(), |t| {
            format!(
                r#"{{"path":{},"owner":{},"state":{}}}"#,
                json_str(&t.path.display().to_string()),
                json_str(&t.contents),
                json_str(&t.liveness.to_string())
            )
        });
        field(&mut out, key, &value);
    }
    let journal = match report.journal {
        JournalState::Missing => r#"{"state":"missing","bytes":0}"#.to_owned(),
        JournalState::Empty => r#"{"state":"empty","bytes":0}"#.to_owned(),
        JournalState::InUse { bytes } => format!(r#"{{"state":"in-use","bytes":{bytes}}}"#),
        JournalState::Hot { bytes } => format!(r#"{{"state":"hot","bytes":{bytes}}}"#),
    };
    field(&mut out, "journal", &journal);
    field(
        &mut out,
        "watched_ms",
        &report.watched.as_millis().to_string(),
    );
    let check = check.map_or("null".to_owned(), |c| {
        let messages: Vec<String> = c.messages.iter().map(|m| json_str(m)).collect();
        format!(
            r#"{{"kind":{},"ok":{},"messages":[{}]}}"#,
            json_str(c.kind),
            c.ok,
            messages.join(",")
        )
    });
    field(&mut out, "check", &check);
    let findings: Vec<String> = report
        .findings
        .iter()
        .map(|f| {
            format!(
                r#"{{"code":{},"severity":{},"message":{}}}"#,
                json_str(f.code),
                json_str(&f.severity.to_string()),
                json_str(&f.message)
            )
        })
        .collect();
    field(&mut out, "findings", &format!("[{}]", findings.join(",")));
    field(&mut out, "status", &json_str(report.status()));
    out.pop(); // the last field's comma
    out.push('}');
    out
}

/// The `--check` result as [`to_json`] shows it.
#[derive(Debug, Clone)]
pub struct CheckJson<'a> {
    /// `quick_check` or `integrity_check`.
    pub kind: &'a str,
    pub ok: bool,
    pub messages: &'a [String],
}

fn field(out: &mut String, key: &str, value: &str) {
    out.push_str(&json_str(key));
    out.push(':');
    out.push_str(value);
    out.push(',');
}

/// A JSON string literal (RFC 8259: quote, backslash and control characters escaped).
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::protocol::Waiter;

    #[test]
    fn only_waiters_for_reserved_have_places_in_the_writers_queue_in_table_order() {
        let waiter = |host: &str, pid, wants| Waiter {
            owner: OwnerId {
                host: host.into(),
                pid,
                start: 0,
                conn: 1,
            },
            seq: 1,
            wants,
        };
        let table = LockTable {
            waiters: vec![
                waiter("h1", 1, Level::Reserved),
                waiter("h2", 2, Level::Shared),
                waiter("h1", 3, Level::Reserved),
            ],
            ..LockTable::default()
        };
        let reports = waiter_reports(&table, "h1");
        let shown: Vec<_> = reports
            .iter()
            .map(|w| (w.pid, w.wants.as_str(), w.place, w.host_label()))
            .collect();
        assert_eq!(
            shown,
            [
                (1, "RESERVED", Some(1), "this host"),
                (2, "SHARED", None, "h2"),
                (3, "RESERVED", Some(2), "this host"),
            ]
        );
    }

    fn mount(point: &Path, fstype: &str, options: &str) -> MountEntry {
        MountEntry {
            mount_point: point.to_owned(),
            dev: (0, 0),
            fstype: fstype.into(),
            source: "server:/export".into(),
            root: PathBuf::from("/"),
            options: options.into(),
        }
    }

    fn codes(report: &Report) -> Vec<(&'static str, Severity)> {
        report
            .findings
            .iter()
            .map(|f| (f.code, f.severity))
            .collect()
    }

    #[test]
    fn mount_options_that_break_kernel_locks_or_cost_speed_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        std::fs::write(&db, b"").unwrap();
        let options = ExamineOptions {
            lease: Duration::from_secs(1),
            watch: false,
        };
        let fresh = || examine(&db, options, &mut |_| {}).unwrap();
        let dir = std::fs::canonicalize(dir.path()).unwrap();

        let mut report = fresh();
        mount_findings(
            &mut report,
            &[mount(
                &dir,
                "nfs",
                "rw,relatime,vers=3,nolock,local_lock=all",
            )],
        );
        // The database is native here (a local disk): kernel locks are all it has.
        assert_eq!(codes(&report), [("nfs-local-locks", Severity::Problem)]);

        let mut report = fresh();
        mount_findings(
            &mut report,
            &[mount(&dir, "nfs4", "rw,vers=4.2,actimeo=0,local_lock=none")],
        );
        assert_eq!(codes(&report), [("nfs-no-attribute-cache", Severity::Info)]);

        let mut report = fresh();
        mount_findings(
            &mut report,
            &[mount(&dir, "cifs", "rw,vers=3.1.1,nobrl,actimeo=0")],
        );
        assert_eq!(codes(&report), [("nfs-local-locks", Severity::Problem)]);

        let mut report = fresh();
        mount_findings(&mut report, &[mount(&dir, "fuse.sshfs", "rw,user_id=0")]);
        assert_eq!(codes(&report), [("sshfs-options-unknown", Severity::Info)]);

        let mut report = fresh();
        let file = std::fs::canonicalize(&db).unwrap();
        mount_findings(&mut report, &[mount(&file, "ext4", "rw")]);
        assert_eq!(codes(&report), [("bind-mounted-file", Severity::Problem)]);
    }

    #[test]
    fn sshfs_options_are_read_in_both_spellings() {
        let with = |args: &[&str]| asks_for_reconnect(args);
        assert!(with(&[
            "sshfs",
            "h:/x",
            "/m",
            "-o",
            "allow_other,reconnect"
        ]));
        assert!(with(&[
            "sshfs",
            "-oreconnect,ServerAliveInterval=15",
            "h:/x",
            "/m"
        ]));
        assert!(!with(&[
            "sshfs",
            "h:/x",
            "/m",
            "-o",
            "allow_other,reconnect_x"
        ]));
        assert!(!with(&["sshfs", "h:/x", "/m", "-o"]));
        assert!(sshfs_reconnects(Path::new("/nonexistent-mount-point")).is_none());
    }

    #[test]
    fn json_strings_escape_what_rfc_8259_requires() {
        assert_eq!(json_str("a\"b\\c\nd\u{1}é"), r#""a\"b\\c\nd\u0001é""#);
    }

    /// A JSON value, as far as the test below needs one.
    #[derive(Debug, PartialEq)]
    enum Json {
        Null,
        Bool(bool),
        Number(String),
        Str(String),
        Array(Vec<Json>),
        Object(Vec<(String, Json)>),
    }

    impl Json {
        fn get(&self, key: &str) -> &Json {
            match self {
                Json::Object(fields) => &fields.iter().find(|(k, _)| k == key).unwrap().1,
                other => panic!("{other:?} has no field {key}"),
            }
        }
    }

    /// A strict RFC 8259 parser of one whole document: any error is a panic naming where.
    fn parse_json(text: &str) -> Json {
        fn ws(b: &[u8], i: &mut usize) {
            while *i < b.len() && b" \t\n\r".contains(&b[*i]) {
                *i += 1;
            }
        }
        fn expect(b: &[u8], i: &mut usize, c: u8) {
            assert_eq!(b.get(*i), Some(&c), "expected {:?} at {i}", c as char);
            *i += 1;
        }
        fn string(b: &[u8], i: &mut usize) -> String {
            expect(b, i, b'"');
            let mut out = String::new();
            loop {
                let c = *b.get(*i).expect("unterminated string");
                *i += 1;
                match c {
                    b'"' => return out,
                    b'\\' => {
                        let e = b[*i];
                        *i += 1;
                        out.push(match e {
                            b'"' => '"',
                            b'\\' => '\\',
                            b'/' => '/',
                            b'b' => '\u{8}',
                            b'f' => '\u{c}',
                            b'n' => '\n',
                            b'r' => '\r',
                            b't' => '\t',
                            b'u' => {
                                let hex = std::str::from_utf8(&b[*i..*i + 4]).unwrap();
                                *i += 4;
                                char::from_u32(u32::from_str_radix(hex, 16).unwrap()).unwrap()
                            }
                            other => panic!("bad escape \\{} at {i}", other as char),
                        });
                    }
                    c if c < 0x20 => panic!("raw control character {c:#x} at {i}"),
                    _ => {
                        // One UTF-8 character, whole.
                        let start = *i - 1;
                        while *i < b.len() && b[*i] & 0xc0 == 0x80 {
                            *i += 1;
                        }
                        out.push_str(std::str::from_utf8(&b[start..*i]).unwrap());
                    }
                }
            }
        }
        fn value(b: &[u8], i: &mut usize) -> Json {
            ws(b, i);
            let v = match b.get(*i).expect("value expected") {
                b'{' => {
                    *i += 1;
                    let mut fields = Vec::new();
                    ws(b, i);
                    if b[*i] == b'}' {
                        *i += 1;
                        return Json::Object(fields);
                    }
                    loop {
                        ws(b, i);
                        let k = string(b, i);
                        ws(b, i);
                        expect(b, i, b':');
                        fields.push((k, value(b, i)));
                        ws(b, i);
                        if b[*i] == b',' {
                            *i += 1;
                        } else {
                            expect(b, i, b'}');
                            break Json::Object(fields);
                        }
                    }
                }
                b'[' => {
                    *i += 1;
                    let mut items = Vec::new();
                    ws(b, i);
                    if b[*i] == b']' {
                        *i += 1;
                        return Json::Array(items);
                    }
                    loop {
                        items.push(value(b, i));
                        ws(b, i);
                        if b[*i] == b',' {
                            *i += 1;
                        } else {
                            expect(b, i, b']');
                            break Json::Array(items);
                        }
                    }
                }
                b'"' => Json::Str(string(b, i)),
                b't' if b[*i..].starts_with(b"true") => {
                    *i += 4;
                    Json::Bool(true)
                }
                b'f' if b[*i..].starts_with(b"false") => {
                    *i += 5;
                    Json::Bool(false)
                }
                b'n' if b[*i..].starts_with(b"null") => {
                    *i += 4;
                    Json::Null
                }
                b'-' | b'0'..=b'9' => {
                    let start = *i;
                    *i += 1;
                    while *i < b.len() && b[*i].is_ascii_digit() {
                        *i += 1;
                    }
                    Json::Number(std::str::from_utf8(&b[start..*i]).unwrap().to_owned())
                }
                other => panic!("unexpected {:?} at {i}", *other as char),
            };
            ws(b, i);
            v
        }
        let b = text.as_bytes();
        let mut i = 0;
        let v = value(b, &mut i);
        assert_eq!(i, b.len(), "trailing text after the document");
        v
    }

    #[test]
    fn doctors_json_is_valid_and_gives_back_every_string_exactly() {
        let nasty = "q\"uote b\\ack\nnew\u{1}ctl\ttab é \u{7f}";
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join(nasty.replace('/', "_"));
        std::fs::create_dir(&sub).unwrap();
        let db = sub.join("a.db");
        std::fs::write(&db, b"").unwrap();
        let options = ExamineOptions {
            lease: Duration::from_secs(1),
            watch: false,
        };
        let mut report = examine(&db, options, &mut |_| {}).unwrap();
        report.holders.push(HolderReport {
            host: nasty.into(),
            pid: 7,
            start: 8,
            connection: 9,
            level: "SHARED".into(),
            this_host: false,
            liveness: Liveness::Unknown,
            silent_for: None,
            renewal_seen: false,
        });
        report.latch = Some(TokenReport {
            path: db.clone(),
            contents: nasty.into(),
            liveness: Liveness::Stale,
        });
        report.add("integrity", Severity::Problem, nasty.into());
        let messages = [nasty.to_owned(), String::new()];
        let check = CheckJson {
            kind: "quick_check",
            ok: false,
            messages: &messages,
        };

        let json = parse_json(&to_json(&report, Some(&check)));
        let text = |v: &Json| match v {
            Json::Str(s) => s.clone(),
            other => panic!("not a string: {other:?}"),
        };
        assert_eq!(json.get("version"), &Json::Number("1".into()));
        assert_eq!(text(json.get("database")), db.display().to_string());
        let Json::Array(holders) = json.get("holders") else {
            panic!("holders")
        };
        assert_eq!(text(holders[0].get("host")), nasty);
        assert_eq!(holders[0].get("silent_for_ms"), &Json::Null);
        assert_eq!(text(json.get("latch").get("owner")), nasty);
        assert_eq!(json.get("break"), &Json::Null);
        let Json::Array(findings) = json.get("findings") else {
            panic!("findings")
        };
        assert_eq!(text(findings.last().unwrap().get("message")), nasty);
        assert_eq!(
            json.get("check").get("messages"),
            &Json::Array(vec![Json::Str(nasty.into()), Json::Str(String::new())])
        );
        assert_eq!(text(json.get("status")), "problems");
    }

    #[test]
    fn silence_is_judged_only_after_a_lease_of_watching() {
        let lease = Duration::from_secs(10);
        let s = |secs, changed| Some((Duration::from_secs(secs), changed));
        assert_eq!(
            verdict_by_silence(s(3, false), Duration::from_secs(3), lease),
            Liveness::Unknown
        );
        assert_eq!(
            verdict_by_silence(s(3, true), Duration::from_secs(9), lease),
            Liveness::Renewing
        );
        assert_eq!(
            verdict_by_silence(s(10, false), Duration::from_secs(10), lease),
            Liveness::Stale
        );
        assert_eq!(
            verdict_by_silence(None, Duration::from_secs(10), lease),
            Liveness::Unknown
        );
    }

    #[test]
    fn a_watch_restarts_a_holders_silence_when_its_entry_changes() {
        let mut w = Watcher::default();
        let key = Seen::Token(LockFileName::Latch);
        w.now = Duration::from_secs(1);
        w.note(key.clone(), 5);
        w.now = Duration::from_secs(4);
        assert_eq!(w.silent_for(&key, 5), Some((Duration::from_secs(3), false)));
        w.note(key.clone(), 6);
        w.now = Duration::from_secs(5);
        assert_eq!(w.silent_for(&key, 6), Some((Duration::from_secs(1), true)));
        assert_eq!(w.silent_for(&key, 5), None);
    }
}
