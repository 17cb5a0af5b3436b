//! The SMB testbed: a private smbd on 127.0.0.1:445 and two smbnetfs mounts of one share, and
//! the machine-wide lock that serialises it (only one smbd can own port 445).

use super::*;

impl TwoHostTestbed {
    pub(super) fn setup_smb() -> Result<TwoHostTestbed, String> {
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
             [share]\n path = {t}/share\n read only = no\n guest ok = yes\n force user = root\n{extra}",
            t = t.display(),
            extra = std::env::var(SMB_SHARE_OPTIONS_ENV)
                .map(|o| o.split(';').map(|l| format!(" {}\n", l.trim())).collect())
                .unwrap_or_else(|_| String::new()),
        );
        let cfg = t.join("smb.conf");
        write_file(&cfg, conf.as_bytes())?;
        let auth = home.join(".smb/smbnetfs.auth");
        write_file(&auth, b"auth \"guest\" \"\"\n")?;
        fs::set_permissions(&auth, fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("chmod smbnetfs.auth: {e}"))?;
        // smbnetfs serves each SMB connection from a child process that exits on any errno
        // outside that call's expected list. A `stat` meeting the other mount's `rmdir` of a
        // token directory (between its delete-on-close and its close) gets "delete pending",
        // which libsmbclient turns into EINVAL: the child exits, its session ends, the call
        // fails with EIO, and the parent caches that failure for the whole host (`127.0.0.1`),
        // so every call on the mount failed with EIO for `neg_cache_timeout` (3000 ms by
        // default; smbd's log at level 3 showed one "Server exit" per collision). At 1 ms a
        // collision costs one EIO and a reconnect. (`neg_cache "false"` hangs smbnetfs 0.6.3:
        // it flushes the cache under the cache's own mutex.)
        write_file(&home.join(".smb/smbnetfs.conf"), b"neg_cache_timeout 1\n")?;

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
}

/// Is anything bound to port 445 on loopback (listening, or merely refusing our bind)?
pub(super) fn port445_in_use() -> bool {
    let v4: SocketAddr = ([127, 0, 0, 1], 445).into();
    let v6: SocketAddr = (std::net::Ipv6Addr::LOCALHOST, 445).into();
    if port_accepts(v4) || port_accepts(v6) {
        return true;
    }
    // A listener with a full backlog does not accept connects; binding tells for sure.
    // (std sets SO_REUSEADDR, so sockets in TIME_WAIT do not count.)
    matches!(TcpListener::bind(v4), Err(e) if e.kind() == std::io::ErrorKind::AddrInUse)
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

/// Lines added to the share's `smb.conf` section, `;`-separated (e.g. `oplocks = no; level2
/// oplocks = no`; global settings such as `smb2 leases` are ignored there), to try server
/// settings when a failure is being chased.
pub const SMB_SHARE_OPTIONS_ENV: &str = "NETFS_TEST_SMB_SHARE_OPTIONS";
