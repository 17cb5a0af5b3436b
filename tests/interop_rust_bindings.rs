//! The shim beside other Rust SQLite bindings (`interop/rust`, its own workspace): without its
//! default `rusqlite` feature the crate unifies with sqlx 0.8's libsqlite3-sys 0.30. A sqlx
//! writer (`register()`, then `SqliteConnectOptions::vfs("netfs")`) and a writer on raw
//! libsqlite3-sys calls (the VFS name to `sqlite3_open_v2`): four processes of each, split over
//! the two sshfs "hosts", keep every acknowledged commit.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::testbed::{TwoHostTestbed, testbed_or_skip};
use sqlite_netfs::rusqlite::{Connection, OpenFlags};

const WRITERS: usize = 4;
const TRANSACTIONS: u32 = 100;

fn interop() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/rust")
}

/// Builds `interop/rust` and returns the program `name`.
fn build(name: &str) -> PathBuf {
    let out = Command::new(env!("CARGO"))
        .args(["build", "--release", "--manifest-path"])
        .arg(interop().join("Cargo.toml"))
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "building interop/rust failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    interop().join("target/release").join(name)
}

#[test]
fn sqlx_writers_with_the_shim_keep_every_commit_on_two_sshfs_hosts() {
    writers_keep_every_commit("sqlx-writer");
}

#[test]
fn raw_libsqlite3_sys_writers_with_the_shim_keep_every_commit_on_two_sshfs_hosts() {
    writers_keep_every_commit("raw-writer");
}

fn writers_keep_every_commit(name: &str) {
    let program = build(name);
    let Some(testbed) = testbed_or_skip(TwoHostTestbed::sshfs()) else {
        return;
    };
    let logs = tempfile::tempdir().unwrap();
    let mounts = [testbed.mount_a(), testbed.mount_b()];
    let writers: Vec<_> = (0..WRITERS)
        .map(|i| {
            let log = std::fs::File::create(logs.path().join(format!("ack-{i}"))).unwrap();
            Command::new(&program)
                .arg(mounts[i % 2].join(format!("{name}.db")))
                .arg(i.to_string())
                .arg(TRANSACTIONS.to_string())
                .stdout(log)
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut failures = Vec::new();
    for (i, w) in writers.into_iter().enumerate() {
        let out = w.wait_with_output().unwrap();
        if !out.status.success() {
            failures.push(format!(
                "writer {i}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    let mut acked = HashSet::new();
    let mut modes = HashSet::new();
    for i in 0..WRITERS {
        let log = std::fs::read_to_string(logs.path().join(format!("ack-{i}"))).unwrap();
        for line in log.lines() {
            if let Some(seq) = line.strip_prefix("ack ") {
                acked.insert((i as i64, seq.parse::<i64>().unwrap()));
            } else if let Some(mode) = line.strip_prefix("journal_mode ") {
                modes.insert(mode.to_owned());
            }
        }
    }
    let db = testbed.server_dir().join(format!("{name}.db"));
    let conn = Connection::open_with_flags_and_vfs(&db, OpenFlags::SQLITE_OPEN_READ_ONLY, c"unix")
        .unwrap();
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    let present: HashSet<(i64, i64)> = conn
        .prepare("SELECT worker, seq FROM rows")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let lost = acked.difference(&present).count();
    eprintln!(
        "FIGURES {name} acknowledged={} rows={} lost={lost} integrity={integrity:?} journal_modes={modes:?} failures={}",
        acked.len(),
        present.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(acked.len(), WRITERS * TRANSACTIONS as usize);
    assert_eq!(lost, 0);
    assert_eq!(present.len(), acked.len());
    assert_eq!(integrity, "ok");
    // WAL was asked at connect; network mode runs a rollback journal.
    assert_eq!(modes, HashSet::from(["delete".to_owned()]));
}
