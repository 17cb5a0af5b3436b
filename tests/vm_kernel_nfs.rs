//! Two QEMU guests as two hosts with the Linux kernel NFSv4.1 client, mounting one export of
//! nfs-ganesha on this machine: the acceptance workload through the shim, and native SQLite's
//! negative control.

mod common;

use std::time::Duration;

use common::stress::{self, StressPlan};
use common::testbed::testbed_or_skip;
use common::vm::{GUEST_MOUNT, VmTestbed};
use common::worker::Place;

#[test]
#[ignore = "worker process entry point, spawned by the tests in this file"]
fn worker_process() {
    common::worker::run_from_env()
}

fn plan(tb: &VmTestbed, label: &str, vfs: &str) -> StressPlan {
    let mut plan = StressPlan::new(
        label,
        vec![GUEST_MOUNT.into(); tb.guests.len()],
        tb.server_dir().to_owned(),
        vfs,
    );
    plan.places = tb
        .guests
        .iter()
        .map(|g| Place::Guest(g.agent().clone()))
        .collect();
    plan.log_root = Some(tb.control_dir().to_owned());
    plan.journal_mode = "WAL".into();
    plan.transactions = 40;
    plan.deadline = Duration::from_secs(900);
    plan
}

#[test]
fn shim_keeps_every_commit_of_two_kernel_nfs_clients() {
    let Some(tb) = testbed_or_skip(VmTestbed::nfs(2, "4.1")) else {
        return;
    };
    let report = stress::run(&plan(&tb, "vm-nfs41-shim", "netfs"), &[]);
    assert!(report.correct(), "{}", report.summary());
}
