//! Clock skew: one process runs with its clocks shifted by five minutes, back and forward
//! (libfaketime, Debian's `faketime`), against processes on the true clock. Leases neither
//! expire early for a live holder nor last forever for a dead one, whichever side is skewed.
//!
//! libfaketime shifts CLOCK_BOOTTIME and CLOCK_MONOTONIC too (with an offset they follow the
//! shifted wall clock), so the shim's lease clock in the skewed process is minutes (in fact
//! decades) away from everybody else's. That is harmless only because no clock reading ever
//! leaves a process: leases are judged by each observer on its own clock (how long an entry's
//! sequence number stayed unchanged), and lock files carry no time. These tests check exactly
//! that exposure: a skewed live holder keeps renewing and is not broken, a skewed observer does
//! not break a live holder, and a dead holder is recovered within the lease either way.

mod common;

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::faults::{self, DbPlace, Slot, libfaketime};
use common::testbed::{TwoHostTestbed, testbed_or_skip};
use common::worker::Job;

#[test]
#[ignore = "worker process entry point, spawned by the tests in this file"]
fn worker_process() {
    common::worker::run_from_env()
}

/// Short, so each case takes seconds; long enough for SMB's slow lock operations (with 4 s,
/// a renewal late by a second on the loaded SMB testbed made a live holder fence itself and
/// fail its COMMIT once in CI, which this test cannot tell from a broken lock).
const LEASE: Duration = Duration::from_secs(6);
/// A live holder keeps its transaction open this long: well past a lease.
const HOLD: Duration = Duration::from_secs(14);
/// The skews, as libfaketime offsets and in seconds.
const SKEWS: [(&str, i64); 2] = [("-5m", -300), ("+5m", 300)];

struct Place {
    /// The holder opens the database as host A, the other party as host B.
    db: DbPlace,
    logs: tempfile::TempDir,
    lib: PathBuf,
    next_worker: Cell<u32>,
    /// Logs of every worker started, by worker id, and commits of the test process itself:
    /// the acknowledged transactions the final verification expects.
    worker_logs: RefCell<Vec<(i64, PathBuf)>>,
    own_commits: RefCell<BTreeSet<(i64, i64)>>,
}

impl Place {
    fn new(db: DbPlace, lib: PathBuf) -> Place {
        Place {
            db,
            logs: tempfile::tempdir().unwrap(),
            lib,
            next_worker: Cell::new(1),
            worker_logs: RefCell::default(),
            own_commits: RefCell::default(),
        }
    }

    /// A `fault-holder` worker as another host, holding for `hold` (zero: until killed), its
    /// clocks shifted by `skew` if given.
    fn holder(&self, name: &str, db: &Path, hold: Duration, skew: Option<&str>) -> Slot {
        let worker_id = self.next_worker.replace(self.next_worker.get() + 1);
        self.worker_logs
            .borrow_mut()
            .push((i64::from(worker_id), self.logs.path().join(name)));
        let job = Job {
            role: "fault-holder".into(),
            db: db.to_owned(),
            vfs: "netfs".into(),
            uri_params: self.db.uri_params.clone(),
            worker_id,
            transactions: hold.as_millis() as u32,
            out: self.logs.path().join(name),
            stop_file: self.logs.path().join("never"),
            busy_timeout_ms: 120_000,
            ..Default::default()
        };
        let mut env = vec![
            (faults::LEASE_ENV.to_owned(), LEASE.as_millis().to_string()),
            (sqlite_netfs::HOST_ID_ENV.to_owned(), format!("skew-{name}")),
        ];
        if let Some(offset) = skew {
            env.push(("LD_PRELOAD".to_owned(), self.lib.display().to_string()));
            env.push(("FAKETIME".to_owned(), offset.to_owned()));
        }
        let mut slot = Slot::new(job, env);
        slot.spawn();
        slot
    }

    /// Everything acknowledged so far: the workers' logs and the test process's commits.
    fn acknowledged(&self) -> BTreeSet<(i64, i64)> {
        let mut acked = self.own_commits.borrow().clone();
        for (worker, log) in self.worker_logs.borrow().iter() {
            acked.extend(faults::read_log(log).acked.iter().map(|t| (*worker, *t)));
        }
        acked
    }
}

fn wall_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The worker's clock really was shifted by about `skew_secs`.
fn assert_skewed(slot: &Slot, skew_secs: i64) {
    let theirs = slot.log().wall_at_start.expect("worker logged its clock") as i64;
    let seen = theirs - wall_now();
    assert!(
        (seen - skew_secs).abs() < 60,
        "worker clock offset {seen} s, wanted {skew_secs} s: libfaketime not in effect"
    );
}

/// A live holder with a shifted clock keeps its write lock for longer than a lease against a
/// writer on the true clock, then commits; the writer gets the lock only afterwards.
fn skewed_live_holder_is_not_broken(place: &Place, offset: &str, secs: i64) {
    let name = format!("live-skewed{offset}");
    let mut holder = place.holder(&name, &place.db.host_a, HOLD, Some(offset));
    assert!(holder.wait_for_phase("holding", Duration::from_secs(120)));
    let holding_since = Instant::now();
    assert_skewed(&holder, secs);
    let (tx, rx) = mpsc::channel();
    let db = place.db.host_b.clone();
    let params = place.db.uri_params.clone();
    let waiter = std::thread::spawn(move || {
        let conn = faults::open_observer(&db, &params, Some(LEASE));
        tx.send(()).unwrap();
        faults::commit_one(&conn, 100, secs).expect("waiter commit")
    });
    rx.recv().unwrap();
    let locked = waiter.join().unwrap();
    place.own_commits.borrow_mut().insert((100, secs));
    assert!(holder.wait_for_exit(Duration::from_secs(60)));
    let log = holder.log();
    assert!(
        log.errors.is_empty() && log.acked.len() == 1,
        "the skewed holder lost its lock: {log:?}"
    );
    let waited = locked - holding_since;
    assert!(
        waited + Duration::from_millis(500) >= HOLD,
        "the waiter got the lock {waited:?} after the skewed holder took it (held {HOLD:?})"
    );
}

/// An observer with a shifted clock does not break a live holder on the true clock, and gets
/// the lock after it commits.
fn skewed_observer_does_not_break_a_live_holder(place: &Place, offset: &str, secs: i64) {
    let mut holder = place.holder(&format!("live-true{offset}"), &place.db.host_a, HOLD, None);
    assert!(holder.wait_for_phase("holding", Duration::from_secs(120)));
    let mut observer = place.holder(
        &format!("observer-skewed{offset}"),
        &place.db.host_b,
        Duration::from_millis(1),
        Some(offset),
    );
    assert!(holder.wait_for_exit(Duration::from_secs(120)));
    assert!(observer.wait_for_exit(Duration::from_secs(120)));
    assert_skewed(&observer, secs);
    let (h, o) = (holder.log(), observer.log());
    assert!(
        h.errors.is_empty() && h.acked.len() == 1,
        "a skewed observer broke a live holder: holder {h:?}, observer {o:?}"
    );
    assert!(
        o.errors.is_empty() && o.acked.len() == 1,
        "the skewed observer never committed: {o:?}"
    );
}

/// A dead holder is recovered after about a lease, wherever the skew is: `skewed_holder` puts
/// it on the dead holder, otherwise on the process that recovers. Returns the recovery time.
fn dead_holder_is_recovered_within_the_lease(
    place: &Place,
    offset: &str,
    skewed_holder: bool,
) -> Duration {
    let tag = if skewed_holder { "holder" } else { "observer" };
    let mut holder = place.holder(
        &format!("dead-{tag}{offset}"),
        &place.db.host_a,
        Duration::ZERO,
        skewed_holder.then_some(offset),
    );
    assert!(holder.wait_for_phase("holding", Duration::from_secs(120)));
    let recovered_after = if skewed_holder {
        let (tx, rx) = mpsc::channel();
        let db = place.db.host_b.clone();
        let params = place.db.uri_params.clone();
        let txn = i64::from(offset.starts_with('+'));
        let waiter = std::thread::spawn(move || {
            let conn = faults::open_observer(&db, &params, Some(LEASE));
            tx.send(()).unwrap();
            faults::commit_one(&conn, 200, txn).expect("commit")
        });
        rx.recv().unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let killed = Instant::now();
        holder.kill();
        let locked = waiter.join().unwrap();
        place.own_commits.borrow_mut().insert((200, txn));
        locked.saturating_duration_since(killed)
    } else {
        let mut observer = place.holder(
            &format!("recoverer-{tag}{offset}"),
            &place.db.host_b,
            Duration::from_millis(1),
            Some(offset),
        );
        std::thread::sleep(Duration::from_millis(500));
        let killed = Instant::now();
        holder.kill();
        assert!(
            observer.wait_for_phase("holding", LEASE * 3 + Duration::from_secs(30)),
            "the skewed observer never recovered the lock: {:?}",
            observer.log()
        );
        let after = killed.elapsed();
        assert!(observer.wait_for_exit(Duration::from_secs(60)));
        after
    };
    assert!(
        recovered_after >= LEASE / 2 && recovered_after <= LEASE + Duration::from_secs(3),
        "dead holder ({tag} skewed {offset}) recovered after {recovered_after:?}, lease {LEASE:?}"
    );
    recovered_after
}

fn all_cases(place: Place) {
    faults::create_fault_schema(&place.db.server);
    let mut recoveries = Vec::new();
    for (offset, secs) in SKEWS {
        skewed_live_holder_is_not_broken(&place, offset, secs);
        skewed_observer_does_not_break_a_live_holder(&place, offset, secs);
        recoveries.push(dead_holder_is_recovered_within_the_lease(
            &place, offset, true,
        ));
        recoveries.push(dead_holder_is_recovered_within_the_lease(
            &place, offset, false,
        ));
    }
    let v = faults::verify_after_faults(&place.db.server, &place.acknowledged());
    assert_eq!(v.integrity, "ok");
    assert_eq!(v.lost, 0, "{v:?}");
    assert_eq!(
        v.unacked_present, 0,
        "a killed holder's transaction survived: {v:?}"
    );
    assert_eq!(v.counter, v.rows, "{v:?}");
    assert_eq!(v.partial, 0, "{v:?}");
    let (med, max) = faults::median_max_ms(&recoveries);
    eprintln!(
        "FIGURES fault=clock-skew testbed={} skews=-300s,+300s lease_ms={} runs={} kills={} live_holders_broken=0 lost=0 corrupt=0 recovery_ms_median={med} recovery_ms_max={max}",
        place.db.testbed,
        LEASE.as_millis(),
        SKEWS.len() * 4,
        recoveries.len(),
    );
}

#[test]
fn skewed_clocks_neither_break_live_locks_nor_keep_dead_ones_in_forced_network_mode() {
    let Some(lib) = libfaketime() else { return };
    let dir = tempfile::tempdir().unwrap();
    all_cases(Place::new(DbPlace::local(dir.path(), "skew.db"), lib));
}

#[test]
fn skewed_clocks_neither_break_live_locks_nor_keep_dead_ones_on_sshfs() {
    let Some(lib) = libfaketime() else { return };
    let Some(testbed) = testbed_or_skip(TwoHostTestbed::sshfs()) else {
        return;
    };
    all_cases(Place::new(DbPlace::on(&testbed, "skew.db"), lib));
}

#[test]
fn skewed_clocks_neither_break_live_locks_nor_keep_dead_ones_on_smb() {
    let Some(lib) = libfaketime() else { return };
    let Some(testbed) = testbed_or_skip(TwoHostTestbed::smb()) else {
        return;
    };
    all_cases(Place::new(DbPlace::on(&testbed, "skew.db"), lib));
}
