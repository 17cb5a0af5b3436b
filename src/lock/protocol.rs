//! The lock protocol: SQLite's five lock levels kept in a lock table that every process reads
//! and rewrites while it holds a short-lived latch (see `files`).
//!
//! This module is pure: it parses and prints the table and decides each transition. It does no
//! I/O and reads no clock, so every rule below is unit-tested without a filesystem.
//!
//! # Transitions (the table as SQLite's `unixLock` states its own)
//!
//! | request            | granted when                                   | otherwise                         |
//! |--------------------|------------------------------------------------|-----------------------------------|
//! | NONE -> SHARED     | no other holder is PENDING or EXCLUSIVE        | BUSY, no level recorded           |
//! | SHARED -> RESERVED | no other holder is RESERVED or above, no other connection heads the writers' queue, and none waits for SHARED | BUSY, stays SHARED |
//! | SHARED -> EXCLUSIVE (a hot-journal rollback) | no other holder at all    | BUSY, no level recorded (as `unixLock`, which takes PENDING only from RESERVED) |
//! | RESERVED -> EXCLUSIVE | no other holder is RESERVED or above, then: no other holder at all | first step fails: BUSY, level kept; second: recorded as PENDING, BUSY |
//! | PENDING -> EXCLUSIVE | no other holder at all                       | BUSY, stays PENDING               |
//! | any -> SHARED      | always (downgrade)                             |                                   |
//! | any -> NONE        | always (the entry is removed)                  |                                   |
//!
//! A connection refused SHARED or RESERVED for a while records itself as a [`Waiter`]
//! ([`LockTable::note_waiting`]) until it is granted what it waits for. Waiting lines do three
//! things:
//! - a writer that kept its entry after its transaction ended reuses it for the next one
//!   only while nobody waits, or in a short burst its holder times (see
//!   [`LockTable::kept_reusable_by`]): every request of another connection starts with
//!   SHARED, and that is what a kept write lock refuses;
//! - the waiters for RESERVED form the writers' queue, in the order they were recorded: while
//!   one waits, nobody else is granted RESERVED ([`LockTable::first_in_writers_queue`]). A
//!   writer's retry lands at a moment its busy handler picks, and without the queue a
//!   writer committing back to back holds RESERVED at almost every such moment;
//! - a waiter for SHARED comes before them all: while one waits, nobody else is granted
//!   RESERVED, so the writer past RESERVED finishes and the waiter gets its moment.
//!
//! Invariants the table keeps after every transition:
//! 1. at most one holder is RESERVED, PENDING or EXCLUSIVE ("the writer");
//! 2. an EXCLUSIVE holder is the only holder;
//! 3. while a holder is PENDING no new SHARED entry is added, so a writer waiting for readers
//!    to drain is not starved;
//! 4. `generation` grows whenever a holder that may have changed the database file leaves
//!    EXCLUSIVE (or is removed as stale), so a reader that sees an unchanged generation knows
//!    its cached pages are still the file's pages.
//!
//! Entries carry a sequence number that the holder changes on every rewrite of its entry
//! (transition or lease renewal). A holder on another host is judged dead when its entry has
//! not changed for a whole lease as measured on the *observer's* clock ([`StaleTracker`]), so
//! wall-clock skew between hosts cannot expire a live lease or prolong a dead one.
//!
//! May use std only: no I/O, no clock.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

/// SQLite's lock levels (`SQLITE_LOCK_*`), in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    None = 0,
    Shared = 1,
    Reserved = 2,
    Pending = 3,
    Exclusive = 4,
}

impl Level {
    /// The level for SQLite's integer code; `None` for a code SQLite never sends.
    pub fn from_sqlite(code: i32) -> Option<Level> {
        Some(match code {
            0 => Level::None,
            1 => Level::Shared,
            2 => Level::Reserved,
            3 => Level::Pending,
            4 => Level::Exclusive,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Level::None => "NONE",
            Level::Shared => "SHARED",
            Level::Reserved => "RESERVED",
            Level::Pending => "PENDING",
            Level::Exclusive => "EXCLUSIVE",
        }
    }

    fn parse(s: &str) -> Option<Level> {
        Some(match s {
            "SHARED" => Level::Shared,
            "RESERVED" => Level::Reserved,
            "PENDING" => Level::Pending,
            "EXCLUSIVE" => Level::Exclusive,
            _ => return None,
        })
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Who holds a lock: one connection of one process on one host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OwnerId {
    /// Host identity (see `owner`): equal strings mean "pids are comparable".
    pub host: String,
    pub pid: u32,
    /// Process start time in the host's own units, so a reused pid is not mistaken for the
    /// holder (0 where the platform does not tell).
    pub start: u64,
    /// Connection number within the process.
    pub conn: u64,
}

impl fmt::Display for OwnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {} {}", self.host, self.pid, self.start, self.conn)
    }
}

impl OwnerId {
    /// Parses the four whitespace-separated fields `Display` writes.
    pub fn parse_fields<'a>(fields: &mut impl Iterator<Item = &'a str>) -> Option<OwnerId> {
        Some(OwnerId {
            host: fields.next()?.to_owned(),
            pid: fields.next()?.parse().ok()?,
            start: fields.next()?.parse().ok()?,
            conn: fields.next()?.parse().ok()?,
        })
    }

    /// A host identity must be one whitespace-free token to fit the table's line format.
    pub fn valid_host(host: &str) -> bool {
        !host.is_empty() && !host.chars().any(|c| c.is_whitespace() || c.is_control())
    }
}

/// One line of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub owner: OwnerId,
    pub level: Level,
    /// Changed by the holder on every rewrite of its entry.
    pub seq: u64,
}

/// A connection that was refused a level and, as far as the table knows, still asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiter {
    pub owner: OwnerId,
    /// The waiter's sequence number when its line was last written, timed for silence as a
    /// holder's (a waiter rewrites its line while it keeps asking).
    pub seq: u64,
    /// SHARED or RESERVED.
    pub wants: Level,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Busy {
    /// The holder that stands in the way (the first one found), or the writer ahead in the
    /// queue.
    pub blocker: OwnerId,
    /// What `blocker` holds: NONE or SHARED for a writer ahead in the queue.
    pub blocker_level: Level,
}

/// The shared lock table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LockTable {
    pub generation: u64,
    /// How many times a dead holder's latch was broken. While a latch is stuck nobody can
    /// renew, so silence before a break is not held against anyone ([`StaleTracker`]).
    pub latch_breaks: u64,
    pub holders: Vec<Holder>,
    pub waiters: Vec<Waiter>,
}

/// The table file could not be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// The bytes end before the checksum line, or the checksum does not match: a read that
    /// raced a rewrite or saw a stale size. Reading again may succeed.
    Incomplete,
    /// Well-formed framing around content this version cannot read.
    Malformed(String),
}

const MAGIC: &str = "sqlite-netfs lock table v1";
/// Tables are padded to a multiple of this, so the file size rarely changes: a client whose
/// attribute cache holds a stale size then still reads the whole table.
pub const TABLE_BLOCK: usize = 4096;

/// FNV-1a, the table's checksum (also how `inspect` tells a token's contents changed).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

impl LockTable {
    /// The file image: text lines, a checksum line, then newline padding to a block multiple
    /// of at least `min_len` bytes (the file never shrinks, see [`TABLE_BLOCK`]).
    pub fn encode(&self, min_len: usize) -> Vec<u8> {
        let mut body = format!(
            "{MAGIC}\ngeneration {}\nlatch-breaks {}\n",
            self.generation, self.latch_breaks
        );
        for h in &self.holders {
            body.push_str(&format!("holder {} {} {}\n", h.owner, h.level, h.seq));
        }
        for w in &self.waiters {
            body.push_str(&format!("waiting {} {} {}\n", w.owner, w.seq, w.wants));
        }
        let sum = fnv1a(body.as_bytes());
        body.push_str(&format!("end {sum:016x}\n"));
        let mut bytes = body.into_bytes();
        let len = bytes.len().max(min_len).div_ceil(TABLE_BLOCK) * TABLE_BLOCK;
        bytes.resize(len, b'\n');
        bytes
    }

    /// Whether a file image is a new table: empty or all padding.
    pub fn is_new(bytes: &[u8]) -> bool {
        bytes.iter().all(|&b| b == b'\n' || b == 0)
    }

    /// Parses a file image. A new file ([`Self::is_new`]) is an empty table at generation 0.
    pub fn decode(bytes: &[u8]) -> Result<LockTable, ParseError> {
        if Self::is_new(bytes) {
            return Ok(LockTable::default());
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|_| ParseError::Malformed("lock table is not UTF-8".into()))?;
        let Some(end_at) = text.find("\nend ") else {
            return Err(ParseError::Incomplete);
        };
        let body = &text[..end_at + 1];
        let Some(sum_line) = text[end_at + 1..].lines().next() else {
            return Err(ParseError::Incomplete);
        };
        let sum_text = sum_line.trim_start_matches("end ").trim();
        if sum_text.len() != 16
            || u64::from_str_radix(sum_text, 16).ok() != Some(fnv1a(body.as_bytes()))
        {
            return Err(ParseError::Incomplete);
        }
        let mut lines = body.lines();
        if lines.next() != Some(MAGIC) {
            return Err(ParseError::Malformed(
                "lock table has an unknown header".into(),
            ));
        }
        let generation = lines
            .next()
            .and_then(|l| l.strip_prefix("generation "))
            .and_then(|g| g.parse().ok())
            .ok_or_else(|| ParseError::Malformed("lock table has no generation".into()))?;
        let mut lines = lines.peekable();
        let latch_breaks = match lines.peek().and_then(|l| l.strip_prefix("latch-breaks ")) {
            Some(n) => {
                let n = n.parse().map_err(|_| {
                    ParseError::Malformed("lock table has a bad latch-breaks line".into())
                })?;
                lines.next();
                n
            }
            None => 0,
        };
        let (mut holders, mut waiters) = (Vec::new(), Vec::new());
        for line in lines {
            let bad = || ParseError::Malformed(format!("bad lock table line: {line:?}"));
            let mut fields = line.split(' ');
            let kind = fields.next();
            if kind != Some("holder") && kind != Some("waiting") {
                return Err(bad());
            }
            let owner = OwnerId::parse_fields(&mut fields).ok_or_else(bad)?;
            if kind == Some("waiting") {
                let seq = fields.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
                // Lines written before waits for RESERVED were recorded name no level.
                let wants = match fields.next() {
                    None => Level::Shared,
                    Some(level) => Level::parse(level)
                        .filter(|l| matches!(l, Level::Shared | Level::Reserved))
                        .ok_or_else(bad)?,
                };
                waiters.push(Waiter { owner, seq, wants });
                continue;
            }
            let level = fields.next().and_then(Level::parse).ok_or_else(bad)?;
            let seq = fields.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
            holders.push(Holder { owner, level, seq });
        }
        Ok(LockTable {
            generation,
            latch_breaks,
            holders,
            waiters,
        })
    }

    /// The level `owner` holds (NONE if absent).
    pub fn level_of(&self, owner: &OwnerId) -> Level {
        self.holders
            .iter()
            .find(|h| &h.owner == owner)
            .map_or(Level::None, |h| h.level)
    }

    fn others<'a>(&'a self, me: &'a OwnerId) -> impl Iterator<Item = &'a Holder> + 'a {
        self.holders.iter().filter(move |h| &h.owner != me)
    }

    fn first_other_at_least(&self, me: &OwnerId, level: Level) -> Option<Busy> {
        self.others(me).find(|h| h.level >= level).map(|h| Busy {
            blocker: h.owner.clone(),
            blocker_level: h.level,
        })
    }

    fn set_level(&mut self, me: &OwnerId, level: Level, seq: u64) {
        match self.holders.iter_mut().find(|h| &h.owner == me) {
            Some(h) => {
                h.level = level;
                h.seq = seq;
            }
            None => self.holders.push(Holder {
                owner: me.clone(),
                level,
                seq,
            }),
        }
    }

    /// Applies a lock request from `me`, writing `seq` into its entry when the table changes.
    /// Returns the level `me` holds afterwards, or `Busy` (the table may still have changed:
    /// a refused EXCLUSIVE leaves `me` at PENDING, as SQLite expects). A grant of what `me`
    /// waits for ends its wait.
    pub fn request(&mut self, me: &OwnerId, want: Level, seq: u64) -> Result<Level, Busy> {
        let result = self.transition(me, want, seq);
        if let Ok(level) = result
            && self.waiter(me).is_some_and(|w| level >= w.wants)
        {
            self.forget_waiter(me);
        }
        result
    }

    /// Records `me` as waiting for `wants` (SHARED or RESERVED), above what it holds. A line
    /// already there is rewritten in place: it keeps its place in the queue, takes `seq`
    /// (its owner still asks) and the higher of the two levels.
    pub fn note_waiting(&mut self, me: &OwnerId, seq: u64, wants: Level) {
        debug_assert!(matches!(wants, Level::Shared | Level::Reserved));
        debug_assert!(
            self.level_of(me) < wants,
            "a holder waits for what it holds"
        );
        match self.waiters.iter_mut().find(|w| &w.owner == me) {
            Some(w) => {
                w.seq = seq;
                w.wants = w.wants.max(wants);
            }
            None => self.waiters.push(Waiter {
                owner: me.clone(),
                seq,
                wants,
            }),
        }
    }

    /// `me`'s waiting line, if the table has one.
    pub fn waiter(&self, me: &OwnerId) -> Option<&Waiter> {
        self.waiters.iter().find(|w| &w.owner == me)
    }

    /// The first waiter for RESERVED in the order the lines were recorded: the only
    /// connection RESERVED may be granted to while it waits.
    pub fn first_in_writers_queue(&self) -> Option<&Waiter> {
        self.waiters.iter().find(|w| w.wants >= Level::Reserved)
    }

    /// How many waiters for RESERVED stand before `me` in the writers' queue (all of them, if
    /// `me` is not in it).
    pub fn writers_ahead_of(&self, me: &OwnerId) -> usize {
        self.waiters
            .iter()
            .take_while(|w| &w.owner != me)
            .filter(|w| w.wants >= Level::Reserved)
            .count()
    }

    /// Whether a fresh request of `me` for RESERVED would find the writer's place free: no
    /// other holder at RESERVED or above, nobody ahead of `me` in the writers' queue.
    pub fn writers_turn(&self, me: &OwnerId) -> bool {
        self.first_other_at_least(me, Level::Reserved).is_none()
            && self.queued_ahead_of(me).is_none()
    }

    /// SHARED for `me` retrying a refused write: granted only where RESERVED, which SQLite
    /// asks for next, would be granted too ([`Self::writers_turn`]). Refusing it at once
    /// spares the table the grant of SHARED, the refusal of RESERVED and the release.
    pub fn request_to_write(&mut self, me: &OwnerId, seq: u64) -> Result<Level, Busy> {
        if let Some(busy) = self
            .first_other_at_least(me, Level::Reserved)
            .or_else(|| self.queued_ahead_of(me))
        {
            return Err(busy);
        }
        self.request(me, Level::Shared, seq)
    }

    /// Refuses `me` the writer's place while another connection waits for SHARED or heads
    /// the writers' queue. A wait for SHARED comes first: it needs only a moment without a
    /// writer past RESERVED, and its owner asks again when SQLite's busy handler wakes it, so
    /// a writer granted RESERVED meanwhile would take that moment away every time. (A writer
    /// refused SHARED by a kept write lock waits for SHARED first, and starved so on kernel NFS.)
    fn queued_ahead_of(&self, me: &OwnerId) -> Option<Busy> {
        self.waiters
            .iter()
            .find(|w| &w.owner != me && w.wants == Level::Shared)
            .or_else(|| self.first_in_writers_queue().filter(|w| &w.owner != me))
            .map(|w| Busy {
                blocker: w.owner.clone(),
                blocker_level: self.level_of(&w.owner),
            })
    }

    /// Removes `me`'s waiter, if any (its connection closes).
    pub fn forget_waiter(&mut self, me: &OwnerId) {
        self.waiters.retain(|w| &w.owner != me);
    }

    /// Whether anybody but `me` is recorded as waiting.
    pub fn others_waiting(&self, me: &OwnerId) -> bool {
        self.waiters.iter().any(|w| &w.owner != me)
    }

    /// Whether `me` is recorded as waiting.
    pub fn is_waiting(&self, me: &OwnerId) -> bool {
        self.waiter(me).is_some()
    }

    /// The transition table above, without the waiters.
    fn transition(&mut self, me: &OwnerId, want: Level, seq: u64) -> Result<Level, Busy> {
        let have = self.level_of(me);
        if want <= have {
            return Ok(have);
        }
        match want {
            Level::None => Ok(have),
            Level::Shared => {
                if let Some(busy) = self.first_other_at_least(me, Level::Pending) {
                    return Err(busy);
                }
                self.set_level(me, Level::Shared, seq);
                Ok(Level::Shared)
            }
            Level::Reserved => {
                debug_assert!(
                    have >= Level::Shared,
                    "RESERVED is only requested from SHARED"
                );
                if let Some(busy) = self.first_other_at_least(me, Level::Reserved) {
                    return Err(busy);
                }
                if let Some(busy) = self.queued_ahead_of(me) {
                    return Err(busy);
                }
                self.set_level(me, Level::Reserved, seq);
                Ok(Level::Reserved)
            }
            Level::Exclusive if have == Level::Shared => {
                // From SHARED straight to EXCLUSIVE is how SQLite rolls back a hot journal.
                // As in unixLock, a refusal records nothing. A PENDING entry would make other
                // readers' xCheckReservedLock answer "a writer owns that journal", and they
                // would read the dead writer's half-written pages instead of rolling them
                // back (the soak's torn reads on sshfs).
                if let Some(busy) = self.first_other_at_least(me, Level::Shared) {
                    return Err(busy);
                }
                self.set_level(me, Level::Exclusive, seq);
                Ok(Level::Exclusive)
            }
            Level::Pending | Level::Exclusive => {
                if have < Level::Pending {
                    // Another writer (RESERVED or above) excludes us; without one, PENDING
                    // is ours and new readers are held off from here on.
                    if let Some(busy) = self.first_other_at_least(me, Level::Reserved) {
                        return Err(busy);
                    }
                    if have < Level::Reserved
                        && let Some(busy) = self.queued_ahead_of(me)
                    {
                        return Err(busy);
                    }
                    self.set_level(me, Level::Pending, seq);
                }
                if want == Level::Pending {
                    return Ok(Level::Pending);
                }
                if let Some(busy) = self.first_other_at_least(me, Level::Shared) {
                    return Err(busy);
                }
                self.set_level(me, Level::Exclusive, seq);
                Ok(Level::Exclusive)
            }
        }
    }

    /// Lowers `me` to `to`: SHARED or NONE when SQLite unlocks, or any level when a holder
    /// brings its entry back to what it knows it holds (an edit that failed after its write
    /// may have recorded a grant the holder never heard of). `changed_file` says whether the
    /// holder may have written the database file since it last published; then the
    /// generation moves on.
    pub fn release(&mut self, me: &OwnerId, to: Level, seq: u64, changed_file: bool) {
        if changed_file {
            self.generation += 1;
        }
        if to == Level::None {
            self.holders.retain(|h| &h.owner != me);
        } else if self.level_of(me) > to {
            self.set_level(me, to, seq);
        }
    }

    /// Rewrites `me`'s sequence number; false if `me` holds nothing (its entry is gone).
    pub fn renew(&mut self, me: &OwnerId, seq: u64) -> bool {
        match self.holders.iter_mut().find(|h| &h.owner == me) {
            Some(h) => {
                h.seq = seq;
                true
            }
            None => false,
        }
    }

    /// Whether `me`'s entry, left at `kept` (SHARED or EXCLUSIVE) after its last transaction
    /// ended, may serve the next one as it is: `me`'s fresh requests from NONE up to `kept`
    /// would be granted (for EXCLUSIVE this holds by invariant 2), and a kept EXCLUSIVE
    /// keeps nobody waiting for SHARED, unless `in_a_burst`: its holder's short burst after
    /// it first saw them waiting is not over (the clock is the holder's).
    pub fn kept_reusable_by(&self, me: &OwnerId, kept: Level, in_a_burst: bool) -> bool {
        (kept == Level::Shared || kept == Level::Exclusive)
            && self.level_of(me) == kept
            && self.first_other_at_least(me, Level::Pending).is_none()
            && (kept == Level::Shared || in_a_burst || !self.others_waiting(me))
    }

    /// Whether anybody (including `me`) holds RESERVED or above.
    pub fn reserved_held(&self) -> bool {
        self.holders.iter().any(|h| h.level >= Level::Reserved)
    }

    /// Removes the holders `is_stale` condemns (never `me`) and returns them. A removed holder
    /// at RESERVED or above may have left a half-written file behind (a hot journal rolls it
    /// back), so the generation moves on and every reader refreshes its caches.
    pub fn remove_stale(
        &mut self,
        me: &OwnerId,
        mut is_stale: impl FnMut(&Holder) -> bool,
    ) -> Vec<Holder> {
        let (stale, live): (Vec<Holder>, Vec<Holder>) = std::mem::take(&mut self.holders)
            .into_iter()
            .partition(|h| &h.owner != me && is_stale(h));
        self.holders = live;
        if stale.iter().any(|h| h.level >= Level::Reserved) {
            self.generation += 1;
        }
        stale
    }

    /// Removes the waiters `is_stale` condemns (never `me`) and returns them. A waiter holds
    /// nothing, so the generation stays.
    pub fn remove_stale_waiters(
        &mut self,
        me: &OwnerId,
        mut is_stale: impl FnMut(&OwnerId, u64) -> bool,
    ) -> Vec<Waiter> {
        let (stale, live): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|w| &w.owner != me && is_stale(&w.owner, w.seq));
        self.waiters = live;
        stale
    }
}

/// Remembers, on the observer's own clock, when each (holder, sequence) pair was first seen,
/// so a holder whose entry stops changing for a whole lease can be judged dead.
#[derive(Debug, Default)]
pub struct StaleTracker {
    first_seen: HashMap<(OwnerId, u64), Duration>,
    /// The table's `latch_breaks` these observations were made under.
    latch_breaks: u64,
}

impl StaleTracker {
    /// Starts every observation afresh once a latch was broken: while it was stuck, live
    /// holders could not renew, and their silence says nothing.
    pub fn observe(&mut self, table: &LockTable) {
        if table.latch_breaks != self.latch_breaks {
            self.first_seen.clear();
            self.latch_breaks = table.latch_breaks;
        }
    }

    /// True once `owner`'s entry has shown `seq` for at least `lease` since this observer
    /// first saw it. `now` is the observer's monotonic clock.
    pub fn unchanged_for(
        &mut self,
        owner: &OwnerId,
        seq: u64,
        now: Duration,
        lease: Duration,
    ) -> bool {
        let first = *self.first_seen.entry((owner.clone(), seq)).or_insert(now);
        now.saturating_sub(first) >= lease
    }

    /// Forgets observations of entries (holders and waiters) no longer in the table.
    pub fn retain_current(&mut self, table: &LockTable) {
        self.first_seen.retain(|(owner, seq), _| {
            let holder = |h: &Holder| &h.owner == owner && h.seq == *seq;
            let waiter = |w: &Waiter| &w.owner == owner && w.seq == *seq;
            table.holders.iter().any(holder) || table.waiters.iter().any(waiter)
        });
    }

    /// Observation count.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.first_seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(host: &str, conn: u64) -> OwnerId {
        OwnerId {
            host: host.into(),
            pid: 100 + conn as u32,
            start: 7,
            conn,
        }
    }

    #[test]
    fn many_readers_share() {
        let mut t = LockTable::default();
        for c in 0..5 {
            assert_eq!(
                t.request(&owner("a", c), Level::Shared, 1),
                Ok(Level::Shared)
            );
        }
        assert_eq!(t.holders.len(), 5);
        assert!(!t.reserved_held());
    }

    #[test]
    fn one_reserved_writer_beside_readers() {
        let (a, b, c) = (owner("a", 1), owner("b", 2), owner("a", 3));
        let mut t = LockTable::default();
        for o in [&a, &b, &c] {
            t.request(o, Level::Shared, 1).unwrap();
        }
        assert_eq!(t.request(&a, Level::Reserved, 2), Ok(Level::Reserved));
        let busy = t.request(&b, Level::Reserved, 2).unwrap_err();
        assert_eq!(busy.blocker, a);
        assert_eq!(t.level_of(&b), Level::Shared);
        // New readers still get in beside a RESERVED writer.
        assert_eq!(
            t.request(&owner("c", 9), Level::Shared, 1),
            Ok(Level::Shared)
        );
        assert!(t.reserved_held());
    }

    #[test]
    fn pending_stops_new_readers_and_exclusive_waits_for_old_ones() {
        let (w, r) = (owner("a", 1), owner("b", 2));
        let mut t = LockTable::default();
        t.request(&w, Level::Shared, 1).unwrap();
        t.request(&r, Level::Shared, 1).unwrap();
        t.request(&w, Level::Reserved, 2).unwrap();
        // The reader is still there: EXCLUSIVE is refused but PENDING is recorded.
        let busy = t.request(&w, Level::Exclusive, 3).unwrap_err();
        assert_eq!(busy.blocker, r);
        assert_eq!(t.level_of(&w), Level::Pending);
        // A newcomer cannot start reading while the writer is PENDING.
        let newcomer = owner("c", 3);
        assert_eq!(
            t.request(&newcomer, Level::Shared, 1).unwrap_err().blocker,
            w
        );
        assert_eq!(t.level_of(&newcomer), Level::None);
        // The old reader leaves; the writer gets EXCLUSIVE and is alone.
        t.release(&r, Level::None, 2, false);
        assert_eq!(t.request(&w, Level::Exclusive, 4), Ok(Level::Exclusive));
        assert_eq!(t.holders.len(), 1);
        // Nobody else gets in while EXCLUSIVE is held.
        assert!(t.request(&newcomer, Level::Shared, 1).is_err());
    }

    #[test]
    fn exclusive_from_shared_is_refused_while_another_writer_is_reserved() {
        // The hot-journal path asks SHARED -> EXCLUSIVE; it must not take PENDING from under
        // a RESERVED writer (that writer could then never commit).
        let (w, x) = (owner("a", 1), owner("b", 2));
        let mut t = LockTable::default();
        t.request(&w, Level::Shared, 1).unwrap();
        t.request(&w, Level::Reserved, 2).unwrap();
        t.request(&x, Level::Shared, 1).unwrap();
        assert_eq!(t.request(&x, Level::Exclusive, 2).unwrap_err().blocker, w);
        assert_eq!(t.level_of(&x), Level::Shared);
    }

    #[test]
    fn a_refused_hot_journal_rollback_records_nothing_so_other_readers_see_the_journal_hot() {
        // A writer died mid-commit. Reader x took SHARED and found its journal hot; reader y
        // took SHARED too and asks whether anybody holds RESERVED before it trusts the file.
        let (x, y) = (owner("a", 1), owner("b", 2));
        let mut t = LockTable::default();
        t.request(&x, Level::Shared, 1).unwrap();
        t.request(&y, Level::Shared, 1).unwrap();
        assert_eq!(t.request(&x, Level::Exclusive, 2).unwrap_err().blocker, y);
        assert_eq!(t.level_of(&x), Level::Shared);
        assert!(
            !t.reserved_held(),
            "a reader waiting to roll back must not pass for the journal's live writer"
        );
        // Once alone, the rollback gets EXCLUSIVE.
        t.release(&y, Level::None, 2, false);
        assert_eq!(t.request(&x, Level::Exclusive, 3), Ok(Level::Exclusive));
    }

    #[test]
    fn release_to_shared_and_none_and_generation() {
        let w = owner("a", 1);
        let mut t = LockTable::default();
        t.request(&w, Level::Shared, 1).unwrap();
        t.request(&w, Level::Reserved, 2).unwrap();
        t.request(&w, Level::Exclusive, 3).unwrap();
        t.release(&w, Level::Shared, 4, true);
        assert_eq!(t.level_of(&w), Level::Shared);
        assert_eq!(t.generation, 1);
        t.release(&w, Level::None, 5, false);
        assert_eq!(t.level_of(&w), Level::None);
        assert_eq!(t.generation, 1);
        assert!(t.holders.is_empty());
    }

    #[test]
    fn invariants_hold_under_every_request_sequence() {
        // Exhaustive over short sequences of (owner, action) from three owners.
        let owners = [owner("a", 1), owner("a", 2), owner("b", 3)];
        let actions = [
            Level::None,
            Level::Shared,
            Level::Reserved,
            Level::Exclusive,
        ];
        // Each action, plus a release to SHARED and a lowering to RESERVED.
        let n = owners.len() * (actions.len() + 2);
        // From an empty table, and from one where a writer holds RESERVED while another
        // heads the writers' queue (five steps from empty could not reach a third
        // connection trying to pass the head).
        let mut queued = LockTable::default();
        queued.request(&owners[2], Level::Shared, 0).unwrap();
        queued.request(&owners[2], Level::Reserved, 0).unwrap();
        queued.note_waiting(&owners[0], 0, Level::Reserved);
        let mut count = 0;
        for (code, start) in
            (0..n.pow(5)).flat_map(|c| [(c, LockTable::default()), (c, queued.clone())])
        {
            let mut t = start;
            let mut c = code;
            for step in 0..5 {
                let pick = c % n;
                c /= n;
                let o = &owners[pick / (actions.len() + 2)];
                let a = pick % (actions.len() + 2);
                let have = t.level_of(o);
                if a == actions.len() {
                    t.release(o, Level::Shared.min(have), step, false);
                } else if a == actions.len() + 1 {
                    t.release(o, Level::Reserved.min(have), step, have >= Level::Reserved);
                } else if actions[a] == Level::None {
                    t.release(o, Level::None, step, false);
                } else if actions[a] == Level::Reserved && have != Level::Shared {
                    continue; // SQLite asks RESERVED only from SHARED
                } else if actions[a] == Level::Exclusive && have == Level::None {
                    continue; // and EXCLUSIVE only with a lock held
                } else {
                    let head = t.first_in_writers_queue().map(|w| w.owner.clone());
                    let reader_waits = t
                        .waiters
                        .iter()
                        .any(|w| &w.owner != o && w.wants == Level::Shared);
                    // A hot-journal rollback (SHARED straight to EXCLUSIVE) passes the queue.
                    let rollback = have == Level::Shared && actions[a] == Level::Exclusive;
                    match t.request(o, actions[a], step) {
                        Ok(level)
                            if level >= Level::Reserved && have < Level::Reserved && !rollback =>
                        {
                            assert!(
                                head.as_ref().is_none_or(|h| h == o),
                                "{o} took the writer's place ahead of {head:?}: {t:?}"
                            );
                            assert!(
                                !reader_waits,
                                "{o} took the writer's place while another waits for SHARED: {t:?}"
                            );
                        }
                        Ok(_) => {}
                        Err(_) if actions[a] == Level::Shared => {
                            t.note_waiting(o, step, Level::Shared);
                        }
                        // SQLite's busy handler lets go of SHARED before it sleeps.
                        Err(_) if actions[a] == Level::Reserved => {
                            t.release(o, Level::None, step, false);
                            t.note_waiting(o, step, Level::Reserved);
                        }
                        Err(_) => {}
                    }
                }
                let writers = t
                    .holders
                    .iter()
                    .filter(|h| h.level >= Level::Reserved)
                    .count();
                assert!(writers <= 1, "two writers: {t:?}");
                if t.holders.iter().any(|h| h.level == Level::Exclusive) {
                    assert_eq!(t.holders.len(), 1, "EXCLUSIVE not alone: {t:?}");
                }
                // A kept entry is reused only where fresh requests would be granted, and,
                // outside its holder's burst, only while nobody waits for a level it stands in
                // the way of. In a burst it passes waiting lines, never a holder.
                for (o, in_a_burst) in owners.iter().flat_map(|o| [(o, false), (o, true)]) {
                    let kept = t.level_of(o);
                    if !t.kept_reusable_by(o, kept, in_a_burst) {
                        continue;
                    }
                    let mut fresh = t.clone();
                    fresh.release(o, Level::None, 99, false);
                    if in_a_burst {
                        fresh.waiters.clear();
                    }
                    for level in [Level::Shared, Level::Reserved, Level::Exclusive] {
                        if level <= kept {
                            assert!(
                                fresh.request(o, level, 99).is_ok(),
                                "{o} reused {kept} where a fresh {level} would wait: {t:?}"
                            );
                        }
                    }
                    for w in t.waiters.iter().filter(|w| &w.owner != o && !in_a_burst) {
                        let mut fresh = t.clone();
                        assert!(
                            fresh.request(&w.owner, Level::Shared, 99).is_ok(),
                            "{o} reused {kept} while {} waits for SHARED: {t:?}",
                            w.owner
                        );
                    }
                }
                // A grant of what was waited for ends the wait.
                for w in &t.waiters {
                    assert!(t.level_of(&w.owner) < w.wants, "a holder waits: {t:?}");
                }
                count += 1;
            }
        }
        assert!(count > 200_000);
    }

    #[test]
    fn encode_decode_round_trip_and_padding() {
        let mut t = LockTable {
            generation: 42,
            latch_breaks: 3,
            ..LockTable::default()
        };
        t.request(&owner("host-a/1f2e", 1), Level::Shared, 9)
            .unwrap();
        t.request(&owner("b", 2), Level::Shared, 3).unwrap();
        t.request(&owner("b", 2), Level::Reserved, 4).unwrap();
        t.request(&owner("b", 2), Level::Exclusive, 5).unwrap_err();
        t.request(&owner("c", 3), Level::Shared, 6).unwrap_err();
        t.note_waiting(&owner("c", 3), 6, Level::Shared);
        t.note_waiting(&owner("d", 4), 7, Level::Reserved);
        assert_eq!(t.waiters.len(), 2);
        let bytes = t.encode(0);
        assert_eq!(bytes.len(), TABLE_BLOCK);
        assert_eq!(LockTable::decode(&bytes), Ok(t.clone()));
        // Never shrinks below what the file already had.
        assert_eq!(t.encode(3 * TABLE_BLOCK).len(), 3 * TABLE_BLOCK);
    }

    #[test]
    fn decode_empty_is_new_table_and_torn_is_incomplete() {
        assert_eq!(LockTable::decode(b""), Ok(LockTable::default()));
        assert_eq!(LockTable::decode(b"\n\n\n"), Ok(LockTable::default()));
        let mut t = LockTable::default();
        t.request(&owner("a", 1), Level::Shared, 1).unwrap();
        let bytes = t.encode(0);
        let body_len = bytes.iter().rposition(|&b| b != b'\n').unwrap();
        // Cut anywhere inside the text: never accepted as a (smaller) table.
        for cut in 1..body_len {
            assert_eq!(
                LockTable::decode(&bytes[..cut]),
                Err(ParseError::Incomplete),
                "cut at {cut}"
            );
        }
        // A flipped byte in a holder line fails the checksum.
        let mut flipped = bytes.clone();
        let at = String::from_utf8_lossy(&bytes).find("SHARED").unwrap();
        flipped[at] = b'X';
        assert_eq!(LockTable::decode(&flipped), Err(ParseError::Incomplete));
    }

    #[test]
    fn reserved_goes_to_the_writers_queue_in_the_order_waits_were_recorded() {
        let (a, b, c) = (owner("a", 1), owner("b", 2), owner("c", 3));
        let mut t = LockTable::default();
        t.request(&a, Level::Shared, 1).unwrap();
        t.request(&a, Level::Reserved, 2).unwrap();
        // b, then c, are refused RESERVED and wait for it holding nothing.
        for (o, seq) in [(&b, 1), (&c, 1)] {
            t.request(o, Level::Shared, seq).unwrap();
            t.request(o, Level::Reserved, seq + 1).unwrap_err();
            t.release(o, Level::None, seq + 2, false);
            t.note_waiting(o, seq + 2, Level::Reserved);
        }
        t.release(&a, Level::None, 3, true);
        // a comes back first, and c before b: neither passes b.
        t.request(&a, Level::Shared, 4).unwrap();
        let busy = t.request(&a, Level::Reserved, 5).unwrap_err();
        assert_eq!(busy.blocker, b);
        t.release(&a, Level::None, 6, false);
        t.request(&c, Level::Shared, 4).unwrap();
        assert_eq!(t.request(&c, Level::Reserved, 5).unwrap_err().blocker, b);
        // b is granted; its line goes, and c heads the queue now.
        t.request(&b, Level::Shared, 4).unwrap();
        assert!(t.is_waiting(&b), "SHARED is not what b waits for");
        t.request(&b, Level::Reserved, 5).unwrap();
        assert!(!t.is_waiting(&b));
        assert_eq!(t.first_in_writers_queue().unwrap().owner, c);
        // Readers are never held up by the queue.
        t.request(&a, Level::Shared, 7).unwrap();
    }

    #[test]
    fn a_rewritten_waiting_line_keeps_its_place_and_the_higher_level() {
        let (b, c) = (owner("b", 2), owner("c", 3));
        let mut t = LockTable::default();
        t.note_waiting(&b, 1, Level::Shared);
        t.note_waiting(&c, 1, Level::Reserved);
        t.note_waiting(&b, 2, Level::Reserved);
        t.note_waiting(&b, 3, Level::Shared);
        let first = t.first_in_writers_queue().unwrap();
        assert_eq!(
            (&first.owner, first.seq, first.wants),
            (&b, 3, Level::Reserved)
        );
    }

    #[test]
    fn a_waiting_line_without_a_level_waits_for_shared() {
        let mut t = LockTable::default();
        t.note_waiting(&owner("c", 3), 6, Level::Shared);
        let text = String::from_utf8(t.encode(0)).unwrap();
        let body = text
            .split("end ")
            .next()
            .unwrap()
            .replace(" 6 SHARED\n", " 6\n");
        let bytes = format!("{body}end {:016x}\n", fnv1a(body.as_bytes()));
        assert_eq!(LockTable::decode(bytes.as_bytes()), Ok(t));
        let bad = body.replace(" 6\n", " 6 EXCLUSIVE\n");
        let bytes = format!("{bad}end {:016x}\n", fnv1a(bad.as_bytes()));
        assert!(matches!(
            LockTable::decode(bytes.as_bytes()),
            Err(ParseError::Malformed(_))
        ));
    }

    #[test]
    fn decode_rejects_garbage() {
        assert!(matches!(
            LockTable::decode(b"\x00\x01garbage\xff"),
            Err(ParseError::Malformed(_))
        ));
        assert_eq!(
            LockTable::decode(b"hello world\nno end line"),
            Err(ParseError::Incomplete)
        );
    }

    #[test]
    fn remove_stale_bumps_generation_only_for_writers() {
        let (me, r, w) = (owner("a", 1), owner("b", 2), owner("b", 3));
        let mut t = LockTable::default();
        t.request(&me, Level::Shared, 1).unwrap();
        t.request(&r, Level::Shared, 1).unwrap();
        let gone = t.remove_stale(&me, |h| h.owner == r);
        assert_eq!(gone.len(), 1);
        assert_eq!(t.generation, 0);
        t.request(&w, Level::Shared, 1).unwrap();
        t.request(&w, Level::Reserved, 2).unwrap();
        // `me` is never judged, even by a policy that condemns everyone.
        let gone = t.remove_stale(&me, |_| true);
        assert_eq!(gone.len(), 1);
        assert_eq!(t.generation, 1);
        assert_eq!(t.level_of(&me), Level::Shared);
    }

    #[test]
    fn stale_tracker_measures_on_the_observer_clock() {
        let o = owner("b", 1);
        let lease = Duration::from_secs(10);
        let mut s = StaleTracker::default();
        let t0 = Duration::from_secs(1000);
        assert!(!s.unchanged_for(&o, 5, t0, lease));
        assert!(!s.unchanged_for(&o, 5, t0 + Duration::from_secs(9), lease));
        // The holder renewed: a new sequence restarts the observation.
        assert!(!s.unchanged_for(&o, 6, t0 + Duration::from_secs(9), lease));
        assert!(!s.unchanged_for(&o, 6, t0 + Duration::from_secs(18), lease));
        assert!(s.unchanged_for(&o, 6, t0 + Duration::from_secs(19), lease));
        let mut t = LockTable::default();
        t.request(&o, Level::Shared, 6).unwrap();
        s.retain_current(&t);
        assert_eq!(s.len(), 1);
    }
}
