//! The cost anatomy's tracing: strace of a writer (and of the file server), read back and sorted by file kind.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

/// How the cost anatomy traces one writer on one filesystem.
pub(crate) struct Traced<'a> {
    pub(crate) testbed: &'static str,
    pub(crate) trace_dir: &'a Path,
    pub(crate) transactions: u64,
    /// Transactions of the second run, which traces the server too.
    pub(crate) server_transactions: u64,
    /// The file server's processes to trace beside the writer, and the directory they serve.
    pub(crate) server: Option<(&'a [u32], &'a Path)>,
}

impl Traced<'_> {
    /// Runs one writer of `setup` on `db` under strace and sums what the trace shows
    /// between the worker's window markers. Where there is a server to trace, a second,
    /// shorter run traces it too: every call of the server stops it for the tracer, which
    /// would inflate the writer's times in the first run.
    pub(crate) fn run(&self, setup: Setup, db: &Path) -> Result<AnatomyRecord, String> {
        let db_name = db
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| format!("{} has no file name", db.display()))?;
        let mut dirs: Vec<&Path> = db.parent().into_iter().collect();
        dirs.extend(self.server.map(|(_, dir)| dir));
        let files = FileKinds {
            db_name: db_name.clone(),
            dirs: &dirs,
        };
        let name = format!("{}-{db_name}", self.testbed.replace(' ', "-"));
        let writer = self.pass(setup, db, &name, self.transactions, None)?;
        let writer_window = Window::find(&writer.client)?;
        let server = match self.server {
            Some((pids, _)) => {
                let name = format!("{name}-server-pass");
                let pass = self.pass(setup, db, &name, self.server_transactions, Some(pids))?;
                let window = Window::find(&pass.client)?;
                pass.server.map(|threads| {
                    (
                        pass.commits,
                        window.costs(&threads, None, &files, pass.commits),
                    )
                })
            }
            None => None,
        };
        eprintln!("  {} on {}: strace done", setup.label, self.testbed);
        Ok(AnatomyRecord {
            testbed: self.testbed,
            label: setup.label,
            transactions: writer.commits,
            wall_ms: (writer_window.end - writer_window.start) * 1000.0 / writer.commits as f64,
            client: writer_window.costs(
                &writer.client,
                Some(writer_window.thread),
                &files,
                writer.commits,
            ),
            server_transactions: server.as_ref().map_or(0, |(n, _)| *n),
            server: server.map(|(_, costs)| costs),
        })
    }

    /// One traced run of `transactions` write transactions; the traces are read back.
    pub(crate) fn pass(
        &self,
        setup: Setup,
        db: &Path,
        name: &str,
        transactions: u64,
        server_pids: Option<&[u32]>,
    ) -> Result<TracedPass, String> {
        let prefix = |side: &str| self.trace_dir.join(format!("{name}.{side}"));
        let server_trace = match server_pids {
            Some(pids) => match ServerTrace::attach(pids, &prefix("server")) {
                Ok(trace) => Some(trace),
                Err(e) => {
                    eprintln!("  {}: the server side is not traced: {e}", setup.label);
                    None
                }
            },
            None => None,
        };
        let mut job = Job::new(setup, Role::Write, 1, vec![db.to_path_buf()]);
        job.trace_prefix = Some(prefix("client"));
        let outcome = measure(&job, Stop::Transactions(transactions), 0);
        let server = server_trace.map(ServerTrace::finish).transpose()?;
        if !outcome.errors.is_empty() {
            return Err(format!("worker under strace: {:?}", outcome.errors));
        }
        let commits: u64 = outcome.commits_per_process.iter().sum();
        if commits == 0 {
            return Err("no transaction committed under strace".into());
        }
        Ok(TracedPass {
            commits,
            client: read_traces(&prefix("client"))?,
            server,
        })
    }
}

/// What one traced run left: each thread's calls, the writer's and the server's.
pub(crate) struct TracedPass {
    pub(crate) commits: u64,
    pub(crate) client: Vec<Vec<TracedCall>>,
    pub(crate) server: Option<Vec<Vec<TracedCall>>>,
}

/// One system call from a line of `strace -ttt -T -y`.
pub(crate) struct TracedCall {
    /// When it started, in seconds since the epoch.
    pub(crate) at: f64,
    pub(crate) name: String,
    /// The file it worked on: a path argument or the path behind its first descriptor.
    pub(crate) path: Option<String>,
    pub(crate) seconds: f64,
}

impl TracedCall {
    /// `1712345678.123456 pwrite64(5</db/app.db>, "..."..., 4096, 0) = 4096 <0.000123>`;
    /// signals, exits and calls that never returned give `None`.
    pub(crate) fn parse(line: &str) -> Option<TracedCall> {
        let (at, call) = line.split_once(' ')?;
        let (name, args) = call.split_once('(')?;
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return None;
        }
        let (_, duration) = call.rsplit_once('<')?;
        Some(TracedCall {
            at: at.parse().ok()?,
            name: name.to_string(),
            path: first_path(args),
            seconds: duration.strip_suffix('>')?.parse().ok()?,
        })
    }
}

/// `3</db/app.db>, ...` gives the descriptor's path; otherwise the first string argument
/// (`AT_FDCWD, "/db/app.db-journal", ...`), which is a path for the calls that take one.
pub(crate) fn first_path(args: &str) -> Option<String> {
    let digits = args.len() - args.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    if let Some(rest) = args[digits..].strip_prefix('<').filter(|_| digits > 0) {
        return rest.split_once('>').map(|(path, _)| path.to_string());
    }
    let (_, quoted) = args.split_once('"')?;
    quoted.split_once('"').map(|(path, _)| path.to_string())
}

/// Every thread's calls from the files `<prefix>.<thread id>` that `strace -ff` wrote.
pub(crate) fn read_traces(prefix: &Path) -> Result<Vec<Vec<TracedCall>>, String> {
    let dir = prefix.parent().unwrap_or(Path::new("."));
    let stem = format!(
        "{}.",
        prefix.file_name().unwrap_or_default().to_string_lossy()
    );
    let entries = fs::read_dir(dir).map_err(|e| format!("read {}: {e}", dir.display()))?;
    let mut threads = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_thread = name
            .strip_prefix(&stem)
            .is_some_and(|tid| tid.parse::<u32>().is_ok());
        if is_thread {
            let text = fs::read_to_string(entry.path())
                .map_err(|e| format!("read {}: {e}", entry.path().display()))?;
            threads.push(text.lines().filter_map(TracedCall::parse).collect());
        }
    }
    if threads.is_empty() {
        return Err(format!("strace wrote no {}<thread id>", prefix.display()));
    }
    Ok(threads)
}

/// The stretch of a trace between the worker's window markers: its transactions.
pub(crate) struct Window {
    pub(crate) start: f64,
    pub(crate) end: f64,
    /// The thread that ran the transactions (the one that looked the markers up).
    pub(crate) thread: usize,
}

impl Window {
    pub(crate) fn find(threads: &[Vec<TracedCall>]) -> Result<Window, String> {
        for (thread, calls) in threads.iter().enumerate() {
            let at = |marker: &str| {
                calls
                    .iter()
                    .find(|c| c.path.as_deref() == Some(marker))
                    .map(|c| c.at)
            };
            if let (Some(start), Some(end)) = (at(WINDOW_START), at(WINDOW_END)) {
                return Ok(Window { start, end, thread });
            }
        }
        Err("the trace holds no transaction window (no marker look-ups)".into())
    }

    /// The calls that started inside the window, by file and call, per transaction. Calls
    /// of threads other than `main` (the lease heartbeat) are filed under "(other thread)",
    /// but for those on no file: its sleeps and waits are off the transactions' path. Time
    /// past the window's end is not counted.
    pub(crate) fn costs(
        &self,
        threads: &[Vec<TracedCall>],
        main: Option<usize>,
        files: &FileKinds,
        transactions: u64,
    ) -> Costs {
        let per = transactions as f64;
        let mut costs = Costs::new();
        for (thread, calls) in threads.iter().enumerate() {
            let inside = calls
                .iter()
                .filter(|c| c.at > self.start && c.at < self.end);
            for call in inside {
                let mut file = files.kind(call.path.as_deref()).to_string();
                if main.is_some_and(|main| main != thread) {
                    if file == NO_FILE {
                        continue;
                    }
                    file.push_str(OTHER_THREAD);
                }
                let seconds = call.seconds.min(self.end - call.at);
                let cost = costs.entry((file, call.name.clone())).or_default();
                cost.calls += 1.0 / per;
                cost.ms += seconds * 1000.0 / per;
            }
        }
        costs
    }
}

/// Names the file a traced call worked on, by its relation to one database.
pub(crate) struct FileKinds<'a> {
    pub(crate) db_name: String,
    /// The database's directory as each traced process sees it.
    pub(crate) dirs: &'a [&'a Path],
}

impl FileKinds<'_> {
    pub(crate) fn kind(&self, path: Option<&str>) -> &'static str {
        let Some(path) = path else {
            return NO_FILE;
        };
        if let Some((_, suffix)) = path.split_once(self.db_name.as_str()) {
            let suffix = suffix.trim_end_matches(" (deleted)");
            return [
                ("-journal", "journal"),
                ("-wal", "WAL"),
                ("-shm", "WAL index"),
                ("-netfs-latch", "lock latch"),
                ("-netfs-table", "lock table"),
                ("-netfs-break", "lock break"),
                (".lock", "dot-file lock"),
            ]
            .into_iter()
            .find(|(ending, _)| suffix.starts_with(ending))
            .map_or(
                if suffix.is_empty() {
                    "database"
                } else {
                    "other file"
                },
                |(_, kind)| kind,
            );
        }
        if self.dirs.iter().any(|dir| Path::new(path) == *dir) {
            "directory"
        } else if path.starts_with("pipe:") || path.starts_with("socket:") {
            CHANNEL
        } else {
            "other file"
        }
    }
}

/// Marks the calls of a thread other than the one running the transactions.
pub(crate) const OTHER_THREAD: &str = " (other thread)";
/// The kind of calls that name no file (memory, time, futexes).
pub(crate) const NO_FILE: &str = "(no file)";
/// Pipes and sockets: a worker's report to the bench, an SFTP server's requests and replies.
pub(crate) const CHANNEL: &str = "pipes and sockets";

/// strace attached to running processes (the file server's) for one traced run.
pub(crate) struct ServerTrace {
    pub(crate) strace: Child,
    pub(crate) prefix: PathBuf,
}

impl ServerTrace {
    pub(crate) fn attach(pids: &[u32], prefix: &Path) -> Result<ServerTrace, String> {
        let mut cmd = Command::new(STRACE);
        cmd.args(STRACE_ARGS).arg("-o").arg(prefix);
        for pid in pids {
            cmd.arg("-p").arg(pid.to_string());
        }
        let strace = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("start {STRACE}: {e}"))?;
        let mut trace = ServerTrace {
            strace,
            prefix: prefix.to_path_buf(),
        };
        // strace opens a process's output file when it has attached to it.
        let attached = |pid: &u32| PathBuf::from(format!("{}.{pid}", prefix.display())).exists();
        let give_up = Instant::now() + Duration::from_secs(10);
        while !pids.iter().all(attached) {
            if Instant::now() > give_up || trace.strace.try_wait().ok().flatten().is_some() {
                trace.stop();
                return Err(format!("strace could not attach to {pids:?}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(trace)
    }

    pub(crate) fn finish(mut self) -> Result<Vec<Vec<TracedCall>>, String> {
        self.stop();
        read_traces(&self.prefix)
    }

    /// SIGINT makes strace detach, leaving the server running, and write out its files.
    pub(crate) fn stop(&mut self) {
        if self.strace.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(self.strace.id().to_string())
            .status();
        let give_up = Instant::now() + Duration::from_secs(10);
        while self.strace.try_wait().ok().flatten().is_none() {
            if Instant::now() > give_up {
                let _ = self.strace.kill();
                let _ = self.strace.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ServerTrace {
    fn drop(&mut self) {
        self.stop();
    }
}
