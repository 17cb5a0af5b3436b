//! Setups: how a worker opens the database (VFS, URI parameters, journal mode), and its role.

use std::time::Duration;

use super::*;

/// One way of opening the database: VFS, URI parameters and journal mode.
#[derive(Clone, Copy)]
pub(crate) struct Setup {
    pub(crate) label: &'static str,
    pub(crate) vfs: &'static str,
    pub(crate) uri_params: &'static str,
    pub(crate) journal: Option<&'static str>,
}

impl Setup {
    pub(crate) const fn new(
        label: &'static str,
        vfs: &'static str,
        uri_params: &'static str,
        journal: Option<&'static str>,
    ) -> Setup {
        Setup {
            label,
            vfs,
            uri_params,
            journal,
        }
    }
}

pub(crate) const NETFS_AUTO_WAL: Setup = Setup::new("netfs auto WAL", "netfs", "", Some("wal"));
pub(crate) const NETFS_AUTO: Setup = Setup::new("netfs auto", "netfs", "", None);
pub(crate) const NETFS_ON: Setup = Setup::new("netfs=on", "netfs", "netfs=on", None);
pub(crate) const UNIX_WAL: Setup = Setup::new("unix WAL", "unix", "", Some("wal"));
pub(crate) const UNIX_DELETE: Setup = Setup::new("unix DELETE", "unix", "", Some("delete"));
pub(crate) const UNIX_TRUNCATE: Setup = Setup::new("unix TRUNCATE", "unix", "", Some("truncate"));
pub(crate) const UNIX_DOTFILE: Setup = Setup::new("unix-dotfile", "unix-dotfile", "", None);

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Role {
    Write,
    Read,
}

impl Role {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Role::Write => "write",
            Role::Read => "read",
        }
    }

    pub(crate) fn parse(name: &str) -> Result<Role, String> {
        match name {
            "write" => Ok(Role::Write),
            "read" => Ok(Role::Read),
            other => Err(format!("unknown role {other}")),
        }
    }

    pub(crate) fn noun(self) -> &'static str {
        match self {
            Role::Write => "writer",
            Role::Read => "reader",
        }
    }

    pub(crate) fn processes(self, count: usize) -> String {
        plural(count, self.noun())
    }
}

/// When a worker stops.
#[derive(Clone, Copy)]
pub(crate) enum Stop {
    /// At the end of a window: the measure is transactions per second in it.
    After(Duration),
    /// After this many attempts (the cost anatomy, which counts calls per transaction).
    Transactions(u64),
    /// Once it has committed `each`, or at `within` if it has not: the measure is how long
    /// the last writer took, so one that others starve counts against the setup.
    Commits { each: u64, within: Duration },
}
