//! Small filesystems and unprivileged processes for the fault tests that need them: a
//! size-limited tmpfs this test mounts itself (disk full, read-only mount), and a probe
//! process that opens a database and reports what each step returned, run under any uid
//! (root ignores permission bits, so permission faults need another user).
//!
//! Every test binary that uses the probe declares:
//! ```ignore
//! #[test]
//! #[ignore = "probe process entry point, spawned by the tests in this file"]
//! fn probe_process() { common::scratch::probe_from_env() }
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sqlite_netfs::rusqlite::{Connection, OpenFlags};

/// The unprivileged user the permission faults run as (`nobody` on Debian).
pub const NOBODY: u32 = 65534;

/// A tmpfs mounted on a fresh directory, unmounted on drop.
pub struct SmallTmpfs {
    _holder: Option<tempfile::TempDir>,
    mount_point: PathBuf,
}

impl SmallTmpfs {
    /// Mounts a tmpfs with `options` (e.g. `size=1m,nr_inodes=32`) in a temporary directory.
    /// Needs root.
    pub fn mount(options: &str) -> Result<SmallTmpfs, String> {
        let holder = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut fs = SmallTmpfs::mount_on(&holder.path().join("mnt"), options)?;
        fs._holder = Some(holder);
        Ok(fs)
    }

    /// Mounts a tmpfs with `options` on `dir`, a new directory (e.g. inside a testbed's export,
    /// where the clients see it as a subdirectory). Needs root.
    pub fn mount_on(dir: &Path, options: &str) -> Result<SmallTmpfs, String> {
        std::fs::create_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir))?;
        Ok(SmallTmpfs {
            _holder: None,
            mount_point: dir.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.mount_point
    }

    /// `mount -o remount,<options>`, e.g. `ro` or `rw`.
    pub fn remount(&self, options: &str) {
        run(Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.mount_point))
        .unwrap();
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        if run(Command::new("umount").arg(&self.mount_point)).is_err() {
            // Something still has a file open there (a failed test's straggler): detach it.
            let _ = run(Command::new("umount").arg("-l").arg(&self.mount_point));
        }
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Skips (or fails in CI) a test whose scratch filesystem cannot be mounted here.
pub fn mount_or_skip(options: &str) -> Option<SmallTmpfs> {
    mounted_or_skip(SmallTmpfs::mount(options))
}

/// A scratch tmpfs mounted with [`SmallTmpfs::mount_on`], or `None` (skipped) as above.
pub fn mount_on_or_skip(dir: &Path, options: &str) -> Option<SmallTmpfs> {
    mounted_or_skip(SmallTmpfs::mount_on(dir, options))
}

fn mounted_or_skip(mounted: Result<SmallTmpfs, String>) -> Option<SmallTmpfs> {
    match mounted {
        Ok(m) => Some(m),
        Err(reason) => {
            let in_ci =
                std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
            assert!(!in_ci, "cannot mount a scratch tmpfs (CI=true): {reason}");
            eprintln!("SKIPPED: cannot mount a scratch tmpfs (needs root): {reason}");
            None
        }
    }
}

const PROBE_ENV: &str = "SQLITE_NETFS_TEST_PROBE";

/// What one probe step returned: `Ok(value)` or `Err("Code(extended) message")`.
pub type Step = Result<String, String>;

/// What a probe process reported, step by step, or that it had to be killed.
#[derive(Debug)]
pub struct ProbeReport {
    pub open: Step,
    /// `read`: the number of rows in `t`; `write`: the rows after inserting one.
    pub steps: Vec<(String, Step)>,
    pub hung: bool,
    pub elapsed: Duration,
}

impl ProbeReport {
    pub fn step(&self, name: &str) -> &Step {
        &self
            .steps
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no step {name} in {self:?}"))
            .1
    }
}

/// Runs this test binary's `probe_process` as `uid` (gid the same; `None`: as this user),
/// which opens `uri`, runs `steps` (`read`, `write`, `hold`) on table `t`, and reports each
/// result. A probe still running after `deadline` is killed and reported as hung.
pub fn probe(uid: Option<u32>, uri: &str, steps: &[&str], deadline: Duration) -> ProbeReport {
    probe_with_env(uid, uri, steps, deadline, &[])
}

/// As [`probe`], with extra environment variables (e.g. a host identity).
pub fn probe_with_env(
    uid: Option<u32>,
    uri: &str,
    steps: &[&str],
    deadline: Duration,
    env: &[(&str, &str)],
) -> ProbeReport {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().expect("test binary path");
    let mut cmd = Command::new(exe);
    cmd.args([
        "--exact",
        "probe_process",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
        "-q",
    ])
    .env(PROBE_ENV, format!("{uri}\n{}", steps.join(",")))
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawn probe");
    let hung = loop {
        if child.try_wait().expect("wait").is_some() {
            break false;
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            break true;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = child.wait_with_output().expect("probe output");
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut open = Err("no report".to_owned());
    let mut reported = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("PROBE ") else {
            continue;
        };
        let (name, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        let step = match rest.split_once(' ') {
            Some(("ok", v)) => Ok(v.to_owned()),
            Some(("err", m)) => Err(m.to_owned()),
            _ => Err(format!("unparsed probe line {line:?}")),
        };
        if name == "open" {
            open = step;
        } else {
            reported.push((name.to_owned(), step));
        }
    }
    ProbeReport {
        open,
        steps: reported,
        hung,
        elapsed,
    }
}

fn describe(e: &sqlite_netfs::rusqlite::Error) -> String {
    match e.sqlite_error() {
        Some(s) => format!("{:?}({}) {e}", s.code, s.extended_code),
        None => e.to_string(),
    }
}

/// The body of each binary's ignored `probe_process` test.
pub fn probe_from_env() {
    let Ok(text) = std::env::var(PROBE_ENV) else {
        return; // run by hand with --ignored: nothing to do
    };
    let (uri, steps) = text.split_once('\n').expect("uri and steps");
    sqlite_netfs::register().expect("register");
    let flags = if uri.contains("mode=ro") {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI
    } else {
        OpenFlags::default()
    };
    let conn = match Connection::open_with_flags(uri, flags) {
        Ok(c) => {
            println!("PROBE open ok -");
            c
        }
        Err(e) => {
            println!("PROBE open err {}", describe(&e));
            return;
        }
    };
    conn.busy_timeout(Duration::from_secs(2)).unwrap();
    for step in steps.split(',').filter(|s| !s.is_empty()) {
        let result = match step {
            "read" => conn.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0)),
            "write" => conn
                .execute("INSERT INTO t VALUES (randomblob(100))", [])
                .and_then(|_| conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))),
            // Dies as a crash would, in the middle of a write transaction: RESERVED held, a
            // row written to the page cache and possibly the journal, no COMMIT.
            "hold" => conn
                .execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (randomblob(100));")
                .map(|()| -> i64 {
                    println!("PROBE hold ok held");
                    loop {
                        std::thread::sleep(Duration::from_secs(60));
                    }
                }),
            other => panic!("unknown probe step {other}"),
        };
        match result {
            Ok(v) => println!("PROBE {step} ok {v}"),
            Err(e) => println!("PROBE {step} err {}", describe(&e).replace('\n', " ")),
        }
    }
}
