//! Reading the lock table as a client hands it over, and recovering from a table nobody can
//! read. Its own state: the table's length last seen (a rewrite never shrinks the file, so a
//! stale cached size still covers the whole table) and the bytes of an unreadable table
//! while they stay unchanged.
//!
//! | what the read gives | answer |
//! |---|---|
//! | a table whose checksum holds | the table |
//! | empty, before the size was asked of the server | asked again after revalidating: sshfs has served a just-created table's size as 0 |
//! | empty, confirmed by the server | a new table, at a fresh random generation |
//! | torn or short | read again after revalidating, up to three times |
//! | still torn, or malformed | an error, until the same bytes have stood for a lease: then an empty table with a new generation |
//!
//! May use the table file (`super::files::TableFile`), the environment's clock and the table
//! format (`super::protocol`).

use std::time::Duration;

use super::files::TableFile;
use super::protocol::{LockTable, ParseError};
use super::{Environment, LockError, Watch};

/// How one connection's lock reads and writes the table.
pub(super) struct TableReader {
    /// Length of the table file last read or written, so a rewrite never shrinks it.
    len: usize,
    /// The bytes of a table that could not be read, while they stay unchanged.
    watch: Option<Watch>,
}

impl TableReader {
    pub(super) fn new() -> TableReader {
        TableReader {
            len: 0,
            watch: None,
        }
    }

    /// The table in `file`, and whether it replaces an unreadable one (the caller owes a
    /// generation bump then). `name` describes the file for messages.
    pub(super) fn read<T: TableFile, E: Environment>(
        &mut self,
        file: &mut T,
        env: &E,
        lease: Duration,
        name: impl FnOnce() -> String,
    ) -> Result<(LockTable, bool), LockError> {
        let mut revalidated = false;
        for attempt in 0..4 {
            let bytes = file.read_all()?;
            // An empty read may be a stale cached size of zero (sshfs keeps the size of a
            // table another process on the mount has just created): confirm with the server,
            // even if we never saw the table, or our rewrite would drop every holder in it.
            let suspicious_empty = bytes.is_empty() && !revalidated;
            match LockTable::decode(&bytes) {
                Ok(_) if suspicious_empty => {}
                Ok(mut table) => {
                    // Generations must never repeat for one database: a client that cached
                    // pages, or saw the journal empty, at generation N trusts that for as long
                    // as the table says N. A table deleted and made anew must not count up
                    // through numbers it has already used.
                    if LockTable::is_new(&bytes) {
                        table.generation = env.fresh_generation();
                    }
                    self.len = self.len.max(bytes.len());
                    self.watch = None;
                    return Ok((table, false));
                }
                Err(ParseError::Incomplete) if attempt < 3 => {}
                Err(ParseError::Incomplete) => {
                    let why = "it stays torn or truncated".into();
                    return self.unreadable(bytes, why, env, lease, name);
                }
                Err(ParseError::Malformed(why)) => {
                    return self.unreadable(bytes, why, env, lease, name);
                }
            }
            file.revalidate()?;
            revalidated = true;
        }
        // Every arm of the last attempt returns: a suspicious empty read only happens before
        // the first revalidation.
        unreachable!("the last attempt returns")
    }

    /// `table` as the bytes to write back: padded to at least the length last seen.
    pub(super) fn encode(&mut self, table: &LockTable) -> Vec<u8> {
        let bytes = table.encode(self.len);
        self.len = bytes.len();
        bytes
    }

    /// A table that cannot be read hides who holds what, so nothing may be granted. Once its
    /// bytes have stayed the same for a whole lease, no holder it may name is still using the
    /// database: a live holder renews through the table every quarter lease, cannot while
    /// it is unreadable, and fences itself after three quarters of a lease. It is then
    /// replaced by an empty table (written by the edit under way). Its generation is a fresh
    /// random one, which no client can have cached, and one more bump makes sure the
    /// replacement is written. A holder that
    /// wrote pages before dying leaves a hot journal, which SQLite rolls back as usual.
    fn unreadable<E: Environment>(
        &mut self,
        bytes: Vec<u8>,
        why: String,
        env: &E,
        lease: Duration,
        name: impl FnOnce() -> String,
    ) -> Result<(LockTable, bool), LockError> {
        let now = env.now();
        let file = name();
        match &self.watch {
            Some(w) if w.contents == bytes && now.saturating_sub(w.since) >= lease => {
                tracing::warn!(table = %file, %why, "unreadable lock table replaced after a lease unchanged");
                self.watch = None;
                self.len = self.len.max(bytes.len());
                let empty = LockTable {
                    generation: env.fresh_generation(),
                    ..LockTable::default()
                };
                Ok((empty, true))
            }
            Some(w) if w.contents == bytes => Err(LockError::Corrupt(format!(
                "lock table {file} is unreadable ({why}); it is replaced once unchanged for a lease"
            ))),
            _ => {
                self.watch = Some(Watch {
                    contents: bytes,
                    since: now,
                });
                Err(LockError::Corrupt(format!(
                    "lock table {file} is unreadable ({why}); it is replaced once unchanged for a lease"
                )))
            }
        }
    }
}
