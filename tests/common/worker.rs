//! Worker processes for the concurrency tests. A test binary re-executes itself running only
//! its ignored `worker_process` test, with the job in an environment variable, so workers are
//! real processes with their own SQLite state, file descriptors and kernel locks.
//!
//! Every test binary that spawns workers declares:
//! ```ignore
//! #[test]
//! #[ignore = "worker process entry point, spawned by the tests in this file"]
//! fn worker_process() { common::worker::run_from_env() }
//! ```

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlite_netfs::rusqlite::{self, Connection, ErrorCode, OpenFlags};

use super::vm::{GuestAgent, GuestProcess};

const JOB_ENV: &str = "SQLITE_NETFS_TEST_JOB";

/// A writer stops after this many failed transactions in a row, unless its job says otherwise.
pub const GIVE_UP_AFTER: u32 = 50;

/// What a worker process does. Encoded as `key=value` lines.
#[derive(Debug, Clone, Default)]
pub struct Job {
    /// `writer`, `reader`, or `wal-writer`.
    pub role: String,
    /// Database path as this worker sees it (through its mount).
    pub db: PathBuf,
    /// `netfs` (the shim), `unix` (native) or `unix-dotfile`.
    pub vfs: String,
    /// Extra URI parameters, e.g. `&netfs=on`.
    pub uri_params: String,
    /// `PRAGMA journal_mode` to ask for first (the shim in network mode answers `delete`),
    /// empty for SQLite's default.
    pub journal_mode: String,
    pub worker_id: u32,
    pub transactions: u32,
    /// Where the worker records acknowledged commits (one `seq` per line) or reader results.
    pub out: PathBuf,
    /// Reader: stop when this file exists.
    pub stop_file: PathBuf,
    pub busy_timeout_ms: u64,
    /// The payload of each row the writer inserts (fault roles read `Payload::largest`).
    pub payload: Payload,
    /// Writer: stop after this many failed transactions in a row (`None`:
    /// [`GIVE_UP_AFTER`]).
    pub give_up_after: Option<u32>,
}

/// How large each inserted row's payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// Every row the same size.
    Fixed(usize),
    /// Transaction `seq` writes `50 + seq * 97 % largest` random bytes: from part of one page
    /// to several, so commits spill over page boundaries and grow the file by varying amounts.
    Growing { largest: usize },
}

impl Default for Payload {
    fn default() -> Self {
        Payload::Fixed(0)
    }
}

impl Payload {
    /// The size of transaction `seq`'s payload.
    pub fn size_of(self, seq: u32) -> usize {
        match self {
            Payload::Fixed(n) => n,
            Payload::Growing { largest } => 50 + (seq as usize * 97) % largest.max(1),
        }
    }

    pub fn largest(self) -> usize {
        match self {
            Payload::Fixed(n) => n,
            Payload::Growing { largest } => 50 + largest.saturating_sub(1),
        }
    }

    fn encode(self) -> String {
        match self {
            Payload::Fixed(n) => format!("fixed:{n}"),
            Payload::Growing { largest } => format!("growing:{largest}"),
        }
    }

    fn decode(text: &str) -> Payload {
        match text.split_once(':') {
            Some(("fixed", n)) => Payload::Fixed(n.parse().expect("payload size")),
            Some(("growing", n)) => Payload::Growing {
                largest: n.parse().expect("payload size"),
            },
            _ => panic!("unknown payload {text}"),
        }
    }
}

impl Job {
    fn encode(&self) -> String {
        let give_up_after = match self.give_up_after {
            Some(n) => format!("give_up_after={n}\n"),
            None => String::new(),
        };
        format!(
            "role={}\ndb={}\nvfs={}\nuri_params={}\njournal_mode={}\nworker_id={}\ntransactions={}\nout={}\nstop_file={}\nbusy_timeout_ms={}\npayload={}\n{}",
            self.role,
            self.db.display(),
            self.vfs,
            self.uri_params,
            self.journal_mode,
            self.worker_id,
            self.transactions,
            self.out.display(),
            self.stop_file.display(),
            self.busy_timeout_ms,
            self.payload.encode(),
            give_up_after
        )
    }

    fn decode(text: &str) -> Job {
        let mut job = Job::default();
        for line in text.lines() {
            let (k, v) = line.split_once('=').expect("key=value");
            match k {
                "role" => job.role = v.into(),
                "db" => job.db = v.into(),
                "vfs" => job.vfs = v.into(),
                "uri_params" => job.uri_params = v.into(),
                "journal_mode" => job.journal_mode = v.into(),
                "worker_id" => job.worker_id = v.parse().unwrap(),
                "transactions" => job.transactions = v.parse().unwrap(),
                "out" => job.out = v.into(),
                "stop_file" => job.stop_file = v.into(),
                "busy_timeout_ms" => job.busy_timeout_ms = v.parse().unwrap(),
                "payload" => job.payload = Payload::decode(v),
                "give_up_after" => job.give_up_after = Some(v.parse().unwrap()),
                _ => panic!("unknown job key {k}"),
            }
        }
        job
    }

    /// The environment that hands this job to a worker process.
    pub fn env(&self) -> (&'static str, String) {
        (JOB_ENV, self.encode())
    }

    pub fn uri(&self) -> String {
        format!(
            "file:{}?vfs={}{}",
            self.db.display(),
            self.vfs,
            self.uri_params
        )
    }
}

/// The file beside a worker's log `out` with `suffix` added to its name (`<log>.phase`, ...).
pub fn beside(out: &Path, suffix: &str) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Opens the file beside `out` with `suffix` for appending, across a worker's incarnations.
pub fn append_beside(out: &Path, suffix: &str) -> std::fs::File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(beside(out, suffix))
        .unwrap_or_else(|e| panic!("open the worker's {suffix} file: {e}"))
}

/// Starts `job` in a new process (this test binary, running `worker_process` only).
pub fn spawn(job: &Job, extra_env: &[(&str, &str)]) -> Child {
    let exe = std::env::current_exe().expect("test binary path");
    let mut cmd = Command::new(exe);
    cmd.args([
        "--exact",
        "worker_process",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
        "-q",
    ])
    .env(JOB_ENV, job.encode())
    .stdin(Stdio::null())
    .stdout(Stdio::null());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn worker")
}

/// Where a worker process runs: on this machine, or in a QEMU guest (another kernel, with its
/// own filesystem client), or as another program on this machine (a worker in another
/// language, `tests/lang/`), which reads the same job and writes the same logs.
#[derive(Debug, Clone, Default)]
pub enum Place {
    #[default]
    Here,
    Guest(GuestAgent),
    Program(Program),
}

/// A worker program and its arguments; it finds its job in `SQLITE_NETFS_TEST_JOB`.
#[derive(Debug, Clone)]
pub struct Program {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Program {
    /// Starts the program on `job`; its standard error goes to `<log>.stderr`.
    fn spawn(&self, job: &Job, extra_env: &[(&str, &str)]) -> Child {
        let mut cmd = Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..])
            .env(JOB_ENV, job.encode())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(append_beside(&job.out, ".stderr"));
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        cmd.spawn()
            .unwrap_or_else(|e| panic!("spawn {:?}: {e}", self.argv))
    }
}

/// A running worker process, wherever it runs.
pub enum Running {
    Here(Child),
    Guest(GuestProcess),
}

impl Place {
    pub fn spawn(&self, job: &Job, extra_env: &[(&str, &str)]) -> Running {
        match self {
            Place::Here => Running::Here(spawn(job, extra_env)),
            Place::Guest(agent) => Running::Guest(agent.spawn_worker(job, extra_env)),
            Place::Program(program) => Running::Here(program.spawn(job, extra_env)),
        }
    }
}

impl Running {
    pub fn has_exited(&mut self) -> bool {
        match self {
            Running::Here(child) => child.try_wait().expect("wait").is_some(),
            Running::Guest(process) => process.try_wait().is_some(),
        }
    }

    /// SIGKILLs the process and waits until it is gone (reaped here; in a guest, until its
    /// agent saw it end): an unreaped process still exists for the liveness check.
    pub fn kill(&mut self) {
        match self {
            Running::Here(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Running::Guest(process) => {
                process.signal(libc::SIGKILL);
                let deadline = Instant::now() + Duration::from_secs(30);
                while process.try_wait().is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    pub fn signal(&self, signal: i32) {
        match self {
            Running::Here(child) => {
                // kill(1), not libc::kill: the tests have no unsafe code.
                let status = Command::new("kill")
                    .args([format!("-{signal}"), child.id().to_string()])
                    .status()
                    .expect("run kill(1)");
                assert!(status.success(), "kill -{signal} {}", child.id());
            }
            Running::Guest(process) => process.signal(signal),
        }
    }
}

/// The body of each binary's ignored `worker_process` test.
pub fn run_from_env() {
    let Ok(text) = std::env::var(JOB_ENV) else {
        return; // run by hand with --ignored: nothing to do
    };
    let job = Job::decode(&text);
    // First, on the process's only thread, before SQLite is initialised (see the SAFETY note).
    // A job without a log (the WAL writer) keeps none.
    if !job.out.as_os_str().is_empty() {
        log_sqlite_errors_beside(&job.out);
    }
    // Worker diagnostics go to `<log>.trace`, where they stay with the rest of the worker's
    // evidence: the shim's warnings and errors always (a rare failure in CI then carries its
    // reason), more with e.g. NETFS_TEST_TRACE=sqlite_netfs=trace.
    if !job.out.as_os_str().is_empty() {
        let filter =
            std::env::var("NETFS_TEST_TRACE").unwrap_or_else(|_| "sqlite_netfs=warn".to_owned());
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(append_beside(&job.out, ".trace")))
            .init();
    }
    match job.role.as_str() {
        "writer" => writer(&job),
        "reader" => reader(&job),
        "wal-writer" => wal_writer(&job),
        "probe" => probe(&job),
        fault if fault.starts_with("fault-") => super::faults::run_role(&job),
        other => panic!("unknown worker role {other}"),
    }
}

/// Opens the job's database with its busy timeout (the shim already registered).
pub fn open(job: &Job) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(job.uri(), OpenFlags::default())?;
    conn.busy_timeout(Duration::from_millis(job.busy_timeout_ms))?;
    Ok(conn)
}

fn connect(job: &Job) -> rusqlite::Result<Connection> {
    sqlite_netfs::register().expect("register");
    let conn = open(job)?;
    if !job.journal_mode.is_empty() {
        conn.query_row(
            &format!("PRAGMA journal_mode={}", job.journal_mode),
            [],
            |_| Ok(()),
        )?;
    }
    Ok(conn)
}

/// A short name for an error, for the tallies.
pub fn error_kind(e: &rusqlite::Error) -> String {
    match e.sqlite_error() {
        Some(s) => format!("{:?}({})", s.code, s.extended_code),
        None => format!("{e}"),
    }
}

pub fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked)
    )
}

/// Opens the database, reads it once, and writes what happened to `out`: `mode=network` or
/// `mode=native` and the row count, or `error=` and the error's whole message. The probe of
/// a process on another host (a guest), where the test cannot open a connection itself.
fn probe(job: &Job) {
    let outcome = connect(job).and_then(|conn| {
        let rows: i64 = conn.query_row("SELECT count(*) FROM rows", [], |r| r.get(0))?;
        let mode = if sqlite_netfs::network_mode_active(&conn) {
            "network"
        } else {
            "native"
        };
        Ok(format!("mode={mode} rows={rows}\n"))
    });
    let text = outcome.unwrap_or_else(|e| format!("error={e}\n"));
    std::fs::write(&job.out, text).expect("probe result");
}

/// Runs `transactions` write transactions on one long-lived connection. BUSY is retried;
/// any other error is tallied and the transaction retried (up to a bound). Each commit that
/// returned OK is appended to the acknowledgement log, and a summary closes the log.
fn writer(job: &Job) {
    let mut ack = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&job.out)
        .expect("ack log");
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut busy = 0u64;
    let conn = match connect(job) {
        Ok(c) => c,
        Err(e) => {
            writeln!(ack, "# open-error {}", error_kind(&e)).unwrap();
            return;
        }
    };
    let give_up_after = job.give_up_after.unwrap_or(GIVE_UP_AFTER);
    let mut failures_in_a_row = 0;
    let mut seq = 0;
    while seq < job.transactions && failures_in_a_row < give_up_after {
        let result = (|| -> rusqlite::Result<()> {
            conn.execute_batch("BEGIN IMMEDIATE")?;
            let body = (|| {
                conn.execute("UPDATE counter SET v = v + 1 WHERE id = 1", [])?;
                conn.execute(
                    "INSERT INTO rows(worker, seq, payload) VALUES (?1, ?2, randomblob(?3))",
                    rusqlite::params![job.worker_id, seq, job.payload.size_of(seq) as i64],
                )?;
                conn.execute_batch("COMMIT")
            })();
            if body.is_err() && !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            body
        })();
        match result {
            Ok(()) => {
                writeln!(ack, "{seq}").unwrap();
                seq += 1;
                failures_in_a_row = 0;
            }
            Err(e) if is_busy(&e) => busy += 1,
            Err(e) => {
                *errors.entry(error_kind(&e)).or_default() += 1;
                failures_in_a_row += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    let errs: Vec<String> = errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
    writeln!(ack, "# done busy={busy} errors={}", errs.join(",")).unwrap();
}

/// Read transactions until the stop file appears; each checks that the counter equals the
/// number of rows (a torn read would see one without the other).
fn reader(job: &Job) {
    let mut out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&job.out)
        .expect("reader log");
    let conn = match connect(job) {
        Ok(c) => c,
        Err(e) => {
            writeln!(out, "# open-error {}", error_kind(&e)).unwrap();
            return;
        }
    };
    let (mut checks, mut torn, mut busy) = (0u64, 0u64, 0u64);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let started = Instant::now();
    while !job.stop_file.exists() && started.elapsed() < Duration::from_secs(600) {
        let result = (|| -> rusqlite::Result<(i64, i64)> {
            conn.execute_batch("BEGIN")?;
            let read = (|| {
                let v: i64 =
                    conn.query_row("SELECT v FROM counter WHERE id = 1", [], |r| r.get(0))?;
                let n: i64 = conn.query_row("SELECT count(*) FROM rows", [], |r| r.get(0))?;
                Ok((v, n))
            })();
            let _ = conn.execute_batch("COMMIT");
            read
        })();
        match result {
            Ok((v, n)) => {
                checks += 1;
                if v != n {
                    torn += 1;
                }
            }
            Err(e) if is_busy(&e) => busy += 1,
            Err(e) => *errors.entry(error_kind(&e)).or_default() += 1,
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let errs: Vec<String> = errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
    writeln!(
        out,
        "# reader checks={checks} torn={torn} busy={busy} errors={}",
        errs.join(",")
    )
    .unwrap();
}

/// Writes rows in WAL mode through the native VFS and exits without closing, as a crash
/// would: the rows stay in the `-wal`, un-checkpointed.
fn wal_writer(job: &Job) {
    let conn = Connection::open_with_flags_and_vfs(&job.db, OpenFlags::default(), c"unix").unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; CREATE TABLE IF NOT EXISTS t(x);",
    )
    .unwrap();
    for i in 0..job.transactions {
        conn.execute("INSERT INTO t VALUES (?1)", [i]).unwrap();
    }
    std::process::exit(0);
}

/// The file SQLite's error log goes to in this worker process.
static SQLITE_LOG: std::sync::OnceLock<std::sync::Mutex<File>> = std::sync::OnceLock::new();

/// Appends SQLite's error log (`sqlite3_log`: each failed statement with its SQL, and for
/// "malformed" the line of SQLite's source that found the damage) to `<log>.sqlite-log`,
/// except for BUSY and LOCKED, which are the normal course of waiting. Every worker keeps
/// one, so any error a test reports comes with SQLite's own account of it.
fn log_sqlite_errors_beside(out: &Path) {
    let file = append_beside(out, ".sqlite-log");
    if SQLITE_LOG.set(std::sync::Mutex::new(file)).is_err() {
        return;
    }
    fn record(code: std::ffi::c_int, message: &str) {
        if matches!(code & 0xff, 5 | 6) {
            return;
        }
        if let Some(file) = SQLITE_LOG.get() {
            let line = format!("at={} code={code} {message}\n", super::faults::unix_ms());
            let _ = file.lock().map(|mut f| f.write_all(line.as_bytes()));
        }
    }
    // SAFETY: sqlite3_config may only be called before SQLite is initialised and while no
    // other thread uses SQLite. This runs first thing in a fresh worker process, on its only
    // thread, before it registers the shim or opens a connection.
    unsafe { rusqlite::trace::config_log(Some(record)) }.expect("install SQLite's error log");
}

/// Creates the tables of the stress workload's writers and readers.
pub fn create_stress_schema(db: &Path) {
    create_schema_natively(
        db,
        "CREATE TABLE IF NOT EXISTS counter(id INTEGER PRIMARY KEY, v INTEGER NOT NULL);
         INSERT OR IGNORE INTO counter VALUES (1, 0);
         CREATE TABLE IF NOT EXISTS rows(id INTEGER PRIMARY KEY, worker INTEGER, seq INTEGER, payload BLOB);
         CREATE INDEX IF NOT EXISTS rows_by_worker ON rows(worker, seq);",
    );
}

/// Runs `schema` on `db` through SQLite's own `unix` VFS, before any worker opens it.
pub fn create_schema_natively(db: &Path, schema: &str) {
    let conn = Connection::open_with_flags_and_vfs(db, OpenFlags::default(), c"unix").unwrap();
    conn.execute_batch(schema).unwrap();
}
