//! Several processes share one database through the shim, the way two terminal windows and a
//! desktop app share an agent's state file.
//!
//! ```text
//! cargo run --release --example shared_counter                      # temp dir, network mode forced
//! cargo run --release --example shared_counter -- --dir /mnt/nfs/x  # a directory of yours, mode detected
//! ```
//! Options: `--dir DIR` (default: a new temp dir, with network mode forced so the lock
//! protocol runs even on a local disk), `--processes N` (4), `--transactions M` (200),
//! `--netfs auto|on|off`. `RUST_LOG=sqlite_netfs=info` shows the shim's decisions.
//!
//! Each process commits M transactions `UPDATE counter SET v=v+1; INSERT INTO log ...` on one
//! long-lived connection. At the end the parent checks that nothing was lost: the counter, the
//! number of rows and the number of acknowledged commits must agree, and the file must pass
//! `PRAGMA integrity_check`. The exit status says whether they did.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sqlite_netfs::rusqlite::{Connection, params};

struct Args {
    dir: Option<PathBuf>,
    processes: u32,
    transactions: u32,
    netfs: Option<String>,
    worker: Option<u32>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        dir: None,
        processes: 4,
        transactions: 200,
        netfs: None,
        worker: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--dir" => args.dir = Some(PathBuf::from(value()?)),
            "--processes" => {
                args.processes = value()?.parse().map_err(|e| format!("--processes: {e}"))?
            }
            "--transactions" => {
                args.transactions = value()?
                    .parse()
                    .map_err(|e| format!("--transactions: {e}"))?
            }
            "--netfs" => args.netfs = Some(value()?),
            "--worker" => {
                args.worker = Some(value()?.parse().map_err(|e| format!("--worker: {e}"))?)
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(args)
}

fn uri(db: &Path, netfs: Option<&str>) -> String {
    match netfs {
        Some(mode) => format!("file:{}?vfs=netfs&netfs={mode}", db.display()),
        None => format!("file:{}?vfs=netfs", db.display()),
    }
}

fn worker(
    db: &Path,
    netfs: Option<&str>,
    id: u32,
    transactions: u32,
) -> sqlite_netfs::rusqlite::Result<()> {
    sqlite_netfs::register().expect("register the netfs VFS");
    let conn = Connection::open(uri(db, netfs))?;
    conn.busy_timeout(Duration::from_secs(30))?;
    for seq in 0..transactions {
        loop {
            let tx = conn.unchecked_transaction();
            let result = tx.and_then(|tx| {
                tx.execute("UPDATE counter SET v = v + 1", [])?;
                tx.execute(
                    "INSERT INTO log(process, seq) VALUES (?1, ?2)",
                    params![id, seq],
                )?;
                tx.commit()
            });
            match result {
                Ok(()) => break,
                // Busy past the timeout: try again (a real tool would report it).
                Err(e)
                    if e.sqlite_error_code()
                        == Some(sqlite_netfs::rusqlite::ErrorCode::DatabaseBusy) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("shared_counter: {e}");
        std::process::exit(2);
    });
    let temp;
    let (dir, netfs) = match &args.dir {
        Some(d) => (d.clone(), args.netfs.clone()),
        None => {
            temp = tempfile::tempdir().expect("temp dir");
            (
                temp.path().to_owned(),
                Some(args.netfs.clone().unwrap_or_else(|| "on".into())),
            )
        }
    };
    let db = dir.join("shared_counter.db");
    if let Some(id) = args.worker {
        if let Err(e) = worker(&db, netfs.as_deref(), id, args.transactions) {
            eprintln!("worker {id}: {e}");
            std::process::exit(1);
        }
        return;
    }

    sqlite_netfs::register().expect("register the netfs VFS");
    let detection = sqlite_netfs::detect(&db).expect("detect");
    println!("database   {}", db.display());
    println!(
        "filesystem {} ({:?}): {}",
        detection.fs_type, detection.class, detection.reason
    );
    println!(
        "mode       {}",
        match netfs.as_deref() {
            Some(forced) => format!("netfs={forced} (URI parameter)"),
            None => format!("{} ({})", detection.mode, detection.source),
        }
    );
    let (v0, rows0) = {
        let conn = Connection::open(uri(&db, netfs.as_deref())).expect("open");
        conn.busy_timeout(Duration::from_secs(30)).unwrap();
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS counter(v INTEGER NOT NULL);
             INSERT INTO counter SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM counter);
             CREATE TABLE IF NOT EXISTS log(id INTEGER PRIMARY KEY, process INTEGER, seq INTEGER);",
        )
        .expect("schema");
        println!("network    {}", sqlite_netfs::network_mode_active(&conn));
        conn.query_row(
            "SELECT (SELECT v FROM counter), (SELECT count(*) FROM log)",
            [],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
        )
        .expect("read the starting point")
    };

    let started = Instant::now();
    let exe = std::env::current_exe().expect("own path");
    let children: Vec<_> = (0..args.processes)
        .map(|id| {
            let mut cmd = Command::new(&exe);
            cmd.args(["--dir", dir.to_str().expect("UTF-8 path")])
                .args(["--worker", &id.to_string()])
                .args(["--transactions", &args.transactions.to_string()]);
            if let Some(mode) = &netfs {
                cmd.args(["--netfs", mode]);
            }
            cmd.spawn().expect("spawn worker")
        })
        .collect();
    let failed = children
        .into_iter()
        .map(|mut c| c.wait().expect("wait"))
        .filter(|s| !s.success())
        .count();
    let elapsed = started.elapsed();

    let conn = Connection::open(uri(&db, netfs.as_deref())).expect("reopen");
    let (v, rows): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT v FROM counter), (SELECT count(*) FROM log)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("read result");
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    let added = i64::from(args.processes) * i64::from(args.transactions);
    let expected = v0 + added;
    println!(
        "processes  {} x {} transactions in {:.2}s ({:.0} commits/s)",
        args.processes,
        args.transactions,
        elapsed.as_secs_f64(),
        added as f64 / elapsed.as_secs_f64()
    );
    println!(
        "result     counter={v} rows={rows} expected={expected} integrity={integrity} failed_processes={failed}"
    );
    if v != expected || rows - rows0 != added || integrity != "ok" || failed != 0 {
        println!("LOST UPDATES OR DAMAGE");
        std::process::exit(1);
    }
    println!("OK: every commit of every process is in the file");
}
