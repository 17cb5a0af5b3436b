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
//! 7. `cost-anatomy`: where a write transaction's time goes. One writer under
//!    `strace -ff -T -y`; its calls between two marker look-ups are summed by file (database,
//!    journal, lock latch, lock table, ...) and call, with the wall time inside them. On the
//!    local disk network mode vs `unix` DELETE; on the sshfs testbed the shim in auto mode vs
//!    `unix-dotfile`, plus a shorter second run that also traces the testbed's SFTP servers
//!    (their file syscalls are the file-server operations).
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

// The shared fixtures offer more than the bench uses.
#[allow(dead_code)]
#[path = "../tests/common/process.rs"]
mod process;
#[allow(dead_code)]
#[path = "../tests/common/testbed/mod.rs"]
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
/// `strace -ff -ttt -T -y`: one file per thread, each call with its start time, its duration
/// and the path behind every descriptor.
const STRACE_ARGS: [&str; 4] = ["-ff", "-ttt", "-T", "-y"];
const WINDOW_START: &str = "/.sqlite-netfs-bench-window-start";
const WINDOW_END: &str = "/.sqlite-netfs-bench-window-end";
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
        let mut flags = Flags(args.iter());
        while let Some(flag) = flags.next_flag() {
            match flag {
                "--full" => options.full = true,
                "--out" => options.out = PathBuf::from(flags.value(flag)?),
                "--work-dir" => options.work_dir = Some(PathBuf::from(flags.value(flag)?)),
                "--only" => {
                    let name = flags.value(flag)?;
                    if !SCENARIOS.iter().any(|(known, _)| *known == name) {
                        let known: Vec<&str> = SCENARIOS.iter().map(|(n, _)| *n).collect();
                        return Err(format!("unknown scenario {name}; known: {known:?}"));
                    }
                    options.only = Some(name.to_string());
                }
                "--seconds" => {
                    let seconds: f64 = flags.number(flag)?;
                    if seconds.is_nan() || seconds <= 0.0 {
                        return Err("--seconds must be positive".into());
                    }
                    options.seconds = Some(seconds);
                }
                "--rounds" => options.rounds = Some(flags.number::<u32>(flag)?.max(1)),
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

/// Command-line arguments, read as `--flag [value]`.
struct Flags<'a>(std::slice::Iter<'a, String>);

impl<'a> Flags<'a> {
    fn next_flag(&mut self) -> Option<&'a str> {
        self.0.next().map(String::as_str)
    }

    fn value(&mut self, flag: &str) -> Result<&'a str, String> {
        self.next_flag().ok_or(format!("{flag} needs a value"))
    }

    fn number<T: std::str::FromStr>(&mut self, flag: &str) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        self.value(flag)?
            .parse()
            .map_err(|e| format!("{flag}: {e}"))
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
    /// Write transactions traced per setup for the cost anatomy, on the local disk and on
    /// the sshfs testbed (where one takes tens of milliseconds).
    strace_transactions: u64,
    testbed_strace_transactions: u64,
    /// Write transactions traced with the file server (slowed much more by its tracing).
    server_strace_transactions: u64,
}

const QUICK: Profile = Profile {
    name: "quick",
    rows: 20_000,
    rounds: 3,
    local_seconds: 1.5,
    testbed_rounds: 1,
    sshfs_seconds: 5.0,
    smb_seconds: 6.0,
    strace_transactions: 100,
    testbed_strace_transactions: 60,
    server_strace_transactions: 20,
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
    testbed_strace_transactions: 400,
    server_strace_transactions: 100,
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

impl Setup {
    const fn new(
        label: &'static str,
        vfs: &'static str,
        uri_params: &'static str,
        journal: Option<&'static str>,
    ) -> Setup {
        Setup {
            label,
            vfs,
            uri_params,
            journal,
        }
    }
}

const NETFS_AUTO_WAL: Setup = Setup::new("netfs auto WAL", "netfs", "", Some("wal"));
const NETFS_AUTO: Setup = Setup::new("netfs auto", "netfs", "", None);
const NETFS_ON: Setup = Setup::new("netfs=on", "netfs", "netfs=on", None);
const UNIX_WAL: Setup = Setup::new("unix WAL", "unix", "", Some("wal"));
const UNIX_DELETE: Setup = Setup::new("unix DELETE", "unix", "", Some("delete"));
const UNIX_TRUNCATE: Setup = Setup::new("unix TRUNCATE", "unix", "", Some("truncate"));
const UNIX_DOTFILE: Setup = Setup::new("unix-dotfile", "unix-dotfile", "", None);

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
    /// Mark the start and end of the transactions for a tracer (see [`mark_window`]).
    mark_window: bool,
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
        if self.mark_window {
            args.push("--mark-window".to_string());
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
            mark_window: false,
        };
        let mut flags = Flags(args.iter());
        while let Some(flag) = flags.next_flag() {
            match flag {
                "--role" => spec.role = Role::parse(flags.value(flag)?)?,
                "--db" => spec.db = PathBuf::from(flags.value(flag)?),
                "--vfs" => spec.vfs = flags.value(flag)?.to_string(),
                "--uri-params" => spec.uri_params = flags.value(flag)?.to_string(),
                "--journal" => spec.journal = Some(flags.value(flag)?.to_string()),
                "--seed" => spec.seed = flags.number(flag)?,
                "--seconds" => {
                    spec.stop = Stop::After(Duration::from_secs_f64(flags.number(flag)?))
                }
                "--transactions" => spec.stop = Stop::Transactions(flags.number(flag)?),
                "--latency" => spec.record_latency = true,
                "--mark-window" => spec.mark_window = true,
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
                    mark_window(spec, WINDOW_START);
                    worker.run(spec, &mut tally);
                    mark_window(spec, WINDOW_END);
                }
                Err(e) => tally.error(&e),
            }
        }
    }
    tally.print();
}

/// Under `strace`, a look-up of a path that does not exist shows in the trace as one
/// `statx` naming `marker`: the calls between the two markers are the transactions'.
fn mark_window(spec: &WorkerSpec, marker: &str) {
    if spec.mark_window {
        let _ = fs::symlink_metadata(marker);
    }
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
    /// Run each worker under strace ([`STRACE_ARGS`]), writing `<this path>.<thread id>`.
    trace_prefix: Option<PathBuf>,
}

impl Job {
    fn new(setup: Setup, role: Role, processes: usize, dbs: Vec<PathBuf>) -> Job {
        Job {
            setup,
            role,
            processes,
            dbs,
            record_latency: false,
            trace_prefix: None,
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
            mark_window: self.trace_prefix.is_some(),
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
    trace_prefix: Option<&Path>,
    index: usize,
    events: Sender<WorkerEvent>,
) -> std::io::Result<RunningWorker> {
    let exe = std::env::current_exe()?;
    let mut cmd = match trace_prefix {
        Some(prefix) => {
            let mut cmd = Command::new(STRACE);
            cmd.args(STRACE_ARGS)
                .arg("-o")
                .arg(prefix)
                .arg("--")
                .arg(exe);
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
        let strace = job.trace_prefix.as_deref();
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

/// Calls per transaction and the wall time spent in them.
#[derive(Default, Clone, Copy)]
struct Cost {
    calls: f64,
    ms: f64,
}

impl Cost {
    fn add(self, other: Cost) -> Cost {
        Cost {
            calls: self.calls + other.calls,
            ms: self.ms + other.ms,
        }
    }
}

/// Per transaction, by (file, system call).
type Costs = BTreeMap<(String, String), Cost>;

/// The sum of the costs whose file passes `keep`.
fn total(costs: &Costs, keep: impl Fn(&str) -> bool) -> Cost {
    costs
        .iter()
        .filter(|((file, _), _)| keep(file))
        .fold(Cost::default(), |sum, (_, cost)| sum.add(*cost))
}

/// One writer's transactions under strace (see [`cost_anatomy`]).
struct AnatomyRecord {
    testbed: &'static str,
    label: &'static str,
    transactions: u64,
    /// Wall time per transaction between the window markers, slowed by tracing.
    wall_ms: f64,
    /// The writer's calls.
    client: Costs,
    /// Transactions of the run that traced the server.
    server_transactions: u64,
    /// The file server's calls, where it was traced.
    server: Option<Costs>,
}

impl AnatomyRecord {
    /// The calls of the thread that ran the transactions.
    fn transaction_thread(&self) -> Cost {
        total(&self.client, |file| !file.ends_with(OTHER_THREAD))
    }

    /// The server's calls on files but their `lseek`s: one per file operation it was asked
    /// for (OpenSSH's SFTP server seeks before each read and write).
    fn server_file_operations(&self) -> Option<Cost> {
        let server = self.server.as_ref()?;
        Some(
            server
                .iter()
                .filter(|((file, call), _)| file != CHANNEL && file != NO_FILE && call != "lseek")
                .fold(Cost::default(), |sum, (_, cost)| sum.add(*cost)),
        )
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
        self.push_reference(format!("BEGIN IMMEDIATE until OK, {who}"), sl, al, None);
        let [sf, af] = cells(&|r| {
            let commits: Vec<String> = r.commits_in_all.iter().map(u64::to_string).collect();
            match r.fairness {
                Some(f) => format!("{f:.2} ({} commits)", commits.join(" / ")),
                None => "no data".into(),
            }
        });
        let measurement = format!("commits per process, min/max, {who}");
        self.push_reference(measurement, sf, af, None);
        self.latency.extend([s, a]);
    }

    fn push_reference(
        &mut self,
        measurement: String,
        subject: Cell,
        alternative: Cell,
        ratio: Option<f64>,
    ) {
        self.rows.push(Row {
            scenario: self.scenario,
            measurement,
            subject,
            alternative,
            ratio,
            goal: None,
            verdict: Verdict::Reference,
        });
    }

    /// Rows for the cost anatomy of one filesystem: the calls of a write transaction and,
    /// where the server was traced, its file operations, subject beside alternative.
    fn anatomy(&mut self, records: Vec<AnatomyRecord>) {
        let [subject, alt] = &records[..] else {
            self.skipped("expected a subject and an alternative");
            return;
        };
        let row = |calls_of: &dyn Fn(&AnatomyRecord) -> Option<Cost>, what: &str| {
            let cell = |r: &AnatomyRecord| Cell {
                label: r.label.to_string(),
                value: calls_of(r).map_or("not traced".into(), |c| {
                    format!("{:.1} {what}, {:.2} ms in them", c.calls, c.ms)
                }),
            };
            let ratio = match (calls_of(subject), calls_of(alt)) {
                (Some(s), Some(a)) if a.calls > 0.0 => Some(s.calls / a.calls),
                _ => None,
            };
            (cell(subject), cell(alt), ratio)
        };
        let (s, a, ratio) = row(&|r| Some(r.transaction_thread()), "syscalls");
        let walls = format!(
            "; {:.2} / {:.2} ms per txn traced",
            subject.wall_ms, alt.wall_ms
        );
        let measurement = format!(
            "syscalls per write txn, 1 writer, {} ({} txns under strace{walls})",
            subject.testbed, subject.transactions
        );
        self.push_reference(measurement, s, a, ratio);
        if subject.server.is_some() || alt.server.is_some() {
            let (s, a, ratio) = row(&AnatomyRecord::server_file_operations, "file operations");
            let measurement = format!(
                "file-server operations per write txn, {} (the SFTP servers' file syscalls)",
                subject.testbed
            );
            self.push_reference(measurement, s, a, ratio);
        }
        self.anatomy.extend(records);
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

    /// A scratch directory for `scenario` with a copy of the template per setup, named as
    /// given; the directory goes when the returned handle is dropped.
    fn local_databases<const N: usize>(
        &self,
        scenario: &str,
        setups: [(&str, Setup); N],
    ) -> Result<(tempfile::TempDir, [PathBuf; N]), String> {
        let dir = self.scratch(scenario)?;
        let mut paths = Vec::with_capacity(N);
        for (name, setup) in setups {
            paths.push(self.database(dir.path(), name, setup)?);
        }
        let paths = <[PathBuf; N]>::try_from(paths).map_err(|_| "one database per setup")?;
        Ok((dir, paths))
    }

    /// A copy of the template in the testbed's server directory; its path through mount A
    /// ("host A") and through mount B.
    fn on_testbed(
        &self,
        testbed: &TwoHostTestbed,
        name: &str,
        setup: Setup,
    ) -> Result<[PathBuf; 2], String> {
        self.database(testbed.server_dir(), name, setup)?;
        Ok([testbed.mount_a(), testbed.mount_b()].map(|mount| mount.join(name)))
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
    let setups = [("shim.db", NETFS_AUTO_WAL), ("native.db", UNIX_WAL)];
    let (_dir, dbs) = ctx.local_databases("local-wal", setups)?;
    let mut series = Vec::new();
    for role in [Role::Write, Role::Read] {
        for ((_, setup), db) in setups.iter().zip(&dbs) {
            series.push(Series::new(*setup, role, 1, vec![db.clone()]));
        }
    }
    run_rounds(&mut series, ctx.profile.rounds, ctx.profile.local_seconds);
    for pair in series.chunks(2) {
        report.compare(pair[0].job.workload(), &pair[0], &pair[1], Some(0.98));
    }
    report.keep(series);
    Ok(())
}

/// 2. Local disk, network mode forced, against SQLite's rollback modes and dot-file locking.
fn local_network_mode(ctx: &Context, report: &mut Report) -> Result<(), String> {
    let setups = [
        ("0.db", NETFS_ON),
        ("1.db", UNIX_DELETE),
        ("2.db", UNIX_TRUNCATE),
        ("3.db", UNIX_DOTFILE),
    ];
    let (_dir, dbs) = ctx.local_databases("local-network-mode", setups)?;
    let mut series = Vec::new();
    for writers in [1, 4] {
        for ((_, setup), db) in setups.iter().zip(&dbs) {
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
    let setups = [("shim.db", NETFS_ON), ("dotfile.db", UNIX_DOTFILE)];
    let (_dir, dbs) = ctx.local_databases("reader-scaling", setups)?;
    let mut series = Vec::new();
    for ((_, setup), db) in setups.iter().zip(&dbs) {
        for readers in [1, 2] {
            series.push(Series::new(*setup, Role::Read, readers, vec![db.clone()]));
        }
    }
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
    let mut series = four_writers_over_both_mounts(ctx, &testbed)?;
    // One writer through mount A, on the same databases.
    let [shim, dotfile] = [0, 1].map(|i| series[i].job.dbs[0].clone());
    let [wal, _] = ctx.on_testbed(&testbed, "wal.db", UNIX_WAL)?;
    series.extend([
        Series::new(NETFS_AUTO, Role::Write, 1, vec![shim]),
        Series::new(UNIX_DOTFILE, Role::Write, 1, vec![dotfile]),
        Series::new(UNIX_WAL, Role::Write, 1, vec![wal]),
    ]);
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

/// The testbeds' common pair: four writers split over both mounts, the shim in auto mode,
/// then `unix-dotfile`, each on its own copy of the template (`shim.db`, `dotfile.db`).
fn four_writers_over_both_mounts(
    ctx: &Context,
    testbed: &TwoHostTestbed,
) -> Result<Vec<Series>, String> {
    let mut series = Vec::new();
    for (name, setup) in [("shim.db", NETFS_AUTO), ("dotfile.db", UNIX_DOTFILE)] {
        let both = ctx.on_testbed(testbed, name, setup)?;
        series.push(Series::new(setup, Role::Write, 4, both.to_vec()));
    }
    Ok(series)
}

/// Scenario 5, lock latency: four writers in network mode on a local disk. How long a
/// writer waits for the lock, and whether every process gets its share.
fn lock_latency(ctx: &Context, report: &mut Report) -> Result<(), String> {
    let setups = [("shim.db", NETFS_ON), ("delete.db", UNIX_DELETE)];
    let (_dir, dbs) = ctx.local_databases("lock-latency", setups)?;
    let mut series = Vec::new();
    for ((_, setup), db) in setups.into_iter().zip(dbs) {
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
    let mut series = four_writers_over_both_mounts(ctx, &testbed)?;
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

/// Scenario 7, where a write transaction's time goes: every system call of one writer under
/// strace, by file and by call, with the wall time spent in it. On the local disk network mode
/// beside `unix` DELETE; on the sshfs testbed the shim in auto mode beside `unix-dotfile`, with
/// the file server's side too: the SFTP servers' own system calls, one per file operation.
fn cost_anatomy(ctx: &Context, report: &mut Report) -> Result<(), String> {
    if !Path::new(STRACE).exists() {
        return Err(format!("{STRACE} not found (apt-get install strace)"));
    }
    let setups = [("shim.db", NETFS_ON), ("delete.db", UNIX_DELETE)];
    let (dir, dbs) = ctx.local_databases("cost-anatomy", setups)?;
    let local = Traced {
        testbed: "local disk",
        trace_dir: dir.path(),
        transactions: ctx.profile.strace_transactions,
        server_transactions: 0,
        server: None,
    };
    let mut records = Vec::new();
    for ((_, setup), db) in setups.into_iter().zip(&dbs) {
        records.push(local.run(setup, db)?);
    }
    report.anatomy(records);
    if let Err(reason) = sshfs_anatomy(ctx, dir.path(), report) {
        eprintln!("  sshfs: skipped: {reason}");
        report.skipped(&format!("on sshfs: {}", first_line(&reason)));
    }
    Ok(())
}

fn sshfs_anatomy(ctx: &Context, trace_dir: &Path, report: &mut Report) -> Result<(), String> {
    let testbed = TwoHostTestbed::sshfs()?;
    let serving = testbed.serving_processes();
    if serving.is_empty() {
        eprintln!("  sshfs: no SFTP server process found; the server side is not traced");
    }
    let sshfs = Traced {
        testbed: "sshfs",
        trace_dir,
        transactions: ctx.profile.testbed_strace_transactions,
        server_transactions: ctx.profile.server_strace_transactions,
        server: (!serving.is_empty()).then_some((serving.as_slice(), testbed.server_dir())),
    };
    let mut records = Vec::new();
    for (name, setup) in [("shim.db", NETFS_AUTO), ("dotfile.db", UNIX_DOTFILE)] {
        let [db, _] = ctx.on_testbed(&testbed, name, setup)?;
        records.push(sshfs.run(setup, &db)?);
    }
    report.anatomy(records);
    Ok(())
}

/// How the cost anatomy traces one writer on one filesystem.
struct Traced<'a> {
    testbed: &'static str,
    trace_dir: &'a Path,
    transactions: u64,
    /// Transactions of the second run, which traces the server too.
    server_transactions: u64,
    /// The file server's processes to trace beside the writer, and the directory they serve.
    server: Option<(&'a [u32], &'a Path)>,
}

impl Traced<'_> {
    /// Runs one writer of `setup` on `db` under strace and sums what the trace shows
    /// between the worker's window markers. Where there is a server to trace, a second,
    /// shorter run traces it too: every call of the server stops it for the tracer, which
    /// would inflate the writer's times in the first run.
    fn run(&self, setup: Setup, db: &Path) -> Result<AnatomyRecord, String> {
        let db_name = db
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| format!("{} has no file name", db.display()))?;
        let mut dirs: Vec<&Path> = db.parent().into_iter().collect();
        dirs.extend(self.server.map(|(_, dir)| dir));
        let files = FileKinds {
            db_name: db_name.clone(),
            dirs: &dirs,
        };
        let name = format!("{}-{db_name}", self.testbed.replace(' ', "-"));
        let writer = self.pass(setup, db, &name, self.transactions, None)?;
        let writer_window = Window::find(&writer.client)?;
        let server = match self.server {
            Some((pids, _)) => {
                let name = format!("{name}-server-pass");
                let pass = self.pass(setup, db, &name, self.server_transactions, Some(pids))?;
                let window = Window::find(&pass.client)?;
                pass.server.map(|threads| {
                    (
                        pass.commits,
                        window.costs(&threads, None, &files, pass.commits),
                    )
                })
            }
            None => None,
        };
        eprintln!("  {} on {}: strace done", setup.label, self.testbed);
        Ok(AnatomyRecord {
            testbed: self.testbed,
            label: setup.label,
            transactions: writer.commits,
            wall_ms: (writer_window.end - writer_window.start) * 1000.0 / writer.commits as f64,
            client: writer_window.costs(
                &writer.client,
                Some(writer_window.thread),
                &files,
                writer.commits,
            ),
            server_transactions: server.as_ref().map_or(0, |(n, _)| *n),
            server: server.map(|(_, costs)| costs),
        })
    }

    /// One traced run of `transactions` write transactions; the traces are read back.
    fn pass(
        &self,
        setup: Setup,
        db: &Path,
        name: &str,
        transactions: u64,
        server_pids: Option<&[u32]>,
    ) -> Result<TracedPass, String> {
        let prefix = |side: &str| self.trace_dir.join(format!("{name}.{side}"));
        let server_trace = match server_pids {
            Some(pids) => match ServerTrace::attach(pids, &prefix("server")) {
                Ok(trace) => Some(trace),
                Err(e) => {
                    eprintln!("  {}: the server side is not traced: {e}", setup.label);
                    None
                }
            },
            None => None,
        };
        let mut job = Job::new(setup, Role::Write, 1, vec![db.to_path_buf()]);
        job.trace_prefix = Some(prefix("client"));
        let outcome = measure(&job, Stop::Transactions(transactions), 0);
        let server = server_trace.map(ServerTrace::finish).transpose()?;
        if !outcome.errors.is_empty() {
            return Err(format!("worker under strace: {:?}", outcome.errors));
        }
        let commits: u64 = outcome.commits_per_process.iter().sum();
        if commits == 0 {
            return Err("no transaction committed under strace".into());
        }
        Ok(TracedPass {
            commits,
            client: read_traces(&prefix("client"))?,
            server,
        })
    }
}

/// What one traced run left: each thread's calls, the writer's and the server's.
struct TracedPass {
    commits: u64,
    client: Vec<Vec<TracedCall>>,
    server: Option<Vec<Vec<TracedCall>>>,
}

/// One system call from a line of `strace -ttt -T -y`.
struct TracedCall {
    /// When it started, in seconds since the epoch.
    at: f64,
    name: String,
    /// The file it worked on: a path argument or the path behind its first descriptor.
    path: Option<String>,
    seconds: f64,
}

impl TracedCall {
    /// `1712345678.123456 pwrite64(5</db/app.db>, "..."..., 4096, 0) = 4096 <0.000123>`;
    /// signals, exits and calls that never returned give `None`.
    fn parse(line: &str) -> Option<TracedCall> {
        let (at, call) = line.split_once(' ')?;
        let (name, args) = call.split_once('(')?;
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return None;
        }
        let (_, duration) = call.rsplit_once('<')?;
        Some(TracedCall {
            at: at.parse().ok()?,
            name: name.to_string(),
            path: first_path(args),
            seconds: duration.strip_suffix('>')?.parse().ok()?,
        })
    }
}

/// `3</db/app.db>, ...` gives the descriptor's path; otherwise the first string argument
/// (`AT_FDCWD, "/db/app.db-journal", ...`), which is a path for the calls that take one.
fn first_path(args: &str) -> Option<String> {
    let digits = args.len() - args.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    if let Some(rest) = args[digits..].strip_prefix('<').filter(|_| digits > 0) {
        return rest.split_once('>').map(|(path, _)| path.to_string());
    }
    let (_, quoted) = args.split_once('"')?;
    quoted.split_once('"').map(|(path, _)| path.to_string())
}

/// Every thread's calls from the files `<prefix>.<thread id>` that `strace -ff` wrote.
fn read_traces(prefix: &Path) -> Result<Vec<Vec<TracedCall>>, String> {
    let dir = prefix.parent().unwrap_or(Path::new("."));
    let stem = format!(
        "{}.",
        prefix.file_name().unwrap_or_default().to_string_lossy()
    );
    let entries = fs::read_dir(dir).map_err(|e| format!("read {}: {e}", dir.display()))?;
    let mut threads = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_thread = name
            .strip_prefix(&stem)
            .is_some_and(|tid| tid.parse::<u32>().is_ok());
        if is_thread {
            let text = fs::read_to_string(entry.path())
                .map_err(|e| format!("read {}: {e}", entry.path().display()))?;
            threads.push(text.lines().filter_map(TracedCall::parse).collect());
        }
    }
    if threads.is_empty() {
        return Err(format!("strace wrote no {}<thread id>", prefix.display()));
    }
    Ok(threads)
}

/// The stretch of a trace between the worker's window markers: its transactions.
struct Window {
    start: f64,
    end: f64,
    /// The thread that ran the transactions (the one that looked the markers up).
    thread: usize,
}

impl Window {
    fn find(threads: &[Vec<TracedCall>]) -> Result<Window, String> {
        for (thread, calls) in threads.iter().enumerate() {
            let at = |marker: &str| {
                calls
                    .iter()
                    .find(|c| c.path.as_deref() == Some(marker))
                    .map(|c| c.at)
            };
            if let (Some(start), Some(end)) = (at(WINDOW_START), at(WINDOW_END)) {
                return Ok(Window { start, end, thread });
            }
        }
        Err("the trace holds no transaction window (no marker look-ups)".into())
    }

    /// The calls that started inside the window, by file and call, per transaction. Calls
    /// of threads other than `main` (the lease heartbeat) are filed under "(other thread)",
    /// but for those on no file: its sleeps and waits are off the transactions' path. Time
    /// past the window's end is not counted.
    fn costs(
        &self,
        threads: &[Vec<TracedCall>],
        main: Option<usize>,
        files: &FileKinds,
        transactions: u64,
    ) -> Costs {
        let per = transactions as f64;
        let mut costs = Costs::new();
        for (thread, calls) in threads.iter().enumerate() {
            let inside = calls
                .iter()
                .filter(|c| c.at > self.start && c.at < self.end);
            for call in inside {
                let mut file = files.kind(call.path.as_deref()).to_string();
                if main.is_some_and(|main| main != thread) {
                    if file == NO_FILE {
                        continue;
                    }
                    file.push_str(OTHER_THREAD);
                }
                let seconds = call.seconds.min(self.end - call.at);
                let cost = costs.entry((file, call.name.clone())).or_default();
                cost.calls += 1.0 / per;
                cost.ms += seconds * 1000.0 / per;
            }
        }
        costs
    }
}

/// Names the file a traced call worked on, by its relation to one database.
struct FileKinds<'a> {
    db_name: String,
    /// The database's directory as each traced process sees it.
    dirs: &'a [&'a Path],
}

impl FileKinds<'_> {
    fn kind(&self, path: Option<&str>) -> &'static str {
        let Some(path) = path else {
            return NO_FILE;
        };
        if let Some((_, suffix)) = path.split_once(self.db_name.as_str()) {
            let suffix = suffix.trim_end_matches(" (deleted)");
            return [
                ("-journal", "journal"),
                ("-wal", "WAL"),
                ("-shm", "WAL index"),
                ("-netfs-latch", "lock latch"),
                ("-netfs-table", "lock table"),
                ("-netfs-break", "lock break"),
                (".lock", "dot-file lock"),
            ]
            .into_iter()
            .find(|(ending, _)| suffix.starts_with(ending))
            .map_or(
                if suffix.is_empty() {
                    "database"
                } else {
                    "other file"
                },
                |(_, kind)| kind,
            );
        }
        if self.dirs.iter().any(|dir| Path::new(path) == *dir) {
            "directory"
        } else if path.starts_with("pipe:") || path.starts_with("socket:") {
            CHANNEL
        } else {
            "other file"
        }
    }
}

/// Marks the calls of a thread other than the one running the transactions.
const OTHER_THREAD: &str = " (other thread)";
/// The kind of calls that name no file (memory, time, futexes).
const NO_FILE: &str = "(no file)";
/// Pipes and sockets: a worker's report to the bench, an SFTP server's requests and replies.
const CHANNEL: &str = "pipes and sockets";

/// strace attached to running processes (the file server's) for one traced run.
struct ServerTrace {
    strace: Child,
    prefix: PathBuf,
}

impl ServerTrace {
    fn attach(pids: &[u32], prefix: &Path) -> Result<ServerTrace, String> {
        let mut cmd = Command::new(STRACE);
        cmd.args(STRACE_ARGS).arg("-o").arg(prefix);
        for pid in pids {
            cmd.arg("-p").arg(pid.to_string());
        }
        let strace = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("start {STRACE}: {e}"))?;
        let mut trace = ServerTrace {
            strace,
            prefix: prefix.to_path_buf(),
        };
        // strace opens a process's output file when it has attached to it.
        let attached = |pid: &u32| PathBuf::from(format!("{}.{pid}", prefix.display())).exists();
        let give_up = Instant::now() + Duration::from_secs(10);
        while !pids.iter().all(attached) {
            if Instant::now() > give_up || trace.strace.try_wait().ok().flatten().is_some() {
                trace.stop();
                return Err(format!("strace could not attach to {pids:?}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(trace)
    }

    fn finish(mut self) -> Result<Vec<Vec<TracedCall>>, String> {
        self.stop();
        read_traces(&self.prefix)
    }

    /// SIGINT makes strace detach, leaving the server running, and write out its files.
    fn stop(&mut self) {
        if self.strace.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(self.strace.id().to_string())
            .status();
        let give_up = Instant::now() + Duration::from_secs(10);
        while self.strace.try_wait().ok().flatten().is_none() {
            if Instant::now() > give_up {
                let _ = self.strace.kill();
                let _ = self.strace.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ServerTrace {
    fn drop(&mut self) {
        self.stop();
    }
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

/// The cost anatomy of each filesystem: the writer's calls and, where traced, the file
/// server's, by file and call, subject beside alternative.
fn anatomy_markdown(records: &[AnatomyRecord]) -> String {
    let mut md = String::new();
    for pair in records.chunks(2) {
        let first = &pair[0];
        let _ = write!(
            md,
            "\n## Where a write transaction's time goes: {}\n\n\
             One writer, {} write transactions under `strace -ff -T -y`, per transaction: \
             calls, and milliseconds of wall time inside them (a call on a network \
             filesystem waits for its round trips to the server). Tracing slows every call; \
             the counts are exact, the times inflated alike for both sides.\n\n",
            first.testbed, first.transactions
        );
        let server_runs = pair
            .iter()
            .filter(|r| r.server.is_some())
            .map(|r| r.server_transactions)
            .max();
        costs_table(&mut md, "The writer's system calls", pair, |r| {
            Some(&r.client)
        });
        if let Some(transactions) = server_runs {
            let title = format!(
                "The file server's system calls, from a second run of {transactions} \
                 transactions that traced the SFTP servers too (each request served is one \
                 call on a file, a read or write one more `lseek`; \"pipes and sockets\" \
                 carry the requests and replies)"
            );
            costs_table(&mut md, &title, pair, |r| r.server.as_ref());
        }
    }
    md
}

/// A table of `costs` side by side: a bold subtotal per file, most time first, then its
/// calls; calls below 0.05 per transaction are left to the JSON.
fn costs_table(
    md: &mut String,
    title: &str,
    records: &[AnatomyRecord],
    costs: impl Fn(&AnatomyRecord) -> Option<&Costs>,
) {
    let _ = write!(md, "{title}:\n\n| file | call |");
    for record in records {
        let _ = write!(md, " {0} calls | {0} ms |", escape_md(record.label));
    }
    md.push_str("\n|---|---|");
    md.push_str(&"---:|---:|".repeat(records.len()));
    md.push('\n');
    let cell = |record: &AnatomyRecord, keep: &dyn Fn(&(String, String)) -> bool| {
        costs(record).map_or(Cost::default(), |c| {
            c.iter()
                .filter(|(key, _)| keep(key))
                .fold(Cost::default(), |sum, (_, cost)| sum.add(*cost))
        })
    };
    let row =
        |md: &mut String, file: &str, call: &str, keep: &dyn Fn(&(String, String)) -> bool| {
            let _ = write!(md, "| {file} | {call} |");
            for record in records {
                let c = cell(record, keep);
                let _ = write!(md, " {:.2} | {:.2} |", c.calls, c.ms);
            }
            md.push('\n');
        };
    let most = |keep: &dyn Fn(&(String, String)) -> bool| {
        records
            .iter()
            .map(|r| cell(r, keep))
            .fold(Cost::default(), |a, b| Cost {
                calls: a.calls.max(b.calls),
                ms: a.ms.max(b.ms),
            })
    };
    let keys: Vec<&(String, String)> = records
        .iter()
        .filter_map(&costs)
        .flat_map(|c| c.keys())
        .collect();
    let mut files: Vec<&str> = keys.iter().map(|(file, _)| file.as_str()).collect();
    files.sort_unstable();
    files.dedup();
    files.sort_by(|a, b| {
        let ms = |f: &str| most(&|(file, _)| file == f).ms;
        ms(b).total_cmp(&ms(a))
    });
    for file in files {
        row(md, &format!("**{file}**"), "all", &|(f, _)| f == file);
        let mut calls: Vec<&str> = keys
            .iter()
            .filter(|(f, _)| f == file)
            .map(|(_, call)| call.as_str())
            .collect();
        calls.sort_unstable();
        calls.dedup();
        let key = |call: &str| (file.to_string(), call.to_string());
        calls.retain(|call| most(&|k| *k == key(call)).calls >= 0.05);
        calls.sort_by(|a, b| {
            let ms = |call: &str| most(&|k| *k == key(call)).ms;
            ms(b).total_cmp(&ms(a))
        });
        for call in calls {
            row(md, "", call, &|k| *k == key(call));
        }
    }
    // Other threads run beside the transactions, not in their time.
    let own = |(file, _): &(String, String)| !file.ends_with(OTHER_THREAD);
    if keys.iter().all(|key| own(key)) {
        row(md, "**all**", "", &own);
    } else {
        row(md, "**all, transaction thread**", "", &own);
    }
    md.push('\n');
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
        "{{\"mode\": {}, \"rows\": {}, \"rounds\": {}, \"seconds\": {}, \"testbed_rounds\": {}, \"sshfs_seconds\": {}, \"smb_seconds\": {}, \"strace_transactions\": {}, \"testbed_strace_transactions\": {}, \"server_strace_transactions\": {}}}",
        json_str(p.name),
        p.rows,
        p.rounds,
        json_num(p.local_seconds),
        p.testbed_rounds,
        json_num(p.sshfs_seconds),
        json_num(p.smb_seconds),
        p.strace_transactions,
        p.testbed_strace_transactions,
        p.server_strace_transactions
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
        format!(
            "{{\"testbed\": {}, \"setup\": {}, \"transactions\": {}, \"wall_ms_per_transaction\": {}, \"client\": {}, \"server_transactions\": {}, \"server\": {}}}",
            json_str(a.testbed),
            json_str(a.label),
            a.transactions,
            json_num(a.wall_ms),
            costs_json(&a.client),
            a.server_transactions,
            a.server.as_ref().map_or("null".into(), costs_json)
        )
    }));
    format!(
        "{{\n\"command\": {},\n\"elapsed_seconds\": {},\n\"machine\": {machine},\n\"profile\": {profile},\n\"rows\": {rows},\n\"series\": {series},\n\"latency\": {latency},\n\"anatomy\": {anatomy}\n}}\n",
        json_str(&run.command),
        json_num(run.elapsed.as_secs_f64())
    )
}

/// Per transaction: `[{"file", "call", "calls", "ms"}, ...]`.
fn costs_json(costs: &Costs) -> String {
    json_list(costs.iter().map(|((file, call), cost)| {
        format!(
            "{{\"file\": {}, \"call\": {}, \"calls\": {}, \"ms\": {}}}",
            json_str(file),
            json_str(call),
            json_num(cost.calls),
            json_num(cost.ms)
        )
    }))
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
