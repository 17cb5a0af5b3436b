//! The outage driver: the file server crashed and restarted under running workers.

use std::time::{Duration, Instant};

use super::*;

/// A file server the outage driver can crash and restart: the sshd or smbd of a two-host
/// testbed, the nfs-ganesha of the kernel NFS guests.
pub trait FileServer {
    /// Kills the server and everything it forked, and waits until it refuses connections;
    /// how many processes were killed.
    fn stop_server(&self) -> Result<usize, String>;
    /// Starts the server again as it was, and waits until it accepts connections.
    fn start_server(&self) -> Result<(), String>;
}

impl FileServer for crate::common::testbed::TwoHostTestbed {
    fn stop_server(&self) -> Result<usize, String> {
        crate::common::testbed::TwoHostTestbed::stop_server(self)
    }

    fn start_server(&self) -> Result<(), String> {
        crate::common::testbed::TwoHostTestbed::start_server(self)
    }
}

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
    pub(super) fn outage_figures(&self) -> String {
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

/// Runs `plan`'s workers and crashes their file server again and again (SIGKILL of the
/// daemon and its children, see [`FileServer::stop_server`]), restarting
/// it after each outage's length. The workers keep their connections throughout and never
/// reopen them: whatever recovery there is, is the shim's and the mounts'. After each restart
/// every writer must commit again; then everyone stops and the database is verified.
pub fn run_with_outages(
    plan: &FaultPlan,
    server: &dyn FileServer,
    outages: &OutagePlan,
) -> FaultReport {
    let mut run = FaultRun::start(plan);
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
        let (outage, still) = crash_server(&run, server, *down, outages.progress_timeout);
        made.push(outage);
        stalled += still;
    }
    run.stalled_writers = stalled;
    let mut report = run.finish(outages.finish_timeout);
    report.outages = made;
    report
}

/// Crashes the file server for `down`, restarts it, and times the writers' return; also
/// returns how many writers did not commit again within `progress_timeout`.
pub(super) fn crash_server(
    run: &FaultRun,
    server: &dyn FileServer,
    down: Duration,
    progress_timeout: Duration,
) -> (Outage, u64) {
    let killed_at = Instant::now();
    let processes = server.stop_server().expect("stop the file server");
    run.event(&format!("server down ({processes} processes killed)"));
    std::thread::sleep(down);
    server.start_server().expect("restart the file server");
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
