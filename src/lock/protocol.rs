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
//! | NONE -> SHARED     | no other holder is PENDING or EXCLUSIVE        | BUSY, nothing recorded            |
//! | SHARED -> RESERVED | no other holder is RESERVED or above           | BUSY, stays SHARED                |
//! | SHARED -> EXCLUSIVE (a hot-journal rollback) | no other holder at all    | BUSY, nothing recorded (as `unixLock`, which takes PENDING only from RESERVED) |
//! | RESERVED -> EXCLUSIVE | no other holder is RESERVED or above, then: no other holder at all | first step fails: BUSY, level kept; second: recorded as PENDING, BUSY |
//! | PENDING -> EXCLUSIVE | no other holder at all                       | BUSY, stays PENDING               |
//! | any -> SHARED      | always (downgrade)                             |                                   |
//! | any -> NONE        | always (the entry is removed)                  |                                   |
//!
//! Besides holders, the table keeps waiter lines, oldest first: a refused NONE -> SHARED or
//! SHARED -> RESERVED adds one for its owner (or raises the owner's line in place). A holder
//! that keeps EXCLUSIVE across transactions (see `DbLock`) gives way when it sees a line of
//! another owner. Lines also order the turns:
//!
//! | request | also refused while | the line afterwards |
//! |---|---|---|
//! | SHARED -> RESERVED | another owner's line still asking (SHARED or RESERVED) stands before ours | granted: removed |
//! | RESERVED -> PENDING (the first step to EXCLUSIVE) | another owner's line asks for SHARED | |
//! | NONE -> SHARED | | granted: kept in place as served (NONE), for the RESERVED a writer asks next; gone with the owner's NONE |
//!
//! A line is dropped by observers once unchanged for a while on their own clock (its owner
//! rewrites it while it waits), or at once if its owner's process is gone.
//!
//! Invariants the table keeps after every transition:
//! 1. at most one holder is RESERVED, PENDING or EXCLUSIVE ("the writer");
//! 2. an EXCLUSIVE holder is the only holder;
//! 3. while a holder is PENDING no new SHARED entry is added, so a writer waiting for readers
//!    to drain is not starved;
//! 4. `generation` grows whenever a holder that may have changed the database file leaves
//!    EXCLUSIVE (or is removed as stale), so a reader that sees an unchanged generation knows
//!    its cached pages are still the file's pages; a kept EXCLUSIVE leaves it when given up;
//! 5. a lingering SHARED entry is reused only where a fresh SHARED request would be granted;
//! 6. a kept EXCLUSIVE is reused only where a fresh SHARED, RESERVED and EXCLUSIVE would all
//!    be granted but for the waiter lines; given 2 this holds wherever our entry is
//!    EXCLUSIVE, and the model checks it as a cross-check of `request` against 2. When the
//!    lines go first (the keeper's turn and span) is a matter of time, outside the table:
//!    `DbLock`'s tests check it;
//! 7. RESERVED is never granted past an earlier line of another owner still asking;
//! 8. no new PENDING while another owner's line asks for SHARED, so a reader refused by one
//!    writer gets its turn before the next writer shuts readers out.
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

/// A refused request waiting for its turn: a `waiter` line of the table. Lines keep the order
/// in which requests were first refused, which is the order writers get RESERVED in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiter {
    pub owner: OwnerId,
    /// What was refused: SHARED (from NONE) or RESERVED (from SHARED). NONE once a refused
    /// SHARED was granted: the line keeps its place for the RESERVED a writer asks next, but
    /// no longer asks anything of anyone.
    pub level: Level,
    /// Changed by the waiter when it shows it still waits (see `DbLock`); a line that stays
    /// unchanged too long is dropped.
    pub seq: u64,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Busy {
    /// The holder that stands in the way (the first one found).
    pub blocker: OwnerId,
    /// Its level; NONE for a waiter whose turn comes first.
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
    /// Refused requests, oldest first. A table written before waiters existed has none.
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
            body.push_str(&format!("waiter {} {} {}\n", w.owner, w.level, w.seq));
        }
        let sum = fnv1a(body.as_bytes());
        body.push_str(&format!("end {sum:016x}\n"));
        let mut bytes = body.into_bytes();
        let len = bytes.len().max(min_len).div_ceil(TABLE_BLOCK) * TABLE_BLOCK;
        bytes.resize(len, b'\n');
        bytes
    }

    /// Parses a file image. An empty or all-padding file is a new, empty table.
    pub fn decode(bytes: &[u8]) -> Result<LockTable, ParseError> {
        if bytes.iter().all(|&b| b == b'\n' || b == 0) {
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
        let mut holders = Vec::new();
        let mut waiters = Vec::new();
        for line in lines {
            let bad = || ParseError::Malformed(format!("bad lock table line: {line:?}"));
            let mut fields = line.split(' ');
            let kind = fields.next();
            if kind != Some("holder") && kind != Some("waiter") {
                return Err(bad());
            }
            let owner = OwnerId::parse_fields(&mut fields).ok_or_else(bad)?;
            let level = match fields.next() {
                Some("NONE") if kind == Some("waiter") => Some(Level::None),
                level => level.and_then(Level::parse),
            }
            .ok_or_else(bad)?;
            let seq = fields.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
            if kind == Some("holder") {
                holders.push(Holder { owner, level, seq });
            } else {
                waiters.push(Waiter { owner, level, seq });
            }
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
    /// a refused EXCLUSIVE leaves `me` at PENDING, as SQLite expects).
    ///
    /// A refused SHARED (from NONE) or RESERVED (from SHARED) is recorded as a waiter line
    /// (see [`Self::wait_in_line`]). A granted SHARED leaves the line in place as served; a
    /// granted RESERVED or more removes it.
    pub fn request(&mut self, me: &OwnerId, want: Level, seq: u64) -> Result<Level, Busy> {
        let have = self.level_of(me);
        if want <= have {
            return Ok(have);
        }
        let result = self.decide(me, have, want, seq);
        match &result {
            Ok(got) if *got >= Level::Reserved => self.stop_waiting(me),
            Ok(_) => {
                if let Some(w) = self.waiters.iter_mut().find(|w| &w.owner == me) {
                    w.level = Level::None;
                }
            }
            Err(_)
                if matches!(
                    (have, want),
                    (Level::None, Level::Shared) | (Level::Shared, Level::Reserved)
                ) =>
            {
                self.wait_in_line(me, want, seq)
            }
            Err(_) => {}
        }
        result
    }

    /// Records that `me` was refused `want`: a new line at the end, or its old line (kept in
    /// place) raised to `want`.
    fn wait_in_line(&mut self, me: &OwnerId, want: Level, seq: u64) {
        match self.waiters.iter_mut().find(|w| &w.owner == me) {
            Some(w) if w.level >= want => {}
            Some(w) => {
                w.level = want;
                w.seq = seq;
            }
            None => self.waiters.push(Waiter {
                owner: me.clone(),
                level: want,
                seq,
            }),
        }
    }

    /// The first waiter of another owner still wanting `level` or more that stands before
    /// `me`'s own line (before every line if `me` has none).
    fn waiter_ahead(&self, me: &OwnerId, level: Level) -> Option<Busy> {
        self.waiters
            .iter()
            .take_while(|w| &w.owner != me)
            .find(|w| w.level >= level)
            .map(|w| Busy {
                blocker: w.owner.clone(),
                blocker_level: Level::None,
            })
    }

    /// The transition table, once `want > have`.
    fn decide(&mut self, me: &OwnerId, have: Level, want: Level, seq: u64) -> Result<Level, Busy> {
        match want {
            Level::None => Ok(have),
            Level::Shared => {
                if let Some(busy) = self.shared_blocker(me) {
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
                // Writers take turns in the order they were refused. A refused SHARED ahead
                // counts too: it may be a writer's first step, and a reader's costs one retry.
                if let Some(busy) = self.waiter_ahead(me, Level::Shared) {
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
                    // A reader refused while the last writer held PENDING or EXCLUSIVE gets
                    // its SHARED before the next writer shuts readers out again.
                    if let Some(w) = self
                        .waiters
                        .iter()
                        .find(|w| &w.owner != me && w.level == Level::Shared)
                    {
                        return Err(Busy {
                            blocker: w.owner.clone(),
                            blocker_level: Level::None,
                        });
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
            // A reader's served place in the queue goes with it; a refused RESERVED stays.
            self.waiters
                .retain(|w| &w.owner != me || w.level != Level::None);
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

    /// Whether `me`'s SHARED entry, left in place after its last read transaction, may serve
    /// the next one as it is: exactly what a fresh SHARED request would be granted, with the
    /// table unchanged.
    pub fn shared_reusable_by(&self, me: &OwnerId) -> bool {
        self.level_of(me) == Level::Shared && self.shared_blocker(me).is_none()
    }

    /// What keeps `me` from SHARED: a writer at PENDING or above.
    fn shared_blocker(&self, me: &OwnerId) -> Option<Busy> {
        self.first_other_at_least(me, Level::Pending)
    }

    /// Whether `me`'s line asks RESERVED and RESERVED would still be refused (a holder at
    /// RESERVED or above, or an earlier line still asking).
    pub fn reserved_turn_not_yet(&self, me: &OwnerId) -> bool {
        self.waiters
            .iter()
            .any(|w| &w.owner == me && w.level >= Level::Reserved)
            && (self.first_other_at_least(me, Level::Reserved).is_some()
                || self.waiter_ahead(me, Level::Shared).is_some())
    }

    /// Whether anybody but `me` holds RESERVED or above.
    pub fn reserved_held_by_other(&self, me: &OwnerId) -> bool {
        self.first_other_at_least(me, Level::Reserved).is_some()
    }

    /// Whether another owner waits for a turn: a holder keeping its lock gives way.
    pub fn asked_by_other(&self, me: &OwnerId) -> bool {
        self.waiters
            .iter()
            .any(|w| &w.owner != me && w.level > Level::None)
    }

    /// Whether `me` is first in line, still asking, and kept from its turn only by a holder:
    /// its turn comes as soon as that holder leaves.
    pub fn first_in_line_behind_a_holder(&self, me: &OwnerId) -> bool {
        let Some(line) = self.waiters.iter().find(|w| &w.owner == me) else {
            return false;
        };
        let in_the_way = match line.level {
            Level::None => return false,
            Level::Shared => Level::Pending,
            _ => Level::Reserved,
        };
        self.waiter_ahead(me, Level::Shared).is_none()
            && self.first_other_at_least(me, in_the_way).is_some()
    }

    /// Whether `me`'s EXCLUSIVE entry, kept after its last write transaction, may serve the
    /// next one as it is: it is still there, so nobody else holds anything. Whether others in
    /// line go first is a matter of time, not of the table: the keeper's turn
    /// (`super::KEEP_TURN`) or, once it is over, their lines.
    pub fn kept_by(&self, me: &OwnerId) -> bool {
        self.level_of(me) == Level::Exclusive
    }

    /// Rewrites `me`'s waiter line's sequence number (it still waits); false if it has none.
    pub fn renew_waiter(&mut self, me: &OwnerId, seq: u64) -> bool {
        match self.waiters.iter_mut().find(|w| &w.owner == me) {
            Some(w) => {
                w.seq = seq;
                true
            }
            None => false,
        }
    }

    /// Removes `me`'s waiter line (its connection goes away).
    pub fn stop_waiting(&mut self, me: &OwnerId) {
        self.waiters.retain(|w| &w.owner != me);
    }

    /// Removes the waiter lines `is_stale` condemns (never `me`'s) and returns them. A waiter
    /// is only a place in the queue: removing one changes no data and no generation.
    pub fn remove_stale_waiters(
        &mut self,
        me: &OwnerId,
        mut is_stale: impl FnMut(&Waiter) -> bool,
    ) -> Vec<Waiter> {
        let (stale, live): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|w| &w.owner != me && is_stale(w));
        self.waiters = live;
        stale
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

    /// Forgets observations of entries that are no longer in the table.
    pub fn retain_current(&mut self, table: &LockTable) {
        self.first_seen.retain(|(owner, seq), _| {
            table
                .holders
                .iter()
                .any(|h| &h.owner == owner && h.seq == *seq)
        });
    }

    /// Forgets observations of waiter lines that are no longer in the table.
    pub fn retain_current_waiters(&mut self, table: &LockTable) {
        self.first_seen.retain(|(owner, seq), _| {
            table
                .waiters
                .iter()
                .any(|w| &w.owner == owner && w.seq == *seq)
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
        assert!(!t.reserved_held_by_other(&owner("z", 99)));
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
        assert!(t.reserved_held_by_other(&owner("z", 99)));
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
            !t.reserved_held_by_other(&owner("z", 99)),
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

    /// The steps of the exhaustive test: what one owner may do next.
    #[derive(Debug, Clone, Copy)]
    enum Step {
        /// A lock request, as SQLite makes them (RESERVED only from SHARED, EXCLUSIVE only
        /// with a lock held).
        Request(Level),
        /// An unlock published at once: to NONE, SHARED or (an owed release) RESERVED.
        Release(Level),
        /// A kept EXCLUSIVE given up (the holder yields or was idle): published with the
        /// generation bump its transactions owe.
        Yield,
        /// A kept EXCLUSIVE serving the next write transaction without an edit, if allowed.
        ReuseKept,
        /// A waiter line dropped after standing unchanged too long.
        WaiterGone,
    }

    const STEPS: [Step; 9] = [
        Step::Request(Level::Shared),
        Step::Request(Level::Reserved),
        Step::Request(Level::Exclusive),
        Step::Release(Level::None),
        Step::Release(Level::Shared),
        Step::Release(Level::Reserved),
        Step::Yield,
        Step::ReuseKept,
        Step::WaiterGone,
    ];

    /// Applies `step` by `o`; false if SQLite would never ask it in that state.
    fn apply(t: &mut LockTable, o: &OwnerId, step: Step, seq: u64) -> bool {
        let have = t.level_of(o);
        match step {
            Step::Request(Level::Reserved) if have != Level::Shared => return false,
            Step::Request(Level::Exclusive) if have == Level::None => return false,
            Step::Request(want) => {
                let _ = t.request(o, want, seq);
            }
            // A writer's release moves the generation on (it may have written).
            Step::Release(to) => t.release(o, to.min(have), seq, have >= Level::Reserved),
            Step::Yield if have != Level::Exclusive => return false,
            Step::Yield => t.release(o, Level::None, seq, true),
            Step::ReuseKept => {
                if !t.kept_by(o) {
                    return false;
                }
                // Reused: nothing is written.
            }
            Step::WaiterGone => {
                if t.remove_stale_waiters(&owner("observer", 0), |w| &w.owner == o)
                    .is_empty()
                {
                    return false;
                }
            }
        }
        true
    }

    #[test]
    fn invariants_hold_under_every_request_sequence() {
        // Exhaustive over short sequences of (owner, step) from three owners.
        let owners = [owner("a", 1), owner("a", 2), owner("b", 3)];
        let n = owners.len() * STEPS.len();
        let mut count = 0;
        for code in 0..n.pow(5) {
            let mut t = LockTable::default();
            let mut c = code;
            for step in 0..5u64 {
                let pick = c % n;
                c /= n;
                let o = &owners[pick / STEPS.len()];
                let action = STEPS[pick % STEPS.len()];
                let before = t.clone();
                if !apply(&mut t, o, action, step) {
                    break;
                }
                check_step(&before, &t, o, action, &owners);
                count += 1;
            }
        }
        assert!(count > 1_000_000);
    }

    /// The invariants of the module documentation, checked after `o` made `step`.
    fn check_step(before: &LockTable, t: &LockTable, o: &OwnerId, step: Step, all: &[OwnerId]) {
        // 1. At most one writer.
        let writers = t
            .holders
            .iter()
            .filter(|h| h.level >= Level::Reserved)
            .count();
        assert!(writers <= 1, "two writers: {t:?}");
        // 2. EXCLUSIVE alone.
        if t.holders.iter().any(|h| h.level == Level::Exclusive) {
            assert_eq!(t.holders.len(), 1, "EXCLUSIVE not alone: {t:?}");
        }
        // 3. No new SHARED entry while another holder is PENDING.
        let pending_other = before
            .holders
            .iter()
            .any(|h| &h.owner != o && h.level == Level::Pending);
        if pending_other && before.level_of(o) == Level::None {
            assert_eq!(t.level_of(o), Level::None, "reader passed PENDING: {t:?}");
        }
        // 4. A writer leaving EXCLUSIVE moves the generation on.
        if before.level_of(o) == Level::Exclusive && t.level_of(o) < Level::Exclusive {
            assert!(
                t.generation > before.generation,
                "no bump: {before:?} -> {t:?}"
            );
        }
        for p in all {
            // 5. A lingering SHARED is reused only where a fresh request would be granted.
            // 6. A kept EXCLUSIVE is reused only where a whole fresh write transaction would be
            //    granted but for the waiter lines.
            let mut fresh = t.clone();
            fresh.release(p, Level::None, 99, false);
            if t.shared_reusable_by(p) {
                assert!(
                    fresh.request(p, Level::Shared, 99).is_ok(),
                    "reused SHARED where a fresh one would wait: {t:?}"
                );
            }
            if t.kept_by(p) {
                // Waiter lines aside: they only order turns, and a turn may outlast them.
                fresh.waiters.clear();
                for level in [Level::Shared, Level::Reserved, Level::Exclusive] {
                    assert!(
                        fresh.request(p, level, 99).is_ok(),
                        "reused a kept EXCLUSIVE where a fresh {level} would wait: {t:?}"
                    );
                }
            }
            // Waiter lines: one per owner, none for a level already held.
            let lines: Vec<&Waiter> = t.waiters.iter().filter(|w| &w.owner == p).collect();
            assert!(lines.len() <= 1, "two lines: {t:?}");
            if let Some(w) = lines.first().filter(|w| w.level > Level::None) {
                assert!(t.level_of(p) < w.level, "waits for what it holds: {t:?}");
            }
        }
        // 7. RESERVED goes to writers in the order they were refused (a hot-journal rollback,
        // SHARED to EXCLUSIVE with nobody else holding anything, is not a turn).
        if matches!(step, Step::Request(Level::Reserved)) && t.level_of(o) >= Level::Reserved {
            let ahead = before
                .waiters
                .iter()
                .take_while(|w| &w.owner != o)
                .any(|w| w.level >= Level::Shared);
            assert!(!ahead, "jumped the queue: {before:?} -> {t:?}");
        }
        // 8. No new PENDING while a reader refused by the last writer waits.
        if before.level_of(o) < Level::Pending && t.level_of(o) >= Level::Pending {
            let reader_waits = before
                .waiters
                .iter()
                .any(|w| &w.owner != o && w.level == Level::Shared);
            assert!(
                !reader_waits || before.level_of(o) == Level::Shared,
                "PENDING before a waiting reader's turn: {before:?} -> {t:?}"
            );
        }
        // A refused request is in line: SHARED from NONE, RESERVED from SHARED.
        if let Step::Request(want @ (Level::Shared | Level::Reserved)) = step
            && t.level_of(o) < want
        {
            assert!(
                t.waiters.iter().any(|w| &w.owner == o && w.level >= want),
                "refused {want} not in line: {t:?}"
            );
        }
    }

    #[test]
    fn encode_decode_round_trip_and_padding() {
        let mut t = LockTable {
            generation: 42,
            latch_breaks: 3,
            holders: vec![],
            waiters: vec![],
        };
        t.request(&owner("host-a/1f2e", 1), Level::Shared, 9)
            .unwrap();
        t.request(&owner("b", 2), Level::Shared, 3).unwrap();
        t.request(&owner("b", 2), Level::Reserved, 4).unwrap();
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
