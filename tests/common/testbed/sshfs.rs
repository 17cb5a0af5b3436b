//! The sshfs testbed: a private sshd on a free loopback port serving SFTP, and two sshfs mounts
//! of one exported directory.

use super::*;

impl TwoHostTestbed {
    pub(super) fn setup_sshfs() -> Result<TwoHostTestbed, String> {
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
}
