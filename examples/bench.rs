//! Benchmarks: what the shim costs, measured side by side with the setups a user would pick
//! instead (issue 4).
//!
//! ```text
//! cargo run --release --example bench                        # quick mode, at most 3 minutes on 2 cores
//! cargo run --release --example bench -- --full              # more rounds, longer, 50k rows
//! cargo run --release --example bench -- --only local-wal    # one scenario
//! ```
//! Options: `--out DIR` (default `target/bench`) receives `results.md`, `results.json` and
//! `chart.svg`; the markdown is also printed. `--only NAME` runs one scenario. `--seconds S` and
//! `--rounds N` override every measurement's duration and the number of rounds (for quick
//! checks while developing). `--work-dir DIR` holds the databases (default `/var/tmp`, or the
//! output directory if `/var/tmp` is a tmpfs, where fsync costs nothing).
//!
//! **Why an own harness, not Criterion.** The scenarios are about processes: several writers
//! or readers share one database, start together and run for a fixed time. Criterion times a
//! closure inside one process, one benchmark after another. Here the alternatives run
//! interleaved in one run (A, B, A, B, ... for N rounds), so that a noisy machine's drift hits
//! them alike, and each result is a ratio of medians held against a goal.
//!
//! **One measurement.** The bench re-executes its own binary as worker processes
//! (`--worker ...`). Each opens its connection, prepares its statements and prints `READY`.
//! When all are ready, the parent sends `GO <start time>` on their stdin; they start at that
//! instant, run for the measurement's duration and print `COMMITS`, `BUSY`, `ERROR`,
//! `LATENCY_US` and `DONE` lines on stdout. Throughput = all commits / duration. Every
//! alternative works on its own copy of one pre-filled database.
//!
//! **Workload** (agent session stores). `messages(id INTEGER PRIMARY KEY, session, ts, body
//! BLOB)` with an index on (session, ts), 20k rows (50k with `--full`), 100 per session, and
//! `sessions(id, updated)`. A write transaction: `BEGIN IMMEDIATE`, INSERT one message (a
//! 200 B–4 KB payload from a seeded PRNG), `UPDATE sessions SET updated=? WHERE id=?`,
//! `COMMIT`. A read transaction: a point read by id and the session's latest 20 messages.
//! Busy timeout 30 s, cut to what is left of the window so that a stall cannot carry a worker
//! past it; a transaction that still meets BUSY is retried and counted. WAL setups use
//! `synchronous=NORMAL`, rollback setups SQLite's default (FULL).
//!
//! **Scenarios** (ratios are subject / alternative, of median txn/s):
//! 1. `local-wal`: shim in auto mode (native pass-through) vs `unix`, both WAL, 1 process,
//!    writes and reads. Goal ≥ 0.98.
//! 2. `local-network-mode`: `netfs=on` vs `unix` DELETE, `unix` TRUNCATE and `unix-dotfile`,
//!    1 and 4 writer processes. Goal ≥ 0.8 of the faster native rollback mode.
//! 3. `reader-scaling`: network mode, 2 reader processes / 1. Goal ≥ 1.7; `unix-dotfile`
//!    beside it.
//! 4. `sshfs`: two-host sshfs testbed, shim vs `unix-dotfile`: 4 writers over both mounts
//!    (goal ≥ 3.0), 1 writer (goal ≥ 1.5); shim vs native WAL, 1 writer (goal ≥ 0.5).
//! 5. `lock-latency`: 4 writers, network mode and `unix` DELETE: time from `BEGIN IMMEDIATE`
//!    until it returned OK (p50, p99, max) and commits per process (min/max).
//! 6. `smb`: two-host SMB testbed, 4 writers, shim vs `unix-dotfile` (its errors are reported
//!    instead of a ratio when it fails).
//! 7. `cost-anatomy`: system calls per write transaction under `strace -f -c`, network mode
//!    vs `unix` DELETE; a run of 0 transactions is subtracted.
//!
//! A scenario that cannot run (no testbed, no strace) is reported as skipped, with the reason.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sqlite_netfs::rusqlite::{self, Connection, ErrorCode, OptionalExtension, params};

#[allow(dead_code)] // the shared fixture offers more than the bench uses
#[path = "../tests/common/testbed.rs"]
mod testbed;
use testbed::{SMB_LOCK_PATH, TwoHostTestbed};

const USAGE: &str =
    "usage: bench [--full] [--out DIR] [--only NAME] [--seconds S] [--rounds N] [--work-dir DIR]";

const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long workers may take to open their connection (an SMB open is slow).
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Workers start this long after the last one is ready, all at the same instant.
const START_DELAY: Duration = Duration::from_millis(50);
/// How long a worker may overrun its window (a transaction stalled inside the VFS) before it
/// is killed.
const OVERRUN_GRACE: Duration = Duration::from_secs(50);
/// How long the SMB scenario waits for another SMB testbed (a test run) to finish.
const SMB_LOCK_WAIT: Duration = Duration::from_secs(30);
const STRACE: &str = "/usr/bin/strace";
const ROWS_PER_SESSION: u64 = 100;
const PAYLOAD_MIN: u64 = 200;
const PAYLOAD_MAX: u64 = 4096;

const SCHEMA: &str = "
    CREATE TABLE sessions(id INTEGER PRIMARY KEY, updated INTEGER NOT NULL);
    CREATE TABLE messages(id INTEGER PRIMARY KEY, session INTEGER NOT NULL, ts INTEGER NOT NULL,
                          body BLOB NOT NULL);
    CREATE INDEX messages_by_session_ts ON messages(session, ts);";
const INSERT_SESSION: &str = "INSERT INTO sessions(id, updated) VALUES (?1, 0)";
const INSERT_MESSAGE: &str = "INSERT INTO messages(session, ts, body) VALUES (?1, ?2, ?3)";
const UPDATE_SESSION: &str = "UPDATE sessions SET updated = ?1 WHERE id = ?2";
const POINT_READ: &str = "SELECT session, ts, body FROM messages WHERE id = ?1";
const RANGE_READ: &str =
    "SELECT id, ts, body FROM messages WHERE session = ?1 ORDER BY ts DESC LIMIT 20";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--worker") {
        match WorkerSpec::parse(&args[1..]) {
            Ok(spec) => run_worker(&spec),
            Err(e) => {
                eprintln!("bench worker: {e}");
                std::process::exit(2);
            }
        }
        return;
    }
    if args.iter().any(|a| a == "--help" || a == "-h") {
        let names: Vec<&str> = SCENARIOS.iter().map(|(name, _)| *name).collect();
        println!("{USAGE}\nscenarios: {}", names.join(", "));
        return;
    }
    let options = Options::parse(&args).unwrap_or_else(|e| {
        eprintln!("bench: {e}\n{USAGE}");
        std::process::exit(2);
    });
    if let Err(e) = run_bench(&options, &args) {
        eprintln!("bench: {e}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------------
// Options and profiles

struct Options {
    full: bool,
    out: PathBuf,
    only: Option<String>,
    seconds: Option<f64>,
    rounds: Option<u32>,
    work_dir: Option<PathBuf>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        let mut options = Options {
            full: false,
            out: Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench"),
            only: None,
            seconds: None,
            rounds: None,
            work_dir: None,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or(format!("{flag} needs a value"));
            match flag.as_str() {
                "--full" => options.full = true,
                "--out" => options.out = PathBuf::from(value()?),
                "--work-dir" => options.work_dir = Some(PathBuf::from(value()?)),
                "--only" => {
                    let name = value()?;
                    if !SCENARIOS.iter().any(|(known, _)| known == name) {
                        let known: Vec<&str> = SCENARIOS.iter().map(|(n, _)| *n).collect();
                        return Err(format!("unknown scenario {name}; known: {known:?}"));
                    }
                    options.only = Some(name.clone());
                }
                "--seconds" => {
                    let seconds: f64 = value()?.parse().map_err(|e| format!("--seconds: {e}"))?;
                    if seconds.is_nan() || seconds <= 0.0 {
                        return Err("--seconds must be positive".into());
                    }
                    options.seconds = Some(seconds);
                }
                "--rounds" => {
                    let rounds: u32 = value()?.parse().map_err(|e| format!("--rounds: {e}"))?;
                    options.rounds = Some(rounds.max(1));
                }
                other => return Err(format!("unknown option {other}")),
            }
        }
        Ok(options)
    }

    fn profile(&self) -> Profile {
        let mut profile = if self.full { FULL } else { QUICK };
        if let Some(seconds) = self.seconds {
            profile.local_seconds = seconds;
            profile.sshfs_seconds = seconds;
            profile.smb_seconds = seconds;
        }
        if let Some(rounds) = self.rounds {
            profile.rounds = rounds;
            profile.testbed_rounds = rounds;
        }
        profile
    }
}

/// Sizes and durations of one run.
#[derive(Clone, Copy)]
struct Profile {
    name: &'static str,
    rows: u64,
    rounds: u32,
    local_seconds: f64,
    /// The testbeds stall for many seconds at times (see the sshfs notes in the report), so
    /// their windows are longer and, in quick mode, there is one round.
    testbed_rounds: u32,
    sshfs_seconds: f64,
    smb_seconds: f64,
    strace_transactions: u64,
}

const QUICK: Profile = Profile {
    name: "quick",
    rows: 20_000,
    rounds: 3,
    local_seconds: 1.5,
    testbed_rounds: 1,
    sshfs_seconds: 5.0,
    smb_seconds: 10.0,
    strace_transactions: 200,
};

const FULL: Profile = Profile {
    name: "full",
    rows: 50_000,
    rounds: 5,
    local_seconds: 5.0,
    testbed_rounds: 3,
    sshfs_seconds: 10.0,
    smb_seconds: 15.0,
    strace_transactions: 1000,
};

// ---------------------------------------------------------------------------------------------
// Setups: how a worker opens the database

/// One way of opening the database: VFS, URI parameters and journal mode.
#[derive(Clone, Copy)]
struct Setup {
    label: &'static str,
    vfs: &'static str,
    uri_params: &'static str,
    journal: Option<&'static str>,
}

const NETFS_AUTO_WAL: Setup = Setup {
    label: "netfs auto WAL",
    vfs: "netfs",
    uri_params: "",
    journal: Some("wal"),
};
const NETFS_AUTO: Setup = Setup {
    label: "netfs auto",
    vfs: "netfs",
    uri_params: "",
    journal: None,
};
const NETFS_ON: Setup = Setup {
    label: "netfs=on",
    vfs: "netfs",
    uri_params: "netfs=on",
    journal: None,
};
const UNIX_WAL: Setup = Setup {
    label: "unix WAL",
    vfs: "unix",
    uri_params: "",
    journal: Some("wal"),
};
const UNIX_DELETE: Setup = Setup {
    label: "unix DELETE",
    vfs: "unix",
    uri_params: "",
    journal: Some("delete"),
};
const UNIX_TRUNCATE: Setup = Setup {
    label: "unix TRUNCATE",
    vfs: "unix",
    uri_params: "",
    journal: Some("truncate"),
};
const UNIX_DOTFILE: Setup = Setup {
    label: "unix-dotfile",
    vfs: "unix-dotfile",
    uri_params: "",
    journal: None,
};

#[derive(Clone, Copy, PartialEq)]
enum Role {
    Write,
    Read,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Write => "write",
            Role::Read => "read",
        }
    }

    fn parse(name: &str) -> Result<Role, String> {
        match name {
            "write" => Ok(Role::Write),
            "read" => Ok(Role::Read),
            other => Err(format!("unknown role {other}")),
        }
    }

    fn processes(self, count: usize) -> String {
        let noun = match self {
            Role::Write => "writer",
            Role::Read => "reader",
        };
        plural(count, noun)
    }
}

#[derive(Clone, Copy)]
enum Stop {
    After(Duration),
    Transactions(u64),
}

// ---------------------------------------------------------------------------------------------
// The worker process

/// What one worker process does, passed on its command line.
struct WorkerSpec {
    role: Role,
    db: PathBuf,
    vfs: String,
    uri_params: String,
    journal: Option<String>,
    stop: Stop,
    seed: u64,
    record_latency: bool,
}

impl WorkerSpec {
    fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "--role".to_string(),
            self.role.name().to_string(),
            "--db".to_string(),
            self.db.display().to_string(),
            "--vfs".to_string(),
            self.vfs.clone(),
            "--seed".to_string(),
            self.seed.to_string(),
        ];
        if !self.uri_params.is_empty() {
            args.extend(["--uri-params".to_string(), self.uri_params.clone()]);
        }
        if let Some(journal) = &self.journal {
            args.extend(["--journal".to_string(), journal.clone()]);
        }
        match self.stop {
            Stop::After(d) => args.extend(["--seconds".into(), d.as_secs_f64().to_string()]),
            Stop::Transactions(n) => args.extend(["--transactions".into(), n.to_string()]),
        }
        if self.record_latency {
            args.push("--latency".to_string());
        }
        args
    }

    fn parse(args: &[String]) -> Result<WorkerSpec, String> {
        let mut spec = WorkerSpec {
            role: Role::Write,
            db: PathBuf::new(),
            vfs: "netfs".into(),
            uri_params: String::new(),
            journal: None,
            stop: Stop::Transactions(0),
            seed: 0,
            record_latency: false,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or(format!("{flag} needs a value"));
            match flag.as_str() {
                "--role" => spec.role = Role::parse(value()?)?,
                "--db" => spec.db = PathBuf::from(value()?),
                "--vfs" => spec.vfs = value()?.clone(),
                "--uri-params" => spec.uri_params = value()?.clone(),
                "--journal" => spec.journal = Some(value()?.clone()),
                "--seed" => spec.seed = value()?.parse().map_err(|e| format!("--seed: {e}"))?,
                "--seconds" => {
                    let seconds: f64 = value()?.parse().map_err(|e| format!("--seconds: {e}"))?;
                    spec.stop = Stop::After(Duration::from_secs_f64(seconds));
                }
                "--transactions" => {
                    let n = value()?
                        .parse()
                        .map_err(|e| format!("--transactions: {e}"))?;
                    spec.stop = Stop::Transactions(n);
                }
                "--latency" => spec.record_latency = true,
                other => return Err(format!("unknown worker option {other}")),
            }
        }
        Ok(spec)
    }

    fn uri(&self) -> String {
        let mut uri = format!("file:{}?vfs={}", self.db.display(), self.vfs);
        if !self.uri_params.is_empty() {
            uri = format!("{uri}&{}", self.uri_params);
        }
        uri
    }
}

/// A worker's counts, printed on stdout at the end.
#[derive(Default)]
struct Tally {
    commits: u64,
    busy: u64,
    errors: BTreeMap<String, u64>,
    latencies_us: Vec<u64>,
}

impl Tally {
    fn error(&mut self, message: &str) {
        let key: String = message
            .replace(['\n', '\r'], " ")
            .chars()
            .take(100)
            .collect();
        *self.errors.entry(key).or_default() += 1;
    }

    fn print(&self) {
        println!("COMMITS {}", self.commits);
        println!("BUSY {}", self.busy);
        for (message, count) in &self.errors {
            println!("ERROR {count} {message}");
        }
        if !self.latencies_us.is_empty() {
            let list: Vec<String> = self.latencies_us.iter().map(u64::to_string).collect();
            println!("LATENCY_US {}", list.join(","));
        }
        println!("DONE");
    }
}

fn run_worker(spec: &WorkerSpec) {
    let mut tally = Tally::default();
    match WorkerConnection::open(spec) {
        Err(e) => tally.error(&format!("open: {e}")),
        Ok(mut worker) => {
            println!("{}", worker.describe_setup());
            println!("READY");
            match wait_for_go() {
                Ok(start) => {
                    if let Ok(wait) = start.duration_since(SystemTime::now()) {
                        std::thread::sleep(wait);
                    }
                    worker.run(spec, &mut tally);
                }
                Err(e) => tally.error(&e),
            }
        }
    }
    tally.print();
}

/// Blocks until the parent sends `GO <start time in ns since the epoch>` on stdin.
fn wait_for_go() -> Result<SystemTime, String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| format!("reading GO: {e}"))?;
    let nanos: u64 = line
        .trim()
        .strip_prefix("GO ")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("expected GO, got {line:?}"))?;
    Ok(UNIX_EPOCH + Duration::from_nanos(nanos))
}

/// A worker's connection and the state of its transaction stream.
struct WorkerConnection {
    conn: Connection,
    rng: Prng,
    sessions: u64,
    max_id: u64,
    /// When the current write first asked for BEGIN IMMEDIATE (kept across BUSY retries).
    waiting_since: Option<Instant>,
}

impl WorkerConnection {
    fn open(spec: &WorkerSpec) -> Result<WorkerConnection, String> {
        sqlite_netfs::register().map_err(|e| format!("register: {e}"))?;
        let conn = Connection::open(spec.uri()).map_err(|e| e.to_string())?;
        Self::configure(&conn, spec).map_err(|e| e.to_string())?;
        let (sessions, max_id): (i64, i64) = conn
            .query_row(
                "SELECT (SELECT count(*) FROM sessions), (SELECT max(id) FROM messages)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| e.to_string())?;
        Ok(WorkerConnection {
            conn,
            rng: Prng::new(spec.seed),
            sessions: sessions.max(1) as u64,
            max_id: max_id.max(1) as u64,
            waiting_since: None,
        })
    }

    fn configure(conn: &Connection, spec: &WorkerSpec) -> rusqlite::Result<()> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        if let Some(journal) = &spec.journal {
            conn.query_row(&format!("PRAGMA journal_mode={journal}"), [], |_| Ok(()))?;
            if journal == "wal" {
                conn.execute_batch("PRAGMA synchronous=NORMAL")?;
            }
        }
        for sql in [INSERT_MESSAGE, UPDATE_SESSION, POINT_READ, RANGE_READ] {
            conn.prepare_cached(sql)?;
        }
        Ok(())
    }

    /// `SETUP network=<bool> journal=<mode>`: what the worker really got.
    fn describe_setup(&self) -> String {
        let journal: String = self
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap_or_else(|e| format!("error:{e}"));
        format!(
            "SETUP network={} journal={}",
            sqlite_netfs::network_mode_active(&self.conn),
            journal.replace(' ', "_")
        )
    }

    fn run(&mut self, spec: &WorkerSpec, tally: &mut Tally) {
        match spec.stop {
            Stop::After(duration) => {
                let deadline = Instant::now() + duration;
                while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                    // A stall must not carry the worker past its window.
                    if let Err(e) = self.conn.busy_timeout(left.min(BUSY_TIMEOUT)) {
                        tally.error(&e.to_string());
                    }
                    if self.attempt(spec, tally) && Instant::now() <= deadline {
                        tally.commits += 1;
                    }
                }
            }
            Stop::Transactions(n) => {
                for _ in 0..n {
                    if self.attempt(spec, tally) {
                        tally.commits += 1;
                    }
                }
            }
        }
    }

    /// One transaction of the worker's role; true if it committed. BUSY and errors are
    /// counted and the transaction rolled back, for the caller to try again.
    fn attempt(&mut self, spec: &WorkerSpec, tally: &mut Tally) -> bool {
        let result = match spec.role {
            Role::Write => self.write_transaction().map(|waited| {
                if spec.record_latency {
                    tally.latencies_us.push(waited.as_micros() as u64);
                }
            }),
            Role::Read => self.read_transaction(),
        };
        match result {
            Ok(()) => true,
            Err(e) => {
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                if e.sqlite_error_code() == Some(ErrorCode::DatabaseBusy) {
                    tally.busy += 1;
                } else {
                    tally.error(&e.to_string());
                }
                false
            }
        }
    }

    /// Returns how long `BEGIN IMMEDIATE` took to succeed, BUSY retries included.
    fn write_transaction(&mut self) -> rusqlite::Result<Duration> {
        let asked = *self.waiting_since.get_or_insert_with(Instant::now);
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        self.waiting_since = None;
        let waited = asked.elapsed();
        let session = 1 + self.rng.below(self.sessions) as i64;
        let ts = unix_micros();
        let body = self.rng.payload();
        self.conn
            .prepare_cached(INSERT_MESSAGE)?
            .execute(params![session, ts, body])?;
        self.conn
            .prepare_cached(UPDATE_SESSION)?
            .execute(params![ts, session])?;
        self.conn.execute_batch("COMMIT")?;
        Ok(waited)
    }

    fn read_transaction(&mut self) -> rusqlite::Result<()> {
        let id = 1 + self.rng.below(self.max_id) as i64;
        let session = 1 + self.rng.below(self.sessions) as i64;
        self.conn.execute_batch("BEGIN")?;
        self.conn
            .prepare_cached(POINT_READ)?
            .query_row([id], |r| r.get_ref(2).map(|_| ()))
            .optional()?;
        let mut range = self.conn.prepare_cached(RANGE_READ)?;
        let mut rows = range.query([session])?;
        while let Some(row) = rows.next()? {
            row.get_ref(2)?;
        }
        drop(rows);
        drop(range);
        self.conn.execute_batch("COMMIT")
    }
}

fn unix_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// SplitMix64: a deterministic, seeded source for payload sizes, bytes and row choices.
struct Prng(u64);

impl Prng {
    fn new(seed: u64) -> Prng {
        Prng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A message body of 200 B to 4 KB.
    fn payload(&mut self) -> Vec<u8> {
        let len = (PAYLOAD_MIN + self.below(PAYLOAD_MAX - PAYLOAD_MIN + 1)) as usize;
        let mut body = Vec::with_capacity(len + 8);
        while body.len() < len {
            body.extend_from_slice(&self.next().to_le_bytes());
        }
        body.truncate(len);
        body
    }
}

// ---------------------------------------------------------------------------------------------
// Running workers from the parent

/// A measurement's workers: the setup, their role and count, and the database path(s) they
/// open (worker `i` opens `dbs[i % len]`, which is how writers are split over two mounts).
#[derive(Clone)]
struct Job {
    setup: Setup,
    role: Role,
    processes: usize,
    dbs: Vec<PathBuf>,
    record_latency: bool,
    /// Run each worker under `strace -f -c -o <this file>`.
    strace_output: Option<PathBuf>,
}

impl Job {
    fn new(setup: Setup, role: Role, processes: usize, dbs: Vec<PathBuf>) -> Job {
        Job {
            setup,
            role,
            processes,
            dbs,
            record_latency: false,
            strace_output: None,
        }
    }

    fn worker_spec(&self, index: usize, stop: Stop, seed: u64) -> WorkerSpec {
        WorkerSpec {
            role: self.role,
            db: self.dbs[index % self.dbs.len()].clone(),
            vfs: self.setup.vfs.to_string(),
            uri_params: self.setup.uri_params.to_string(),
            journal: self.setup.journal.map(str::to_string),
            stop,
            seed,
            record_latency: self.record_latency,
        }
    }

    /// "write txn/s, 4 writers over 2 mounts"
    fn workload(&self) -> String {
        let over = if self.dbs.len() > 1 {
            format!(" over {} mounts", self.dbs.len())
        } else {
            String::new()
        };
        format!(
            "{} txn/s, {}{over}",
            self.role.name(),
            self.role.processes(self.processes)
        )
    }
}

/// What one measurement (all workers of one job, one round) produced.
#[derive(Default)]
struct Outcome {
    seconds: f64,
    commits_per_process: Vec<u64>,
    busy: u64,
    errors: BTreeMap<String, u64>,
    latencies_us: Vec<u64>,
    network: Option<bool>,
    journal: Option<String>,
}

impl Outcome {
    fn txn_per_s(&self) -> f64 {
        self.commits_per_process.iter().sum::<u64>() as f64 / self.seconds
    }

    fn add_error(&mut self, message: String) {
        *self.errors.entry(message).or_default() += 1;
    }

    fn absorb(&mut self, worker: WorkerReport) {
        self.commits_per_process.push(worker.commits);
        self.busy += worker.busy;
        for (message, count) in worker.errors {
            *self.errors.entry(message).or_default() += count;
        }
        self.latencies_us.extend(worker.latencies_us);
        self.network = self.network.or(worker.network);
        if self.journal.is_none() {
            self.journal = worker.journal;
        }
    }
}

/// The parent's view of one worker, built from its stdout lines.
#[derive(Default)]
struct WorkerReport {
    ready: bool,
    done: bool,
    closed: bool,
    commits: u64,
    busy: u64,
    errors: BTreeMap<String, u64>,
    latencies_us: Vec<u64>,
    network: Option<bool>,
    journal: Option<String>,
}

impl WorkerReport {
    fn absorb_line(&mut self, line: &str) {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match word {
            "READY" => self.ready = true,
            "DONE" => self.done = true,
            "COMMITS" => self.commits = rest.parse().unwrap_or(0),
            "BUSY" => self.busy = rest.parse().unwrap_or(0),
            "ERROR" => {
                let (count, message) = rest.split_once(' ').unwrap_or((rest, ""));
                *self.errors.entry(message.to_string()).or_default() += count.parse().unwrap_or(1);
            }
            "LATENCY_US" => self
                .latencies_us
                .extend(rest.split(',').filter_map(|v| v.parse::<u64>().ok())),
            "SETUP" => {
                for field in rest.split(' ') {
                    match field.split_once('=') {
                        Some(("network", v)) => self.network = Some(v == "true"),
                        Some(("journal", v)) => self.journal = Some(v.to_string()),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
}

enum WorkerEvent {
    Line(usize, String),
    Closed(usize),
}

struct RunningWorker {
    child: Child,
    stdin: Option<ChildStdin>,
}

fn spawn_worker(
    spec: &WorkerSpec,
    strace_output: Option<&Path>,
    index: usize,
    events: Sender<WorkerEvent>,
) -> std::io::Result<RunningWorker> {
    let exe = std::env::current_exe()?;
    let mut cmd = match strace_output {
        Some(output) => {
            let mut cmd = Command::new(STRACE);
            cmd.args(["-f", "-c", "-o"]).arg(output).arg("--").arg(exe);
            cmd
        }
        None => Command::new(exe),
    };
    cmd.arg("--worker")
        .args(spec.to_args())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("worker stdout missing"))?;
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if events.send(WorkerEvent::Line(index, line)).is_err() {
                return;
            }
        }
        let _ = events.send(WorkerEvent::Closed(index));
    });
    Ok(RunningWorker {
        stdin: child.stdin.take(),
        child,
    })
}

/// Runs one measurement: spawns the job's workers, starts them together, collects their counts.
fn measure(job: &Job, stop: Stop, seed: u64) -> Outcome {
    let mut outcome = Outcome {
        seconds: match stop {
            Stop::After(d) => d.as_secs_f64(),
            Stop::Transactions(_) => 0.0,
        },
        ..Outcome::default()
    };
    let (events_tx, events) = mpsc::channel();
    let mut workers = Vec::new();
    for index in 0..job.processes {
        let spec = job.worker_spec(index, stop, seed + index as u64);
        let strace = job.strace_output.as_deref();
        match spawn_worker(&spec, strace, workers.len(), events_tx.clone()) {
            Ok(worker) => workers.push(worker),
            Err(e) => outcome.add_error(format!("spawn worker: {e}")),
        }
    }
    drop(events_tx);
    let mut reports: Vec<WorkerReport> = workers.iter().map(|_| WorkerReport::default()).collect();

    let ready_by = Instant::now() + READY_TIMEOUT;
    collect_until(&events, &mut reports, ready_by, |r| r.ready || r.closed);
    let start = SystemTime::now() + START_DELAY;
    let start_nanos = start
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    for worker in &mut workers {
        if let Some(mut stdin) = worker.stdin.take() {
            let _ = writeln!(stdin, "GO {start_nanos}");
        }
    }
    let run_limit = match stop {
        Stop::After(d) => d + OVERRUN_GRACE,
        Stop::Transactions(_) => Duration::from_secs(600),
    };
    collect_until(&events, &mut reports, Instant::now() + run_limit, |r| {
        r.closed
    });

    for (worker, report) in workers.iter_mut().zip(reports) {
        if let Some(problem) = reap(&mut worker.child, &report) {
            outcome.add_error(problem);
        }
        outcome.absorb(report);
    }
    outcome
}

/// Applies worker events until every report satisfies `enough` or `deadline` passes.
fn collect_until(
    events: &Receiver<WorkerEvent>,
    reports: &mut [WorkerReport],
    deadline: Instant,
    enough: impl Fn(&WorkerReport) -> bool,
) {
    while !reports.iter().all(&enough) {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(WorkerEvent::Line(index, line)) => reports[index].absorb_line(&line),
            Ok(WorkerEvent::Closed(index)) => reports[index].closed = true,
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Waits for a worker to exit (killing it if it overran); says what went wrong, if anything.
fn reap(child: &mut Child, report: &WorkerReport) -> Option<String> {
    let give_up = Instant::now() + Duration::from_secs(10);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < give_up => {
                std::thread::sleep(Duration::from_millis(10));
            }
            _ => break None,
        }
    };
    match status {
        None => {
            let _ = child.kill();
            let _ = child.wait();
            Some("worker killed: no result before the deadline".into())
        }
        Some(status) if !report.done => Some(format!("worker exited without a result ({status})")),
        Some(_) => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Series: one alternative measured over interleaved rounds

struct Series {
    job: Job,
    outcomes: Vec<Outcome>,
}

impl Series {
    fn new(setup: Setup, role: Role, processes: usize, dbs: Vec<PathBuf>) -> Series {
        Series::of(Job::new(setup, role, processes, dbs))
    }

    fn of(job: Job) -> Series {
        Series {
            job,
            outcomes: Vec::new(),
        }
    }

    fn name(&self) -> String {
        format!("{}, {}", self.label(), self.job.workload())
    }

    /// The setup's label, with the mode the shim chose when it is the shim.
    fn label(&self) -> String {
        let network = self.outcomes.iter().find_map(|o| o.network);
        match (self.job.setup.vfs, network) {
            ("netfs", Some(true)) => format!("{} [network mode]", self.job.setup.label),
            ("netfs", Some(false)) => format!("{} [native]", self.job.setup.label),
            _ => self.job.setup.label.to_string(),
        }
    }

    fn rates(&self) -> Vec<f64> {
        self.outcomes.iter().map(Outcome::txn_per_s).collect()
    }

    fn stats(&self) -> Option<Stats> {
        Stats::of(&self.rates())
    }

    fn errors(&self) -> BTreeMap<String, u64> {
        let mut all = BTreeMap::new();
        for (message, count) in self.outcomes.iter().flat_map(|o| &o.errors) {
            *all.entry(message.clone()).or_default() += count;
        }
        all
    }

    fn busy(&self) -> u64 {
        self.outcomes.iter().map(|o| o.busy).sum()
    }

    /// "812 txn/s (790–830)" and the errors, if any.
    fn value(&self) -> String {
        let mut value = match self.stats() {
            Some(s) => format!("{} txn/s ({}–{})", rate(s.median), rate(s.min), rate(s.max)),
            None => "no data".to_string(),
        };
        let errors = self.errors();
        if !errors.is_empty() {
            let list: Vec<String> = errors.iter().map(|(m, n)| format!("{m} ×{n}")).collect();
            let _ = write!(value, "; errors: {}", list.join(", "));
        }
        value
    }
}

/// Runs every series once per round, in order, for `rounds` rounds (A, B, A, B, ...). Within
/// a round all series get the same seeds, so the same payloads.
fn run_rounds(series: &mut [Series], rounds: u32, seconds: f64) {
    let stop = Stop::After(Duration::from_secs_f64(seconds));
    for round in 0..rounds {
        for s in series.iter_mut() {
            let started = Instant::now();
            let outcome = measure(&s.job, stop, u64::from(round) * 1000);
            let txn_per_s = outcome.txn_per_s();
            let errors: u64 = outcome.errors.values().sum();
            s.outcomes.push(outcome);
            eprintln!(
                "  round {}/{rounds}  {:<62} {:>8} txn/s  ({:.1} s wall{})",
                round + 1,
                s.name(),
                rate(txn_per_s),
                started.elapsed().as_secs_f64(),
                if errors > 0 {
                    format!(", {errors} errors")
                } else {
                    String::new()
                }
            );
        }
    }
}

#[derive(Clone, Copy)]
struct Stats {
    median: f64,
    min: f64,
    max: f64,
}

impl Stats {
    fn of(values: &[f64]) -> Option<Stats> {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let mid = sorted.len() / 2;
        let median = if sorted.len().is_multiple_of(2) {
            (sorted[mid - 1] + sorted[mid]) / 2.0
        } else {
            sorted[mid]
        };
        Some(Stats {
            median,
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        })
    }
}

/// A rate with as many digits as it deserves.
fn rate(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// The `p`-th quantile (0..=1) of sorted values, nearest rank.
fn quantile(sorted: &[u64], p: f64) -> u64 {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

// ---------------------------------------------------------------------------------------------
// The report

enum Verdict {
    Met,
    Missed,
    Reference,
    AlternativeFailed,
    Skipped(String),
}

impl Verdict {
    fn text(&self) -> String {
        match self {
            Verdict::Met => "met".into(),
            Verdict::Missed => "**missed**".into(),
            Verdict::Reference => "reference".into(),
            Verdict::AlternativeFailed => "alternative failed (see its errors)".into(),
            Verdict::Skipped(reason) => format!("skipped: {reason}"),
        }
    }

    fn key(&self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "missed",
            Verdict::Reference => "reference",
            Verdict::AlternativeFailed => "alternative-failed",
            Verdict::Skipped(_) => "skipped",
        }
    }
}

/// One side of a table row: what was measured, and the figure.
struct Cell {
    label: String,
    value: String,
}

struct Row {
    scenario: &'static str,
    measurement: String,
    subject: Cell,
    alternative: Cell,
    ratio: Option<f64>,
    goal: Option<f64>,
    verdict: Verdict,
}

struct LatencyRecord {
    scenario: &'static str,
    name: String,
    samples: usize,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
    /// The fewest commits of a process / the most, over all rounds.
    fairness: Option<f64>,
    /// Commits of each process, summed over the rounds.
    commits_in_all: Vec<u64>,
}

struct AnatomyRecord {
    label: &'static str,
    transactions: u64,
    per_transaction: BTreeMap<String, f64>,
}

impl AnatomyRecord {
    fn total(&self) -> f64 {
        self.per_transaction.values().sum()
    }

    fn top(&self, n: usize) -> Vec<(&str, f64)> {
        let mut all: Vec<(&str, f64)> = self
            .per_transaction
            .iter()
            .map(|(name, v)| (name.as_str(), *v))
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1));
        all.truncate(n);
        all
    }
}

#[derive(Default)]
struct Report {
    /// The scenario now running; rows are filed under it.
    scenario: &'static str,
    rows: Vec<Row>,
    series: Vec<(&'static str, Series)>,
    latency: Vec<LatencyRecord>,
    anatomy: Vec<AnatomyRecord>,
}

impl Report {
    /// A row comparing two series by their median txn/s. An alternative that failed gets no
    /// ratio (its errors are shown instead); a subject with errors misses its goal.
    fn compare(&mut self, measurement: String, subject: &Series, alt: &Series, goal: Option<f64>) {
        let medians = (subject.stats(), alt.stats());
        let alt_failed = !alt.errors().is_empty();
        let ratio = match medians {
            (Some(s), Some(a)) if a.median > 0.0 && !alt_failed => Some(s.median / a.median),
            _ => None,
        };
        let verdict = match (goal, ratio) {
            (_, None) if alt_failed => Verdict::AlternativeFailed,
            (None, _) => Verdict::Reference,
            (Some(g), Some(r)) if r >= g && subject.errors().is_empty() => Verdict::Met,
            (Some(_), _) => Verdict::Missed,
        };
        // Where the process counts differ (scaling), the labels say so.
        let label = |s: &Series| {
            if subject.job.processes == alt.job.processes {
                s.label()
            } else {
                format!("{}, {}", s.label(), s.job.role.processes(s.job.processes))
            }
        };
        self.rows.push(Row {
            scenario: self.scenario,
            measurement,
            subject: Cell {
                label: label(subject),
                value: subject.value(),
            },
            alternative: Cell {
                label: label(alt),
                value: alt.value(),
            },
            ratio,
            goal,
            verdict,
        });
    }

    /// Rows for lock latency and fairness, subject beside alternative, without goals.
    fn latency(&mut self, subject: &Series, alt: &Series) {
        let [s, a] = [subject, alt].map(|series| latency_record(self.scenario, series));
        let who = subject.job.role.processes(subject.job.processes);
        let cells = |f: &dyn Fn(&LatencyRecord) -> String| {
            [(subject, &s), (alt, &a)].map(|(series, record)| Cell {
                label: series.label(),
                value: f(record),
            })
        };
        let [sl, al] = cells(&|r| {
            format!(
                "p50 {} · p99 {} · max {} ms",
                millis(r.p50_us),
                millis(r.p99_us),
                millis(r.max_us)
            )
        });
        self.push_reference(format!("BEGIN IMMEDIATE until OK, {who}"), sl, al);
        let [sf, af] = cells(&|r| {
            let commits: Vec<String> = r.commits_in_all.iter().map(u64::to_string).collect();
            match r.fairness {
                Some(f) => format!("{f:.2} ({} commits)", commits.join(" / ")),
                None => "no data".into(),
            }
        });
        self.push_reference(format!("commits per process, min/max, {who}"), sf, af);
        self.latency.extend([s, a]);
    }

    fn push_reference(&mut self, measurement: String, subject: Cell, alternative: Cell) {
        self.rows.push(Row {
            scenario: self.scenario,
            measurement,
            subject,
            alternative,
            ratio: None,
            goal: None,
            verdict: Verdict::Reference,
        });
    }

    /// The total system calls per write transaction, subject beside alternative.
    fn anatomy(&mut self, subject: AnatomyRecord, alt: AnatomyRecord) {
        let cell = |r: &AnatomyRecord| Cell {
            label: r.label.to_string(),
            value: format!("{:.1} syscalls/txn", r.total()),
        };
        self.rows.push(Row {
            scenario: self.scenario,
            measurement: format!(
                "syscalls per write txn, 1 writer ({} txns under strace -f -c)",
                subject.transactions
            ),
            subject: cell(&subject),
            alternative: cell(&alt),
            ratio: (alt.total() > 0.0).then(|| subject.total() / alt.total()),
            goal: None,
            verdict: Verdict::Reference,
        });
        self.anatomy.extend([subject, alt]);
    }

    fn skipped(&mut self, reason: &str) {
        let dash = || Cell {
            label: String::new(),
            value: "—".into(),
        };
        self.rows.push(Row {
            scenario: self.scenario,
            measurement: "—".into(),
            subject: dash(),
            alternative: dash(),
            ratio: None,
            goal: None,
            verdict: Verdict::Skipped(reason.to_string()),
        });
    }

    fn keep(&mut self, series: Vec<Series>) {
        let scenario = self.scenario;
        self.series
            .extend(series.into_iter().map(|s| (scenario, s)));
    }
}

fn latency_record(scenario: &'static str, series: &Series) -> LatencyRecord {
    let mut all: Vec<u64> = series
        .outcomes
        .iter()
        .flat_map(|o| o.latencies_us.iter().copied())
        .collect();
    all.sort_unstable();
    let commits = commits_in_all(series);
    let fairness = match (commits.iter().min(), commits.iter().max()) {
        (Some(&min), Some(&max)) if max > 0 => Some(min as f64 / max as f64),
        _ => None,
    };
    let at = |p| if all.is_empty() { 0 } else { quantile(&all, p) };
    LatencyRecord {
        scenario,
        name: series.name(),
        samples: all.len(),
        p50_us: at(0.50),
        p99_us: at(0.99),
        max_us: all.last().copied().unwrap_or(0),
        fairness,
        commits_in_all: commits,
    }
}

fn commits_in_all(series: &Series) -> Vec<u64> {
    let mut sums: Vec<u64> = Vec::new();
    for outcome in &series.outcomes {
        for (i, commits) in outcome.commits_per_process.iter().enumerate() {
            if sums.len() <= i {
                sums.push(0);
            }
            sums[i] += commits;
        }
    }
    sums
}

fn millis(us: u64) -> String {
    let ms = us as f64 / 1000.0;
    if ms >= 10.0 {
        format!("{ms:.0}")
    } else {
        format!("{ms:.2}")
    }
}

// ---------------------------------------------------------------------------------------------
// Databases

/// The per-run context the scenarios share.
struct Context {
    profile: Profile,
    /// This run's own directory (removed at the end).
    work: PathBuf,
    /// The pre-filled database every alternative gets a copy of.
    template: PathBuf,
}

impl Context {
    fn scratch(&self, name: &str) -> Result<tempfile::TempDir, String> {
        tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir_in(&self.work)
            .map_err(|e| format!("scratch dir in {}: {e}", self.work.display()))
    }

    /// A copy of the template at `dir/name`, already in WAL mode when the setup wants WAL
    /// (so that the workers do not race to convert it).
    fn database(&self, dir: &Path, name: &str, setup: Setup) -> Result<PathBuf, String> {
        let path = dir.join(name);
        fs::copy(&self.template, &path)
            .map_err(|e| format!("copy the template to {}: {e}", path.display()))?;
        if setup.journal == Some("wal") {
            Connection::open(&path)
                .and_then(|c| c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(())))
                .map_err(|e| format!("WAL for {}: {e}", path.display()))?;
        }
        Ok(path)
    }
}

/// Creates the pre-filled database through SQLite's own VFS, in one transaction.
fn create_template(path: &Path, rows: u64) -> rusqlite::Result<()> {
    let mut conn = Connection::open(path)?;
    conn.execute_batch(SCHEMA)?;
    let sessions = (rows / ROWS_PER_SESSION).max(1);
    let mut rng = Prng::new(0x5e55_1045);
    let tx = conn.transaction()?;
    {
        let mut insert_session = tx.prepare(INSERT_SESSION)?;
        for id in 1..=sessions {
            insert_session.execute([id as i64])?;
        }
        let mut insert_message = tx.prepare(INSERT_MESSAGE)?;
        for i in 0..rows {
            let session = 1 + rng.below(sessions) as i64;
            insert_message.execute(params![session, i as i64 * 1000, rng.payload()])?;
        }
    }
    tx.commit()
}

// ---------------------------------------------------------------------------------------------
// Scenarios

type Scenario = fn(&Context, &mut Report) -> Result<(), String>;

const SCENARIOS: [(&str, Scenario); 7] = [
    ("local-wal", local_wal),
    ("local-network-mode", local_network_mode),
    ("reader-scaling", reader_scaling),
    ("sshfs", sshfs),
    ("lock-latency", lock_latency),
    ("smb", smb),
    ("cost-anatomy", cost_anatomy),
];

/// 1. Local disk, WAL, one process: the shim in auto mode passes through to `unix`.
fn local_wal(ctx: &Context, report: &mut Report) -> Result<(), String> {
    let dir = ctx.scratch("local-wal")?;
    let shim = ctx.database(dir.path(), "shim.db", NETFS_AUTO_WAL)?;
    let native = ctx.database(dir.path(), "native.db", UNIX_WAL)?;
    let mut series = vec![
        Series::new(NETFS_AUTO_WAL, Role::Write, 1, vec![shim.clone()]),
        Series::new(UNIX_WAL, Role::Write, 1, vec![native.clone()]),
        Series::new(NETFS_AUTO_WAL, Role::Read, 1, vec![shim]),
        Series::new(UNIX_WAL, Role::Read, 1, vec![native]),
    ];
    run_rounds(&mut series, ctx.profile.rounds, ctx.profile.local_seconds);
    for pair in series.chunks(2) {
        report.compare(pair[0].job.workload(), &pair[0], &pair[1], Some(0.98));
    }
    report.keep(series);
    Ok(())
}

/// 2. Local disk, network mode forced, against SQLite's rollback modes and dot-file locking.
fn local_network_mode(ctx: &Context, report: &mut Report) -> Result<(), String> {
    let dir = ctx.scratch("local-network-mode")?;
    let setups = [NETFS_ON, UNIX_DELETE, UNIX_TRUNCATE, UNIX_DOTFILE];
    let mut dbs = Vec::new();
    for (i, setup) in setups.iter().enumerate() {
        dbs.push(ctx.database(dir.path(), &format!("{i}.db"), *setup)?);
    }
    let mut series = Vec::new();
    for writers in [1, 4] {
        for (setup, db) in setups.iter().zip(&dbs) {
            series.push(Series::new(*setup, Role::Write, writers, vec![db.clone()]));
        }
    }
    run_rounds(&mut series, ctx.profile.rounds, ctx.profile.local_seconds);
    for group in series.chunks_exact(setups.len()) {
        let (shim, delete, truncate, dotfile) = (&group[0], &group[1], &group[2], &group[3]);
        let median = |s: &Series| s.stats().map_or(0.0, |s| s.median);
        let (faster, slower) = if median(delete) >= median(truncate) {
            (delete, truncate)
        } else {
            (truncate, delete)
        };
        let workload = shim.job.workload();
        report.compare(
            format!("{workload} (vs the faster native rollback mode)"),
            shim,
            faster,
            Some(0.8),
        );
        report.compare(workload.clone(), shim, slower, None);
        report.compare(workload, shim, dotfile, None);
    }
    report.keep(series);
    Ok(())
}

/// 3. Does a second reader process add throughput in network mode (2 cores)?
fn reader_scaling(ctx: &Context, report: &mut Report) -> Result<(), String> {
    let dir = ctx.scratch("reader-scaling")?;
    let shim = ctx.database(dir.path(), "shim.db", NETFS_ON)?;
    let dotfile = ctx.database(dir.path(), "dotfile.db", UNIX_DOTFILE)?;
    let mut series = vec![
        Series::new(NETFS_ON, Role::Read, 1, vec![shim.clone()]),
        Series::new(NETFS_ON, Role::Read, 2, vec![shim]),
        Series::new(UNIX_DOTFILE, Role::Read, 1, vec![dotfile.clone()]),
        Series::new(UNIX_DOTFILE, Role::Read, 2, vec![dotfile]),
    ];
    run_rounds(&mut series, ctx.profile.rounds, ctx.profile.local_seconds);
    let scaling = "read txn/s, 2 readers / 1 reader".to_string();
    report.compare(scaling.clone(), &series[1], &series[0], Some(1.7));
    report.compare(scaling, &series[3], &series[2], None);
    report.keep(series);
    Ok(())
}

/// 4. Two-host sshfs testbed: the shim against dot-file locking and against native WAL.
fn sshfs(ctx: &Context, report: &mut Report) -> Result<(), String> {
    let testbed = TwoHostTestbed::sshfs()?;
    let server = testbed.server_dir();
    let [a, b] = [testbed.mount_a(), testbed.mount_b()];
    ctx.database(server, "shim.db", NETFS_AUTO)?;
    ctx.database(server, "dotfile.db", UNIX_DOTFILE)?;
    ctx.database(server, "wal.db", UNIX_WAL)?;
    let both = |name: &str| vec![a.join(name), b.join(name)];
    let mut series = vec![
        Series::new(NETFS_AUTO, Role::Write, 4, both("shim.db")),
        Series::new(UNIX_DOTFILE, Role::Write, 4, both("dotfile.db")),
        Series::new(NETFS_AUTO, Role::Write, 1, vec![a.join("shim.db")]),
        Series::new(UNIX_DOTFILE, Role::Write, 1, vec![a.join("dotfile.db")]),
        Series::new(UNIX_WAL, Role::Write, 1, vec![a.join("wal.db")]),
    ];
    run_rounds(
        &mut series,
        ctx.profile.testbed_rounds,
        ctx.profile.sshfs_seconds,
    );
    let (shim4, dotfile4) = (&series[0], &series[1]);
    let (shim1, dotfile1, wal1) = (&series[2], &series[3], &series[4]);
    report.compare(shim4.job.workload(), shim4, dotfile4, Some(3.0));
    report.compare(shim1.job.workload(), shim1, dotfile1, Some(1.5));
    report.compare(
        format!("{} (native WAL: one host only)", shim1.job.workload()),
        shim1,
        wal1,
        Some(0.5),
    );
    report.keep(series);
    Ok(())
}

/// Scenario 5, lock latency: four writers in network mode on a local disk. How long a
/// writer waits for the lock, and whether every process gets its share.
fn lock_latency(ctx: &Context, report: &mut Report) -> Result<(), String> {
    let dir = ctx.scratch("lock-latency")?;
    let mut series = Vec::new();
    for (name, setup) in [("shim.db", NETFS_ON), ("delete.db", UNIX_DELETE)] {
        let db = ctx.database(dir.path(), name, setup)?;
        let mut job = Job::new(setup, Role::Write, 4, vec![db]);
        job.record_latency = true;
        series.push(Series::of(job));
    }
    run_rounds(&mut series, ctx.profile.rounds, ctx.profile.local_seconds);
    report.compare(series[0].job.workload(), &series[0], &series[1], None);
    report.latency(&series[0], &series[1]);
    report.keep(series);
    Ok(())
}

/// 6. Two-host SMB testbed: the shim against dot-file locking, 4 writers over both mounts.
fn smb(ctx: &Context, report: &mut Report) -> Result<(), String> {
    wait_for_smb_testbed_lock()?;
    let testbed = TwoHostTestbed::smb()?;
    let server = testbed.server_dir();
    let [a, b] = [testbed.mount_a(), testbed.mount_b()];
    ctx.database(server, "shim.db", NETFS_AUTO)?;
    ctx.database(server, "dotfile.db", UNIX_DOTFILE)?;
    let both = |name: &str| vec![a.join(name), b.join(name)];
    let mut series = vec![
        Series::new(NETFS_AUTO, Role::Write, 4, both("shim.db")),
        Series::new(UNIX_DOTFILE, Role::Write, 4, both("dotfile.db")),
    ];
    run_rounds(
        &mut series,
        ctx.profile.testbed_rounds,
        ctx.profile.smb_seconds,
    );
    report.compare(series[0].job.workload(), &series[0], &series[1], None);
    report.keep(series);
    Ok(())
}

/// The SMB testbed needs port 445 to itself and waits up to 20 minutes for another one (a
/// test run) to finish; the bench waits half a minute at most, then skips.
fn wait_for_smb_testbed_lock() -> Result<(), String> {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(SMB_LOCK_PATH)
        .map_err(|e| format!("open {SMB_LOCK_PATH}: {e}"))?;
    let give_up = Instant::now() + SMB_LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(()), // released when `file` is dropped
            Err(fs::TryLockError::WouldBlock) if Instant::now() < give_up => {
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(fs::TryLockError::WouldBlock) => {
                return Err(format!(
                    "another SMB testbed held {SMB_LOCK_PATH} for more than {SMB_LOCK_WAIT:?}"
                ));
            }
            Err(fs::TryLockError::Error(e)) => return Err(format!("lock {SMB_LOCK_PATH}: {e}")),
        }
    }
}

/// 7. System calls per write transaction, network mode beside native DELETE mode.
fn cost_anatomy(ctx: &Context, report: &mut Report) -> Result<(), String> {
    if !Path::new(STRACE).exists() {
        return Err(format!("{STRACE} not found (apt-get install strace)"));
    }
    let dir = ctx.scratch("cost-anatomy")?;
    let n = ctx.profile.strace_transactions;
    let mut records = Vec::new();
    for (name, setup) in [("shim.db", NETFS_ON), ("delete.db", UNIX_DELETE)] {
        let db = ctx.database(dir.path(), name, setup)?;
        let job = Job::new(setup, Role::Write, 1, vec![db]);
        let idle = syscall_counts(&job, &dir.path().join(format!("{name}.idle.strace")), 0)?;
        let busy = syscall_counts(&job, &dir.path().join(format!("{name}.strace")), n)?;
        let per_transaction = busy
            .iter()
            .map(|(call, &count)| {
                let own = count.saturating_sub(idle.get(call).copied().unwrap_or(0));
                (call.clone(), own as f64 / n as f64)
            })
            .filter(|(_, per_txn)| *per_txn > 0.0)
            .collect();
        eprintln!("  {}: strace done", setup.label);
        records.push(AnatomyRecord {
            label: setup.label,
            transactions: n,
            per_transaction,
        });
    }
    let [subject, alt] = <[AnatomyRecord; 2]>::try_from(records)
        .map_err(|_| "expected two strace profiles".to_string())?;
    report.anatomy(subject, alt);
    Ok(())
}

/// Runs the job's single writer under `strace -f -c` for `transactions` transactions and
/// returns the number of calls per system call.
fn syscall_counts(
    job: &Job,
    output: &Path,
    transactions: u64,
) -> Result<BTreeMap<String, u64>, String> {
    let mut job = job.clone();
    job.strace_output = Some(output.to_path_buf());
    let outcome = measure(&job, Stop::Transactions(transactions), 0);
    if !outcome.errors.is_empty() {
        return Err(format!("worker under strace: {:?}", outcome.errors));
    }
    let text = fs::read_to_string(output)
        .map_err(|e| format!("strace wrote no summary ({}): {e}", output.display()))?;
    let counts = parse_strace_summary(&text);
    if counts.is_empty() {
        return Err(format!(
            "no counts in strace's summary {}",
            output.display()
        ));
    }
    Ok(counts)
}

/// Reads `strace -c` output: `% time  seconds  usecs/call  calls  [errors]  syscall`.
fn parse_strace_summary(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let name = *fields.last()?;
            if fields.len() < 5 || name == "total" || fields[0].parse::<f64>().is_err() {
                return None;
            }
            Some((name.to_string(), fields[3].parse().ok()?))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The machine

struct Machine {
    cpus: usize,
    cpu_model: String,
    kernel: String,
    load_at_start: String,
    sqlite: &'static str,
    work_root: PathBuf,
    work_fs: String,
    source: String,
}

impl Machine {
    fn probe(work_root: &Path) -> Machine {
        let cpu_model = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, model)| model.trim().to_string())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            load_at_start: load_average(),
            sqlite: rusqlite::version(),
            work_root: work_root.to_path_buf(),
            work_fs: fs_type(work_root),
            source: source_revision(),
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} CPUs ({}), Linux {}, SQLite {}; databases in {} ({}); sqlite-netfs {}",
            self.cpus,
            self.cpu_model,
            self.kernel,
            self.sqlite,
            self.work_root.display(),
            self.work_fs,
            self.source
        )
    }
}

/// The crate's git revision, and whether the work tree differs from it.
fn source_revision() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(env!("CARGO_MANIFEST_DIR"))
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(revision) => match git(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(changes) if changes.is_empty() => revision,
            _ => format!("{revision} with uncommitted changes"),
        },
        None => "(no git revision)".into(),
    }
}

fn read_trimmed(path: &str) -> String {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// The 1, 5 and 15 minute load averages.
fn load_average() -> String {
    let all = read_trimmed("/proc/loadavg");
    all.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn fs_type(dir: &Path) -> String {
    sqlite_netfs::detect(&dir.join("probe.db"))
        .map_or_else(|e| format!("unknown: {e}"), |d| d.fs_type)
}

/// `/var/tmp`, unless it is a tmpfs (fsync would cost nothing and flatter the slow paths):
/// then the output directory.
fn default_work_root(out: &Path) -> PathBuf {
    let var_tmp = PathBuf::from("/var/tmp");
    if var_tmp.is_dir() && fs_type(&var_tmp) != "tmpfs" {
        var_tmp
    } else {
        out.to_path_buf()
    }
}

// ---------------------------------------------------------------------------------------------
// The run and its outputs

/// Everything the outputs are made from.
struct Run {
    machine: Machine,
    profile: Profile,
    command: String,
    elapsed: Duration,
    load_at_end: String,
    report: Report,
}

fn run_bench(options: &Options, args: &[String]) -> Result<(), String> {
    let profile = options.profile();
    fs::create_dir_all(&options.out)
        .map_err(|e| format!("create {}: {e}", options.out.display()))?;
    let work_root = match &options.work_dir {
        Some(dir) => dir.clone(),
        None => default_work_root(&options.out),
    };
    let work = tempfile::Builder::new()
        .prefix("sqlite-netfs-bench-")
        .tempdir_in(&work_root)
        .map_err(|e| format!("work dir in {}: {e}", work_root.display()))?;
    let machine = Machine::probe(&work_root);
    eprintln!("machine: {}", machine.describe());

    let started = Instant::now();
    let template = work.path().join("template.db");
    eprintln!("creating the template database ({} rows)", profile.rows);
    create_template(&template, profile.rows).map_err(|e| format!("template database: {e}"))?;
    let ctx = Context {
        profile,
        work: work.path().to_path_buf(),
        template,
    };
    let mut report = Report::default();
    for (name, scenario) in SCENARIOS {
        if options.only.as_deref().is_some_and(|only| only != name) {
            continue;
        }
        eprintln!("== {name}");
        let scenario_started = Instant::now();
        report.scenario = name;
        if let Err(reason) = scenario(&ctx, &mut report) {
            eprintln!("  skipped: {reason}");
            report.skipped(&first_line(&reason));
        }
        eprintln!("  ({:.0} s)", scenario_started.elapsed().as_secs_f64());
    }

    let run = Run {
        machine,
        profile,
        command: command_line(args),
        elapsed: started.elapsed(),
        load_at_end: load_average(),
        report,
    };
    let markdown = render_markdown(&run);
    print!("{markdown}");
    for (name, text) in [
        ("results.md", markdown),
        ("results.json", render_json(&run)),
        ("chart.svg", render_chart(&run)),
    ] {
        let path = options.out.join(name);
        fs::write(&path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
    }
    eprintln!(
        "wrote results.md, results.json and chart.svg to {}",
        options.out.display()
    );
    Ok(())
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or("");
    line.chars().take(200).collect()
}

fn command_line(args: &[String]) -> String {
    let mut command = "cargo run --release --example bench".to_string();
    if !args.is_empty() {
        let _ = write!(command, " -- {}", args.join(" "));
    }
    command
}

fn render_markdown(run: &Run) -> String {
    let p = &run.profile;
    let mut md = format!("# sqlite-netfs benchmark ({} mode)\n\n", p.name);
    let _ = writeln!(md, "- **Command:** `{}`", run.command);
    let _ = writeln!(md, "- **Machine:** {}", run.machine.describe());
    let _ = writeln!(
        md,
        "- **Load average** (1, 5, 15 min): {} at the start, {} at the end",
        run.machine.load_at_start, run.load_at_end
    );
    let _ = writeln!(
        md,
        "- **Run:** {} rows; local disk: {} × {} s per alternative; testbeds: {} × {} s (sshfs), {} s (SMB); {:.0} s in all",
        p.rows,
        plural(p.rounds as usize, "round"),
        p.local_seconds,
        plural(p.testbed_rounds as usize, "round"),
        p.sshfs_seconds,
        p.smb_seconds,
        run.elapsed.as_secs_f64()
    );
    md.push_str(
        "- **Reading it:** each round runs every alternative once, in turn; figures are the \
         median txn/s over the rounds (min–max in brackets), and the ratio is subject / \
         alternative of the medians.\n\n",
    );
    md.push_str("| Scenario | Measurement | Subject | Alternative | Ratio | Goal | Result |\n");
    md.push_str("|---|---|---|---|---|---|---|\n");
    for row in &run.report.rows {
        let cell = |c: &Cell| {
            if c.label.is_empty() {
                escape_md(&c.value)
            } else {
                format!("{}: {}", escape_md(&c.label), escape_md(&c.value))
            }
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} |",
            row.scenario,
            escape_md(&row.measurement),
            cell(&row.subject),
            cell(&row.alternative),
            row.ratio.map_or("—".into(), |r| format!("{r:.2}")),
            row.goal.map_or("—".into(), |g| format!("≥ {g}")),
            escape_md(&row.verdict.text())
        );
    }
    md.push_str(&anatomy_markdown(&run.report.anatomy));
    md
}

/// The top system calls per write transaction of each profiled setup, side by side.
fn anatomy_markdown(records: &[AnatomyRecord]) -> String {
    if records.is_empty() {
        return String::new();
    }
    let mut names: Vec<&str> = Vec::new();
    for record in records {
        for (name, _) in record.top(8) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    let mut md =
        "\n## System calls per write transaction (top 8 of each)\n\n| syscall |".to_string();
    for record in records {
        let _ = write!(md, " {} |", record.label);
    }
    md.push_str("\n|---|");
    md.push_str(&"---:|".repeat(records.len()));
    md.push('\n');
    for name in names.iter().copied().chain(["**all**"]) {
        let _ = write!(md, "| {name} |");
        for record in records {
            let value = match name {
                "**all**" => record.total(),
                _ => record.per_transaction.get(name).copied().unwrap_or(0.0),
            };
            let _ = write!(md, " {value:.1} |");
        }
        md.push('\n');
    }
    md
}

/// "1 round", "3 rounds"
fn plural(count: usize, noun: &str) -> String {
    format!("{count} {noun}{}", if count == 1 { "" } else { "s" })
}

fn escape_md(text: &str) -> String {
    text.replace('|', "\\|")
}

fn render_json(run: &Run) -> String {
    let m = &run.machine;
    let p = &run.profile;
    let machine = format!(
        "{{\"cpus\": {}, \"cpu_model\": {}, \"kernel\": {}, \"sqlite\": {}, \"work_dir\": {}, \"work_fs\": {}, \"load_average_start\": {}, \"load_average_end\": {}, \"source\": {}}}",
        m.cpus,
        json_str(&m.cpu_model),
        json_str(&m.kernel),
        json_str(m.sqlite),
        json_str(&m.work_root.display().to_string()),
        json_str(&m.work_fs),
        json_str(&m.load_at_start),
        json_str(&run.load_at_end),
        json_str(&m.source)
    );
    let profile = format!(
        "{{\"mode\": {}, \"rows\": {}, \"rounds\": {}, \"seconds\": {}, \"testbed_rounds\": {}, \"sshfs_seconds\": {}, \"smb_seconds\": {}, \"strace_transactions\": {}}}",
        json_str(p.name),
        p.rows,
        p.rounds,
        json_num(p.local_seconds),
        p.testbed_rounds,
        json_num(p.sshfs_seconds),
        json_num(p.smb_seconds),
        p.strace_transactions
    );
    let rows = json_list(run.report.rows.iter().map(|r| {
        format!(
            "{{\"scenario\": {}, \"measurement\": {}, \"subject\": {}, \"subject_value\": {}, \"alternative\": {}, \"alternative_value\": {}, \"ratio\": {}, \"goal\": {}, \"result\": {}, \"note\": {}}}",
            json_str(r.scenario),
            json_str(&r.measurement),
            json_str(&r.subject.label),
            json_str(&r.subject.value),
            json_str(&r.alternative.label),
            json_str(&r.alternative.value),
            json_opt(r.ratio),
            json_opt(r.goal),
            json_str(r.verdict.key()),
            json_str(&match &r.verdict {
                Verdict::Skipped(reason) => reason.clone(),
                _ => String::new(),
            })
        )
    }));
    let series = json_list(
        run.report
            .series
            .iter()
            .map(|(scenario, s)| series_json(scenario, s)),
    );
    let latency = json_list(run.report.latency.iter().map(|l| {
        format!(
            "{{\"scenario\": {}, \"name\": {}, \"samples\": {}, \"p50_ms\": {}, \"p99_ms\": {}, \"max_ms\": {}, \"fairness_min_over_max\": {}, \"commits_in_all\": {}}}",
            json_str(l.scenario),
            json_str(&l.name),
            l.samples,
            json_num(l.p50_us as f64 / 1000.0),
            json_num(l.p99_us as f64 / 1000.0),
            json_num(l.max_us as f64 / 1000.0),
            json_opt(l.fairness),
            json_list(l.commits_in_all.iter().map(u64::to_string))
        )
    }));
    let anatomy = json_list(run.report.anatomy.iter().map(|a| {
        let calls = a
            .per_transaction
            .iter()
            .map(|(name, v)| format!("{}: {}", json_str(name), json_num(*v)))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "{{\"setup\": {}, \"transactions\": {}, \"syscalls_per_transaction\": {}, \"per_syscall\": {{{calls}}}}}",
            json_str(a.label),
            a.transactions,
            json_num(a.total())
        )
    }));
    format!(
        "{{\n\"command\": {},\n\"elapsed_seconds\": {},\n\"machine\": {machine},\n\"profile\": {profile},\n\"rows\": {rows},\n\"series\": {series},\n\"latency\": {latency},\n\"anatomy\": {anatomy}\n}}\n",
        json_str(&run.command),
        json_num(run.elapsed.as_secs_f64())
    )
}

fn series_json(scenario: &str, s: &Series) -> String {
    let stats = s.stats();
    let errors = s
        .errors()
        .iter()
        .map(|(m, n)| format!("{}: {n}", json_str(m)))
        .collect::<Vec<_>>()
        .join(", ");
    let journal = s.outcomes.iter().find_map(|o| o.journal.as_deref());
    format!(
        "{{\"scenario\": {}, \"name\": {}, \"txn_per_s\": {}, \"median\": {}, \"min\": {}, \"max\": {}, \"commits_per_process\": {}, \"busy_retries\": {}, \"errors\": {{{errors}}}, \"network_mode\": {}, \"journal_mode\": {}}}",
        json_str(scenario),
        json_str(&s.name()),
        json_list(s.rates().into_iter().map(json_num)),
        json_opt(stats.map(|x| x.median)),
        json_opt(stats.map(|x| x.min)),
        json_opt(stats.map(|x| x.max)),
        json_list(
            s.outcomes
                .iter()
                .map(|o| { json_list(o.commits_per_process.iter().map(u64::to_string)) })
        ),
        s.busy(),
        s.outcomes
            .iter()
            .find_map(|o| o.network)
            .map_or("null".into(), |n| n.to_string()),
        journal.map_or("null".into(), json_str)
    )
}

fn json_str(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_num(value: f64) -> String {
    if value.is_finite() {
        format!("{value}")
    } else {
        "null".into()
    }
}

fn json_opt(value: Option<f64>) -> String {
    value.map_or("null".into(), json_num)
}

fn json_list(items: impl Iterator<Item = String>) -> String {
    format!("[{}]", items.collect::<Vec<_>>().join(", "))
}

/// A horizontal bar per ratio that has a goal: green where met, red where missed, with the
/// goal as a vertical mark and parity (1.0) as a dashed line.
fn render_chart(run: &Run) -> String {
    const WIDTH: f64 = 1060.0;
    const LABELS: f64 = 540.0;
    const BARS: f64 = 400.0;
    const ROW: f64 = 40.0;
    const TOP: f64 = 64.0;
    let rows: Vec<(&Row, f64, f64)> = run
        .report
        .rows
        .iter()
        .filter_map(|r| Some((r, r.ratio?, r.goal?)))
        .collect();
    let scale_max = rows
        .iter()
        .flat_map(|(_, ratio, goal)| [*ratio, *goal])
        .fold(1.2_f64, f64::max)
        * 1.1;
    let x = |value: f64| LABELS + value / scale_max * BARS;
    let height = TOP + ROW * rows.len().max(1) as f64 + 30.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"22\" font-size=\"16\" font-weight=\"bold\">sqlite-netfs: ratio of median txn/s (bar) against its goal (black mark)</text>\n\
         <text x=\"10\" y=\"42\" fill=\"#555\">{} mode · {}</text>\n",
        run.profile.name,
        escape_xml(&run.machine.describe())
    );
    if rows.is_empty() {
        let _ = writeln!(
            svg,
            "<text x=\"10\" y=\"{}\">no ratio with a goal in this run</text>",
            TOP + 20.0
        );
    } else {
        let parity = x(1.0);
        let bottom = TOP + ROW * rows.len() as f64;
        let _ = writeln!(
            svg,
            "<line x1=\"{parity:.1}\" y1=\"{TOP}\" x2=\"{parity:.1}\" y2=\"{bottom}\" stroke=\"#999\" stroke-dasharray=\"4 3\"/>\n\
             <text x=\"{parity:.1}\" y=\"{}\" text-anchor=\"middle\" fill=\"#555\">1.0</text>",
            bottom + 16.0
        );
    }
    for (i, (row, ratio, goal)) in rows.iter().enumerate() {
        let y = TOP + ROW * i as f64;
        let colour = match row.verdict {
            Verdict::Met => "#2e7d32",
            _ => "#c62828",
        };
        let label = escape_xml(&format!("{}: {}", row.scenario, row.measurement));
        let setups = escape_xml(&format!(
            "{} / {}",
            row.subject.label, row.alternative.label
        ));
        let bar_width = x(*ratio) - LABELS;
        let goal_x = x(*goal);
        let text_x = x(ratio.max(*goal)) + 6.0;
        let _ = writeln!(
            svg,
            "<text x=\"10\" y=\"{label_y}\">{label}</text>\n\
             <text x=\"10\" y=\"{setups_y}\" fill=\"#555\" font-size=\"11\">{setups}</text>\n\
             <rect x=\"{LABELS}\" y=\"{bar_y}\" width=\"{bar_width:.1}\" height=\"20\" fill=\"{colour}\"/>\n\
             <line x1=\"{goal_x:.1}\" y1=\"{mark_top}\" x2=\"{goal_x:.1}\" y2=\"{mark_bottom}\" stroke=\"black\" stroke-width=\"3\"/>\n\
             <text x=\"{text_x:.1}\" y=\"{value_y}\">{ratio:.2} (goal ≥ {goal})</text>",
            label_y = y + 15.0,
            setups_y = y + 29.0,
            bar_y = y + 8.0,
            mark_top = y + 4.0,
            mark_bottom = y + 32.0,
            value_y = y + 22.0,
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn escape_xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
