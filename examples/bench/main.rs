//! Benchmarks: what the shim costs, measured side by side with the setups a user would pick
//! instead (issue 4).
//!
//! ```text
//! cargo run --release --example bench                        # quick mode, about 3 minutes on 2 cores
//! cargo run --release --example bench -- --full              # more rounds, longer, 50k rows
//! cargo run --release --example bench -- --only local-wal    # one scenario
//! ```
//! Options: `--out DIR` (default `target/bench`) receives `results.md`, `results.json` and
//! `chart.svg`; the markdown is also printed. `--only NAME` runs one scenario. `--seconds S` and
//! `--rounds N` override every window's duration and the number of rounds (for quick checks
//! while developing); the testbeds' four writers run to their share, not for a window. `--work-dir DIR` holds the databases (default `/var/tmp`, or the
//! output directory if `/var/tmp` is a tmpfs, where fsync costs nothing).
//!
//! **Why an own harness, not Criterion.** The scenarios are about processes: several writers
//! or readers share one database, start together and run for a fixed time. Criterion times a
//! closure inside one process, one benchmark after another. Here the alternatives run
//! interleaved in one run (A, B, A, B, ... for N rounds), so that a noisy machine's drift hits
//! them alike, and each result is a ratio of medians held against a goal.
//!
//! **One measurement.** The bench re-executes its own binary as worker processes
//! (`--worker ...`). Each opens its connection, prepares its statements and prints `READY`.
//! When all are ready, the parent sends `GO <start time>` on their stdin; they start at that
//! instant, run for the measurement's window (or until each has committed its share, then
//! printing `FINISHED_MS`) and print `COMMITS`, `BUSY`, `ERROR`, `LATENCY_US` and `DONE`
//! lines on stdout. Throughput = all commits / the window (or / the time until the last
//! worker was done, a worker short of its share counting as an error). Worker `i` opens
//! database `i mod n` of the job's `n`, so four writers over two mounts alternate between
//! them. Every alternative works on its own copy of one pre-filled database.
//!
//! **Workload** (agent session stores). `messages(id INTEGER PRIMARY KEY, session, ts, body
//! BLOB)` with an index on (session, ts), 20k rows (50k with `--full`), 100 per session, and
//! `sessions(id, updated)`. A write transaction: `BEGIN IMMEDIATE`, INSERT one message (a
//! 200 B–4 KB payload from a seeded PRNG), `UPDATE sessions SET updated=? WHERE id=?`,
//! `COMMIT`. A read transaction: a point read by id and the session's latest 20 messages.
//! Busy timeout 30 s, cut to what is left of the window so that a stall cannot carry a worker
//! past it; a transaction that still meets BUSY is retried and counted. WAL setups use
//! `synchronous=NORMAL`, rollback setups SQLite's default (FULL).
//!
//! **Scenarios** (ratios are subject / alternative, of median txn/s):
//! 1. `local-wal`: shim in auto mode (native pass-through) vs `unix`, both WAL, 1 process,
//!    writes and reads. Goal ≥ 0.98.
//! 2. `local-network-mode`: `netfs=on` vs `unix` DELETE, `unix` TRUNCATE and `unix-dotfile`,
//!    1 and 4 writer processes. Goal ≥ 0.8 of the faster native rollback mode.
//! 3. `reader-scaling`: network mode, 2 reader processes / 1. Goal ≥ 1.7; `unix-dotfile`
//!    beside it.
//! 4. `sshfs`: two-host sshfs testbed, shim vs `unix-dotfile`: 4 writers over both mounts,
//!    each until it committed its share, txn/s until the last one was done (goal ≥ 5.0); 1
//!    writer in a window (goal ≥ 1.5); shim vs native WAL, 1 writer (goal ≥ 0.5).
//! 5. `lock-latency`: 4 writers, network mode and `unix` DELETE: time from `BEGIN IMMEDIATE`
//!    until it returned OK (p50, p99, max) and commits per process (min/max).
//! 6. `smb`: two-host SMB testbed, 4 writers, each until it committed its share, shim vs
//!    `unix-dotfile` (its errors are reported instead of a ratio when it fails).
//! 7. `cost-anatomy`: where a write transaction's time goes. One writer under
//!    `strace -ff -T -y`; its calls between two marker look-ups are summed by file (database,
//!    journal, lock latch, lock table, ...) and call, with the wall time inside them. On the
//!    local disk network mode vs `unix` DELETE; on the sshfs testbed the shim in auto mode vs
//!    `unix-dotfile`, plus a shorter second run that also traces the testbed's SFTP servers
//!    (their file syscalls are the file-server operations).
//!
//! A scenario that cannot run (no testbed, no strace) is reported as skipped, with the reason.
//!
//! | module | owns |
//! |---|---|
//! | `options` | command-line options, the quick and full profiles |
//! | `setup` | how a worker opens the database, and its role |
//! | `worker` | the worker process |
//! | `runner` | spawning workers, starting them together, collecting their reports |
//! | `series` | one alternative over interleaved rounds, and its statistics |
//! | `databases` | the databases the scenarios run on |
//! | `scenarios` | the scenarios |
//! | `trace` | the cost anatomy's strace reading |
//! | `report` | rows, verdicts, records; markdown, JSON, chart |
//! | `machine` | the machine a run happened on |
//! | `run` | the run and the files it leaves |
//!
//! The testbeds and process utilities are the test harness's own (`tests/common/`).

use std::time::Duration;

mod databases;
mod machine;
mod options;
mod report;
mod run;
mod runner;
mod scenarios;
mod series;
mod setup;
mod trace;
mod worker;

use databases::*;
use machine::*;
use options::*;
use report::*;
use run::*;
use runner::*;
use scenarios::*;
use series::*;
use setup::*;
use trace::*;
use worker::*;

// The shared fixtures offer more than the bench uses.
#[allow(dead_code)]
#[path = "../../tests/common/process.rs"]
mod process;
#[allow(dead_code)]
#[path = "../../tests/common/testbed/mod.rs"]
mod testbed;

pub(crate) const USAGE: &str =
    "usage: bench [--full] [--out DIR] [--only NAME] [--seconds S] [--rounds N] [--work-dir DIR]";

pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long workers may take to open their connection (an SMB open is slow).
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Workers start this long after the last one is ready, all at the same instant.
pub(crate) const START_DELAY: Duration = Duration::from_millis(50);
/// How long a worker may overrun its window (a transaction stalled inside the VFS) before it
/// is killed.
pub(crate) const OVERRUN_GRACE: Duration = Duration::from_secs(50);
/// How long the SMB scenario waits for another SMB testbed (a test run) to finish.
pub(crate) const SMB_LOCK_WAIT: Duration = Duration::from_secs(30);
pub(crate) const STRACE: &str = "/usr/bin/strace";
/// `strace -ff -ttt -T -y`: one file per thread, each call with its start time, its duration
/// and the path behind every descriptor.
pub(crate) const STRACE_ARGS: [&str; 4] = ["-ff", "-ttt", "-T", "-y"];
pub(crate) const WINDOW_START: &str = "/.sqlite-netfs-bench-window-start";
pub(crate) const WINDOW_END: &str = "/.sqlite-netfs-bench-window-end";
pub(crate) const ROWS_PER_SESSION: u64 = 100;
pub(crate) const PAYLOAD_MIN: u64 = 200;
pub(crate) const PAYLOAD_MAX: u64 = 4096;

pub(crate) const SCHEMA: &str = "
    CREATE TABLE sessions(id INTEGER PRIMARY KEY, updated INTEGER NOT NULL);
    CREATE TABLE messages(id INTEGER PRIMARY KEY, session INTEGER NOT NULL, ts INTEGER NOT NULL,
                          body BLOB NOT NULL);
    CREATE INDEX messages_by_session_ts ON messages(session, ts);";
pub(crate) const INSERT_SESSION: &str = "INSERT INTO sessions(id, updated) VALUES (?1, 0)";
pub(crate) const INSERT_MESSAGE: &str =
    "INSERT INTO messages(session, ts, body) VALUES (?1, ?2, ?3)";
pub(crate) const UPDATE_SESSION: &str = "UPDATE sessions SET updated = ?1 WHERE id = ?2";
pub(crate) const POINT_READ: &str = "SELECT session, ts, body FROM messages WHERE id = ?1";
pub(crate) const RANGE_READ: &str =
    "SELECT id, ts, body FROM messages WHERE session = ?1 ORDER BY ts DESC LIMIT 20";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--worker") {
        match WorkerSpec::parse(&args[1..]) {
            Ok(spec) => run_worker(&spec),
            Err(e) => {
                eprintln!("bench worker: {e}");
                std::process::exit(2);
            }
        }
        return;
    }
    if args.iter().any(|a| a == "--help" || a == "-h") {
        let names: Vec<&str> = SCENARIOS.iter().map(|(name, _)| *name).collect();
        println!("{USAGE}\nscenarios: {}", names.join(", "));
        return;
    }
    let options = Options::parse(&args).unwrap_or_else(|e| {
        eprintln!("bench: {e}\n{USAGE}");
        std::process::exit(2);
    });
    if let Err(e) = run_bench(&options, &args) {
        eprintln!("bench: {e}");
        std::process::exit(1);
    }
}
