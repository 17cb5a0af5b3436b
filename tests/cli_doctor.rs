//! `sqlite-netfs doctor`: what it reports for healthy and broken databases, and its exit
//! status (0 healthy, 1 warnings, 2 problems). Lock-table entries are made by real holder
//! processes (`cli_support::Holder`), alive or SIGKILLed, on this host or posing as another.

mod cli_support;

use std::os::unix::fs::PermissionsExt;

use cli_support::{Hold, Holder, LEASE, LEASE_ARG, finding_codes, holder_json, path, run};

#[test]
#[ignore = "holder process entry point, spawned by the tests in this file"]
fn holder_process() {
    cli_support::holder_from_env()
}

#[test]
fn a_healthy_network_mode_database_is_healthy_with_exit_0() {
    let (_dir, db) = cli_support::network_database(10);
    let out = run(&["doctor", path(&db), "--json", "--check"]);
    assert_eq!(out.code, 0, "{out:?}");
    let json = out.stdout.trim();
    for expected in [
        r#""mode":"network""#,
        r#""source":"lock files beside the database""#,
        r#""lock_table":{"state":"present""#,
        r#""holders":[]"#,
        r#""check":{"kind":"quick_check","ok":true,"messages":["ok"]}"#,
        r#""findings":[]"#,
        r#""status":"healthy""#,
    ] {
        assert!(json.contains(expected), "{expected} missing from {json}");
    }
    let text = run(&["doctor", path(&db)]);
    assert_eq!(text.code, 0, "{text:?}");
    assert!(
        text.stdout.contains("mode        network"),
        "{}",
        text.stdout
    );
}

#[test]
fn a_killed_writer_of_another_host_is_stale_after_a_lease_and_its_journal_hot() {
    let (_dir, db) = cli_support::network_database(50);
    let writer = Holder::start(&db, Hold::Write, Some("cli-doctor-other-host"));
    let pid = writer.pid();
    writer.kill();
    let out = run(&["doctor", path(&db), "--json", "--lease", LEASE_ARG]);
    assert_eq!(out.code, 1, "warnings only: {out:?}");
    let json = out.stdout.trim();
    let holder = holder_json(json, pid);
    assert!(
        holder.contains(r#""host":"cli-doctor-other-host""#),
        "{holder}"
    );
    assert!(
        holder.contains(r#""level":"EXCLUSIVE""#),
        "spilling: {holder}"
    );
    assert!(holder.contains(r#""this_host":false"#), "{holder}");
    assert!(holder.contains(r#""state":"stale""#), "{holder}");
    assert!(json.contains(r#""journal":{"state":"hot""#), "{json}");
    assert_eq!(
        finding_codes(json),
        ["holder-stale", "journal-hot"],
        "{json}"
    );
    let watched = json.split(r#""watched_ms":"#).nth(1).unwrap();
    let watched: u64 = watched[..watched.find(',').unwrap()].parse().unwrap();
    assert!(
        watched >= LEASE.as_millis() as u64,
        "judged after {watched} ms, before a lease of watching"
    );
}

#[test]
fn live_holders_here_and_on_another_host_are_alive_and_healthy() {
    let (_dir, db) = cli_support::network_database(50);
    let reader_here = Holder::start(&db, Hold::Read, None);
    let reader_there = Holder::start(&db, Hold::Read, Some("cli-doctor-live-host"));
    let out = run(&["doctor", path(&db), "--json", "--lease", LEASE_ARG]);
    assert_eq!(out.code, 0, "{out:?}");
    let json = out.stdout.trim();
    let here = holder_json(json, reader_here.pid());
    assert!(
        here.contains(r#""state":"alive""#) || here.contains(r#""state":"renewing""#),
        "{here}"
    );
    let there = holder_json(json, reader_there.pid());
    assert!(there.contains(r#""state":"renewing""#), "{there}");
    assert_eq!(finding_codes(json), Vec::<&str>::new(), "{json}");
    assert!(reader_here.commit() && reader_there.commit());
}

#[test]
fn a_killed_holder_of_this_host_is_dead_at_once() {
    // Alone: any live holder's next edit (its heartbeat) would remove the entry itself.
    let (_dir, db) = cli_support::network_database(50);
    let reader = Holder::start(&db, Hold::Read, None);
    let pid = reader.pid();
    reader.kill();
    let out = run(&["doctor", path(&db), "--json", "--lease", LEASE_ARG]);
    assert_eq!(out.code, 1, "{out:?}");
    let json = out.stdout.trim();
    let dead = holder_json(json, pid);
    assert!(
        dead.contains(r#""state":"dead""#) && dead.contains(r#""this_host":true"#),
        "{dead}"
    );
    assert_eq!(finding_codes(json), ["holder-dead"], "{json}");
    assert!(
        json.contains(r#""watched_ms":0"#),
        "nothing to watch: {json}"
    );
}

#[test]
fn symlinked_and_narrow_mode_lock_files_are_problems_and_the_link_target_untouched() {
    let (dir, db) = cli_support::network_database(1);
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    std::os::unix::fs::symlink(&victim, dir.path().join("app.db-netfs-latch")).unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o666)).unwrap();
    let table = dir.path().join("app.db-netfs-table");
    std::fs::set_permissions(&table, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = run(&["doctor", path(&db), "--json", "--no-wait"]);
    assert_eq!(out.code, 2, "{out:?}");
    let codes = finding_codes(out.stdout.trim());
    assert!(codes.contains(&"lock-file-symlink"), "{out:?}");
    assert!(codes.contains(&"lock-file-mode"), "{out:?}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
}

#[test]
fn a_latch_an_nfs_client_made_as_a_link_is_a_held_latch_not_a_planted_link() {
    let (dir, db) = cli_support::network_database(1);
    std::os::unix::fs::symlink("far-host 7 1 1 3\n", dir.path().join("app.db-netfs-latch"))
        .unwrap();
    let out = run(&["doctor", path(&db), "--json", "--no-wait"]);
    let codes = finding_codes(out.stdout.trim());
    assert!(!codes.contains(&"lock-file-symlink"), "{out:?}");
    assert!(
        out.stdout.contains("far-host"),
        "the latch's holder is not named: {out:?}"
    );
}

#[test]
fn wal_files_beside_a_network_mode_database_are_a_warning_and_wal_mode_a_problem() {
    let (dir, db) = cli_support::network_database(1);
    std::fs::write(dir.path().join("app.db-shm"), b"").unwrap();
    let out = run(&["doctor", path(&db), "--json", "--no-wait"]);
    assert_eq!(out.code, 1, "a leftover: {out:?}");
    assert_eq!(finding_codes(out.stdout.trim()), ["wal-files"], "{out:?}");
    assert!(out.stdout.contains("app.db-shm"), "{out:?}");
    std::fs::remove_file(dir.path().join("app.db-shm")).unwrap();
    // A native process in WAL mode, still open.
    let native = sqlite_netfs::rusqlite::Connection::open(&db).unwrap();
    native
        .execute_batch("PRAGMA journal_mode=WAL; INSERT INTO t(x) VALUES (1);")
        .unwrap();
    let out = run(&["doctor", path(&db), "--json", "--no-wait"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stdout.contains("in WAL mode"), "{out:?}");
    // The shim refuses to open it while the native writer holds its WAL: the check cannot
    // run, which is one more finding, not the end of the report.
    let out = run(&["doctor", path(&db), "--json", "--no-wait", "--check"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert_eq!(
        finding_codes(out.stdout.trim()),
        ["wal-files", "check-failed"],
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains(r#""check":{"kind":"quick_check","ok":false"#),
        "{out:?}"
    );
    drop(native);
}

#[test]
fn a_host_that_would_open_natively_beside_the_lock_table_is_a_problem() {
    let (_dir, db) = cli_support::network_database(1);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sqlite-netfs"))
        .args(["doctor", path(&db), "--json", "--no-wait"])
        .env("SQLITE_NETFS", "off")
        .output()
        .unwrap();
    let json = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{json}");
    assert!(json.contains(r#""mode":"native""#), "{json}");
    assert_eq!(finding_codes(&json), ["mixed-modes"], "{json}");
}

#[test]
fn a_missing_database_is_named_with_exit_2_and_nothing_created() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.db");
    let out = run(&["doctor", path(&missing)]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("missing.db: no such file"), "{out:?}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let json = run(&["doctor", path(&missing), "--json"]);
    assert_eq!(json.code, 2);
    assert!(
        json.stdout.starts_with(r#"{"version":1,"error":""#)
            && json.stdout.contains("no such file"),
        "{json:?}"
    );
    let bad = run(&["doctor", path(&missing), "--fast"]);
    assert!(
        bad.code == 2 && bad.stderr.contains("unknown option --fast"),
        "{bad:?}"
    );
}

#[test]
fn a_path_that_is_not_utf8_is_named_not_a_panic() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join(std::ffi::OsStr::from_bytes(b"caf\xe9.db"));
    let missing = missing.as_os_str();
    for args in [
        &["doctor".as_ref(), missing][..],
        &["unlock".as_ref(), missing, "--stale".as_ref()],
    ] {
        let out = run(args);
        assert_eq!(out.code, 2, "{out:?}");
        assert!(
            out.stderr.contains("caf\u{fffd}.db: no such file"),
            "{out:?}"
        );
    }
    let json = run(&["doctor".as_ref(), missing, "--json".as_ref()]);
    assert_eq!(json.code, 2, "{json:?}");
    assert!(
        json.stdout.starts_with(r#"{"version":1,"error":""#),
        "{json:?}"
    );
    // A bad option is answered in JSON too, without the usage text.
    let bad = run(&["doctor", path(dir.path()), "--json", "--fast"]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert_eq!(
        bad.stdout.trim(),
        r#"{"version":1,"error":"unknown option --fast","status":"problems"}"#
    );
}

#[test]
fn the_check_opens_the_file_named_whatever_its_bytes() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join(std::ffi::OsStr::from_bytes(b"caf\xe9.db"));
    sqlite_netfs::rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("CREATE TABLE t(x)")
        .unwrap();
    // Not UTF-8; and with the leading `//` that a URI would take for a host name.
    let mut doubled = std::ffi::OsString::from("/");
    doubled.push(&db);
    for name in [db.as_os_str(), &doubled] {
        let out = run(&[
            "doctor".as_ref(),
            name,
            "--check".as_ref(),
            "--no-wait".as_ref(),
        ]);
        assert_eq!(out.code, 0, "{out:?}");
        assert!(
            out.stdout.contains("check       quick_check: ok"),
            "{out:?}"
        );
    }
}

#[test]
fn a_database_this_user_cannot_read_is_a_problem_not_healthy() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let db = dir.path().join("secret.db");
    sqlite_netfs::rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("CREATE TABLE t(x)")
        .unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o000)).unwrap();
    let mut doctor = std::process::Command::new(env!("CARGO_BIN_EXE_sqlite-netfs"));
    doctor
        .args(["doctor", path(&db), "--json", "--no-wait"])
        .env_remove("SQLITE_NETFS");
    if std::fs::File::open(&db).is_ok() {
        // Privileged: a user the mode applies to.
        doctor.uid(cli_support::NOBODY).gid(cli_support::NOBODY);
    }
    let out = doctor.output().unwrap();
    let json = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{json} {out:?}");
    assert_eq!(finding_codes(&json), ["database-unreadable"], "{json}");
}

#[test]
fn a_native_writers_open_transaction_is_not_called_abandoned() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("native.db");
    let writer = sqlite_netfs::rusqlite::Connection::open(&db).unwrap();
    writer
        .execute_batch(
            "CREATE TABLE t(x); BEGIN;
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300)
             INSERT INTO t SELECT randomblob(3000) FROM n;
             COMMIT;
             PRAGMA cache_size = 5; BEGIN IMMEDIATE; UPDATE t SET x = randomblob(3000);",
        )
        .unwrap();
    // The update spilled: the journal's header is synced, as a dead writer's would be.
    let out = run(&["doctor", path(&db), "--no-wait"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("[journal-hot]"), "{out:?}");
    assert!(!out.stdout.contains("no live writer owns"), "{out:?}");
    assert!(out.stdout.contains("cannot see native writers"), "{out:?}");
    writer.execute_batch("COMMIT").unwrap();
}

#[test]
fn check_finds_overwritten_pages_and_names_recover() {
    let (_dir, db) = cli_support::network_database(2000);
    overwrite_pages(&db, &[10, 11]);
    let out = run(&["doctor", path(&db), "--check", "--no-wait"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stdout.contains("[integrity]"), "{}", out.stdout);
    assert!(
        out.stdout.contains("sqlite-netfs recover"),
        "{}",
        out.stdout
    );
}

/// Fills whole pages of the file with a pattern no b-tree page can hold.
pub fn overwrite_pages(db: &std::path::Path, pages: &[u64]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(db).unwrap();
    for p in pages {
        f.write_all_at(&[0xA5; 4096], (p - 1) * 4096).unwrap();
    }
    f.sync_all().unwrap();
}

#[test]
fn a_database_file_that_is_itself_a_bind_mount_is_a_problem() {
    let (_dir, db) = cli_support::network_database(1);
    let other = tempfile::tempdir().unwrap();
    let seen = other.path().join("app.db");
    std::fs::write(&seen, b"").unwrap();
    // A private mount namespace, so the bind mount exists only for this one command.
    let script = format!(
        "mount --bind '{}' '{}' && exec '{}' doctor '{}' --json --no-wait",
        path(&db),
        path(&seen),
        env!("CARGO_BIN_EXE_sqlite-netfs"),
        path(&seen)
    );
    let out = std::process::Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .env_remove("SQLITE_NETFS")
        .output();
    let unavailable = match &out {
        Err(e) => Some(e.to_string()),
        Ok(o) if !String::from_utf8_lossy(&o.stdout).contains("\"findings\"") => {
            Some(String::from_utf8_lossy(&o.stderr).into_owned())
        }
        Ok(_) => None,
    };
    if let Some(why) = unavailable {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "unshare -m and mount --bind are needed under CI: {why}"
        );
        println!("SKIPPED: no private mount namespace ({why})");
        return;
    }
    let out = out.unwrap();
    let json = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{json}");
    assert!(
        finding_codes(&json).contains(&"bind-mounted-file"),
        "{json}"
    );
    // Outside the namespace the file was never mounted over.
    assert_eq!(std::fs::metadata(&seen).unwrap().len(), 0);
}

#[test]
fn a_connection_waiting_behind_a_writer_is_shown_with_what_it_waits_for() {
    let (_dir, db) = cli_support::network_database(50);
    let writer = Holder::start(&db, Hold::Write, None);
    sqlite_netfs::register().unwrap();
    let uri = cli_support::uri(&db);
    // The writer spilled its pages: it holds EXCLUSIVE, so this connection is refused even
    // SHARED, and after 20 ms of refusals the table records its wait.
    let waiter = std::thread::spawn(move || {
        let conn = sqlite_netfs::rusqlite::Connection::open(uri).unwrap();
        conn.busy_timeout(std::time::Duration::from_secs(20))
            .unwrap();
        conn.execute_batch("BEGIN IMMEDIATE; UPDATE t SET x = 1; COMMIT;")
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    let out = run(&["doctor", path(&db), "--json", "--no-wait"]);
    let json = out.stdout.trim();
    let waiting = &json[json.find(r#""waiting":["#).expect("a waiting list")..];
    let waiting = &waiting[..waiting.find(']').unwrap()];
    let pid = std::process::id();
    assert!(
        waiting.contains(&format!(r#""pid":{pid},"connection":"#))
            && waiting.contains(r#""wants":"SHARED","this_host":true,"writers_queue_place":null"#),
        "{json}"
    );
    let text = run(&["doctor", path(&db), "--no-wait"]);
    let shown = text
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("waiting"))
        .unwrap_or_else(|| panic!("no waiting line in {}", text.stdout));
    assert!(
        shown.contains(&format!("this host pid {pid} connection "))
            && shown.ends_with(": for SHARED"),
        "{shown}"
    );
    assert!(writer.commit());
    waiter.join().unwrap().unwrap();
}
