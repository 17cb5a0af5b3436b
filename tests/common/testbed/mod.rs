//! Two-"host" network-filesystem testbeds on one machine, for integration tests.
//!
//! * [`TwoHostTestbed::sshfs`]: a private sshd on 127.0.0.1:<free port> serving SFTP, and two
//!   independent sshfs (FUSE) mounts of one exported directory.
//! * [`TwoHostTestbed::smb`]: a private Samba smbd on 127.0.0.1:445 and two independent smbnetfs
//!   (FUSE) mounts of one share. Only one smbd can own port 445, so SMB testbeds are serialized
//!   machine-wide with an exclusive lock on [`SMB_LOCK_PATH`], held for the testbed's lifetime.
//!
//! Each mount has its own kernel inodes, page cache and dentry cache, so the two mounts behave
//! like two client hosts of one file server (see shared/NETFS-FACTS.md).
//!
//! Both use the clients' default caching. Notably sshfs (3.7, `dir_cache=yes`) keeps file
//! attributes in its own userspace cache for 20 s, so another mount's growth of a file can stay
//! invisible to `stat`/`statx(AT_STATX_FORCE_SYNC)` that long; a fresh `open()` refreshes it.
//! smbnetfs: kernel attribute cache about 1 s, `unlink`/`rename` of an open file fail with EBUSY.
//!
//! Set env `SQLITE_NETFS_TESTBED_DEBUG=1` to trace setup and teardown steps on stderr.
//!
//! Everything lives in a fresh temp dir per testbed. `Drop` unmounts both mounts and stops the
//! daemons it started; it never panics and never waits unboundedly.
//!
//! This module owns what both testbeds share (the mounts, the server's stop and restart,
//! teardown, the skip rule); `sshfs` and `smb` set each up. Process utilities come from
//! `super::process`. Only `std` and `tempfile` are used. Packages come from
//! `.ci/install-testbed-deps`.

mod smb;
use smb::port445_in_use;
mod sshfs;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::process::*;

/// Machine-wide lock file serializing SMB testbeds (they all need 127.0.0.1:445).
pub const SMB_LOCK_PATH: &str = "/tmp/sqlite-netfs-smb-testbed.lock";

/// How long `smb()` waits for another SMB testbed (another thread or test binary) to finish.
/// Override with env `SQLITE_NETFS_SMB_LOCK_TIMEOUT_SECS`.
const SMB_LOCK_TIMEOUT_DEFAULT: Duration = Duration::from_secs(20 * 60);

const SETUP_CMD_TIMEOUT: Duration = Duration::from_secs(30);
const DAEMON_READY_TIMEOUT: Duration = Duration::from_secs(20);
const MOUNT_READY_TIMEOUT: Duration = Duration::from_secs(20);
const CROSS_VISIBLE_TIMEOUT: Duration = Duration::from_secs(15);
const UNMOUNT_TIMEOUT: Duration = Duration::from_secs(10);

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Two mounts ("host A" and "host B") of one server-side directory.
pub struct TwoHostTestbed {
    kind: &'static str,
    /// The temp dir holding everything; `None` once deliberately leaked (unmount failed).
    dir: Option<TempDir>,
    root: PathBuf,
    mount_a: PathBuf,
    mount_b: PathBuf,
    server_dir: PathBuf,
    /// FUSE mount points to unmount on drop (in mount order).
    fuse_mounts: Vec<PathBuf>,
    /// Pid files of daemons we started (stopped on drop).
    pid_files: Vec<PathBuf>,
    /// Machine-wide SMB lock, released last.
    smb_lock: Option<File>,
    /// How to start the file server again after [`TwoHostTestbed::stop_server`].
    server: Option<ServerDaemon>,
}

/// The file server of a testbed (sshd or smbd): enough to stop it like a crash and start it
/// again with the same configuration and port.
struct ServerDaemon {
    program: PathBuf,
    args: Vec<std::ffi::OsString>,
    /// Rewritten by the daemon at each start, so teardown always finds the current one.
    pid_file: PathBuf,
    addr: SocketAddr,
    log: PathBuf,
}

impl TwoHostTestbed {
    /// Loopback sshd on a free port + two sshfs mounts of one exported dir.
    pub fn sshfs() -> Result<TwoHostTestbed, String> {
        Self::setup_sshfs().map_err(|e| format!("sshfs testbed: {e}"))
    }

    /// Loopback smbd on 127.0.0.1:445 + two smbnetfs mounts of one share.
    pub fn smb() -> Result<TwoHostTestbed, String> {
        Self::setup_smb().map_err(|e| format!("smb testbed: {e}"))
    }

    /// "sshfs" or "smb".
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The shared directory as seen through mount 1 ("host A").
    pub fn mount_a(&self) -> &Path {
        &self.mount_a
    }

    /// The same directory through mount 2 ("host B").
    pub fn mount_b(&self) -> &Path {
        &self.mount_b
    }

    /// The exported directory itself (server-side local path).
    pub fn server_dir(&self) -> &Path {
        &self.server_dir
    }

    /// A file-server crash: SIGKILLs this testbed's server daemon (found by its pid file) and
    /// everything it forked (sshd's per-connection session processes, which serve SFTP with
    /// `internal-sftp`; smbd's per-client and helper processes), then waits until they are gone
    /// and the port refuses connections. Processes of other testbeds are never touched: only
    /// descendants of our own daemon, whose command line names our temp dir, are signalled.
    /// Returns how many processes were killed (more than one means clients were connected).
    pub fn stop_server(&self) -> Result<usize, String> {
        let server = self
            .server
            .as_ref()
            .ok_or("this testbed has no server daemon")?;
        let pid = pid_from_file(&server.pid_file)
            .filter(|&p| pid_alive(p) && cmdline_mentions(p, &self.root))
            .ok_or_else(|| {
                format!(
                    "the server is not running (pid file {})",
                    server.pid_file.display()
                )
            })?;
        // Collect the children before the parent dies: orphans are reparented and lost.
        let mut pids = descendants(pid);
        pids.push(pid);
        send_signal("KILL", &pids);
        wait_until(KILL_WAIT, || {
            pids.iter().all(|&p| !pid_alive(p)) && !port_accepts(server.addr)
        })
        .map_err(|_| {
            let left: Vec<u32> = pids.iter().copied().filter(|&p| pid_alive(p)).collect();
            format!(
                "server processes {left:?} still alive or {} still accepting {KILL_WAIT:?} \
                 after SIGKILL",
                server.addr
            )
        })?;
        trace(&self.root, &format!("server stopped: killed {pids:?}"));
        Ok(pids.len())
    }

    /// Starts the server daemon again with the configuration and port it had, after
    /// [`stop_server`](Self::stop_server), and waits until it accepts connections. The clients
    /// are not touched: sshfs (`-o reconnect`) and smbnetfs reconnect on their own.
    pub fn start_server(&self) -> Result<(), String> {
        let server = self
            .server
            .as_ref()
            .ok_or("this testbed has no server daemon")?;
        if pid_from_file(&server.pid_file)
            .is_some_and(|p| pid_alive(p) && cmdline_mentions(p, &self.root))
        {
            return Err("the server is already running".into());
        }
        // Only what the restart logs counts (smbd logs a failed bind and keeps running).
        let log_offset = fs::metadata(&server.log).map(|m| m.len()).unwrap_or(0);
        let mut c = Command::new(&server.program);
        c.args(&server.args);
        let start_log = self.root.join("server.restart.log");
        run_checked(c, &start_log, SETUP_CMD_TIMEOUT).map_err(|e| {
            format!(
                "restarting the server: {e}\nlog tail:\n{}",
                tail(&server.log, 20)
            )
        })?;
        let new_log = || {
            fs::read(&server.log)
                .map(|b| {
                    String::from_utf8_lossy(&b[(log_offset as usize).min(b.len())..]).into_owned()
                })
                .unwrap_or_default()
        };
        let mut bind_failed = false;
        let ready = wait_until(DAEMON_READY_TIMEOUT, || {
            let log = new_log();
            if log.contains("open_socket_in failed") || log.contains("Address already in use") {
                bind_failed = true;
                return true;
            }
            pid_from_file(&server.pid_file)
                .is_some_and(|p| pid_alive(p) && cmdline_mentions(p, &self.root))
                && port_accepts(server.addr)
        });
        if ready.is_err() || bind_failed {
            return Err(format!(
                "the restarted server did not accept on {} within {DAEMON_READY_TIMEOUT:?} \
                 (bind failed: {bind_failed})\nlog since the restart:\n{}",
                server.addr,
                new_log()
            ));
        }
        trace(&self.root, "server restarted");
        Ok(())
    }

    /// The file server's processes that serve the mounts: descendants of the daemons this
    /// testbed started that have no children of their own (on sshfs, the SFTP server of each
    /// mount's session). For tracing the server's side of a workload.
    pub fn serving_processes(&self) -> Vec<u32> {
        let below: Vec<u32> = self
            .pid_files
            .iter()
            .filter_map(|pf| pid_from_file(pf))
            .flat_map(descendants)
            .collect();
        below
            .iter()
            .copied()
            .filter(|&p| pid_alive(p) && !below.iter().any(|&c| ppid_of(c) == Some(p)))
            .collect()
    }

    fn new_empty(kind: &'static str) -> Result<TwoHostTestbed, String> {
        let dir = tempfile::Builder::new()
            .prefix("snfs-")
            .tempdir_in(std::env::temp_dir())
            .map_err(|e| format!("creating temp dir: {e}"))?;
        let root = dir.path().to_path_buf();
        Ok(TwoHostTestbed {
            kind,
            dir: Some(dir),
            root,
            mount_a: PathBuf::new(),
            mount_b: PathBuf::new(),
            server_dir: PathBuf::new(),
            fuse_mounts: Vec::new(),
            pid_files: Vec::new(),
            smb_lock: None,
            server: None,
        })
    }

    /// A file written through mount A must be readable through mount B (and on the server).
    fn check_cross_visibility(&self) -> Result<(), String> {
        let name = format!(
            ".testbed-ready-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let payload = format!("ready {name}");
        let pa = self.mount_a.join(&name);
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&pa)
                .map_err(|e| format!("create {} via mount A: {e}", pa.display()))?;
            f.write_all(payload.as_bytes())
                .and_then(|_| f.sync_all())
                .map_err(|e| format!("write {} via mount A: {e}", pa.display()))?;
        }
        let pb = self.mount_b.join(&name);
        let ps = self.server_dir.join(&name);
        let mut last = String::new();
        let ok = wait_until(CROSS_VISIBLE_TIMEOUT, || {
            match (fs::read(&pb), fs::read(&ps)) {
                (Ok(b), Ok(s)) if b == payload.as_bytes() && s == payload.as_bytes() => true,
                (b, s) => {
                    last = format!("via mount B: {:?}, on server: {:?}", short(b), short(s));
                    false
                }
            }
        });
        let _ = fs::remove_file(&pa);
        ok.map_err(|_| {
            format!(
                "a file written via mount A ({}) was not visible via mount B ({}) \
                 within {CROSS_VISIBLE_TIMEOUT:?}; last: {last}",
                pa.display(),
                pb.display()
            )
        })
    }

    fn teardown(&mut self) {
        trace(&self.root, "teardown: start");
        // 1. Unmount (reverse order), fusermount3 -u with a timeout, falling back to umount -l.
        let mut still_mounted = false;
        for m in self.fuse_mounts.iter().rev() {
            if !is_mounted(m) {
                continue;
            }
            let _ = run_quiet(
                Command::new("fusermount3").arg("-u").arg(m),
                UNMOUNT_TIMEOUT,
            );
            if is_mounted(m) {
                let _ = run_quiet(Command::new("umount").arg("-l").arg(m), UNMOUNT_TIMEOUT);
            }
            if is_mounted(m) {
                let _ = run_quiet(
                    Command::new("fusermount3").arg("-uz").arg(m),
                    UNMOUNT_TIMEOUT,
                );
            }
            if is_mounted(m) {
                still_mounted = true;
                eprintln!("testbed teardown: could not unmount {}", m.display());
            }
        }

        trace(&self.root, "teardown: unmounted");
        // 2. Stop the daemons we started (by pid file), plus their descendants.
        for pf in &self.pid_files {
            if let Some(pid) = pid_from_file(pf)
                && pid_alive(pid)
                && cmdline_mentions(pid, &self.root)
            {
                let mut pids = descendants(pid);
                pids.push(pid);
                kill_and_wait(&pids);
            }
        }

        // 3. Sweep any leftover process whose command line names our temp dir (sshfs and its
        //    ssh child, smbnetfs workers, smbd children) — all started by this testbed.
        let leftovers = processes_mentioning(&self.root);
        if !leftovers.is_empty() {
            kill_and_wait(&leftovers);
        }

        trace(&self.root, "teardown: processes stopped");
        // 4. For SMB: make sure port 445 is free before releasing the machine-wide lock.
        if self.smb_lock.is_some() && !self.pid_files.is_empty() {
            let _ = wait_until(KILL_WAIT, || !port445_in_use());
        }

        // 5. Remove the temp dir, unless something is still mounted below it (then leak it
        //    rather than recurse into a live or hung mount).
        if let Some(dir) = self.dir.take() {
            if still_mounted {
                eprintln!(
                    "testbed teardown: leaving {} in place (mount still present)",
                    dir.path().display()
                );
                std::mem::forget(dir);
            } else {
                let _ = dir.close();
            }
        }

        // 6. Release the SMB lock last.
        self.smb_lock.take();
        trace(&self.root, "teardown: done");
    }
}

impl Drop for TwoHostTestbed {
    fn drop(&mut self) {
        // Never panic out of drop (it may run during unwinding).
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.teardown()));
    }
}

/// In CI (env CI=true) a testbed that cannot be set up fails the test (panics with the reason).
/// Elsewhere, prints a loud "SKIPPED" message to stderr and returns `None`.
pub fn testbed_or_skip<T>(result: Result<T, String>) -> Option<T> {
    match result {
        Ok(tb) => Some(tb),
        Err(reason) => {
            let in_ci =
                std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
            let kind = guess_kind(&reason);
            let prefix = format!("{kind} testbed: ");
            let reason = reason.strip_prefix(prefix.as_str()).unwrap_or(&reason);
            if in_ci {
                panic!("{kind} testbed unavailable (CI=true, so this is a failure): {reason}");
            }
            let bar = "#".repeat(78);
            let msg = format!(
                "\n{bar}\n{bar}\n###  SKIPPED: {kind} testbed unavailable: {reason}\n\
                 ###  (install deps with .ci/install-testbed-deps; run as root with /dev/fuse)\n\
                 ###  (with CI=true this would be a test FAILURE)\n{bar}\n{bar}\n"
            );
            // Write to the stderr handle directly: unlike eprintln!, this is not swallowed by
            // the test harness's output capture, so the skip is visible in a normal run.
            let _ = std::io::stderr().write_all(msg.as_bytes());
            None
        }
    }
}

fn guess_kind(reason: &str) -> &'static str {
    if reason.starts_with("smb testbed:") {
        "smb"
    } else if reason.starts_with("sshfs testbed:") {
        "sshfs"
    } else if reason.starts_with("vm testbed:") {
        "vm"
    } else {
        "network-filesystem"
    }
}

// ---------------------------------------------------------------------------------------------
// helpers

/// With env `SQLITE_NETFS_TESTBED_DEBUG` set, trace setup/teardown steps to stderr (uncaptured).
fn trace(root: &Path, what: &str) {
    if std::env::var_os("SQLITE_NETFS_TESTBED_DEBUG").is_some() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let _ = writeln!(
            std::io::stderr(),
            "[testbed {t:.3} pid {} {}] {what}",
            std::process::id(),
            root.display()
        );
    }
}

fn check_fuse() -> Result<(), String> {
    if !Path::new("/dev/fuse").exists() {
        return Err("/dev/fuse does not exist".into());
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map(drop)
        .map_err(|e| format!("cannot open /dev/fuse: {e} (need root)"))
}

fn mkdir(p: &Path) -> Result<(), String> {
    fs::create_dir_all(p).map_err(|e| format!("mkdir {}: {e}", p.display()))
}

fn write_file(p: &Path, data: &[u8]) -> Result<(), String> {
    fs::write(p, data).map_err(|e| format!("write {}: {e}", p.display()))
}

fn short(r: std::io::Result<Vec<u8>>) -> String {
    match r {
        Ok(v) => format!(
            "{} bytes {:?}",
            v.len(),
            String::from_utf8_lossy(&v[..v.len().min(40)])
        ),
        Err(e) => format!("error {e}"),
    }
}

/// Unescape the octal escapes (`\040` etc.) used in /proc/self/mountinfo.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c))
                && let Ok(v) = u8::from_str_radix(std::str::from_utf8(oct).unwrap_or("x"), 8)
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The fstype of the mount whose mount point is exactly `p`, if any (the last one wins).
fn mount_fstype(p: &Path) -> Option<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = p.to_string_lossy();
    let mut found = None;
    for line in info.lines() {
        let mut halves = line.splitn(2, " - ");
        let pre: Vec<&str> = halves.next().unwrap_or("").split(' ').collect();
        let post: Vec<&str> = halves.next().unwrap_or("").split(' ').collect();
        if pre.len() >= 5 && unescape_mountinfo(pre[4]) == want {
            found = post.first().map(|s| s.to_string());
        }
    }
    found
}

fn is_mounted(p: &Path) -> bool {
    mount_fstype(p).is_some()
}

fn wait_for_mount(p: &Path, fstype: &str) -> Result<(), String> {
    wait_until(MOUNT_READY_TIMEOUT, || {
        mount_fstype(p).as_deref() == Some(fstype)
    })
    .map_err(|_| {
        format!(
            "{} did not show up in /proc/self/mountinfo as {fstype} within {MOUNT_READY_TIMEOUT:?} \
             (seen: {:?})",
            p.display(),
            mount_fstype(p)
        )
    })
}
