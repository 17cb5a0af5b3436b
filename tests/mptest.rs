//! SQLite's own multi-process tester, `mptest`, with the loadable extension: built from the
//! source of Debian's sqlite3 package (fetched by `.ci/install-testbed-deps` into
//! `/var/cache/sqlite-netfs-mptest`, never committed) and linked to the system SQLite it was
//! written for, with `tests/mptest/netfs_main.c` loading the extension first in the main
//! process and in every client it starts. Each run uses `--vfs netfs`.
//!
//! `multiwrite01.test` (five clients writing their own tables at once, then checking each
//! other's) runs in forced network mode on a local disk and on the sshfs testbed;
//! `crash01.test` (a client dies mid-transaction; the others roll its journal back) and
//! `config02.test` (that crash under other settings) on a local disk in forced network mode.
//! README ("Where it is proven") says what the other scripts do, and `crash01` on sshfs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::testbed::{TwoHostTestbed, testbed_or_skip};

const SOURCE: &str = "/var/cache/sqlite-netfs-mptest";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The directory of mptest.c and its scripts in the unpacked source package.
fn mptest_dir() -> PathBuf {
    let found = std::fs::read_dir(SOURCE)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("mptest"))
        .find(|d| d.join("mptest.c").is_file());
    found.unwrap_or_else(|| {
        panic!("no sqlite3 source with mptest/mptest.c in {SOURCE}: run .ci/install-testbed-deps")
    })
}

/// Builds the extension and mptest-netfs, once; returns the program.
fn mptest() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        run(Command::new("bash").arg(repo().join("packages/build.sh")))?;
        let out = repo().join("target/mptest");
        std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
        let object = out.join("mptest.o");
        run(Command::new("cc")
            .args(["-O1", "-c", "-Dmain=mptest_main", "-o"])
            .arg(&object)
            .arg(mptest_dir().join("mptest.c")))?;
        let program = out.join("mptest-netfs");
        run(Command::new("cc")
            .args(["-O1", "-o"])
            .arg(&program)
            .arg(repo().join("tests/mptest/netfs_main.c"))
            .arg(&object)
            .arg("-lsqlite3"))?;
        Ok(program)
    });
    built.clone().unwrap_or_else(|e| panic!("{e}"))
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// Runs `script` on a database in `dir` (its clients under `tests/mptest/reap.py`, which
/// reaps them as init would) and returns (exit status ok, errors, tests) from its summary.
fn run_script(dir: &Path, script: &str, env: &[(&str, &str)]) -> (bool, u64, u64, String) {
    let db = dir.join("mptest.db");
    let mut cmd = Command::new("python3");
    cmd.arg(repo().join("tests/mptest/reap.py"))
        .arg("timeout")
        .arg("600")
        .arg(mptest())
        .arg(&db)
        .args(["--vfs", "netfs", script])
        .current_dir(mptest_dir())
        .env(
            "SQLITE_NETFS_EXTENSION",
            repo().join("target/release/libsqlite_netfs.so"),
        );
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run mptest");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = log
        .lines()
        .find_map(|l| l.strip_prefix("Summary: "))
        .unwrap_or_else(|| panic!("no summary from mptest {script}:\n{log}"))
        .to_owned();
    // "N errors out of M tests"
    let words: Vec<&str> = summary.split_whitespace().collect();
    let errors = words[0].parse().unwrap();
    let tests = words[4].parse().unwrap();
    eprintln!("FIGURES mptest {script} in {}: {summary}", dir.display());
    (out.status.success(), errors, tests, log)
}

fn script_passes(script: &str, dir: &Path, env: &[(&str, &str)]) {
    let (ok, errors, tests, log) = run_script(dir, script, env);
    let tail: Vec<&str> = log.lines().filter(|l| !l.starts_with("-D")).collect();
    assert!(
        ok && errors == 0 && tests > 0,
        "{script}: {errors} errors out of {tests} tests:\n{}",
        tail.join("\n")
    );
    // The database went through the shim in network mode: its lock table is beside it.
    assert!(dir.join("mptest.db-netfs-table").exists());
}

#[test]
fn mptest_multiwrite01_passes_in_forced_network_mode_on_a_local_disk() {
    let dir = tempfile::tempdir().unwrap();
    script_passes("multiwrite01.test", dir.path(), &[("SQLITE_NETFS", "on")]);
}

#[test]
fn mptest_multiwrite01_passes_on_sshfs() {
    let Some(testbed) = testbed_or_skip(TwoHostTestbed::sshfs()) else {
        return;
    };
    let dir = testbed.mount_a().join("mptest");
    std::fs::create_dir_all(&dir).unwrap();
    script_passes("multiwrite01.test", &dir, &[]);
}

/// A client dies in the middle of a large transaction; the others find its journal hot, and
/// one of them must get EXCLUSIVE to roll it back while all of them keep retrying.
#[test]
fn mptest_crash01_passes_in_forced_network_mode_on_a_local_disk() {
    let dir = tempfile::tempdir().unwrap();
    script_passes("crash01.test", dir.path(), &[("SQLITE_NETFS", "on")]);
}

/// The same crash under other page sizes and journal settings.
#[test]
fn mptest_config02_passes_in_forced_network_mode_on_a_local_disk() {
    let dir = tempfile::tempdir().unwrap();
    script_passes("config02.test", dir.path(), &[("SQLITE_NETFS", "on")]);
}
