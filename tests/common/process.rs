//! Process utilities for the test harness: commands run with a timeout, polling, pids and their
//! command lines, descendants, signals, free ports, log tails. Only std (and `/proc`).

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// How long a process gets to exit after SIGTERM, and again after SIGKILL.
pub const KILL_WAIT: Duration = Duration::from_secs(5);
/// The pace of every poll.
const POLL: Duration = Duration::from_millis(50);

pub fn find_bin(name: &str) -> Result<PathBuf, String> {
    let mut dirs: Vec<PathBuf> = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(PathBuf::from)
        .collect();
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    for d in dirs {
        let p = d.join(name);
        if let Ok(md) = fs::metadata(&p)
            && md.is_file()
            && md.permissions().mode() & 0o111 != 0
        {
            return Ok(p);
        }
    }
    Err(format!("`{name}` not found (run .ci/install-testbed-deps)"))
}

/// Poll `f` every 50 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> Result<(), ()> {
    let start = Instant::now();
    loop {
        if f() {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            return Err(());
        }
        sleep(POLL);
    }
}

/// Run `cmd` (stdin null, stdout+stderr to `log`), wait at most `timeout`; Ok iff exit 0.
pub fn run_checked(mut cmd: Command, log: &Path, timeout: Duration) -> Result<(), String> {
    let desc = format!("{cmd:?}");
    let out = File::create(log).map_err(|e| format!("create {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| format!("dup log fd: {e}"))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    match wait_timeout(cmd, timeout) {
        Ok(st) if st.success() => Ok(()),
        Ok(st) => Err(format!(
            "`{desc}` exited with {st}; output:\n{}",
            tail(log, 20)
        )),
        Err(e) => Err(format!("`{desc}`: {e}; output:\n{}", tail(log, 20))),
    }
}

/// Run a command with all output discarded, bounded in time.
pub fn run_quiet(cmd: &mut Command, timeout: Duration) -> Result<ExitStatus, String> {
    let mut c = std::mem::replace(cmd, Command::new("true"));
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    wait_timeout(c, timeout)
}

pub fn wait_timeout(mut cmd: Command, timeout: Duration) -> Result<ExitStatus, String> {
    let mut child = cmd.spawn().map_err(|e| format!("spawn failed: {e}"))?;
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Ok(st),
            Ok(None) => {}
            Err(e) => return Err(format!("wait failed: {e}")),
        }
        if start.elapsed() >= timeout {
            let _ = child.kill();
            // Reap without blocking forever (a child stuck in D state may never die).
            let _ = wait_until(Duration::from_secs(1), || {
                matches!(child.try_wait(), Ok(Some(_)))
            });
            return Err(format!("timed out after {timeout:?}"));
        }
        sleep(Duration::from_millis(20));
    }
}

/// Last `n` lines of a (log) file, for error messages.
pub fn tail(p: &Path, n: usize) -> String {
    let mut f = match File::open(p) {
        Ok(f) => f,
        Err(e) => return format!("  <{}: {e}>", p.display()),
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(16 * 1024);
    let _ = f.seek(SeekFrom::Start(start));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(n);
    if lines.is_empty() {
        return format!("  <{} is empty>", p.display());
    }
    lines[from..].iter().map(|l| format!("  | {l}\n")).collect()
}

pub fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("local_addr: {e}"))
}

pub fn port_accepts(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

pub fn pid_from_file(p: &Path) -> Option<u32> {
    fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// The process exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => match s.rfind(')') {
            Some(i) => !matches!(
                s[i + 1..].trim_start().chars().next(),
                Some('Z') | Some('X')
            ),
            None => true,
        },
        Err(_) => false,
    }
}

pub fn ppid_of(pid: u32) -> Option<u32> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

pub fn cmdline(pid: u32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

pub fn all_pids() -> Vec<u32> {
    let mut v = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
                v.push(pid);
            }
        }
    }
    v
}

pub fn path_prefix(root: &Path) -> String {
    let mut s = root.to_string_lossy().into_owned();
    if !s.ends_with('/') {
        s.push('/');
    }
    s
}

pub fn cmdline_mentions(pid: u32, root: &Path) -> bool {
    let pre = path_prefix(root);
    let bare = root.to_string_lossy();
    cmdline(pid)
        .iter()
        .any(|a| a.contains(&pre) || a.as_str() == bare)
}

/// Live processes (other than ourselves) whose command line names a path under `root`.
pub fn processes_mentioning(root: &Path) -> Vec<u32> {
    let me = std::process::id();
    all_pids()
        .into_iter()
        .filter(|&p| p != me && pid_alive(p) && cmdline_mentions(p, root))
        .collect()
}

pub fn descendants(pid: u32) -> Vec<u32> {
    let pids = all_pids();
    let parents: Vec<(u32, u32)> = pids
        .iter()
        .filter_map(|&p| Some((p, ppid_of(p)?)))
        .collect();
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(cur) = frontier.pop() {
        for &(p, pp) in &parents {
            if pp == cur && !out.contains(&p) && p != pid {
                out.push(p);
                frontier.push(p);
            }
        }
    }
    out
}

pub fn send_signal(sig: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let mut c = Command::new("kill");
    c.arg(format!("-{sig}"));
    for p in pids {
        c.arg(p.to_string());
    }
    let _ = run_quiet(&mut c, Duration::from_secs(5));
}

/// SIGTERM, wait up to KILL_WAIT, then SIGKILL and wait again (bounded).
pub fn kill_and_wait(pids: &[u32]) {
    let me = std::process::id();
    let pids: Vec<u32> = pids.iter().copied().filter(|&p| p != me && p > 1).collect();
    send_signal("TERM", &pids);
    if wait_until(KILL_WAIT, || pids.iter().all(|&p| !pid_alive(p))).is_ok() {
        return;
    }
    let left: Vec<u32> = pids.iter().copied().filter(|&p| pid_alive(p)).collect();
    send_signal("KILL", &left);
    let _ = wait_until(KILL_WAIT, || left.iter().all(|&p| !pid_alive(p)));
}
