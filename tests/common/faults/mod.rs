//! The fault harness: worker roles that survive being killed at any instruction, a driver that
//! kills and restarts them, and the verification every fault test ends with.
//!
//! | module | owns |
//! |---|---|
//! | `roles` | the worker side: writer, reader and holder roles, their acknowledgement logs and phase files |
//! | `driver` | the driver side: plans, places, worker slots, a run, and the verification and report every test ends with |
//! | `kills` | the kill driver: killing and restarting workers at random phases |
//! | `outages` | the outage driver: crashing and restarting the file server under the workers |
//!
//! # Ground truth
//! A fault worker appends the id of every transaction whose `COMMIT` returned OK to its own
//! acknowledgement log on local disk and fsyncs it before starting the next transaction. What
//! the log holds was acknowledged; what the database holds afterwards must include all of it.
//! A worker killed between `COMMIT` returning and the log write leaves one transaction that is
//! present but unacknowledged, so each kill may add at most one such transaction.
//!
//! # Transaction ids
//! A worker's incarnation is the number of `# start` lines already in its log (it appends one
//! before opening the database), so ids `incarnation * 1_000_000 + seq` never repeat across
//! restarts of a killed worker, without the driver having to pass anything.
//!
//! # Phases
//! Each worker keeps its current phase in a small file beside its log (`<log>.phase`), so the
//! driver can aim kills and report where they landed:
//!
//! | phase      | the worker is                                                         |
//! |------------|-----------------------------------------------------------------------|
//! | `read`     | inside a read transaction (SHARED held)                               |
//! | `reserved` | after `BEGIN IMMEDIATE`, updating the counter (RESERVED held)         |
//! | `pages`    | writing rows; large transactions spill pages to the journal and the database file under EXCLUSIVE before `COMMIT` |
//! | `commit`   | inside `COMMIT` (journal write and sync, database write, journal reset) |
//! | `acked`    | `COMMIT` returned OK, acknowledgement not yet logged                  |
//! | `holding`  | a holder's transaction open, waiting to be killed or released          |
//! | `idle`     | between transactions                                                  |
//!
//! # Settings passed to workers by environment
//! [`LEASE_ENV`] sets the lease a worker registers the shim with (tests use short leases so a
//! holder on "another host" is recovered in seconds); [`sqlite_netfs::HOST_ID_ENV`] makes a
//! worker look like another host.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod driver;
mod kills;
mod outages;
mod roles;

// The harness's one namespace, as the tests use it; each test binary uses a part of it.
#[allow(unused_imports)]
pub use driver::*;
#[allow(unused_imports)]
pub use kills::*;
#[allow(unused_imports)]
pub use outages::*;
#[allow(unused_imports)]
pub use roles::*;

/// Lease in milliseconds that fault workers (and observers in the test process) register with.
pub const LEASE_ENV: &str = "SQLITE_NETFS_TEST_LEASE_MS";
/// Soak mode: run each kill workload this many seconds instead of the CI-sized duration.
pub const SOAK_ENV: &str = "SQLITE_NETFS_SOAK_SECS";
/// Replays a run: the seed of the driver's random choices (printed by every run).
pub const SEED_ENV: &str = "SQLITE_NETFS_FAULT_SEED";

/// Transactions with more rows than this many are "large": several pages each.
const LARGE_ROWS: u32 = 3;
/// Rows a holder with a payload writes: far more pages than the workers' page cache holds.
const HOLDER_SPILL_ROWS: u32 = 40;

/// Registers the shim as `netfs` with `lease` (the default lease if `None`). Every process of a
/// test binary must use one lease: a second registration with other options is refused.
pub fn register(lease: Option<Duration>) {
    let builder = sqlite_netfs::Builder::new();
    let builder = match lease {
        Some(l) => builder.lease(l),
        None => builder,
    };
    builder.register().expect("register the shim");
}

fn lease_from_env() -> Option<Duration> {
    let ms = std::env::var(LEASE_ENV).ok()?;
    Some(Duration::from_millis(
        ms.parse().expect("lease in milliseconds"),
    ))
}

/// A small deterministic random source (xorshift), so a failing run can be replayed from its
/// printed seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// Seeded from [`SEED_ENV`] if set, else from the clock; prints the seed either way.
    pub fn for_run(label: &str) -> Rng {
        let seed = std::env::var(SEED_ENV)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{label}: {SEED_ENV}={seed}");
        Rng::new(seed)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform between `lo` and `hi`.
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = hi.saturating_sub(lo).as_micros() as u64;
        lo + Duration::from_micros(if span == 0 { 0 } else { self.below(span + 1) })
    }
}
