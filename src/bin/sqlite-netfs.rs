//! The `sqlite-netfs` command: `doctor` (what the shim decides for a database, who holds its
//! locks, and what is wrong), `unlock --stale` (remove what dead holders left) and `recover`
//! (salvage the readable rows of a damaged database). The work is done by the library's
//! `inspect` and `integrity` modules; this file parses arguments and prints.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use sqlite_netfs::inspect::{self, ExamineOptions, JournalState, Report, Severity, TableState};
use sqlite_netfs::integrity::{self, CheckKind, Progress, RecoverOptions, Verdict};

const USAGE: &str = "\
usage:
  sqlite-netfs doctor PATH [--json] [--check [--full]] [--lease SECS] [--no-wait]
  sqlite-netfs unlock PATH --stale [--lease SECS]
  sqlite-netfs recover BROKEN NEW [--partial] [--strict] [--lease SECS]

doctor   shows the mode this host picks for the database and why, who holds its locks and
         whether they are alive, the journal, and hazards (WAL files in network mode, bad
         lock files, bind-mounted files, mount options). Holders on other hosts are watched
         for up to one lease to judge them (--no-wait: don't). --check runs quick_check
         through the shim (--full: integrity_check). Exit status: 0 healthy, 1 warnings,
         2 problems (or the command could not run).
unlock   --stale removes lock-table entries and tokens of dead holders: at once for this
         host's processes that are gone, after one lease of silence for other hosts'. Never a
         live holder's. Exit status: 0 done, 2 could not finish (what it removed is listed).
recover  copies every readable row of a damaged database into the new file NEW and reports
         rows recovered and lost per table. BROKEN is only read (under network mode's read
         lock when it has a lock table). --partial also keeps rows some of whose values
         cannot be read, with NULL in their place. Rows whose values disagree with an
         intact index are counted; --strict leaves them out. Exit status: 0 nothing lost,
         1 rows or schema objects lost (or kept partly, or in doubt), 2 could not run.

--lease SECS   the lease the applications use (default 10, as sqlite_netfs::DEFAULT_LEASE)";

fn main() -> ExitCode {
    // `args_os`: a path need not be UTF-8, and `std::env::args` panics on one that is not.
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    match run(&args) {
        Ok(code) => ExitCode::from(code),
        Err(message) => {
            eprintln!("sqlite-netfs: {message}");
            ExitCode::from(2)
        }
    }
}

/// The parsed command line of one subcommand: its paths and flags.
struct Args {
    paths: Vec<PathBuf>,
    flags: Vec<String>,
    lease: Duration,
}

fn parse(args: &[OsString], allowed: &[&str]) -> Result<Args, String> {
    let mut parsed = Args {
        paths: Vec::new(),
        flags: Vec::new(),
        lease: sqlite_netfs::DEFAULT_LEASE,
    };
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "--lease" && allowed.contains(&"--lease") {
            let value = args
                .get(i + 1)
                .ok_or("--lease needs a number of seconds")?
                .to_string_lossy();
            let secs: f64 = value
                .parse()
                .ok()
                .filter(|s: &f64| (1.0..=3600.0).contains(s))
                .ok_or_else(|| format!("--lease {value:?}: expected seconds from 1 to 3600"))?;
            parsed.lease = Duration::from_secs_f64(secs);
            i += 2;
            continue;
        }
        // Options are ASCII; a path is any bytes.
        let text = a.to_string_lossy();
        if text.starts_with("--") {
            if !allowed.contains(&&*text) {
                return Err(format!("unknown option {text}\n\n{USAGE}"));
            }
            parsed.flags.push(text.into_owned());
        } else {
            parsed.paths.push(PathBuf::from(a));
        }
        i += 1;
    }
    Ok(parsed)
}

fn run(args: &[OsString]) -> Result<u8, String> {
    let Some((command, rest)) = args.split_first() else {
        return Err(format!("no command given\n\n{USAGE}"));
    };
    match &*command.to_string_lossy() {
        "doctor" => doctor(rest),
        "unlock" => unlock(rest),
        "recover" => recover(rest),
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(0)
        }
        "--version" | "-V" => {
            println!("sqlite-netfs {}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
        other => Err(format!("unknown command {other:?}\n\n{USAGE}")),
    }
}

/// Progress for people: on stderr, and only when it is a terminal.
fn note(message: &str) {
    if std::io::stderr().is_terminal() {
        eprintln!("{message}");
    }
}

fn doctor(args: &[OsString]) -> Result<u8, String> {
    // Asked before parsing, so that a bad option is answered in JSON too.
    let json = args.iter().any(|a| a == "--json");
    let examined = parse(
        args,
        &["--json", "--check", "--full", "--lease", "--no-wait"],
    )
    .and_then(|a| examine_and_check(&a));
    match examined {
        // A program reading the JSON gets an object in every case; the usage text that
        // follows a bad option's message is for people, on stderr.
        Err(e) if json => {
            let reason = e.split("\n\n").next().unwrap_or(&e);
            println!(
                r#"{{"version":1,"error":{},"status":"problems"}}"#,
                inspect::json_str(reason)
            );
            Err(e)
        }
        other => other,
    }
}

fn examine_and_check(a: &Args) -> Result<u8, String> {
    let [path] = &a.paths[..] else {
        return Err(format!("doctor takes one database path\n\n{USAGE}"));
    };
    let has = |f: &str| a.flags.iter().any(|x| x == f);
    if has("--full") && !has("--check") {
        return Err("--full goes with --check".into());
    }
    let options = ExamineOptions {
        lease: a.lease,
        watch: !has("--no-wait"),
    };
    let mut report = inspect::examine(path, options, &mut |m| note(m))?;
    let check = if has("--check") {
        let kind = if has("--full") {
            CheckKind::Full
        } else {
            CheckKind::Quick
        };
        note(&format!("running {} through the shim", kind.pragma()));
        let verdict = integrity::check_through_shim(&report.database, kind, a.lease);
        inspect::recheck_journal(&mut report);
        let ok = matches!(verdict, Ok(Verdict::Healthy));
        let messages = match verdict {
            // The examination stands; the check is one more finding.
            Err(why) => {
                report.add(
                    "check-failed",
                    Severity::Problem,
                    format!("the {} could not run: {why}", kind.pragma()),
                );
                vec![why]
            }
            Ok(Verdict::Healthy) => vec!["ok".to_owned()],
            Ok(Verdict::Damaged(lines)) => {
                report.add(
                    "integrity",
                    Severity::Problem,
                    format!(
                        "{} found damage: {}; salvage the readable rows with `sqlite-netfs recover {} NEW.db`",
                        kind.pragma(),
                        lines.iter().take(5).cloned().collect::<Vec<_>>().join("; "),
                        report.database.display()
                    ),
                );
                lines
            }
            Ok(Verdict::NotADatabase(why)) => {
                report.add(
                    "not-a-database",
                    Severity::Problem,
                    format!(
                        "{} is not an SQLite database ({why}): another kind of file, or its header is destroyed, which recover cannot read past",
                        report.database.display()
                    ),
                );
                vec![why]
            }
        };
        Some((kind, messages, ok))
    } else {
        None
    };
    if has("--json") {
        let check_json = check
            .as_ref()
            .map(|(kind, messages, ok)| inspect::CheckJson {
                kind: kind.pragma(),
                ok: *ok,
                messages,
            });
        println!("{}", inspect::to_json(&report, check_json.as_ref()));
    } else {
        print_report(&report, check.as_ref().map(|(k, m, _)| (*k, &m[..])));
    }
    Ok(report.exit_code() as u8)
}

fn print_report(r: &Report, check: Option<(CheckKind, &[String])>) {
    let d = &r.detection;
    println!("database    {}", r.database.display());
    println!(
        "mode        {} (filesystem {}; decided by {})",
        d.mode, d.fs_type, d.source
    );
    println!("            {}", d.reason);
    match &r.table {
        TableState::Missing => println!("lock table  none (never opened in network mode)"),
        TableState::Present {
            generation,
            latch_breaks,
        } => println!(
            "lock table  generation {generation}, latch breaks {latch_breaks}, {} holder(s), {} waiting",
            r.holders.len(),
            r.waiters.len()
        ),
        TableState::Unreadable(why) => println!("lock table  unreadable: {why}"),
    }
    for h in &r.holders {
        let silent = match (h.silent_for, h.renewal_seen) {
            (None, _) => String::new(),
            (Some(d), true) => format!(", renewed {:.1} s ago", d.as_secs_f64()),
            (Some(d), false) => format!(", unchanged for {:.1} s", d.as_secs_f64()),
        };
        println!(
            "  {:<9} {} pid {} connection {}: {}{silent}",
            h.level,
            h.host_label(),
            h.pid,
            h.connection,
            h.liveness
        );
    }
    for w in &r.waiters {
        let place = match w.place {
            Some(1) => ", first in the writers' queue".to_owned(),
            Some(n) => format!(", number {n} in the writers' queue"),
            None => String::new(),
        };
        println!(
            "  waiting   {} pid {} connection {}: for {}{place}",
            w.host_label(),
            w.pid,
            w.connection,
            w.wants
        );
    }
    for (label, token) in [("latch", &r.latch), ("break", &r.break_token)] {
        match token {
            None => println!("{label:<11} none"),
            Some(t) => println!("{label:<11} held by [{}]: {}", t.owner_label(), t.liveness),
        }
    }
    let journal = match r.journal {
        JournalState::Missing => "none".to_owned(),
        JournalState::Empty => "empty (nothing to roll back)".to_owned(),
        JournalState::InUse { bytes } => format!("a live writer's transaction ({bytes} bytes)"),
        JournalState::Hot { bytes } => format!("HOT: an unfinished transaction ({bytes} bytes)"),
    };
    println!("journal     {journal}");
    if r.watched >= Duration::from_millis(100) {
        println!("watched     {:.1} s", r.watched.as_secs_f64());
    }
    if let Some((kind, messages)) = check {
        println!("check       {}: {}", kind.pragma(), messages.join("; "));
    }
    if r.findings.is_empty() {
        println!("findings    none");
    } else {
        println!("findings");
        for f in &r.findings {
            println!("  {} [{}] {}", f.severity, f.code, f.message);
        }
    }
    println!("status      {} (exit {})", r.status(), r.exit_code());
}

fn unlock(args: &[OsString]) -> Result<u8, String> {
    let a = parse(args, &["--stale", "--lease"])?;
    let [path] = &a.paths[..] else {
        return Err(format!("unlock takes one database path\n\n{USAGE}"));
    };
    if !a.flags.iter().any(|f| f == "--stale") {
        return Err("unlock removes only what dead holders left, and says so: add --stale".into());
    }
    let report = inspect::unlock_stale(path, a.lease, &mut |m| note(m))?;
    if report.removed.is_empty() && report.unfinished.is_none() {
        println!("nothing stale: no dead holder's entry or token");
    }
    for r in &report.removed {
        println!("removed {r}");
    }
    if report.hot_journal {
        println!(
            "the journal holds a removed writer's unfinished transaction: the next connection rolls it back"
        );
    }
    // What is left was not judged: the command could not finish.
    if let Some(why) = report.unfinished {
        return Err(why);
    }
    for k in &report.kept {
        println!("kept    {k} (alive)");
    }
    Ok(0)
}

fn recover(args: &[OsString]) -> Result<u8, String> {
    let a = parse(args, &["--lease", "--partial", "--strict"])?;
    let [broken, new] = &a.paths[..] else {
        return Err(format!("recover takes two paths: BROKEN NEW\n\n{USAGE}"));
    };
    let terminal = std::io::stderr().is_terminal();
    let mut progress = |p: Progress<'_>| {
        if !terminal {
            return;
        }
        match p {
            Progress::Copying { done, total } => eprint!(
                "\rcopying the damaged file: {} of {} MiB   ",
                done >> 20,
                total >> 20
            ),
            Progress::Table { name, rows } => eprint!("\rrecovering {name}: {rows} rows          "),
        }
    };
    let recovery = integrity::recover(
        broken,
        new,
        RecoverOptions {
            lease: a.lease,
            partial: a.flags.iter().any(|f| f == "--partial"),
            strict: a.flags.iter().any(|f| f == "--strict"),
        },
        &mut progress,
    );
    if terminal {
        eprintln!();
    }
    let recovery = recovery?;
    for t in &recovery.tables {
        println!("{t}");
    }
    for s in &recovery.skipped {
        println!("skipped {s}");
    }
    for e in &recovery.schema_errors {
        println!("not made again: {e}");
    }
    let lost: u64 = recovery.tables.iter().filter_map(|t| t.lost).sum();
    let unknown = recovery.tables.iter().filter(|t| t.lost.is_none()).count();
    println!(
        "{} rows recovered into {}; {lost} known lost{}",
        recovery.rows_recovered(),
        new.display(),
        if unknown > 0 {
            format!(", and an unknown number in {unknown} table(s)")
        } else {
            String::new()
        }
    );
    // 1: the new file holds all that could be read, but not all there was.
    let partly = recovery
        .tables
        .iter()
        .any(|t| t.partial > 0 || t.doubtful > 0);
    let incomplete = lost > 0 || unknown > 0 || partly || !recovery.schema_errors.is_empty();
    Ok(u8::from(incomplete))
}
