//! Fault 6: read-only storage in forced network mode. The lock files live beside the
//! database, so a directory this user cannot write, or a read-only mount, leaves network mode
//! without its locks. Reading without them is unsafe while another host may write, so the open
//! is refused with a message naming the directory and the way out (`immutable=1` for a
//! database nothing writes to); with `immutable=1` reads work and writes get
//! SQLITE_READONLY. Nothing hangs, and nothing written before is lost.
//!
//! Root ignores directory permission bits, so the permission case runs its probe as `nobody`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::scratch::{self, NOBODY, ProbeReport};
use sqlite_netfs::rusqlite::Connection;

#[test]
#[ignore = "probe process entry point, spawned by the tests in this file"]
fn probe_process() {
    common::scratch::probe_from_env()
}

/// A probe never waits longer than this (the longest VFS wait is 5 s for an unlock).
const PROBE_DEADLINE: Duration = Duration::from_secs(30);

fn create_with_rows(db: &Path, rows: i64) {
    sqlite_netfs::register().unwrap();
    let conn = Connection::open(format!("file:{}?vfs=netfs&netfs=on", db.display())).unwrap();
    conn.execute_batch("CREATE TABLE t(x)").unwrap();
    for _ in 0..rows {
        conn.execute("INSERT INTO t VALUES (randomblob(100))", [])
            .unwrap();
    }
}

fn uri(db: &Path, params: &str) -> String {
    format!("file:{}?vfs=netfs&netfs=on{params}", db.display())
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn assert_refused_naming(report: &ProbeReport, dir: &Path, why: &str) {
    assert!(!report.hung, "{report:?}");
    let msg = report.open.as_ref().expect_err("the open must be refused");
    assert!(msg.contains(&dir.display().to_string()), "{msg}");
    assert!(msg.contains(why), "{msg}");
    assert!(msg.contains("immutable=1"), "{msg}");
    eprintln!("refused as expected: {msg}");
}

fn figures(name: &str, probes: &[&ProbeReport]) {
    let max = probes.iter().map(|p| p.elapsed).max().unwrap_or_default();
    let hung = probes.iter().filter(|p| p.hung).count();
    eprintln!(
        "FIGURES fault={name} testbed=local runs={} hung={hung} lost=0 corrupt=0 probe_ms_max={}",
        probes.len(),
        max.as_millis()
    );
}

#[test]
fn unwritable_database_directory_refuses_network_mode_by_name_and_immutable_reads_work() {
    let top = tempfile::tempdir().unwrap();
    chmod(top.path(), 0o755);
    let dir = top.path().join("shared");
    std::fs::create_dir(&dir).unwrap();
    let db = dir.join("app.db");
    create_with_rows(&db, 5);
    // Everyone may read and even write the files; only the directory is closed to nobody.
    for entry in std::fs::read_dir(&dir).unwrap() {
        chmod(&entry.unwrap().path(), 0o666);
    }
    chmod(&dir, 0o555);

    let read_write = scratch::probe(
        Some(NOBODY),
        &uri(&db, ""),
        &["read", "write"],
        PROBE_DEADLINE,
    );
    assert_refused_naming(&read_write, &dir, "not writable");
    let read_only = scratch::probe(
        Some(NOBODY),
        &uri(&db, "&mode=ro"),
        &["read"],
        PROBE_DEADLINE,
    );
    assert_refused_naming(&read_only, &dir, "not writable");

    let immutable = scratch::probe(
        Some(NOBODY),
        &uri(&db, "&immutable=1"),
        &["read", "write"],
        PROBE_DEADLINE,
    );
    assert!(!immutable.hung, "{immutable:?}");
    assert_eq!(immutable.step("read"), &Ok("5".to_owned()), "{immutable:?}");
    let write = immutable.step("write").as_ref().unwrap_err();
    assert!(write.starts_with("ReadOnly"), "{write}");

    // Nothing was created in, or lost from, the directory.
    chmod(&dir, 0o755);
    let conn = Connection::open(uri(&db, "")).unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 5);
    figures(
        "read-only-directory",
        &[&read_write, &read_only, &immutable],
    );
}

#[test]
fn read_only_mount_refuses_network_mode_by_name_then_writes_resume_after_remount() {
    let Some(fs) = scratch::mount_or_skip("size=4m") else {
        return;
    };
    let db = fs.path().join("app.db");
    create_with_rows(&db, 7);
    fs.remount("ro");

    let started = Instant::now();
    let read_write = scratch::probe(None, &uri(&db, ""), &["read", "write"], PROBE_DEADLINE);
    assert_refused_naming(&read_write, fs.path(), "read-only");
    let read_only = scratch::probe(None, &uri(&db, "&mode=ro"), &["read"], PROBE_DEADLINE);
    assert_refused_naming(&read_only, fs.path(), "read-only");
    let immutable = scratch::probe(
        None,
        &uri(&db, "&immutable=1"),
        &["read", "write"],
        PROBE_DEADLINE,
    );
    assert!(!immutable.hung, "{immutable:?}");
    assert_eq!(immutable.step("read"), &Ok("7".to_owned()), "{immutable:?}");
    let write = immutable.step("write").as_ref().unwrap_err();
    assert!(write.starts_with("ReadOnly"), "{write}");
    eprintln!("read-only mount probes took {:?}", started.elapsed());

    fs.remount("rw");
    let after = scratch::probe(None, &uri(&db, ""), &["write"], PROBE_DEADLINE);
    assert_eq!(after.step("write"), &Ok("8".to_owned()), "{after:?}");
    let conn = Connection::open_with_flags_and_vfs(
        &db,
        sqlite_netfs::rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        c"unix",
    )
    .unwrap();
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    drop(conn);
    figures(
        "read-only-mount",
        &[&read_write, &read_only, &immutable, &after],
    );
}
