//! The concurrency workload of the acceptance tests: writer processes split across mounts
//! ("hosts"), a reader checking every read transaction, then a verification of the file
//! against what every writer was told had committed.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sqlite_netfs::rusqlite::{Connection, OpenFlags};

use super::worker::{self, Job, Payload, Place, Running};

#[derive(Debug, Clone)]
pub struct StressPlan {
    pub label: String,
    /// The shared directory as each "host" sees it; writer `i` uses `mounts[i % len]`.
    pub mounts: Vec<PathBuf>,
    /// Where each mount's workers run, parallel to `mounts` (empty: all on this machine).
    pub places: Vec<Place>,
    /// How long after the run's start each place's workers start, parallel to `places`
    /// (empty: all at once).
    pub start_after: Vec<Duration>,
    /// Where the workers' logs go: a directory every place sees at the same path (the system
    /// temp dir when `None`).
    pub log_root: Option<PathBuf>,
    /// The same directory on the server, for the verification after the run.
    pub server_dir: PathBuf,
    pub vfs: String,
    pub uri_params: String,
    pub journal_mode: String,
    pub writers: usize,
    pub transactions: u32,
    pub readers: usize,
    pub busy_timeout_ms: u64,
    pub payload: Payload,
    /// A writer stops after this many failed transactions in a row (`None`:
    /// `worker::GIVE_UP_AFTER`).
    pub give_up_after: Option<u32>,
    /// Give up on a worker after this long (it is killed and counted).
    pub deadline: Duration,
}

impl StressPlan {
    pub fn new(label: &str, mounts: Vec<PathBuf>, server_dir: PathBuf, vfs: &str) -> Self {
        StressPlan {
            label: label.into(),
            mounts,
            places: Vec::new(),
            start_after: Vec::new(),
            log_root: None,
            server_dir,
            vfs: vfs.into(),
            uri_params: String::new(),
            journal_mode: String::new(),
            writers: 4,
            transactions: 300,
            readers: 1,
            busy_timeout_ms: 30_000,
            payload: Payload::Growing { largest: 3000 },
            give_up_after: None,
            deadline: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct StressReport {
    pub label: String,
    pub acknowledged: u64,
    pub rows: Option<i64>,
    pub counter: Option<i64>,
    pub integrity: String,
    /// Acknowledged commits whose row is not in the file.
    pub lost: u64,
    pub errors: BTreeMap<String, u64>,
    pub busy_retries: u64,
    pub reader_checks: u64,
    pub reader_torn: u64,
    pub killed_workers: u64,
    /// Workers whose trace says another process judged them dead (they stalled for a lease).
    pub judged_dead: u64,
    /// Workers that met `SQLITE_IOERR_LOCK` without being judged dead.
    pub unexplained_lock_errors: u64,
    pub wall: Duration,
}

impl StressReport {
    /// Everything a user could ask of a database: intact, nothing lost, nothing torn, no
    /// error but BUSY.
    pub fn correct(&self) -> bool {
        self.intact() && self.errors.is_empty()
    }

    /// Intact, nothing lost, nothing torn, every worker ended: all of `correct` but errors.
    fn intact(&self) -> bool {
        self.integrity == "ok"
            && self.lost == 0
            && self.rows == Some(self.acknowledged as i64)
            && self.counter == Some(self.acknowledged as i64)
            && self.reader_torn == 0
            && self.killed_workers == 0
    }

    /// As [`correct`](Self::correct), except that holders stalled for a whole lease may have
    /// been judged dead and told so: every error is `SQLITE_IOERR_LOCK` (3850), met only by
    /// workers whose own trace says they were judged dead.
    pub fn correct_but_for_stalled_holders(&self) -> bool {
        let only_lock_errors = self
            .errors
            .keys()
            .all(|k| k.trim_start_matches("reader:") == LOCK_ERROR);
        self.intact() && only_lock_errors && self.unexplained_lock_errors == 0
    }

    fn verdict(&self) -> String {
        if self.correct() {
            "CORRECT".into()
        } else if self.correct_but_for_stalled_holders() {
            format!("CORRECT BUT FOR {} HOLDERS JUDGED DEAD", self.judged_dead)
        } else {
            "BROKEN".into()
        }
    }

    pub fn summary(&self) -> String {
        let tps = self.acknowledged as f64 / self.wall.as_secs_f64().max(1e-9);
        format!(
            "{}: acknowledged={} rows={:?} counter={:?} lost={} integrity={:?} errors={:?} busy_retries={} reader_checks={} torn={} killed={} judged_dead={} unexplained_lock_errors={} wall={:.1}s ({:.0} txn/s) => {}",
            self.label,
            self.acknowledged,
            self.rows,
            self.counter,
            self.lost,
            self.integrity,
            self.errors,
            self.busy_retries,
            self.reader_checks,
            self.reader_torn,
            self.killed_workers,
            self.judged_dead,
            self.unexplained_lock_errors,
            self.wall.as_secs_f64(),
            tps,
            self.verdict()
        )
    }
}

fn wait_or_kill(child: &mut Running, deadline: Instant) -> bool {
    loop {
        if child.has_exited() {
            return true;
        }
        if Instant::now() > deadline {
            child.kill();
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tally(into: &mut BTreeMap<String, u64>, list: &str) {
    for item in list.split(',').filter(|s| !s.is_empty()) {
        let (k, v) = item.rsplit_once('=').unwrap_or((item, "1"));
        *into.entry(k.to_owned()).or_default() += v.parse::<u64>().unwrap_or(1);
    }
}

/// Runs the plan on a database named after its label and verifies the result. The database is
/// created on the server side.
pub fn run(plan: &StressPlan, extra_env: &[(&str, &str)]) -> StressReport {
    let db_name = format!(
        "{}.db",
        plan.label.replace(|c: char| !c.is_alphanumeric(), "-")
    );
    run_on(plan, &db_name, extra_env)
}

/// Runs the plan on the database `db_name` in the shared directory (created if missing; rows
/// already in it must not come from the plan's writers) and verifies the result.
pub fn run_on(plan: &StressPlan, db_name: &str, extra_env: &[(&str, &str)]) -> StressReport {
    let logs = log_dir(plan.log_root.as_deref());
    let server_db = plan.server_dir.join(db_name);
    worker::create_stress_schema(&server_db);
    let job_for = |role: &str, i: usize, out: PathBuf| Job {
        role: role.into(),
        db: plan.mounts[i % plan.mounts.len()].join(db_name),
        vfs: plan.vfs.clone(),
        uri_params: plan.uri_params.clone(),
        journal_mode: plan.journal_mode.clone(),
        worker_id: i as u32,
        transactions: plan.transactions,
        out,
        stop_file: logs.path().join("stop"),
        busy_timeout_ms: plan.busy_timeout_ms,
        payload: plan.payload,
        give_up_after: plan.give_up_after,
    };
    let place = |i: usize| match plan.places.len() {
        0 => (Place::Here, Duration::ZERO),
        n => (
            plan.places[i % n].clone(),
            plan.start_after.get(i % n).copied().unwrap_or_default(),
        ),
    };
    // (start after, is a reader, index), started in that order.
    let mut starts: Vec<(Duration, bool, usize)> = (0..plan.readers)
        .map(|i| (place(i + 1).1, true, i))
        .chain((0..plan.writers).map(|i| (place(i).1, false, i)))
        .collect();
    starts.sort();
    let started = Instant::now();
    let deadline = started + plan.deadline;
    let (mut readers, mut writers) = (Vec::new(), Vec::new());
    for (after, is_reader, i) in starts {
        std::thread::sleep((started + after).saturating_duration_since(Instant::now()));
        if is_reader {
            let job = job_for("reader", i + 1, logs.path().join(format!("reader-{i}")));
            readers.push(place(i + 1).0.spawn(&job, extra_env));
        } else {
            let job = job_for("writer", i, logs.path().join(format!("ack-{i}")));
            writers.push(place(i).0.spawn(&job, extra_env));
        }
    }
    let mut report = StressReport {
        label: plan.label.clone(),
        ..Default::default()
    };
    for w in &mut writers {
        if !wait_or_kill(w, deadline) {
            report.killed_workers += 1;
        }
    }
    report.wall = started.elapsed();
    std::fs::write(logs.path().join("stop"), b"").unwrap();
    for r in &mut readers {
        if !wait_or_kill(r, Instant::now() + Duration::from_secs(60)) {
            report.killed_workers += 1;
        }
    }

    let mut acked: HashSet<(i64, i64)> = HashSet::new();
    for i in 0..plan.writers {
        let name = format!("ack-{i}");
        let log = std::fs::read_to_string(logs.path().join(&name)).unwrap_or_default();
        attribute_lock_errors(&mut report, logs.path(), &name, &log);
        for line in log.lines() {
            if let Some(summary) = line.strip_prefix("# done ") {
                for field in summary.split(' ') {
                    if let Some(b) = field.strip_prefix("busy=") {
                        report.busy_retries += b.parse::<u64>().unwrap_or(0);
                    } else if let Some(list) = field.strip_prefix("errors=") {
                        tally(&mut report.errors, list);
                    }
                }
            } else if let Some(e) = line.strip_prefix("# open-error ") {
                tally(&mut report.errors, &format!("open:{e}"));
            } else if let Ok(seq) = line.parse::<i64>() {
                acked.insert((i as i64, seq));
            }
        }
    }
    report.acknowledged = acked.len() as u64;
    for i in 0..plan.readers {
        let name = format!("reader-{i}");
        let log = std::fs::read_to_string(logs.path().join(&name)).unwrap_or_default();
        attribute_lock_errors(&mut report, logs.path(), &name, &log);
        for line in log.lines() {
            if let Some(summary) = line.strip_prefix("# reader ") {
                for field in summary.split(' ') {
                    if let Some(v) = field.strip_prefix("checks=") {
                        report.reader_checks += v.parse::<u64>().unwrap_or(0);
                    } else if let Some(v) = field.strip_prefix("torn=") {
                        report.reader_torn += v.parse::<u64>().unwrap_or(0);
                    } else if let Some(list) = field.strip_prefix("errors=") {
                        tally(
                            &mut report.errors,
                            &list
                                .split(',')
                                .filter(|s| !s.is_empty())
                                .map(|s| format!("reader:{s}"))
                                .collect::<Vec<_>>()
                                .join(","),
                        );
                    }
                }
            } else if let Some(e) = line.strip_prefix("# open-error ") {
                tally(&mut report.errors, &format!("reader-open:{e}"));
            }
        }
    }
    verify(&server_db, &acked, &mut report);
    eprintln!("FIGURES {}", report.summary());
    if !report.correct() || evidence_wanted() {
        let kept = keep_evidence(logs, plan.log_root.as_deref());
        eprintln!(
            "{}: evidence kept in {} (acknowledgement and reader logs, SQLite's error log per worker, the shim's trace per worker: warnings always, more with NETFS_TEST_TRACE)",
            report.label,
            kept.display()
        );
    }
    report
}

/// What a worker's trace says when another process removed its lock as stale
/// (`lock::LockError::LeaseLost`).
const JUDGED_DEAD: &str = "another process judged this one dead";

/// `SQLITE_IOERR_LOCK` as the workers write it in their logs.
const LOCK_ERROR: &str = "SystemIoFailure(3850)";

/// Counts worker `name` as judged dead if its trace says so, and its `SQLITE_IOERR_LOCK`
/// (in `log`) as unexplained if it was not.
fn attribute_lock_errors(report: &mut StressReport, dir: &Path, name: &str, log: &str) {
    let trace = std::fs::read_to_string(dir.join(format!("{name}.trace"))).unwrap_or_default();
    let judged_dead = trace.contains(JUDGED_DEAD);
    report.judged_dead += u64::from(judged_dead);
    if log.contains(LOCK_ERROR) && !judged_dead {
        report.unexplained_lock_errors += 1;
    }
}

/// A directory for one run's worker logs, in `root` (a directory every place sees at one
/// path) or the system temp dir.
pub fn log_dir(root: Option<&Path>) -> tempfile::TempDir {
    match root {
        Some(root) => tempfile::tempdir_in(root),
        None => tempfile::tempdir(),
    }
    .expect("log dir")
}

/// Keeps a failed run's logs and returns where: copied out of `root`, which (a VM testbed's
/// control directory) goes with its testbed.
///
/// The shim's warnings and errors in the workers' traces are printed too: on CI the kept
/// directory is gone with the machine, and the log is all that tells why a run failed.
pub fn keep_evidence(logs: tempfile::TempDir, root: Option<&Path>) -> PathBuf {
    let kept = logs.keep();
    print_trace_warnings(&kept);
    if root.is_none() {
        return kept;
    }
    let outside = std::env::temp_dir().join(kept.file_name().unwrap());
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(&kept)
        .arg(&outside)
        .status();
    if copied.is_ok_and(|s| s.success()) {
        outside
    } else {
        kept
    }
}

/// Set to keep every run's evidence, correct or not (to look at a passing run's traces).
pub const KEEP_EVIDENCE_ENV: &str = "NETFS_TEST_KEEP_EVIDENCE";

pub fn evidence_wanted() -> bool {
    std::env::var_os(KEEP_EVIDENCE_ENV).is_some()
}

/// Prints each worker trace's warning and error lines (the first few of each file).
fn print_trace_warnings(dir: &Path) {
    const PER_FILE: usize = 12;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut traces: Vec<PathBuf> = entries
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "trace"))
        .collect();
    traces.sort();
    for trace in traces {
        let Ok(text) = std::fs::read_to_string(&trace) else {
            continue;
        };
        let flagged: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .collect();
        if flagged.is_empty() {
            continue;
        }
        let name = trace.file_name().unwrap_or_default().to_string_lossy();
        eprintln!("{name}: {} warnings and errors, the first:", flagged.len());
        for line in flagged.iter().take(PER_FILE) {
            eprintln!("  {line}");
        }
    }
}

fn verify(server_db: &Path, acked: &HashSet<(i64, i64)>, report: &mut StressReport) {
    let conn = match Connection::open_with_flags_and_vfs(
        server_db,
        OpenFlags::SQLITE_OPEN_READ_WRITE,
        c"unix",
    ) {
        Ok(c) => c,
        Err(e) => {
            report.integrity = format!("cannot open: {e}");
            report.lost = acked.len() as u64;
            return;
        }
    };
    report.integrity = match conn.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0))
    {
        Ok(s) => s,
        Err(e) => format!("{e}"),
    };
    report.counter = conn
        .query_row("SELECT v FROM counter WHERE id = 1", [], |r| r.get(0))
        .ok();
    report.rows = conn
        .query_row("SELECT count(*) FROM rows", [], |r| r.get(0))
        .ok();
    let present: HashSet<(i64, i64)> = conn
        .prepare("SELECT worker, seq FROM rows")
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<HashSet<_>, _>>()
        })
        .unwrap_or_default();
    report.lost = acked.difference(&present).count() as u64;
}

/// The acceptance workload on a two-host testbed: 4 writers split over both mounts, 300
/// transactions each, one reader.
pub fn two_host_plan(
    testbed: &super::testbed::TwoHostTestbed,
    label: &str,
    vfs: &str,
) -> StressPlan {
    StressPlan::new(
        &format!("{}-{label}", testbed.kind()),
        vec![testbed.mount_a().to_owned(), testbed.mount_b().to_owned()],
        testbed.server_dir().to_owned(),
        vfs,
    )
}

/// The negative control: the same workload through a VFS that is expected to break on this
/// testbed. Runs up to `attempts` times and returns the first broken report (or the last one).
pub fn expect_broken(mut plan: StressPlan, attempts: usize) -> StressReport {
    let base = plan.label.clone();
    let mut last = StressReport::default();
    for attempt in 1..=attempts {
        plan.label = format!("{base}-try{attempt}");
        last = run(&plan, &[]);
        if !last.correct() {
            break;
        }
    }
    last
}
