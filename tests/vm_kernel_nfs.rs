//! Two QEMU guests as two hosts with the Linux kernel NFSv4.1 client, mounting one export of
//! nfs-ganesha on this machine (`common::vm`): the acceptance workload through the shim,
//! native SQLite's negative control, workers SIGKILLed in the guests, a guest killed whole (a
//! host crash) and a guest frozen past its lease. Also the acceptance workload on NFSv3
//! mounted `nolock`, where `fcntl` locks never leave the client (common on HPC homes).
//!
//! Guests run under TCG, 10 to 30 times slower than this machine: the workloads are sized
//! for CI; `SQLITE_NETFS_SOAK_SECS` lengthens the kill run.

mod common;

use std::time::Duration;

use common::testbed::testbed_or_skip;
use common::vm::VmTestbed;
use common::vm_faults::{self, GuestFault};

#[test]
#[ignore = "worker process entry point, spawned by the tests in this file"]
fn worker_process() {
    common::worker::run_from_env()
}

/// Stalls are tolerated as on kernel CIFS (`vm_kernel_cifs.rs`): in CI at ac7b5a6 a writer in
/// an NFSv3 guest made no request for well over its 10 s lease (its own trace: judged dead at
/// 18:18:49, its next request at 18:19:40 on the same guest's clock, the length of an NFS-over-
/// TCP retransmission), and met `SQLITE_IOERR_LOCK`, as a holder silent for a lease must.
#[test]
fn shim_keeps_every_commit_of_two_kernel_nfs_clients() {
    let Some(tb) = testbed_or_skip(VmTestbed::nfs(2, "4.1")) else {
        return;
    };
    tb.assert_shim_keeps_every_commit_through_stalls("vm-nfs41-shim");
}

#[test]
fn shim_keeps_every_commit_of_two_kernel_nfsv3_clients_mounted_nolock() {
    let Some(tb) = testbed_or_skip(VmTestbed::nfs(2, "3")) else {
        return;
    };
    tb.assert_shim_keeps_every_commit_through_stalls("vm-nfs3-nolock-shim");
}

#[test]
fn native_sqlite_in_wal_mode_fails_across_two_kernel_nfs_clients() {
    let Some(tb) = testbed_or_skip(VmTestbed::nfs(2, "4.1")) else {
        return;
    };
    tb.assert_native_sqlite_breaks("vm-nfs41-native-wal");
}

#[test]
fn workers_killed_inside_the_guests_never_lose_an_acknowledged_commit() {
    let Some(tb) = testbed_or_skip(VmTestbed::nfs(2, "4.1")) else {
        return;
    };
    vm_faults::kills_lose_nothing(&tb, "vm-nfs41-sigkill", Duration::from_secs(60));
}

#[test]
fn a_crashed_guest_holds_up_the_other_for_about_its_lease_and_loses_nothing() {
    let Some(mut tb) = testbed_or_skip(VmTestbed::nfs(2, "4.1")) else {
        return;
    };
    vm_faults::recovery_after(&mut tb, "vm-nfs41-guest-crash", GuestFault::Crash);
}

#[test]
fn a_guest_frozen_past_its_lease_is_overtaken_and_loses_nothing_when_it_thaws() {
    let Some(mut tb) = testbed_or_skip(VmTestbed::nfs(2, "4.1")) else {
        return;
    };
    vm_faults::recovery_after(&mut tb, "vm-nfs41-guest-freeze", GuestFault::Freeze);
}
