//! The write bench on kernel clients (`common::vm`): the shim in network mode against native
//! SQLite's DELETE journal with the server's own `fcntl` locks, interleaved in one run on the
//! same two guests, and the file-server requests each write transaction costs, counted by the
//! guests' kernels (NFS: the per-operation RPC counts of `/proc/self/mountstats`; CIFS: the
//! per-share SMB counts of `/proc/fs/cifs/Stats`).
//!
//! Ignored: minutes of TCG time that measure rather than prove, and the guests run 10 to 30
//! times slower than real hardware, so only ratios taken in the same run mean anything. Run with
//! `cargo test --test vm_bench -- --ignored --nocapture --test-threads=1`;
//! `SQLITE_NETFS_VM_BENCH_ROUNDS` (default 2) sets the rounds per configuration.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::stress::{self, StressReport};
use common::testbed::testbed_or_skip;
use common::vm::{GUEST_MOUNT, Guest, VmTestbed};

#[test]
#[ignore = "worker process entry point, spawned by the tests in this file"]
fn worker_process() {
    common::worker::run_from_env()
}

#[test]
#[ignore = "a bench: minutes of guest time; run it by name"]
fn bench_write_transactions_on_two_kernel_nfs_clients() {
    let Some(tb) = testbed_or_skip(VmTestbed::nfs(2, "4.1")) else {
        return;
    };
    bench(&tb, "nfs41", RequestCounter::Nfs);
}

#[test]
#[ignore = "a bench: minutes of guest time; run it by name"]
fn bench_write_transactions_on_two_kernel_cifs_clients() {
    let Some(tb) = testbed_or_skip(VmTestbed::cifs(2)) else {
        return;
    };
    bench(&tb, "cifs", RequestCounter::Cifs);
}

/// The two ways to share the database that the bench compares, by name and VFS; both ask
/// for [`JOURNAL_MODE`].
const CONTENDERS: [(&str, &str); 2] = [
    ("sqlite-netfs (auto: network mode)", "netfs"),
    ("native `unix`, DELETE journal", "unix"),
];

const JOURNAL_MODE: &str = "DELETE";

/// What the writers of one run do.
struct Workload {
    name: &'static str,
    writers: usize,
    /// Each writer's transactions.
    transactions: u32,
}

impl Workload {
    fn total(&self) -> u64 {
        self.writers as u64 * u64::from(self.transactions)
    }

    /// Every writer acknowledged all its transactions (else the figures compare nothing).
    fn finished(&self, report: &StressReport) -> bool {
        report.acknowledged == self.total()
    }
}

/// One writer alone, and four over both guests.
const WORKLOADS: [Workload; 2] = [
    Workload {
        name: "1 writer",
        writers: 1,
        transactions: 60,
    },
    Workload {
        name: "4 writers, 2 guests",
        writers: 4,
        transactions: 20,
    },
];

/// One run's figures.
struct Sample {
    report: StressReport,
    /// Requests the guests sent during the run, by kind.
    requests: Requests,
}

impl Sample {
    fn txn_per_sec(&self) -> f64 {
        self.report.acknowledged as f64 / self.report.wall.as_secs_f64()
    }

    fn requests_per_txn(&self) -> f64 {
        self.requests.values().sum::<u64>() as f64 / self.report.acknowledged.max(1) as f64
    }
}

fn bench(tb: &VmTestbed, kind: &str, counter: RequestCounter) {
    let rounds: usize = std::env::var("SQLITE_NETFS_VM_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let mut samples: BTreeMap<(usize, usize), Vec<Sample>> = BTreeMap::new();
    for round in 0..rounds {
        for (w, workload) in WORKLOADS.iter().enumerate() {
            // Alternate who goes first, so neither always meets a cold or a warm server.
            let order: Vec<usize> = if round % 2 == 0 {
                vec![0, 1]
            } else {
                vec![1, 0]
            };
            for c in order {
                let (_, vfs) = CONTENDERS[c];
                let label = format!("bench-{kind}-{vfs}-{}w-r{round}", workload.writers);
                let mut plan = tb.stress_plan(&label, vfs, workload.transactions);
                plan.writers = workload.writers;
                plan.readers = 0;
                plan.journal_mode = JOURNAL_MODE.into();
                // Native SQLite may never finish where the client's byte-range locks hang
                // (seen on kernel CIFS); its row then says so.
                plan.deadline = Duration::from_secs(300);
                let before = counter.total(&tb.guests);
                let report = stress::run(&plan, &[]);
                let requests = difference(&counter.total(&tb.guests), &before);
                assert!(
                    workload.finished(&report) || c != 0,
                    "the shim's writers did not all finish: {}",
                    report.summary()
                );
                println!(
                    "{} requests={} {}",
                    report.summary(),
                    requests.values().sum::<u64>(),
                    top(&requests, report.acknowledged, 8)
                );
                samples
                    .entry((w, c))
                    .or_default()
                    .push(Sample { report, requests });
            }
        }
    }
    println!(
        "\n{kind}: {rounds} round(s), medians; correct: every acknowledged commit kept, the file intact, no error but BUSY\n"
    );
    println!(
        "| workload | VFS | txn/s | time until every writer finished | {} per write transaction | correct |",
        counter.unit()
    );
    println!("|---|---|---|---|---|---|");
    for (w, workload) in WORKLOADS.iter().enumerate() {
        let unfinished = |c: usize| {
            samples[&(w, c)]
                .iter()
                .find(|s| !workload.finished(&s.report))
        };
        let name = workload.name;
        for (c, &(contender, _)) in CONTENDERS.iter().enumerate() {
            let runs = &samples[&(w, c)];
            if let Some(run) = unfinished(c) {
                println!(
                    "| {name} | {contender} | did not finish: {} of {} acknowledged in {:.0} s | | | |",
                    run.report.acknowledged,
                    workload.total(),
                    run.report.wall.as_secs_f64()
                );
                continue;
            }
            println!(
                "| {name} | {contender} | {:.2} | {:.1} s | {:.1} | {} |",
                median(runs.iter().map(Sample::txn_per_sec)),
                median(runs.iter().map(|s| s.report.wall.as_secs_f64())),
                median(runs.iter().map(Sample::requests_per_txn)),
                if runs.iter().all(|s| s.report.correct()) {
                    "yes".to_owned()
                } else {
                    "NO (see the FIGURES lines)".to_owned()
                }
            );
        }
        if unfinished(1).is_some() {
            continue;
        }
        let ratio = |f: &dyn Fn(&Sample) -> f64| {
            median(samples[&(w, 0)].iter().map(f)) / median(samples[&(w, 1)].iter().map(f))
        };
        println!(
            "| {name} | ratio shim / native | {:.2} | {:.2} | {:.2} | |",
            ratio(&Sample::txn_per_sec),
            ratio(&|s| s.report.wall.as_secs_f64()),
            ratio(&Sample::requests_per_txn),
        );
    }
    println!(
        "\n{} per write transaction by kind (the last round):\n",
        counter.unit()
    );
    for (w, workload) in WORKLOADS.iter().enumerate() {
        for (c, &(contender, _)) in CONTENDERS.iter().enumerate() {
            let last = samples[&(w, c)].last().expect("at least one round");
            println!(
                "- {}, {contender}: {}",
                workload.name,
                top(&last.requests, last.report.acknowledged, 10)
            );
        }
    }
}

/// Request counts by kind (an NFS operation, an SMB command).
type Requests = BTreeMap<String, u64>;

fn difference(after: &Requests, before: &Requests) -> Requests {
    after
        .iter()
        .map(|(k, n)| {
            (
                k.clone(),
                n.saturating_sub(before.get(k).copied().unwrap_or(0)),
            )
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// The `n` most frequent kinds, per transaction: "OPEN 12.1, READ 8.0, ...".
fn top(requests: &Requests, transactions: u64, n: usize) -> String {
    let mut kinds: Vec<(&String, &u64)> = requests.iter().collect();
    kinds.sort_by(|a, b| b.1.cmp(a.1));
    kinds
        .iter()
        .take(n)
        .map(|(k, c)| format!("{k} {:.1}", **c as f64 / transactions.max(1) as f64))
        .collect::<Vec<_>>()
        .join(", ")
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Where a guest's kernel counts the requests it sends the file server.
#[derive(Clone, Copy)]
enum RequestCounter {
    Nfs,
    Cifs,
}

impl RequestCounter {
    fn unit(self) -> &'static str {
        match self {
            RequestCounter::Nfs => "NFS operations",
            RequestCounter::Cifs => "SMB requests",
        }
    }

    /// The requests every guest has sent for the shared mount so far, by kind.
    fn total(self, guests: &[Guest]) -> Requests {
        let mut sum = Requests::new();
        for g in guests {
            for (k, n) in self.of(g) {
                *sum.entry(k).or_default() += n;
            }
        }
        sum
    }

    fn of(self, guest: &Guest) -> Requests {
        let file = match self {
            RequestCounter::Nfs => "/proc/self/mountstats",
            RequestCounter::Cifs => "/proc/fs/cifs/Stats",
        };
        let text = guest
            .agent()
            .run(&format!("cat {file}"), Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("reading {file} in guest {}: {e}", guest.name()));
        let count = match self {
            RequestCounter::Nfs => nfs_operations(&text, GUEST_MOUNT),
            RequestCounter::Cifs => cifs_requests(&text),
        };
        count.unwrap_or_else(|| {
            panic!(
                "no request counts in guest {}'s {file}:\n{text}",
                guest.name()
            )
        })
    }
}

/// The per-operation counts (the first number after each `NAME:` in the "per-op statistics"
/// part) of the NFS mount on `mount_point`.
fn nfs_operations(mountstats: &str, mount_point: &str) -> Option<Requests> {
    let section = mountstats
        .split("device ")
        .find(|s| s.contains(&format!(" mounted on {mount_point} with fstype nfs")))?;
    let per_op = section.split_once("per-op statistics")?.1;
    Some(
        per_op
            .lines()
            .filter_map(|l| l.split_once(':'))
            .filter_map(|(op, counts)| {
                let n = counts.split_whitespace().next()?.parse::<u64>().ok()?;
                Some((op.trim().to_owned(), n))
            })
            .collect(),
    )
}

/// The SMB requests by command over every share: the `Name: N total M failed` lines (SMB2
/// and later; `OplockBreaks` says `sent`) after each tree connection's `SMBs:` line; the
/// guests mount one share. Each command of a compound request counts, so an open, a query and
/// a close sent together count three (an NFS operation count is one per RPC, a COMPOUND).
/// `None` if no command is counted (an SMB1 mount prints other lines).
fn cifs_requests(stats: &str) -> Option<Requests> {
    let (_, shares) = stats.split_once("SMBs:")?;
    let mut requests = Requests::new();
    for line in shares.lines() {
        let Some((command, rest)) = line.trim().split_once(": ") else {
            continue;
        };
        // "Open files: N total (local), M open on server" counts handles, not requests.
        if command == "Open files" {
            continue;
        }
        let mut words = rest.split_whitespace();
        if let (Some(n), Some("sent" | "total")) = (words.next(), words.next())
            && let Ok(n) = n.parse::<u64>()
        {
            *requests.entry(command.to_owned()).or_default() += n;
        }
    }
    (!requests.is_empty()).then_some(requests)
}

#[test]
fn nfs_operations_are_summed_for_the_named_mount_only() {
    let stats = "device rootfs mounted on / with fstype rootfs\n\
device 10.0.2.2:/export mounted on /tmp/netfs-guest-mount with fstype nfs4 statvers=1.1\n\
\topts:\trw,vers=4.1\n\
\tper-op statistics\n\
\t        NULL: 0 0 0 0 0 0 0 0 0\n\
\t        READ: 12 12 0 1 2 3 4 5 0\n\
\t       WRITE: 30 30 0 1 2 3 4 5 0\n\
\t        OPEN: 5 5 0 1 2 3 4 5 0\n\
device 10.0.2.2:/other mounted on /mnt with fstype nfs4 statvers=1.1\n\
\tper-op statistics\n\
\t        READ: 1000 1000 0 0 0 0 0 0 0\n";
    let ops = nfs_operations(stats, "/tmp/netfs-guest-mount").unwrap();
    assert_eq!(ops.values().sum::<u64>(), 47);
    assert_eq!(ops["WRITE"], 30);
    assert_eq!(nfs_operations(stats, "/elsewhere"), None);
}

#[test]
fn cifs_requests_are_counted_by_command() {
    let stats = "Resources in use\nCIFS Session: 1\n\
1) \\\\10.0.2.2\\share\n\
SMBs: 482\n\
Open files: 2 total (local), 2 open on server\n\
TreeConnects: 1 total 0 failed\n\
Creates: 120 total 3 failed\n\
Closes: 117 total 0 failed\n\
OplockBreaks: 0 sent 0 failed\n";
    let requests = cifs_requests(stats).unwrap();
    assert_eq!(requests.get("Creates"), Some(&120));
    assert_eq!(requests.values().sum::<u64>(), 238);
    assert_eq!(cifs_requests("Resources in use\n"), None);
    assert_eq!(
        cifs_requests("SMBs: 3\nBytes read: 0  Bytes written: 0\n"),
        None
    );
}
