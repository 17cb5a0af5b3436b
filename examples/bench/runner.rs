//! Running workers from the parent: spawning them, starting them together, collecting their reports.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::*;

/// A measurement's workers: the setup, their role and count, and the database path(s) they
/// open (worker `i` opens `dbs[i % len]`, which is how writers are split over two mounts).
#[derive(Clone)]
pub(crate) struct Job {
    pub(crate) setup: Setup,
    pub(crate) role: Role,
    pub(crate) processes: usize,
    pub(crate) dbs: Vec<PathBuf>,
    pub(crate) record_latency: bool,
    /// Run each worker under strace ([`STRACE_ARGS`]), writing `<this path>.<thread id>`.
    pub(crate) trace_prefix: Option<PathBuf>,
    /// Each worker commits this many instead of running for the round's window, and has at
    /// most this long ([`Stop::Commits`]).
    pub(crate) until_commits: Option<(u64, Duration)>,
}

impl Job {
    pub(crate) fn new(setup: Setup, role: Role, processes: usize, dbs: Vec<PathBuf>) -> Job {
        Job {
            setup,
            role,
            processes,
            dbs,
            record_latency: false,
            trace_prefix: None,
            until_commits: None,
        }
    }

    /// The job with a commit quota per worker instead of a window.
    pub(crate) fn until_commits(mut self, each: u64, within: Duration) -> Job {
        self.until_commits = Some((each, within));
        self
    }

    /// How a worker of this job stops in a round whose window is `window`.
    pub(crate) fn stop(&self, window: Duration) -> Stop {
        match self.until_commits {
            Some((each, within)) => Stop::Commits { each, within },
            None => Stop::After(window),
        }
    }

    pub(crate) fn worker_spec(&self, index: usize, stop: Stop, seed: u64) -> WorkerSpec {
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

    /// "write txn/s, 4 writers over 2 mounts"; with a quota, "write txn/s until every writer
    /// committed 40, 4 writers over 2 mounts".
    pub(crate) fn workload(&self) -> String {
        let over = if self.dbs.len() > 1 {
            format!(" over {} mounts", self.dbs.len())
        } else {
            String::new()
        };
        let until = match self.until_commits {
            Some((each, _)) => format!(" until every {} committed {each}", self.role.noun()),
            None => String::new(),
        };
        format!(
            "{} txn/s{until}, {}{over}",
            self.role.name(),
            self.role.processes(self.processes)
        )
    }
}

/// What one measurement (all workers of one job, one round) produced.
#[derive(Default)]
pub(crate) struct Outcome {
    pub(crate) seconds: f64,
    pub(crate) commits_per_process: Vec<u64>,
    pub(crate) busy: u64,
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) latencies_us: Vec<u64>,
    pub(crate) network: Option<bool>,
    pub(crate) journal: Option<String>,
    /// With a commit quota ([`Stop::Commits`]): when each worker met it, `None` if it did not
    /// within the limit. `seconds` is then the last one's time, or the limit.
    pub(crate) finished_s: Vec<Option<f64>>,
}

impl Outcome {
    pub(crate) fn txn_per_s(&self) -> f64 {
        if self.seconds <= 0.0 {
            return 0.0;
        }
        self.commits_per_process.iter().sum::<u64>() as f64 / self.seconds
    }

    pub(crate) fn add_error(&mut self, message: String) {
        *self.errors.entry(message).or_default() += 1;
    }

    pub(crate) fn absorb(&mut self, worker: WorkerReport) {
        self.commits_per_process.push(worker.commits);
        self.busy += worker.busy;
        for (message, count) in worker.errors {
            *self.errors.entry(message).or_default() += count;
        }
        self.latencies_us.extend(worker.latencies_us);
        self.finished_s
            .push(worker.finished_ms.map(|ms| ms / 1000.0));
        self.network = self.network.or(worker.network);
        if self.journal.is_none() {
            self.journal = worker.journal;
        }
    }
}

/// The parent's view of one worker, built from its stdout lines.
#[derive(Default)]
pub(crate) struct WorkerReport {
    pub(crate) ready: bool,
    pub(crate) done: bool,
    pub(crate) closed: bool,
    pub(crate) commits: u64,
    pub(crate) busy: u64,
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) latencies_us: Vec<u64>,
    pub(crate) network: Option<bool>,
    pub(crate) journal: Option<String>,
    pub(crate) finished_ms: Option<f64>,
}

impl WorkerReport {
    pub(crate) fn absorb_line(&mut self, line: &str) {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match word {
            "READY" => self.ready = true,
            "DONE" => self.done = true,
            "COMMITS" => self.commits = rest.parse().unwrap_or(0),
            "BUSY" => self.busy = rest.parse().unwrap_or(0),
            "FINISHED_MS" => self.finished_ms = rest.parse().ok(),
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

pub(crate) enum WorkerEvent {
    Line(usize, String),
    Closed(usize),
}

pub(crate) struct RunningWorker {
    pub(crate) child: Child,
    pub(crate) stdin: Option<ChildStdin>,
}

pub(crate) fn spawn_worker(
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
pub(crate) fn measure(job: &Job, stop: Stop, seed: u64) -> Outcome {
    let mut outcome = Outcome {
        seconds: match stop {
            Stop::After(d) => d.as_secs_f64(),
            Stop::Transactions(_) | Stop::Commits { .. } => 0.0,
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
        Stop::After(d) | Stop::Commits { within: d, .. } => d + OVERRUN_GRACE,
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
    if let Stop::Commits { each, within } = stop {
        // A worker that could not be spawned has no report: it did not finish either.
        outcome.finished_s.resize(job.processes, None);
        for _ in outcome.finished_s.iter().filter(|f| f.is_none()) {
            let short = format!(
                "writer short of {each} commits after {} s",
                within.as_secs()
            );
            *outcome.errors.entry(short).or_default() += 1;
        }
        outcome.seconds = outcome
            .finished_s
            .iter()
            .map(|f| f.unwrap_or(within.as_secs_f64()))
            .fold(0.0, f64::max);
    }
    outcome
}

/// Applies worker events until every report satisfies `enough` or `deadline` passes.
pub(crate) fn collect_until(
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
pub(crate) fn reap(child: &mut Child, report: &WorkerReport) -> Option<String> {
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
