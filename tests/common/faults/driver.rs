//! The driver side of the fault harness: where the database lives, the workers' slots, one
//! run, and the verification and report every fault test ends with.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sqlite_netfs::rusqlite::{self, Connection, OpenFlags};

use crate::common::stress::{evidence_wanted, keep_evidence, log_dir};
use crate::common::worker::{Job, Payload, Place, Running};

use super::*;

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
        } else if let Some(rest) = line.strip_prefix("# reader-progress checks=") {
            s.reader_checks += rest.parse::<u64>().unwrap_or(0);
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
    pub fn on(testbed: &crate::common::testbed::TwoHostTestbed, name: &str) -> DbPlace {
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
    /// Writers found making no progress after a fault, so far.
    pub stalled_writers: u64,
}

impl FaultRun {
    /// Creates the schema and starts the plan's writers and readers.
    pub fn start(plan: &FaultPlan) -> FaultRun {
        create_fault_schema(&plan.server_db());
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
            stalled_writers: 0,
        }
    }

    /// Records what the driver did, beside the workers' logs.
    pub(super) fn event(&self, what: &str) {
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
            stalled_writers: self.stalled_writers,
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
        if !report.correct() || told_damaged || evidence_wanted() {
            let _ = std::fs::copy(
                &server_db,
                self.logs.path().join("database-after-verification"),
            );
            let kept = keep_evidence(self.logs, self.plan.log_root.as_deref());
            eprintln!(
                "{}: evidence kept in {} (worker logs with timestamped errors, SQLite's error log, the shim's traces: warnings always, more with NETFS_TEST_TRACE; driver events; the journal as left; the database)",
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
    /// What the fault suite promises after any number of kills: [`Self::safe`], and every
    /// worker kept going.
    pub fn correct(&self) -> bool {
        self.safe() && self.stuck_workers == 0 && self.stalled_writers == 0
    }

    /// Nothing acknowledged lost, nothing torn, the file intact. A worker killed at the end for
    /// being stuck is a kill like the others: its last transaction may be in the file.
    pub fn safe(&self) -> bool {
        let v = &self.verification;
        v.integrity == "ok"
            && v.lost == 0
            && v.partial == 0
            && v.unacked_present <= self.kills + self.stuck_workers + self.unknown_outcomes
            && v.counter.is_some()
            && v.counter == v.rows
            && self.torn_reads == 0
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
