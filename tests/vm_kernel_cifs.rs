//! Two QEMU guests as two hosts with the Linux kernel CIFS client (SMB 3.0), mounting the
//! SMB testbed's Samba share (`common::vm`): the acceptance workload through the shim, and
//! native SQLite's negative control.

mod common;

use common::testbed::testbed_or_skip;
use common::vm::VmTestbed;

#[test]
#[ignore = "worker process entry point, spawned by the tests in this file"]
fn worker_process() {
    common::worker::run_from_env()
}

/// Under TCG, all of one guest's processes sometimes sit waiting for SMB answers for 10-40 s
/// (kernel stacks sampled in the guest: `wait_for_response` under open, mkdir, getxattr,
/// flush; the same with the share's oplocks off): a holder there outlives its lease and is
/// judged dead, as the design says a stalled holder must be. Safety is asserted, and that the
/// only errors are those stalled holders' `SQLITE_IOERR_LOCK`; the `FIGURES` line counts them.
#[test]
fn shim_keeps_every_commit_of_two_kernel_cifs_clients() {
    let Some(tb) = testbed_or_skip(VmTestbed::cifs(2)) else {
        return;
    };
    tb.assert_shim_keeps_every_commit_through_stalls("vm-cifs-shim");
}

#[test]
fn native_sqlite_in_wal_mode_fails_across_two_kernel_cifs_clients() {
    let Some(tb) = testbed_or_skip(VmTestbed::cifs(2)) else {
        return;
    };
    tb.assert_native_sqlite_breaks("vm-cifs-native-wal");
}
