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
//! Only `std` and `tempfile` are used. Packages come from `.ci/install-testbed-deps`.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use tempfile::TempDir;

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
const KILL_WAIT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(50);

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

    fn setup_sshfs() -> Result<TwoHostTestbed, String> {
        let sshd = find_bin("sshd")?;
        let sshfs = find_bin("sshfs")?;
        let keygen = find_bin("ssh-keygen")?;
        find_bin("fusermount3")?;
        check_fuse()?;

        let mut tb = TwoHostTestbed::new_empty("sshfs")?;
        let t = tb.root.clone();
        let export = t.join("export");
        let m1 = t.join("m1");
        let m2 = t.join("m2");
        for d in [&export, &m1, &m2] {
            mkdir(d)?;
        }
        fs::create_dir_all("/run/sshd").map_err(|e| format!("mkdir /run/sshd: {e}"))?;
        let _ = fs::set_permissions("/run/sshd", fs::Permissions::from_mode(0o755));

        for key in ["host_key", "client_key"] {
            let p = t.join(key);
            let mut c = Command::new(&keygen);
            c.args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "sqlite-netfs-testbed",
                "-f",
            ])
            .arg(&p);
            run_checked(c, &t.join(format!("{key}.keygen.log")), SETUP_CMD_TIMEOUT)?;
        }
        fs::copy(t.join("client_key.pub"), t.join("authorized_keys"))
            .map_err(|e| format!("copy client key: {e}"))?;

        // Start sshd on a free port; retry if the port got taken between probe and bind.
        let sshd_log = t.join("sshd.log");
        let pid_file = t.join("sshd.pid");
        let cfg = t.join("sshd_config");
        let mut port = 0u16;
        let mut last_err = String::new();
        for _attempt in 0..5 {
            port = free_port()?;
            let conf = format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {t}/host_key\n\
                 AuthorizedKeysFile {t}/authorized_keys\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPermitRootLogin yes\nStrictModes no\nUsePAM no\n\
                 Subsystem sftp internal-sftp\nPidFile {t}/sshd.pid\nLogLevel INFO\n\
                 MaxStartups 100\nMaxSessions 100\n",
                t = t.display()
            );
            write_file(&cfg, conf.as_bytes())?;
            if !tb.pid_files.contains(&pid_file) {
                tb.pid_files.push(pid_file.clone());
            }
            let mut c = Command::new(&sshd);
            c.arg("-f").arg(&cfg).arg("-E").arg(&sshd_log);
            match run_checked(c, &t.join("sshd.start.log"), SETUP_CMD_TIMEOUT) {
                Ok(()) => {
                    last_err.clear();
                    break;
                }
                Err(e) => {
                    let log = tail(&sshd_log, 20);
                    last_err = format!("starting sshd on port {port}: {e}\nsshd log tail:\n{log}");
                    if log.contains("Address already in use") {
                        continue;
                    }
                    return Err(last_err);
                }
            }
        }
        if !last_err.is_empty() {
            return Err(last_err);
        }
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        tb.server = Some(ServerDaemon {
            program: sshd.clone(),
            args: vec![
                "-f".into(),
                cfg.clone().into(),
                "-E".into(),
                sshd_log.clone().into(),
            ],
            pid_file: pid_file.clone(),
            addr,
            log: sshd_log.clone(),
        });
        wait_until(DAEMON_READY_TIMEOUT, || {
            pid_from_file(&pid_file).is_some_and(pid_alive) && port_accepts(addr)
        })
        .map_err(|_| {
            format!(
                "sshd did not start accepting on 127.0.0.1:{port} within {DAEMON_READY_TIMEOUT:?}\n\
                 sshd log tail:\n{}",
                tail(&sshd_log, 30)
            )
        })?;

        for (i, m) in [&m1, &m2].into_iter().enumerate() {
            let log = t.join(format!("sshfs-m{}.log", i + 1));
            let mut c = Command::new(&sshfs);
            c.arg("-p")
                .arg(port.to_string())
                .arg("-F")
                .arg("/dev/null")
                .arg("-o")
                .arg(format!("IdentityFile={}/client_key", t.display()))
                .args(["-o", "IdentitiesOnly=yes"])
                .args(["-o", "StrictHostKeyChecking=no"])
                .args(["-o", "UserKnownHostsFile=/dev/null"])
                .args(["-o", "BatchMode=yes"])
                .args(["-o", "LogLevel=ERROR"])
                .args(["-o", "reconnect"])
                .arg(format!("root@127.0.0.1:{}", export.display()))
                .arg(m)
                .env_remove("SSH_AUTH_SOCK");
            tb.fuse_mounts.push(m.to_path_buf());
            run_checked(c, &log, SETUP_CMD_TIMEOUT).map_err(|e| {
                format!(
                    "sshfs mount of {} failed: {e}\nsshd log tail:\n{}",
                    m.display(),
                    tail(&sshd_log, 20)
                )
            })?;
            wait_for_mount(m, "fuse.sshfs").map_err(|e| {
                format!(
                    "{e}\nsshfs log:\n{}\nsshd log tail:\n{}",
                    tail(&log, 20),
                    tail(&sshd_log, 20)
                )
            })?;
        }

        tb.mount_a = m1;
        tb.mount_b = m2;
        tb.server_dir = export;
        tb.check_cross_visibility()
            .map_err(|e| format!("{e}\nsshd log tail:\n{}", tail(&sshd_log, 20)))?;
        Ok(tb)
    }

    fn setup_smb() -> Result<TwoHostTestbed, String> {
        let smbd = find_bin("smbd")?;
        let smbnetfs = find_bin("smbnetfs")?;
        find_bin("fusermount3")?;
        check_fuse()?;

        trace(Path::new("-"), "smb: waiting for the machine-wide SMB lock");
        let lock = acquire_smb_lock()?;
        let mut tb = TwoHostTestbed::new_empty("smb")?;
        tb.smb_lock = Some(lock);
        let t = tb.root.clone();
        trace(&t, "smb: got the lock");

        let port445: SocketAddr = ([127, 0, 0, 1], 445).into();
        if port445_in_use() {
            clear_stale_smbd()?;
        }

        let share = t.join("share");
        let m1 = t.join("m1");
        let m2 = t.join("m2");
        let home = t.join("home");
        for d in [
            "share",
            "priv",
            "run",
            "lock",
            "state",
            "cache",
            "m1",
            "m2",
            "home/.smb",
        ] {
            mkdir(&t.join(d))?;
        }
        fs::set_permissions(&share, fs::Permissions::from_mode(0o777))
            .map_err(|e| format!("chmod share: {e}"))?;
        let _ = fs::set_permissions(t.join("priv"), fs::Permissions::from_mode(0o700));
        let smbd_log = t.join("smbd.log");
        let conf = format!(
            "[global]\n server role = standalone server\n interfaces = lo\n bind interfaces only = yes\n\
             \x20disable netbios = yes\n smb ports = 445\n map to guest = Bad User\n\
             \x20pid directory = {t}/run\n lock directory = {t}/lock\n state directory = {t}/state\n\
             \x20cache directory = {t}/cache\n private dir = {t}/priv\n log file = {t}/smbd.log\n\
             \x20load printers = no\n printcap name = /dev/null\n disable spoolss = yes\n\
             [share]\n path = {t}/share\n read only = no\n guest ok = yes\n force user = root\n",
            t = t.display()
        );
        let cfg = t.join("smb.conf");
        write_file(&cfg, conf.as_bytes())?;
        let auth = home.join(".smb/smbnetfs.auth");
        write_file(&auth, b"auth \"guest\" \"\"\n")?;
        fs::set_permissions(&auth, fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("chmod smbnetfs.auth: {e}"))?;
        write_file(&home.join(".smb/smbnetfs.conf"), b"")?;

        let pid_file = t.join("run/smbd.pid");
        tb.pid_files.push(pid_file.clone());
        trace(&t, "smb: starting smbd");
        let mut c = Command::new(&smbd);
        c.arg("-D").arg("-s").arg(&cfg);
        run_checked(c, &t.join("smbd.start.log"), SETUP_CMD_TIMEOUT).map_err(|e| {
            format!(
                "starting smbd: {e}\nsmbd log tail:\n{}",
                tail(&smbd_log, 30)
            )
        })?;
        tb.server = Some(ServerDaemon {
            program: smbd.clone(),
            args: vec!["-D".into(), "-s".into(), cfg.clone().into()],
            pid_file: pid_file.clone(),
            addr: port445,
            log: smbd_log.clone(),
        });
        let cfg_str = cfg.to_string_lossy().into_owned();
        let mut bind_failed = false;
        let ready = wait_until(DAEMON_READY_TIMEOUT, || {
            // smbd keeps running when one of its listening sockets fails to bind: look at its log.
            if fs::read_to_string(&smbd_log).is_ok_and(|l| l.contains("open_socket_in failed")) {
                bind_failed = true;
                return true;
            }
            pid_from_file(&pid_file)
                .is_some_and(|p| pid_alive(p) && cmdline(p).iter().any(|a| a.contains(&cfg_str)))
                && port_accepts(port445)
        })
        .is_ok();
        if !ready || bind_failed {
            return Err(format!(
                "smbd did not start accepting on 127.0.0.1:445 within {DAEMON_READY_TIMEOUT:?} \
                 (bind failed: {bind_failed})\nsmbd log tail:\n{}\nlisteners on 445:\n{}",
                tail(&smbd_log, 30),
                listeners_445()
            ));
        }

        trace(&t, "smb: smbd accepting; mounting");
        for (i, m) in [&m1, &m2].into_iter().enumerate() {
            let log = t.join(format!("smbnetfs-m{}.log", i + 1));
            let mut c = Command::new(&smbnetfs);
            c.arg(m)
                .arg("-o")
                .arg(format!("log_file={}", log.display()))
                .env("HOME", &home);
            tb.fuse_mounts.push(m.to_path_buf());
            let start_log = t.join(format!("smbnetfs-m{}.start.log", i + 1));
            run_checked(c, &start_log, SETUP_CMD_TIMEOUT).map_err(|e| {
                format!(
                    "smbnetfs mount of {} failed: {e}\nsmbnetfs log:\n{}\nsmbd log tail:\n{}",
                    m.display(),
                    tail(&log, 20),
                    tail(&smbd_log, 20)
                )
            })?;
            wait_for_mount(m, "fuse.smbnetfs").map_err(|e| {
                format!(
                    "{e}\nsmbnetfs log:\n{}\n{}\nsmbd log tail:\n{}",
                    tail(&start_log, 20),
                    tail(&log, 20),
                    tail(&smbd_log, 20)
                )
            })?;
            let share_dir = m.join("127.0.0.1").join("share");
            wait_until(MOUNT_READY_TIMEOUT, || share_dir.is_dir()).map_err(|_| {
                format!(
                    "{} did not appear within {MOUNT_READY_TIMEOUT:?}\nsmbnetfs log:\n{}\n\
                     smbd log tail:\n{}",
                    share_dir.display(),
                    tail(&log, 20),
                    tail(&smbd_log, 30)
                )
            })?;
        }

        trace(&t, "smb: mounted; checking cross visibility");
        tb.mount_a = m1.join("127.0.0.1").join("share");
        tb.mount_b = m2.join("127.0.0.1").join("share");
        tb.server_dir = share;
        tb.check_cross_visibility()
            .map_err(|e| format!("{e}\nsmbd log tail:\n{}", tail(&smbd_log, 20)))?;
        Ok(tb)
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

pub(super) fn find_bin(name: &str) -> Result<PathBuf, String> {
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

/// Poll `f` every 50 ms until it returns true or `timeout` passes.
pub(super) fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> Result<(), ()> {
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
fn run_checked(mut cmd: Command, log: &Path, timeout: Duration) -> Result<(), String> {
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
fn run_quiet(cmd: &mut Command, timeout: Duration) -> Result<ExitStatus, String> {
    let mut c = std::mem::replace(cmd, Command::new("true"));
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    wait_timeout(c, timeout)
}

fn wait_timeout(mut cmd: Command, timeout: Duration) -> Result<ExitStatus, String> {
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
pub(super) fn tail(p: &Path, n: usize) -> String {
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

pub(super) fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("local_addr: {e}"))
}

/// Is anything bound to port 445 on loopback (listening, or merely refusing our bind)?
fn port445_in_use() -> bool {
    let v4: SocketAddr = ([127, 0, 0, 1], 445).into();
    let v6: SocketAddr = (std::net::Ipv6Addr::LOCALHOST, 445).into();
    if port_accepts(v4) || port_accepts(v6) {
        return true;
    }
    // A listener with a full backlog does not accept connects; binding tells for sure.
    // (std sets SO_REUSEADDR, so sockets in TIME_WAIT do not count.)
    matches!(TcpListener::bind(v4), Err(e) if e.kind() == std::io::ErrorKind::AddrInUse)
}

fn port_accepts(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
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

fn pid_from_file(p: &Path) -> Option<u32> {
    fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// The process exists and is not a zombie.
fn pid_alive(pid: u32) -> bool {
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

fn ppid_of(pid: u32) -> Option<u32> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn cmdline(pid: u32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn all_pids() -> Vec<u32> {
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

fn path_prefix(root: &Path) -> String {
    let mut s = root.to_string_lossy().into_owned();
    if !s.ends_with('/') {
        s.push('/');
    }
    s
}

fn cmdline_mentions(pid: u32, root: &Path) -> bool {
    let pre = path_prefix(root);
    let bare = root.to_string_lossy();
    cmdline(pid)
        .iter()
        .any(|a| a.contains(&pre) || a.as_str() == bare)
}

/// Live processes (other than ourselves) whose command line names a path under `root`.
fn processes_mentioning(root: &Path) -> Vec<u32> {
    let me = std::process::id();
    all_pids()
        .into_iter()
        .filter(|&p| p != me && pid_alive(p) && cmdline_mentions(p, root))
        .collect()
}

fn descendants(pid: u32) -> Vec<u32> {
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

pub(super) fn send_signal(sig: &str, pids: &[u32]) {
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
fn kill_and_wait(pids: &[u32]) {
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

fn acquire_smb_lock() -> Result<File, String> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(SMB_LOCK_PATH)
        .map_err(|e| format!("open lock file {SMB_LOCK_PATH}: {e}"))?;
    let _ = f.set_permissions(fs::Permissions::from_mode(0o666));
    let timeout = std::env::var("SQLITE_NETFS_SMB_LOCK_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(SMB_LOCK_TIMEOUT_DEFAULT);
    let start = Instant::now();
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(f),
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(format!("lock {SMB_LOCK_PATH}: {e}"));
            }
        }
        if start.elapsed() >= timeout {
            return Err(format!(
                "another SMB testbed held {SMB_LOCK_PATH} for more than {timeout:?}"
            ));
        }
        sleep(Duration::from_millis(100));
    }
}

/// The config path given to an smbd process (`-s PATH`, `-sPATH`, `--configfile[=]PATH`).
fn smbd_config_arg(args: &[String]) -> Option<String> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        if a == "-s" || a == "--configfile" {
            return it.next().cloned();
        }
        if let Some(v) = a.strip_prefix("--configfile=") {
            return Some(v.to_string());
        }
        if let Some(v) = a.strip_prefix("-s")
            && !v.is_empty()
            && !a.starts_with("--")
        {
            return Some(v.to_string());
        }
    }
    None
}

/// Something listens on 127.0.0.1:445 while we hold the SMB lock. If it is an smbd left over by
/// a crashed testbed run (config under the system temp dir), kill it and its run's other
/// processes; otherwise return Err.
fn clear_stale_smbd() -> Result<(), String> {
    let tmp_dirs: Vec<String> = {
        let mut v = vec![path_prefix(&std::env::temp_dir()), "/tmp/".to_string()];
        v.dedup();
        v
    };
    let mut stale = Vec::new();
    let mut stale_roots: Vec<PathBuf> = Vec::new();
    let mut foreign = Vec::new();
    for pid in all_pids() {
        if !pid_alive(pid) {
            continue;
        }
        let args = cmdline(pid);
        let Some(a0) = args.first() else { continue };
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let is_smbd = Path::new(a0).file_name().is_some_and(|n| n == "smbd")
            || comm.trim() == "smbd"
            || comm.trim().starts_with("smbd-");
        if !is_smbd {
            continue;
        }
        match smbd_config_arg(&args) {
            Some(cfg) if tmp_dirs.iter().any(|t| cfg.starts_with(t.as_str())) => {
                stale.push(pid);
                if let Some(parent) = Path::new(&cfg).parent()
                    && parent != Path::new("/tmp")
                    && parent != std::env::temp_dir()
                {
                    let parent = parent.to_path_buf();
                    if !stale_roots.contains(&parent) {
                        stale_roots.push(parent);
                    }
                }
            }
            other => foreign.push(format!("pid {pid} {args:?} (config {other:?})")),
        }
    }
    if stale.is_empty() {
        return Err(format!(
            "127.0.0.1:445 is already in use by something that is not a stale \
             testbed smbd; smbd processes seen: {foreign:?}; listeners:\n{}",
            listeners_445()
        ));
    }
    eprintln!("killing stale smbd processes {stale:?} from {stale_roots:?}");
    kill_and_wait(&stale);
    for root in &stale_roots {
        // That crashed run's smbnetfs processes and mounts are stale too.
        let procs = processes_mentioning(root);
        kill_and_wait(&procs);
        for m in ["m1", "m2"] {
            let mp = root.join(m);
            if is_mounted(&mp) {
                let _ = run_quiet(Command::new("umount").arg("-l").arg(&mp), UNMOUNT_TIMEOUT);
            }
        }
    }
    wait_until(Duration::from_secs(10), || !port445_in_use()).map_err(|_| {
        format!(
            "127.0.0.1:445 still in use after killing stale smbd {stale:?}; \
             listeners:\n{}",
            listeners_445()
        )
    })
}

fn listeners_445() -> String {
    Command::new("ss")
        .args(["-ltnp", "sport = :445"])
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_else(|e| format!("<ss failed: {e}>"))
}
