//! Shared by the `cli_*` tests: running the `sqlite-netfs` command, and holder processes that
//! keep or (killed) leave entries in a database's lock table.
//!
//! A holder is this test binary run again with only its ignored `holder_process` test (the
//! crate's pattern for worker processes, DESIGN.md ADR 10), so it is a real process with its
//! own pid, heartbeat and, with `SQLITE_NETFS_HOST_ID`, its own host identity.

#![allow(dead_code)] // each test binary uses a different part

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use sqlite_netfs::rusqlite::Connection;

/// The holders' lease, short so a watch for one fits a test; the command gets it as `--lease`.
pub const LEASE: Duration = Duration::from_secs(2);
pub const LEASE_ARG: &str = "2";
const VFS: &str = "netfs-cli-lease2";
const DB_ENV: &str = "CLI_HOLDER_DB";
const HOLD_ENV: &str = "CLI_HOLDER_HOLD";

/// What one run of the command did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `sqlite-netfs ARGS` with no mode setting in its environment.
pub fn run<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_sqlite-netfs"))
        .args(args)
        .env_remove("SQLITE_NETFS")
        .output()
        .expect("run sqlite-netfs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// An unprivileged user (`nobody`) to run the command as when the tests run as root, for
/// whom file modes do not apply.
pub const NOBODY: u32 = 65534;

/// `p` as a command-line argument; the tests' temporary paths are UTF-8.
pub fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn register() {
    sqlite_netfs::Builder::new()
        .vfs_name(VFS)
        .lease(LEASE)
        .register()
        .expect("register the test VFS");
}

pub fn uri(db: &Path) -> String {
    format!("file:{}?vfs={VFS}&netfs=on", db.display())
}

/// A database `app.db` in a new directory, made in network mode (so its lock table exists)
/// with `rows` rows in `t(id INTEGER PRIMARY KEY, x)`.
pub fn network_database(rows: u32) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    register();
    let conn = Connection::open(uri(&db)).unwrap();
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, x)")
        .unwrap();
    for _ in 0..rows {
        conn.execute("INSERT INTO t(x) VALUES (randomblob(100))", [])
            .unwrap();
    }
    (dir, db)
}

/// What a holder holds.
#[derive(Debug, Clone, Copy)]
pub enum Hold {
    /// A read transaction: SHARED.
    Read,
    /// A write transaction whose changes outgrew the page cache: RESERVED (EXCLUSIVE while
    /// spilling), the journal synced with its header, and pages written into the database
    /// file. Killed, it leaves a hot journal.
    Write,
}

/// A running holder process. Dropping it kills it.
pub struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Holder {
    /// Starts a holder of `db` (as host `host`, or this host) and waits until it holds.
    pub fn start(db: &Path, hold: Hold, host: Option<&str>) -> Holder {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--ignored",
            "--exact",
            "holder_process",
            "--nocapture",
            "-q",
        ])
        .env(DB_ENV, db)
        .env(HOLD_ENV, format!("{hold:?}"))
        .env_remove("SQLITE_NETFS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
        match host {
            Some(h) => cmd.env(sqlite_netfs::HOST_ID_ENV, h),
            None => cmd.env_remove(sqlite_netfs::HOST_ID_ENV),
        };
        let mut child = cmd.spawn().expect("spawn holder");
        let stdin = child.stdin.take();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Should the holder fail, its stdin closes with this frame and it ends.
        wait_for(&mut lines, "holding");
        Holder {
            child,
            stdin,
            lines,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, leaving its entry (and journal) behind.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Asks it to commit and finish; true if its COMMIT succeeded (its lock was never taken
    /// from it).
    pub fn commit(mut self) -> bool {
        let mut stdin = self.stdin.take().unwrap();
        writeln!(stdin, "commit").unwrap();
        drop(stdin);
        let outcome = self
            .lines
            .by_ref()
            .map_while(Result::ok)
            .find(|l| l.starts_with("commit "));
        self.child.wait().unwrap();
        outcome.as_deref() == Some("commit ok")
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for(lines: &mut impl Iterator<Item = std::io::Result<String>>, word: &str) {
    for line in lines.by_ref() {
        if line.unwrap().trim() == word {
            return;
        }
    }
    panic!("holder ended before saying {word:?}");
}

/// The body of each test file's ignored `holder_process` test.
pub fn holder_from_env() {
    let (Ok(db), Ok(hold)) = (std::env::var(DB_ENV), std::env::var(HOLD_ENV)) else {
        return; // run by hand with --ignored: nothing to hold
    };
    register();
    let conn = Connection::open(uri(Path::new(&db))).unwrap();
    conn.busy_timeout(Duration::from_secs(20)).unwrap();
    if hold == "Read" {
        conn.execute_batch("BEGIN").unwrap();
        let _: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
    } else {
        // A cache of a few pages makes the update spill into the database file; before a
        // spill SQLite leaves the journal's header zeroed (not hot), after it the journal is
        // what a rollback needs.
        conn.execute_batch(
            "PRAGMA cache_size = 5; BEGIN IMMEDIATE; UPDATE t SET x = randomblob(3000);",
        )
        .unwrap();
    }
    println!("holding");
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    let outcome = conn.execute_batch("COMMIT");
    println!(
        "commit {}",
        outcome.map_or_else(|e| format!("failed: {e}"), |()| "ok".into())
    );
    std::io::stdout().flush().unwrap();
}

const WRITER_ENV: &str = "CLI_UNLOCKED_WRITER";

/// Starts a writer that inserts into `db`'s `t(w, i, x)` for `secs` seconds through SQLite's
/// `unix-none` VFS, which takes no locks at all: what native SQLite does on a network
/// filesystem whose locks do not cross hosts. Several of them corrupt the file.
pub fn start_unlocked_writer(db: &Path, id: u32, secs: f64) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "unlocked_writer_process", "-q"])
        .env(DB_ENV, db)
        .env(WRITER_ENV, format!("{id} {secs}"))
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn writer")
}

/// The body of the ignored `unlocked_writer_process` test.
pub fn unlocked_writer_from_env() {
    let (Ok(db), Ok(job)) = (std::env::var(DB_ENV), std::env::var(WRITER_ENV)) else {
        return;
    };
    let (id, secs) = job.split_once(' ').unwrap();
    let id: i64 = id.parse().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs_f64(secs.parse().unwrap());
    let Ok(conn) = Connection::open_with_flags_and_vfs(
        &db,
        sqlite_netfs::rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE,
        c"unix-none",
    ) else {
        return;
    };
    let mut i: i64 = 0;
    while std::time::Instant::now() < deadline {
        let wrote = conn.execute_batch("BEGIN").and_then(|()| {
            conn.execute(
                "INSERT INTO t(w, i, x) VALUES (?1, ?2, randomblob(50 + ?2 * 97 % 3000))",
                (id, i),
            )?;
            conn.execute_batch("COMMIT")
        });
        if wrote.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        i += 1;
    }
}

/// The JSON object of the holder with `pid` in doctor's `holders` array.
pub fn holder_json(json: &str, pid: u32) -> &str {
    let at = json
        .find(&format!("\"pid\":{pid},"))
        .unwrap_or_else(|| panic!("no holder with pid {pid} in {json}"));
    let start = json[..at].rfind('{').unwrap();
    let end = at + json[at..].find('}').unwrap() + 1;
    &json[start..end]
}

/// The codes of doctor's findings, in order.
pub fn finding_codes(json: &str) -> Vec<&str> {
    json.match_indices("\"code\":\"")
        .map(|(i, m)| {
            let rest = &json[i + m.len()..];
            &rest[..rest.find('"').unwrap()]
        })
        .collect()
}
