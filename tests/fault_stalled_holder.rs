//! A writer that stalls past its lease (stopped by the scheduler, swapped out, cut off by a
//! file-server outage) is judged dead and its lock is taken over. When it runs again, SQLite in
//! that process still believes it holds the write lock and carries on with its transaction:
//! it writes its journal header at COMMIT, and empties the journal when the COMMIT fails. By
//! then the journal belongs to the next writer. Neither may reach the file: the journal is
//! fenced by the lease exactly like the database.
//!
//! The stall is a SIGSTOP of a holder on one mount of a testbed that looks like another host
//! (so only its lease can free the lock). The next writer, on the other mount, spills pages
//! into the database file under EXCLUSIVE and is SIGKILLed after the stalled holder has run
//! again; its journal must still roll it back. (Not on a local disk: there the stalled
//! holder's byte-range locks, which the shim takes for plain SQLite processes on the same
//! host, keep the next writer out for as long as the process lives.)

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::faults::{self, DbPlace, Slot};
use common::testbed::{TwoHostTestbed, testbed_or_skip};
use common::worker::{Job, Payload};

#[test]
#[ignore = "worker process entry point, spawned by the tests in this file"]
fn worker_process() {
    common::worker::run_from_env()
}

const LEASE: Duration = Duration::from_secs(1);
const OTHER_HOST: &str = "stalled-holder-other-host";
/// Rows of this size make the next writer spill (see `faults::fault_holder`).
const SPILL_PAYLOAD: usize = 3000;

/// The stalled holder (host A, another host's id) or the next writer (host B, spilling).
fn holder(role_id: u32, place: &DbPlace, logs: &Path, next_writer: bool) -> Slot {
    let job = Job {
        role: "fault-holder".into(),
        db: if next_writer {
            &place.host_b
        } else {
            &place.host_a
        }
        .clone(),
        vfs: "netfs".into(),
        uri_params: place.uri_params.clone(),
        worker_id: role_id,
        out: logs.join(format!("holder-{role_id}")),
        stop_file: logs.join("never"),
        busy_timeout_ms: 60_000,
        payload: Payload::Fixed(if next_writer { SPILL_PAYLOAD } else { 0 }),
        // The stalled holder commits once it runs again; the next writer holds until killed.
        transactions: if next_writer { 0 } else { 500 },
        ..Default::default()
    };
    let mut env = vec![(faults::LEASE_ENV.to_owned(), LEASE.as_millis().to_string())];
    if !next_writer {
        env.push((sqlite_netfs::HOST_ID_ENV.to_owned(), OTHER_HOST.to_owned()));
    }
    let mut slot = Slot::new(job, env);
    slot.spawn();
    slot
}

/// The stalled holder opens the database as host A, the next writer as host B.
fn stalled_holder_cannot_touch_the_next_writers_journal(place: &DbPlace) {
    faults::create_fault_schema(&place.server);
    let logs = tempfile::tempdir().unwrap();
    let mut stalled = holder(1, place, logs.path(), false);
    assert!(
        stalled.wait_for_phase("holding", Duration::from_secs(60)),
        "the first holder never got the write lock: {:?}",
        stalled.log()
    );
    stalled.signal(libc::SIGSTOP);

    // The next writer waits out the stalled holder's lease, takes the lock over and spills its
    // transaction into the database file.
    let mut next = holder(2, place, logs.path(), true);
    let took_over = next.wait_for_phase("holding", Duration::from_secs(60));
    stalled.signal(libc::SIGCONT);
    assert!(
        took_over,
        "the next writer never took over: {:?}",
        next.log()
    );

    // The stalled holder runs again: its COMMIT must fail, and whatever SQLite does to the
    // journal on the way must not reach it.
    assert!(
        stalled.wait_for_exit(Duration::from_secs(60)),
        "the stalled holder did not finish"
    );
    let stalled_log = stalled.log();
    assert!(
        stalled_log.acked.is_empty() && !stalled_log.errors.is_empty(),
        "a holder whose lock was taken over must fail its COMMIT: {stalled_log:?}"
    );
    next.kill();

    let v = faults::verify_after_faults(&place.server, &BTreeSet::new());
    assert_eq!(v.integrity, "ok", "{v:?}");
    assert_eq!(
        v.present, 0,
        "a transaction that never committed is in the file: {v:?}"
    );
    assert_eq!(
        v.counter,
        Some(0),
        "the killed writer's spilled pages were not rolled back: {v:?}"
    );
}

fn across_two_mounts(testbed: Result<TwoHostTestbed, String>) {
    if let Some(tb) = testbed_or_skip(testbed) {
        stalled_holder_cannot_touch_the_next_writers_journal(&DbPlace::on(&tb, "stalled.db"));
    }
}

#[test]
fn on_sshfs_across_two_mounts() {
    across_two_mounts(TwoHostTestbed::sshfs());
}

#[test]
fn on_smb_across_two_mounts() {
    across_two_mounts(TwoHostTestbed::smb());
}
