//! `sqlite-netfs unlock --stale`: it removes the entries dead holders left (this host's at
//! once, another host's after a lease of silence) and never a live holder's, whose
//! transaction still commits afterwards.

mod cli_support;

use std::time::Instant;

use cli_support::{Hold, Holder, LEASE, LEASE_ARG, finding_codes, path, run};

#[test]
#[ignore = "holder process entry point, spawned by the tests in this file"]
fn holder_process() {
    cli_support::holder_from_env()
}

#[test]
fn unlock_never_removes_a_live_holder() {
    let (_dir, db) = cli_support::network_database(50);
    let dead_there = Holder::start(&db, Hold::Read, Some("cli-unlock-dead-host"));
    let dead_there_pid = dead_there.pid();
    dead_there.kill();
    let dead_here = Holder::start(&db, Hold::Read, None);
    let dead_here_pid = dead_here.pid();
    dead_here.kill();
    let live_here = Holder::start(&db, Hold::Read, None);
    let live_there = Holder::start(&db, Hold::Read, Some("cli-unlock-live-host"));

    let out = run(&["unlock", path(&db), "--stale", "--lease", LEASE_ARG]);
    assert_eq!(out.code, 0, "{out:?}");
    // The dead entries may go with the live holders' own renewals, as the protocol does, or
    // with the command's sweep; the live ones must stay either way.
    for live in [live_here.pid(), live_there.pid()] {
        assert!(
            !out.stdout
                .lines()
                .any(|l| l.starts_with("removed") && l.contains(&format!("pid {live} "))),
            "live holder {live} removed: {out:?}"
        );
    }
    let kept = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("kept "))
        .count();
    assert_eq!(kept, 2, "{out:?}");
    let table = run(&["doctor", path(&db), "--json", "--no-wait"]);
    for pid in [dead_here_pid, dead_there_pid] {
        assert!(
            !table.stdout.contains(&format!("\"pid\":{pid},")),
            "{table:?}"
        );
    }
    // Their locks were never taken from them.
    assert!(live_here.commit(), "live holder of this host lost its lock");
    assert!(
        live_there.commit(),
        "live holder of another host lost its lock"
    );
}

#[test]
fn unlock_removes_a_dead_holder_of_another_host_only_after_a_lease_of_silence() {
    let (_dir, db) = cli_support::network_database(50);
    let reader = Holder::start(&db, Hold::Read, Some("cli-unlock-dead-host"));
    let pid = reader.pid();
    reader.kill();
    let started = Instant::now();
    let out = run(&["unlock", path(&db), "--stale", "--lease", LEASE_ARG]);
    let took = started.elapsed();
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.lines().any(|l| l.starts_with("removed")
            && l.contains(&format!("cli-unlock-dead-host pid {pid} "))
            && l.contains("lease expired")),
        "{out:?}"
    );
    assert!(took >= LEASE, "judged after {took:?}, within a lease");
}

#[test]
fn unlock_removes_a_killed_writers_entry_at_once_and_the_next_connection_rolls_back() {
    let (_dir, db) = cli_support::network_database(50);
    let writer = Holder::start(&db, Hold::Write, None);
    let pid = writer.pid();
    writer.kill();
    let started = Instant::now();
    let out = run(&["unlock", path(&db), "--stale", "--lease", LEASE_ARG]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        started.elapsed() < LEASE,
        "this host's dead are judged at once"
    );
    assert!(
        out.stdout.lines().any(|l| l.starts_with("removed")
            && l.contains(&format!("pid {pid} "))
            && l.contains("process is gone")),
        "{out:?}"
    );
    assert!(out.stdout.contains("rolls it back"), "{out:?}");
    // doctor --check's connection is that next connection.
    let after = run(&["doctor", path(&db), "--json", "--no-wait", "--check"]);
    assert_eq!(after.code, 0, "{after:?}");
    assert_eq!(finding_codes(after.stdout.trim()), ["journal-rolled-back"]);
}

#[test]
fn a_latch_left_by_a_vanished_host_is_stale_and_unlock_breaks_it() {
    let (dir, db) = cli_support::network_database(5);
    let latch = dir.path().join("app.db-netfs-latch");
    std::fs::write(&latch, b"cli-unlock-vanished-host 4242 77 1 9\n").unwrap();
    let seen = run(&["doctor", path(&db), "--json", "--lease", LEASE_ARG]);
    assert_eq!(seen.code, 1, "{seen:?}");
    assert!(
        seen.stdout.contains(r#""latch":{"path""#) && seen.stdout.contains(r#""state":"stale"}"#),
        "{seen:?}"
    );
    assert_eq!(finding_codes(seen.stdout.trim()), ["token-stale"]);
    let out = run(&["unlock", path(&db), "--stale", "--lease", LEASE_ARG]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .contains("removed netfs-latch token [cli-unlock-vanished-host 4242 77 1 9]"),
        "{out:?}"
    );
    assert!(!latch.exists());
}

#[test]
fn unlock_that_never_gets_the_latch_fails_and_does_not_claim_nothing_was_stale() {
    let (dir, db) = cli_support::network_database(5);
    let latch = dir.path().join("app.db-netfs-latch");
    // Another host's connections editing the table back to back: the latch is always
    // taken, and its contents keep changing, so it is never judged stale.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let editor = {
        let (latch, stop) = (latch.clone(), stop.clone());
        std::thread::spawn(move || {
            for n in 1.. {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                std::fs::write(&latch, format!("cli-unlock-busy-host 4242 77 1 {n}\n")).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        })
    };
    let out = run(&["unlock", path(&db), "--stale", "--lease", LEASE_ARG]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    editor.join().unwrap();
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("latch stayed taken"), "{out:?}");
    assert!(!out.stdout.contains("nothing stale"), "{out:?}");
}

#[test]
fn an_unreadable_lock_table_is_replaced_once_unchanged_for_a_lease() {
    let (dir, db) = cli_support::network_database(5);
    std::fs::write(dir.path().join("app.db-netfs-table"), b"garbage\n").unwrap();
    let before = run(&["doctor", path(&db), "--json", "--no-wait"]);
    assert_eq!(before.code, 2, "{before:?}");
    assert_eq!(finding_codes(before.stdout.trim()), ["table-unreadable"]);
    let started = Instant::now();
    let out = run(&["unlock", path(&db), "--stale", "--lease", LEASE_ARG]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(started.elapsed() >= LEASE, "replaced within a lease");
    assert!(
        out.stdout.contains("removed the unreadable lock table"),
        "{out:?}"
    );
    let after = run(&["doctor", path(&db), "--json", "--no-wait"]);
    assert_eq!(after.code, 0, "{after:?}");
}

#[test]
fn unlock_without_a_lock_table_refuses_and_creates_none() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("plain.db");
    sqlite_netfs::rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("CREATE TABLE t(x)")
        .unwrap();
    let out = run(&["unlock", path(&db), "--stale"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("no lock table"), "{out:?}");
    assert!(!dir.path().join("plain.db-netfs-table").exists());
    let without_flag = run(&["unlock", path(&db)]);
    assert!(
        without_flag.code == 2 && without_flag.stderr.contains("--stale"),
        "{without_flag:?}"
    );
}
