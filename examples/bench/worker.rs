//! The worker process: one connection running one role until told to stop, tallying what it did.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sqlite_netfs::rusqlite::{self, Connection, ErrorCode, OptionalExtension, params};

use super::*;

/// What one worker process does, passed on its command line.
pub(crate) struct WorkerSpec {
    pub(crate) role: Role,
    pub(crate) db: PathBuf,
    pub(crate) vfs: String,
    pub(crate) uri_params: String,
    pub(crate) journal: Option<String>,
    pub(crate) stop: Stop,
    pub(crate) seed: u64,
    pub(crate) record_latency: bool,
    /// Mark the start and end of the transactions for a tracer (see [`mark_window`]).
    pub(crate) mark_window: bool,
}

impl WorkerSpec {
    pub(crate) fn to_args(&self) -> Vec<String> {
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
            Stop::Commits { each, within } => args.extend([
                "--commits".into(),
                each.to_string(),
                "--within".into(),
                within.as_secs_f64().to_string(),
            ]),
        }
        if self.record_latency {
            args.push("--latency".to_string());
        }
        if self.mark_window {
            args.push("--mark-window".to_string());
        }
        args
    }

    pub(crate) fn parse(args: &[String]) -> Result<WorkerSpec, String> {
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
                "--commits" => {
                    let within = match spec.stop {
                        Stop::Commits { within, .. } => within,
                        _ => Duration::ZERO,
                    };
                    spec.stop = Stop::Commits {
                        each: flags.number(flag)?,
                        within,
                    }
                }
                "--within" => {
                    let Stop::Commits { each, .. } = spec.stop else {
                        return Err("--within needs --commits before it".into());
                    };
                    spec.stop = Stop::Commits {
                        each,
                        within: Duration::from_secs_f64(flags.number(flag)?),
                    }
                }
                "--latency" => spec.record_latency = true,
                "--mark-window" => spec.mark_window = true,
                other => return Err(format!("unknown worker option {other}")),
            }
        }
        if let Stop::Commits { within, .. } = spec.stop
            && within.is_zero()
        {
            return Err("--commits needs a positive --within".into());
        }
        Ok(spec)
    }

    pub(crate) fn uri(&self) -> String {
        let mut uri = format!("file:{}?vfs={}", self.db.display(), self.vfs);
        if !self.uri_params.is_empty() {
            uri = format!("{uri}&{}", self.uri_params);
        }
        uri
    }
}

/// A worker's counts, printed on stdout at the end.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) commits: u64,
    pub(crate) busy: u64,
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) latencies_us: Vec<u64>,
    /// When a worker with a commit quota ([`Stop::Commits`]) met it, from the start.
    pub(crate) finished_after: Option<Duration>,
}

impl Tally {
    pub(crate) fn error(&mut self, message: &str) {
        let key: String = message
            .replace(['\n', '\r'], " ")
            .chars()
            .take(100)
            .collect();
        *self.errors.entry(key).or_default() += 1;
    }

    pub(crate) fn print(&self) {
        println!("COMMITS {}", self.commits);
        println!("BUSY {}", self.busy);
        for (message, count) in &self.errors {
            println!("ERROR {count} {message}");
        }
        if !self.latencies_us.is_empty() {
            let list: Vec<String> = self.latencies_us.iter().map(u64::to_string).collect();
            println!("LATENCY_US {}", list.join(","));
        }
        if let Some(after) = self.finished_after {
            println!("FINISHED_MS {:.3}", after.as_secs_f64() * 1000.0);
        }
        println!("DONE");
    }
}

pub(crate) fn run_worker(spec: &WorkerSpec) {
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
pub(crate) fn mark_window(spec: &WorkerSpec, marker: &str) {
    if spec.mark_window {
        let _ = fs::symlink_metadata(marker);
    }
}

/// Blocks until the parent sends `GO <start time in ns since the epoch>` on stdin.
pub(crate) fn wait_for_go() -> Result<SystemTime, String> {
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
pub(crate) struct WorkerConnection {
    pub(crate) conn: Connection,
    pub(crate) rng: Prng,
    pub(crate) sessions: u64,
    pub(crate) max_id: u64,
    /// When the current write first asked for BEGIN IMMEDIATE (kept across BUSY retries).
    pub(crate) waiting_since: Option<Instant>,
}

impl WorkerConnection {
    pub(crate) fn open(spec: &WorkerSpec) -> Result<WorkerConnection, String> {
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

    pub(crate) fn configure(conn: &Connection, spec: &WorkerSpec) -> rusqlite::Result<()> {
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
    pub(crate) fn describe_setup(&self) -> String {
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

    pub(crate) fn run(&mut self, spec: &WorkerSpec, tally: &mut Tally) {
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
            Stop::Commits { each, within } => {
                let started = Instant::now();
                let deadline = started + within;
                while tally.commits < each {
                    let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                        return;
                    };
                    if let Err(e) = self.conn.busy_timeout(left.min(BUSY_TIMEOUT)) {
                        tally.error(&e.to_string());
                    }
                    if self.attempt(spec, tally) {
                        tally.commits += 1;
                    }
                }
                tally.finished_after = Some(started.elapsed());
            }
        }
    }

    /// One transaction of the worker's role; true if it committed. BUSY and errors are
    /// counted and the transaction rolled back, for the caller to try again.
    pub(crate) fn attempt(&mut self, spec: &WorkerSpec, tally: &mut Tally) -> bool {
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
    pub(crate) fn write_transaction(&mut self) -> rusqlite::Result<Duration> {
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

    pub(crate) fn read_transaction(&mut self) -> rusqlite::Result<()> {
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

pub(crate) fn unix_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// SplitMix64: a deterministic, seeded source for payload sizes, bytes and row choices.
pub(crate) struct Prng(pub(crate) u64);

impl Prng {
    pub(crate) fn new(seed: u64) -> Prng {
        Prng(seed)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A message body of 200 B to 4 KB.
    pub(crate) fn payload(&mut self) -> Vec<u8> {
        let len = (PAYLOAD_MIN + self.below(PAYLOAD_MAX - PAYLOAD_MIN + 1)) as usize;
        let mut body = Vec::with_capacity(len + 8);
        while body.len() < len {
            body.extend_from_slice(&self.next().to_le_bytes());
        }
        body.truncate(len);
        body
    }
}
