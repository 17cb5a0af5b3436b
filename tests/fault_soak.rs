//! Every fault at once, for as long as asked: writer and reader processes SIGKILLed at random
//! moments, the file server crashed and restarted, and one writer with its clock five minutes
//! ahead (libfaketime), on every place:
//! - a local disk in forced network mode, the sshfs testbed (sshd and its SFTP sessions
//!   crashed) and the SMB testbed (smbd crashed), at the same time, every other worker posing
//!   as another host;
//! - two QEMU guests with the kernel NFSv4.1 client (nfs-ganesha crashed), each guest a host,
//!   in a test of its own: TCG guests want both cores.
//!
//! Afterwards each database is intact and holds every acknowledged transaction. On the
//! testbeds and the local disk every writer also commits again after every fault; in the
//! guests that is reported, not asserted, as in the VM kill tests: a worker killed inside an
//! NFS request stays in the guest's kernel, holding its lock, until the request ends (minutes
//! under TCG).
//!
//! The soak runs outside CI (README.md, "Guarantees"), for half an hour per place, the two
//! tests one after the other (the guests first):
//! `SQLITE_NETFS_SOAK_SECS=1800 cargo test --test fault_soak -- --ignored --nocapture --test-threads=1`.
//! Without `SQLITE_NETFS_SOAK_SECS` each runs for a minute. CI runs each fault on its own
//! (`fault_sigkill`, `fault_server_outage`, the VM worker-kill and guest-crash tests, ...);
//! ganesha is crashed only here.
//!
//! A place whose run fails keeps its evidence and prints where: each worker's log with
//! timestamped errors and what a second look found after a torn read or "malformed" (this
//! connection and a fresh one), SQLite's error log (with the source line that found damage),
//! the driver's kills and outages, the journal as the workers left it, and the database. Set
//! `NETFS_TEST_TRACE=sqlite_netfs=warn` (or `trace`) to keep each worker's shim trace too.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::faults::{self, FaultPlan, FaultReport, FileServer, KillPlan, OutageMix, libfaketime};
use common::testbed::{TwoHostTestbed, testbed_or_skip};
use common::vm::VmTestbed;
use common::vm_faults;

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
    with_first_writer_ahead(plan)
}

/// Worker 0's clock five minutes ahead of everyone else's.
fn with_first_writer_ahead(mut plan: FaultPlan) -> FaultPlan {
    if let Some(lib) = libfaketime() {
        plan.worker_env = vec![
            (0, "LD_PRELOAD".into(), lib.display().to_string()),
            (0, "FAKETIME".into(), "+5m".into()),
        ];
    }
    plan
}

fn soak(plan: &FaultPlan, server: Option<&dyn FileServer>, gap: (u64, u64)) -> FaultReport {
    let kills = KillPlan::sized(
        Duration::from_secs(60),
        (Duration::from_millis(gap.0), Duration::from_millis(gap.1)),
        LEASE,
    );
    let report = faults::run_mixed(plan, &kills, server.map(|s| outages(s, &kills)));
    report.print("soak");
    report
}

/// An outage every eighth of the run (at least 25 s apart), alternately shorter and longer
/// than a lease.
fn outages<'a>(server: &'a dyn FileServer, kills: &KillPlan) -> OutageMix<'a> {
    OutageMix {
        server,
        every: (kills.duration / 8).max(Duration::from_secs(25)),
        downs: DOWNS.to_vec(),
    }
}

/// The faults were made, nothing acknowledged was lost or torn, the file is intact, and no
/// worker was told the database is damaged.
fn assert_soak_was_safe(report: &FaultReport, with_outages: bool) {
    assert!(report.kills > 0, "{}", report.figures("soak"));
    assert!(
        report.safe(),
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
    if with_outages {
        assert!(!report.outages.is_empty(), "{}", report.figures("soak"));
    }
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
            runs.push(s.spawn(move || soak(&on(tb), Some(tb as &dyn FileServer), (500, 2500))));
        }
        if let Some(tb) = &smb {
            runs.push(s.spawn(move || soak(&on(tb), Some(tb as &dyn FileServer), (1500, 5000))));
        }
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for report in &reports {
        assert_soak_was_safe(report, report.testbed != "local");
        assert!(
            report.correct(),
            "a writer stalled or stuck: {}",
            report.figures("soak")
        );
    }
}

#[test]
#[ignore = "the soak: run outside CI with SQLITE_NETFS_SOAK_SECS (see the module doc)"]
fn every_fault_at_once_in_two_kernel_nfs_guests_loses_no_acknowledged_commit() {
    let Some(tb) = testbed_or_skip(VmTestbed::nfs(2, "4.1")) else {
        return;
    };
    let plan = with_first_writer_ahead(vm_faults::fault_plan(&tb, "soak-vm-nfs"));
    let kills = vm_faults::kill_plan(Duration::from_secs(60));
    let report = faults::run_mixed(&plan, &kills, Some(outages(&tb, &kills)));
    report.print("soak");
    assert_soak_was_safe(&report, true);
}
