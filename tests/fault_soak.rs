//! Every fault at once, for as long as asked: writer and reader processes SIGKILLed at random
//! moments, the file server crashed and restarted (sshd with its SFTP sessions; smbd), one
//! writer with its clock five minutes ahead (libfaketime) and every other worker posing as
//! another host, on the sshfs and SMB testbeds and on a local disk in forced network mode,
//! all three at the same time. Afterwards each database is intact and holds every acknowledged
//! transaction, and every writer commits again.
//!
//! The soak runs outside CI (README.md, "Guarantees"), for half an hour per testbed, all at once:
//! `SQLITE_NETFS_SOAK_SECS=1800 cargo test --test fault_soak -- --ignored --nocapture`.
//! Without `SQLITE_NETFS_SOAK_SECS` it runs for a minute. CI runs each fault on its own
//! (`fault_sigkill`, `fault_server_outage`, ...).
//!
//! A place whose run fails keeps its evidence and prints where: each worker's log with
//! timestamped errors and what a second look found after a torn read or "malformed" (this
//! connection and a fresh one), SQLite's error log (with the source line that found damage),
//! the driver's kills and outages, the journal as the workers left it, and the database. Set
//! `NETFS_TEST_TRACE=sqlite_netfs=warn` (or `trace`) to keep each worker's shim trace too.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::faults::{self, FaultPlan, FaultReport, KillPlan, OutageMix, libfaketime};
use common::testbed::{TwoHostTestbed, testbed_or_skip};

#[test]
#[ignore = "worker process entry point, spawned by the tests in this file"]
fn worker_process() {
    common::worker::run_from_env()
}

const LEASE: Duration = Duration::from_secs(3);
/// Outages alternate between shorter and longer than a lease.
const DOWNS: [Duration; 2] = [Duration::from_secs(3), Duration::from_secs(12)];

fn plan(label: &str, testbed: &str, mounts: Vec<PathBuf>, server_dir: PathBuf) -> FaultPlan {
    let mut plan = FaultPlan::new(label, testbed, mounts, server_dir);
    plan.lease = Some(LEASE);
    if let Some(lib) = libfaketime() {
        plan.worker_env = vec![
            (0, "LD_PRELOAD".into(), lib.display().to_string()),
            (0, "FAKETIME".into(), "+5m".into()),
        ];
    }
    plan
}

fn soak(plan: &FaultPlan, testbed: Option<&TwoHostTestbed>, gap: (u64, u64)) -> FaultReport {
    let kills = KillPlan::sized(
        Duration::from_secs(60),
        (Duration::from_millis(gap.0), Duration::from_millis(gap.1)),
        LEASE,
    );
    let outages = testbed.map(|testbed| OutageMix {
        testbed,
        every: (kills.duration / 8).max(Duration::from_secs(25)),
        downs: DOWNS.to_vec(),
    });
    let report = faults::run_mixed(plan, &kills, outages);
    report.print("soak");
    report
}

#[test]
#[ignore = "the soak: run outside CI with SQLITE_NETFS_SOAK_SECS (see the module doc)"]
fn every_fault_at_once_on_both_testbeds_and_a_local_disk_loses_no_acknowledged_commit() {
    let dir = tempfile::tempdir().unwrap();
    let mut local = plan(
        "soak-local",
        "local",
        vec![dir.path().to_owned()],
        dir.path().to_owned(),
    );
    local.uri_params = "&netfs=on".into();
    let sshfs = testbed_or_skip(TwoHostTestbed::sshfs());
    let smb = testbed_or_skip(TwoHostTestbed::smb());
    let on = |testbed: &TwoHostTestbed| {
        plan(
            &format!("soak-{}", testbed.kind()),
            testbed.kind(),
            vec![testbed.mount_a().to_owned(), testbed.mount_b().to_owned()],
            testbed.server_dir().to_owned(),
        )
    };
    let reports: Vec<FaultReport> = std::thread::scope(|s| {
        let mut runs = vec![s.spawn(|| soak(&local, None, (300, 1500)))];
        if let Some(tb) = &sshfs {
            runs.push(s.spawn(move || soak(&on(tb), Some(tb), (500, 2500))));
        }
        if let Some(tb) = &smb {
            runs.push(s.spawn(move || soak(&on(tb), Some(tb), (1500, 5000))));
        }
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for report in &reports {
        assert!(report.kills > 0, "{}", report.figures("soak"));
        assert!(
            report.correct(),
            "{}\nerrors: {:?}",
            report.figures("soak"),
            report.errors
        );
        assert!(
            !report
                .errors
                .keys()
                .any(|k| k.contains("Corrupt") || k.contains("NotADatabase")),
            "a worker was told the database is damaged: {:?}",
            report.errors
        );
        if report.testbed != "local" {
            assert!(!report.outages.is_empty(), "{}", report.figures("soak"));
        }
    }
}
