//! SIGKILL at random moments: writer and reader processes are killed inside read transactions,
//! while holding RESERVED, while writing pages, inside COMMIT and right after it, and restarted,
//! on both mounts of each testbed and on a local disk in forced network mode. Afterwards the
//! database is intact, holds every acknowledged transaction whole, at most one unacknowledged
//! transaction per kill, a counter equal to its rows, and every writer commits again.
//!
//! Soak: `SQLITE_NETFS_SOAK_SECS=1800` kills for that long per testbed (see `common::faults`).

mod common;

use std::time::Duration;

use common::faults::{self, FaultPlan, KillPlan};
use common::testbed::{TwoHostTestbed, testbed_or_skip};

#[test]
#[ignore = "worker process entry point, spawned by the tests in this file"]
fn worker_process() {
    common::worker::run_from_env()
}

/// Short enough that a killed holder of "another host" is recovered within the run, long
/// enough for SMB's slow lock operations to renew it.
const LEASE: Duration = Duration::from_secs(3);

fn check(plan: &FaultPlan, kills: &KillPlan) {
    let report = faults::run_with_kills(plan, kills);
    report.print("sigkill");
    assert!(report.kills > 0, "no kill was made");
    assert!(
        report.correct(),
        "{}\nerrors: {:?}",
        report.figures("sigkill"),
        report.errors
    );
    assert!(
        report.acknowledged > report.kills,
        "too little committed to mean anything: {}",
        report.figures("sigkill")
    );
}

#[test]
fn killed_writers_and_readers_never_lose_an_acknowledged_commit_in_forced_network_mode() {
    let dir = tempfile::tempdir().unwrap();
    let mut plan = FaultPlan::new(
        "sigkill-local",
        "local",
        vec![dir.path().to_owned()],
        dir.path().to_owned(),
    );
    plan.uri_params = "&netfs=on".into();
    plan.lease = Some(LEASE);
    let kills = KillPlan::sized(
        Duration::from_secs(60),
        (Duration::from_millis(100), Duration::from_millis(600)),
        LEASE,
    );
    check(&plan, &kills);
}

fn on_testbed(testbed: &TwoHostTestbed, ci: Duration, gap: (Duration, Duration)) {
    let mut plan = FaultPlan::new(
        &format!("sigkill-{}", testbed.kind()),
        testbed.kind(),
        vec![testbed.mount_a().to_owned(), testbed.mount_b().to_owned()],
        testbed.server_dir().to_owned(),
    );
    plan.lease = Some(LEASE);
    check(&plan, &KillPlan::sized(ci, gap, LEASE));
}

#[test]
fn killed_writers_and_readers_never_lose_an_acknowledged_commit_on_sshfs() {
    let Some(testbed) = testbed_or_skip(TwoHostTestbed::sshfs()) else {
        return;
    };
    on_testbed(
        &testbed,
        Duration::from_secs(60),
        (Duration::from_millis(200), Duration::from_millis(1200)),
    );
}

#[test]
fn killed_writers_and_readers_never_lose_an_acknowledged_commit_on_smb() {
    let Some(testbed) = testbed_or_skip(TwoHostTestbed::smb()) else {
        return;
    };
    on_testbed(
        &testbed,
        Duration::from_secs(90),
        (Duration::from_millis(1000), Duration::from_millis(3000)),
    );
}
