//! Network mode forced on a local disk: several processes (not threads) writing and reading
//! one database, WAL conversion of a database a crashed process left behind, and interop
//! with a plain SQLite process that does not use the shim.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::stress::{self, StressPlan};
use common::worker::{self, Job};
use sqlite_netfs::rusqlite::Connection;

#[test]
#[ignore = "worker process entry point, spawned by the tests in this file"]
fn worker_process() {
    common::worker::run_from_env()
}

fn forced_plan(label: &str, dir: &Path) -> StressPlan {
    let mut plan = StressPlan::new(label, vec![dir.to_owned()], dir.to_owned(), "netfs");
    plan.uri_params = "&netfs=on".into();
    plan
}

#[test]
fn four_writer_processes_and_a_reader_lose_nothing_and_never_see_a_torn_state() {
    let dir = tempfile::tempdir().unwrap();
    let report = stress::run(&forced_plan("forced-network-4x300", dir.path()), &[]);
    assert!(report.correct(), "{}", report.summary());
    assert_eq!(report.acknowledged, 4 * 300);
    assert!(report.reader_checks > 0, "the reader never got to read");
}

#[test]
fn two_writer_processes_both_open_and_commit() {
    let dir = tempfile::tempdir().unwrap();
    let mut plan = forced_plan("forced-network-2-writers", dir.path());
    plan.writers = 2;
    plan.transactions = 100;
    plan.readers = 0;
    let report = stress::run(&plan, &[]);
    assert!(report.correct(), "{}", report.summary());
    assert_eq!(
        report.acknowledged, 200,
        "both processes committed all they were asked to"
    );
}

#[test]
fn wal_database_left_by_a_crashed_process_is_converted_with_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("was-wal.db");
    let job = Job {
        role: "wal-writer".into(),
        db: db.clone(),
        transactions: 500,
        ..Default::default()
    };
    assert!(worker::spawn(&job, &[]).wait().unwrap().success());
    let wal = dir.path().join("was-wal.db-wal");
    let wal_len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert!(
        wal_len > 100_000,
        "the rows are still in the WAL: {wal_len} bytes"
    );
    assert_eq!(
        std::fs::read(&db).unwrap()[18..20],
        [2, 2],
        "header says WAL"
    );

    sqlite_netfs::register().unwrap();
    let conn = Connection::open(format!("file:{}?vfs=netfs&netfs=on", db.display())).unwrap();
    assert!(sqlite_netfs::network_mode_active(&conn));
    let n: i64 = conn
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 500);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete");
    assert!(!wal.exists() && !dir.path().join("was-wal.db-shm").exists());
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
}

/// A Python process using its own, plain SQLite (no shim) increments the counter while shim
/// processes do the same: no update may be lost.
fn interop_with_plain_sqlite(netfs: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut plan = StressPlan::new(
        &format!("interop-{netfs}"),
        vec![dir.path().to_owned()],
        dir.path().to_owned(),
        "netfs",
    );
    plan.uri_params = format!("&netfs={netfs}");
    plan.writers = 2;
    plan.transactions = 150;
    plan.readers = 0;
    let db = dir.path().join(format!("interop-{netfs}.db"));
    worker::create_stress_schema(&db);
    let script = format!(
        r#"
import sqlite3, time
c = sqlite3.connect({db:?}, timeout=30, isolation_level=None)
done = 0
while done < 300:
    try:
        c.execute("BEGIN IMMEDIATE")
        c.execute("UPDATE counter SET v = v + 1 WHERE id = 1")
        c.execute("INSERT INTO rows(worker, seq, payload) VALUES (99, ?, x'00')", (done,))
        c.execute("COMMIT")
        done += 1
    except sqlite3.OperationalError as e:
        if c.in_transaction:
            c.execute("ROLLBACK")
        if "locked" not in str(e):
            raise
print(done)
"#,
        db = db.display().to_string()
    );
    let python = Command::new("python3")
        .args(["-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 is needed for the interop test");
    // The schema exists; the stress run reuses the same file name and adds its writers.
    let report = stress::run(&plan, &[]);
    let out = python.wait_with_output().unwrap();
    assert!(out.status.success(), "python worker failed");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "300");
    assert!(report.errors.is_empty(), "{}", report.summary());
    assert_eq!(report.acknowledged, 300);
    let conn = Connection::open(&db).unwrap();
    let (v, n): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT v FROM counter), (SELECT count(*) FROM rows)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((v, n), (600, 600), "an update was lost");
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
}

#[test]
fn plain_sqlite_process_and_shim_processes_share_a_counter_in_native_mode() {
    interop_with_plain_sqlite("off");
}

#[test]
fn plain_sqlite_process_and_shim_processes_share_a_counter_in_network_mode() {
    interop_with_plain_sqlite("on");
}
