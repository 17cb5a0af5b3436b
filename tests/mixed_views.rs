//! Mixed views: one database that one host sees on its local disk while another reaches the
//! same directory over a network filesystem (a VM or container whose data dir is the host's
//! directory through 9p or virtiofs). Both sides use the shim in auto mode: the host would
//! pick native WAL, the other side network mode, and nothing would make them agree.
//!
//! Here the sshfs testbed's server directory is the host's local disk and a mount is the
//! guest's view of it (the VM topology, with sshfs in place of 9p, is issue 10's).
//!
//! | order        | what must happen |
//! |--------------|------------------|
//! | guest first  | its lock files make the host's shim choose network mode: both write, nothing lost |
//! | host first, in WAL mode | the guest's open is refused with what to do; once the host reopens, both write |

mod common;

use std::path::Path;
use std::time::Duration;

use common::stress::{self, StressPlan};
use common::testbed::{TwoHostTestbed, testbed_or_skip};
use common::worker;
use sqlite_netfs::rusqlite::{Connection, OpenFlags};
use sqlite_netfs::{DecisionSource, FsClass};

#[test]
#[ignore = "worker process entry point, spawned by the tests in this file"]
fn worker_process() {
    common::worker::run_from_env()
}

fn open_auto(db: &Path) -> sqlite_netfs::rusqlite::Result<Connection> {
    sqlite_netfs::register().unwrap();
    let conn = Connection::open_with_flags(
        format!("file:{}?vfs=netfs", db.display()),
        OpenFlags::default(),
    )?;
    conn.busy_timeout(Duration::from_secs(30))?;
    Ok(conn)
}

/// A native connection in WAL mode, as an application on the host opens its database, with
/// `rows` rows committed and the connection kept open.
fn native_wal_writer(db: &Path, rows: i64) -> Connection {
    let conn = Connection::open_with_flags_and_vfs(db, OpenFlags::default(), c"unix").unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    for i in 0..rows {
        conn.execute(
            "INSERT INTO rows(worker, seq, payload) VALUES (100, ?1, x'01')",
            [i],
        )
        .unwrap();
        conn.execute("UPDATE counter SET v = v + 1 WHERE id = 1", [])
            .unwrap();
    }
    conn
}

/// Two writers on the host's local view, two on the guest's network view, and a reader on the
/// guest's: everything acknowledged is in the file, nothing torn, no error but BUSY.
fn both_sides_write(testbed: &TwoHostTestbed, label: &str, db_name: &str) {
    let mut plan = StressPlan::new(
        label,
        vec![
            testbed.server_dir().to_owned(),
            testbed.mount_a().to_owned(),
        ],
        testbed.server_dir().to_owned(),
        "netfs",
    );
    plan.journal_mode = "WAL".into();
    plan.transactions = 100;
    let report = stress::run_on(&plan, db_name, &[]);
    assert!(report.reader_checks > 0, "{}", report.summary());
    assert!(report.correct(), "{}", report.summary());
    assert_eq!(report.acknowledged, 4 * 100);
}

#[test]
fn a_host_on_its_local_disk_joins_network_mode_when_a_guest_opened_the_database_first() {
    let Some(testbed) = testbed_or_skip(TwoHostTestbed::sshfs()) else {
        return;
    };
    let db_name = "guest-first.db";
    worker::create_schema(&testbed.server_dir().join(db_name));
    let guest = open_auto(&testbed.mount_a().join(db_name)).unwrap();
    assert!(sqlite_netfs::network_mode_active(&guest));
    let host = open_auto(&testbed.server_dir().join(db_name)).unwrap();
    let detection = sqlite_netfs::detect(&testbed.server_dir().join(db_name)).unwrap();
    assert_eq!(detection.class, FsClass::Local, "{detection:?}");
    assert_eq!(detection.source, DecisionSource::LockFiles, "{detection:?}");
    assert!(
        sqlite_netfs::network_mode_active(&host),
        "the host must follow the lock files, not its local disk: {detection:?}"
    );
    drop((guest, host));
    both_sides_write(&testbed, "guest-first", db_name);
}

#[test]
fn a_guest_is_refused_by_name_while_the_host_writes_in_wal_mode_and_joins_after() {
    let Some(testbed) = testbed_or_skip(TwoHostTestbed::sshfs()) else {
        return;
    };
    let db_name = "host-first.db";
    let host_db = testbed.server_dir().join(db_name);
    worker::create_schema(&host_db);
    let host = native_wal_writer(&host_db, 50);

    let refused = open_auto(&testbed.mount_a().join(db_name))
        .and_then(|c| c.query_row("SELECT count(*) FROM rows", [], |r| r.get::<_, i64>(0)));
    let message = refused
        .expect_err("the guest must not convert a WAL the host is writing")
        .to_string();
    for words in ["WAL mode", "-shm", "netfs=on"] {
        assert!(message.contains(words), "{words:?} missing from: {message}");
    }
    // The host goes on, and loses nothing.
    host.execute("UPDATE counter SET v = v + 1 WHERE id = 1", [])
        .unwrap();
    host.execute(
        "INSERT INTO rows(worker, seq, payload) VALUES (100, 50, x'01')",
        [],
    )
    .unwrap();
    drop(host);

    // The host's next open follows the lock files the guest's attempt left: network mode,
    // converting the WAL with every row; then both sides write.
    let host = open_auto(&host_db).unwrap();
    assert!(sqlite_netfs::network_mode_active(&host));
    let (v, n): (i64, i64) = host
        .query_row(
            "SELECT (SELECT v FROM counter WHERE id = 1), (SELECT count(*) FROM rows)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((v, n), (51, 51));
    // The shared run counts from zero.
    host.execute_batch("DELETE FROM rows; UPDATE counter SET v = 0 WHERE id = 1")
        .unwrap();
    drop(host);
    both_sides_write(&testbed, "host-first", db_name);
}

#[test]
fn on_one_host_a_network_mode_open_refuses_a_wal_database_a_native_connection_holds() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("held.db");
    worker::create_schema(&db);
    let native = native_wal_writer(&db, 10);
    sqlite_netfs::register().unwrap();
    let forced = Connection::open_with_flags(
        format!("file:{}?vfs=netfs&netfs=on", db.display()),
        OpenFlags::default(),
    )
    .and_then(|c| c.query_row("SELECT count(*) FROM rows", [], |r| r.get::<_, i64>(0)));
    let message = forced
        .expect_err("converted under a live WAL connection")
        .to_string();
    assert!(
        message.contains("open in WAL mode by a process"),
        "{message}"
    );
    let rows: i64 = native
        .query_row("SELECT count(*) FROM rows", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 10);
    drop(native);
    let forced = Connection::open_with_flags(
        format!("file:{}?vfs=netfs&netfs=on", db.display()),
        OpenFlags::default(),
    )
    .unwrap();
    let rows: i64 = forced
        .query_row("SELECT count(*) FROM rows", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        rows, 10,
        "converted with every row once the native connection closed"
    );
}
