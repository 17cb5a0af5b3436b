//! Two QEMU guests as two hosts with the Linux kernel CIFS client (SMB 3.0), mounting the
//! SMB testbed's Samba share (`common::vm`): the acceptance workload through the shim (not
//! yet clean: see its `ignore` reason), and native SQLite's negative control.

mod common;

use common::stress;
use common::testbed::testbed_or_skip;
use common::vm::VmTestbed;

#[test]
#[ignore = "worker process entry point, spawned by the tests in this file"]
fn worker_process() {
    common::worker::run_from_env()
}

#[test]
#[ignore = "not yet clean: every commit kept in all runs, but in most a holder stalls 30-40 s \
            inside an SMB request and is judged dead, so a writer gets SQLITE_IOERR_LOCK \
            (DESIGN.md, failure model); run it with --ignored to see"]
fn shim_keeps_every_commit_of_two_kernel_cifs_clients() {
    let Some(tb) = testbed_or_skip(VmTestbed::cifs(2)) else {
        return;
    };
    tb.assert_shim_keeps_every_commit("vm-cifs-shim");
}

#[test]
fn native_sqlite_in_wal_mode_fails_across_two_kernel_cifs_clients() {
    let Some(tb) = testbed_or_skip(VmTestbed::cifs(2)) else {
        return;
    };
    let report = stress::expect_broken(tb.stress_plan("vm-cifs-native-wal", "unix", 40), 2);
    assert!(
        !report.correct(),
        "native SQLite came through intact: the negative control has lost its teeth: {}",
        report.summary()
    );
}
