//! Two "hosts" (two smbnetfs mounts of one loopback Samba share, see `common::testbed`): the shim keeps every acknowledged commit
//! where native SQLite loses them.

mod common;

use common::acceptance;
use common::testbed::TwoHostTestbed;

#[test]
#[ignore = "worker process entry point, spawned by the tests in this file"]
fn worker_process() {
    common::worker::run_from_env()
}

#[test]
fn shim_detects_smb_as_network_and_keeps_every_commit_across_two_hosts() {
    // Two rounds: one SMB round takes three to five minutes.
    acceptance::shim_keeps_every_commit(TwoHostTestbed::smb(), "fuse.smbnetfs", 2);
}

#[test]
fn native_sqlite_loses_commits_or_corrupts_across_two_smb_hosts() {
    acceptance::native_sqlite_breaks(TwoHostTestbed::smb());
}

#[test]
fn unix_dotfile_reference_figures_on_smb() {
    acceptance::unix_dotfile_reference(TwoHostTestbed::smb());
}
