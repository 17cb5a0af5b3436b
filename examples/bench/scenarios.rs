//! The scenarios: each measures alternatives side by side and adds its rows to the report.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use testbed::{SMB_LOCK_PATH, TwoHostTestbed};

use super::*;

pub(crate) type Scenario = fn(&Context, &mut Report) -> Result<(), String>;

pub(crate) const SCENARIOS: [(&str, Scenario); 7] = [
    ("local-wal", local_wal),
    ("local-network-mode", local_network_mode),
    ("reader-scaling", reader_scaling),
    ("sshfs", sshfs),
    ("lock-latency", lock_latency),
    ("smb", smb),
    ("cost-anatomy", cost_anatomy),
];

/// 1. Local disk, WAL, one process: the shim in auto mode passes through to `unix`.
pub(crate) fn local_wal(ctx: &Context, report: &mut Report) -> Result<(), String> {
    let setups = [("shim.db", NETFS_AUTO_WAL), ("native.db", UNIX_WAL)];
    let (_dir, dbs) = ctx.local_databases("local-wal", setups)?;
    let mut series = Vec::new();
    for role in [Role::Write, Role::Read] {
        for ((_, setup), db) in setups.iter().zip(&dbs) {
            series.push(Series::new(*setup, role, 1, vec![db.clone()]));
        }
    }
    run_rounds(&mut series, ctx.profile.rounds, ctx.profile.local_seconds);
    for pair in series.chunks(2) {
        report.compare(pair[0].job.workload(), &pair[0], &pair[1], Some(0.98));
    }
    report.keep(series);
    Ok(())
}

/// 2. Local disk, network mode forced, against SQLite's rollback modes and dot-file locking.
pub(crate) fn local_network_mode(ctx: &Context, report: &mut Report) -> Result<(), String> {
    let setups = [
        ("0.db", NETFS_ON),
        ("1.db", UNIX_DELETE),
        ("2.db", UNIX_TRUNCATE),
        ("3.db", UNIX_DOTFILE),
    ];
    let (_dir, dbs) = ctx.local_databases("local-network-mode", setups)?;
    let mut series = Vec::new();
    for writers in [1, 4] {
        for ((_, setup), db) in setups.iter().zip(&dbs) {
            series.push(Series::new(*setup, Role::Write, writers, vec![db.clone()]));
        }
    }
    run_rounds(&mut series, ctx.profile.rounds, ctx.profile.local_seconds);
    for group in series.chunks_exact(setups.len()) {
        let (shim, delete, truncate, dotfile) = (&group[0], &group[1], &group[2], &group[3]);
        let median = |s: &Series| s.stats().map_or(0.0, |s| s.median);
        let (faster, slower) = if median(delete) >= median(truncate) {
            (delete, truncate)
        } else {
            (truncate, delete)
        };
        let workload = shim.job.workload();
        report.compare(
            format!("{workload} (vs the faster native rollback mode)"),
            shim,
            faster,
            Some(0.8),
        );
        report.compare(workload.clone(), shim, slower, None);
        report.compare(workload, shim, dotfile, None);
    }
    report.keep(series);
    Ok(())
}

/// 3. Does a second reader process add throughput in network mode (2 cores)?
pub(crate) fn reader_scaling(ctx: &Context, report: &mut Report) -> Result<(), String> {
    let setups = [("shim.db", NETFS_ON), ("dotfile.db", UNIX_DOTFILE)];
    let (_dir, dbs) = ctx.local_databases("reader-scaling", setups)?;
    let mut series = Vec::new();
    for ((_, setup), db) in setups.iter().zip(&dbs) {
        for readers in [1, 2] {
            series.push(Series::new(*setup, Role::Read, readers, vec![db.clone()]));
        }
    }
    run_rounds(&mut series, ctx.profile.rounds, ctx.profile.local_seconds);
    let scaling = "read txn/s, 2 readers / 1 reader".to_string();
    report.compare(scaling.clone(), &series[1], &series[0], Some(1.7));
    report.compare(scaling, &series[3], &series[2], None);
    report.keep(series);
    Ok(())
}

/// 4. Two-host sshfs testbed: the shim against dot-file locking and against native WAL.
pub(crate) fn sshfs(ctx: &Context, report: &mut Report) -> Result<(), String> {
    let testbed = TwoHostTestbed::sshfs()?;
    let mut series = four_writers_over_both_mounts(ctx, &testbed, ctx.profile.sshfs_commits_each)?;
    // One writer through mount A, on the same databases.
    let [shim, dotfile] = [0, 1].map(|i| series[i].job.dbs[0].clone());
    let [wal, _] = ctx.on_testbed(&testbed, "wal.db", UNIX_WAL)?;
    series.extend([
        Series::new(NETFS_AUTO, Role::Write, 1, vec![shim]),
        Series::new(UNIX_DOTFILE, Role::Write, 1, vec![dotfile]),
        Series::new(UNIX_WAL, Role::Write, 1, vec![wal]),
    ]);
    run_rounds(
        &mut series,
        ctx.profile.testbed_rounds,
        ctx.profile.sshfs_seconds,
    );
    let (shim4, dotfile4) = (&series[0], &series[1]);
    let (shim1, dotfile1, wal1) = (&series[2], &series[3], &series[4]);
    report.compare(shim4.job.workload(), shim4, dotfile4, Some(5.0));
    report.compare(shim1.job.workload(), shim1, dotfile1, Some(1.5));
    report.compare(
        format!("{} (native WAL: one host only)", shim1.job.workload()),
        shim1,
        wal1,
        Some(0.5),
    );
    report.keep(series);
    Ok(())
}

/// The testbeds' common pair: four writers split over both mounts, each to commit `each`
/// transactions, the shim in auto mode, then `unix-dotfile`, each on its own copy of the
/// template (`shim.db`, `dotfile.db`).
pub(crate) fn four_writers_over_both_mounts(
    ctx: &Context,
    testbed: &TwoHostTestbed,
    each: u64,
) -> Result<Vec<Series>, String> {
    let mut series = Vec::new();
    for (name, setup) in [("shim.db", NETFS_AUTO), ("dotfile.db", UNIX_DOTFILE)] {
        let both = ctx.on_testbed(testbed, name, setup)?;
        let job = Job::new(setup, Role::Write, 4, both.to_vec())
            .until_commits(each, ctx.profile.finish_within);
        series.push(Series::of(job));
    }
    Ok(series)
}

/// Scenario 5, lock latency: four writers in network mode on a local disk. How long a
/// writer waits for the lock, and whether every process gets its share.
pub(crate) fn lock_latency(ctx: &Context, report: &mut Report) -> Result<(), String> {
    let setups = [("shim.db", NETFS_ON), ("delete.db", UNIX_DELETE)];
    let (_dir, dbs) = ctx.local_databases("lock-latency", setups)?;
    let mut series = Vec::new();
    for ((_, setup), db) in setups.into_iter().zip(dbs) {
        let mut job = Job::new(setup, Role::Write, 4, vec![db]);
        job.record_latency = true;
        series.push(Series::of(job));
    }
    run_rounds(&mut series, ctx.profile.rounds, ctx.profile.local_seconds);
    report.compare(series[0].job.workload(), &series[0], &series[1], None);
    report.latency(&series[0], &series[1]);
    report.keep(series);
    Ok(())
}

/// 6. Two-host SMB testbed: the shim against dot-file locking, 4 writers over both mounts.
pub(crate) fn smb(ctx: &Context, report: &mut Report) -> Result<(), String> {
    wait_for_smb_testbed_lock()?;
    let testbed = TwoHostTestbed::smb()?;
    let mut series = four_writers_over_both_mounts(ctx, &testbed, ctx.profile.smb_commits_each)?;
    // Each job has a quota: no window applies.
    run_rounds(&mut series, ctx.profile.testbed_rounds, 0.0);
    report.compare(series[0].job.workload(), &series[0], &series[1], None);
    report.keep(series);
    Ok(())
}

/// The SMB testbed needs port 445 to itself and waits up to 20 minutes for another one (a
/// test run) to finish; the bench waits half a minute at most, then skips.
pub(crate) fn wait_for_smb_testbed_lock() -> Result<(), String> {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(SMB_LOCK_PATH)
        .map_err(|e| format!("open {SMB_LOCK_PATH}: {e}"))?;
    let give_up = Instant::now() + SMB_LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(()), // released when `file` is dropped
            Err(fs::TryLockError::WouldBlock) if Instant::now() < give_up => {
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(fs::TryLockError::WouldBlock) => {
                return Err(format!(
                    "another SMB testbed held {SMB_LOCK_PATH} for more than {SMB_LOCK_WAIT:?}"
                ));
            }
            Err(fs::TryLockError::Error(e)) => return Err(format!("lock {SMB_LOCK_PATH}: {e}")),
        }
    }
}

/// Scenario 7, where a write transaction's time goes: every system call of one writer under
/// strace, by file and by call, with the wall time spent in it. On the local disk network mode
/// beside `unix` DELETE; on the sshfs testbed the shim in auto mode beside `unix-dotfile`, with
/// the file server's side too: the SFTP servers' own system calls, one per file operation.
pub(crate) fn cost_anatomy(ctx: &Context, report: &mut Report) -> Result<(), String> {
    if !Path::new(STRACE).exists() {
        return Err(format!("{STRACE} not found (apt-get install strace)"));
    }
    let setups = [("shim.db", NETFS_ON), ("delete.db", UNIX_DELETE)];
    let (dir, dbs) = ctx.local_databases("cost-anatomy", setups)?;
    let local = Traced {
        testbed: "local disk",
        trace_dir: dir.path(),
        transactions: ctx.profile.strace_transactions,
        server_transactions: 0,
        server: None,
    };
    let mut records = Vec::new();
    for ((_, setup), db) in setups.into_iter().zip(&dbs) {
        records.push(local.run(setup, db)?);
    }
    report.anatomy(records);
    if let Err(reason) = sshfs_anatomy(ctx, dir.path(), report) {
        eprintln!("  sshfs: skipped: {reason}");
        report.skipped(&format!("on sshfs: {}", first_line(&reason)));
    }
    Ok(())
}

pub(crate) fn sshfs_anatomy(
    ctx: &Context,
    trace_dir: &Path,
    report: &mut Report,
) -> Result<(), String> {
    let testbed = TwoHostTestbed::sshfs()?;
    let serving = testbed.serving_processes();
    if serving.is_empty() {
        eprintln!("  sshfs: no SFTP server process found; the server side is not traced");
    }
    let sshfs = Traced {
        testbed: "sshfs",
        trace_dir,
        transactions: ctx.profile.testbed_strace_transactions,
        server_transactions: ctx.profile.server_strace_transactions,
        server: (!serving.is_empty()).then_some((serving.as_slice(), testbed.server_dir())),
    };
    let mut records = Vec::new();
    for (name, setup) in [("shim.db", NETFS_AUTO), ("dotfile.db", UNIX_DOTFILE)] {
        let [db, _] = ctx.on_testbed(&testbed, name, setup)?;
        records.push(sshfs.run(setup, &db)?);
    }
    report.anatomy(records);
    Ok(())
}
