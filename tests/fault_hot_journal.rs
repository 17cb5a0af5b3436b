//! A writer dies at EXCLUSIVE with pages spilled into the database file, leaving a hot journal,
//! while a reader in another process has been reading all along. The reader has seen the
//! journal empty, and the shim answers its later hot-journal checks from that for as long as
//! the lock table's generation stays the same. Its next read must still find the hot journal
//! and roll the dead writer's pages back.
//!
//! A writer through the shim is removed from the table as stale, which moves the generation
//! on (`a_dead_writers_hot_journal_is_found_while_the_readers_mount_is_busy_writing` proves it
//! across two sshfs mounts, where the reader's cache still says the journal is empty). A plain
//! SQLite process on the same host never touches the table: its journal is seen through the
//! size this host's kernel reports. That is the case here.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use common::faults::{self, DbPlace};

/// Starts a plain SQLite (Python) writer on `db` and kills it once it holds EXCLUSIVE with
/// its transaction spilled into the database file: a small page cache makes SQLite spill
/// before COMMIT.
fn kill_a_plain_sqlite_writer_holding_spilled_pages(db: &Path) {
    let script = format!(
        r#"
import sqlite3, time
c = sqlite3.connect({db:?}, isolation_level=None)
c.execute("PRAGMA cache_size=10")
c.execute("BEGIN IMMEDIATE")
c.execute("UPDATE counter SET v = v + 1000 WHERE id = 1")
for i in range(200):
    c.execute("INSERT INTO rows(worker, txn, part, parts, payload) VALUES (7, 1, ?, 200, zeroblob(3000))", (i,))
print("holding", flush=True)
time.sleep(600)
"#,
        db = db.display().to_string()
    );
    let mut python = Command::new("python3")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 is needed for this test");
    let mut line = String::new();
    BufReader::new(python.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "holding", "the plain SQLite writer failed");
    python.kill().unwrap();
    python.wait().unwrap();
}

/// The reader reads twice (the second read is answered from what the first saw of the
/// journal), the writer dies, and a new connection in the reader's process reads again (the
/// first one's page cache would still hold the pages from before: the dead writer never
/// changed page 1's change counter).
#[test]
fn a_reader_that_saw_the_journal_empty_rolls_back_a_killed_plain_sqlite_writers_hot_journal() {
    let dir = tempfile::tempdir().unwrap();
    let place = DbPlace::local(dir.path(), "plain-writer.db");
    faults::create_fault_schema(&place.server);
    let reader = faults::open_observer(&place.host_b, &place.uri_params, None);
    let before = faults::counter_and_rows(&reader).unwrap();
    assert_eq!(faults::counter_and_rows(&reader).unwrap(), before);
    kill_a_plain_sqlite_writer_holding_spilled_pages(&place.host_a);
    let journal = place.server.with_extension("db-journal");
    assert!(
        std::fs::metadata(&journal).is_ok_and(|m| m.len() > 0),
        "the writer left no journal: the test proves nothing"
    );
    let fresh = faults::open_observer(&place.host_b, &place.uri_params, None);
    let after = faults::counter_and_rows(&fresh)
        .unwrap_or_else(|e| panic!("the read after the writer died failed: {e}"));
    assert_eq!(
        after, before,
        "the reader saw a dead writer's uncommitted pages (counter, rows)"
    );
    let check: String = fresh
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}
