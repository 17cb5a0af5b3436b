//! Stale-lock recovery: a holder is SIGKILLed while it holds the write lock (RESERVED with a
//! journal begun, or EXCLUSIVE with pages spilled into the database file), and a writer that
//! was already waiting commits. A dead holder on this host is recovered at once (its pid is
//! gone); a dead holder that looks like another host only after its lease, never before the
//! lease could have run out. Prints the recovery times as `FIGURES` lines.

mod common;

use std::collections::BTreeSet;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::faults::{self, DbPlace, Slot};
use common::testbed::{TwoHostTestbed, testbed_or_skip};
use common::worker::{Job, Payload};

#[test]
#[ignore = "worker process entry point, spawned by the tests in this file"]
fn worker_process() {
    common::worker::run_from_env()
}

/// The crate's default lease: the figure users get.
const LEASE: Duration = sqlite_netfs::DEFAULT_LEASE;
const OTHER_HOST: &str = "stale-recovery-other-host";
/// Holders whose transaction spills write this much per row (see `faults::fault_holder`).
const SPILL_PAYLOAD: usize = 3000;

/// Kills `runs` holders in turn and returns the time from each kill to the waiting writer's
/// lock grant and to its commit.
fn measure(
    place: &DbPlace,
    holder_host: Option<&str>,
    runs: u32,
) -> (Vec<Duration>, Vec<Duration>) {
    faults::create_fault_schema(&place.server);
    let logs = tempfile::tempdir().unwrap();
    let mut locked_after = Vec::new();
    let mut committed_after = Vec::new();
    let mut acked = BTreeSet::new();
    for run in 0..runs {
        let job = Job {
            role: "fault-holder".into(),
            db: place.host_a.clone(),
            vfs: "netfs".into(),
            uri_params: place.uri_params.clone(),
            worker_id: run,
            out: logs.path().join(format!("holder-{run}")),
            stop_file: logs.path().join("never"),
            busy_timeout_ms: 60_000,
            payload: Payload::Fixed(if run % 2 == 1 { SPILL_PAYLOAD } else { 0 }),
            ..Default::default()
        };
        let mut env = vec![(faults::LEASE_ENV.to_owned(), LEASE.as_millis().to_string())];
        if let Some(host) = holder_host {
            env.push((sqlite_netfs::HOST_ID_ENV.to_owned(), host.to_owned()));
        }
        let mut holder = Slot::new(job, env);
        holder.spawn();
        assert!(
            holder.wait_for_phase("holding", Duration::from_secs(120)),
            "holder never got the write lock: {:?}",
            holder.log()
        );
        let (tx, rx) = mpsc::channel();
        let waiter_db = place.host_b.clone();
        let uri_params = place.uri_params.clone();
        let waiter = std::thread::spawn(move || {
            let conn = faults::open_observer(&waiter_db, &uri_params, Some(LEASE));
            tx.send(()).unwrap();
            let locked = faults::commit_one(&conn, 1000, i64::from(run)).expect("waiter commit");
            (locked, Instant::now())
        });
        rx.recv().unwrap();
        // Let the waiter find the lock taken and start retrying, as a real waiter would be.
        std::thread::sleep(Duration::from_millis(500));
        let killed = Instant::now();
        holder.kill();
        let (locked, committed) = waiter.join().expect("waiter");
        locked_after.push(locked.saturating_duration_since(killed));
        committed_after.push(committed.saturating_duration_since(killed));
        acked.insert((1000, i64::from(run)));
        assert!(
            holder.log().acked.is_empty(),
            "the holder was killed before COMMIT"
        );
    }
    let v = faults::verify_after_faults(&place.server, &acked);
    assert_eq!(v.integrity, "ok");
    assert_eq!(v.lost, 0, "{v:?}");
    assert_eq!(
        v.unacked_present, 0,
        "a killed holder's transaction survived: {v:?}"
    );
    assert_eq!(v.partial, 0, "{v:?}");
    assert_eq!(v.counter, v.rows, "{v:?}");
    (locked_after, committed_after)
}

fn report(place: &DbPlace, holder: &str, locked: &[Duration], committed: &[Duration]) {
    let (lock_med, lock_max) = faults::median_max_ms(locked);
    let (med, max) = faults::median_max_ms(committed);
    eprintln!(
        "FIGURES fault=stale-recovery testbed={} holder={holder} lease_ms={} runs={} kills={} lost=0 corrupt=0 recovery_ms_median={med} recovery_ms_max={max} lock_ms_median={lock_med} lock_ms_max={lock_max}",
        place.testbed,
        LEASE.as_millis(),
        committed.len(),
        committed.len(),
    );
}

/// Same host: the pid check finds the holder gone; the waiter commits well under a second
/// after the kill.
fn same_host(place: &DbPlace) {
    let (locked, committed) = measure(place, None, 6);
    report(place, "same-host", &locked, &committed);
    for (l, c) in locked.iter().zip(&committed) {
        assert!(
            *l < Duration::from_millis(1000),
            "same-host recovery took {l:?} (lock) / {c:?} (commit)"
        );
    }
}

/// Another host: no pid to check; the waiter must wait out the lease (from the holder's last
/// renewal, which is at most a quarter lease before the kill) and no longer.
fn other_host(place: &DbPlace) {
    let (locked, committed) = measure(place, Some(OTHER_HOST), 2);
    report(place, "other-host", &locked, &committed);
    for l in &locked {
        assert!(
            *l >= LEASE / 2,
            "lock of another host broken after {l:?}, before its lease could have run out"
        );
        assert!(
            *l <= LEASE + Duration::from_secs(3),
            "lock of another host broken only after {l:?} (lease {LEASE:?})"
        );
    }
}

#[test]
fn dead_holder_on_this_host_is_recovered_well_under_a_second_in_forced_network_mode() {
    let dir = tempfile::tempdir().unwrap();
    same_host(&DbPlace::local(dir.path(), "stale.db"));
}

#[test]
fn dead_holder_of_another_host_is_recovered_after_its_lease_in_forced_network_mode() {
    let dir = tempfile::tempdir().unwrap();
    other_host(&DbPlace::local(dir.path(), "stale.db"));
}

#[test]
fn dead_holders_are_recovered_at_once_on_this_host_and_after_the_lease_from_another_on_sshfs() {
    let Some(testbed) = testbed_or_skip(TwoHostTestbed::sshfs()) else {
        return;
    };
    same_host(&DbPlace::on(&testbed, "same.db"));
    other_host(&DbPlace::on(&testbed, "other.db"));
}

#[test]
fn dead_holders_are_recovered_at_once_on_this_host_and_after_the_lease_from_another_on_smb() {
    let Some(testbed) = testbed_or_skip(TwoHostTestbed::smb()) else {
        return;
    };
    same_host(&DbPlace::on(&testbed, "same.db"));
    other_host(&DbPlace::on(&testbed, "other.db"));
}
