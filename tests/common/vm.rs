//! QEMU guests as hosts with real kernel filesystem clients (NFS, CIFS, 9p, virtiofs), for the
//! tests that FUSE testbeds cannot stand in for.
//!
//! Each guest boots Debian's kernel (TCG: KVM hangs on these machines) with a busybox
//! initramfs built at test time from the installed packages. The host's root is shared
//! read-only over virtio-9p, so a guest runs this very test binary with `chroot`. A second,
//! writable 9p share, the *control directory*, is mounted in every guest at the path it has
//! on the host: job scripts, "go" files, logs and exit codes keep one path on both sides.
//! A guest's `/tmp` is a tmpfs of its own; the test binary's directory is bound back into it
//! when it lies under the host's `/tmp` (a checkout there).
//!
//! Per guest, the control directory holds `<guest>/`:
//! | file | written by | meaning |
//! |---|---|---|
//! | `setup.sh` | host, before boot | busybox script mounting the filesystem under test |
//! | `ready` / `failed` | guest | setup done / setup's output on failure |
//! | `job-N.sh` | host | a script to run in the chroot, started by the guest's agent |
//! | `job-N.pid`, `job-N.rc`, `job-N.out` | guest | its pid, exit status, output |
//! | `job-N.kill` | host | a signal number for job N |
//!
//! Every file is written under a temporary name and renamed, so a reader never sees half.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::faults::FaultPlan;
use super::process::{find_bin, free_port, port_accepts, send_signal, tail, wait_until};
use super::stress::StressPlan;
use super::worker::{Job, Place};

/// Where a guest mounts the filesystem under test (inside the guest's own `/tmp`).
pub const GUEST_MOUNT: &str = "/tmp/netfs-guest-mount";

const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
const GUEST_MEMORY_MB: u32 = 1024;
/// The address guests reach the host's Samba at (a QEMU forward of one port).
const SAMBA_ADDR: &str = "10.0.2.100";
/// The host's loopback as guests reach it through QEMU's user network (NFS guests).
const HOST_ADDR: &str = "10.0.2.2";

/// The guest's `/init`: mounts, loads what the setup needs, runs the setup, then the agent
/// loop that starts and signals jobs.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /modules); do insmod $m; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 host /host
mount --bind /host/lib/modules /lib/modules
for a in $(cat /proc/cmdline); do
  case $a in netfs.guest=*) G=${a#*=};; netfs.ctl=*) CTL=${a#*=};; netfs.ip=*) IP=${a#*=};;
    netfs.exe=*) EXE=${a#*=};; esac
done
mount -t proc proc /host/proc; mount -t devtmpfs dev /host/dev; mount -t sysfs sys /host/sys
mkdir -p /host-tmp; mount --bind /host/tmp /host-tmp
mount -t tmpfs tmp /host/tmp
case "$EXE" in /tmp/?*) mkdir -p "/host$EXE"; mount --bind "/host-tmp${EXE#/tmp}" "/host$EXE";; esac
mkdir -p /host$CTL
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 ctl /host$CTL
D=/host$CTL/$G
hostname $G
modprobe virtio_net && ip link set lo up && ip link set eth0 up && ip addr add $IP/24 dev eth0
if sh $D/setup.sh > $D/setup.out 2>&1; then echo ok > $D/ready.tmp; mv $D/ready.tmp $D/ready
else mv $D/setup.out $D/failed; poweroff -f; fi
while :; do
  for f in $D/job-*.sh; do
    [ -e "$f" ] || continue
    n=${f%.sh}
    [ -e $n.started ] && continue
    : > $n.started
    ( chroot /host /bin/sh ${f#/host} > $n.out 2>&1 & p=$!
      echo $p > $n.pid.tmp; mv $n.pid.tmp $n.pid
      wait $p; echo $? > $n.rc.tmp; mv $n.rc.tmp $n.rc ) &
  done
  for k in $D/job-*.kill; do
    [ -e "$k" ] || continue
    n=${k%.kill}
    kill -$(cat $k) $(cat $n.pid) 2>/dev/null; rm -f $k
  done
  [ -e $D/poweroff ] && poweroff -f
  sleep 0.1
done
"#;

/// The filesystem a guest mounts at [`GUEST_MOUNT`].
#[derive(Debug, Clone)]
pub enum GuestFs {
    /// The kernel NFS client, to nfs-ganesha on the host (`vers` such as `4.1`, or `3`,
    /// mounted `nolock`: ganesha has no lock manager here, and `nolock` homes are common).
    Nfs {
        port: u16,
        mount_port: u16,
        export: PathBuf,
        vers: &'static str,
    },
    /// The host directory, shared by QEMU's virtio-9p server (as WSL and VM-backed containers do).
    NineP { dir: PathBuf },
    /// The kernel CIFS client (SMB3), to the SMB testbed's Samba on the host.
    Cifs,
    /// The host directory, shared by a `virtiofsd` per guest (as VM-backed containers share
    /// a host directory); QEMU then needs the guest's memory shared with it.
    Virtiofs { dir: PathBuf },
}

/// One QEMU guest.
pub struct Guest {
    agent: GuestAgent,
    qemu: Child,
}

/// The agent loop of one guest, which starts and signals jobs: cheap to clone, so a stress
/// plan can say which of its workers run where.
#[derive(Debug, Clone)]
pub struct GuestAgent {
    pub name: String,
    /// The guest's files in the control directory (host path = guest path).
    dir: PathBuf,
    next_job: Arc<AtomicU32>,
}

/// A job started in a guest.
pub struct GuestProcess {
    base: PathBuf,
}

impl GuestProcess {
    fn path(&self, ext: &str) -> PathBuf {
        self.base.with_extension(ext)
    }

    /// The exit status once the job ended (a signal shows as 128 + its number).
    pub fn try_wait(&self) -> Option<i32> {
        let text = fs::read_to_string(self.path("rc")).ok()?;
        text.trim().parse().ok()
    }

    /// Sends `signal` (a number) to the job once the guest has started it.
    pub fn signal(&self, signal: i32) {
        let _ = wait_until(Duration::from_secs(30), || self.path("pid").exists());
        write_atomic(&self.path("kill"), format!("{signal}\n").as_bytes());
    }

    pub fn output(&self) -> String {
        fs::read_to_string(self.path("out")).unwrap_or_default()
    }
}

impl GuestAgent {
    /// Runs a `/bin/sh` script in the guest's chroot (the host's root, read-only).
    pub fn start(&self, script: &str) -> GuestProcess {
        let n = self.next_job.fetch_add(1, Ordering::Relaxed);
        let base = self.dir.join(format!("job-{n}"));
        write_atomic(&base.with_extension("sh"), script.as_bytes());
        GuestProcess { base }
    }

    /// Starts a worker process for `job` in this guest: this test binary, as `worker::spawn`
    /// starts it on the host.
    pub fn spawn_worker(&self, job: &Job, extra_env: &[(&str, &str)]) -> GuestProcess {
        let exe = std::env::current_exe().expect("test binary path");
        let (job_var, job_text) = job.env();
        let mut script = format!("export {job_var}={}\n", quote(&job_text));
        // The guest's environment is init's: pass on what asks workers for diagnostics.
        let inherited: Vec<(String, String)> = ["NETFS_TEST_TRACE", "RUST_LOG"]
            .into_iter()
            .filter_map(|k| Some((k.to_owned(), std::env::var(k).ok()?)))
            .collect();
        let inherited = inherited.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        for (k, v) in inherited.chain(extra_env.iter().copied()) {
            script.push_str(&format!("export {k}={}\n", quote(v)));
        }
        script.push_str(&format!(
            "exec {} --exact worker_process --ignored --nocapture --test-threads=1 -q\n",
            quote(&exe.to_string_lossy())
        ));
        self.start(&script)
    }

    /// Runs a script to its end and returns its output, failing on a non-zero status.
    pub fn run(&self, script: &str, timeout: Duration) -> Result<String, String> {
        let job = self.start(script);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(rc) = job.try_wait() {
                return if rc == 0 {
                    Ok(job.output())
                } else {
                    Err(format!(
                        "guest {}: `{script}` exited {rc}: {}",
                        self.name,
                        job.output()
                    ))
                };
            }
            if Instant::now() > deadline {
                return Err(format!("guest {}: `{script}` timed out", self.name));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Guest {
    pub fn agent(&self) -> &GuestAgent {
        &self.agent
    }

    pub fn name(&self) -> &str {
        &self.agent.name
    }

    /// A host crash: the guest's QEMU is killed, with every process and unwritten cache in it.
    pub fn kill(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }

    /// Whether the guest's QEMU has ended (killed, or powered off).
    pub fn is_dead(&mut self) -> bool {
        self.qemu.try_wait().ok().flatten().is_some()
    }

    /// Freezes the whole guest (SIGSTOP to QEMU): its processes, kernel and clock stop.
    pub fn freeze(&self) {
        send_signal("STOP", &[self.qemu.id()]);
    }

    pub fn thaw(&self) {
        send_signal("CONT", &[self.qemu.id()]);
    }

    pub fn console(&self) -> String {
        tail(&self.agent.dir.join("console.log"), 30)
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.thaw();
        self.kill();
    }
}

/// Guests sharing one filesystem, and the server side of it.
pub struct VmTestbed {
    kind: &'static str,
    pub guests: Vec<Guest>,
    /// The shared directory on the server (the host's local disk).
    server_dir: PathBuf,
    ganesha: Option<Ganesha>,
    /// The SMB testbed whose Samba the guests mount (its own FUSE mounts stay unused).
    samba: Option<super::testbed::TwoHostTestbed>,
    /// One `virtiofsd` per virtiofs guest.
    virtiofsd: Vec<Child>,
    /// The control directory; dropped last.
    root: tempfile::TempDir,
}

impl VmTestbed {
    /// `guests` kernel NFS clients (`vers` 4.1, 4.2, or 3 mounted `nolock`) of nfs-ganesha on
    /// the host.
    pub fn nfs(guests: usize, vers: &'static str) -> Result<VmTestbed, String> {
        let root = control_dir()?;
        let server_dir = root.path().join("export");
        mkdir(&server_dir)?;
        let (port, mount_port) = (free_port()?, free_port()?);
        let ganesha = Ganesha::start(root.path(), &server_dir, port, mount_port, vers == "3")?;
        let mut tb = VmTestbed {
            kind: "vm-nfs",
            guests: Vec::new(),
            server_dir,
            ganesha: Some(ganesha),
            samba: None,
            virtiofsd: Vec::new(),
            root,
        };
        let export = tb.server_dir.clone();
        tb.boot(
            guests,
            &GuestFs::Nfs {
                port,
                mount_port,
                export,
                vers,
            },
        )?;
        Ok(tb)
    }

    /// `guests` guests that see one host directory through virtio-9p (each through its own
    /// QEMU's server), while the host sees it as its local disk: the WSL `/mnt/c` and
    /// VM-backed container shape.
    pub fn nine_p(guests: usize) -> Result<VmTestbed, String> {
        VmTestbed::sharing_a_host_dir("vm-9p", guests, |dir| GuestFs::NineP { dir })
    }

    /// `guests` guests that see one host directory through virtiofs (each through its own
    /// `virtiofsd`), while the host sees it as its local disk: the shape of VM-backed
    /// containers whose data dir is a host directory (measured with the Rust `virtiofsd` under
    /// QEMU, not Docker Desktop's own servers).
    pub fn virtiofs(guests: usize) -> Result<VmTestbed, String> {
        VmTestbed::sharing_a_host_dir("vm-virtiofs", guests, |dir| GuestFs::Virtiofs { dir })
    }

    /// Guests that mount a directory of the control directory, which the host sees as its
    /// local disk, through the filesystem `fs` makes of its path.
    fn sharing_a_host_dir(
        kind: &'static str,
        guests: usize,
        fs: impl FnOnce(PathBuf) -> GuestFs,
    ) -> Result<VmTestbed, String> {
        let root = control_dir()?;
        let server_dir = root.path().join("shared");
        mkdir(&server_dir)?;
        let mut tb = VmTestbed {
            kind,
            guests: Vec::new(),
            server_dir: server_dir.clone(),
            ganesha: None,
            samba: None,
            virtiofsd: Vec::new(),
            root,
        };
        tb.boot(guests, &fs(server_dir))?;
        Ok(tb)
    }

    /// `guests` kernel CIFS (SMB3) clients of the SMB testbed's Samba on 127.0.0.1:445.
    pub fn cifs(guests: usize) -> Result<VmTestbed, String> {
        let samba = super::testbed::TwoHostTestbed::smb()?;
        let mut tb = VmTestbed {
            kind: "vm-cifs",
            guests: Vec::new(),
            server_dir: samba.server_dir().to_owned(),
            ganesha: None,
            samba: Some(samba),
            virtiofsd: Vec::new(),
            root: control_dir()?,
        };
        tb.boot(guests, &GuestFs::Cifs)?;
        Ok(tb)
    }

    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// How long the file server keeps a dead client's state, where it keeps any (ganesha).
    pub fn server_lease_secs(&self) -> Option<u32> {
        self.ganesha.as_ref().map(|_| GANESHA_LEASE_SECS)
    }

    pub fn server_dir(&self) -> &Path {
        &self.server_dir
    }

    /// A directory every guest and the host see at this same path.
    pub fn control_dir(&self) -> &Path {
        self.root.path()
    }

    /// Each guest as a place to run workers, in guest order.
    pub fn places(&self) -> Vec<Place> {
        self.guests
            .iter()
            .map(|g| Place::Guest(g.agent().clone()))
            .collect()
    }

    /// Runs the acceptance workload through the shim in auto mode (40 transactions per
    /// writer) and asserts what every kernel client must give: every acknowledged commit
    /// kept, no error but BUSY, a reader that read, and network mode chosen in the guests.
    pub fn assert_shim_keeps_every_commit(&self, label: &str) {
        let report = self.shim_acceptance(label);
        assert!(report.correct(), "{}", report.summary());
    }

    /// As [`assert_shim_keeps_every_commit`](Self::assert_shim_keeps_every_commit), for a
    /// client whose requests can all stall for longer than a lease: a holder on it may be
    /// judged dead and get `SQLITE_IOERR_LOCK` (as the design promises), but nothing
    /// acknowledged is lost, nothing torn, and no other error is seen.
    pub fn assert_shim_keeps_every_commit_through_stalls(&self, label: &str) {
        let report = self.shim_acceptance(label);
        assert!(
            report.correct_but_for_stalled_holders(),
            "{}",
            report.summary()
        );
    }

    /// The negative control: the acceptance workload through native SQLite in WAL mode, as
    /// applications open their databases, must break (lost commits, corruption, torn reads
    /// or errors) within two tries.
    pub fn assert_native_sqlite_breaks(&self, label: &str) {
        let report = super::stress::expect_broken(self.stress_plan(label, "unix", 40), 2);
        assert!(
            !report.correct(),
            "native SQLite came through intact: the negative control has lost its teeth: {}",
            report.summary()
        );
    }

    fn shim_acceptance(&self, label: &str) -> super::stress::StressReport {
        let report = super::stress::run(&self.stress_plan(label, "netfs", 40), &[]);
        assert_eq!(report.acknowledged, 4 * 40, "{}", report.summary());
        assert!(report.reader_checks > 0, "{}", report.summary());
        assert!(
            self.server_dir()
                .join(format!("{label}.db-netfs-table"))
                .exists(),
            "auto mode in the guests must have chosen network mode (its lock table is missing)"
        );
        report
    }

    /// The acceptance workload across the guests: two writers per guest (writer `i` on guest
    /// `i % guests`) and a reader, `transactions` each, `PRAGMA journal_mode=WAL` asked first.
    pub fn stress_plan(&self, label: &str, vfs: &str, transactions: u32) -> StressPlan {
        let mut plan = StressPlan::new(
            label,
            vec![GUEST_MOUNT.into(); self.guests.len()],
            self.server_dir.clone(),
            vfs,
        );
        plan.places = self.places();
        plan.writers = 2 * self.guests.len();
        plan.log_root = Some(self.control_dir().to_owned());
        plan.journal_mode = "WAL".into();
        plan.transactions = transactions;
        plan.deadline = Duration::from_secs(900);
        plan
    }

    /// Fault workers across the guests, each guest a host of its own.
    pub fn fault_plan(&self, label: &str) -> FaultPlan {
        let mut plan = FaultPlan::new(
            label,
            self.kind,
            vec![GUEST_MOUNT.into(); self.guests.len()],
            self.server_dir.clone(),
        );
        plan.places = self.places();
        plan.log_root = Some(self.control_dir().to_owned());
        plan.other_host_id = None;
        plan
    }

    fn boot(&mut self, count: usize, fs: &GuestFs) -> Result<(), String> {
        let qemu = find_bin("qemu-system-x86_64")?;
        let (kernel, modules) = guest_kernel()?;
        let initrd = self.root.path().join("initrd");
        build_initramfs(&modules, &initrd)?;
        // Workers are this test binary: a guest must see its directory, even under the /tmp
        // its own tmpfs hides (a checkout in /tmp).
        let exe = std::env::current_exe().map_err(|e| format!("test binary path: {e}"))?;
        let exe_dir = exe
            .parent()
            .ok_or("test binary has no directory")?
            .to_owned();
        for (what, path) in [
            ("test binary's directory", exe_dir.as_path()),
            ("control directory", self.root.path()),
        ] {
            if path.to_string_lossy().contains(char::is_whitespace) || path == Path::new("/tmp") {
                return Err(format!(
                    "vm testbed: the {what} {} cannot be passed to a guest (a path with spaces, or /tmp itself)",
                    path.display()
                ));
            }
        }
        for i in 0..count {
            let name = format!("g{}", i + 1);
            let dir = self.root.path().join(&name);
            mkdir(&dir)?;
            write_atomic(&dir.join("setup.sh"), setup_script(fs).as_bytes());
            let mut cmd = Command::new(&qemu);
            cmd.args([
                "-accel", "tcg", "-smp", "1", "-display", "none", "-monitor", "none",
            ])
            .args(["-m", &GUEST_MEMORY_MB.to_string(), "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", dir.join("console.log").display()))
            .arg("-kernel")
            .arg(&kernel)
            .arg("-initrd")
            .arg(&initrd)
            .arg("-append")
            .arg(format!(
                "console=ttyS0 panic=-1 quiet netfs.guest={name} netfs.ctl={} \
                     netfs.ip=10.0.2.{} netfs.exe={} nfs.nfs4_unique_id=netfs-{name}",
                self.root.path().display(),
                11 + i,
                exe_dir.display()
            ))
            .arg("-virtfs")
            .arg("local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap")
            .arg("-virtfs")
            .arg(format!(
                "local,path={},mount_tag=ctl,security_model=none",
                self.root.path().display()
            ));
            // NFS guests reach the host's loopback through QEMU's user network: each guest
            // connection to it is a connection of its own on the host, which a crashed server
            // resets, and the guest's client connects again, as on a real network. (A
            // `guestfwd` is one connection QEMU makes when it starts: the guest never sees it
            // break, and a restarted server never hears from the guest again.) The others
            // reach only what they need.
            let mut net = match fs {
                GuestFs::Nfs { .. } => "user,id=n0".to_owned(),
                _ => "user,id=n0,restrict=on".to_owned(),
            };
            match fs {
                GuestFs::Nfs { .. } => {}
                // Samba is never restarted under the CIFS guests. QEMU connects the forward
                // when it starts: only to what listens.
                GuestFs::Cifs => {
                    net.push_str(&format!(",guestfwd=tcp:{SAMBA_ADDR}:445-tcp:127.0.0.1:445"))
                }
                GuestFs::NineP { dir } => {
                    cmd.arg("-virtfs").arg(format!(
                        "local,path={},mount_tag=shared,security_model=none",
                        dir.display()
                    ));
                }
                GuestFs::Virtiofs { dir: shared } => {
                    let socket = self.start_virtiofsd(shared, &dir)?;
                    cmd.args([
                        "-object",
                        &format!("memory-backend-memfd,id=mem,size={GUEST_MEMORY_MB}M,share=on"),
                        "-machine",
                        "memory-backend=mem",
                        "-chardev",
                        &format!("socket,id=vfs,path={}", socket.display()),
                        "-device",
                        "vhost-user-fs-pci,chardev=vfs,tag=shared",
                    ]);
                }
            }
            cmd.args(["-netdev", &net, "-device", "virtio-net-pci,netdev=n0"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(fs::File::create(dir.join("qemu.log")).map_err(|e| e.to_string())?);
            let qemu = cmd.spawn().map_err(|e| format!("start qemu: {e}"))?;
            self.guests.push(Guest {
                agent: GuestAgent {
                    name,
                    dir,
                    next_job: Arc::new(AtomicU32::new(1)),
                },
                qemu,
            });
        }
        for g in &mut self.guests {
            let dir = g.agent.dir.clone();
            let ready = wait_until(BOOT_TIMEOUT, || {
                dir.join("ready").exists()
                    || dir.join("failed").exists()
                    || g.qemu.try_wait().ok().flatten().is_some()
            });
            if !dir.join("ready").exists() {
                return Err(format!(
                    "vm testbed: guest {} did not come up ({}): setup output:\n{}\nconsole:\n{}\nqemu:\n{}",
                    g.name(),
                    if ready.is_err() {
                        "timed out"
                    } else {
                        "it stopped"
                    },
                    fs::read_to_string(dir.join("failed")).unwrap_or_default(),
                    g.console(),
                    tail(&dir.join("qemu.log"), 10)
                ));
            }
        }
        Ok(())
    }

    /// Starts a `virtiofsd` serving `shared` to one guest and returns the socket QEMU
    /// connects to. Without its sandbox and seccomp filter: they are not what is under test,
    /// and its namespaces need privileges a CI container may not grant.
    fn start_virtiofsd(&mut self, shared: &Path, guest_dir: &Path) -> Result<PathBuf, String> {
        let virtiofsd = find_bin("virtiofsd").map_err(|e| {
            format!("{e} (Debian 12 has no package: `cargo install virtiofsd`, see .ci/install-testbed-deps)")
        })?;
        let socket = guest_dir.join("virtiofsd.sock");
        let log = guest_dir.join("virtiofsd.log");
        let child = Command::new(virtiofsd)
            .arg("--shared-dir")
            .arg(shared)
            .arg("--socket-path")
            .arg(&socket)
            .args(["--sandbox", "none", "--seccomp", "none", "--xattr"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("vm testbed: start virtiofsd: {e}"))?;
        self.virtiofsd.push(child);
        let daemon = self.virtiofsd.last_mut().expect("just pushed");
        let exited = |d: &mut Child| d.try_wait().ok().flatten().is_some();
        let _ = wait_until(Duration::from_secs(30), || {
            socket.exists() || exited(daemon)
        });
        if !socket.exists() {
            return Err(format!(
                "vm testbed: virtiofsd made no socket ({}):\n{}",
                if exited(daemon) {
                    "it exited"
                } else {
                    "timed out after 30 s"
                },
                tail(&log, 20)
            ));
        }
        Ok(socket)
    }
}

impl Drop for VmTestbed {
    fn drop(&mut self) {
        self.guests.clear();
        self.samba.take();
        for mut d in self.virtiofsd.drain(..) {
            let _ = d.kill();
            let _ = d.wait();
        }
        if let Some(g) = self.ganesha.take() {
            let _ = g.stop();
        }
    }
}

fn control_dir() -> Result<tempfile::TempDir, String> {
    tempfile::Builder::new()
        .prefix("sqlite-netfs-vm-")
        .tempdir()
        .map_err(|e| format!("vm testbed: control dir: {e}"))
}

fn setup_script(fs: &GuestFs) -> String {
    let m = format!("/host{GUEST_MOUNT}");
    match fs {
        GuestFs::Nfs {
            port,
            mount_port,
            export,
            vers: "3",
        } => format!(
            "set -e\nmodprobe nfsv3\nmkdir -p {m}\n\
             mount -t nfs -o vers=3,nolock,proto=tcp,port={port},mountport={mount_port},mountproto=tcp \
             {HOST_ADDR}:{} {m}\n",
            export.display()
        ),
        GuestFs::Nfs { port, vers, .. } => format!(
            "set -e\nmodprobe nfsv4\nmkdir -p {m}\n\
             mount -t nfs4 -o vers={vers},port={port},proto=tcp {HOST_ADDR}:/export {m}\n"
        ),
        // The options mount.cifs would add: the server's address and the guest login Samba
        // maps to its guest account; then any from NETFS_TEST_CIFS_OPTIONS (to try others).
        GuestFs::Cifs => format!(
            "set -e\nmodprobe cifs\nmkdir -p {m}\n\
             mount -t cifs //{SAMBA_ADDR}/share {m} -o ip={SAMBA_ADDR},user=guest,pass=,vers=3.0{}\n",
            std::env::var(CIFS_OPTIONS_ENV)
                .map(|o| format!(",{o}"))
                .unwrap_or_default()
        ),
        GuestFs::NineP { .. } => format!(
            "set -e\nmkdir -p {m}\n\
             mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,access=client shared {m}\n"
        ),
        GuestFs::Virtiofs { .. } => {
            format!("set -e\nmodprobe virtiofs\nmkdir -p {m}\nmount -t virtiofs shared {m}\n")
        }
    }
}

/// Debian's installed kernel and its modules directory.
fn guest_kernel() -> Result<(PathBuf, PathBuf), String> {
    let release = fs::read_dir("/lib/modules")
        .map_err(|e| format!("vm testbed: no /lib/modules ({e}): install linux-image-amd64"))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .max()
        .ok_or("vm testbed: /lib/modules is empty: install linux-image-amd64")?;
    let kernel = PathBuf::from(format!("/boot/vmlinuz-{release}"));
    if !kernel.exists() {
        return Err(format!("vm testbed: {} is missing", kernel.display()));
    }
    Ok((kernel, PathBuf::from("/lib/modules").join(release)))
}

/// The initramfs: static busybox, `/init`, and the modules needed to mount the host's root
/// over 9p (everything else is loaded from there with modprobe).
fn build_initramfs(modules: &Path, out: &Path) -> Result<(), String> {
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        return Err("vm testbed: /bin/busybox is missing: install busybox-static".into());
    }
    let release = modules.file_name().unwrap().to_string_lossy().into_owned();
    let tree = out.with_extension("tree");
    for d in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "proc",
        "sys",
        "dev",
        "host",
        "tmp",
        "lib/modules",
    ] {
        mkdir(&tree.join(d))?;
    }
    fs::copy(busybox, tree.join("bin/busybox")).map_err(|e| format!("copy busybox: {e}"))?;
    let mut order = Vec::new();
    for module in ["virtio_pci", "9pnet_virtio", "9p"] {
        let out = Command::new("modprobe")
            .args(["-S", &release, "--show-depends", module])
            .output()
            .map_err(|e| format!("vm testbed: modprobe: {e} (install kmod)"))?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(path) = line.strip_prefix("insmod ") {
                let path = path.trim().to_owned();
                if !order.contains(&path) {
                    order.push(path);
                }
            }
        }
    }
    if order.is_empty() {
        return Err("vm testbed: modprobe found no virtio/9p modules".into());
    }
    for m in &order {
        let dest = tree.join(m.trim_start_matches('/'));
        mkdir(dest.parent().unwrap())?;
        fs::copy(m, &dest).map_err(|e| format!("copy {m}: {e}"))?;
    }
    fs::write(tree.join("modules"), order.join("\n")).map_err(|e| e.to_string())?;
    let init = tree.join("init");
    fs::write(&init, INIT).map_err(|e| e.to_string())?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && find . | cpio -o -H newc 2>/dev/null | gzip -1 > '{}'",
            tree.display(),
            out.display()
        ))
        .status()
        .map_err(|e| format!("cpio: {e}"))?;
    if !status.success() {
        return Err("vm testbed: building the initramfs failed (install cpio)".into());
    }
    Ok(())
}

/// nfs-ganesha as started, so that an outage can start it again as it was.
struct Ganesha {
    child: Mutex<Child>,
    root: PathBuf,
    dir: PathBuf,
    port: u16,
    mount_port: u16,
    v3: bool,
}

impl Ganesha {
    /// nfs-ganesha on 127.0.0.1:`port` (`mount_port` for NFSv3's MOUNT), exporting `dir` as
    /// `/export`, with its configuration, log and pid file in `root`.
    fn start(
        root: &Path,
        dir: &Path,
        port: u16,
        mount_port: u16,
        v3: bool,
    ) -> Result<Ganesha, String> {
        let child = spawn_ganesha(root, dir, port, mount_port, v3)?;
        Ok(Ganesha {
            child: Mutex::new(child),
            root: root.to_owned(),
            dir: dir.to_owned(),
            port,
            mount_port,
            v3,
        })
    }

    /// SIGKILLs the server, if it runs, and waits until its port refuses connections;
    /// whether it was running.
    fn stop(&self) -> Result<bool, String> {
        let mut child = self.child.lock().unwrap();
        let was_running = child.try_wait().map_err(|e| e.to_string())?.is_none();
        let _ = child.kill();
        let _ = child.wait();
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        wait_until(Duration::from_secs(30), || !port_accepts(addr)).map_err(|()| {
            format!(
                "vm testbed: ganesha still accepts on {} after SIGKILL",
                self.port
            )
        })?;
        Ok(was_running)
    }

    /// Starts a stopped server again with its configuration and ports.
    fn restart(&self) -> Result<(), String> {
        let mut child = self.child.lock().unwrap();
        if child.try_wait().map_err(|e| e.to_string())?.is_none() {
            return Err("vm testbed: ganesha is already running".into());
        }
        *child = spawn_ganesha(&self.root, &self.dir, self.port, self.mount_port, self.v3)?;
        Ok(())
    }
}

/// The file-server crash of the outage driver, on kernel NFS: ganesha killed and restarted.
/// It runs `Graceless`, so the guests' clients find their state gone and establish it anew.
impl super::faults::FileServer for VmTestbed {
    fn stop_server(&self) -> Result<usize, String> {
        if self.crashable_ganesha()?.stop()? {
            Ok(1)
        } else {
            Err("vm testbed: ganesha is not running".into())
        }
    }

    fn start_server(&self) -> Result<(), String> {
        self.crashable_ganesha()?.restart()
    }
}

impl VmTestbed {
    fn crashable_ganesha(&self) -> Result<&Ganesha, String> {
        self.ganesha.as_ref().ok_or_else(|| {
            format!(
                "vm testbed: only the NFS guests' ganesha can be crashed, not {}'s server",
                self.kind
            )
        })
    }
}

/// Starts nfs-ganesha (see [`Ganesha::start`]) and waits until it listens.
fn spawn_ganesha(
    root: &Path,
    dir: &Path,
    port: u16,
    mount_port: u16,
    v3: bool,
) -> Result<Child, String> {
    let ganesha = find_bin("ganesha.nfsd")?;
    // NFSv3 is served only once registered with rpcbind (ganesha waits for it).
    let protocols = if v3 {
        ensure_rpcbind()?;
        "3, 4"
    } else {
        "4"
    };
    let conf = root.join("ganesha.conf");
    let log = root.join("ganesha.log");
    // `Attr_Expiration_Time = 0`: ganesha otherwise serves a file's attributes from its own
    // cache for 60 s, so while a host wrote the exported directory on its disk (mixed_views)
    // its guest read the database with stale attributes: every guest request failed with
    // "malformed". The kernel's nfsd keeps no such cache.
    fs::write(
        &conf,
        format!(
            "NFS_CORE_PARAM {{ NFS_Port = {port}; MNT_Port = {mount_port}; \
             Bind_Addr = 127.0.0.1; Protocols = {protocols}; \
             Enable_NLM = false; Enable_RQUOTA = false; }}\n\
             NFSV4 {{ Graceless = true; Lease_Lifetime = {GANESHA_LEASE_SECS}; \
             Allow_Numeric_Owners = true; Only_Numeric_Owners = true; }}\n\
             EXPORT {{ Export_Id = 1; Path = {}; Pseudo = /export; Access_Type = RW; \
             Squash = No_Root_Squash; Protocols = {protocols}; Transports = TCP; SecType = sys; \
             Attr_Expiration_Time = 0; FSAL {{ Name = VFS; }} }}\n\
             LOG {{ Default_Log_Level = EVENT; }}\n",
            dir.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    // -F: stay in the foreground, so the child is the server and dies with it.
    let mut child = Command::new(ganesha)
        .arg("-F")
        .arg("-f")
        .arg(&conf)
        .arg("-L")
        .arg(&log)
        .arg("-p")
        .arg(root.join("ganesha.pid"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("vm testbed: start ganesha: {e}"))?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut exited = false;
    let listening = wait_until(Duration::from_secs(30), || {
        exited = child.try_wait().is_ok_and(|status| status.is_some());
        exited || port_accepts(addr)
    });
    if listening.is_err() || exited {
        // Never left running unseen: it would keep the port and the export after the test.
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!(
            "vm testbed: ganesha {} on {port}:\n{}",
            if exited { "exited" } else { "did not listen" },
            tail(&log, 20)
        ));
    }
    Ok(child)
}

/// Starts the system's rpcbind unless one answers (it stays: other tests may use it).
fn ensure_rpcbind() -> Result<(), String> {
    let answers = || {
        Command::new("rpcinfo")
            .arg("-p")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if answers() {
        return Ok(());
    }
    let rpcbind = find_bin("rpcbind")?;
    let _ = Command::new(rpcbind).arg("-w").status();
    wait_until(Duration::from_secs(10), answers)
        .map_err(|()| "vm testbed: rpcbind did not start (NFSv3 needs it)".to_owned())
}

/// Mount options added to the kernel CIFS guests' defaults, e.g. `nolease` or `closetimeo=0`.
pub const CIFS_OPTIONS_ENV: &str = "NETFS_TEST_CIFS_OPTIONS";

/// nfs-ganesha's NFSv4 lease: how long it keeps a dead client's state (kernel nfsd: 90 s).
pub const GANESHA_LEASE_SECS: u32 = 20;

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn mkdir(p: &Path) -> Result<(), String> {
    fs::create_dir_all(p).map_err(|e| format!("mkdir {}: {e}", p.display()))
}

fn write_atomic(path: &Path, data: &[u8]) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, data).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename {}: {e}", path.display()));
}
