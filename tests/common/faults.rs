//! The fault harness: worker roles that survive being killed at any instruction, a driver that
//! kills and restarts them, and the verification every fault test ends with.
//!
//! # Ground truth
//! A fault worker appends the id of every transaction whose `COMMIT` returned OK to its own
//! acknowledgement log on local disk and fsyncs it before starting the next transaction. What
//! the log holds was acknowledged; what the database holds afterwards must include all of it.
//! A worker killed between `COMMIT` returning and the log write leaves one transaction that is
//! present but unacknowledged, so each kill may add at most one such transaction.
//!
//! # Transaction ids
//! A worker's incarnation is the number of `# start` lines already in its log (it appends one
//! before opening the database), so ids `incarnation * 1_000_000 + seq` never repeat across
//! restarts of a killed worker, without the driver having to pass anything.
//!
//! # Phases
//! Each worker keeps its current phase in a small file beside its log (`<log>.phase`), so the
//! driver can aim kills and report where they landed:
//!
//! | phase      | the worker is                                                         |
//! |------------|-----------------------------------------------------------------------|
//! | `read`     | inside a read transaction (SHARED held)                               |
//! | `reserved` | after `BEGIN IMMEDIATE`, updating the counter (RESERVED held)         |
//! | `pages`    | writing rows; large transactions spill pages to the journal and the database file under EXCLUSIVE before `COMMIT` |
//! | `commit`   | inside `COMMIT` (journal write and sync, database write, journal reset) |
//! | `acked`    | `COMMIT` returned OK, acknowledgement not yet logged                  |
//! | `holding`  | a holder's transaction open, waiting to be killed or released          |
//! | `idle`     | between transactions                                                  |
//!
//! # Settings passed to workers by environment
//! [`LEASE_ENV`] sets the lease a worker registers the shim with (tests use short leases so a
//! holder on "another host" is recovered in seconds); [`sqlite_netfs::HOST_ID_ENV`] makes a
//! worker look like another host.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sqlite_netfs::rusqlite::{self, Connection, ErrorCode, OpenFlags};

use super::stress::{keep_evidence, log_dir};
use super::worker::{self, Job, Payload, Place, Running};

/// Lease in milliseconds that fault workers (and observers in the test process) register with.
pub const LEASE_ENV: &str = "SQLITE_NETFS_TEST_LEASE_MS";
/// Soak mode: run each kill workload this many seconds instead of the CI-sized duration.
pub const SOAK_ENV: &str = "SQLITE_NETFS_SOAK_SECS";
/// Replays a run: the seed of the driver's random choices (printed by every run).
pub const SEED_ENV: &str = "SQLITE_NETFS_FAULT_SEED";

/// Transactions with more rows than this many are "large": several pages each.
const LARGE_ROWS: u32 = 3;
/// Rows a holder with a payload writes: far more pages than the workers' page cache holds.
const HOLDER_SPILL_ROWS: u32 = 40;

/// Registers the shim as `netfs` with `lease` (the default lease if `None`). Every process of a
/// test binary must use one lease: a second registration with other options is refused.
pub fn register(lease: Option<Duration>) {
    let builder = sqlite_netfs::Builder::new();
    let builder = match lease {
        Some(l) => builder.lease(l),
        None => builder,
    };
    builder.register().expect("register the shim");
}

fn lease_from_env() -> Option<Duration> {
    let ms = std::env::var(LEASE_ENV).ok()?;
    Some(Duration::from_millis(
        ms.parse().expect("lease in milliseconds"),
    ))
}

/// A small deterministic random source (xorshift), so a failing run can be replayed from its
/// printed seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// Seeded from [`SEED_ENV`] if set, else from the clock; prints the seed either way.
    pub fn for_run(label: &str) -> Rng {
        let seed = std::env::var(SEED_ENV)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{label}: {SEED_ENV}={seed}");
        Rng::new(seed)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform between `lo` and `hi`.
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = hi.saturating_sub(lo).as_micros() as u64;
        lo + Duration::from_micros(if span == 0 { 0 } else { self.below(span + 1) })
    }
}

// ---------------------------------------------------------------------------------------------
// Worker side
// ---------------------------------------------------------------------------------------------

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
    let conn = Connection::open_with_flags(job.uri(), OpenFlags::default())?;
    conn.busy_timeout(Duration::from_millis(job.busy_timeout_ms))?;
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

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked)
    )
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
        if is_busy(e) {
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
                if in_commit && !is_busy(&e) {
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
    let mut checks = 0u64;
    while !job.stop_file.exists() {
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
pub fn create_schema(db: &Path) {
    let conn = Connection::open_with_flags_and_vfs(db, OpenFlags::default(), c"unix").unwrap();
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS counter(id INTEGER PRIMARY KEY, v INTEGER NOT NULL);
         INSERT OR IGNORE INTO counter VALUES (1, 0);
         CREATE TABLE IF NOT EXISTS rows(id INTEGER PRIMARY KEY, worker INTEGER NOT NULL,
             txn INTEGER NOT NULL, part INTEGER NOT NULL, parts INTEGER NOT NULL, payload BLOB);
         CREATE INDEX IF NOT EXISTS rows_by_txn ON rows(worker, txn);",
    )
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Driver side
// ---------------------------------------------------------------------------------------------

/// A connection of the test process itself through the shim (registered with `lease`).
pub fn open_observer(db: &Path, uri_params: &str, lease: Option<Duration>) -> Connection {
    register(lease);
    let conn = Connection::open(format!("file:{}?vfs=netfs{uri_params}", db.display()))
        .expect("open through the shim");
    conn.busy_timeout(Duration::from_secs(120)).unwrap();
    conn
}

/// Commits one transaction of the fault schema on `conn` (one row, counter + 1) and returns
/// when the write lock was granted, so callers can time lock recovery apart from the commit.
pub fn commit_one(conn: &Connection, worker: i64, txn: i64) -> rusqlite::Result<Instant> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let locked = Instant::now();
    let body = (|| {
        conn.execute("UPDATE counter SET v = v + 1 WHERE id = 1", [])?;
        conn.execute(
            "INSERT INTO rows(worker, txn, part, parts, payload) VALUES (?1, ?2, 0, 1, x'01')",
            rusqlite::params![worker, txn],
        )?;
        conn.execute_batch("COMMIT")
    })();
    if body.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    body.map(|()| locked)
}

/// Median and maximum of durations, in milliseconds.
pub fn median_max_ms(samples: &[Duration]) -> (u128, u128) {
    let mut ms: Vec<u128> = samples.iter().map(Duration::as_millis).collect();
    ms.sort_unstable();
    match ms.len() {
        0 => (0, 0),
        n => ((ms[(n - 1) / 2] + ms[n / 2]) / 2, ms[n - 1]),
    }
}

/// What one worker's log says.
#[derive(Debug, Clone, Default)]
pub struct LogSummary {
    /// Acknowledged transaction ids.
    pub acked: BTreeSet<i64>,
    pub starts: u64,
    /// Incarnations that reached their end (not killed).
    pub finished: u64,
    pub busy: u64,
    pub errors: BTreeMap<String, u64>,
    pub torn: u64,
    pub reader_checks: u64,
    /// Transactions whose `COMMIT` failed with an error other than BUSY.
    pub unknown_outcomes: u64,
    /// The wall clock (Unix seconds) the latest incarnation saw when it started.
    pub wall_at_start: Option<u64>,
}

/// Reads a worker's acknowledgement log.
pub fn read_log(out: &Path) -> LogSummary {
    let mut s = LogSummary::default();
    for line in std::fs::read_to_string(out).unwrap_or_default().lines() {
        if let Ok(txn) = line.parse::<i64>() {
            s.acked.insert(txn);
        } else if let Some(rest) = line.strip_prefix("# start") {
            s.starts += 1;
            s.wall_at_start = rest
                .split(' ')
                .find_map(|f| f.strip_prefix("wall=")?.parse().ok());
        } else if let Some(rest) = line.strip_prefix("# error ") {
            let kind = rest.split_once(" at=").map_or(rest, |(kind, _)| kind);
            *s.errors.entry(kind.to_owned()).or_default() += 1;
        } else if line.starts_with("# unknown-outcome") {
            s.unknown_outcomes += 1;
        } else if line.starts_with("# torn") {
            s.torn += 1;
        } else if let Some(rest) = line.strip_prefix("# done ") {
            s.finished += 1;
            for field in rest.split(' ') {
                if let Some(v) = field.strip_prefix("busy=") {
                    s.busy += v.parse::<u64>().unwrap_or(0);
                } else if let Some(v) = field.strip_prefix("checks=") {
                    s.reader_checks += v.parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    s
}

/// The workers of a fault run and the mount ("host") each uses.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    /// Names the database and the FIGURES line.
    pub label: String,
    /// `local`, `sshfs` or `smb`, for the FIGURES line.
    pub testbed: String,
    /// The shared directory as each "host" sees it; worker `i` uses `mounts[i % len]`.
    pub mounts: Vec<PathBuf>,
    /// The same directory on the server, where the schema is created.
    pub server_dir: PathBuf,
    /// Extra URI parameters, e.g. `&netfs=on` on a local disk.
    pub uri_params: String,
    pub writers: usize,
    pub readers: usize,
    /// Rows of large transactions carry this many bytes each.
    pub payload_bytes: usize,
    pub busy_timeout_ms: u64,
    /// `None`: the default lease.
    pub lease: Option<Duration>,
    /// Workers with an odd index use this host identity (they look like another machine).
    pub other_host_id: Option<String>,
    /// Extra environment for single workers, by index (e.g. a skewed clock).
    pub worker_env: Vec<(usize, String, String)>,
    /// Where each mount's workers run, parallel to `mounts` (empty: all on this machine).
    pub places: Vec<Place>,
    /// Where the workers' logs go (see `StressPlan::log_root`).
    pub log_root: Option<PathBuf>,
}

impl FaultPlan {
    pub fn new(label: &str, testbed: &str, mounts: Vec<PathBuf>, server_dir: PathBuf) -> Self {
        FaultPlan {
            label: label.into(),
            testbed: testbed.into(),
            mounts,
            server_dir,
            uri_params: String::new(),
            writers: 3,
            readers: 1,
            payload_bytes: 3000,
            busy_timeout_ms: 30_000,
            lease: None,
            other_host_id: Some("fault-other-host".into()),
            worker_env: Vec::new(),
            places: Vec::new(),
            log_root: None,
        }
    }

    /// The database as the server stores it.
    pub fn server_db(&self) -> PathBuf {
        self.server_dir.join(self.db_name())
    }

    fn db_name(&self) -> String {
        format!(
            "{}.db",
            self.label.replace(|c: char| !c.is_alphanumeric(), "-")
        )
    }
}

/// One database as a fault test reaches it: from host A and from host B (the two mounts of a
/// testbed; the same path on a local disk), and as the file server has it, with the URI
/// parameters that put it in network mode.
#[derive(Debug, Clone)]
pub struct DbPlace {
    /// "local", "sshfs" or "smb".
    pub testbed: &'static str,
    pub host_a: PathBuf,
    pub host_b: PathBuf,
    pub server: PathBuf,
    pub uri_params: String,
}

impl DbPlace {
    /// `name` in `dir` on a local disk, in forced network mode.
    pub fn local(dir: &Path, name: &str) -> DbPlace {
        let db = dir.join(name);
        DbPlace {
            testbed: "local",
            host_a: db.clone(),
            host_b: db.clone(),
            server: db,
            uri_params: "&netfs=on".into(),
        }
    }

    /// `name` on a testbed's export, in network mode by detection.
    pub fn on(testbed: &super::testbed::TwoHostTestbed, name: &str) -> DbPlace {
        DbPlace {
            testbed: testbed.kind(),
            host_a: testbed.mount_a().join(name),
            host_b: testbed.mount_b().join(name),
            server: testbed.server_dir().join(name),
            uri_params: String::new(),
        }
    }
}

/// One worker slot: its job, its environment, where it runs, and the running incarnation.
pub struct Slot {
    pub job: Job,
    env: Vec<(String, String)>,
    place: Place,
    child: Option<Running>,
}

impl Slot {
    /// A worker slot on this machine; `env` is added to the worker's environment (see the
    /// module doc).
    pub fn new(job: Job, env: Vec<(String, String)>) -> Slot {
        Slot::at(Place::Here, job, env)
    }

    /// A worker slot at `place`.
    pub fn at(place: Place, job: Job, env: Vec<(String, String)>) -> Slot {
        Slot {
            job,
            env,
            place,
            child: None,
        }
    }

    /// Starts the next incarnation.
    pub fn spawn(&mut self) {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.child = Some(self.place.spawn(&self.job, &env));
    }

    /// The phase the worker last reported.
    pub fn phase(&self) -> String {
        std::fs::read_to_string(phase_file(&self.job.out))
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    /// Waits until the worker reports `phase`; false on timeout or if it exited first.
    pub fn wait_for_phase(&mut self, phase: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.phase() == phase {
                return true;
            }
            if let Some(child) = self.child.as_mut()
                && child.has_exited()
            {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }

    /// Waits for the running incarnation to exit; false (and killed) after `timeout`.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let Some(child) = self.child.as_mut() else {
            return true;
        };
        while Instant::now() < deadline {
            if child.has_exited() {
                self.child = None;
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        false
    }

    pub fn log(&self) -> LogSummary {
        read_log(&self.job.out)
    }

    pub fn is_writer(&self) -> bool {
        self.job.role == "fault-writer"
    }

    /// Sends `signal` (SIGSTOP, SIGCONT) to the running incarnation: a stopped process stands
    /// in for one the scheduler, swap or a file-server outage has stalled.
    pub fn signal(&self, signal: i32) {
        self.child
            .as_ref()
            .expect("a running worker")
            .signal(signal);
    }

    /// Forgets the running incarnation without a signal: its host is gone (a killed guest).
    pub fn abandon(&mut self) {
        self.child = None;
    }

    /// SIGKILLs the running incarnation and reaps it at once: an unreaped (zombie) process still
    /// exists for the liveness check, as it would under a parent that never waits.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }
}

/// A worker never outlives its test, even one that failed while the worker was stopped.
impl Drop for Slot {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The preload library of Debian's `faketime` (the thread-safe variant: the shim runs a lease
/// heartbeat thread). `None` outside CI when it is not installed.
pub fn libfaketime() -> Option<PathBuf> {
    let found = std::fs::read_dir("/usr/lib").ok().and_then(|dirs| {
        dirs.flatten()
            .map(|d| d.path().join("faketime/libfaketimeMT.so.1"))
            .find(|p| p.exists())
    });
    if found.is_none() {
        let in_ci = std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
        assert!(
            !in_ci,
            "libfaketime is missing (CI=true): install faketime (.ci/install-testbed-deps)"
        );
        eprintln!("SKIPPED: libfaketime not installed (apt-get install faketime)");
    }
    found
}

/// Workers of a plan, running.
pub struct FaultRun {
    pub plan: FaultPlan,
    pub slots: Vec<Slot>,
    logs: tempfile::TempDir,
    /// The driver's kills and outages, timestamped like the workers' errors (`events`).
    events: File,
    started: Instant,
    /// Kills made so far, by the phase the victim had reported.
    pub kills_by_phase: BTreeMap<String, u64>,
}

impl FaultRun {
    /// Creates the schema and starts the plan's writers and readers.
    pub fn start(plan: &FaultPlan) -> FaultRun {
        create_schema(&plan.server_db());
        let logs = log_dir(plan.log_root.as_deref());
        let mut slots = Vec::new();
        for i in 0..plan.writers + plan.readers {
            let role = if i < plan.writers {
                "fault-writer"
            } else {
                "fault-reader"
            };
            let job = Job {
                role: role.into(),
                db: plan.mounts[i % plan.mounts.len()].join(plan.db_name()),
                vfs: "netfs".into(),
                uri_params: plan.uri_params.clone(),
                worker_id: i as u32,
                out: logs.path().join(format!("log-{i}")),
                stop_file: logs.path().join("stop"),
                busy_timeout_ms: plan.busy_timeout_ms,
                payload: Payload::Fixed(plan.payload_bytes),
                ..Default::default()
            };
            let mut env = Vec::new();
            if let Some(lease) = plan.lease {
                env.push((LEASE_ENV.to_owned(), lease.as_millis().to_string()));
            }
            if i % 2 == 1
                && let Some(host) = &plan.other_host_id
            {
                env.push((sqlite_netfs::HOST_ID_ENV.to_owned(), host.clone()));
            }
            if let Ok(trace) = std::env::var("NETFS_TEST_TRACE") {
                env.push(("NETFS_TEST_TRACE".to_owned(), trace));
            }
            for (_, k, v) in plan.worker_env.iter().filter(|(w, _, _)| *w == i) {
                env.push((k.clone(), v.clone()));
            }
            let place = match plan.places.len() {
                0 => Place::Here,
                n => plan.places[i % n].clone(),
            };
            let mut slot = Slot::at(place, job, env);
            slot.spawn();
            slots.push(slot);
        }
        let events = File::create(logs.path().join("events")).expect("events file");
        FaultRun {
            plan: plan.clone(),
            slots,
            logs,
            events,
            started: Instant::now(),
            kills_by_phase: BTreeMap::new(),
        }
    }

    /// Records what the driver did, beside the workers' logs.
    fn event(&self, what: &str) {
        let line = format!("at={} {what}\n", unix_ms());
        (&self.events)
            .write_all(line.as_bytes())
            .expect("events write");
    }

    pub fn kills(&self) -> u64 {
        self.kills_by_phase.values().sum()
    }

    /// SIGKILLs worker `i` (recording the phase it reported just before) and starts its next
    /// incarnation.
    pub fn kill_and_restart(&mut self, i: usize) -> String {
        let phase = self.slots[i].phase();
        self.slots[i].kill();
        self.event(&format!("kill worker={i} phase={phase}"));
        *self.kills_by_phase.entry(phase.clone()).or_default() += 1;
        self.slots[i].spawn();
        phase
    }

    /// Acknowledged transactions of writer `i` so far.
    pub fn acked_by(&self, i: usize) -> usize {
        read_log(&self.slots[i].job.out).acked.len()
    }

    /// Waits until every writer has acknowledged at least one more transaction than now: no
    /// lock was left stuck by the faults. Returns the writers that made no progress in time.
    pub fn wait_for_progress(&self, timeout: Duration) -> Vec<usize> {
        let writers: Vec<usize> = (0..self.plan.writers).collect();
        self.wait_for_progress_of(&writers, timeout)
    }

    /// [`FaultRun::wait_for_progress`] for some of the writers.
    pub fn wait_for_progress_of(&self, writers: &[usize], timeout: Duration) -> Vec<usize> {
        let before: Vec<usize> = writers.iter().map(|&i| self.acked_by(i)).collect();
        let deadline = Instant::now() + timeout;
        loop {
            let stalled: Vec<usize> = writers
                .iter()
                .zip(&before)
                .filter(|&(&i, &b)| self.acked_by(i) <= b)
                .map(|(&i, _)| i)
                .collect();
            if stalled.is_empty() || Instant::now() > deadline {
                return stalled;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The host of workers `slots` died with them (a killed guest): each counts as a kill,
    /// which may leave one committed but unacknowledged transaction.
    pub fn lost_host(&mut self, slots: &[usize]) {
        for &i in slots {
            self.slots[i].abandon();
            *self.kills_by_phase.entry("host-crash".into()).or_default() += 1;
        }
        self.event(&format!("host lost with workers {slots:?}"));
    }

    /// Asks every worker to stop and waits up to `timeout` for each; verifies the database.
    pub fn finish(mut self, timeout: Duration) -> FaultReport {
        std::fs::write(self.logs.path().join("stop"), b"").unwrap();
        let deadline = Instant::now() + timeout;
        let mut stuck = 0;
        for slot in &mut self.slots {
            let Some(child) = slot.child.as_mut() else {
                continue;
            };
            loop {
                if child.has_exited() {
                    break;
                }
                if Instant::now() > deadline {
                    stuck += 1;
                    slot.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let wall = self.started.elapsed();
        let mut report = FaultReport {
            label: self.plan.label.clone(),
            testbed: self.plan.testbed.clone(),
            kills: self.kills(),
            kills_by_phase: self.kills_by_phase.clone(),
            stuck_workers: stuck,
            wall,
            ..Default::default()
        };
        let mut acked = BTreeSet::new();
        for slot in &self.slots {
            let log = read_log(&slot.job.out);
            for txn in &log.acked {
                acked.insert((i64::from(slot.job.worker_id), *txn));
            }
            report.busy_retries += log.busy;
            report.torn_reads += log.torn;
            report.reader_checks += log.reader_checks;
            report.unknown_outcomes += log.unknown_outcomes;
            for (k, v) in log.errors {
                *report.errors.entry(k).or_default() += v;
            }
        }
        report.acknowledged = acked.len() as u64;
        let server_db = self.plan.server_db();
        // The journal as the workers left it, before verification rolls it back.
        let _ = std::fs::copy(
            server_db.with_extension("db-journal"),
            self.logs.path().join("journal-as-left"),
        );
        report.verification = verify_after_faults(&server_db, &acked);
        let told_damaged = report
            .errors
            .keys()
            .any(|k| k.contains("Corrupt") || k.contains("NotADatabase"));
        if !report.correct() || told_damaged {
            let _ = std::fs::copy(
                &server_db,
                self.logs.path().join("database-after-verification"),
            );
            let kept = keep_evidence(self.logs, self.plan.log_root.as_deref());
            eprintln!(
                "{}: evidence kept in {} (worker logs with timestamped errors, SQLite's error log, traces with NETFS_TEST_TRACE; driver events; the journal as left; the database)",
                report.label,
                kept.display()
            );
        }
        report
    }
}

/// What the database holds after a fault run, against what was acknowledged.
#[derive(Debug, Clone, Default)]
pub struct Verification {
    pub integrity: String,
    pub counter: Option<i64>,
    pub rows: Option<i64>,
    /// Distinct transactions in the file.
    pub present: u64,
    /// Acknowledged transactions missing from the file.
    pub lost: u64,
    /// Transactions in the file that no log acknowledges.
    pub unacked_present: u64,
    /// Transactions with some but not all of their rows (a torn commit).
    pub partial: u64,
}

/// Opens the database the way a user would after the faults (through the shim, forced network
/// mode, so a hot journal left by a killed writer is rolled back by the shim's own locking),
/// then checks integrity, acknowledged ⊆ present, atomicity of each transaction and
/// counter == rows. `acked` holds `(worker, txn)` pairs.
pub fn verify_after_faults(server_db: &Path, acked: &BTreeSet<(i64, i64)>) -> Verification {
    let mut v = Verification {
        lost: acked.len() as u64,
        ..Default::default()
    };
    // Any lease will do for checking; the test process may have registered one already.
    match sqlite_netfs::register() {
        Ok(()) | Err(sqlite_netfs::Error::AlreadyRegistered(_)) => {}
        Err(e) => panic!("register the shim: {e}"),
    }
    let uri = format!("file:{}?vfs=netfs&netfs=on", server_db.display());
    let conn = match Connection::open_with_flags(&uri, OpenFlags::SQLITE_OPEN_READ_WRITE) {
        Ok(c) => c,
        Err(e) => {
            v.integrity = format!("cannot open: {e}");
            return v;
        }
    };
    conn.busy_timeout(Duration::from_secs(60)).unwrap();
    v.integrity = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0))
        .unwrap_or_else(|e| format!("{e}"));
    v.counter = conn
        .query_row("SELECT v FROM counter WHERE id = 1", [], |r| r.get(0))
        .ok();
    v.rows = conn
        .query_row("SELECT count(*) FROM rows", [], |r| r.get(0))
        .ok();
    let txns: Vec<(i64, i64, i64, i64)> = conn
        .prepare("SELECT worker, txn, count(*), max(parts) FROM rows GROUP BY worker, txn")
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect()
        })
        .unwrap_or_default();
    let present: BTreeSet<(i64, i64)> = txns.iter().map(|&(w, t, _, _)| (w, t)).collect();
    v.present = present.len() as u64;
    v.partial = txns.iter().filter(|&&(_, _, n, p)| n != p).count() as u64;
    v.lost = acked.difference(&present).count() as u64;
    v.unacked_present = present.difference(acked).count() as u64;
    v
}

/// The outcome of a fault run.
#[derive(Debug, Clone, Default)]
pub struct FaultReport {
    pub label: String,
    pub testbed: String,
    pub acknowledged: u64,
    pub kills: u64,
    pub kills_by_phase: BTreeMap<String, u64>,
    /// Workers that did not exit when asked to stop.
    pub stuck_workers: u64,
    /// Writers that committed nothing more after the last kill (a lock left stuck).
    pub stalled_writers: u64,
    /// File-server outages made (see [`run_with_outages`]).
    pub outages: Vec<Outage>,
    /// Transactions whose `COMMIT` failed with an error other than BUSY. With the file server
    /// gone, a commit can reach the server while its answer does not: such a transaction may
    /// be present without an acknowledgement, as after a kill.
    pub unknown_outcomes: u64,
    pub busy_retries: u64,
    pub errors: BTreeMap<String, u64>,
    pub reader_checks: u64,
    pub torn_reads: u64,
    pub verification: Verification,
    pub wall: Duration,
}

impl FaultReport {
    /// What the fault suite promises after any number of kills.
    pub fn correct(&self) -> bool {
        let v = &self.verification;
        v.integrity == "ok"
            && v.lost == 0
            && v.partial == 0
            && v.unacked_present <= self.kills + self.unknown_outcomes
            && v.counter.is_some()
            && v.counter == v.rows
            && self.torn_reads == 0
            && self.stuck_workers == 0
            && self.stalled_writers == 0
    }

    /// The `FIGURES` line (printed by [`FaultReport::print`]).
    pub fn figures(&self, fault: &str) -> String {
        let v = &self.verification;
        let phases: Vec<String> = self
            .kills_by_phase
            .iter()
            .map(|(k, n)| format!("{}:{n}", if k.is_empty() { "start" } else { k }))
            .collect();
        let errors: Vec<String> = self
            .errors
            .iter()
            .map(|(k, n)| format!("{k}:{n}"))
            .collect();
        format!(
            "FIGURES fault={fault} testbed={} label={} runs=1 txns={} kills={} kill_phases={}{} lost={} corrupt={} unacked_present={} partial={} counter={:?} rows={:?} torn={} reader_checks={} stuck={} stalled={} busy_retries={} errors={} wall_s={:.1} => {}",
            self.testbed,
            self.label,
            self.acknowledged,
            self.kills,
            phases.join(","),
            self.outage_figures(),
            v.lost,
            u8::from(v.integrity != "ok"),
            v.unacked_present,
            v.partial,
            v.counter,
            v.rows,
            self.torn_reads,
            self.reader_checks,
            self.stuck_workers,
            self.stalled_writers,
            self.busy_retries,
            if errors.is_empty() {
                "none".to_owned()
            } else {
                errors.join(",")
            },
            self.wall.as_secs_f64(),
            if self.correct() { "CORRECT" } else { "BROKEN" }
        )
    }

    pub fn print(&self, fault: &str) {
        eprintln!("{}", self.figures(fault));
        if self.verification.integrity != "ok" {
            eprintln!("integrity_check: {}", self.verification.integrity);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The kill driver
// ---------------------------------------------------------------------------------------------

/// How the kill driver behaves.
#[derive(Debug, Clone)]
pub struct KillPlan {
    /// How long to keep killing.
    pub duration: Duration,
    /// Pause after each kill (uniform between the two).
    pub gap: (Duration, Duration),
    /// How long to wait for a worker in the aimed phase before killing whichever is picked.
    pub aim_for: Duration,
    /// After the last kill: how long every writer may take to commit again.
    pub progress_timeout: Duration,
    /// After the stop request: how long every worker may take to finish.
    pub finish_timeout: Duration,
}

impl KillPlan {
    /// `ci` seconds of kills, or [`SOAK_ENV`] seconds when that is set.
    pub fn sized(ci: Duration, gap: (Duration, Duration), lease: Duration) -> KillPlan {
        let duration = std::env::var(SOAK_ENV)
            .ok()
            .and_then(|s| s.parse().ok())
            .map_or(ci, Duration::from_secs);
        KillPlan {
            duration,
            gap,
            aim_for: Duration::from_secs(2),
            progress_timeout: lease * 3 + Duration::from_secs(60),
            finish_timeout: lease * 3 + Duration::from_secs(60),
        }
    }
}

/// Phases the driver aims at in turn (any worker, any moment for `any`).
const AIMS: [&str; 6] = ["read", "reserved", "pages", "commit", "acked", "any"];

/// Runs `plan`'s workers, SIGKILLs one at a random moment (aimed at a random phase) and restarts
/// it, again and again for `kills.duration`; then requires every writer to commit again, stops
/// everyone and verifies.
pub fn run_with_kills(plan: &FaultPlan, kills: &KillPlan) -> FaultReport {
    run_mixed(plan, kills, None)
}

/// File-server outages mixed into a kill run: every `every`, the server goes down for the next
/// of `downs` (cycled).
pub struct OutageMix<'a> {
    pub testbed: &'a super::testbed::TwoHostTestbed,
    pub every: Duration,
    pub downs: Vec<Duration>,
}

/// The soak's driver: kills as [`run_with_kills`] does, with file-server outages among them
/// when `outages` is given, for `kills.duration`; then every writer must commit again, everyone
/// stops, and the database is verified.
pub fn run_mixed(
    plan: &FaultPlan,
    kills: &KillPlan,
    outages: Option<OutageMix<'_>>,
) -> FaultReport {
    let mut rng = Rng::for_run(&plan.label);
    let mut run = FaultRun::start(plan);
    let started = Instant::now();
    let mut made = Vec::new();
    let mut stalled = 0;
    let mut next_outage = outages.as_ref().map(|o| o.every);
    while started.elapsed() < kills.duration {
        std::thread::sleep(rng.between(kills.gap.0, kills.gap.1));
        if let (Some(mix), Some(at)) = (&outages, next_outage)
            && started.elapsed() >= at
        {
            let down = mix.downs[made.len() % mix.downs.len()];
            let (outage, still) = crash_server(&run, mix.testbed, down, kills.progress_timeout);
            made.push(outage);
            stalled += still;
            next_outage = Some(started.elapsed() + mix.every);
            continue;
        }
        kill_one(&mut run, &mut rng, kills.aim_for);
    }
    stalled += run.wait_for_progress(kills.progress_timeout).len() as u64;
    let mut report = run.finish(kills.finish_timeout);
    report.stalled_writers = stalled;
    report.outages = made;
    report
}

/// Kills one worker, aimed at a random phase (waiting up to `aim_for` for a worker in it), and
/// restarts it.
fn kill_one(run: &mut FaultRun, rng: &mut Rng, aim_for: Duration) {
    let aim = AIMS[rng.below(AIMS.len() as u64) as usize];
    let candidates: Vec<usize> = (0..run.slots.len())
        .filter(|&i| aim != "read" || !run.slots[i].is_writer())
        .collect();
    let aim_deadline = Instant::now() + aim_for;
    let victim = loop {
        if aim == "any" || Instant::now() > aim_deadline {
            break candidates[rng.below(candidates.len() as u64) as usize];
        }
        if let Some(&i) = candidates.iter().find(|&&i| run.slots[i].phase() == aim) {
            break i;
        }
        std::thread::sleep(Duration::from_micros(500));
    };
    run.kill_and_restart(victim);
}

// ---------------------------------------------------------------------------------------------
// The outage driver
// ---------------------------------------------------------------------------------------------

/// One file-server outage and what the writers made of it.
#[derive(Debug, Clone)]
pub struct Outage {
    /// How long the server was down (from the kill to accepting connections again).
    pub down: Duration,
    /// Server processes killed (the daemon and its per-connection children).
    pub processes: usize,
    /// From the restart to the first acknowledged commit of any writer.
    pub first_commit: Option<Duration>,
    /// From the restart until every writer had committed again (`None`: some never did).
    pub all_writers: Option<Duration>,
}

impl FaultReport {
    fn outage_figures(&self) -> String {
        if self.outages.is_empty() {
            return String::new();
        }
        let ms = |d: Option<Duration>| d.map_or("never".to_owned(), |d| d.as_millis().to_string());
        let list = |f: &dyn Fn(&Outage) -> String| {
            self.outages.iter().map(f).collect::<Vec<_>>().join(",")
        };
        format!(
            " outages={} outage_s={} server_procs_killed={} first_commit_after_restart_ms={} all_writers_after_restart_ms={} unknown_outcomes={}",
            self.outages.len(),
            list(&|o| format!("{:.1}", o.down.as_secs_f64())),
            list(&|o| o.processes.to_string()),
            list(&|o| ms(o.first_commit)),
            list(&|o| ms(o.all_writers)),
            self.unknown_outcomes
        )
    }
}

/// How the outage driver behaves.
#[derive(Debug, Clone)]
pub struct OutagePlan {
    /// The length of each outage, in turn (cycled in soak mode).
    pub downs: Vec<Duration>,
    /// Normal running before each outage.
    pub between: Duration,
    /// How long [`SOAK_ENV`] asks the outages to go on; `None`: each of `downs` once.
    pub soak: Option<Duration>,
    /// After each restart: how long every writer may take to commit again.
    pub progress_timeout: Duration,
    /// After the stop request: how long every worker may take to finish.
    pub finish_timeout: Duration,
}

impl OutagePlan {
    pub fn sized(downs: Vec<Duration>, between: Duration, lease: Duration) -> OutagePlan {
        OutagePlan {
            downs,
            between,
            soak: std::env::var(SOAK_ENV)
                .ok()
                .and_then(|s| s.parse().ok())
                .map(Duration::from_secs),
            progress_timeout: lease * 3 + Duration::from_secs(60),
            finish_timeout: lease * 3 + Duration::from_secs(60),
        }
    }
}

/// Runs `plan`'s workers on `testbed` and crashes its file server again and again (SIGKILL of
/// the daemon and its children, see [`super::testbed::TwoHostTestbed::stop_server`]), restarting
/// it after each outage's length. The workers keep their connections throughout and never
/// reopen them: whatever recovery there is, is the shim's and the mounts'. After each restart
/// every writer must commit again; then everyone stops and the database is verified.
pub fn run_with_outages(
    plan: &FaultPlan,
    testbed: &super::testbed::TwoHostTestbed,
    outages: &OutagePlan,
) -> FaultReport {
    let run = FaultRun::start(plan);
    let started = Instant::now();
    let mut made = Vec::new();
    let mut stalled = 0;
    for down in outages.downs.iter().cycle() {
        let done = match outages.soak {
            Some(soak) => started.elapsed() >= soak,
            None => made.len() == outages.downs.len(),
        };
        if done {
            break;
        }
        std::thread::sleep(outages.between);
        let (outage, still) = crash_server(&run, testbed, *down, outages.progress_timeout);
        made.push(outage);
        stalled += still;
    }
    let mut report = run.finish(outages.finish_timeout);
    report.stalled_writers = stalled;
    report.outages = made;
    report
}

/// Crashes the file server for `down`, restarts it, and times the writers' return; also
/// returns how many writers did not commit again within `progress_timeout`.
fn crash_server(
    run: &FaultRun,
    testbed: &super::testbed::TwoHostTestbed,
    down: Duration,
    progress_timeout: Duration,
) -> (Outage, u64) {
    let killed_at = Instant::now();
    let processes = testbed.stop_server().expect("stop the file server");
    run.event(&format!("server down ({processes} processes killed)"));
    std::thread::sleep(down);
    testbed.start_server().expect("restart the file server");
    run.event("server up");
    let restarted = Instant::now();
    let (first_commit, all_writers, still) = run.time_to_commit_again(progress_timeout);
    let outage = Outage {
        down: restarted - killed_at,
        processes,
        first_commit,
        all_writers,
    };
    (outage, still)
}

impl FaultRun {
    /// From now: how long until any writer, and until every writer, acknowledged one more
    /// transaction (`None` if not within `timeout`), and how many writers did not in time.
    fn time_to_commit_again(&self, timeout: Duration) -> (Option<Duration>, Option<Duration>, u64) {
        let from = Instant::now();
        let before: Vec<usize> = (0..self.plan.writers).map(|i| self.acked_by(i)).collect();
        let mut first = None;
        loop {
            let moved = (0..self.plan.writers)
                .filter(|&i| self.acked_by(i) > before[i])
                .count();
            if moved > 0 && first.is_none() {
                first = Some(from.elapsed());
            }
            if moved == self.plan.writers {
                return (first, Some(from.elapsed()), 0);
            }
            if from.elapsed() > timeout {
                return (first, None, (self.plan.writers - moved) as u64);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
