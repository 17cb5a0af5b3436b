//! The loadable extension and the npm and Python packages, in the programs users run: Python's
//! sqlite3 module, Debian's sqlite3 shell, Node with better-sqlite3 and `node:sqlite`, Bun with
//! `bun:sqlite` and with drizzle-orm. Each keeps every acknowledged commit with writers on both sshfs "hosts"
//! and a reader, the database opened by its plain path after `load()` (the extension is the
//! default VFS: no `?vfs=`, as in a program that cannot pass one); each one's native control,
//! the same workers without the extension, must break.
//!
//! The workers are `tests/lang/*`, speaking the Rust workers' job and log format, so the
//! acceptance harness (`common::stress`) runs and verifies them. `tests/lang/prepare.sh`
//! builds the extension and installs the packages first (once per run of this binary).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::stress::{self, StressPlan, two_host_plan};
use common::testbed::{TwoHostTestbed, testbed_or_skip};
use common::worker::{Place, Program};

/// Transactions per writer (four writers): enough for every run to contend on both hosts.
const TRANSACTIONS: u32 = 100;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn extension() -> PathBuf {
    repo().join("target/release/libsqlite_netfs.so")
}

/// Builds the extension and installs the packages, once; a failure fails every test here.
fn prepared() {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let done = DONE.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo().join("tests/lang/prepare.sh"))
            .output()
            .map_err(|e| format!("run tests/lang/prepare.sh: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "tests/lang/prepare.sh failed ({}):\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(e) = done {
        panic!("{e}");
    }
}

/// A worker program of `tests/lang/`.
fn program(argv: &[&str], env: &[(&str, String)]) -> Place {
    Place::Program(Program {
        argv: argv.iter().map(|a| a.to_string()).collect(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    })
}

fn python() -> Place {
    let venv = repo().join("target/lang/venv/bin/python");
    let script = repo().join("tests/lang/python_worker.py");
    program(&[venv.to_str().unwrap(), script.to_str().unwrap()], &[])
}

fn sqlite3_shell() -> Place {
    let script = repo().join("tests/lang/cli_worker.py");
    program(
        &["/usr/bin/python3", script.to_str().unwrap()],
        &[(
            "SQLITE_NETFS_EXTENSION",
            extension().to_str().unwrap().to_owned(),
        )],
    )
}

fn js(runtime: &str, binding: &str) -> Place {
    let script = repo().join("tests/lang/js_worker.mjs");
    program(&[runtime, script.to_str().unwrap(), binding], &[])
}

fn node(binding: &str) -> Place {
    js("node", binding)
}

/// Node 22 (`tests/lang/prepare.sh` installs it), for `node:sqlite`.
fn node22(binding: &str) -> Place {
    let node = repo().join("target/lang/node22/node_modules/.bin/node");
    js(node.to_str().unwrap(), binding)
}

fn bun(binding: &str) -> Place {
    let bun = repo().join("tests/lang/node_modules/.bin/bun");
    js(bun.to_str().unwrap(), binding)
}

/// The acceptance workload, smaller, with every worker (writers on both mounts, the reader)
/// being `place`; WAL asked at open, as applications do.
fn plan(testbed: &TwoHostTestbed, label: &str, vfs: &str, place: Place) -> StressPlan {
    let mut plan = two_host_plan(testbed, label, vfs);
    plan.places = vec![place];
    plan.transactions = TRANSACTIONS;
    plan.journal_mode = "WAL".into();
    plan.deadline = std::time::Duration::from_secs(300);
    plan
}

/// Through the extension: every acknowledged commit kept, counter = rows, integrity ok, no
/// error but BUSY, the reader read.
fn extension_keeps_every_commit(label: &str, place: Place) {
    prepared();
    let Some(testbed) = testbed_or_skip(TwoHostTestbed::sshfs()) else {
        return;
    };
    let report = stress::run(&plan(&testbed, label, "netfs", place), &[]);
    assert!(report.reader_checks > 0, "{}", report.summary());
    assert!(
        report.correct() && report.acknowledged == 4 * u64::from(TRANSACTIONS),
        "{}",
        report.summary()
    );
}

/// The same workers without the extension must break (up to three tries).
fn native_breaks(label: &str, place: Place) {
    prepared();
    let Some(testbed) = testbed_or_skip(TwoHostTestbed::sshfs()) else {
        return;
    };
    let report = stress::expect_broken(plan(&testbed, label, "unix", place), 3);
    assert!(
        !report.correct(),
        "native SQLite came through intact three times: the control has lost its teeth: {}",
        report.summary()
    );
}

#[test]
fn python_sqlite3_keeps_every_commit_on_two_sshfs_hosts_after_load() {
    extension_keeps_every_commit("python", python());
}

#[test]
fn python_sqlite3_without_the_extension_loses_commits_or_corrupts() {
    native_breaks("python-native", python());
}

#[test]
fn sqlite3_shell_keeps_every_commit_on_two_sshfs_hosts_after_dot_load() {
    extension_keeps_every_commit("sqlite3-shell", sqlite3_shell());
}

#[test]
fn sqlite3_shell_without_the_extension_loses_commits_or_corrupts() {
    native_breaks("sqlite3-shell-native", sqlite3_shell());
}

#[test]
fn node_better_sqlite3_keeps_every_commit_on_two_sshfs_hosts_after_load() {
    extension_keeps_every_commit("better-sqlite3", node("better-sqlite3"));
}

#[test]
fn node_better_sqlite3_without_the_extension_loses_commits_or_corrupts() {
    native_breaks("better-sqlite3-native", node("better-sqlite3"));
}

#[test]
fn node_sqlite_keeps_every_commit_on_two_sshfs_hosts_after_load() {
    extension_keeps_every_commit("node-sqlite", node22("node-sqlite"));
}

#[test]
fn node_sqlite_without_the_extension_loses_commits_or_corrupts() {
    native_breaks("node-sqlite-native", node22("node-sqlite"));
}

#[test]
fn bun_sqlite_keeps_every_commit_on_two_sshfs_hosts_after_load() {
    extension_keeps_every_commit("bun-sqlite", bun("bun-sqlite"));
}

#[test]
fn bun_sqlite_without_the_extension_loses_commits_or_corrupts() {
    native_breaks("bun-sqlite-native", bun("bun-sqlite"));
}

#[test]
fn bun_drizzle_orm_keeps_every_commit_on_two_sshfs_hosts_after_load() {
    extension_keeps_every_commit("bun-drizzle", bun("bun-drizzle"));
}

/// Runs Debian's sqlite3 shell with `env`: `.load` of the extension, then `script`'s lines as
/// arguments. Returns whether it succeeded, and its output and errors together.
fn shell(script: &str, env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new("/usr/bin/sqlite3");
    cmd.args(["-batch", ":memory:"])
        .arg(format!(".load {}", extension().display()))
        .args(script.lines());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run /usr/bin/sqlite3");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn loaded_extension_is_the_default_vfs_unless_opted_out_and_keeps_local_disks_native() {
    prepared();
    let Some(testbed) = testbed_or_skip(TwoHostTestbed::sshfs()) else {
        return;
    };
    let remote = testbed.mount_a().join("default.db");
    let local_dir = tempfile::tempdir().unwrap();
    let local = local_dir.path().join("local.db");
    let probe = |db: &Path| format!(".open {}\nPRAGMA journal_mode=WAL;\n.vfsname", db.display());

    let (ok, out) = shell(&probe(&remote), &[]);
    assert!(ok, "{out}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["delete", "netfs(network)/unix"],
        "{out}"
    );

    // Auto mode: a local disk keeps SQLite's own VFS, WAL and all.
    let (ok, out) = shell(&probe(&local), &[]);
    assert!(ok, "{out}");
    assert_eq!(out.lines().collect::<Vec<_>>(), ["wal", "unix"], "{out}");

    // Opted out: plain paths stay native; `?vfs=netfs` still selects the shim.
    let opt_out = [("SQLITE_NETFS_DEFAULT_VFS", "0")];
    let (ok, out) = shell(&probe(&testbed.mount_b().join("opted-out.db")), &opt_out);
    assert!(ok, "{out}");
    assert_eq!(out.lines().last(), Some("unix"), "{out}");
    let uri = format!("file:{}?vfs=netfs", remote.display());
    let (ok, out) = shell(&format!(".open {uri}\n.vfsname"), &opt_out);
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "netfs(network)/unix", "{out}");
}

#[test]
fn bad_settings_fail_the_load_or_the_open_with_a_message_naming_them() {
    prepared();
    let (ok, out) = shell("SELECT 1;", &[("SQLITE_NETFS_DEFAULT_VFS", "yes")]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("SQLITE_NETFS_DEFAULT_VFS=\"yes\" is neither 0 nor 1"),
        "{out}"
    );
    assert!(
        !out.contains("\n1\n"),
        "the shell went on after a failed load: {out}"
    );

    let dir = tempfile::tempdir().unwrap();
    let uri = format!("file:{}?netfs=sometimes", dir.path().join("x.db").display());
    // The shell reports a failed `.open` and goes on; the message is what matters.
    let (_, out) = shell(&format!(".open {uri}"), &[]);
    assert!(
        out.contains("unknown value \"sometimes\" for URI parameter netfs"),
        "{out}"
    );
}

#[test]
fn python_package_names_the_extension_and_loads_it_into_debian_python() {
    prepared();
    let venv = repo().join("target/lang/venv/bin/python");
    let out = Command::new(venv)
        .args([
            "-c",
            "import sqlite3, sqlite_netfs\n\
             print(sqlite_netfs.loadable_path())\n\
             sqlite_netfs.load(sqlite3.connect(':memory:'))\n\
             print(sqlite3.sqlite_version)",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].ends_with("site-packages/sqlite_netfs/libsqlite_netfs.so"),
        "{text}"
    );
    eprintln!("FIGURES python-package sqlite_version={}", lines[1]);
}

#[test]
fn a_host_with_sqlite_older_than_3_40_1_gets_a_refusal_naming_both_versions() {
    prepared();
    let host = repo().join("target/lang/old_host");
    let built = Command::new("cc")
        .args(["-O1", "-o"])
        .arg(&host)
        .arg(repo().join("tests/lang/old_host.c"))
        .args(["-ldl", "-lsqlite3"])
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let out = Command::new(&host).arg(extension()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert_eq!(
        text.trim(),
        "rc=1 message=sqlite-netfs needs SQLite 3.40.1 or newer; this program runs SQLite 3.39.4"
    );
}
