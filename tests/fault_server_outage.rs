//! File-server outage: the testbed's server (sshd with its SFTP sessions, or smbd with its
//! children) is SIGKILLed mid-run and restarted after a few seconds, once for less than a lease
//! and once for longer than a lease, while writers on both mounts keep their connections open.
//! The mounts reconnect by themselves (sshfs `-o reconnect`; smbnetfs). Afterwards the database
//! is intact, holds every acknowledged transaction whole, at most one unacknowledged transaction
//! per failed one, a counter equal to its rows, every writer committed again after each
//! restart, and every worker finished. No worker ever reopens its connection.
//!
//! What the writers see while the server is away differs by client (FIGURES `errors=`): on
//! sshfs every request fails at once with EIO, which the shim reports as `SQLITE_IOERR_LOCK`
//! (the lock files cannot be used) or `SQLITE_IOERR_READ`; smbnetfs makes requests wait and
//! fails lock-file creates, which the shim answers with BUSY, so writers just wait.
//!
//! Soak: `SQLITE_NETFS_SOAK_SECS=1800` repeats the outages for that long (see `common::faults`).

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::faults::{self, FaultPlan, OutagePlan};
use common::testbed::{TwoHostTestbed, testbed_or_skip};
use sqlite_netfs::rusqlite::{self, Connection, OpenFlags};

#[test]
#[ignore = "worker process entry point, spawned by the tests in this file"]
fn worker_process() {
    common::worker::run_from_env()
}

/// The default lease: the long outage outlasts it, so holders fence themselves and their
/// entries expire while the server is away, as they would for a user.
const LEASE: Duration = sqlite_netfs::DEFAULT_LEASE;

/// What a worker may be told while the file server is away: an I/O error (`SQLITE_IOERR_*`),
/// BUSY, or that the database cannot be opened. Never that it is corrupt, nor
/// `SQLITE_IOERR_CORRUPTFS` (8458), which SQLite turns into "malformed" in a statement.
fn allowed_error(kind: &str) -> bool {
    kind != "SystemIoFailure(8458)"
        && [
            "SystemIoFailure(",
            "DatabaseBusy(",
            "DatabaseLocked(",
            "CannotOpen(",
        ]
        .iter()
        .any(|k| kind.starts_with(k))
}

fn check(testbed: &TwoHostTestbed, writers: usize, between: Duration) {
    let mut plan = FaultPlan::new(
        &format!("outage-{}", testbed.kind()),
        testbed.kind(),
        vec![testbed.mount_a().to_owned(), testbed.mount_b().to_owned()],
        testbed.server_dir().to_owned(),
    );
    plan.writers = writers;
    let downs = vec![Duration::from_secs(3), LEASE + Duration::from_secs(2)];
    let outages = OutagePlan::sized(downs, between, LEASE);
    let report = faults::run_with_outages(&plan, testbed, &outages);
    report.print("server-outage");
    let figures = report.figures("server-outage");
    assert!(
        report.outages.iter().all(|o| o.processes > 1),
        "an outage found no client connected to the server: {figures}"
    );
    assert!(report.correct(), "{figures}\nerrors: {:?}", report.errors);
    let unexpected: Vec<&String> = report.errors.keys().filter(|k| !allowed_error(k)).collect();
    assert!(
        unexpected.is_empty(),
        "workers were told something other than I/O error or BUSY: {unexpected:?}\n{figures}"
    );
    for (i, o) in report.outages.iter().enumerate() {
        assert!(
            o.all_writers.is_some(),
            "some writer never committed after restart {i}: {figures}"
        );
    }
}

#[test]
fn writers_keep_every_acknowledged_commit_through_sshfs_server_crashes_and_resume_after_restart() {
    let Some(testbed) = testbed_or_skip(TwoHostTestbed::sshfs()) else {
        return;
    };
    check(&testbed, 4, Duration::from_secs(4));
}

#[test]
fn writers_keep_every_acknowledged_commit_through_smb_server_crashes_and_resume_after_restart() {
    let Some(testbed) = testbed_or_skip(TwoHostTestbed::smb()) else {
        return;
    };
    // Three writers, not four: on SMB (about 5 transactions/s) the fourth mostly waits its
    // turn, and the wait until every writer has committed again grew to 75 s.
    check(&testbed, 3, Duration::from_secs(6));
}

/// One connection, idle while the server is away and alone afterwards, so no other writer's
/// commit makes it reopen the database: it must commit again by itself. (sshfs fails every
/// descriptor opened before a reconnect with EIO for good; the shim reopens a descriptor that
/// failed.)
fn idle_connection_commits_again(testbed: &TwoHostTestbed) {
    let server_db = testbed.server_dir().join("idle.db");
    faults::create_fault_schema(&server_db);
    faults::register(None);
    let uri = format!(
        "file:{}?vfs=netfs",
        testbed.mount_a().join("idle.db").display()
    );
    let conn = Connection::open_with_flags(&uri, OpenFlags::default()).unwrap();
    conn.busy_timeout(Duration::from_secs(30)).unwrap();
    let commit = |txn: i64| -> rusqlite::Result<()> {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let body = (|| {
            conn.execute("UPDATE counter SET v = v + 1 WHERE id = 1", [])?;
            conn.execute(
                "INSERT INTO rows(worker, txn, part, parts, payload) VALUES (0, ?1, 0, 1, x'00')",
                [txn],
            )?;
            conn.execute_batch("COMMIT")
        })();
        if body.is_err() && !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        body
    };
    let mut acked = BTreeSet::new();
    for txn in 0..5 {
        commit(txn).unwrap();
        acked.insert((0, txn));
    }
    let processes = testbed.stop_server().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    testbed.start_server().unwrap();
    let restarted = Instant::now();
    let mut failures = Vec::new();
    let mut txn = 5;
    while restarted.elapsed() < Duration::from_secs(60) {
        match commit(txn) {
            Ok(()) => {
                acked.insert((0, txn));
                break;
            }
            Err(e) => failures.push(common::worker::error_kind(&e)),
        }
        txn += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let recovered = restarted.elapsed();
    drop(conn);
    let v = faults::verify_after_faults(&server_db, &acked);
    eprintln!(
        "FIGURES fault=server-outage-idle-connection testbed={} outages=1 outage_s=3 server_procs_killed={processes} failed_txns_after_restart={} errors={failures:?} first_commit_after_restart_ms={} lost={} corrupt={} unacked_present={}",
        testbed.kind(),
        failures.len(),
        recovered.as_millis(),
        v.lost,
        u8::from(v.integrity != "ok"),
        v.unacked_present
    );
    assert_eq!(acked.len(), 6, "never committed again: {failures:?}");
    assert_eq!(v.integrity, "ok");
    assert_eq!(v.lost, 0);
    assert!(v.unacked_present as usize <= failures.len());
    assert_eq!(v.counter, v.rows);
}

#[test]
fn a_connection_idle_through_an_sshfs_server_restart_commits_again() {
    let Some(testbed) = testbed_or_skip(TwoHostTestbed::sshfs()) else {
        return;
    };
    idle_connection_commits_again(&testbed);
}

#[test]
fn a_connection_idle_through_an_smb_server_restart_commits_again() {
    let Some(testbed) = testbed_or_skip(TwoHostTestbed::smb()) else {
        return;
    };
    idle_connection_commits_again(&testbed);
}

/// A write transaction whose journal was written before a server restart commits after it:
/// sshfs answers EIO on every descriptor opened before the restart, for good. The COMMIT
/// fails with an I/O error, never "database disk image is malformed" (SQLite's `unix` VFS
/// calls a read's EIO a corrupt filesystem, and the COMMIT reads the journal first: seen in
/// the outage test), and the next transaction commits.
#[test]
fn a_commit_cut_by_an_sshfs_server_restart_fails_with_an_io_error_never_malformed() {
    let Some(testbed) = testbed_or_skip(TwoHostTestbed::sshfs()) else {
        return;
    };
    let server_db = testbed.server_dir().join("cut.db");
    faults::create_fault_schema(&server_db);
    let conn = faults::open_observer(&testbed.mount_a().join("cut.db"), "", None);
    let mut acked = BTreeSet::new();
    for txn in 0..3 {
        faults::commit_one(&conn, 0, txn).unwrap();
        acked.insert((0, txn));
    }
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    // Page 1 changes too, so it is in the journal before the restart and the COMMIT's first
    // request to the journal is the read of its next header.
    conn.execute_batch("PRAGMA user_version = 7").unwrap();
    conn.execute("UPDATE counter SET v = v + 1 WHERE id = 1", [])
        .unwrap();
    conn.execute(
        "INSERT INTO rows(worker, txn, part, parts, payload) VALUES (1, 0, 0, 1, x'01')",
        [],
    )
    .unwrap();
    testbed.stop_server().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    testbed.start_server().unwrap();
    let committed = conn.execute_batch("COMMIT");
    let told = committed.as_ref().err().map(common::worker::error_kind);
    eprintln!("the cut COMMIT: {told:?}");
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    if let Some(kind) = &told {
        assert!(allowed_error(kind), "the cut COMMIT was told {kind}");
    }
    let mut committed_again = false;
    for txn in 3..100 {
        match faults::commit_one(&conn, 0, txn) {
            Ok(_) => {
                acked.insert((0, txn));
                committed_again = true;
                break;
            }
            Err(e) => {
                let kind = common::worker::error_kind(&e);
                assert!(allowed_error(&kind), "after the restart: {kind}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    assert!(committed_again, "never committed again");
    drop(conn);
    let v = faults::verify_after_faults(&server_db, &acked);
    assert_eq!(v.integrity, "ok");
    assert_eq!(v.lost, 0);
    assert!(v.unacked_present <= 1);
    assert_eq!(v.counter, v.rows);
}
