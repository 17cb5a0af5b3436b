//! Two QEMU guests as two hosts with the Linux kernel virtiofs client, each served the same
//! host directory by its own `virtiofsd` (`common::vm`): two VMs sharing a data dir, as
//! VM-backed containers do. The acceptance workload through the shim, and native SQLite's
//! negative control, workers SIGKILLed in the guests and a guest killed whole. (A host on its
//! local disk beside one guest: `mixed_views.rs`.)

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

#[test]
fn shim_keeps_every_commit_of_two_virtiofs_guests() {
    let Some(tb) = testbed_or_skip(VmTestbed::virtiofs(2)) else {
        return;
    };
    tb.assert_shim_keeps_every_commit("vm-virtiofs-shim");
}

#[test]
fn native_sqlite_in_wal_mode_fails_across_two_virtiofs_guests() {
    let Some(tb) = testbed_or_skip(VmTestbed::virtiofs(2)) else {
        return;
    };
    tb.assert_native_sqlite_breaks("vm-virtiofs-native-wal");
}

#[test]
fn workers_killed_inside_virtiofs_guests_never_lose_an_acknowledged_commit() {
    let Some(tb) = testbed_or_skip(VmTestbed::virtiofs(2)) else {
        return;
    };
    vm_faults::kills_lose_nothing(&tb, "vm-virtiofs-sigkill", Duration::from_secs(45));
}

#[test]
fn a_crashed_virtiofs_guest_holds_up_the_other_for_about_its_lease_and_loses_nothing() {
    let Some(mut tb) = testbed_or_skip(VmTestbed::virtiofs(2)) else {
        return;
    };
    vm_faults::recovery_after(&mut tb, "vm-virtiofs-guest-crash", GuestFault::Crash);
}
