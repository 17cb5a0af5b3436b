//! The worker side of the fault harness: the roles a fault worker runs, what it logs, and the
//! phase it announces (the tables in `super`).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sqlite_netfs::rusqlite::{self, Connection, ErrorCode};

use crate::common::worker::{self, Job};

use super::*;

/// The phase file of a worker whose log is `out`.
pub fn phase_file(out: &Path) -> PathBuf {
    worker::beside(out, ".phase")
}

/// Where a worker records its phase: one fixed-width record rewritten in place, so a reader
/// never sees a mix of two phases longer than the width.
struct PhaseFile(File);

impl PhaseFile {
    fn create(out: &Path) -> PhaseFile {
        PhaseFile(
            OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(phase_file(out))
                .expect("phase file"),
        )
    }

    fn set(&self, phase: &str) {
        let mut record = [b' '; 8];
        record[..phase.len()].copy_from_slice(phase.as_bytes());
        self.0.write_at(&record, 0).expect("phase write");
    }
}

/// The acknowledgement log: appended and fsynced line by line.
struct AckLog(File);

impl AckLog {
    /// Opens the log and returns it with this worker's incarnation (see the module doc).
    fn open(out: &Path) -> (AckLog, u64) {
        let incarnation = std::fs::read_to_string(out)
            .unwrap_or_default()
            .matches("# start ")
            .count() as u64;
        let mut log = AckLog(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(out)
                .expect("ack log"),
        );
        // The wall clock as this process sees it, so a test can confirm a clock skew took hold.
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        log.line(&format!(
            "# start {incarnation} pid={} wall={wall}",
            std::process::id()
        ));
        (log, incarnation)
    }

    /// One `write` per line: `writeln!` would issue several, and a kill between them would
    /// glue the next incarnation's first line onto a half-written one.
    fn line(&mut self, text: &str) {
        self.0
            .write_all(format!("{text}\n").as_bytes())
            .expect("ack log write");
        self.0.sync_data().expect("ack log fsync");
    }
}

fn connect(job: &Job) -> rusqlite::Result<Connection> {
    register(lease_from_env());
    let conn = worker::open(job)?;
    // A small page cache makes large transactions spill to the journal and the database file
    // before COMMIT, so kills land between writing pages and committing too.
    conn.execute_batch("PRAGMA cache_size = 8")?;
    Ok(conn)
}

/// Opens the database, retrying for up to a minute: an application restarted after a crash
/// would retry too, and a worker that gave up would look like a stuck lock. Each failure is
/// logged as an `open:` error.
fn connect_retrying(job: &Job, log: &mut AckLog, tally: &mut Tally) -> Option<Connection> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match connect(job) {
            Ok(c) => return Some(c),
            Err(e) => {
                let kind = format!("open:{}", worker::error_kind(&e));
                log.line(&format!("# error {kind} at={}", unix_ms()));
                *tally.errors.entry(kind).or_default() += 1;
                if Instant::now() > deadline || job.stop_file.exists() {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

fn is_damage(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt) | Some(ErrorCode::NotADatabase)
    )
}

/// Counter and row count, read in one transaction.
pub fn counter_and_rows(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    conn.execute_batch("BEGIN")?;
    let read = (|| {
        let v = conn.query_row("SELECT v FROM counter WHERE id = 1", [], |r| r.get(0))?;
        let n = conn.query_row("SELECT count(*) FROM rows", [], |r| r.get(0))?;
        Ok((v, n))
    })();
    let _ = conn.execute_batch("COMMIT");
    read
}

/// After a worker saw damage (a torn read, "malformed"): is the file damaged, or only this
/// connection's view of it? Reads again on this connection and on a fresh one, and logs both.
fn recheck_view(job: &Job, conn: &Connection, log: &mut AckLog, what: &str) {
    let look = |c: &Connection| {
        let check = c
            .query_row("PRAGMA quick_check", [], |r| r.get::<_, String>(0))
            .unwrap_or_else(|e| worker::error_kind(&e));
        match counter_and_rows(c) {
            Ok((v, n)) => format!("{check}/counter={v}/rows={n}"),
            Err(e) => format!("{check}/{}", worker::error_kind(&e)),
        }
    };
    let same = look(conn);
    let fresh = connect(job).map_or_else(|e| worker::error_kind(&e), |c| look(&c));
    log.line(&format!(
        "# recheck {what} same={same} fresh={fresh} at={}",
        unix_ms()
    ));
}

/// Error counts of one worker incarnation, written at its end (a killed one writes none, but
/// each error is also logged as it happens).
#[derive(Default)]
struct Tally {
    busy: u64,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn error(&mut self, log: &mut AckLog, e: &rusqlite::Error) {
        if worker::is_busy(e) {
            self.busy += 1;
        } else {
            let kind = worker::error_kind(e);
            log.line(&format!("# error {kind} at={}", unix_ms()));
            *self.errors.entry(kind).or_default() += 1;
        }
    }

    fn close(&self, log: &mut AckLog, what: &str) {
        log.line(&format!("# done {what} busy={}", self.busy));
    }
}

/// Milliseconds since the Unix epoch as this process sees it, for lining up a worker's
/// errors with the driver's kills and outages. (A worker under libfaketime is off by its
/// offset; its `# start` line's `wall=` shows by how much.)
pub fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// Entry point for the `fault-*` roles (called by `worker::run_from_env`).
pub fn run_role(job: &Job) {
    match job.role.as_str() {
        "fault-writer" => fault_writer(job),
        "fault-reader" => fault_reader(job),
        "fault-holder" => fault_holder(job),
        other => panic!("unknown fault role {other}"),
    }
}

fn stop_requested(job: &Job, done: u32) -> bool {
    job.stop_file.exists() || (job.transactions > 0 && done >= job.transactions)
}

/// Write transactions until the stop file appears (or `transactions` are acknowledged, if
/// non-zero). Most are one small row; some are several rows of `payload_bytes` each, several
/// pages that spill before COMMIT. The counter moves by the number of rows inserted.
fn fault_writer(job: &Job) {
    let (mut log, incarnation) = AckLog::open(&job.out);
    let phase = PhaseFile::create(&job.out);
    phase.set("idle");
    let mut tally = Tally::default();
    let Some(conn) = connect_retrying(job, &mut log, &mut tally) else {
        return tally.close(&mut log, "open-failed");
    };
    let mut rng = Rng::new(u64::from(std::process::id()) << 20 | u64::from(job.worker_id));
    let mut seq = 0u32;
    let mut done = 0u32;
    while !stop_requested(job, done) {
        let txn = incarnation as i64 * 1_000_000 + i64::from(seq);
        seq += 1;
        let (parts, size) = if rng.below(10) < 3 {
            (LARGE_ROWS + 1 + rng.below(3) as u32, job.payload.largest())
        } else {
            (1, 64)
        };
        let payload = vec![(txn % 251) as u8; size];
        let mut in_commit = false;
        let result = (|| -> rusqlite::Result<()> {
            conn.execute_batch("BEGIN IMMEDIATE")?;
            phase.set("reserved");
            let body = (|| {
                conn.execute(
                    "UPDATE counter SET v = v + ?1 WHERE id = 1",
                    [i64::from(parts)],
                )?;
                phase.set("pages");
                for part in 0..parts {
                    conn.execute(
                        "INSERT INTO rows(worker, txn, part, parts, payload) VALUES (?1, ?2, ?3, ?4, ?5)",
                        rusqlite::params![job.worker_id, txn, part, parts, payload],
                    )?;
                }
                phase.set("commit");
                in_commit = true;
                conn.execute_batch("COMMIT")
            })();
            if body.is_err() && !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            body
        })();
        match result {
            Ok(()) => {
                phase.set("acked");
                log.line(&txn.to_string());
                done += 1;
            }
            Err(e) => {
                if in_commit && !worker::is_busy(&e) {
                    // The commit may have reached the server before the error (a file server
                    // that went away before answering): present without an acknowledgement.
                    log.line(&format!("# unknown-outcome {txn}"));
                }
                tally.error(&mut log, &e);
                if is_damage(&e) {
                    recheck_view(job, &conn, &mut log, "damage");
                }
            }
        }
        phase.set("idle");
        std::thread::sleep(Duration::from_millis(rng.below(10)));
    }
    tally.close(&mut log, "writer");
}

/// Read transactions until the stop file appears, each holding SHARED for a few milliseconds
/// between reading the counter and counting the rows; a mismatch is a torn read.
fn fault_reader(job: &Job) {
    let (mut log, _) = AckLog::open(&job.out);
    let phase = PhaseFile::create(&job.out);
    phase.set("idle");
    let mut tally = Tally::default();
    let Some(conn) = connect_retrying(job, &mut log, &mut tally) else {
        return tally.close(&mut log, "open-failed");
    };
    let mut rng = Rng::new(u64::from(std::process::id()) << 20 | u64::from(job.worker_id));
    // Counted since the last progress line: a reader SIGKILLed by the driver never writes its
    // `done` line, and its checks would be lost from the report.
    let mut checks = 0u64;
    let mut reported_at = Instant::now();
    while !job.stop_file.exists() {
        if reported_at.elapsed() >= Duration::from_secs(1) {
            log.line(&format!("# reader-progress checks={checks}"));
            (checks, reported_at) = (0, Instant::now());
        }
        let result = (|| -> rusqlite::Result<(i64, i64)> {
            conn.execute_batch("BEGIN")?;
            let read = (|| {
                let v: i64 =
                    conn.query_row("SELECT v FROM counter WHERE id = 1", [], |r| r.get(0))?;
                phase.set("read");
                std::thread::sleep(Duration::from_millis(rng.below(20)));
                let n: i64 = conn.query_row("SELECT count(*) FROM rows", [], |r| r.get(0))?;
                Ok((v, n))
            })();
            let _ = conn.execute_batch("COMMIT");
            read
        })();
        phase.set("idle");
        match result {
            Ok((v, n)) => {
                checks += 1;
                if v != n {
                    log.line(&format!("# torn counter={v} rows={n} at={}", unix_ms()));
                    recheck_view(job, &conn, &mut log, "torn");
                }
            }
            Err(e) => {
                tally.error(&mut log, &e);
                if is_damage(&e) {
                    recheck_view(job, &conn, &mut log, "damage");
                }
            }
        }
        std::thread::sleep(Duration::from_millis(2 + rng.below(10)));
    }
    tally.close(&mut log, &format!("reader checks={checks}"));
}

/// Opens one write transaction (`BEGIN IMMEDIATE`, one row), reports `holding`, and keeps it
/// open until the stop file appears (or `transactions` milliseconds pass), then commits and
/// acknowledges it. The stale-recovery and clock-skew tests kill it while it holds, or let it
/// commit to prove its lock was never broken.
fn fault_holder(job: &Job) {
    let (mut log, incarnation) = AckLog::open(&job.out);
    let phase = PhaseFile::create(&job.out);
    phase.set("idle");
    let mut tally = Tally::default();
    let result = (|| -> rusqlite::Result<i64> {
        let conn = connect(job)?;
        let txn = incarnation as i64 * 1_000_000;
        conn.execute_batch("BEGIN IMMEDIATE")?;
        // With a payload, enough rows to spill: the holder then holds EXCLUSIVE with a live
        // journal and changed pages in the database file.
        let (parts, payload) = match job.payload.largest() {
            0 => (1, vec![0u8]),
            n => (HOLDER_SPILL_ROWS, vec![0x33u8; n]),
        };
        conn.execute(
            "UPDATE counter SET v = v + ?1 WHERE id = 1",
            [i64::from(parts)],
        )?;
        for part in 0..parts {
            conn.execute(
                "INSERT INTO rows(worker, txn, part, parts, payload) VALUES (?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![job.worker_id, txn, part, parts, payload],
            )?;
        }
        phase.set("holding");
        let started = Instant::now();
        let hold = Duration::from_millis(u64::from(job.transactions));
        while !job.stop_file.exists() && (hold.is_zero() || started.elapsed() < hold) {
            std::thread::sleep(Duration::from_millis(10));
        }
        phase.set("commit");
        conn.execute_batch("COMMIT")?;
        Ok(txn)
    })();
    match result {
        Ok(txn) => {
            phase.set("acked");
            log.line(&txn.to_string());
        }
        Err(e) => tally.error(&mut log, &e),
    }
    phase.set("idle");
    tally.close(&mut log, "holder");
}

/// Creates the tables of the fault workload (through the native VFS, before any worker runs).
pub fn create_fault_schema(db: &Path) {
    worker::create_schema_natively(
        db,
        "CREATE TABLE IF NOT EXISTS counter(id INTEGER PRIMARY KEY, v INTEGER NOT NULL);
         INSERT OR IGNORE INTO counter VALUES (1, 0);
         CREATE TABLE IF NOT EXISTS rows(id INTEGER PRIMARY KEY, worker INTEGER NOT NULL,
             txn INTEGER NOT NULL, part INTEGER NOT NULL, parts INTEGER NOT NULL, payload BLOB);
         CREATE INDEX IF NOT EXISTS rows_by_txn ON rows(worker, txn);",
    );
}
