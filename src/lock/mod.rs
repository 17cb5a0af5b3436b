//! One connection's lock on one database in network mode: the protocol of [`protocol`] carried
//! out over the lock files of [`files`], with stale-holder recovery and a lease. The latch
//! that serialises edits is its own type (`latch`), and so is the reading of the table with
//! the recovery of an unreadable one (`table`); this module keeps the levels, the lease and
//! staleness.
//!
//! May use `crate::client_cache` and `crate::sys` below it, nothing above.
//!
//! # Editing the table
//! Every change follows the same four steps:
//! 1. take the latch: create `-netfs-latch` exclusively, retrying with backoff for at most
//!    [`LATCH_WAIT`] (the latch is held for milliseconds, never across a transaction);
//! 2. open the table afresh (on NFS: take the descriptor `files` keeps, see
//!    [`files::TableAccess`]) and read it (a torn or short read fails its checksum and is
//!    read again after revalidating the size);
//! 3. drop stale holders, apply the transition, write the table back through the same
//!    descriptor if it changed;
//! 4. remove the latch.
//!
//! # Lingering releases
//! | unlock                                   | the table gets                 | published by |
//! |------------------------------------------|--------------------------------|--------------|
//! | RESERVED and above → SHARED (a commit)   | nothing yet                    | the NONE that follows, in one edit; else the heartbeat |
//! | SHARED → NONE after a write that reached EXCLUSIVE, nobody seen waiting, or only queued writers within our burst | nothing yet: the write lock is kept | the heartbeat after [`RELEASE_LINGER`] idle, the next edit, or closing |
//! | SHARED → NONE after a read transaction   | nothing yet: the entry lingers | the heartbeat after [`RELEASE_LINGER`] idle, the next edit, or closing |
//! | any other, and SHARED → NONE after a refused RESERVED or EXCLUSIVE (SQLite's busy handler lets go of SHARED before it sleeps) | the release | this edit |
//!
//! # Kept write locks
//! The entry a release left behind serves the connection's next transaction after a
//! latch-free look at the table ([`LockTable::kept_reusable_by`]): a lingering SHARED, which
//! no writer can pass meanwhile, or a kept EXCLUSIVE, which nobody can pass at all and which
//! then also grants that transaction's RESERVED and EXCLUSIVE without an edit. A kept
//! EXCLUSIVE is not reused while anybody waits, except in a short burst while only writers in
//! the writers' queue wait ([`KEEP_TURN_FOR`], counted from the start of our turn or the
//! first sight of each line, whichever is later).
//!
//! # Waiting lines
//! | a connection | what it does |
//! |---|---|
//! | refused SHARED or RESERVED for [`RECORD_WAIT_AFTER`] | writes a waiting line naming the level at its next edit (a refused write's release is one) |
//! | still asking | rewrites the line every half of [`WAIT_LINE_SILENCE`] |
//! | retrying a refused write (its SHARED request, within [`WRITE_RETRY_WINDOW`]) | waits up to [`TURN_WAIT`] for the writer's turn, looking without the latch; refused at once where RESERVED would be |
//! | granted RESERVED, or closing | drops its line at its next edit |
//! | done with a transaction it was not refused in | publishes its release and drops its line at once |
//! | silent for [`WAIT_LINE_SILENCE`] since it retried | starts afresh: its next SHARED is an ordinary one |
//!
//! Others remove a line unchanged for [`WAIT_LINE_SILENCE`]. The first line waiting for
//! RESERVED heads the writers' queue (see `protocol`).
//!
//! # Staleness
//! | holder                      | judged dead when                                         |
//! |-----------------------------|----------------------------------------------------------|
//! | table entry, this host      | its pid is gone (or reused), or as below                 |
//! | table entry, any host       | its sequence number has not changed for a whole lease    |
//! | latch, this host            | its pid is gone                                          |
//! | latch, other host or unreadable | its contents have not changed for a whole lease      |
//!
//! A live holder rewrites its entry at least every quarter lease (`heartbeat`), and stops
//! reading and writing the database once three quarters of a lease have passed since its last
//! successful rewrite ([`DbLock::lease_expired`]), well before anyone may judge it dead, until
//! it confirms under the latch that its entry is still there ([`DbLock::confirm_held`]).
//! Leases are measured on each observer's own boot-time clock, never compared across hosts.
//!
//! A latch is removed by a breaker only while the breaker holds `-netfs-break`, and only if
//! it still holds the very contents that were judged dead (each acquisition writes a new
//! number), so two breakers cannot remove a live latch taken in between.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use files::{DirLockFiles, LockFileName, LockFiles, TableFile};
use latch::{Latch, Latches, Parties};
use protocol::{Holder, Level, LockTable, OwnerId, StaleTracker};
use table::TableReader;

pub mod files;
pub mod heartbeat;
mod latch;
pub mod owner;
pub mod protocol;
mod table;

/// Something observed unchanged since `since`: a latch's, a break token's or an unreadable
/// table's contents, watched for a lease of silence.
struct Watch {
    contents: Vec<u8>,
    since: Duration,
}

/// The latch's [`Parties`], borrowed from a `DbLock`'s fields (not through a method, so the
/// borrow of `latches` beside them stays disjoint).
macro_rules! parties {
    ($lock:expr) => {
        Parties {
            files: &$lock.files,
            env: &$lock.env,
            me: &$lock.me,
            lease: $lock.lease,
            removed: &mut $lock.sweep_log,
        }
    };
}

/// The lock of one connection in network mode.
pub type ConnectionLock = Mutex<DbLock<DirLockFiles, SystemEnvironment>>;
/// A connection's lock as the network file and the lease heartbeat both hold it (an `Arc`;
/// the name says nothing about lock levels).
pub type LockHandle = Arc<ConnectionLock>;

/// How long one lock request may wait for the latch before reporting BUSY.
pub const LATCH_WAIT: Duration = Duration::from_millis(500);
/// An unlock is not allowed to fail lightly: it waits longer for the latch.
const UNLOCK_LATCH_WAIT: Duration = Duration::from_secs(5);
/// How long a lingering release (see "Lingering releases") may stay unpublished while the
/// connection is idle.
pub const RELEASE_LINGER: Duration = Duration::from_millis(20);
/// How long a connection is refused SHARED or RESERVED before the table records it as
/// waiting (see "Waiting lines"). Shorter waits are the ordinary turns of writers taking each
/// other's place; recording each would add a table write to most of them.
pub const RECORD_WAIT_AFTER: Duration = Duration::from_millis(20);
/// How long a waiting line may stand unchanged before others remove it (or the lease, if
/// shorter): its owner stopped asking. A waiter still asking rewrites its line every
/// half of this.
pub const WAIT_LINE_SILENCE: Duration = Duration::from_secs(1);

/// How long a retried write may wait for its turn inside its SHARED request (see "Waiting
/// lines"), at most: about the longest sleep of SQLite's default busy handler, so a waiting
/// writer is awake when its turn comes instead of leaving the database idle until its next
/// retry. Never longer than the connection has waited already, so a busy timeout lasts at
/// most about twice as long.
const TURN_WAIT: Duration = Duration::from_millis(100);
/// For how long after a refused write a SHARED request counts as that write's retry, and may
/// be refused where RESERVED would be, at least; eight of our own write transactions if
/// longer (on a slow file server a turn takes longer). A read asked right after a write gave
/// up is the same request to us: this bounds how long it can be held up.
const WRITE_RETRY_WINDOW: Duration = Duration::from_millis(250);
/// How often a waiting writer looks at the table, within these bounds: eight times as long
/// as a look takes (its looks keep a network filesystem's client busy an eighth of the time
/// at most), or, if longer, a quarter of its own last write transaction at the head of the
/// queue and one such transaction per writer ahead of it further back (its turn comes no
/// sooner than they are done). The head looks at most [`TURN_POLL`]`.1` apart, the others at
/// most [`TURN_WAIT`] apart.
const TURN_POLL: (Duration, Duration) = (Duration::from_millis(1), Duration::from_millis(25));
/// How long a writer keeps its write lock past its transactions once it sees others waiting,
/// counted for each waiting line from when we first saw it or from the start of our turn,
/// whichever is later (see "Kept write locks"): [`KEEP_TURN_TRANSACTIONS`] of our own write
/// transactions, within these bounds. A turn handed to another host costs that host a fresh
/// view of the database; a short burst shares that cost among a few commits.
const KEEP_TURN_FOR: (Duration, Duration) = (Duration::from_millis(25), Duration::from_millis(250));
const KEEP_TURN_TRANSACTIONS: u32 = 4;

/// Time, sleep and same-host liveness: the environment a lock runs in (faked in tests).
pub trait Environment: Send + Sync {
    /// A clock that never goes back and keeps counting through suspend.
    fn now(&self) -> Duration;
    fn sleep(&self, d: Duration);
    /// Whether `owner`, recorded on this host, still runs.
    fn process_alive(&self, owner: &OwnerId) -> bool;
    /// The generation a new or replaced table starts at: one no client can have seen before,
    /// with room to count up from.
    fn fresh_generation(&self) -> u64;
}

/// The real environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemEnvironment;

impl Environment for SystemEnvironment {
    fn now(&self) -> Duration {
        crate::sys::boot_time()
    }
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d)
    }
    fn process_alive(&self, owner: &OwnerId) -> bool {
        crate::lock::owner::same_host_process_alive(owner)
    }
    /// 62 random bits (std's randomly keyed hasher, over the clock and the pid): below
    /// 2^62, so counting up never overflows.
    fn fresh_generation(&self) -> u64 {
        use std::hash::BuildHasher;
        let seed = (crate::sys::boot_time().as_nanos(), std::process::id());
        std::collections::hash_map::RandomState::new().hash_one(seed) >> 2
    }
}

/// What a lock request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    /// Granted; `generation` is the table's data generation at that moment. `kept`: from a
    /// write lock this connection kept since its last transaction (see "Kept write locks"),
    /// so nobody else can have written the database or its journal since.
    Granted { generation: u64, kept: bool },
    /// Another holder stands in the way (or the latch could not be had in time).
    Busy,
}

#[derive(Debug)]
pub enum LockError {
    /// The lock files could not be used.
    Io(io::Error),
    /// The table file holds something this version cannot read.
    Corrupt(String),
    /// Our entry was removed by others (we were judged dead): whatever we held is gone.
    LeaseLost,
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::Io(e) => write!(f, "{e}"),
            LockError::Corrupt(m) => f.write_str(m),
            LockError::LeaseLost => {
                f.write_str("lock lease lost: another process judged this one dead")
            }
        }
    }
}

impl From<io::Error> for LockError {
    fn from(e: io::Error) -> Self {
        LockError::Io(e)
    }
}

pub struct DbLock<F: LockFiles, E: Environment> {
    files: F,
    env: E,
    me: OwnerId,
    lease: Duration,
    level: Level,
    /// Written into our entry on every rewrite; never repeats for `me`.
    seq: u64,
    stale: StaleTracker,
    /// The latch and break tokens this lock takes, watches and breaks.
    latches: Latches,
    /// How the table is read, and recovered when it cannot be.
    table: TableReader,
    /// When our entry was last written (the latch time of that write), if we hold a lock.
    renewed_at: Option<Duration>,
    /// A release that changed the file could not be published: the next edit must still
    /// move the generation on, or other readers would keep stale caches.
    owed_generation_bump: bool,
    /// When our lease ends (boot-time nanoseconds; 0: nothing held), readable without the
    /// lock object's mutex, so I/O never waits behind a renewal in progress.
    lease_end: Arc<AtomicU64>,
    /// The level our last request was refused (SQLite's busy handler will ask again).
    last_refused: Option<Level>,
    /// Since when a release is not yet in the table (it lingers, or the latch was busy).
    owed_since: Option<Duration>,
    /// When the table last got our entry as it stands (the latch time of that write).
    entry_written_at: Option<Duration>,
    /// The level our entry shows in the table as our last edit left it: above `level` while a
    /// release is owed (see "Lingering releases").
    in_table: Level,
    /// Where our write lock kept past its transaction stands (see "Kept write locks").
    kept_write: KeptWrite,
    /// What we have been refused and still ask for (see "Waiting lines").
    wait: Option<Wait>,
    /// Our waiting line as our last edit left the table.
    line: Option<Line>,
    /// How long a retried write waits for its turn inside one request ([`TURN_WAIT`]).
    turn_wait: Duration,
    /// When our current write transaction was granted RESERVED.
    write_began: Option<Duration>,
    /// When an edit last granted us RESERVED (not a hot-journal rollback's EXCLUSIVE): our
    /// turn at writing began then, and a burst kept past waiters ([`KEEP_TURN_FOR`]) counts
    /// from then at the earliest.
    turn_began: Duration,
    /// How long our last write transaction held RESERVED or above: paces our looks while we
    /// wait for a turn.
    write_took: Duration,
    /// The other connections' waiting lines we saw when we last read the table, and since
    /// when: a write lock is kept past its transaction only for a short burst after them.
    waiters_seen: WaitersSeen,
    /// Our entry was removed by others while we held a lock: every request fails, and the
    /// lease reads as expired, until SQLite unlocks to NONE.
    lease_lost: bool,
    /// What this lock removed as stale, kept only during [`Self::sweep_stale`] (`None` for a
    /// connection's lock, whose removals are traced and forgotten).
    sweep_log: Option<Vec<Removed>>,
}

/// A connection's wait: refused SHARED or RESERVED, and not yet granted RESERVED or done
/// with the transaction (see "Waiting lines").
#[derive(Debug, Clone, Copy)]
struct Wait {
    /// The first refusal.
    since: Duration,
    /// The latest refusal.
    latest: Duration,
    /// The latest release after a refused RESERVED: SQLite's busy handler let go of SHARED
    /// to retry the write.
    write_refused_at: Option<Duration>,
    /// The highest level refused since: SHARED or RESERVED.
    wants: Level,
}

/// Our waiting line in the table, as our last edit left it.
#[derive(Debug, Clone, Copy)]
struct Line {
    seq: u64,
    wants: Level,
    /// The latch time of the edit that wrote `seq`.
    written_at: Duration,
}

/// When we first saw each other connection's wait, on our clock. A line rewritten while its
/// owner goes on asking is the same wait; so is a line that gave way to an entry and came
/// back (a writer granted SHARED, then refused RESERVED). A wait ends when its owner is
/// neither waiting nor holding anything.
#[derive(Debug, Default)]
struct WaitersSeen(Vec<SeenWaiting>);

#[derive(Debug)]
struct SeenWaiting {
    owner: OwnerId,
    since: Duration,
    /// What the table we last read shows it waiting for: RESERVED, SHARED, or nothing (only
    /// its entry is there).
    wants: Level,
}

impl WaitersSeen {
    fn observe(&mut self, table: &LockTable, me: &OwnerId, now: Duration) {
        self.0
            .retain(|s| table.is_waiting(&s.owner) || table.level_of(&s.owner) > Level::None);
        for s in self.0.iter_mut() {
            s.wants = table.waiter(&s.owner).map_or(Level::None, |w| w.wants);
        }
        for w in table.waiters.iter().filter(|w| &w.owner != me) {
            if !self.0.iter().any(|s| s.owner == w.owner) {
                self.0.push(SeenWaiting {
                    owner: w.owner.clone(),
                    since: now,
                    wants: w.wants,
                });
            }
        }
    }

    /// Whether every wait the table shows is a writer's in the writers' queue, and none has
    /// lasted `burst` since `turn_began` as far as we know. A reader's wait is never
    /// prolonged: a connection refused SHARED sleeps in SQLite's busy handler, and would miss
    /// the turn when it comes.
    fn all_in_queue_for_less_than(
        &self,
        burst: Duration,
        turn_began: Duration,
        now: Duration,
    ) -> bool {
        self.0.iter().all(|s| {
            s.wants == Level::None
                || (s.wants == Level::Reserved
                    && now.saturating_sub(s.since.max(turn_began)) < burst)
        })
    }
}

/// A write lock kept past the end of its transaction (see "Kept write locks").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeptWrite {
    No,
    /// The end of a write transaction left our entry at EXCLUSIVE, unpublished.
    Idle,
    /// This transaction took the kept entry back at the table generation `generation`:
    /// its requests up to EXCLUSIVE are granted without an edit.
    Reused {
        generation: u64,
    },
}

/// Something a lock removed because its owner was judged dead, as [`DbLock::sweep_stale`]
/// reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removed {
    /// A table entry, and why it was judged dead (`process is gone`, `lease expired`).
    Holder {
        holder: Holder,
        reason: &'static str,
    },
    /// A latch or break token: what it held (owner id and acquisition number), and why.
    Token {
        name: LockFileName,
        contents: String,
        reason: &'static str,
    },
}

/// A cheap, shareable view of a lock's lease.
#[derive(Debug, Clone)]
pub struct LeaseView {
    lease_end: Arc<AtomicU64>,
}

impl LeaseView {
    /// A lease that ends at `end` on the boot-time clock (zero: no lock held), for tests of
    /// what the lease fences.
    #[cfg(test)]
    pub fn ending_at(end: Duration) -> LeaseView {
        LeaseView {
            lease_end: Arc::new(AtomicU64::new(end.as_nanos() as u64)),
        }
    }

    /// True once the lease of a held lock may have run out.
    pub fn expired(&self, now: Duration) -> bool {
        let end = self.lease_end.load(Ordering::Acquire);
        end != 0 && now.as_nanos() as u64 >= end
    }
}

impl<F: LockFiles, E: Environment> DbLock<F, E> {
    pub fn new(files: F, env: E, me: OwnerId, lease: Duration) -> Self {
        DbLock {
            files,
            env,
            me,
            lease,
            level: Level::None,
            seq: 0,
            stale: StaleTracker::default(),
            latches: Latches::new(),
            table: TableReader::new(),
            renewed_at: None,
            owed_generation_bump: false,
            lease_end: Arc::new(AtomicU64::new(0)),
            last_refused: None,
            owed_since: None,
            entry_written_at: None,
            in_table: Level::None,
            kept_write: KeptWrite::No,
            wait: None,
            line: None,
            turn_wait: TURN_WAIT,
            write_began: None,
            turn_began: Duration::ZERO,
            write_took: Duration::ZERO,
            waiters_seen: WaitersSeen::default(),
            lease_lost: false,
            sweep_log: None,
        }
    }

    pub fn lease_view(&self) -> LeaseView {
        LeaseView {
            lease_end: self.lease_end.clone(),
        }
    }

    fn set_renewed_at(&mut self, at: Option<Duration>) {
        self.renewed_at = at;
        let end = match at {
            // Long past on every clock: I/O under what SQLite still believes it holds stops.
            _ if self.lease_lost => 1,
            None => 0,
            Some(t) => (t + self.lease * 3 / 4).as_nanos() as u64,
        };
        self.lease_end.store(end, Ordering::Release);
    }

    pub fn level(&self) -> Level {
        self.level
    }

    pub fn owner(&self) -> &OwnerId {
        &self.me
    }

    /// True once we hold a lock whose lease may have run out: from then on the database must
    /// be neither read nor written under it.
    #[cfg(test)]
    pub fn lease_expired(&self) -> bool {
        self.lease_view().expired(self.env.now())
    }

    /// Whether our entry has gone unrenewed for half a lease while we hold a lock.
    fn renewal_overdue(&self) -> bool {
        self.level > Level::None
            && self
                .renewed_at
                .is_some_and(|at| self.env.now().saturating_sub(at) >= self.lease / 2)
    }

    /// Whether the heartbeat should rewrite our entry now.
    pub fn renewal_due(&self) -> bool {
        match self.renewed_at {
            Some(at) if self.level > Level::None => {
                self.env.now().saturating_sub(at) >= self.lease / 4
            }
            _ => false,
        }
    }

    /// Asks for `want` (SHARED, RESERVED, PENDING or EXCLUSIVE).
    pub fn lock(&mut self, want: Level) -> Result<Acquired, LockError> {
        if self.lease_lost {
            return Err(LockError::LeaseLost);
        }
        if want <= self.level {
            return Ok(Acquired::Granted {
                generation: 0,
                kept: false,
            });
        }
        if let KeptWrite::Reused { generation } = self.kept_write
            && want <= self.in_table
        {
            if want >= Level::Reserved {
                self.write_began.get_or_insert(self.env.now());
            }
            self.level = want;
            return Ok(Acquired::Granted {
                generation,
                kept: true,
            });
        }
        if want == Level::Shared
            && let Some(generation) = self.reuse_kept_entry()
        {
            return Ok(Acquired::Granted {
                generation,
                kept: matches!(self.kept_write, KeptWrite::Reused { .. }),
            });
        }
        let waits = matches!(want, Level::Shared | Level::Reserved);
        // A wait not asked again for this long was given up (SQLite's busy handler sleeps
        // 100 ms at most): this request starts afresh.
        if self
            .wait
            .is_some_and(|w| self.env.now().saturating_sub(w.latest) >= WAIT_LINE_SILENCE)
        {
            self.wait = None;
        }
        // SHARED asked soon after a refused write is the first step of that write's retry:
        // it waits for the writer's turn here, awake, rather than in the busy handler's sleep.
        let now = self.env.now();
        let retried_write = want == Level::Shared
            && self.owed_since.is_none()
            && self.wait.is_some_and(|w| {
                w.write_refused_at
                    .is_some_and(|at| now.saturating_sub(at) < self.write_retry_window())
            });
        if let (true, Some(wait)) = (retried_write, self.wait) {
            let deadline = now + self.turn_wait.min(now.saturating_sub(wait.since));
            loop {
                if self.refused_before_the_writers_turn(deadline) {
                    self.note_refusal(want);
                    return Ok(Acquired::Busy);
                }
                let answer = self.request_in_edit(want, true)?;
                // Refused under the latch (another writer came first, or the edit only
                // wrote our line): wait on while time is left.
                if answer != Acquired::Busy || self.env.now() >= deadline {
                    return Ok(answer);
                }
                self.env.sleep(TURN_POLL.0);
            }
        }
        if self.last_refused == Some(want)
            && self.refused_at_a_glance(want, self.line_due().is_some() && waits)
        {
            // A refusal at a look is a refusal: a wait that lapsed (we stalled for a second)
            // starts again here, or it would never be recorded while looks keep refusing.
            self.note_refusal(want);
            return Ok(Acquired::Busy);
        }
        self.request_in_edit(want, false)
    }

    /// Asks for `want` under the latch, recording our wait if it is due. `to_write`: SHARED
    /// as the first step of a retried write ([`LockTable::request_to_write`]).
    fn request_in_edit(&mut self, want: Level, to_write: bool) -> Result<Acquired, LockError> {
        let waits = matches!(want, Level::Shared | Level::Reserved);
        let line = self.line_due().filter(|_| waits);
        let me = self.me.clone();
        let seq = self.seq + 1;
        let outcome = self.edit_table(LATCH_WAIT, |table| {
            let result = if to_write {
                table.request_to_write(&me, seq)
            } else {
                table.request(&me, want, seq)
            };
            if result.is_err()
                && let Some(wants) = line
            {
                table.note_waiting(&me, seq, wants.max(want));
            }
            (result, table.level_of(&me))
        })?;
        let granted = match &outcome {
            Some(((Ok(level), _), _)) => Some(*level),
            _ => None,
        };
        // A grant of what we waited for ends the wait, as it ends our line in the table.
        // (A reader's wait left standing would make the release after a refused hot-journal
        // rollback write a line for SHARED, which holds every writer back.)
        if granted.is_some_and(|level| self.wait.is_some_and(|w| level >= w.wants)) {
            self.wait = None;
        }
        match granted {
            Some(level) if level >= Level::Reserved => {
                if want == Level::Reserved {
                    self.turn_began = self.env.now();
                }
                self.write_began.get_or_insert(self.env.now());
            }
            Some(_) => {}
            None => self.note_refusal(want),
        }
        let Some(((result, level_after), generation)) = outcome else {
            self.last_refused = Some(want);
            return Ok(Acquired::Busy);
        };
        // A refused EXCLUSIVE may still have recorded PENDING.
        self.level = level_after;
        match result {
            Ok(_) => {
                self.last_refused = None;
                Ok(Acquired::Granted {
                    generation,
                    kept: false,
                })
            }
            Err(busy) => {
                tracing::trace!(want = %want, blocker = %busy.blocker, blocker_level = %busy.blocker_level, "lock busy");
                self.last_refused = Some(want);
                Ok(Acquired::Busy)
            }
        }
    }

    /// See [`WRITE_RETRY_WINDOW`].
    fn write_retry_window(&self) -> Duration {
        WRITE_RETRY_WINDOW.max(self.write_took * 8)
    }

    /// Whether a write lock we kept may serve another transaction: nobody waits, or only
    /// queued writers whose lines are younger than our burst ([`KEEP_TURN_FOR`]).
    fn in_a_burst(&self) -> bool {
        let burst =
            (self.write_took * KEEP_TURN_TRANSACTIONS).clamp(KEEP_TURN_FOR.0, KEEP_TURN_FOR.1);
        self.waiters_seen
            .all_in_queue_for_less_than(burst, self.turn_began, self.env.now())
    }

    /// A refusal of SHARED or RESERVED starts or continues our wait (see "Waiting lines").
    fn note_refusal(&mut self, want: Level) {
        if !matches!(want, Level::Shared | Level::Reserved) {
            return;
        }
        let now = self.env.now();
        let wait = self.wait.get_or_insert(Wait {
            since: now,
            latest: now,
            write_refused_at: None,
            wants: want,
        });
        wait.wants = wait.wants.max(want);
        wait.latest = now;
    }

    /// For the SHARED request that retries a refused write: waits until `deadline`, looking
    /// at the table without the latch, for the writer's place to be free for us
    /// ([`LockTable::writers_turn`]). True if the request can be refused without an edit:
    /// the place is still not ours, and the table needs nothing from us (our line as we left
    /// it and not due, nobody in the way suspected dead). False sends the request to an edit,
    /// which decides under the latch.
    fn refused_before_the_writers_turn(&mut self, deadline: Duration) -> bool {
        loop {
            if self.line_due().is_some() {
                return false;
            }
            let looked_at = self.env.now();
            let Some(table) = self.glance_at_table() else {
                return false;
            };
            let now = self.env.now();
            if table.writers_turn(&self.me) || self.table_differs_from_our_view(&table) {
                return false;
            }
            if now >= deadline {
                return !self.someone_in_the_way_suspected_dead(&table);
            }
            let look = now.saturating_sub(looked_at) * 8;
            let pause = match table.writers_ahead_of(&self.me) as u32 {
                0 => look
                    .max(self.write_took / 4)
                    .clamp(TURN_POLL.0, TURN_POLL.1),
                ahead => look
                    .max(self.write_took * ahead)
                    .clamp(TURN_POLL.0, TURN_WAIT),
            };
            self.env.sleep(pause);
        }
    }

    /// The table as a read without the latch finds it; `None` if missing, unreadable or
    /// caught mid-rewrite. Good only for answers that a later edit checks again.
    fn glance_at_table(&self) -> Option<LockTable> {
        let bytes = self.files.read(LockFileName::Table).ok()??;
        LockTable::decode(&bytes).ok()
    }

    /// For a retry after a refusal: reads the table without the latch and tells whether the
    /// request would surely be refused again. True only if the request would leave the table
    /// as it is (so a writer still records PENDING through a real edit) and no holder in the
    /// way is suspected dead. A stale or torn snapshot costs only a retry. This keeps the
    /// busy-handler retries of waiting processes off the latch. `line_due`: our waiting line
    /// is to be written, which takes an edit.
    fn refused_at_a_glance(&mut self, want: Level, line_due: bool) -> bool {
        if line_due {
            tracing::trace!(want = %want, "glance skipped: our waiting line is to be written");
            return false;
        }
        let Some(table) = self.glance_at_table() else {
            tracing::trace!(want = %want, "glance: table unreadable");
            return false;
        };
        if self.table_differs_from_our_view(&table) {
            tracing::trace!(want = %want, recorded = %table.level_of(&self.me), "glance: our entry or waiting line differs");
            return false;
        }
        let mut trial = table.clone();
        if trial.request(&self.me, want, self.seq + 1).is_ok() {
            tracing::trace!(want = %want, "glance: the request would be granted");
            return false;
        }
        if trial != table {
            tracing::trace!(want = %want, "glance: the refusal would change the table");
            return false;
        }
        !self.someone_in_the_way_suspected_dead(&table)
    }

    /// Whether `table`, read without the latch, shows our entry at another level than we hold,
    /// or lacks the waiting line our last edit left: only an edit can settle that.
    fn table_differs_from_our_view(&self, table: &LockTable) -> bool {
        table.level_of(&self.me) != self.level
            || (self.line.is_some() && !table.is_waiting(&self.me))
    }

    /// Whether a holder or a waiting line of others in `table` would be removed as stale by an
    /// edit now: a refusal read without the latch is then not to be trusted.
    fn someone_in_the_way_suspected_dead(&mut self, table: &LockTable) -> bool {
        self.stale.observe(table);
        let now = self.env.now();
        let (lease, env, tracker, me) = (self.lease, &self.env, &mut self.stale, &self.me);
        let silence = WAIT_LINE_SILENCE.min(lease);
        let stale_holder = table.holders.iter().any(|h| {
            &h.owner != me
                && stale_reason(env, tracker, &me.host, lease, now, &h.owner, h.seq).is_some()
        });
        let stale_line = table.waiters.iter().any(|w| {
            &w.owner != me
                && stale_reason(env, tracker, &me.host, silence, now, &w.owner, w.seq).is_some()
        });
        stale_holder || stale_line
    }

    /// The level our waiting line must name, if it is to be written now: we have waited for
    /// [`RECORD_WAIT_AFTER`], and our last edit left no line, one naming less, or one written
    /// half of [`WAIT_LINE_SILENCE`] ago.
    fn line_due(&self) -> Option<Level> {
        let wait = self.wait?;
        let now = self.env.now();
        if now.saturating_sub(wait.since) < RECORD_WAIT_AFTER {
            return None;
        }
        match self.line {
            Some(line)
                if line.wants >= wait.wants
                    && now.saturating_sub(line.written_at) < WAIT_LINE_SILENCE / 2 =>
            {
                None
            }
            _ => Some(wait.wants),
        }
    }

    /// A new transaction right after the last one: if our entry is still in the table as the
    /// last one left it (a lingering SHARED, or a write lock kept at EXCLUSIVE), recent enough
    /// that nobody can have judged it stale, and reusable as [`LockTable::kept_reusable_by`]
    /// says, it is ours again without an edit. Returns the table's generation. A kept
    /// EXCLUSIVE serves this transaction's RESERVED and EXCLUSIVE as well.
    fn reuse_kept_entry(&mut self) -> Option<u64> {
        let written = self.entry_written_at?;
        let kept = self.in_table;
        // An EXCLUSIVE is reused only where the end of a write kept it, never a release that
        // only found the latch busy. An owed generation bump is carried on only under it:
        // nobody else has been able to read past it since our write.
        let kept_write = kept == Level::Exclusive && self.kept_write == KeptWrite::Idle;
        if self.owed_since.is_none()
            || self.level != Level::None
            || (kept == Level::Exclusive && !kept_write)
            || (self.owed_generation_bump && !kept_write)
            || self.env.now().saturating_sub(written) >= self.lease / 2
        {
            return None;
        }
        let table = self.glance_at_table()?;
        self.waiters_seen.observe(&table, &self.me, self.env.now());
        if !table.kept_reusable_by(&self.me, kept, self.in_a_burst()) {
            return None;
        }
        self.level = Level::Shared;
        self.owed_since = None;
        self.last_refused = None;
        self.set_renewed_at(Some(written));
        if kept_write {
            self.kept_write = KeptWrite::Reused {
                generation: table.generation,
            };
        }
        Some(table.generation)
    }

    /// Lowers the lock to SHARED or NONE; `changed_file` moves the data generation on.
    /// Returns the generation after the change, or `None` if the release is not in the table
    /// yet: it lingers (see "Lingering releases"), or the latch could not be had. Our entry
    /// then still shows the higher level, which only makes others wait, until the next edit
    /// or the heartbeat ([`Self::settle`]) publishes it.
    pub fn unlock(&mut self, to: Level, changed_file: bool) -> Result<Option<u64>, LockError> {
        if self.lease_lost {
            // Nothing of ours is in the table. Only at NONE has SQLite let go of everything
            // it read under the lost lock; from there it starts afresh.
            if to == Level::None {
                self.lease_lost = false;
                self.owed_since = None;
                self.set_renewed_at(None);
            }
            return Ok(None);
        }
        if to >= self.level && !changed_file {
            return Ok(None);
        }
        if to < Level::Reserved
            && let Some(began) = self.write_began.take()
        {
            self.write_took = self.env.now().saturating_sub(began);
        }
        self.kept_write = KeptWrite::No;
        // A refused write request sends SQLite to its busy handler, which first lets go of
        // SHARED. Lingering there, our entry would keep the writer ahead of us out of
        // EXCLUSIVE until the heartbeat published it: every connection that found a journal
        // hot wants every other SHARED gone and retries sooner than that (SQLite's mptest
        // crash01 stalled so), and so does a writer that got RESERVED while we waited for it.
        // (A deferred transaction refused its upgrade to a write keeps SHARED and gets BUSY
        // without the busy handler: its end is published at once too, which costs one edit.)
        let refused_write = matches!(self.last_refused, Some(Level::Reserved | Level::Exclusive));
        // The transaction is over, and got what it waited for; or its busy handler lets go
        // of SHARED to ask again, and the release below rewrites our waiting line.
        let mut line = None;
        let mut line_to_drop = false;
        if to == Level::None {
            let now = self.env.now();
            if let Some(wait) = self.wait.as_mut().filter(|_| refused_write) {
                wait.write_refused_at = Some(now);
                line = Some(*wait).filter(|w| now.saturating_sub(w.since) >= RECORD_WAIT_AFTER);
            } else {
                self.wait = None;
                // A line left standing would hold the writers behind it until its silence.
                line_to_drop = self.line.is_some();
            }
        }
        let lingers = match (self.level, to) {
            // The end of a write transaction keeps the write lock (see "Kept write locks");
            // the end of a read lets SHARED linger.
            (Level::Shared, Level::None) if self.in_table == Level::Exclusive => {
                !refused_write && self.in_a_burst() && !line_to_drop
            }
            (Level::Shared, Level::None) => {
                !changed_file && self.owed_since.is_none() && !refused_write && !line_to_drop
            }
            (from, Level::Shared) => from >= Level::Reserved,
            _ => false,
        };
        if lingers && self.entry_written_at.is_some() {
            if self.in_table == Level::Exclusive && to == Level::None {
                self.kept_write = KeptWrite::Idle;
            }
            self.lower_owing(to, changed_file);
            return Ok(None);
        }
        let me = self.me.clone();
        let seq = self.seq + 1;
        let outcome = self.edit_table(UNLOCK_LATCH_WAIT, |table| {
            table.release(&me, to, seq, changed_file);
            if let Some(wait) = line {
                table.note_waiting(&me, seq, wait.wants);
            }
        });
        match outcome {
            Ok(Some(((), generation))) => {
                self.lower_to(to);
                Ok(Some(generation))
            }
            // Whatever happened, we no longer act on the higher level.
            Ok(None) => {
                tracing::debug!(latch = %self.files.describe(LockFileName::Latch), "release deferred: latch busy or edit abandoned");
                self.lower_owing(to, changed_file);
                Ok(None)
            }
            Err(e) => {
                self.lower_owing(to, changed_file);
                if to == Level::None && matches!(e, LockError::LeaseLost) {
                    // The edit found our entry gone. This unlock is SQLite letting go of
                    // everything, the very step a lost lease waits for, and it will not come
                    // again: SQLite never unlocks from NONE.
                    self.lease_lost = false;
                    self.set_renewed_at(None);
                }
                Err(e)
            }
        }
    }

    fn lower_to(&mut self, to: Level) {
        self.level = self.level.min(to);
        if self.level == Level::None {
            self.set_renewed_at(None);
        }
    }

    /// Lowers our own view now and leaves the table to a later edit.
    fn lower_owing(&mut self, to: Level, changed_file: bool) {
        self.lower_to(to);
        self.owed_generation_bump |= changed_file;
        if self.owed_since.is_none() {
            self.owed_since = Some(self.env.now());
        }
    }

    /// Whether a release is not in the table yet.
    pub fn release_owed(&self) -> bool {
        self.owed_since.is_some()
    }

    /// Whether the heartbeat should publish an owed release now: it has lingered long
    /// enough for the connection to count as idle.
    pub fn settle_due(&self) -> bool {
        self.owed_since
            .is_some_and(|since| self.env.now().saturating_sub(since) >= RELEASE_LINGER)
    }

    /// Publishes an owed release (see [`Self::unlock`]); `wait` bounds the wait for the latch.
    pub fn settle(&mut self, wait: Duration) -> Result<(), LockError> {
        if self.owed_since.is_some() {
            self.edit_table(wait, |_| ())?;
        }
        Ok(())
    }

    /// Publishes whatever is owed before the connection goes away, and ends a wait the table
    /// records for it: nobody would later.
    pub fn settle_before_close(&mut self) -> Result<(), LockError> {
        self.wait = None;
        // Any edit removes the line of a connection that no longer waits.
        let forgotten = if self.line.is_some() {
            self.edit_table(UNLOCK_LATCH_WAIT, |_| ()).map(drop)
        } else {
            Ok(())
        };
        self.settle(UNLOCK_LATCH_WAIT).and(forgotten)
    }

    /// SQLite's `xCheckReservedLock`: does anybody hold RESERVED or above? `None`: the latch
    /// could not be had, so nobody knows. Neither answer is safe then: "yes" makes SQLite
    /// read the database file as it is, which a writer that died mid-commit may have left
    /// half-written; "no" makes it roll back a journal that may be a live writer's. The
    /// caller answers BUSY, and SQLite asks again through its busy handler.
    pub fn reserved_held(&mut self) -> Result<Option<bool>, LockError> {
        if self.level >= Level::Reserved {
            return Ok(Some(true));
        }
        Ok(self
            .edit_table(LATCH_WAIT, |table| table.reserved_held())?
            .map(|(held, _)| held))
    }

    /// Rewrites our entry with a new sequence number, proving we are alive.
    pub fn renew(&mut self) -> Result<(), LockError> {
        // Latch busy: the heartbeat tries again at its next beat.
        self.renew_within(LATCH_WAIT).map(drop)
    }

    /// Confirms under the latch that the lock we hold is still ours and renews it, waiting up
    /// to a lease and a half for the latch (a dead one is judged a lease after we first look
    /// at it). For a holder whose lease ran out on its own clock: while a
    /// latch is stuck (a dead one is waited out for a whole lease) nobody can renew, and
    /// nobody can judge anyone dead either, since that takes the latch too; the next edit
    /// tells observers to time silence afresh ([`StaleTracker::observe`]). Our entry still in
    /// the table then means nobody took the lock over, and I/O may go on under a fresh lease.
    /// `Ok(false)`: the latch could not be had meanwhile.
    pub fn confirm_held(&mut self) -> Result<bool, LockError> {
        if self.lease_lost {
            return Err(LockError::LeaseLost);
        }
        self.renew_within(self.lease * 3 / 2)
    }

    fn renew_within(&mut self, wait: Duration) -> Result<bool, LockError> {
        if self.level == Level::None {
            return Ok(true);
        }
        let me = self.me.clone();
        let seq = self.seq + 1;
        let silent_for = self.renewed_at.map(|at| self.env.now().saturating_sub(at));
        match self.edit_table(wait, |table| table.renew(&me, seq))? {
            Some((true, _)) => Ok(true),
            Some((false, _)) => Err(LockError::LeaseLost),
            None => {
                tracing::debug!(level = %self.level, silent_ms = silent_for.map(|d| d.as_millis() as u64), "renewal deferred: latch busy");
                Ok(false)
            }
        }
    }

    /// Runs `change` on the current table under the latch and writes the result back if it
    /// changed. `Ok(None)`: the latch could not be had within `wait`, or the edit was
    /// abandoned after holding it for half a lease (nothing written).
    fn edit_table<R>(
        &mut self,
        wait: Duration,
        change: impl FnOnce(&mut LockTable) -> R,
    ) -> Result<Option<(R, u64)>, LockError> {
        // Whatever this edit comes to, the transaction no longer counts on a kept write lock:
        // a write that reached the table but answered an error may have lowered our entry.
        self.kept_write = KeptWrite::No;
        let urgent = self.renewal_overdue();
        let Ok(latch) = self.latches.take(&mut parties!(self), wait, urgent)? else {
            return Ok(None);
        };
        let result = self.edit_under_latch(&latch, change);
        let released = self.latches.release(&mut parties!(self), &latch);
        let edited = result?;
        released?;
        Ok(edited)
    }

    /// `Ok(None)`: the edit was abandoned, nothing written (see below).
    fn edit_under_latch<R>(
        &mut self,
        latch: &Latch,
        change: impl FnOnce(&mut LockTable) -> R,
    ) -> Result<Option<(R, u64)>, LockError> {
        let mut file = self.files.open_table()?;
        let (mut table, replaced) = self.table.read(&mut file, &self.env, self.lease, || {
            self.files.describe(LockFileName::Table)
        })?;
        self.owed_generation_bump |= replaced;
        let before = table.clone();
        if self.latches.broken_after_silence() {
            table.latch_breaks += 1;
        }
        self.remove_stale_holders(&mut table);
        self.check_own_entry(&mut table)?;
        if self.wait.is_none() {
            table.forget_waiter(&self.me);
        }
        if self.owed_generation_bump {
            table.generation += 1;
        }
        let result = change(&mut table);
        // Any edit we make anyway renews our entry when a renewal is due: a writer that keeps
        // retrying EXCLUSIVE proves it is alive without a separate heartbeat.
        if self.renewal_due() && table.level_of(&self.me) > Level::None {
            table.renew(
                &self.me,
                self.seq.max(
                    table
                        .holders
                        .iter()
                        .find(|h| h.owner == self.me)
                        .map_or(0, |h| h.seq),
                ) + 1,
            );
        }
        if table != before {
            // A latch held this long may have been judged stale and broken: writing now could
            // overwrite a table that someone else has since changed.
            // Nothing is written then, so the table is as before: answered as a latch that
            // could not be had (a request is BUSY, a release stays owed).
            if self.env.now().saturating_sub(latch.taken_at) >= self.lease / 2 {
                tracing::warn!(owner = %self.me, "lock table edit took longer than half a lease; abandoned");
                return Ok(None);
            }
            file.write_all(&self.table.encode(&table))?;
            self.owed_generation_bump = false;
            self.latches.break_recorded();
            // The lease runs from the write that others observe: a new sequence number in our
            // entry (observers time silence by it). A write that leaves our entry as it was
            // (a dead holder removed, a latch break counted) renews nothing.
            let seq_of =
                |t: &LockTable| t.holders.iter().find(|h| h.owner == self.me).map(|h| h.seq);
            match seq_of(&table) {
                Some(seq) => {
                    self.seq = seq.max(self.seq);
                    if seq_of(&before) != Some(seq) {
                        self.entry_written_at = Some(latch.taken_at);
                        self.set_renewed_at(self.entry_written_at);
                    }
                }
                None => {
                    self.entry_written_at = None;
                    self.set_renewed_at(None);
                }
            }
            // A waiting line's number is ours too: the entry a grant writes later must not
            // repeat it, or observers would time the entry from when they saw the line.
            if let Some(w) = table.waiters.iter().find(|w| w.owner == self.me) {
                self.seq = self.seq.max(w.seq);
            }
        }
        // Any release we owed is in the table now (`check_own_entry` made it).
        self.owed_since = None;
        self.in_table = table.level_of(&self.me);
        self.line = table.waiter(&self.me).map(|w| Line {
            seq: w.seq,
            wants: w.wants,
            written_at: match self.line {
                Some(line) if line.seq == w.seq => line.written_at,
                _ => latch.taken_at,
            },
        });
        self.waiters_seen.observe(&table, &self.me, self.env.now());
        self.stale.retain_current(&table);
        Ok(Some((result, table.generation)))
    }

    /// Our entry must say what we believe we hold. If it is gone while we hold a lock, others
    /// judged us dead; if it shows more than we hold (an unlock that could not be published),
    /// the owed release is made now.
    fn check_own_entry(&mut self, table: &mut LockTable) -> Result<(), LockError> {
        let recorded = table.level_of(&self.me);
        if recorded == Level::None && self.level == Level::None && self.in_table > Level::None {
            // Only a lingering release's entry was judged stale (we stalled for a lease while
            // idle): nothing we hold was taken, and the removal moved the generation on.
            tracing::warn!(owner = %self.me, level = %self.in_table, "our lingering lock entry was removed as stale while idle");
            self.owed_generation_bump = false;
        }
        if recorded == Level::None && self.level > Level::None {
            tracing::error!(owner = %self.me, level = %self.level, "lock lease lost: our entry was removed by another process");
            self.level = Level::None;
            self.in_table = Level::None;
            self.lease_lost = true;
            self.set_renewed_at(None);
            return Err(LockError::LeaseLost);
        }
        if recorded > self.level {
            let seq = self.seq + 1;
            // A writer's release moves the generation on, once: the owed bump may do it.
            let bump = recorded >= Level::Reserved && !self.owed_generation_bump;
            table.release(&self.me, self.level, seq, bump);
        }
        Ok(())
    }

    fn remove_stale_holders(&mut self, table: &mut LockTable) {
        self.stale.observe(table);
        let now = self.env.now();
        let (lease, env, tracker, my_host) =
            (self.lease, &self.env, &mut self.stale, &self.me.host);
        let mut reasons = Vec::new();
        let removed = table.remove_stale(&self.me, |h| {
            let reason = stale_reason(env, tracker, my_host, lease, now, &h.owner, h.seq);
            reasons.extend(reason);
            reason.is_some()
        });
        let silence = WAIT_LINE_SILENCE.min(lease);
        let waiters = table.remove_stale_waiters(&self.me, |owner, seq| {
            stale_reason(env, tracker, my_host, silence, now, owner, seq).is_some()
        });
        for w in waiters {
            tracing::debug!(waiter = %w.owner, "stale waiter removed");
        }
        for (h, why) in removed.into_iter().zip(reasons) {
            tracing::warn!(holder = %h.owner, level = %h.level, reason = why, table = %self.files.describe(LockFileName::Table), "stale lock broken");
            if let Some(log) = &mut self.sweep_log {
                log.push(Removed::Holder {
                    holder: h,
                    reason: why,
                });
            }
        }
    }

    /// One edit that changes nothing of our own: what every edit does first, removing the
    /// holders judged dead (and, while waiting for the latch, a dead holder's latch), plus a
    /// break token left by a dead breaker. For `sqlite-netfs unlock --stale`: it removes only
    /// what any connection's next lock request would remove, under the same latch, so it
    /// cannot take a lock away from a live holder that the protocol itself would leave alone.
    /// Holders of other hosts are judged by silence, so call it again over at least a lease;
    /// this lock remembers what it has seen.
    ///
    /// Returns what was removed, and whether the edit got the latch (`false`: busy; try again).
    pub fn sweep_stale(&mut self) -> (Vec<Removed>, Result<bool, LockError>) {
        self.sweep_log = Some(Vec::new());
        let result = self
            .latches
            .remove_break_if_dead(&mut parties!(self))
            .and_then(|()| self.edit_table(LATCH_WAIT, |_| ()))
            .map(|edited| edited.is_some());
        (self.sweep_log.take().unwrap_or_default(), result)
    }
}

/// Why the owner of a holder's or waiter's entry showing `seq` is judged dead, if it is (the
/// staleness table in the module doc). Every entry passes through here, so the observation
/// clock of the tracker starts at first sight.
fn stale_reason<E: Environment>(
    env: &E,
    tracker: &mut StaleTracker,
    my_host: &str,
    lease: Duration,
    now: Duration,
    owner: &OwnerId,
    seq: u64,
) -> Option<&'static str> {
    let silent = tracker.unchanged_for(owner, seq, now, lease);
    if owner.host == my_host && !env.process_alive(owner) {
        Some("process is gone")
    } else if silent {
        Some("lease expired")
    } else {
        None
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use parking_lot::Mutex;
    use std::collections::{HashMap, HashSet};
    use std::sync::Arc;

    /// An in-memory directory shared by several `DbLock`s, as a file server is.
    #[derive(Clone, Default)]
    pub struct FakeFiles {
        files: Arc<Mutex<HashMap<LockFileName, Vec<u8>>>>,
        /// Table writes so far.
        writes: Arc<AtomicU64>,
        /// This many next table opens read an empty file until revalidated.
        stale_empty_opens: Arc<AtomicU64>,
        /// The next table open takes this long on this clock (a stalled client or server).
        stalled_open: Arc<Mutex<Option<(FakeEnv, Duration)>>>,
        /// Every read of a whole file takes this long on this clock (a slow file server).
        read_cost: Arc<Mutex<Option<(FakeEnv, Duration)>>>,
        /// Reads of whole files so far, by name.
        reads: Arc<Mutex<HashMap<LockFileName, u64>>>,
        /// The next table write lands but answers EIO (a reply lost after the server wrote).
        fail_after_write: Arc<std::sync::atomic::AtomicBool>,
    }

    impl FakeFiles {
        pub fn write(&self, name: LockFileName, contents: &[u8]) {
            let mut files = self.files.lock();
            let f = files.entry(name).or_default();
            if f.len() < contents.len() {
                f.resize(contents.len(), 0);
            }
            f[..contents.len()].copy_from_slice(contents);
        }

        /// The next table open sees a size of zero, as an sshfs client that cached the size
        /// of a table another process on its mount had only just created.
        pub fn serve_next_table_open_as_empty(&self) {
            self.stale_empty_opens.fetch_add(1, Ordering::Relaxed);
        }

        /// The next table open takes `stall` on `env`'s clock.
        pub fn stall_next_table_open(&self, env: &FakeEnv, stall: Duration) {
            *self.stalled_open.lock() = Some((env.clone(), stall));
        }

        /// From now on every read of a whole file takes `cost`.
        pub fn slow_reads(&self, env: &FakeEnv, cost: Duration) {
            *self.read_cost.lock() = Some((env.clone(), cost));
        }

        /// Reads of the file `name` so far.
        pub fn reads_of(&self, name: LockFileName) -> u64 {
            self.reads.lock().get(&name).copied().unwrap_or(0)
        }
    }

    /// The fake table: every read and write goes straight to the shared map, except that an
    /// open may see a stale size of zero until revalidated.
    pub struct FakeTable {
        files: FakeFiles,
        stale_empty: bool,
    }

    impl TableFile for FakeTable {
        fn read_all(&mut self) -> io::Result<Vec<u8>> {
            if self.stale_empty {
                return Ok(Vec::new());
            }
            Ok(self.files.read(LockFileName::Table)?.unwrap_or_default())
        }
        fn revalidate(&mut self) -> io::Result<()> {
            self.stale_empty = false;
            Ok(())
        }
        fn write_all(&mut self, contents: &[u8]) -> io::Result<()> {
            self.files.writes.fetch_add(1, Ordering::Relaxed);
            self.files.write(LockFileName::Table, contents);
            if self.files.fail_after_write.swap(false, Ordering::Relaxed) {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            Ok(())
        }
    }

    impl LockFiles for FakeFiles {
        type Table = FakeTable;

        fn create_exclusive(&self, name: LockFileName, contents: &[u8]) -> io::Result<bool> {
            let mut files = self.files.lock();
            if files.contains_key(&name) {
                return Ok(false);
            }
            files.insert(name, contents.to_vec());
            Ok(true)
        }
        fn read(&self, name: LockFileName) -> io::Result<Option<Vec<u8>>> {
            *self.reads.lock().entry(name).or_default() += 1;
            if let Some((env, cost)) = &*self.read_cost.lock() {
                env.advance(*cost);
            }
            Ok(self.files.lock().get(&name).cloned())
        }
        fn open_table(&self) -> io::Result<FakeTable> {
            if let Some((env, stall)) = self.stalled_open.lock().take() {
                env.advance(stall);
            }
            let stale_empty = self
                .stale_empty_opens
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok();
            Ok(FakeTable {
                files: self.clone(),
                stale_empty,
            })
        }
        fn remove(&self, name: LockFileName) -> io::Result<bool> {
            Ok(self.files.lock().remove(&name).is_some())
        }
        fn describe(&self, name: LockFileName) -> String {
            format!("fake{}", name.suffix())
        }
    }

    /// A move of another process, made while the lock under test sleeps.
    type OtherProcessStep = Box<dyn FnOnce() + Send>;

    /// A clock that moves only when slept on or advanced, and a set of dead pids.
    #[derive(Clone, Default)]
    pub struct FakeEnv {
        now: Arc<Mutex<Duration>>,
        dead: Arc<Mutex<HashSet<u32>>>,
        fresh: Arc<Mutex<u64>>,
        /// What another process does once a sleep reaches the given time.
        meanwhile: Arc<Mutex<Vec<(Duration, OtherProcessStep)>>>,
    }

    impl FakeEnv {
        fn advance(&self, d: Duration) {
            *self.now.lock() += d;
        }
        /// Runs `step` (another process's move) when a sleep first reaches `after` from now.
        fn meanwhile(&self, after: Duration, step: impl FnOnce() + Send + 'static) {
            let at = self.now() + after;
            self.meanwhile.lock().push((at, Box::new(step)));
        }
        fn kill(&self, pid: u32) {
            self.dead.lock().insert(pid);
        }
    }

    impl Environment for FakeEnv {
        fn now(&self) -> Duration {
            *self.now.lock()
        }
        fn sleep(&self, d: Duration) {
            self.advance(d);
            let now = self.now();
            let due: Vec<_> = {
                let mut steps = self.meanwhile.lock();
                let (due, later) = std::mem::take(&mut *steps)
                    .into_iter()
                    .partition(|(at, _)| *at <= now);
                *steps = later;
                due
            };
            for (_, step) in due {
                step();
            }
        }
        fn process_alive(&self, owner: &OwnerId) -> bool {
            !self.dead.lock().contains(&owner.pid)
        }
        /// 0 for the first new table, so tests can name generations; 1000 more each time.
        fn fresh_generation(&self) -> u64 {
            let mut fresh = self.fresh.lock();
            let generation = *fresh;
            *fresh += 1000;
            generation
        }
    }

    const LEASE: Duration = Duration::from_secs(10);

    fn client(
        files: &FakeFiles,
        env: &FakeEnv,
        host: &str,
        pid: u32,
    ) -> DbLock<FakeFiles, FakeEnv> {
        let me = OwnerId {
            host: host.into(),
            pid,
            start: 1,
            conn: u64::from(pid),
        };
        DbLock::new(files.clone(), env.clone(), me, LEASE)
    }

    fn granted(a: Acquired) -> bool {
        matches!(a, Acquired::Granted { .. })
    }

    #[test]
    fn a_table_made_anew_never_counts_through_generations_already_used() {
        let (files, env) = (FakeFiles::default(), FakeEnv::default());
        let mut writer = client(&files, &env, "h1", 1);
        let mut reader = client(&files, &env, "h2", 2);
        for _ in 0..3 {
            assert!(granted(writer.lock(Level::Exclusive).unwrap()));
            writer.unlock(Level::None, true).unwrap();
        }
        let used = table_of(&files).generation;
        assert_eq!(used, 3);
        // Someone deletes the table; the next writer makes a new one.
        files.remove(LockFileName::Table).unwrap();
        assert!(granted(writer.lock(Level::Exclusive).unwrap()));
        writer.unlock(Level::None, true).unwrap();
        let Acquired::Granted { generation, .. } = reader.lock(Level::Shared).unwrap() else {
            panic!("busy with no holder");
        };
        assert!(
            generation > used + 1,
            "a reader that cached pages at {used} must not see that number again: {generation}"
        );
    }

    #[test]
    fn a_sweep_removes_the_dead_and_keeps_the_live_and_the_renewing() {
        let (files, env) = (FakeFiles::default(), FakeEnv::default());
        let mut dead_here = client(&files, &env, "h1", 1);
        let mut live_here = client(&files, &env, "h1", 2);
        let mut silent_there = client(&files, &env, "h2", 3);
        let mut renewing_there = client(&files, &env, "h2", 4);
        for c in [
            &mut dead_here,
            &mut live_here,
            &mut silent_there,
            &mut renewing_there,
        ] {
            assert!(granted(c.lock(Level::Shared).unwrap()));
        }
        // A dead breaker's token, on this host.
        files.write(LockFileName::Break, b"h1 1 1 1 7\n");
        env.kill(1);
        let mut sweeper = client(&files, &env, "h1", 9);
        let (removed, edited) = sweeper.sweep_stale();
        assert!(edited.unwrap());
        let names: Vec<String> = removed
            .iter()
            .map(|r| match r {
                Removed::Holder { holder, reason } => format!("{} {reason}", holder.owner.pid),
                Removed::Token { name, reason, .. } => format!("{} {reason}", name.suffix()),
            })
            .collect();
        assert_eq!(names, ["-netfs-break process is gone", "1 process is gone"]);
        // Another host's holders are judged by silence only: nothing more yet.
        // The live ones renew, as their heartbeat does every quarter lease.
        env.advance(LEASE / 2);
        live_here.renew().unwrap();
        renewing_there.renew().unwrap();
        assert!(sweeper.sweep_stale().0.is_empty());
        env.advance(LEASE / 2);
        let (removed, _) = sweeper.sweep_stale();
        assert!(
            matches!(&removed[..], [Removed::Holder { holder, reason: "lease expired" }] if holder.owner.pid == 3),
            "{removed:?}"
        );
        let table = LockTable::decode(&files.read(LockFileName::Table).unwrap().unwrap()).unwrap();
        let left: Vec<u32> = table.holders.iter().map(|h| h.owner.pid).collect();
        assert_eq!(
            left,
            [2, 4],
            "the live holder here and the renewing one there stay"
        );
    }

    #[test]
    fn a_new_client_that_reads_the_table_empty_asks_the_server_before_writing_over_it() {
        let (files, env) = (FakeFiles::default(), FakeEnv::default());
        let mut a = client(&files, &env, "h1", 1);
        assert!(granted(a.lock(Level::Shared).unwrap()));
        files.serve_next_table_open_as_empty();
        let mut b = client(&files, &env, "h1", 2);
        assert!(granted(b.lock(Level::Shared).unwrap()));
        // Had b written its own table over the empty read, a's entry would be gone and a's
        // next request would find its lease lost (the acceptance run's IOERR_LOCK on sshfs).
        assert!(granted(a.lock(Level::Reserved).unwrap()));
        assert!(
            !granted(b.lock(Level::Reserved).unwrap()),
            "both entries are in the table: one RESERVED at a time"
        );
    }

    #[test]
    fn two_clients_follow_the_protocol_through_files() {
        let (files, env) = (FakeFiles::default(), FakeEnv::default());
        let mut a = client(&files, &env, "h1", 1);
        let mut b = client(&files, &env, "h2", 2);
        assert!(granted(a.lock(Level::Shared).unwrap()));
        assert!(granted(b.lock(Level::Shared).unwrap()));
        assert!(granted(a.lock(Level::Reserved).unwrap()));
        assert_eq!(b.lock(Level::Reserved).unwrap(), Acquired::Busy);
        assert_eq!(b.reserved_held().unwrap(), Some(true));
        assert_eq!(a.lock(Level::Exclusive).unwrap(), Acquired::Busy);
        assert_eq!(a.level(), Level::Pending);
        // b, refused, lets go of SHARED; a can then commit.
        assert!(b.unlock(Level::None, false).unwrap().is_some());
        assert!(granted(a.lock(Level::Exclusive).unwrap()));
        let generation = a.unlock(Level::None, true).unwrap();
        assert_eq!(generation, Some(1));
        match b.lock(Level::Shared).unwrap() {
            Acquired::Granted { generation, .. } => assert_eq!(generation, 1),
            Acquired::Busy => panic!("busy with no holder"),
        }
        // The latch is never left behind.
        assert!(files.read(LockFileName::Latch).unwrap().is_none());
    }

    #[test]
    fn an_edit_stalled_for_half_a_lease_writes_nothing_a_request_is_busy_a_release_owed() {
        let (files, env) = (FakeFiles::default(), FakeEnv::default());
        let mut w = client(&files, &env, "h1", 1);
        assert!(granted(w.lock(Level::Shared).unwrap()));
        let writes = table_writes(&files);
        files.stall_next_table_open(&env, LEASE / 2);
        assert_eq!(w.lock(Level::Reserved).unwrap(), Acquired::Busy);
        assert_eq!(table_writes(&files), writes, "abandoned: nothing written");
        assert_eq!(table_of(&files).level_of(w.owner()), Level::Shared);
        assert_eq!(w.level(), Level::Shared);
        // SQLite's busy handler asks again, and the server answers in time.
        assert!(granted(w.lock(Level::Reserved).unwrap()));
        assert_eq!(table_of(&files).level_of(w.owner()), Level::Reserved);
        // A release that stalls so stays owed, and the heartbeat publishes it.
        files.stall_next_table_open(&env, LEASE / 2);
        assert_eq!(w.unlock(Level::None, false).unwrap(), None);
        assert!(w.release_owed());
        assert_eq!(table_of(&files).level_of(w.owner()), Level::Reserved);
        env.advance(RELEASE_LINGER);
        assert!(w.settle_due());
        w.settle(LATCH_WAIT).unwrap();
        assert!(!w.release_owed());
        assert!(table_of(&files).holders.is_empty());
        // SQLite's "does anybody hold RESERVED?" after such a stall: nobody knows (BUSY).
        assert!(granted(w.lock(Level::Shared).unwrap()));
        files.stall_next_table_open(&env, LEASE / 2);
        assert_eq!(w.reserved_held().unwrap(), None);
        assert_eq!(w.reserved_held().unwrap(), Some(false));
    }

    fn table_of(files: &FakeFiles) -> LockTable {
        LockTable::decode(&files.read(LockFileName::Table).unwrap().unwrap()).unwrap()
    }

    /// Rewrites the first holder's level, as an edit whose answer was lost would leave it.
    fn record_level(files: &FakeFiles, level: Level) {
        let mut table = table_of(files);
        table.holders[0].level = level;
        files.write(LockFileName::Table, &table.encode(0));
    }

    fn table_writes(files: &FakeFiles) -> u64 {
        files.writes.load(Ordering::Relaxed)
    }

    #[test]
    fn next_read_transaction_reuses_the_lingering_shared_without_an_edit() {
        let (files, env) = (FakeFiles::default(), FakeEnv::default());
        let mut r = client(&files, &env, "h1", 1);
        assert!(granted(r.lock(Level::Shared).unwrap()));
        assert_eq!(r.unlock(Level::None, false).unwrap(), None);
        assert!(r.release_owed());
        let writes = table_writes(&files);
        assert!(granted(r.lock(Level::Shared).unwrap()));
        assert_eq!(table_writes(&files), writes, "no table edit");
        assert!(!r.release_owed());
        assert_eq!(r.level(), Level::Shared);
        // Not once it is old enough that another host may be about to judge it stale.
        r.unlock(Level::None, false).unwrap();
        env.advance(LEASE / 2);
        assert!(granted(r.lock(Level::Shared).unwrap()));
        assert_eq!(
            table_writes(&files),
            writes + 1,
            "an edit that renews the entry"
        );
        // Once the connection is idle, the heartbeat publishes the release.
        r.unlock(Level::None, false).unwrap();
        assert!(!r.settle_due());
        env.advance(RELEASE_LINGER);
        assert!(r.settle_due());
        r.settle(LATCH_WAIT).unwrap();
        assert!(table_of(&files).holders.is_empty());
    }

    #[test]
    fn lingering_shared_gives_way_to_a_waiting_writer() {
        let (files, env) = (FakeFiles::default(), FakeEnv::default());
        let mut r = client(&files, &env, "h1", 1);
        let mut w = client(&files, &env, "h2", 2);
        assert!(granted(r.lock(Level::Shared).unwrap()));
        r.unlock(Level::None, false).unwrap();
        assert!(granted(w.lock(Level::Shared).unwrap()));
        assert!(granted(w.lock(Level::Reserved).unwrap()));
        assert_eq!(w.lock(Level::Exclusive).unwrap(), Acquired::Busy);
        assert_eq!(w.level(), Level::Pending);
        // The reader comes back: PENDING is in the way, so its entry goes instead of serving.
        assert_eq!(r.lock(Level::Shared).unwrap(), Acquired::Busy);
        assert!(!r.release_owed());
        assert!(granted(w.lock(Level::Exclusive).unwrap()));
    }

    /// `r` asks for SHARED and is refused, long enough for its wait to be recorded.
    fn refused_shared_until_recorded(r: &mut DbLock<FakeFiles, FakeEnv>, env: &FakeEnv) {
        assert_eq!(r.lock(Level::Shared).unwrap(), Acquired::Busy);
        env.advance(RECORD_WAIT_AFTER);
        assert_eq!(r.lock(Level::Shared).unwrap(), Acquired::Busy);
    }

    /// SHARED, RESERVED and EXCLUSIVE, each granted, as SQLite asks for them to write.
    fn take_exclusive(w: &mut DbLock<FakeFiles, FakeEnv>) {
        for level in [Level::Shared, Level::Reserved, Level::Exclusive] {
            assert!(granted(w.lock(level).unwrap()), "{level} refused");
        }
    }

    fn write_transaction(w: &mut DbLock<FakeFiles, FakeEnv>) {
        take_exclusive(w);
        assert_eq!(w.unlock(Level::Shared, true).unwrap(), None, "lingers");
        assert_eq!(w.unlock(Level::None, false).unwrap(), None, "kept");
    }

    #[test]
    fn a_lone_writer_keeps_its_write_lock_across_transactions_with_one_look_each() {
        let (files, env) = (FakeFiles::default(), FakeEnv::default());
        let mut w = client(&files, &env, "h1", 1);
        write_transaction(&mut w);
        assert!(w.release_owed());
        let (writes, reads) = (table_writes(&files), files.reads_of(LockFileName::Table));
        for _ in 0..3 {
            write_transaction(&mut w);
        }
        assert_eq!(table_writes(&files), writes, "no edit");
        assert_eq!(
            files.reads_of(LockFileName::Table),
            reads + 3,
            "one look each"
        );
        // The grant says so: nobody else can have written since this writer's last commit.
        assert_eq!(
            w.lock(Level::Shared).unwrap(),
            Acquired::Granted {
                generation: 0,
                kept: true
            }
        );
        w.unlock(Level::None, false).unwrap();
        let table = table_of(&files);
        assert_eq!(table.level_of(w.owner()), Level::Exclusive);
        assert_eq!(table.generation, 0, "the bump is owed");
        // Once the writer is idle, the heartbeat publishes the end of its last transaction.
        assert!(!w.settle_due());
        env.advance(RELEASE_LINGER);
        assert!(w.settle_due());
        w.settle(LATCH_WAIT).unwrap();
        let table = table_of(&files);
        assert!(table.holders.is_empty());
        assert_eq!(table.generation, 1, "one bump for the kept transactions");
    }

    /// `w` asks for SHARED and RESERVED as BEGIN IMMEDIATE does, is refused RESERVED, and
    /// lets go of SHARED as SQLite's busy handler does before it sleeps.
    fn refused_write(w: &mut DbLock<FakeFiles, FakeEnv>) {
        assert!(granted(w.lock(Level::Shared).unwrap()));
        assert_eq!(w.lock(Level::Reserved).unwrap(), Acquired::Busy);
        w.unlock(Level::None, false).unwrap();
    }

    /// `a` holds RESERVED; `b` was refused its write long enough to be in the queue.
    fn a_writer_and_a_queued_one() -> (
        FakeFiles,
        FakeEnv,
        DbLock<FakeFiles, FakeEnv>,
        DbLock<FakeFiles, FakeEnv>,
    ) {
        let (files, env) = (FakeFiles::default(), FakeEnv::default());
        let mut a = client(&files, &env, "h1", 1);
        let mut b = client(&files, &env, "h2", 2);
        assert!(granted(a.lock(Level::Shared).unwrap()));
        assert!(granted(a.lock(Level::Reserved).unwrap()));
        refused_write(&mut b);
        assert!(table_of(&files).waiters.is_empty(), "an ordinary turn");
        env.advance(RECORD_WAIT_AFTER);
        // The retry waits for its turn, which does not come while a writes; one edit writes
        // b's line.
        assert_eq!(b.lock(Level::Shared).unwrap(), Acquired::Busy);
        let line = table_of(&files).waiter(b.owner()).cloned().unwrap();
        assert_eq!(line.wants, Level::Reserved);
        (files, env, a, b)
    }

    #[test]
    fn a_writer_refused_long_enough_heads_the_queue_and_no_newcomer_passes_it() {
        let (files, env, mut a, mut b) = a_writer_and_a_queued_one();
        let mut c = client(&files, &env, "h3", 3);
        assert!(granted(a.lock(Level::Exclusive).unwrap()));
        env.advance(KEEP_TURN_FOR.1);
        a.unlock(Level::Shared, true).unwrap();
        assert!(
            a.unlock(Level::None, false).unwrap().is_some(),
            "b waits, a's burst is over: published"
        );
        // A newcomer reads, but may not write ahead of b.
        assert!(granted(c.lock(Level::Shared).unwrap()));
        assert_eq!(c.lock(Level::Reserved).unwrap(), Acquired::Busy);
        c.unlock(Level::None, false).unwrap();
        // b's turn: SHARED, then RESERVED, and its line goes.
        assert!(granted(b.lock(Level::Shared).unwrap()));
        assert!(granted(b.lock(Level::Reserved).unwrap()));
        assert!(table_of(&files).waiters.is_empty());
    }

    #[test]
    fn a_writer_keeps_its_turn_for_a_short_burst_past_the_writers_queue_then_gives_way() {
        let (files, env, mut a, mut b) = a_writer_and_a_queued_one();
        assert!(granted(a.lock(Level::Exclusive).unwrap()));
        a.unlock(Level::Shared, true).unwrap();
        assert_eq!(a.unlock(Level::None, false).unwrap(), None, "kept");
        // Inside its burst, a's transactions reuse the kept lock, one look each, and b's
        // retries are refused by looks (at once: a wait inside them would run the clock).
        b.turn_wait = Duration::ZERO;
        let writes = table_writes(&files);
        let mut kept = 0;
        while let Acquired::Granted { kept: true, .. } = a.lock(Level::Shared).unwrap() {
            assert_eq!(table_writes(&files), writes, "no edit in the burst");
            assert!(granted(a.lock(Level::Reserved).unwrap()));
            assert!(granted(a.lock(Level::Exclusive).unwrap()));
            a.unlock(Level::Shared, true).unwrap();
            a.unlock(Level::None, false).unwrap();
            kept += 1;
            assert_eq!(b.lock(Level::Shared).unwrap(), Acquired::Busy);
            env.advance(Duration::from_millis(5));
        }
        // a's transactions take no time here: the burst is the shortest, counted from when
        // a first saw b's line (its EXCLUSIVE edit).
        assert_eq!(kept, KEEP_TURN_FOR.0.as_millis() / 5);
        // Then a gives way: that SHARED was an edit that published its release, and it
        // queues behind b.
        assert_eq!(table_of(&files).level_of(a.owner()), Level::Shared);
        assert_eq!(a.lock(Level::Reserved).unwrap(), Acquired::Busy);
        a.unlock(Level::None, false).unwrap();
        assert!(granted(b.lock(Level::Shared).unwrap()));
        assert!(granted(b.lock(Level::Reserved).unwrap()));
    }

    #[test]
    fn a_retried_write_waits_awake_for_its_turn_and_writes_nothing_while_it_waits() {
        let (files, env, a, mut b) = a_writer_and_a_queued_one();
        let (writes, t0) = (table_writes(&files), env.now());
        assert_eq!(b.lock(Level::Shared).unwrap(), Acquired::Busy);
        let waited = env.now() - t0;
        assert!(
            waited > Duration::ZERO && waited <= TURN_WAIT,
            "it looked until its time was up: {waited:?}"
        );
        assert_eq!(table_writes(&files), writes, "looks only");
        // a commits while b's next retry waits: b is granted within a look of it.
        let a = Arc::new(Mutex::new(a));
        let writer = a.clone();
        env.meanwhile(Duration::from_millis(10), move || {
            writer.lock().unlock(Level::None, false).unwrap();
        });
        let t1 = env.now();
        assert!(granted(b.lock(Level::Shared).unwrap()));
        let took = env.now() - t1;
        assert!(
            took >= Duration::from_millis(10) && took <= Duration::from_millis(11),
            "b was granted {took:?} into its wait, a released at 10 ms"
        );
        assert!(granted(b.lock(Level::Reserved).unwrap()));
        assert_eq!(a.lock().level(), Level::None);
    }

    #[test]
    fn a_waiting_line_whose_owner_stopped_asking_is_removed_after_a_second() {
        let (files, env, mut a, _b) = a_writer_and_a_queued_one();
        // b's application gave up on BUSY and went quiet.
        a.renew().unwrap();
        env.advance(WAIT_LINE_SILENCE);
        a.renew().unwrap();
        assert!(table_of(&files).waiters.is_empty());
    }

    #[test]
    fn a_read_right_after_a_write_gave_up_is_held_up_only_briefly_and_drops_the_line() {
        let (files, env, _a, mut b) = a_writer_and_a_queued_one();
        // b's application gave up on BUSY and now reads, retrying every 100 ms, beside a's
        // RESERVED that lasts: to us the first tries look like the write's retries.
        let gave_up = env.now();
        while !granted(b.lock(Level::Shared).unwrap()) {
            env.advance(Duration::from_millis(100));
        }
        let held = env.now() - gave_up;
        assert!(
            held <= WRITE_RETRY_WINDOW + TURN_WAIT,
            "the read waited {held:?} beside a RESERVED"
        );
        // The read ends: its line goes with it, at once.
        assert!(table_of(&files).is_waiting(b.owner()));
        b.unlock(Level::None, false).unwrap();
        assert!(!table_of(&files).is_waiting(b.owner()));
    }

    /// Found on two NFS guests: a writer on the surviving guest stalled for over a second
    /// while the other guest crashed, its wait lapsed, and from then on every retry was
    /// refused at a look that recorded nothing, while a keeper committed 6 500 times.
    #[test]
    fn a_wait_that_lapsed_while_its_connection_stalled_is_recorded_again() {
        let (files, env) = (FakeFiles::default(), FakeEnv::default());
        let mut w = client(&files, &env, "h1", 1);
        let mut r = client(&files, &env, "h2", 2);
        write_transaction(&mut w);
        assert_eq!(r.lock(Level::Shared).unwrap(), Acquired::Busy);
        // r stalls; meanwhile the keeper's idle release is published and it keeps again.
        env.advance(WAIT_LINE_SILENCE);
        w.settle(LATCH_WAIT).unwrap();
        write_transaction(&mut w);
        for _ in 0..3 {
            assert_eq!(r.lock(Level::Shared).unwrap(), Acquired::Busy);
            env.advance(RECORD_WAIT_AFTER);
        }
        assert!(
            table_of(&files).is_waiting(r.owner()),
            "r's wait is not in the table: the keeper never gives way"
        );
    }

    #[test]
    fn a_queued_writer_that_closes_leaves_no_line_behind() {
        let (files, _env, _a, mut b) = a_writer_and_a_queued_one();
        b.settle_before_close().unwrap();
        assert!(table_of(&files).waiters.is_empty());
    }

    /// How long SQLite's default busy handler sleeps before each retry
    /// (`sqliteDefaultBusyCallback`).
    const BUSY_SLEEPS_MS: [u64; 12] = [1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100];

    /// A connection running `BEGIN IMMEDIATE; ...; COMMIT` back to back as SQLite does it,
    /// in simulated time: a refused RESERVED lets go of SHARED before the busy handler sleeps.
    struct SimulatedWriter {
        lock: DbLock<FakeFiles, FakeEnv>,
        /// When it acts next.
        at: Duration,
        /// Inside a transaction, holding RESERVED, until `at`.
        writing: bool,
        retries: usize,
        commits: u64,
    }

    impl SimulatedWriter {
        fn act(&mut self, env: &FakeEnv, work: Duration) {
            if self.writing {
                assert!(granted(self.lock.lock(Level::Exclusive).unwrap()));
                self.lock.unlock(Level::Shared, true).unwrap();
                self.lock.unlock(Level::None, false).unwrap();
                self.writing = false;
                self.retries = 0;
                self.commits += 1;
                return;
            }
            let began = granted(self.lock.lock(Level::Shared).unwrap());
            if began && granted(self.lock.lock(Level::Reserved).unwrap()) {
                self.writing = true;
                self.at = env.now() + work;
                return;
            }
            if began {
                self.lock.unlock(Level::None, false).unwrap();
            }
            let sleep = BUSY_SLEEPS_MS[self.retries.min(BUSY_SLEEPS_MS.len() - 1)];
            self.retries += 1;
            self.at = env.now() + Duration::from_millis(sleep);
        }
    }

    /// Runs `writers` (one per host) for `span` of simulated time, each write transaction
    /// holding RESERVED for `work`; returns each one's commits.
    fn simulate_writers(writers: usize, work: Duration, span: Duration) -> Vec<u64> {
        let (files, env) = (FakeFiles::default(), FakeEnv::default());
        let mut sim: Vec<SimulatedWriter> = (0..writers)
            .map(|i| SimulatedWriter {
                lock: DbLock {
                    // One thread plays every writer: a wait inside a request would stop
                    // the others. The busy handler's sleeps are the waiting here.
                    turn_wait: Duration::ZERO,
                    ..client(&files, &env, &format!("h{i}"), i as u32 + 1)
                },
                at: Duration::from_micros(100 * i as u64),
                writing: false,
                retries: 0,
                commits: 0,
            })
            .collect();
        let end = env.now() + span;
        while env.now() < end {
            let next = (0..writers).min_by_key(|&i| sim[i].at).unwrap();
            let at = sim[next].at;
            env.advance(at.saturating_sub(env.now()));
            // The heartbeat publishes what an idle connection owes.
            for s in sim.iter_mut() {
                if s.lock.settle_due() {
                    s.lock.settle(LATCH_WAIT).unwrap();
                }
            }
            sim[next].act(&env, work);
        }
        sim.iter().map(|s| s.commits).collect()
    }

    #[test]
    fn writers_committing_back_to_back_share_the_database_with_a_waiting_writer() {
        for writers in [2, 4] {
            let commits =
                simulate_writers(writers, Duration::from_millis(2), Duration::from_secs(5));
            let (min, max) = (commits.iter().min().unwrap(), commits.iter().max().unwrap());
            assert!(
                *min as f64 >= 0.5 * *max as f64,
                "{writers} writers committed {commits:?}"
            );
        }
    }

    #[test]
    fn a_kept_write_lock_gives_way_at_the_next_transaction_to_a_refused_reader() {
        let (files, env) = (FakeFiles::default(), FakeEnv::default());
        let mut w = client(&files, &env, "h1", 1);
        let mut r = client(&files, &env, "h2", 2);
        write_transaction(&mut w);
        refused_shared_until_recorded(&mut r, &env);
        assert!(table_of(&files).is_waiting(r.owner()));
        // The writer's next transaction sees the waiter: it edits, publishing its release.
        let writes = table_writes(&files);
        assert!(granted(w.lock(Level::Shared).unwrap()));
        assert_eq!(table_writes(&files), writes + 1);
        let table = table_of(&files);
        assert_eq!(table.level_of(w.owner()), Level::Shared);
        assert_eq!(table.generation, 1);
        let Acquired::Granted { generation, .. } = r.lock(Level::Shared).unwrap() else {
            panic!("the reader still waits");
        };
        assert_eq!(generation, 1);
        assert!(
            !table_of(&files).is_waiting(r.owner()),
            "granted, no longer waiting"
        );
        // RESERVED takes an edit again: the lock is not kept once given up.
        assert!(granted(w.lock(Level::Reserved).unwrap()));
        assert_eq!(table_of(&files).level_of(w.owner()), Level::Reserved);
    }

    #[test]
    fn a_refused_hot_journal_rollback_after_a_wait_for_shared_leaves_no_line_to_hold_writers() {
        let (files, env) = (FakeFiles::default(), FakeEnv::default());
        let mut w = client(&files, &env, "h1", 1);
        let mut r = client(&files, &env, "h2", 2);
        let mut q = client(&files, &env, "h3", 3);
        take_exclusive(&mut w);
        refused_shared_until_recorded(&mut r, &env);
        w.unlock(Level::None, true).unwrap();
        // r gets SHARED, finds the journal hot, and is refused its rollback (q reads).
        assert!(granted(r.lock(Level::Shared).unwrap()));
        assert!(granted(q.lock(Level::Shared).unwrap()));
        assert_eq!(r.lock(Level::Exclusive).unwrap(), Acquired::Busy);
        r.unlock(Level::None, false).unwrap();
        assert!(
            !table_of(&files).is_waiting(r.owner()),
            "r waits for nothing a line could say: {:?}",
            table_of(&files)
        );
        // So a writer is not held back by it.
        assert!(granted(w.lock(Level::Shared).unwrap()));
        assert!(granted(w.lock(Level::Reserved).unwrap()));
    }

    #[test]
    fn a_writer_waiting_for_shared_comes_in_before_the_keeper_writes_again() {
        let (files, env) = (FakeFiles::default(), FakeEnv::default());
        let mut w = client(&files, &env, "h1", 1);
        let mut r = client(&files, &env, "h2", 2);
        write_transaction(&mut w);
        // r's BEGIN IMMEDIATE is refused SHARED by the kept write lock, long enough to say so.
        refused_shared_until_recorded(&mut r, &env);
        // w gives way at its next transaction, and may read beside r, but not write before
        // r has had its SHARED: r is asleep in its busy handler, and would find w at PENDING
        // again when it wakes.
        assert!(granted(w.lock(Level::Shared).unwrap()));
        assert_eq!(w.lock(Level::Reserved).unwrap(), Acquired::Busy);
        w.unlock(Level::None, false).unwrap();
        assert!(granted(r.lock(Level::Shared).unwrap()));
        assert!(granted(r.lock(Level::Reserved).unwrap()));
        assert!(table_of(&files).waiters.is_empty());
    }

    #[test]
    fn only_a_wait_longer_than_the_ordinary_turn_of_writers_is_recorded_and_only_once() {
        let (files, env) = (FakeFiles::default(), FakeEnv::default());
        let mut w = client(&files, &env, "h1", 1);
        let mut r = client(&files, &env, "h2", 2);
        write_transaction(&mut w);
        assert_eq!(r.lock(Level::Shared).unwrap(), Acquired::Busy);
        assert!(table_of(&files).waiters.is_empty());
        env.advance(RECORD_WAIT_AFTER / 2);
        assert_eq!(r.lock(Level::Shared).unwrap(), Acquired::Busy);
        assert!(table_of(&files).waiters.is_empty());
        env.advance(RECORD_WAIT_AFTER / 2);
        let writes = table_writes(&files);
        assert_eq!(r.lock(Level::Shared).unwrap(), Acquired::Busy);
        assert_eq!(table_writes(&files), writes + 1);
        assert!(table_of(&files).is_waiting(r.owner()));
        assert_eq!(r.lock(Level::Shared).unwrap(), Acquired::Busy);
        assert_eq!(table_writes(&files), writes + 1, "a retry only looks");
    }

    #[test]
    fn a_release_from_exclusive_that_found_the_latch_busy_is_not_taken_for_a_kept_lock() {
        let (files, env) = (FakeFiles::default(), FakeEnv::default());
        let mut w = client(&files, &env, "h1", 1);
        take_exclusive(&mut w);
        // SQLite gives the transaction up straight from EXCLUSIVE (a failed statement's
        // rollback), while another process holds the latch.
        files
            .create_exclusive(LockFileName::Latch, b"h9 9 1 9 1\n")
            .unwrap();
        assert_eq!(w.unlock(Level::None, true).unwrap(), None, "owed");
        files.remove(LockFileName::Latch).unwrap();
        let writes = table_writes(&files);
        assert_eq!(
            w.lock(Level::Shared).unwrap(),
            Acquired::Granted {
                generation: 1,
                kept: false
            }
        );
        assert_eq!(table_writes(&files), writes + 1, "an edit, not a kept lock");
    }

    #[test]
    fn a_write_lock_that_never_reached_exclusive_is_not_kept() {
        let (files, env) = (FakeFiles::default(), FakeEnv::default());
        let mut a = client(&files, &env, "h1", 1);
        // BEGIN IMMEDIATE; ROLLBACK: RESERVED, then back to NONE.
        assert!(granted(a.lock(Level::Shared).unwrap()));
        assert!(granted(a.lock(Level::Reserved).unwrap()));
        assert_eq!(a.unlock(Level::Shared, false).unwrap(), None);
        assert!(a.unlock(Level::None, false).unwrap().is_some(), "published");
        assert!(table_of(&files).holders.is_empty());
    }

    impl FakeFiles {
        /// The next table write reaches the file but answers EIO.
        pub fn fail_after_next_table_write(&self) {
            self.fail_after_write.store(true, Ordering::Relaxed);
        }
    }

    /// A waiter's line and the entry its grant writes must not share a sequence number:
    /// observers time silence by (owner, number), and the entry would inherit the line's age.
    #[test]
    fn a_reader_granted_after_a_long_wait_is_not_judged_by_how_long_it_waited() {
        let (files, env) = (FakeFiles::default(), FakeEnv::default());
        // The shortest lease there is: a line stands as long as an entry then.
        let lease = Duration::from_secs(1);
        let mut w = client(&files, &env, "h1", 1);
        let mut r = client(&files, &env, "h2", 2);
        w.lease = lease;
        r.lease = lease;
        take_exclusive(&mut w);
        assert_eq!(r.lock(Level::Shared).unwrap(), Acquired::Busy);
        env.advance(RECORD_WAIT_AFTER);
        assert_eq!(r.lock(Level::Shared).unwrap(), Acquired::Busy);
        assert!(table_of(&files).is_waiting(r.owner()));
        w.renew().unwrap(); // w first sees r's waiting line
        env.advance(lease * 9 / 10);
        w.renew().unwrap();
        w.unlock(Level::Shared, true).unwrap();
        assert!(w.unlock(Level::None, false).unwrap().is_some());
        assert!(granted(r.lock(Level::Shared).unwrap()));
        env.advance(lease / 5);
        assert!(!r.lease_expired(), "r believes its lease good");
        assert!(granted(w.lock(Level::Shared).unwrap()));
        assert_eq!(
            table_of(&files).level_of(r.owner()),
            Level::Shared,
            "r's SHARED entry, granted 0.2 s ago, removed as stale while its lease runs"
        );
    }

    /// A renewal whose write reached the table (lowering the kept entry to what SQLite holds)
    /// but answered an error: the transaction may no longer count on the kept entry.
    #[test]
    fn a_kept_lock_is_not_counted_on_after_an_edit_that_failed() {
        let (files, env) = (FakeFiles::default(), FakeEnv::default());
        let mut w = client(&files, &env, "h1", 1);
        let mut r = client(&files, &env, "h2", 2);
        write_transaction(&mut w);
        assert_eq!(
            w.lock(Level::Shared).unwrap(),
            Acquired::Granted {
                generation: 0,
                kept: true
            }
        );
        env.advance(LEASE / 4);
        assert!(w.renewal_due());
        files.fail_after_next_table_write();
        assert!(w.renew().is_err(), "the table shows w at SHARED now");
        assert!(granted(r.lock(Level::Shared).unwrap()));
        assert!(granted(r.lock(Level::Reserved).unwrap()));
        let w_res = w.lock(Level::Reserved).unwrap();
        let w_exc = w.lock(Level::Exclusive).unwrap();
        assert!(
            !(granted(w_res) && granted(w_exc)),
            "w granted RESERVED {w_res:?} and EXCLUSIVE {w_exc:?} while r holds RESERVED: {:?}",
            table_of(&files)
        );
    }

    #[test]
    fn a_kept_write_lock_is_not_reused_once_half_a_lease_old() {
        let (files, env) = (FakeFiles::default(), FakeEnv::default());
        let mut w = client(&files, &env, "h1", 1);
        write_transaction(&mut w);
        env.advance(LEASE / 2);
        let writes = table_writes(&files);
        assert!(granted(w.lock(Level::Shared).unwrap()));
        assert_eq!(
            table_writes(&files),
            writes + 1,
            "an edit that renews the entry"
        );
        assert_eq!(table_of(&files).level_of(w.owner()), Level::Shared);
    }

    #[test]
    fn a_waiter_that_closes_leaves_no_waiter_behind() {
        let (files, env) = (FakeFiles::default(), FakeEnv::default());
        let mut w = client(&files, &env, "h1", 1);
        let mut r = client(&files, &env, "h2", 2);
        write_transaction(&mut w);
        refused_shared_until_recorded(&mut r, &env);
        r.settle_before_close().unwrap();
        assert!(table_of(&files).waiters.is_empty());
        let writes = table_writes(&files);
        write_transaction(&mut w);
        assert_eq!(table_writes(&files), writes, "kept again");
    }

    #[test]
    fn a_dead_waiter_is_removed_and_the_write_lock_kept_again() {
        let (files, env) = (FakeFiles::default(), FakeEnv::default());
        let mut w = client(&files, &env, "h1", 1);
        let mut r = client(&files, &env, "h1", 2);
        write_transaction(&mut w);
        refused_shared_until_recorded(&mut r, &env);
        env.kill(2);
        // The writer's next transaction edits (the waiter is in the way) and removes it.
        write_transaction(&mut w);
        assert!(table_of(&files).waiters.is_empty());
        let writes = table_writes(&files);
        write_transaction(&mut w);
        assert_eq!(table_writes(&files), writes, "kept again");
    }

    #[test]
    fn dead_holder_on_this_host_is_removed_at_once() {
        let (files, env) = (FakeFiles::default(), FakeEnv::default());
        let mut dead = client(&files, &env, "h1", 1);
        let mut next = client(&files, &env, "h1", 2);
        assert!(granted(dead.lock(Level::Shared).unwrap()));
        assert!(granted(dead.lock(Level::Reserved).unwrap()));
        assert!(granted(dead.lock(Level::Exclusive).unwrap()));
        env.kill(1);
        let t0 = env.now();
        assert!(granted(next.lock(Level::Shared).unwrap()));
        assert!(env.now() - t0 < Duration::from_millis(1));
    }

    #[test]
    fn holder_on_another_host_is_removed_after_a_lease_of_silence_only() {
        let (files, env) = (FakeFiles::default(), FakeEnv::default());
        let mut remote = client(&files, &env, "h2", 1);
        let mut local = client(&files, &env, "h1", 2);
        assert!(granted(remote.lock(Level::Shared).unwrap()));
        assert!(granted(remote.lock(Level::Reserved).unwrap()));
        assert!(granted(remote.lock(Level::Exclusive).unwrap()));
        assert_eq!(local.lock(Level::Shared).unwrap(), Acquired::Busy);
        // The remote holder keeps renewing: never stale, however long.
        for _ in 0..10 {
            env.advance(LEASE / 4);
            assert!(remote.renewal_due());
            remote.renew().unwrap();
            assert!(!remote.lease_expired());
            assert_eq!(local.lock(Level::Shared).unwrap(), Acquired::Busy);
        }
        // It falls silent: its own lease runs out before others may remove it.
        env.advance(LEASE * 3 / 4);
        assert!(remote.lease_expired());
        assert_eq!(local.lock(Level::Shared).unwrap(), Acquired::Busy);
        env.advance(LEASE / 4);
        assert!(granted(local.lock(Level::Shared).unwrap()));
        // The remote holder finds out when it next touches the table, and stays fenced:
        // SQLite still believes it holds EXCLUSIVE, so neither I/O nor a new request may
        // proceed until SQLite lets go of everything.
        assert!(matches!(remote.renew(), Err(LockError::LeaseLost)));
        assert_eq!(remote.level(), Level::None);
        assert!(remote.lease_expired());
        assert!(matches!(
            remote.lock(Level::Reserved),
            Err(LockError::LeaseLost)
        ));
        assert!(remote.lease_expired());
        remote.unlock(Level::Shared, true).unwrap();
        assert!(remote.lease_expired(), "still fenced above NONE");
        remote.unlock(Level::None, false).unwrap();
        assert!(!remote.lease_expired());
        assert!(granted(remote.lock(Level::Shared).unwrap()));
    }

    /// The soak's stalled SMB writers: a writer whose entry was removed while it stalled
    /// learns of it from the unlock to NONE itself. That unlock is SQLite letting go of
    /// everything, so it must end the lost lease; SQLite will not unlock again from NONE, and
    /// every later request would fail for the life of the connection.
    #[test]
    fn a_lease_found_lost_by_the_unlock_to_none_ends_with_it() {
        let (files, env) = (FakeFiles::default(), FakeEnv::default());
        let mut writer = client(&files, &env, "h2", 1);
        let mut other = client(&files, &env, "h1", 2);
        assert!(granted(writer.lock(Level::Shared).unwrap()));
        assert!(granted(writer.lock(Level::Reserved).unwrap()));
        assert!(granted(writer.lock(Level::Exclusive).unwrap()));
        assert_eq!(other.lock(Level::Shared).unwrap(), Acquired::Busy);
        env.advance(LEASE);
        assert!(granted(other.lock(Level::Shared).unwrap()));
        // SQLite gives up the failed transaction straight from EXCLUSIVE.
        assert!(matches!(
            writer.unlock(Level::None, true),
            Err(LockError::LeaseLost)
        ));
        assert!(!writer.lease_expired());
        assert!(granted(writer.lock(Level::Shared).unwrap()));
        assert!(granted(writer.lock(Level::Reserved).unwrap()));
    }

    /// A writer that stalls for a lease after its commit, its write lock kept: the entry is
    /// judged stale and removed, which takes nothing from the writer (it holds nothing), and
    /// its next transaction starts afresh at the moved generation.
    #[test]
    fn a_kept_write_lock_judged_stale_while_its_writer_was_idle_is_simply_gone() {
        let (files, env) = (FakeFiles::default(), FakeEnv::default());
        let mut writer = client(&files, &env, "h2", 1);
        let mut other = client(&files, &env, "h1", 2);
        take_exclusive(&mut writer);
        assert_eq!(writer.unlock(Level::Shared, true).unwrap(), None);
        assert_eq!(writer.unlock(Level::None, false).unwrap(), None, "kept");
        assert_eq!(other.lock(Level::Shared).unwrap(), Acquired::Busy);
        env.advance(LEASE);
        let Acquired::Granted { generation, .. } = other.lock(Level::Shared).unwrap() else {
            panic!("the stale writer is still in the way");
        };
        assert!(generation >= 1, "readers must drop their caches");
        other.unlock(Level::None, false).unwrap();
        other.settle(LATCH_WAIT).unwrap();
        assert!(granted(writer.lock(Level::Shared).unwrap()));
        assert!(granted(writer.lock(Level::Reserved).unwrap()));
        assert_eq!(table_of(&files).generation, generation, "bumped once");
    }

    #[test]
    fn a_grant_the_holder_never_heard_of_is_lowered_to_what_it_holds() {
        let (files, env) = (FakeFiles::default(), FakeEnv::default());
        let mut w = client(&files, &env, "h1", 1);
        assert!(granted(w.lock(Level::Shared).unwrap()));
        assert!(granted(w.lock(Level::Reserved).unwrap()));
        // An EXCLUSIVE request whose edit was written but whose answer was lost (the latch
        // removal failed): the table says EXCLUSIVE, the holder believes RESERVED.
        record_level(&files, Level::Exclusive);
        assert_eq!(w.level(), Level::Reserved);
        assert!(granted(w.lock(Level::Exclusive).unwrap()));
        w.unlock(Level::None, true).unwrap();
        let table = table_of(&files);
        assert!(table.holders.is_empty());
        // And from RESERVED straight to NONE (a rollback).
        let mut w = client(&files, &env, "h1", 2);
        assert!(granted(w.lock(Level::Shared).unwrap()));
        assert!(granted(w.lock(Level::Reserved).unwrap()));
        record_level(&files, Level::Exclusive);
        w.unlock(Level::Shared, false).unwrap();
        w.unlock(Level::None, false).unwrap();
        w.settle(LATCH_WAIT).unwrap();
        let table = table_of(&files);
        assert!(table.holders.is_empty());
    }

    #[test]
    fn edits_that_leave_our_entry_as_it_was_do_not_count_as_renewals() {
        let (files, env) = (FakeFiles::default(), FakeEnv::default());
        let mut reader = client(&files, &env, "h1", 1);
        let mut observer = client(&files, &env, "h3", 3);
        assert!(granted(reader.lock(Level::Shared).unwrap()));
        // For two leases, processes of the reader's host take SHARED and die; each time the
        // reader's next edit (an xCheckReservedLock) removes the dead entry. Those edits
        // leave the reader's own entry as it was: observers time its silence by its sequence
        // number, so only a real renewal may keep them from judging it dead.
        let start = env.now();
        let mut pid = 100;
        while env.now() - start < LEASE * 2 {
            let mut doomed = client(&files, &env, "h1", pid);
            assert!(granted(doomed.lock(Level::Shared).unwrap()));
            env.kill(pid);
            pid += 1;
            assert_eq!(reader.reserved_held().unwrap(), Some(false));
            env.advance(Duration::from_millis(50));
            if reader.renewal_due() {
                reader.renew().unwrap();
            }
            let (removed, _) = observer.sweep_stale();
            assert!(
                !removed.iter().any(
                    |r| matches!(r, Removed::Holder { holder, .. } if holder.owner == *reader.owner())
                ),
                "a live reader judged dead: {removed:?}"
            );
        }
        assert_eq!(table_of(&files).level_of(reader.owner()), Level::Shared);
    }

    #[test]
    fn holders_silent_while_a_dead_latch_blocked_them_are_not_judged_stale() {
        let (files, env) = (FakeFiles::default(), FakeEnv::default());
        let mut reader = client(&files, &env, "h2", 2);
        let mut breaker = client(&files, &env, "h3", 3);
        assert!(granted(reader.lock(Level::Shared).unwrap()));
        // The breaker has seen the reader's entry before the latch got stuck.
        assert!(granted(breaker.lock(Level::Shared).unwrap()));
        breaker.unlock(Level::None, false).unwrap();
        breaker.settle(LATCH_WAIT).unwrap();
        // A process of another host died between creating the latch and writing its id.
        files.create_exclusive(LockFileName::Latch, b"").unwrap();
        // Nobody can renew meanwhile; the reader's renewals fail quietly and it fences.
        let start = env.now();
        let mut broken_at = None;
        while env.now() - start < LEASE * 2 && broken_at.is_none() {
            if reader.renewal_due() {
                reader.renew().unwrap();
            }
            if granted(breaker.lock(Level::Shared).unwrap()) {
                broken_at = Some(env.now() - start);
            }
            env.advance(LEASE / 20);
        }
        let broken_at = broken_at.expect("the dead latch is broken");
        assert!(broken_at >= LEASE, "broken after {broken_at:?}");
        assert!(reader.lease_expired());
        let table = table_of(&files);
        assert_eq!(table.latch_breaks, 1);
        assert_eq!(
            table.level_of(reader.owner()),
            Level::Shared,
            "a live reader removed for a silence it could not help"
        );
        // The reader renews as soon as the latch is free, and may read again.
        reader.renew().unwrap();
        assert!(!reader.lease_expired());
    }

    #[test]
    fn a_writer_whose_lease_ran_out_behind_a_dead_latch_confirms_it_still_holds_and_renews() {
        let (files, env) = (FakeFiles::default(), FakeEnv::default());
        let mut writer = client(&files, &env, "h2", 2);
        let mut observer = client(&files, &env, "h3", 3);
        assert!(granted(writer.lock(Level::Shared).unwrap()));
        assert!(granted(writer.lock(Level::Reserved).unwrap()));
        // The observer has timed the writer's entry since before the latch got stuck.
        assert!(granted(observer.lock(Level::Shared).unwrap()));
        assert_eq!(observer.lock(Level::Reserved).unwrap(), Acquired::Busy);
        // A process of another host died between creating the latch and writing its id.
        files.create_exclusive(LockFileName::Latch, b"").unwrap();
        env.advance(LEASE * 3 / 4);
        assert!(writer.lease_expired(), "no renewal could get through");
        // The writer waits the dead latch out itself, finds its entry, and renews it.
        assert!(writer.confirm_held().unwrap());
        assert!(!writer.lease_expired());
        assert_eq!(table_of(&files).level_of(writer.owner()), Level::Reserved);
        // The observer, whose clock ran through the stuck latch, does not take the lock over.
        assert_eq!(observer.lock(Level::Reserved).unwrap(), Acquired::Busy);
        assert_eq!(table_of(&files).level_of(writer.owner()), Level::Reserved);
    }

    #[test]
    fn a_writer_judged_dead_while_stalled_cannot_confirm_its_lock() {
        let (files, env) = (FakeFiles::default(), FakeEnv::default());
        let mut writer = client(&files, &env, "h2", 2);
        let mut other = client(&files, &env, "h1", 3);
        assert!(granted(writer.lock(Level::Shared).unwrap()));
        assert!(granted(writer.lock(Level::Reserved).unwrap()));
        assert!(granted(other.lock(Level::Shared).unwrap()));
        assert_eq!(other.lock(Level::Reserved).unwrap(), Acquired::Busy);
        // The writer stalls for a lease; the other host takes the lock over.
        env.advance(LEASE);
        assert!(granted(other.lock(Level::Reserved).unwrap()));
        assert!(matches!(writer.confirm_held(), Err(LockError::LeaseLost)));
        assert!(writer.lease_expired(), "I/O stays refused");
        assert!(matches!(writer.confirm_held(), Err(LockError::LeaseLost)));
    }

    #[test]
    fn readers_refused_a_hot_journal_rollback_let_go_of_shared_at_once() {
        let (files, env) = (FakeFiles::default(), FakeEnv::default());
        let mut a = client(&files, &env, "h1", 1);
        let mut b = client(&files, &env, "h2", 2);
        // Both find the journal hot and ask for EXCLUSIVE straight from SHARED.
        assert!(granted(a.lock(Level::Shared).unwrap()));
        assert!(granted(b.lock(Level::Shared).unwrap()));
        assert_eq!(a.lock(Level::Exclusive).unwrap(), Acquired::Busy);
        assert_eq!(b.lock(Level::Exclusive).unwrap(), Acquired::Busy);
        // SQLite lets go of SHARED and retries: nothing lingers.
        a.unlock(Level::None, false).unwrap();
        b.unlock(Level::None, false).unwrap();
        assert!(table_of(&files).holders.is_empty());
        // So the first to come back rolls the journal back.
        assert!(granted(a.lock(Level::Shared).unwrap()));
        assert!(granted(a.lock(Level::Exclusive).unwrap()));
    }

    #[test]
    fn a_writer_refused_reserved_lets_go_of_shared_at_once() {
        let (files, env) = (FakeFiles::default(), FakeEnv::default());
        let mut a = client(&files, &env, "h1", 1);
        let mut b = client(&files, &env, "h2", 2);
        assert!(granted(a.lock(Level::Shared).unwrap()));
        assert!(granted(a.lock(Level::Reserved).unwrap()));
        // b is refused RESERVED; SQLite lets go of SHARED and sleeps in its busy handler.
        assert!(granted(b.lock(Level::Shared).unwrap()));
        assert_eq!(b.lock(Level::Reserved).unwrap(), Acquired::Busy);
        b.unlock(Level::None, false).unwrap();
        assert!(!b.release_owed());
        // So nothing of b's keeps a from committing.
        assert_eq!(table_of(&files).level_of(b.owner()), Level::None);
        assert!(granted(a.lock(Level::Exclusive).unwrap()));
    }

    #[test]
    fn latch_left_by_a_dead_process_is_broken() {
        let (files, env) = (FakeFiles::default(), FakeEnv::default());
        let mut next = client(&files, &env, "h1", 2);
        files
            .create_exclusive(LockFileName::Latch, b"h1 1 1 1 7\n")
            .unwrap();
        env.kill(1);
        assert!(granted(next.lock(Level::Shared).unwrap()));
        assert!(files.read(LockFileName::Break).unwrap().is_none());
    }

    #[test]
    fn a_waiter_looks_at_a_live_latch_at_a_pace_set_by_what_a_look_costs() {
        let (files, env) = (FakeFiles::default(), FakeEnv::default());
        let mut waiter = client(&files, &env, "h1", 2);
        files
            .create_exclusive(LockFileName::Latch, b"h2 1 1 1 7\n")
            .unwrap();
        // A fast server: a look every 20 ms of the 500 ms wait.
        assert_eq!(waiter.lock(Level::Shared).unwrap(), Acquired::Busy);
        let fast = files.reads_of(LockFileName::Latch);
        assert!((20..=25).contains(&fast), "{fast} looks on a fast server");
        // A slow one (10 ms a look): eight looks' cost between looks.
        let mut waiter = client(&files, &env, "h1", 3);
        files.slow_reads(&env, Duration::from_millis(10));
        assert_eq!(waiter.lock(Level::Shared).unwrap(), Acquired::Busy);
        let slow = files.reads_of(LockFileName::Latch) - fast;
        assert!((4..=12).contains(&slow), "{slow} looks on a slow server");
        // The holder, on another host, is still judged dead after a lease of silence.
        env.advance(LEASE);
        assert!(granted(waiter.lock(Level::Shared).unwrap()));
    }

    #[test]
    fn latch_we_left_ourselves_is_broken_at_once() {
        // An edit whose latch removal failed (file server down) left our own latch behind;
        // the process is alive, so only recognising ourselves avoids a lease of waiting.
        let (files, env) = (FakeFiles::default(), FakeEnv::default());
        let mut me = client(&files, &env, "h1", 2);
        let other_conn = b"h1 2 1 3 7\n";
        files
            .create_exclusive(LockFileName::Latch, other_conn)
            .unwrap();
        let t0 = env.now();
        assert_eq!(me.lock(Level::Shared).unwrap(), Acquired::Busy);
        assert!(
            env.now() - t0 >= LATCH_WAIT,
            "another connection's latch is live"
        );
        files.remove(LockFileName::Latch).unwrap();
        files
            .create_exclusive(LockFileName::Latch, b"h1 2 1 2 7\n")
            .unwrap();
        let t0 = env.now();
        assert!(granted(me.lock(Level::Shared).unwrap()));
        assert!(env.now() - t0 < LATCH_WAIT, "took {:?}", env.now() - t0);
        assert!(files.read(LockFileName::Latch).unwrap().is_none());
        assert!(files.read(LockFileName::Break).unwrap().is_none());
    }

    #[test]
    fn latch_of_another_host_or_garbage_is_broken_only_after_a_lease() {
        for contents in [&b"h9 1 1 1 7\n"[..], b"\x00garbage", b""] {
            let (files, env) = (FakeFiles::default(), FakeEnv::default());
            let mut next = client(&files, &env, "h1", 2);
            files
                .create_exclusive(LockFileName::Latch, contents)
                .unwrap();
            let t0 = env.now();
            let mut tries = 0;
            while !granted(next.lock(Level::Shared).unwrap()) {
                tries += 1;
                assert!(tries < 1000);
            }
            let waited = env.now() - t0;
            assert!(waited >= LEASE, "broken after {waited:?}");
            assert!(waited < LEASE + 2 * LATCH_WAIT, "took {waited:?}");
        }
    }

    #[test]
    fn unreadable_table_is_replaced_only_after_a_lease_unchanged() {
        let (files, env) = (FakeFiles::default(), FakeEnv::default());
        let mut holder = client(&files, &env, "h1", 1);
        assert!(granted(holder.lock(Level::Shared).unwrap()));
        let garbage = b"\x00\x01garbage".to_vec();
        files.write(LockFileName::Table, &garbage);
        let mut next = client(&files, &env, "h2", 2);
        assert!(matches!(
            next.lock(Level::Shared),
            Err(LockError::Corrupt(_))
        ));
        env.advance(LEASE / 2);
        assert!(matches!(
            next.lock(Level::Shared),
            Err(LockError::Corrupt(_))
        ));
        // The holder cannot renew through it, and fences itself before the lease is out.
        assert!(holder.renew().is_err());
        env.advance(LEASE / 4);
        assert!(holder.lease_expired());
        env.advance(LEASE / 4);
        assert!(granted(next.lock(Level::Shared).unwrap()));
        let table = table_of(&files);
        assert_eq!(table.holders.len(), 1, "only the new holder: {table:?}");
        assert!(table.generation > 1, "a generation no client has cached");
        // Garbage that keeps changing (someone is writing it) is never replaced.
        let mut other = client(&files, &env, "h3", 3);
        for i in 0..4u8 {
            files.write(LockFileName::Table, &[b'x', i]);
            assert!(other.lock(Level::Shared).is_err());
            env.advance(LEASE / 2);
        }
    }

    #[test]
    fn latch_that_changes_hands_is_not_broken() {
        // A breaker that judged contents X stale must not remove a latch that now holds Y.
        let (files, env) = (FakeFiles::default(), FakeEnv::default());
        let mut breaker = client(&files, &env, "h1", 2);
        files
            .create_exclusive(LockFileName::Latch, b"h9 5 1 5 1\n")
            .unwrap();
        let mut contents = b"h9 5 1 5 1\n".to_vec();
        breaker
            .latches
            .break_latch_if_dead(&mut parties!(breaker))
            .unwrap(); // starts watching X
        env.advance(LEASE);
        // X is released and a live holder takes the latch with new contents.
        files.remove(LockFileName::Latch).unwrap();
        let last_digit = contents.len() - 2;
        contents[last_digit] = b'2';
        files
            .create_exclusive(LockFileName::Latch, &contents)
            .unwrap();
        breaker
            .latches
            .break_latch_if_dead(&mut parties!(breaker))
            .unwrap();
        assert_eq!(files.read(LockFileName::Latch).unwrap(), Some(contents));
    }

    #[test]
    fn whether_anybody_holds_reserved_is_unknown_while_the_latch_is_busy() {
        // The table cannot be read under the latch: neither "yes" (read a file a dead writer
        // may have half-written) nor "no" (roll back a live writer's journal) is safe.
        let (files, env) = (FakeFiles::default(), FakeEnv::default());
        let mut reader = client(&files, &env, "h1", 1);
        assert!(granted(reader.lock(Level::Shared).unwrap()));
        files
            .create_exclusive(LockFileName::Latch, b"h9 9 1 9 1\n")
            .unwrap();
        assert_eq!(reader.reserved_held().unwrap(), None);
        files.remove(LockFileName::Latch).unwrap();
        assert_eq!(reader.reserved_held().unwrap(), Some(false));
    }

    #[test]
    fn unlock_that_could_not_be_published_is_settled_later() {
        let (files, env) = (FakeFiles::default(), FakeEnv::default());
        let mut a = client(&files, &env, "h1", 1);
        take_exclusive(&mut a);
        // Somebody else holds the latch throughout the unlock (a live remote process).
        files
            .create_exclusive(LockFileName::Latch, b"h9 9 1 9 1\n")
            .unwrap();
        assert_eq!(
            a.unlock(Level::None, true).unwrap(),
            None,
            "deferred, not an error"
        );
        assert_eq!(a.level(), Level::None);
        assert!(a.release_owed());
        files.remove(LockFileName::Latch).unwrap();
        // The heartbeat settles it: the entry goes and the generation moves on.
        a.settle(LATCH_WAIT).unwrap();
        assert!(!a.release_owed());
        let table = table_of(&files);
        assert!(table.holders.is_empty());
        assert!(table.generation >= 1, "readers must drop their caches");
        assert!(granted(a.lock(Level::Shared).unwrap()));
    }

    #[test]
    fn busy_retries_glance_at_the_table_without_taking_the_latch() {
        let (files, env) = (FakeFiles::default(), FakeEnv::default());
        let mut w = client(&files, &env, "h1", 1);
        let mut r = client(&files, &env, "h1", 2);
        take_exclusive(&mut w);
        assert_eq!(r.lock(Level::Shared).unwrap(), Acquired::Busy);
        // Someone else holds the latch now: a retry that needed it would wait LATCH_WAIT.
        files
            .create_exclusive(LockFileName::Latch, b"h9 9 1 9 1\n")
            .unwrap();
        let t0 = env.now();
        assert_eq!(r.lock(Level::Shared).unwrap(), Acquired::Busy);
        assert!(
            env.now() - t0 < Duration::from_millis(1),
            "retry went for the latch"
        );
        files.remove(LockFileName::Latch).unwrap();
        // The writer dies: the glance suspects it, and the real edit removes it.
        env.kill(1);
        assert!(granted(r.lock(Level::Shared).unwrap()));
    }

    #[test]
    fn corrupt_table_is_a_clear_error() {
        let (files, env) = (FakeFiles::default(), FakeEnv::default());
        files.write(LockFileName::Table, b"\xffnot a table");
        let mut a = client(&files, &env, "h1", 1);
        let err = a.lock(Level::Shared).unwrap_err();
        assert!(err.to_string().contains("fake-netfs-table"), "{err}");
        assert!(
            files.read(LockFileName::Latch).unwrap().is_none(),
            "latch left behind"
        );
    }
}
