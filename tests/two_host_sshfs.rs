//! Two "hosts" (two sshfs mounts of one directory over a loopback sshd, see `common::testbed`): the shim keeps every acknowledged commit
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
fn shim_detects_sshfs_as_network_and_keeps_every_commit_across_two_hosts() {
    acceptance::shim_keeps_every_commit(TwoHostTestbed::sshfs(), "fuse.sshfs", 3);
}

#[test]
fn native_sqlite_loses_commits_or_corrupts_across_two_sshfs_hosts() {
    acceptance::native_sqlite_breaks(TwoHostTestbed::sshfs());
}

#[test]
fn unix_dotfile_reference_figures_on_sshfs() {
    acceptance::unix_dotfile_reference(TwoHostTestbed::sshfs());
}
