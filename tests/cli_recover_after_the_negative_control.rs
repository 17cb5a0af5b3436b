//! `sqlite-netfs recover` on what native SQLite really left behind on a network filesystem:
//! the sshfs testbed's negative control (four native writers in WAL mode over two mounts),
//! whose file ends with lost commits or corrupt. The salvage must open, never write the
//! damaged file, and with `--strict` give an intact file of real rows.

mod cli_support;
mod common;

use std::path::Path;

use cli_support::{path, run};
use common::stress::{self, two_host_plan};
use common::testbed::{TwoHostTestbed, testbed_or_skip};
use sqlite_netfs::rusqlite::Connection;

#[test]
#[ignore = "worker process entry point, spawned by the tests in this file"]
fn worker_process() {
    common::worker::run_from_env()
}

fn contents(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

#[test]
fn what_native_sqlite_left_on_sshfs_is_salvaged_without_touching_it() {
    let Some(testbed) = testbed_or_skip(TwoHostTestbed::sshfs()) else {
        return;
    };
    let mut plan = two_host_plan(&testbed, "native-wal-for-recover", "unix");
    plan.journal_mode = "WAL".into();
    let report = stress::expect_broken(plan, 3);
    assert!(!report.correct(), "{}", report.summary());
    let label = report.label.replace(|c: char| !c.is_alphanumeric(), "-");
    let broken = testbed.server_dir().join(format!("{label}.db"));
    let before = contents(&broken);

    // --strict: rows an intact index contradicts are left out. Without it they are kept and
    // counted, and what native SQLite leaves holds a few that decoded from damage (a row of
    // a worker that never existed came out of one CI run).
    let new = testbed.server_dir().join("salvaged.db");
    let out = run(&["recover", path(&broken), path(&new), "--strict"]);
    println!("{}\n{}", report.summary(), out.stdout);
    assert!(out.code == 0 || out.code == 1, "{out:?}");
    assert!(out.stdout.contains("rows: "), "{}", out.stdout);
    assert_eq!(contents(&broken), before, "recover wrote the damaged file");

    let salvaged = Connection::open(&new).unwrap();
    let check: String = salvaged
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    // Every salvaged row is one a writer wrote, whole.
    let foreign: i64 = salvaged
        .query_row(
            "SELECT count(*) FROM rows WHERE worker NOT BETWEEN 0 AND 3 OR length(payload) != 50 + seq * 97 % 3000",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(foreign, 0, "rows no writer wrote came out");
}
