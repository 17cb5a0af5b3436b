//! The public contract, seen from one process: registration, URI selection, mode decision,
//! journal pinning, error messages, and locking between connections of one process.

mod common;

use std::path::Path;
use std::time::Duration;

use sqlite_netfs::rusqlite::{Connection, ErrorCode};

fn open(path: &Path, params: &str) -> sqlite_netfs::rusqlite::Result<Connection> {
    sqlite_netfs::register().unwrap();
    Connection::open(format!("file:{}?vfs=netfs{params}", path.display()))
}

#[test]
fn register_twice_is_fine_and_conflicting_options_are_refused() {
    sqlite_netfs::register().unwrap();
    sqlite_netfs::register().unwrap();
    let err = sqlite_netfs::Builder::new()
        .lease(Duration::from_secs(99))
        .register()
        .unwrap_err();
    assert!(err.to_string().contains("different options"), "{err}");
    let err = sqlite_netfs::Builder::new()
        .vfs_name("unix")
        .register()
        .unwrap_err();
    assert!(err.to_string().contains("someone else"), "{err}");
    let err = sqlite_netfs::Builder::new()
        .vfs_name("netfs-short-lease")
        .lease(Duration::from_millis(10))
        .register()
        .unwrap_err();
    assert!(err.to_string().contains("lease"), "{err}");
}

#[test]
fn network_mode_writes_reads_and_pins_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let conn = open(&db, "&netfs=on").unwrap();
    assert!(sqlite_netfs::network_mode_active(&conn));
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete");
    for m in ["truncate", "persist", "memory", "off"] {
        let got: String = conn
            .query_row(&format!("PRAGMA journal_mode={m}"), [], |r| r.get(0))
            .unwrap();
        assert_eq!(got, "delete", "journal_mode={m}");
    }
    conn.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
         BEGIN; INSERT INTO t(v) VALUES ('a'); INSERT INTO t(v) VALUES ('b'); COMMIT;",
    )
    .unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2);
    // The journal stays, empty; no WAL or shared memory is ever created.
    assert_eq!(common::siblings(&db), ["-journal", "-netfs-table"]);
    assert_eq!(
        std::fs::metadata(dir.path().join("app.db-journal"))
            .unwrap()
            .len(),
        0
    );
    let header = std::fs::read(&db).unwrap();
    assert_eq!((header[18], header[19]), (1, 1), "rollback-journal format");
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
}

#[test]
fn local_disk_in_auto_mode_is_native_with_wal() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("local.db");
    let conn = open(&db, "").unwrap();
    let detection = sqlite_netfs::detect(&db).unwrap();
    if detection.mode != sqlite_netfs::Mode::Native {
        eprintln!("SKIPPED: temp dir is not on a local filesystem here: {detection:?}");
        return;
    }
    assert!(!sqlite_netfs::network_mode_active(&conn));
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .unwrap();
    assert!(
        common::siblings(&db).contains(&"-shm".to_owned()),
        "{:?}",
        common::siblings(&db)
    );
    assert!(common::siblings(&db).contains(&"-wal".to_owned()));
}

#[test]
fn unknown_netfs_value_is_an_open_error_naming_parameter_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let err = open(&dir.path().join("x.db"), "&netfs=sometimes").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("netfs"), "{msg}");
    assert!(msg.contains("\"sometimes\""), "{msg}");
    assert_eq!(err.sqlite_error_code(), Some(ErrorCode::CannotOpen));
}

#[test]
fn connections_in_one_process_lock_like_processes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pool.db");
    let a = open(&db, "&netfs=on").unwrap();
    let b = open(&db, "&netfs=on").unwrap();
    a.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .unwrap();
    // a holds RESERVED; b can read but not write.
    a.execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (2);")
        .unwrap();
    let n: i64 = b
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1, "b sees only committed rows");
    let err = b.execute("INSERT INTO t VALUES (3)", []).unwrap_err();
    assert_eq!(err.sqlite_error_code(), Some(ErrorCode::DatabaseBusy));
    // b holds a read transaction: a cannot commit (EXCLUSIVE) until b finishes.
    b.execute_batch("BEGIN; SELECT count(*) FROM t;").unwrap();
    let err = a.execute_batch("COMMIT").unwrap_err();
    assert_eq!(err.sqlite_error_code(), Some(ErrorCode::DatabaseBusy));
    b.execute_batch("COMMIT").unwrap();
    a.execute_batch("COMMIT").unwrap();
    let n: i64 = b
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2);
}

#[test]
fn busy_timeout_waits_for_a_lock_then_gets_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("busy.db");
    let a = open(&db, "&netfs=on").unwrap();
    a.execute_batch("CREATE TABLE t(x);").unwrap();
    a.execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (1);")
        .unwrap();
    let path = db.clone();
    let waiter = std::thread::spawn(move || {
        let b = open(&path, "&netfs=on").unwrap();
        b.busy_timeout(Duration::from_secs(10)).unwrap();
        let t = std::time::Instant::now();
        b.execute("INSERT INTO t VALUES (2)", []).unwrap();
        t.elapsed()
    });
    std::thread::sleep(Duration::from_millis(400));
    a.execute_batch("COMMIT").unwrap();
    let waited = waiter.join().unwrap();
    assert!(
        waited >= Duration::from_millis(300),
        "did not wait: {waited:?}"
    );
    let n: i64 = a
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2);
    // Without a busy timeout, BUSY comes back promptly.
    a.execute_batch("BEGIN IMMEDIATE").unwrap();
    let c = open(&db, "&netfs=on").unwrap();
    c.busy_timeout(Duration::ZERO).unwrap(); // rusqlite's default is 5 s
    let t = std::time::Instant::now();
    let err = c.execute("INSERT INTO t VALUES (3)", []).unwrap_err();
    assert_eq!(err.sqlite_error_code(), Some(ErrorCode::DatabaseBusy));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    a.execute_batch("COMMIT").unwrap();
}

#[test]
fn network_mode_open_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir").join("x.db");
    let msg = open(&missing, "&netfs=on").unwrap_err().to_string();
    assert!(msg.contains("no-such-dir"), "{msg}");
    let is_dir = dir.path().join("a-directory.db");
    std::fs::create_dir(&is_dir).unwrap();
    let msg = open(&is_dir, "&netfs=on").unwrap_err().to_string();
    assert!(msg.contains("is a directory"), "{msg}");
}

#[test]
fn environment_variable_applies_where_the_uri_says_nothing() {
    // Its own process: the environment is process-wide.
    if std::env::var_os("NETFS_ENV_TEST_CHILD").is_none() {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "environment_variable_applies_where_the_uri_says_nothing",
                "--test-threads=1",
            ])
            .env("NETFS_ENV_TEST_CHILD", "1")
            .env("SQLITE_NETFS", "on")
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let conn = open(&dir.path().join("env.db"), "").unwrap();
    assert!(
        sqlite_netfs::network_mode_active(&conn),
        "SQLITE_NETFS=on was ignored"
    );
    let conn = open(&dir.path().join("env2.db"), "&netfs=off").unwrap();
    assert!(
        !sqlite_netfs::network_mode_active(&conn),
        "the URI must win over the environment"
    );
    let detection = sqlite_netfs::detect(&dir.path().join("env.db")).unwrap();
    assert_eq!(detection.source, sqlite_netfs::DecisionSource::Environment);
}
