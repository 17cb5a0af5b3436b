//! The databases the scenarios run on, made from one template per size.

use std::fs;
use std::path::{Path, PathBuf};

use sqlite_netfs::rusqlite::{self, Connection, params};
use testbed::TwoHostTestbed;

use super::*;

/// The per-run context the scenarios share.
pub(crate) struct Context {
    pub(crate) profile: Profile,
    /// This run's own directory (removed at the end).
    pub(crate) work: PathBuf,
    /// The pre-filled database every alternative gets a copy of.
    pub(crate) template: PathBuf,
}

impl Context {
    pub(crate) fn scratch(&self, name: &str) -> Result<tempfile::TempDir, String> {
        tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir_in(&self.work)
            .map_err(|e| format!("scratch dir in {}: {e}", self.work.display()))
    }

    /// A copy of the template at `dir/name`, already in WAL mode when the setup wants WAL
    /// (so that the workers do not race to convert it).
    pub(crate) fn database(&self, dir: &Path, name: &str, setup: Setup) -> Result<PathBuf, String> {
        let path = dir.join(name);
        fs::copy(&self.template, &path)
            .map_err(|e| format!("copy the template to {}: {e}", path.display()))?;
        if setup.journal == Some("wal") {
            Connection::open(&path)
                .and_then(|c| c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(())))
                .map_err(|e| format!("WAL for {}: {e}", path.display()))?;
        }
        Ok(path)
    }

    /// A scratch directory for `scenario` with a copy of the template per setup, named as
    /// given; the directory goes when the returned handle is dropped.
    pub(crate) fn local_databases<const N: usize>(
        &self,
        scenario: &str,
        setups: [(&str, Setup); N],
    ) -> Result<(tempfile::TempDir, [PathBuf; N]), String> {
        let dir = self.scratch(scenario)?;
        let mut paths = Vec::with_capacity(N);
        for (name, setup) in setups {
            paths.push(self.database(dir.path(), name, setup)?);
        }
        let paths = <[PathBuf; N]>::try_from(paths).map_err(|_| "one database per setup")?;
        Ok((dir, paths))
    }

    /// A copy of the template in the testbed's server directory; its path through mount A
    /// ("host A") and through mount B.
    pub(crate) fn on_testbed(
        &self,
        testbed: &TwoHostTestbed,
        name: &str,
        setup: Setup,
    ) -> Result<[PathBuf; 2], String> {
        self.database(testbed.server_dir(), name, setup)?;
        Ok([testbed.mount_a(), testbed.mount_b()].map(|mount| mount.join(name)))
    }
}

/// Creates the pre-filled database through SQLite's own VFS, in one transaction.
pub(crate) fn create_template(path: &Path, rows: u64) -> rusqlite::Result<()> {
    let mut conn = Connection::open(path)?;
    conn.execute_batch(SCHEMA)?;
    let sessions = (rows / ROWS_PER_SESSION).max(1);
    let mut rng = Prng::new(0x5e55_1045);
    let tx = conn.transaction()?;
    {
        let mut insert_session = tx.prepare(INSERT_SESSION)?;
        for id in 1..=sessions {
            insert_session.execute([id as i64])?;
        }
        let mut insert_message = tx.prepare(INSERT_MESSAGE)?;
        for i in 0..rows {
            let session = 1 + rng.below(sessions) as i64;
            insert_message.execute(params![session, i as i64 * 1000, rng.payload()])?;
        }
    }
    tx.commit()
}
