//! The opt-in check at open, `netfs_check=quick|full`: a damaged database fails the open with
//! a message naming `sqlite-netfs recover`, in native and in network mode; a healthy one opens;
//! an unknown value is refused by name; without the parameter nothing is checked.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sqlite_netfs::rusqlite::{Connection, ErrorCode};

fn database(dir: &Path, rows: i64) -> PathBuf {
    let db = dir.join("app.db");
    let conn = Connection::open(&db).unwrap();
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, x); BEGIN;")
        .unwrap();
    for i in 0..rows {
        conn.execute("INSERT INTO t(x) VALUES (randomblob(100 + ?1 % 7))", [i])
            .unwrap();
    }
    conn.execute_batch("COMMIT").unwrap();
    db
}

fn damage(db: &Path) {
    let f = std::fs::OpenOptions::new().write(true).open(db).unwrap();
    for page in [10u64, 11] {
        f.write_all_at(&[0xA5; 4096], (page - 1) * 4096).unwrap();
    }
}

#[test]
fn a_damaged_database_fails_the_open_naming_recover_in_either_mode() {
    sqlite_netfs::register().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = database(dir.path(), 2000);
    damage(&db);
    for (mode, check) in [("off", "quick"), ("on", "quick"), ("on", "full")] {
        let uri = format!(
            "file:{}?vfs=netfs&netfs={mode}&netfs_check={check}",
            db.display()
        );
        let err = Connection::open(&uri).expect_err("a damaged database opened");
        assert_eq!(
            err.sqlite_error_code(),
            Some(ErrorCode::DatabaseCorrupt),
            "{err}"
        );
        let message = err.to_string();
        println!("netfs={mode} netfs_check={check}: {message}");
        assert!(message.contains("is damaged"), "{message}");
        assert!(
            message.contains(&format!("sqlite-netfs recover {}", db.display())),
            "{message}"
        );
    }
    // Opt-in: without the parameter the open succeeds (and a read fails as SQLite's does).
    let conn = Connection::open(format!("file:{}?vfs=netfs", db.display())).unwrap();
    assert!(
        conn.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
            .is_err()
    );
}

#[test]
fn a_healthy_database_opens_with_the_check_and_a_bad_value_is_named() {
    sqlite_netfs::register().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = database(dir.path(), 100);
    let conn = Connection::open(format!(
        "file:{}?vfs=netfs&netfs=on&netfs_check=full",
        db.display()
    ))
    .unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 100);
    let err = Connection::open(format!(
        "file:{}?vfs=netfs&netfs_check=sometimes",
        db.display()
    ))
    .expect_err("an unknown value was accepted");
    let message = err.to_string();
    assert!(
        message.contains("netfs_check") && message.contains("\"sometimes\""),
        "{message}"
    );
}
