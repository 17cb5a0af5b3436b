//! Fault 7: hostile or broken lock state. Each case ends in a clear error naming the file, or
//! in a safe recovery:
//! - a lock table with garbage or truncated contents (local disk in forced network mode, and
//!   written at the file server of each testbed while the shim opens through a client);
//! - lock files of another user with mode 0600 (the shim runs as `nobody`);
//! - a symbolic link planted where a lock file goes (never followed; its target untouched),
//!   before the open or while a connection is open; a latch an NFS client made as a link is
//!   no such link;
//! - a latch and a lock-table entry left by a crash on a host that no longer exists
//!   (recovered after the lease, the half-done transaction rolled back; local disk and both
//!   testbeds).
//!
//! The other-user and symbolic-link cases run on a local disk only: the testbeds' servers run
//! as root and map every client to one user, and neither SFTP nor smbnetfs passes a symbolic
//! link through as one.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::faults::DbPlace;
use common::scratch::{self, NOBODY};
use common::testbed::{TwoHostTestbed, testbed_or_skip};
use sqlite_netfs::rusqlite::{Connection, ErrorCode, OpenFlags};

#[test]
#[ignore = "probe process entry point, spawned by the tests in this file"]
fn probe_process() {
    common::scratch::probe_from_env()
}

/// A VFS with the shortest lease, so recoveries by lease fit a test.
const SHORT_LEASE_VFS: &str = "netfs-lease2";
const SHORT_LEASE: Duration = Duration::from_secs(2);
const PROBE_DEADLINE: Duration = Duration::from_secs(30);

fn register_short_lease() {
    sqlite_netfs::Builder::new()
        .vfs_name(SHORT_LEASE_VFS)
        .lease(SHORT_LEASE)
        .register()
        .unwrap();
}

fn uri(db: &Path) -> String {
    format!("file:{}?vfs=netfs&netfs=on", db.display())
}

fn lock_file(db: &Path, suffix: &str) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// A database with `rows` rows in `t`, written through the shim (so its lock table exists),
/// readable and writable by everyone, in a directory everyone may write.
fn shared_database(rows: i64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let db = dir.path().join("app.db");
    sqlite_netfs::register().unwrap();
    let conn = Connection::open(uri(&db)).unwrap();
    conn.execute_batch("CREATE TABLE t(x)").unwrap();
    for _ in 0..rows {
        conn.execute("INSERT INTO t VALUES (randomblob(100))", [])
            .unwrap();
    }
    drop(conn);
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        std::fs::set_permissions(
            entry.unwrap().path(),
            std::fs::Permissions::from_mode(0o666),
        )
        .unwrap();
    }
    (dir, db)
}

fn host_a_uri(place: &DbPlace) -> String {
    format!(
        "file:{}?vfs=netfs{}",
        place.host_a.display(),
        place.uri_params
    )
}

/// A database with `rows` rows in `t` at `place`, written through the shim from host A.
fn database_at(place: &DbPlace, rows: i64) {
    sqlite_netfs::register().unwrap();
    let conn = Connection::open(host_a_uri(place)).unwrap();
    conn.execute_batch("CREATE TABLE t(x)").unwrap();
    for _ in 0..rows {
        conn.execute("INSERT INTO t VALUES (randomblob(100))", [])
            .unwrap();
    }
}

/// A connection from host B with the short lease.
fn short_lease_connection(place: &DbPlace) -> Connection {
    register_short_lease();
    Connection::open(format!(
        "file:{}?vfs={SHORT_LEASE_VFS}{}",
        place.host_b.display(),
        place.uri_params
    ))
    .unwrap()
}

fn count(conn: &Connection) -> sqlite_netfs::rusqlite::Result<i64> {
    conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
}

fn integrity(db: &Path) -> String {
    let conn =
        Connection::open_with_flags_and_vfs(db, OpenFlags::SQLITE_OPEN_READ_ONLY, c"unix").unwrap();
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

/// The lock table is mangled at the file server; host B's connection must refuse to answer
/// until the table has stayed unreadable for a lease, then replace it. Each case gets its own
/// database, `place_of(case)`.
fn unreadable_table_is_an_error_until_replaced_after_a_lease(place_of: impl Fn(&str) -> DbPlace) {
    let mut testbed = "";
    let mut recoveries = Vec::new();
    for (case, mangle) in [
        (
            "garbage",
            (|_: Vec<u8>| b"\x00\x01garbage\xff\xfe".to_vec()) as fn(Vec<u8>) -> Vec<u8>,
        ),
        ("truncated", |t: Vec<u8>| {
            t[..t.iter().position(|&b| b == b'\n').unwrap() + 5].to_vec()
        }),
        ("plausible-text", |_| {
            b"holder me at EXCLUSIVE forever\n".repeat(100)
        }),
    ] {
        let place = &place_of(&format!("{case}.db"));
        testbed = place.testbed;
        database_at(place, 3);
        let table = lock_file(&place.server, "-netfs-table");
        let original = std::fs::read(&table).unwrap();
        std::fs::write(&table, mangle(original)).unwrap();
        let conn = short_lease_connection(place);
        let started = Instant::now();
        // Nobody can tell who holds what: no answer from the database, never a wrong one.
        let err = count(&conn).unwrap_err();
        assert_eq!(
            err.sqlite_error_code(),
            Some(ErrorCode::SystemIoFailure),
            "{case}: {err}"
        );
        let rows = loop {
            match conn.execute("INSERT INTO t VALUES (randomblob(100))", []) {
                Ok(_) => break count(&conn).unwrap(),
                Err(e) => {
                    assert_eq!(
                        e.sqlite_error_code(),
                        Some(ErrorCode::SystemIoFailure),
                        "{case}: {e}"
                    );
                    assert!(
                        started.elapsed() < SHORT_LEASE * 5,
                        "{case}: never replaced"
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        };
        let recovered = started.elapsed();
        assert!(
            recovered >= SHORT_LEASE,
            "{case}: replaced after {recovered:?}"
        );
        assert_eq!(rows, 4, "{case}");
        drop(conn);
        assert_eq!(integrity(&place.server), "ok", "{case}");
        eprintln!("{case}: lock table replaced after {recovered:?}");
        recoveries.push(recovered);
    }
    recoveries.sort();
    eprintln!(
        "FIGURES fault=unreadable-lock-table testbed={} runs={} lost=0 corrupt=0 lease_ms={} recovery_ms_median={} recovery_ms_max={}",
        testbed,
        recoveries.len(),
        SHORT_LEASE.as_millis(),
        recoveries[recoveries.len() / 2].as_millis(),
        recoveries.last().unwrap().as_millis()
    );
}

#[test]
fn lock_files_of_another_user_with_mode_0600_are_refused_at_open_by_name() {
    for suffix in ["-netfs-table", "-netfs-latch"] {
        let (_dir, db) = shared_database(2);
        let file = lock_file(&db, suffix);
        std::fs::write(&file, b"root's own\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let report = scratch::probe(Some(NOBODY), &uri(&db), &["read", "write"], PROBE_DEADLINE);
        assert!(!report.hung, "{report:?}");
        let msg = report.open.as_ref().expect_err("the open must be refused");
        assert!(msg.contains(&file.display().to_string()), "{msg}");
        assert!(msg.contains("owner uid 0, mode 600"), "{msg}");
        eprintln!("{suffix}: refused as expected: {msg}");
    }
}

#[test]
fn symlink_planted_where_a_lock_file_goes_is_refused_and_its_target_is_untouched() {
    for suffix in ["-netfs-table", "-netfs-latch", "-netfs-break"] {
        let (dir, db) = shared_database(2);
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let link = lock_file(&db, suffix);
        // The table exists already: the link replaces it, as an attacker's would.
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let dangling_target = dir.path().join("would-be-created");
        let dangling = lock_file(&dir.path().join("other.db"), suffix);
        std::os::unix::fs::symlink(&dangling_target, &dangling).unwrap();

        for (db, link) in [(&db, &link), (&dir.path().join("other.db"), &dangling)] {
            let report = scratch::probe(None, &uri(db), &["read", "write"], PROBE_DEADLINE);
            assert!(!report.hung, "{report:?}");
            let msg = report.open.as_ref().expect_err("the open must be refused");
            assert!(msg.contains("symbolic link"), "{msg}");
            assert!(msg.contains(&link.display().to_string()), "{msg}");
        }
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(
            !dangling_target.exists(),
            "a file was created through a dangling link"
        );
        assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    }
}

#[test]
fn symlink_planted_at_the_latch_after_the_open_is_an_error_not_a_wait() {
    let (dir, db) = shared_database(2);
    let conn = Connection::open(uri(&db)).unwrap();
    conn.busy_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(count(&conn).unwrap(), 2);
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    std::os::unix::fs::symlink(&victim, lock_file(&db, "-netfs-latch")).unwrap();
    let started = Instant::now();
    let err = conn
        .execute("INSERT INTO t VALUES (1)", [])
        .expect_err("no lock can be taken past a planted latch");
    let waited = started.elapsed();
    assert_ne!(
        err.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy),
        "{err}"
    );
    assert!(waited < Duration::from_secs(5), "waited {waited:?}: {err}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    eprintln!("latch symlink planted after open: {err} after {waited:?}");
}

#[test]
fn a_latch_made_as_a_link_by_an_nfs_peer_that_vanished_is_a_lock_recovered_after_the_lease() {
    register_short_lease();
    let (_dir, db) = shared_database(2);
    // As an NFS client writes its latch: a link whose target is its owner id and count.
    let latch = lock_file(&db, "-netfs-latch");
    std::os::unix::fs::symlink("vanished-host 7 1 1 3\n", &latch).unwrap();
    let conn = Connection::open(format!(
        "file:{}?vfs={SHORT_LEASE_VFS}&netfs=on",
        db.display()
    ))
    .expect("a link token is a held latch, not a planted link");
    conn.busy_timeout(Duration::from_secs(20)).unwrap();
    let started = Instant::now();
    conn.execute("INSERT INTO t VALUES (3)", []).unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= SHORT_LEASE,
        "the live-looking latch was not waited for: {waited:?}"
    );
    assert_eq!(count(&conn).unwrap(), 3);
    assert!(
        std::fs::symlink_metadata(&latch).is_err(),
        "the dead latch stayed"
    );
}

/// A host A process of a host that then vanished; host B's connection recovers.
fn crashed_host_lock_files_are_recovered_after_the_lease(place: &DbPlace) {
    database_at(place, 4);
    // A process of a host that then vanished: dies holding RESERVED mid-transaction.
    let ghost = scratch::probe_with_env(
        None,
        &host_a_uri(place),
        &["hold"],
        Duration::from_secs(3),
        &[(sqlite_netfs::HOST_ID_ENV, "vanished-host")],
    );
    assert_eq!(ghost.step("hold"), &Ok("held".to_owned()), "{ghost:?}");
    assert!(ghost.hung, "the ghost was to be killed holding its lock");
    // And its latch, as if it died inside a table edit: a file, or on smbnetfs (whose
    // exclusive create is not exclusive) a directory holding an `owner` file.
    let latch = lock_file(&place.server, "-netfs-latch");
    let owner: &[u8] = b"vanished-host 4242 99 1 7\n";
    if place.testbed == "smb" {
        std::fs::create_dir(&latch).unwrap();
        std::fs::write(latch.join("owner"), owner).unwrap();
    } else {
        std::fs::write(&latch, owner).unwrap();
    }

    let conn = short_lease_connection(place);
    conn.busy_timeout(Duration::from_secs(20)).unwrap();
    let started = Instant::now();
    conn.execute("INSERT INTO t VALUES (randomblob(100))", [])
        .unwrap();
    let recovered = started.elapsed();
    assert_eq!(count(&conn).unwrap(), 5, "the ghost's row was rolled back");
    assert!(
        recovered >= SHORT_LEASE / 2,
        "broken before a lease could pass: {recovered:?}"
    );
    assert!(recovered < SHORT_LEASE * 5, "{recovered:?}");
    assert!(!latch.exists());
    drop(conn);
    assert_eq!(integrity(&place.server), "ok");
    eprintln!(
        "FIGURES fault=crashed-host-lock-files testbed={} runs=1 txns=1 lost=0 corrupt=0 lease_ms={} recovery_ms={}",
        place.testbed,
        SHORT_LEASE.as_millis(),
        recovered.as_millis()
    );
}

#[test]
fn garbage_or_truncated_lock_table_is_an_error_until_replaced_after_a_lease() {
    let dir = tempfile::tempdir().unwrap();
    unreadable_table_is_an_error_until_replaced_after_a_lease(|name| {
        DbPlace::local(dir.path(), name)
    });
}

#[test]
fn latch_and_lock_left_by_a_crashed_host_are_recovered_after_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    crashed_host_lock_files_are_recovered_after_the_lease(&DbPlace::local(dir.path(), "app.db"));
}

fn broken_lock_state_at_the_file_server(testbed: Result<TwoHostTestbed, String>) {
    if let Some(tb) = testbed_or_skip(testbed) {
        unreadable_table_is_an_error_until_replaced_after_a_lease(|name| DbPlace::on(&tb, name));
        crashed_host_lock_files_are_recovered_after_the_lease(&DbPlace::on(&tb, "crashed.db"));
    }
}

#[test]
fn broken_lock_state_written_at_the_file_server_is_recovered_on_sshfs() {
    broken_lock_state_at_the_file_server(TwoHostTestbed::sshfs());
}

#[test]
fn broken_lock_state_written_at_the_file_server_is_recovered_on_smb() {
    broken_lock_state_at_the_file_server(TwoHostTestbed::smb());
}
