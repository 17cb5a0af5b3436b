//! Two "hosts" (two sshfs mounts of one directory, see `common::testbed`): the shim keeps
//! every acknowledged commit where native SQLite loses them.

mod common;

use common::stress::{self, two_host_plan};
use common::testbed::{TwoHostTestbed, testbed_or_skip};
use sqlite_netfs::Mode;

#[test]
#[ignore = "worker process entry point, spawned by the tests in this file"]
fn worker_process() {
    common::worker::run_from_env()
}

#[test]
fn shim_detects_sshfs_as_network_and_keeps_every_commit_across_two_hosts() {
    let Some(testbed) = testbed_or_skip(TwoHostTestbed::sshfs()) else {
        return;
    };
    let detection = sqlite_netfs::detect(&testbed.mount_a().join("any.db")).unwrap();
    assert_eq!(detection.fs_type, "fuse.sshfs", "{detection:?}");
    assert_eq!(detection.mode, Mode::Network, "{detection:?}");
    // No netfs= parameter: auto mode must choose network mode by itself.
    let report = stress::run(&two_host_plan(&testbed, "shim", "netfs"), &[]);
    assert!(report.correct(), "{}", report.summary());
    assert_eq!(report.acknowledged, 4 * 300);
    assert!(
        report.reader_checks > 0,
        "the reader never read: {}",
        report.summary()
    );
}

#[test]
fn native_sqlite_loses_commits_or_corrupts_across_two_sshfs_hosts() {
    let Some(testbed) = testbed_or_skip(TwoHostTestbed::sshfs()) else {
        return;
    };
    let mut plan = two_host_plan(&testbed, "native-wal", "unix");
    plan.journal_mode = "WAL".into();
    let report = stress::expect_broken(plan, 3);
    assert!(
        !report.correct(),
        "native SQLite came through intact three times: the test has lost its teeth: {}",
        report.summary()
    );
}

#[test]
fn unix_dotfile_reference_figures_on_sshfs() {
    let Some(testbed) = testbed_or_skip(TwoHostTestbed::sshfs()) else {
        return;
    };
    // SQLite's built-in dot-file locking: one lock for readers and writers alike. Reported for
    // comparison (it may break on SMB, whose client caches go stale); the run must finish.
    let mut plan = two_host_plan(&testbed, "unix-dotfile", "unix-dotfile");
    plan.transactions = 100;
    plan.deadline = std::time::Duration::from_secs(240);
    let report = stress::run(&plan, &[]);
    assert!(report.acknowledged > 0, "{}", report.summary());
}
