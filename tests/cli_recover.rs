//! `sqlite-netfs recover`: rows around overwritten pages are salvaged and the lost ones
//! counted; the damaged file (and its journal) is never written; bad paths are refused by
//! name.

mod cli_support;

use std::os::unix::fs::FileExt;
use std::path::Path;

use cli_support::{Hold, Holder, path, run};
use sqlite_netfs::rusqlite::Connection;

#[test]
#[ignore = "holder process entry point, spawned by the tests in this file"]
fn holder_process() {
    cli_support::holder_from_env()
}

#[test]
#[ignore = "writer process entry point, spawned by the tests in this file"]
fn unlocked_writer_process() {
    cli_support::unlocked_writer_from_env()
}

fn payload(id: i64) -> String {
    format!("row {id} {}", "x".repeat(150))
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h: u64, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn digest(p: &Path) -> u64 {
    fnv(&std::fs::read(p).unwrap())
}

/// `(recovered, lost if known, the line)` from recover's line for `table`.
fn figures<'a>(stdout: &'a str, table: &str) -> (u64, Option<u64>, &'a str) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("{table}: ")))
        .unwrap_or_else(|| panic!("no line for {table} in {stdout}"));
    let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
    let recovered = words[1].parse().unwrap();
    let lost = if line.contains("none lost") {
        Some(0)
    } else if line.contains("rows lost unknown") || line.contains("at least") {
        None
    } else {
        Some(words[4].parse().unwrap())
    };
    (recovered, lost, line)
}

#[test]
fn rows_around_overwritten_pages_are_recovered_and_the_lost_counted() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.db");
    let conn = Connection::open(&broken).unwrap();
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, x TEXT); BEGIN;")
        .unwrap();
    for id in 1..=3000 {
        conn.execute("INSERT INTO t VALUES (?1, ?2)", (id, payload(id)))
            .unwrap();
    }
    conn.execute_batch(
        "COMMIT; CREATE INDEX t_x ON t(x); CREATE TABLE u(v); INSERT INTO u VALUES (42);",
    )
    .unwrap();
    drop(conn);
    // Three leaves of t, well inside it (its pages come first, after the schema's).
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&broken)
        .unwrap();
    for page in [20u64, 21, 40] {
        f.write_all_at(&[0xA5; 4096], (page - 1) * 4096).unwrap();
    }
    drop(f);
    let before = digest(&broken);

    let new = dir.path().join("new.db");
    let out = run(&["recover", path(&broken), path(&new)]);
    assert_eq!(out.code, 1, "rows were lost: {out:?}");
    println!("{}", out.stdout);
    let (recovered, lost, line) = figures(&out.stdout, "t");
    let lost = lost.expect("counted");
    assert!(lost > 0 && recovered > 2500, "{line}");
    assert_eq!(
        recovered + lost,
        3000,
        "counted exactly by the intact index: {line}"
    );
    assert!(line.contains("counted by index t_x"), "{line}");
    assert_eq!(figures(&out.stdout, "u").0, 1);
    assert_eq!(digest(&broken), before, "the damaged file was written");

    let new = Connection::open(&new).unwrap();
    let check: String = new
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let mut stmt = new.prepare("SELECT id, x FROM t ORDER BY id").unwrap();
    let rows: Vec<(i64, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len() as u64, recovered);
    assert!(
        rows.iter().all(|(id, x)| *x == payload(*id)),
        "a row came back changed"
    );
    let index: i64 = new
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type='index' AND name='t_x'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(index, 1, "the index is made again");
}

#[test]
fn the_damaged_file_and_its_hot_journal_are_never_written_and_the_copy_is_rolled_back() {
    let (dir, db) = cli_support::network_database(50);
    let writer = Holder::start(&db, Hold::Write, None);
    writer.kill();
    let journal = dir.path().join("app.db-journal");
    let (db_before, journal_before) = (digest(&db), digest(&journal));
    assert!(std::fs::metadata(&journal).unwrap().len() > 0);

    let new = dir.path().join("new.db");
    let out = run(&["recover", path(&db), path(&new)]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(figures(&out.stdout, "t").0, 50, "{}", out.stdout);
    assert_eq!(digest(&db), db_before, "the damaged file was written");
    assert_eq!(digest(&journal), journal_before, "its journal was written");
    // The killed writer's spilled 3000-byte rows are rolled back in the copy: what was
    // committed comes out.
    let new = Connection::open(&new).unwrap();
    let longest: i64 = new
        .query_row("SELECT max(length(x)) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(longest, 100);
    let leftovers: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("recovering"))
        .collect();
    assert!(leftovers.is_empty(), "work files left: {leftovers:?}");
}

#[test]
fn bad_paths_are_refused_by_name_and_nothing_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.db");
    let new = dir.path().join("new.db");
    let out = run(&["recover", path(&missing), path(&new)]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("missing.db"), "{out:?}");
    assert!(!new.exists());

    let broken = dir.path().join("broken.db");
    Connection::open(&broken)
        .unwrap()
        .execute_batch("CREATE TABLE t(x)")
        .unwrap();
    std::fs::write(&new, b"mine").unwrap();
    let out = run(&["recover", path(&broken), path(&new)]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("exists"), "{out:?}");
    assert_eq!(std::fs::read(&new).unwrap(), b"mine");
    let out = run(&["recover", path(&broken)]);
    assert!(
        out.code == 2 && out.stderr.contains("BROKEN NEW"),
        "{out:?}"
    );
    for (args, named) in [
        (["recover", path(&broken), ""], "NEW is empty"),
        (["recover", "", path(&new)], "BROKEN is empty"),
    ] {
        let out = run(&args);
        assert!(out.code == 2 && out.stderr.contains(named), "{out:?}");
    }
    let out = run(&[
        "recover",
        path(dir.path()),
        path(&dir.path().join("other.db")),
    ]);
    assert!(
        out.code == 2 && out.stderr.contains("not a database file"),
        "a directory: {out:?}"
    );
}

#[test]
fn a_file_native_sqlite_corrupted_without_working_locks_is_salvaged_into_real_rows() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    Connection::open(&db)
        .unwrap()
        .execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, w, i, x); CREATE INDEX t_wi ON t(w, i);",
        )
        .unwrap();
    // Rounds of four writers without locks, until the file is damaged (the negative control
    // of the acceptance tests, on a local disk).
    let mut damaged = false;
    for _ in 0..10 {
        let writers: Vec<_> = (1..=4)
            .map(|id| cli_support::start_unlocked_writer(&db, id, 1.5))
            .collect();
        for mut w in writers {
            w.wait().unwrap();
        }
        let checked = Connection::open(&db)
            .and_then(|c| c.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0)));
        if checked.as_deref() != Ok("ok") {
            damaged = true;
            break;
        }
    }
    assert!(
        damaged,
        "ten rounds of writers without locks left the file intact"
    );
    let doctor = run(&["doctor", path(&db), "--check", "--full", "--no-wait"]);
    assert_eq!(doctor.code, 2, "{doctor:?}");
    assert!(doctor.stdout.contains("[integrity]"), "{}", doctor.stdout);

    // --strict: a row that decoded from damage, which its index contradicts, stays out.
    let new = dir.path().join("salvaged.db");
    let out = run(&["recover", path(&db), path(&new), "--strict"]);
    assert!(out.code == 0 || out.code == 1, "{out:?}");
    println!("{}", out.stdout);
    let (recovered, lost, line) = figures(&out.stdout, "t");
    assert_eq!(
        out.code == 1,
        lost != Some(0) || line.contains("left out"),
        "{line}"
    );
    assert!(recovered > 0, "{line}");
    let new = Connection::open(&new).unwrap();
    let check: String = new
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    // Every row that came out is one a writer wrote, whole: no garbage taken for a row.
    let bad: i64 = new
        .query_row(
            "SELECT count(*) FROM t WHERE w NOT BETWEEN 1 AND 4 OR typeof(i) != 'integer' OR length(x) != 50 + i * 97 % 3000",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(bad, 0, "rows that no writer wrote came out");
    let n: i64 = new
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n as u64, recovered);
}

#[test]
fn a_row_whose_values_disagree_with_an_intact_index_is_counted_and_with_strict_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.db");
    let conn = Connection::open(&broken).unwrap();
    conn.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, worker INTEGER, x TEXT);
         CREATE INDEX t_worker ON t(worker);",
    )
    .unwrap();
    for id in 1..=100 {
        conn.execute(
            "INSERT INTO t VALUES (?1, ?2, ?3)",
            (id, id % 4, payload(id)),
        )
        .unwrap();
    }
    // Change row 50 behind the index's back, as a damaged page that still decodes would:
    // SQLite forgets the index for a moment, so it is not updated.
    let (root, sql): (i64, String) = conn
        .query_row(
            "SELECT rootpage, sql FROM sqlite_master WHERE name = 't_worker'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    conn.execute_batch(
        "PRAGMA writable_schema = ON; DELETE FROM sqlite_master WHERE name = 't_worker';",
    )
    .unwrap();
    drop(conn);
    let conn = Connection::open(&broken).unwrap();
    conn.execute("UPDATE t SET worker = 99 WHERE id = 50", [])
        .unwrap();
    conn.execute_batch("PRAGMA writable_schema = ON").unwrap();
    conn.execute(
        "INSERT INTO sqlite_master VALUES ('index', 't_worker', 't', ?1, ?2)",
        (root, sql),
    )
    .unwrap();
    drop(conn);
    let rows_of = |db: &Path| -> Vec<(i64, i64, String)> {
        Connection::open(db)
            .unwrap()
            .prepare("SELECT id, worker, x FROM t ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };

    // By default the row is kept, and named as in doubt.
    let kept = dir.path().join("kept.db");
    let out = run(&["recover", path(&broken), path(&kept)]);
    println!("{}", out.stdout);
    assert_eq!(out.code, 1, "a row is in doubt: {out:?}");
    let (recovered, lost, line) = figures(&out.stdout, "t");
    assert_eq!((recovered, lost), (100, Some(0)), "{line}");
    assert!(
        line.contains(
            "1 kept whose values disagree with index t_worker (--strict leaves them out)"
        ),
        "{line}"
    );
    let rows = rows_of(&kept);
    assert_eq!(rows.len(), 100);
    assert!(rows.contains(&(50, 99, payload(50))));

    // --strict leaves it out, counted among the lost, not as unreadable.
    let strict = dir.path().join("strict.db");
    let out = run(&["recover", path(&broken), path(&strict), "--strict"]);
    println!("{}", out.stdout);
    assert_eq!(out.code, 1, "a row was left out: {out:?}");
    let (recovered, lost, line) = figures(&out.stdout, "t");
    assert_eq!((recovered, lost), (99, Some(1)), "{line}");
    assert!(
        line.contains("1 left out: read whole, but their values disagree with index t_worker"),
        "{line}"
    );
    assert!(!line.contains("unreadable"), "it was read: {line}");
    let rows = rows_of(&strict);
    assert_eq!(rows.len(), 99);
    assert!(
        rows.iter()
            .all(|(id, w, x)| *id != 50 && *w == id % 4 && *x == payload(*id)),
        "only the rows as written came out"
    );
}

#[test]
fn the_schema_comes_back_whole_and_autoincrement_keeps_its_memory() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.db");
    let conn = Connection::open(&old).unwrap();
    conn.execute_batch(
        "CREATE TABLE a(id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE, twice AS (id * 2));
         CREATE TABLE w(k TEXT PRIMARY KEY, v) WITHOUT ROWID;
         CREATE VIEW big AS SELECT * FROM a WHERE id > 50;
         CREATE TRIGGER log AFTER INSERT ON a BEGIN INSERT INTO w VALUES ('t' || new.id, 1); END;
         CREATE VIRTUAL TABLE f USING fts5(body);
         INSERT INTO f VALUES ('salvage every readable row');",
    )
    .unwrap();
    for i in 1..=100 {
        conn.execute("INSERT INTO a(name) VALUES (?1)", [format!("n{i}")])
            .unwrap();
    }
    // AUTOINCREMENT remembers 100 although the largest rowid left is 90.
    conn.execute("DELETE FROM a WHERE id > 90", []).unwrap();
    drop(conn);

    let new = dir.path().join("new.db");
    let out = run(&["recover", path(&old), path(&new)]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(figures(&out.stdout, "a").0, 90, "{}", out.stdout);
    assert_eq!(figures(&out.stdout, "w").0, 100, "{}", out.stdout);
    assert!(!out.stdout.contains("not made again"), "{}", out.stdout);

    let new = Connection::open(&new).unwrap();
    let objects: Vec<String> = new
        .prepare("SELECT type || ' ' || name FROM sqlite_master WHERE name IN ('a', 'w', 'big', 'log', 'f') ORDER BY 1")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        objects,
        ["table a", "table f", "table w", "trigger log", "view big"]
    );
    let hit: String = new
        .query_row("SELECT body FROM f WHERE f MATCH 'readable'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(hit, "salvage every readable row");
    // The trigger did not fire on the copy (w has exactly the old rows), and fires now.
    new.execute("INSERT INTO a(name) VALUES ('fresh')", [])
        .unwrap();
    let (id, twice): (i64, i64) = new
        .query_row("SELECT id, twice FROM a WHERE name = 'fresh'", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((id, twice), (101, 202), "AUTOINCREMENT reused a rowid");
    let logged: i64 = new
        .query_row("SELECT count(*) FROM w", [], |r| r.get(0))
        .unwrap();
    assert_eq!(logged, 101);
}

#[test]
fn recover_copies_under_the_read_lock_so_a_live_writer_finishes_first() {
    let (dir, db) = cli_support::network_database(50);
    let writer = Holder::start(&db, Hold::Write, None);
    let new = dir.path().join("new.db");
    let recover = {
        let (db, new) = (db.clone(), new.clone());
        std::thread::spawn(move || {
            run(&[
                "recover",
                path(&db),
                path(&new),
                "--lease",
                cli_support::LEASE_ARG,
            ])
        })
    };
    // The writer is EXCLUSIVE with pages spilled into the file: a copy now would be torn.
    std::thread::sleep(std::time::Duration::from_millis(700));
    assert!(!new.exists(), "recover did not wait for the writer");
    assert!(writer.commit(), "the writer lost its lock to recover");
    let out = recover.join().unwrap();
    assert_eq!(out.code, 0, "{out:?}");
    let new = Connection::open(&new).unwrap();
    let shortest: i64 = new
        .query_row("SELECT min(length(x)) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(shortest, 3000, "the copy is not the committed state");
}

/// Reads an SQLite varint at `at`: its value and length.
fn varint(bytes: &[u8], at: usize) -> (u64, usize) {
    let mut v = 0u64;
    for i in 0..9 {
        let b = bytes[at + i];
        if i == 8 {
            return ((v << 8) | u64::from(b), 9);
        }
        v = (v << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            return (v, i + 1);
        }
    }
    unreachable!()
}

#[test]
fn a_row_with_one_unreadable_value_is_lost_or_with_partial_kept_with_null() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.db");
    let conn = Connection::open(&old).unwrap();
    conn.execute_batch("PRAGMA page_size = 4096; CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, body BLOB); BEGIN;")
        .unwrap();
    for id in 1..=200 {
        conn.execute(
            "INSERT INTO t VALUES (?1, ?2, zeroblob(300))",
            (id, format!("n{id}")),
        )
        .unwrap();
    }
    conn.execute_batch("COMMIT").unwrap();
    drop(conn);
    // In a leaf of t, make the first cell's record header claim a 3000-byte body, past the
    // end of its 300-byte payload: the row's name stays readable, its body does not.
    let mut file = std::fs::read(&old).unwrap();
    let page = 5usize;
    let p = &mut file[(page - 1) * 4096..page * 4096];
    assert_eq!(p[0], 0x0d, "page {page} is a table leaf");
    let cell = usize::from(u16::from_be_bytes([p[8], p[9]]));
    let (_, n1) = varint(p, cell); // payload size
    let (rowid, n2) = varint(p, cell + n1);
    let record = cell + n1 + n2;
    let (_, n3) = varint(p, record); // header size
    let (id_type, n4) = varint(p, record + n3);
    assert_eq!(id_type, 0, "INTEGER PRIMARY KEY is stored as NULL");
    let (name_type, n5) = varint(p, record + n3 + n4);
    let body = record + n3 + n4 + n5;
    assert_eq!(varint(p, body), (2 * 300 + 12, 2));
    let claimed = 2 * 3000 + 12u16; // two varint bytes, as before
    p[body] = 0x80 | (claimed >> 7) as u8;
    p[body + 1] = (claimed & 0x7f) as u8;
    std::fs::write(&old, &file).unwrap();
    let name = String::from_utf8(
        file[(page - 1) * 4096 + body + 2..][..(name_type as usize - 13) / 2].to_vec(),
    )
    .unwrap();
    assert_eq!(name, format!("n{rowid}"));

    let whole = dir.path().join("whole.db");
    let out = run(&["recover", path(&old), path(&whole)]);
    assert_eq!(out.code, 1, "{out:?}");
    let (recovered, lost, line) = figures(&out.stdout, "t");
    assert_eq!((recovered, lost), (199, Some(1)), "{line}");
    assert!(
        line.contains(&format!("rowids {rowid}..={rowid} unreadable")),
        "{line}"
    );

    let partly = dir.path().join("partly.db");
    let out = run(&["recover", path(&old), path(&partly), "--partial"]);
    assert_eq!(
        out.code, 1,
        "a row kept partly is not a whole recovery: {out:?}"
    );
    let (recovered, lost, line) = figures(&out.stdout, "t");
    assert_eq!((recovered, lost), (200, Some(0)), "{line}");
    assert!(
        line.contains("(1 with unreadable values set to NULL)"),
        "{line}"
    );
    let kept: (String, Option<Vec<u8>>) = Connection::open(&partly)
        .unwrap()
        .query_row(
            "SELECT name, body FROM t WHERE id = ?1",
            [rowid as i64],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(kept, (format!("n{rowid}"), None));
}
