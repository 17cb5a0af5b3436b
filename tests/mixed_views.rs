//! Mixed views: one database that one host sees on its local disk while another reaches the
//! same directory over a network filesystem (a VM or container whose data dir is the host's
//! directory through 9p or virtiofs). Both sides use the shim in auto mode: the host would
//! pick native WAL, the other side network mode, and nothing would make them agree.
//!
//! Three setups: a QEMU guest that sees the host's directory through virtio-9p (the WSL
//! shape, with the kernel's 9p client), one that sees it through virtiofs (the VM-backed
//! container shape: the Rust `virtiofsd` and the kernel's virtiofs client), and the sshfs testbed,
//! whose server directory is the host's local disk and a mount the guest's view.
//!
//! | order        | what must happen |
//! |--------------|------------------|
//! | guest first  | its lock files make the host's shim choose network mode: both write, nothing lost |
//! | host first, in WAL mode | the guest's open is refused with what to do; once the host reopens, both write (9p, sshfs) |
//! | both at once, the host first | the guest's workers are refused at open; the host's commits are all kept (9p, virtiofs) |

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::stress::{self, StressPlan};
use common::testbed::{TwoHostTestbed, testbed_or_skip};
use common::vm::{GUEST_MOUNT, VmTestbed};
use common::worker::{self, Job, Place};
use sqlite_netfs::rusqlite::{Connection, OpenFlags};
use sqlite_netfs::{DecisionSource, FsClass};

#[test]
#[ignore = "worker process entry point, spawned by the tests in this file"]
fn worker_process() {
    common::worker::run_from_env()
}

fn open_auto(db: &Path) -> sqlite_netfs::rusqlite::Result<Connection> {
    sqlite_netfs::register().unwrap();
    let conn = Connection::open_with_flags(
        format!("file:{}?vfs=netfs", db.display()),
        OpenFlags::default(),
    )?;
    conn.busy_timeout(Duration::from_secs(30))?;
    Ok(conn)
}

/// A native connection in WAL mode, as an application on the host opens its database, with
/// `rows` rows committed and the connection kept open.
fn native_wal_writer(db: &Path, rows: i64) -> Connection {
    let conn = Connection::open_with_flags_and_vfs(db, OpenFlags::default(), c"unix").unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    for i in 0..rows {
        conn.execute(
            "INSERT INTO rows(worker, seq, payload) VALUES (100, ?1, x'01')",
            [i],
        )
        .unwrap();
        conn.execute("UPDATE counter SET v = v + 1 WHERE id = 1", [])
            .unwrap();
    }
    conn
}

/// The two views of one directory.
struct Views {
    /// The host's: its local disk.
    host_dir: PathBuf,
    /// The guest's: a network filesystem of the host's directory.
    guest_dir: PathBuf,
    /// Where the guest's processes run.
    guest: Place,
    /// A directory both sides see at one path, for the workers' logs.
    log_root: Option<PathBuf>,
    /// Transactions per writer (a TCG guest is slow).
    transactions: u32,
}

impl Views {
    fn sshfs(testbed: &TwoHostTestbed) -> Views {
        Views {
            host_dir: testbed.server_dir().to_owned(),
            guest_dir: testbed.mount_a().to_owned(),
            guest: Place::Here,
            log_root: None,
            transactions: 100,
        }
    }

    /// The host's directory and the first guest's view of it (9p or virtiofs).
    fn guest_of(testbed: &VmTestbed) -> Views {
        Views {
            host_dir: testbed.server_dir().to_owned(),
            guest_dir: GUEST_MOUNT.into(),
            guest: Place::Guest(testbed.guests[0].agent().clone()),
            log_root: Some(testbed.control_dir().to_owned()),
            transactions: 100,
        }
    }

    /// Opens the database in a guest process through the shim in auto mode, asking for WAL
    /// as applications do; its `mode=...` line or the open's error message.
    fn guest_opens(&self, db_name: &str) -> Result<String, String> {
        let logs = match &self.log_root {
            Some(root) => tempfile::tempdir_in(root),
            None => tempfile::tempdir(),
        }
        .unwrap();
        let job = Job {
            role: "probe".into(),
            db: self.guest_dir.join(db_name),
            vfs: "netfs".into(),
            journal_mode: "WAL".into(),
            out: logs.path().join("probe"),
            busy_timeout_ms: 30_000,
            ..Job::default()
        };
        let mut probe = self.guest.spawn(&job, &[]);
        let deadline = Instant::now() + Duration::from_secs(300);
        while !probe.has_exited() {
            assert!(Instant::now() < deadline, "the guest's probe hangs");
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = std::fs::read_to_string(&job.out).unwrap_or_default();
        match out.trim().strip_prefix("error=") {
            Some(message) => Err(message.to_owned()),
            None => Ok(out.trim().to_owned()),
        }
    }

    /// Two writers on the host's local view, two on the guest's network view, and a reader on
    /// the guest's: everything acknowledged is in the file, nothing torn, no error but BUSY.
    fn both_sides_write(&self, label: &str, db_name: &str) {
        let mut plan = StressPlan::new(
            label,
            vec![self.host_dir.clone(), self.guest_dir.clone()],
            self.host_dir.clone(),
            "netfs",
        );
        plan.places = vec![Place::Here, self.guest.clone()];
        plan.log_root = self.log_root.clone();
        plan.journal_mode = "WAL".into();
        plan.transactions = self.transactions;
        let report = stress::run_on(&plan, db_name, &[]);
        assert!(report.reader_checks > 0, "{}", report.summary());
        assert!(report.correct(), "{}", report.summary());
        assert_eq!(report.acknowledged, 4 * u64::from(self.transactions));
    }
}

/// The guest opens first: its lock files make the host's shim choose network mode although
/// the host sees its local disk; then both write.
fn host_follows_the_guest_into_network_mode(views: &Views, label: &str) {
    let db_name = format!("{label}.db");
    let host_db = views.host_dir.join(&db_name);
    worker::create_stress_schema(&host_db);
    let guest = views.guest_opens(&db_name);
    assert!(
        guest
            .as_deref()
            .is_ok_and(|o| o.starts_with("mode=network")),
        "{guest:?}"
    );
    let host = open_auto(&host_db).unwrap();
    let detection = sqlite_netfs::detect(&host_db).unwrap();
    assert_eq!(detection.class, FsClass::Local, "{detection:?}");
    assert_eq!(detection.source, DecisionSource::LockFiles, "{detection:?}");
    assert!(
        sqlite_netfs::network_mode_active(&host),
        "the host must follow the lock files, not its local disk: {detection:?}"
    );
    drop(host);
    views.both_sides_write(label, &db_name);
}

/// The host writes in native WAL mode first: the guest's open is refused with a message that
/// names the problem and the fix, the host loses nothing, and once the host reopens (now in
/// network mode, following the lock files the guest's attempt left) both write.
fn guest_is_refused_by_name_until_the_host_reopens(views: &Views, label: &str) {
    let db_name = format!("{label}.db");
    let host_db = views.host_dir.join(&db_name);
    worker::create_stress_schema(&host_db);
    let host = native_wal_writer(&host_db, 50);

    let message = views
        .guest_opens(&db_name)
        .expect_err("the guest must not convert a WAL the host is writing");
    for words in ["WAL mode", "-shm", "netfs=on"] {
        assert!(message.contains(words), "{words:?} missing from: {message}");
    }
    host.execute("UPDATE counter SET v = v + 1 WHERE id = 1", [])
        .unwrap();
    host.execute(
        "INSERT INTO rows(worker, seq, payload) VALUES (100, 50, x'01')",
        [],
    )
    .unwrap();
    drop(host);

    let host = open_auto(&host_db).unwrap();
    assert!(sqlite_netfs::network_mode_active(&host));
    let (v, n): (i64, i64) = host
        .query_row(
            "SELECT (SELECT v FROM counter WHERE id = 1), (SELECT count(*) FROM rows)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((v, n), (51, 51), "the host's WAL commits, converted");
    // The shared run counts from zero.
    host.execute_batch("DELETE FROM rows; UPDATE counter SET v = 0 WHERE id = 1")
        .unwrap();
    drop(host);
    let guest = views.guest_opens(&db_name);
    assert!(
        guest
            .as_deref()
            .is_ok_and(|o| o.starts_with("mode=network")),
        "{guest:?}"
    );
    views.both_sides_write(label, &db_name);
}

/// Both sides start workers in auto mode with nothing yet on disk to tell the host a guest
/// shares the directory, the host's a moment first: the host runs native WAL, its reader
/// keeping the WAL open all along. The guest's workers must be refused at open rather than
/// write beside a WAL they cannot see (how commits were lost before), and every commit the
/// host acknowledged must be in the file.
fn host_first_together_the_guest_is_refused_and_nothing_is_lost(views: &Views, label: &str) {
    let db_name = format!("{label}.db");
    worker::create_stress_schema(&views.host_dir.join(&db_name));
    let mut plan = StressPlan::new(
        label,
        vec![views.host_dir.clone(), views.guest_dir.clone()],
        views.host_dir.clone(),
        "netfs",
    );
    plan.places = vec![Place::Here, views.guest.clone()];
    plan.start_after = vec![Duration::ZERO, Duration::from_secs(2)];
    // Reader 0 runs on the guest, reader 1 on the host.
    plan.readers = 2;
    plan.deadline = Duration::from_secs(300);
    plan.log_root = views.log_root.clone();
    plan.journal_mode = "WAL".into();
    // Five times the usual share, so the host's writers are still writing when the guest,
    // started 2 s later, opens: with the usual share a fast host was done by then, and the
    // guest was rightly let in.
    plan.transactions = 5 * views.transactions;
    let report = stress::run_on(&plan, &db_name, &[]);
    assert_eq!(report.integrity, "ok", "{}", report.summary());
    assert_eq!(report.lost, 0, "{}", report.summary());
    assert_eq!(report.killed_workers, 0, "{}", report.summary());
    assert_eq!(report.rows, Some(report.acknowledged as i64));
    assert_eq!(
        report.acknowledged,
        2 * u64::from(plan.transactions),
        "the host's two writers finish, the guest's write nothing: {}",
        report.summary()
    );
    assert!(
        !report.errors.is_empty()
            && report
                .errors
                .keys()
                .all(|k| k.starts_with("open:") || k.starts_with("reader-open:")),
        "the guest's workers fail at open, and nothing else fails: {}",
        report.summary()
    );
}

#[test]
fn sshfs_a_host_on_its_local_disk_joins_network_mode_when_a_guest_opened_the_database_first() {
    let Some(testbed) = testbed_or_skip(TwoHostTestbed::sshfs()) else {
        return;
    };
    host_follows_the_guest_into_network_mode(&Views::sshfs(&testbed), "guest-first");
}

#[test]
fn sshfs_a_guest_is_refused_by_name_while_the_host_writes_in_wal_mode_and_joins_after() {
    let Some(testbed) = testbed_or_skip(TwoHostTestbed::sshfs()) else {
        return;
    };
    guest_is_refused_by_name_until_the_host_reopens(&Views::sshfs(&testbed), "host-first");
}

#[test]
fn vm_9p_a_host_on_its_local_disk_joins_network_mode_when_its_guest_opened_the_database_first() {
    let Some(testbed) = testbed_or_skip(VmTestbed::nine_p(1)) else {
        return;
    };
    host_follows_the_guest_into_network_mode(&Views::guest_of(&testbed), "guest-first");
}

/// The host writes the exported directory on its disk, making file tokens; the guest writes
/// through the kernel NFS client, making link tokens: each side reads and respects the other's.
#[test]
fn vm_nfs_a_host_on_its_exported_disk_and_its_nfs_guest_share_the_lock_files() {
    let Some(testbed) = testbed_or_skip(VmTestbed::nfs(1, "4.1")) else {
        return;
    };
    host_follows_the_guest_into_network_mode(&Views::guest_of(&testbed), "nfs-guest-first");
}

#[test]
fn vm_9p_started_together_host_first_the_guest_is_refused_at_open_and_nothing_is_lost() {
    let Some(testbed) = testbed_or_skip(VmTestbed::nine_p(1)) else {
        return;
    };
    host_first_together_the_guest_is_refused_and_nothing_is_lost(
        &Views::guest_of(&testbed),
        "together-host-first",
    );
}

/// How long after the guest's writers the native control's host writers start.
const NATIVE_HOST_DELAY: Duration = Duration::from_secs(3);

/// The negative control: native SQLite on both sides, in WAL mode, as applications open
/// their databases, must break (lost commits, corruption, torn reads or errors).
fn native_sqlite_breaks(views: &Views, label: &str) {
    let mut plan = StressPlan::new(
        label,
        vec![views.host_dir.clone(), views.guest_dir.clone()],
        views.host_dir.clone(),
        "unix",
    );
    plan.places = vec![Place::Here, views.guest.clone()];
    // The host's writers start 3 s after the guest's: a guest process under TCG takes seconds
    // to start, and the host's would otherwise be done before it begins (virtiofs: three runs
    // of nothing but turns, every one intact).
    plan.start_after = vec![NATIVE_HOST_DELAY, Duration::ZERO];
    plan.log_root = views.log_root.clone();
    plan.journal_mode = "WAL".into();
    plan.transactions = views.transactions;
    let report = stress::expect_broken(plan, 3);
    assert!(
        !report.correct(),
        "native SQLite came through intact three times: the test has lost its teeth: {}",
        report.summary()
    );
}

#[test]
fn vm_9p_native_sqlite_on_a_host_and_its_guest_breaks() {
    let Some(testbed) = testbed_or_skip(VmTestbed::nine_p(1)) else {
        return;
    };
    native_sqlite_breaks(&Views::guest_of(&testbed), "vm-9p-native-wal");
}

#[test]
fn vm_9p_a_guest_is_refused_by_name_while_the_host_writes_in_wal_mode_and_joins_after() {
    let Some(testbed) = testbed_or_skip(VmTestbed::nine_p(1)) else {
        return;
    };
    guest_is_refused_by_name_until_the_host_reopens(&Views::guest_of(&testbed), "host-first");
}

#[test]
fn vm_virtiofs_a_host_on_its_local_disk_joins_network_mode_when_its_guest_opened_the_database_first()
 {
    let Some(testbed) = testbed_or_skip(VmTestbed::virtiofs(1)) else {
        return;
    };
    host_follows_the_guest_into_network_mode(&Views::guest_of(&testbed), "guest-first");
}

#[test]
fn vm_virtiofs_started_together_host_first_the_guest_is_refused_at_open_and_nothing_is_lost() {
    let Some(testbed) = testbed_or_skip(VmTestbed::virtiofs(1)) else {
        return;
    };
    host_first_together_the_guest_is_refused_and_nothing_is_lost(
        &Views::guest_of(&testbed),
        "together-host-first",
    );
}

#[test]
fn vm_virtiofs_native_sqlite_on_a_host_and_its_guest_breaks() {
    let Some(testbed) = testbed_or_skip(VmTestbed::virtiofs(1)) else {
        return;
    };
    native_sqlite_breaks(&Views::guest_of(&testbed), "vm-virtiofs-native-wal");
}

#[test]
fn on_one_host_a_network_mode_open_refuses_a_wal_database_a_native_connection_holds() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("held.db");
    worker::create_stress_schema(&db);
    let native = native_wal_writer(&db, 10);
    sqlite_netfs::register().unwrap();
    let forced = Connection::open_with_flags(
        format!("file:{}?vfs=netfs&netfs=on", db.display()),
        OpenFlags::default(),
    )
    .and_then(|c| c.query_row("SELECT count(*) FROM rows", [], |r| r.get::<_, i64>(0)));
    let message = forced
        .expect_err("converted under a live WAL connection")
        .to_string();
    assert!(
        message.contains("open in WAL mode by a process"),
        "{message}"
    );
    let rows: i64 = native
        .query_row("SELECT count(*) FROM rows", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 10);
    drop(native);
    let forced = Connection::open_with_flags(
        format!("file:{}?vfs=netfs&netfs=on", db.display()),
        OpenFlags::default(),
    )
    .unwrap();
    let rows: i64 = forced
        .query_row("SELECT count(*) FROM rows", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        rows, 10,
        "converted with every row once the native connection closed"
    );
}
