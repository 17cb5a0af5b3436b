//! sshfs keeps file attributes in its own cache for 20 s and answers even a forced `statx` from
//! it. A fresh open refreshes the entry, but not when another write on the same mount completes
//! while the open is in flight: sshfs then keeps the old entry. A reader whose database grew on
//! the other host then finds page 1 announcing more pages than the file's size
//! ("database disk image is malformed"), and a hot journal whose size is taken from the cache
//! looks empty, so a dead writer's half-written pages are read as if committed.
//!
//! In both tests a thread on host B writes another file without pause, so the race comes up
//! at nearly every open. Without the shim's attribute change before it asks a size (see
//! `lockfile::SizeRefresh`), every read of the growth test answered "malformed" (60 of 60),
//! and 10 of 12 new connections in the dead-writer test read the dead writer's counter
//! without its rows: the soak's "malformed" and torn reads.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::faults::{self, Slot};
use common::testbed::{TwoHostTestbed, testbed_or_skip};
use common::worker::{Job, Payload};

#[test]
#[ignore = "worker process entry point, spawned by the tests in this file"]
fn worker_process() {
    common::worker::run_from_env()
}

const GROWTH_ROUNDS: i64 = 60;
const DEAD_WRITER_ROUNDS: u32 = 12;

/// A process on host B that writes a file of its own without pause until dropped.
struct BusyMount {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BusyMount {
    fn start(tb: &TwoHostTestbed) -> BusyMount {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, other) = (stop.clone(), tb.mount_b().join("busy-elsewhere"));
        let thread = std::thread::spawn(move || {
            let f = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(other)
                .unwrap();
            let mut n = 0u64;
            while !flag.load(Ordering::Relaxed) {
                f.write_all_at(&n.to_le_bytes(), 0).unwrap();
                n += 1;
            }
        });
        BusyMount {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for BusyMount {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Host A commits transactions that grow the database; host B reads after each.
#[test]
fn a_reader_sees_every_growth_of_the_database_while_its_mount_is_busy_writing() {
    let Some(tb) = testbed_or_skip(TwoHostTestbed::sshfs()) else {
        return;
    };
    let place = faults::DbPlace::on(&tb, "growing.db");
    faults::create_fault_schema(&place.server);
    let writer = faults::open_observer(&place.host_a, &place.uri_params, None);
    let reader = faults::open_observer(&place.host_b, &place.uri_params, None);

    let payload = vec![7u8; 3000];
    let mut failures = Vec::new();
    for round in 0..GROWTH_ROUNDS {
        // With the mount quiet, the reader's sshfs caches the database's size.
        let _ = faults::counter_and_rows(&reader);
        let busy = BusyMount::start(&tb);
        // Three pages or so per round: the file grows at every commit.
        let committed = (|| {
            writer.execute_batch("BEGIN IMMEDIATE")?;
            writer.execute("UPDATE counter SET v = v + 3 WHERE id = 1", [])?;
            for part in 0..3 {
                writer.execute(
                    "INSERT INTO rows(worker, txn, part, parts, payload) VALUES (0, ?1, ?2, 3, ?3)",
                    sqlite_netfs::rusqlite::params![round, part, payload],
                )?;
            }
            writer.execute_batch("COMMIT")
        })();
        committed.unwrap_or_else(|e| panic!("round {round}: the writer failed: {e}"));
        match faults::counter_and_rows(&reader) {
            Ok((v, n)) if v == n && v == 3 * (round + 1) => {}
            Ok((v, n)) => failures.push(format!("round {round}: counter {v}, rows {n}")),
            Err(e) => failures.push(format!("round {round}: {e}")),
        }
        drop(busy);
    }
    eprintln!(
        "FIGURES sshfs-stale-size growth_rounds={GROWTH_ROUNDS} failed_reads={}",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "host B's reader did not see host A's commits as the server has them: {failures:?}"
    );
}

/// A writer on host A spills a transaction into the database file under EXCLUSIVE and is
/// killed; a new connection on host B must find the journal hot and roll the pages back.
#[test]
fn a_dead_writers_hot_journal_is_found_while_the_readers_mount_is_busy_writing() {
    let Some(tb) = testbed_or_skip(TwoHostTestbed::sshfs()) else {
        return;
    };
    let place = faults::DbPlace::on(&tb, "dead-writer.db");
    faults::create_fault_schema(&place.server);
    let reader = faults::open_observer(&place.host_b, &place.uri_params, None);
    let logs = tempfile::tempdir().unwrap();

    let mut failures = Vec::new();
    for round in 0..DEAD_WRITER_ROUNDS {
        // With the mount quiet, the reader's sshfs caches the journal as empty (every attribute
        // it fetched while the mount was busy was thrown away, so it caches nothing then).
        let before = faults::counter_and_rows(&reader).unwrap();
        let busy = BusyMount::start(&tb);
        let mut writer = Slot::new(
            Job {
                role: "fault-holder".into(),
                db: place.host_a.clone(),
                vfs: "netfs".into(),
                uri_params: place.uri_params.clone(),
                worker_id: round,
                out: logs.path().join(format!("writer-{round}")),
                stop_file: logs.path().join("never"),
                busy_timeout_ms: 60_000,
                payload: Payload::Fixed(3000),
                ..Default::default()
            },
            Vec::new(),
        );
        writer.spawn();
        assert!(
            writer.wait_for_phase("holding", Duration::from_secs(60)),
            "round {round}: the writer never spilled its transaction: {:?}",
            writer.log()
        );
        writer.kill();
        // A new connection: SQLite's own page cache would hold committed pages from before.
        let fresh = faults::open_observer(&place.host_b, &place.uri_params, None);
        match faults::counter_and_rows(&fresh) {
            Ok(after) if after == before => {}
            Ok((v, n)) => failures.push(format!(
                "round {round}: counter {v}, rows {n}; committed: {before:?}"
            )),
            Err(e) => failures.push(format!("round {round}: {e}")),
        }
        drop(busy);
    }
    eprintln!(
        "FIGURES sshfs-stale-journal-size rounds={DEAD_WRITER_ROUNDS} failed_reads={}",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "host B read a dead writer's uncommitted pages: {failures:?}"
    );
}
