//! The latch: the token that serialises edits of the lock table, and the break token that
//! serialises removing a dead holder's latch. Its own state (the acquisition count, what it
//! has watched unchanged, the pace of its retries) lives here, apart from the connection's
//! lock levels and lease (`super::DbLock`).
//!
//! | step | what keeps it safe |
//! |---|---|
//! | take | an exclusive create of `-netfs-latch` holding our owner id and a new acquisition number; retried with backoff paced to the server's create latency, for at most the wait given |
//! | wait | after [`LATCH_SUSPECT_AFTER`], the latch's holder is judged, again at a pace set by what a look costs ([`LATCH_SUSPICION_PER_LOOK`]); a dead one's latch is broken |
//! | break | only under the break token, and only if the latch still holds the contents judged dead |
//! | release | removed at once if held under half a lease; else only if it still holds our contents |
//!
//! May use the lock files (`super::files`), the environment (`super::Environment`) and the
//! owner ids of `super::protocol`.

use std::io;
use std::time::Duration;

use super::files::{LockFileName, LockFiles};
use super::protocol::OwnerId;
use super::{Environment, LockError, Removed, Watch};

/// After waiting this long for a latch, look at who holds it.
const LATCH_SUSPECT_AFTER: Duration = Duration::from_millis(20);

/// Looks at the latch's holder come no closer than this many times what a look costs here
/// (never closer than [`LATCH_SUSPECT_AFTER`], never further than [`LATCH_SUSPICION_MAX`]).
/// A look is an open, a read and a close at the server (a forced `statx` and a `readlink` for
/// a token link on NFS), and under contention every waiter
/// made one each 20 ms: four writers on two TCG guests over NFS read the latch 189 times per
/// write transaction (traced in the guests), more often than any other file. Another host's
/// holder is judged dead only after a lease of silence, and this host's by its pid, which a
/// look at most a quarter second late still finds long before anyone would have timed it out.
/// The pace carries across lock requests: a request's first look may come later than 20 ms
/// into it if the previous request looked just before.
const LATCH_SUSPICION_PER_LOOK: u32 = 8;

/// The longest pause between two looks at a latch we wait for.
const LATCH_SUSPICION_MAX: Duration = Duration::from_millis(250);

/// How long a latch reported as a plain file (where a directory belongs) is looked at again
/// before it is called foreign.
const PLAIN_FILE_LATCH_PATIENCE: Duration = Duration::from_secs(3);

/// The latch could not be taken in time.
pub(super) struct LatchTimeout;

/// Why a latch or break token was judged dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Death {
    /// Its owner, on this host, no longer runs, or is ourselves (an orphan).
    OwnerGone,
    /// Unchanged for a whole lease (another host's, or unreadable).
    Silent,
}

/// Proof of holding the latch: its contents and when it was taken.
pub(super) struct Latch {
    contents: Vec<u8>,
    pub(super) taken_at: Duration,
}

impl Death {
    fn reason(self) -> &'static str {
        match self {
            Death::OwnerGone => "process is gone",
            Death::Silent => "unchanged for a lease",
        }
    }
}

/// What the latch works with, borrowed from the connection's lock for one call.
pub(super) struct Parties<'a, F: LockFiles, E: Environment> {
    pub files: &'a F,
    pub env: &'a E,
    pub me: &'a OwnerId,
    pub lease: Duration,
    /// Where removed tokens are recorded during a sweep (`super::DbLock::sweep_stale`).
    pub removed: &'a mut Option<Vec<Removed>>,
}

impl<F: LockFiles, E: Environment> Parties<'_, F, E> {
    fn log_token(&mut self, name: LockFileName, contents: &[u8], reason: &'static str) {
        if let Some(log) = &mut self.removed {
            log.push(Removed::Token {
                name,
                contents: String::from_utf8_lossy(contents).trim().to_owned(),
                reason,
            });
        }
    }
}

/// The latch state of one connection's lock.
pub(super) struct Latches {
    /// Acquisitions (and breaks) so far; part of every token's contents, so none repeats.
    count: u64,
    latch_watch: Option<Watch>,
    break_watch: Option<Watch>,
    /// Smoothed duration of one exclusive-create attempt, to pace retries to the server.
    create_latency: Duration,
    /// We broke a latch that had been silent for a lease; the next edit records it.
    broken_after_silence: bool,
    /// Since when the latch has been reported as a plain file, where a directory belongs.
    plain_file_since: Option<Duration>,
    /// When we last looked at the holder of a latch we waited for (across takes).
    suspected_at: Option<Duration>,
    /// Smoothed duration of one such look.
    look_latency: Duration,
}

impl Latches {
    pub(super) fn new() -> Latches {
        Latches {
            count: 0,
            latch_watch: None,
            break_watch: None,
            create_latency: Duration::from_micros(100),
            broken_after_silence: false,
            plain_file_since: None,
            suspected_at: None,
            look_latency: Duration::ZERO,
        }
    }

    /// Whether to look at the holder of the latch we wait for now (see
    /// [`LATCH_SUSPICION_PER_LOOK`]). Every [`LATCH_SUSPECT_AFTER`] while the latch shows as a
    /// plain file: only looks that keep finding it so may call it foreign, and sparse looks
    /// would take a flickering one (smbnetfs) for a steady one.
    fn suspicion_due(&self, now: Duration) -> bool {
        let pause = if self.plain_file_since.is_some() {
            LATCH_SUSPECT_AFTER
        } else {
            (self.look_latency * LATCH_SUSPICION_PER_LOOK)
                .clamp(LATCH_SUSPECT_AFTER, LATCH_SUSPICION_MAX)
        };
        self.suspected_at
            .is_none_or(|t| now.saturating_sub(t) >= pause)
    }

    /// Whether a latch silent for a lease was broken since the last edit that recorded it.
    pub(super) fn broken_after_silence(&self) -> bool {
        self.broken_after_silence
    }

    /// The table now counts that break.
    pub(super) fn break_recorded(&mut self) {
        self.broken_after_silence = false;
    }

    /// Takes the latch, waiting at most `wait`. `urgent`: for a holder whose renewal is
    /// overdue, which retries at once instead of backing off.
    pub(super) fn take<F: LockFiles, E: Environment>(
        &mut self,
        cx: &mut Parties<'_, F, E>,
        wait: Duration,
        urgent: bool,
    ) -> Result<Result<Latch, LatchTimeout>, LockError> {
        self.count += 1;
        let contents = format!("{} {}\n", cx.me, self.count).into_bytes();
        let started = cx.env.now();
        let mut pause = Duration::from_micros(50);
        loop {
            let attempt_started = cx.env.now();
            let created = cx.files.create_exclusive(LockFileName::Latch, &contents)?;
            let took = cx.env.now().saturating_sub(attempt_started);
            self.create_latency = (self.create_latency * 7 + took) / 8;
            if created {
                self.latch_watch = None;
                return Ok(Ok(Latch {
                    contents,
                    taken_at: cx.env.now(),
                }));
            }
            let now = cx.env.now();
            let waited = now.saturating_sub(started);
            if waited >= LATCH_SUSPECT_AFTER && self.suspicion_due(now) {
                self.suspected_at = Some(now);
                self.break_latch_if_dead(cx)?;
            }
            if waited >= wait {
                return Ok(Err(LatchTimeout));
            }
            // Spread retries of processes that collided, without a random-number dependency.
            let jitter = (cx.me.conn ^ u64::from(cx.me.pid) ^ self.count) % 7;
            cx.env.sleep(pause + pause * jitter as u32 / 8);
            // Pace retries to the server: on a slow one, hammering it with creates that fail
            // only delays the holder's own requests. An urgent holder keeps trying at once:
            // the latch is free only between others' edits, and waiters that edit back to back
            // (smbnetfs: one edit every 130 ms, each holding it 100 ms) can keep it from
            // renewing until others judge it dead (seen on the SMB testbed).
            let cap = if urgent {
                Duration::from_millis(1)
            } else {
                Duration::from_millis(2).max(self.create_latency * 4)
            };
            pause = (pause * 2).min(cap);
        }
    }

    pub(super) fn release<F: LockFiles, E: Environment>(
        &mut self,
        cx: &mut Parties<'_, F, E>,
        latch: &Latch,
    ) -> Result<(), LockError> {
        // Held briefly, as always: nobody can have broken it, remove without looking.
        if cx.env.now().saturating_sub(latch.taken_at) < cx.lease / 2 {
            cx.files.remove(LockFileName::Latch)?;
            return Ok(());
        }
        // Held long enough to have been judged stale: remove it only if it is still ours.
        if cx.files.read(LockFileName::Latch)?.as_deref() == Some(&latch.contents[..]) {
            cx.files.remove(LockFileName::Latch)?;
        }
        Ok(())
    }

    /// Whether a latch or break file with these contents belongs to a dead holder, given how
    /// long we have watched it unchanged.
    ///
    /// A token that names ourselves is an orphan: we look only while holding neither (edits
    /// never nest), so it is one whose removal failed, or whose create reached the server
    /// while its answer did not (both seen when the file server goes down mid-edit). Waiting a
    /// lease for it would stall every writer for nothing.
    fn judged_dead<F: LockFiles, E: Environment>(
        cx: &Parties<'_, F, E>,
        contents: &[u8],
        watch: &mut Option<Watch>,
    ) -> Option<Death> {
        let now = cx.env.now();
        let owner = std::str::from_utf8(contents)
            .ok()
            .and_then(|s| OwnerId::parse_fields(&mut s.split_whitespace()));
        if let Some(owner) = &owner
            && owner.host == cx.me.host
            && (*owner == *cx.me || !cx.env.process_alive(owner))
        {
            return Some(Death::OwnerGone);
        }
        match watch {
            Some(w) if w.contents == contents => {
                (now.saturating_sub(w.since) >= cx.lease).then_some(Death::Silent)
            }
            _ => {
                *watch = Some(Watch {
                    contents: contents.to_vec(),
                    since: now,
                });
                None
            }
        }
    }

    pub(super) fn break_latch_if_dead<F: LockFiles, E: Environment>(
        &mut self,
        cx: &mut Parties<'_, F, E>,
    ) -> Result<(), LockError> {
        let looked = cx.env.now();
        let read = cx.files.read(LockFileName::Latch);
        // Only the read paces the looks: a break that follows may wait seconds for a removal.
        self.look_latency = (self.look_latency * 3 + cx.env.now().saturating_sub(looked)) / 4;
        if !read
            .as_ref()
            .is_err_and(|e| crate::lock::files::os_error_code(e) == Some(libc::ENOTDIR))
        {
            self.plain_file_since = None;
        }
        let contents = match read {
            Ok(Some(contents)) => contents,
            Ok(None) => {
                // Released meanwhile: whatever was watched is gone.
                self.latch_watch = None;
                return Ok(());
            }
            // smbnetfs reports a token directory that other clients keep creating and removing
            // as a plain file, at times for longer than a second (seen on the SMB testbed under
            // contention). Only one that stays is foreign.
            Err(e) if crate::lock::files::os_error_code(&e) == Some(libc::ENOTDIR) => {
                let now = cx.env.now();
                let since = *self.plain_file_since.get_or_insert(now);
                if now.saturating_sub(since) >= PLAIN_FILE_LATCH_PATIENCE {
                    return Err(e.into());
                }
                tracing::debug!(error = %e, "latch reported as a plain file; looked at again later");
                return Ok(());
            }
            // A latch no process of ours can read (another user's, or a symbolic link in its
            // place that is no token) would keep every request waiting: say so instead.
            Err(e)
                if [libc::EACCES, libc::ELOOP]
                    .iter()
                    .any(|&code| e.kind() == io::Error::from_raw_os_error(code).kind()) =>
            {
                return Err(e.into());
            }
            // smbnetfs fails opens of a file another client is creating or removing (EIO):
            // no verdict this time.
            Err(e) => {
                tracing::debug!(error = %e, "latch unreadable; staleness not judged this time");
                return Ok(());
            }
        };
        let mut watch = self.latch_watch.take();
        let death = Self::judged_dead(cx, &contents, &mut watch);
        self.latch_watch = watch;
        let Some(death) = death else {
            return Ok(());
        };
        self.count += 1;
        let mine = format!("{} {}\n", cx.me, self.count).into_bytes();
        if !cx.files.create_exclusive(LockFileName::Break, &mine)? {
            // Someone else is breaking it, or died doing so.
            return self.remove_break_if_dead(cx);
        }
        let result = match cx.files.read(LockFileName::Latch)? {
            Some(now) if now == contents => {
                tracing::warn!(
                    latch = %cx.files.describe(LockFileName::Latch),
                    holder = %String::from_utf8_lossy(&contents).trim(),
                    reason = ?death,
                    "stale lock latch broken"
                );
                // A latch stuck for a lease kept every live holder from renewing: the next
                // edit tells all observers to start timing silence afresh.
                self.broken_after_silence |= death == Death::Silent;
                let removed = cx.files.remove(LockFileName::Latch).map(|_| ());
                if removed.is_ok() {
                    cx.log_token(LockFileName::Latch, &contents, death.reason());
                }
                removed
            }
            _ => Ok(()),
        };
        self.latch_watch = None;
        let released = cx.files.remove(LockFileName::Break);
        result?;
        released?;
        Ok(())
    }

    /// Removes the break token if its owner is judged dead (see [`Self::judged_dead`]).
    pub(super) fn remove_break_if_dead<F: LockFiles, E: Environment>(
        &mut self,
        cx: &mut Parties<'_, F, E>,
    ) -> Result<(), LockError> {
        let Some(other) = cx.files.read(LockFileName::Break)? else {
            self.break_watch = None;
            return Ok(());
        };
        let mut watch = self.break_watch.take();
        if let Some(death) = Self::judged_dead(cx, &other, &mut watch) {
            tracing::warn!(file = %cx.files.describe(LockFileName::Break), "stale lock-break file removed");
            cx.files.remove(LockFileName::Break)?;
            cx.log_token(LockFileName::Break, &other, death.reason());
            watch = None;
        }
        self.break_watch = watch;
        Ok(())
    }
}
