//! Fault 8: bad open input in forced network mode. Each case is an error that names the
//! problem, or SQLite's own answer where SQLite has one, and the file is never damaged.
//! Already proven in `single_process_contract.rs`: an unknown `netfs=` URI value
//! (`unknown_netfs_value_is_an_open_error_naming_parameter_and_value`), a missing directory
//! and a directory in the database's place (`network_mode_open_errors_name_the_problem`).
//! That no panic crosses into C is proven in `src/vfs/mod.rs`
//! (`a_panic_in_any_callback_reaches_sqlite_as_an_error_code`).

mod common;

use std::path::Path;
use std::time::Duration;

use common::scratch;
use sqlite_netfs::rusqlite::{Connection, ErrorCode};

#[test]
#[ignore = "probe process entry point, spawned by the tests in this file"]
fn probe_process() {
    common::scratch::probe_from_env()
}

fn open(path: &Path) -> sqlite_netfs::rusqlite::Result<Connection> {
    sqlite_netfs::register().unwrap();
    Connection::open(format!("file:{}?vfs=netfs&netfs=on", path.display()))
}

#[test]
fn unknown_sqlite_netfs_environment_value_is_an_open_error_naming_variable_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let report = scratch::probe_with_env(
        None,
        &format!("file:{}?vfs=netfs", dir.path().join("x.db").display()),
        &["read"],
        Duration::from_secs(30),
        &[("SQLITE_NETFS", "sometimes")],
    );
    let msg = report.open.as_ref().expect_err("the open must be refused");
    assert!(msg.contains("SQLITE_NETFS"), "{msg}");
    assert!(msg.contains("\"sometimes\""), "{msg}");
    assert!(msg.starts_with("CannotOpen"), "{msg}");
}

#[test]
fn a_file_that_is_not_a_database_is_refused_as_such_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    for (case, bytes) in [
        ("text", b"this is not a database\n".repeat(200)),
        ("short-header", b"SQLite format 3\0\x10\x00".to_vec()),
        (
            "random",
            (0..8192u32).map(|i| (i * 7919 % 251) as u8).collect(),
        ),
    ] {
        let path = dir.path().join(format!("{case}.db"));
        std::fs::write(&path, &bytes).unwrap();
        // SQLite reads the file at the first statement, not at open.
        let conn = open(&path).unwrap();
        let err = conn
            .execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap_err();
        assert_eq!(
            err.sqlite_error_code(),
            Some(ErrorCode::NotADatabase),
            "{case}: {err}"
        );
        assert!(err.to_string().contains("not a database"), "{case}: {err}");
        drop(conn);
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "{case} was modified");
    }
}

#[test]
fn an_empty_file_is_a_new_database_as_in_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.db");
    std::fs::write(&path, b"").unwrap();
    let conn = open(&path).unwrap();
    assert!(sqlite_netfs::network_mode_active(&conn));
    conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
}

/// SQLite resolves the path (`xFullPathname` of the `unix` VFS, which the shim forwards)
/// before any open reaches the shim, so the answer is SQLite's own, the same without it.
#[test]
fn a_file_in_place_of_the_database_directory_fails_as_in_plain_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let shim = open(&file.join("x.db")).unwrap_err();
    let plain = Connection::open_with_flags_and_vfs(
        file.join("x.db"),
        sqlite_netfs::rusqlite::OpenFlags::default(),
        c"unix",
    )
    .unwrap_err();
    assert_eq!(
        shim.sqlite_error_code(),
        Some(ErrorCode::CannotOpen),
        "{shim}"
    );
    assert_eq!(shim.sqlite_error_code(), plain.sqlite_error_code());
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
}
