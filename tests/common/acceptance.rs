//! The acceptance tests run on each two-host testbed: the shim keeps every acknowledged
//! commit, native SQLite does not (the negative control), and `unix-dotfile` for reference.

use sqlite_netfs::Mode;

use super::stress::{self, two_host_plan};
use super::testbed::{TwoHostTestbed, testbed_or_skip};

/// How many times the shim's acceptance workload runs in a row: `rounds` by default (CI), or
/// the number in this variable (the ten-run proof: `SQLITE_NETFS_ACCEPTANCE_ROUNDS=10`).
pub const ROUNDS_ENV: &str = "SQLITE_NETFS_ACCEPTANCE_ROUNDS";

/// Four writer processes split over both mounts, 300 transactions each of growing, multi-page
/// rows, and a reader, through the shim in auto mode (no `netfs=` parameter): it must detect
/// `fs_type` as network. Every round must be correct with no error but BUSY, which
/// `busy_timeout` absorbs: "disk I/O error" under mere contention is a failure, however rare,
/// so the workload runs `rounds` times.
pub fn shim_keeps_every_commit(
    testbed: Result<TwoHostTestbed, String>,
    fs_type: &str,
    rounds: u32,
) {
    let Some(testbed) = testbed_or_skip(testbed) else {
        return;
    };
    let detection = sqlite_netfs::detect(&testbed.mount_a().join("any.db")).unwrap();
    assert_eq!(detection.fs_type, fs_type, "{detection:?}");
    assert_eq!(detection.mode, Mode::Network, "{detection:?}");
    let rounds = std::env::var(ROUNDS_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(rounds);
    let mut failed = Vec::new();
    for round in 1..=rounds {
        let mut plan = two_host_plan(&testbed, &format!("shim-round{round}"), "netfs");
        // What applications do first; the shim answers `delete` and keeps the rollback journal.
        plan.journal_mode = "WAL".into();
        let report = stress::run(&plan, &[]);
        assert!(
            report.reader_checks > 0,
            "the reader never read: {}",
            report.summary()
        );
        if !report.correct() || report.acknowledged != 4 * 300 {
            failed.push(report.summary());
        }
    }
    eprintln!(
        "FIGURES acceptance testbed={} rounds={rounds} correct_rounds={}",
        testbed.kind(),
        rounds as usize - failed.len()
    );
    assert!(
        failed.is_empty(),
        "rounds that failed:\n{}",
        failed.join("\n")
    );
}

/// The same workload through SQLite's own `unix` VFS in WAL mode must break: lost commits,
/// corruption, torn reads or errors (up to three tries, so luck cannot fake a pass).
pub fn native_sqlite_breaks(testbed: Result<TwoHostTestbed, String>) {
    let Some(testbed) = testbed_or_skip(testbed) else {
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

/// SQLite's built-in dot-file locking (one lock for readers and writers alike), for the
/// figures; it may break on SMB, whose client caches go stale. The run must finish.
pub fn unix_dotfile_reference(testbed: Result<TwoHostTestbed, String>) {
    let Some(testbed) = testbed_or_skip(testbed) else {
        return;
    };
    let mut plan = two_host_plan(&testbed, "unix-dotfile", "unix-dotfile");
    plan.transactions = 100;
    plan.deadline = std::time::Duration::from_secs(240);
    let report = stress::run(&plan, &[]);
    assert!(report.acknowledged > 0, "{}", report.summary());
}
