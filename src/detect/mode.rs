//! The per-database decision: native pass-through or network mode, and why.
//!
//! | source, first that speaks      | values            |
//! |--------------------------------|-------------------|
//! | URI parameter `netfs=`         | `auto`, `on`, `off` |
//! | environment `SQLITE_NETFS`     | `auto`, `on`, `off` |
//! | lock files beside the database (`auto`, local disk) | network |
//! | filesystem detection (`auto`)  | local -> native; network or unknown -> network |
//!
//! A database with network mode's lock table beside it stays in network mode on a local disk
//! too: another host reaches it over a network filesystem (a VM or container whose data dir is
//! this host's directory through 9p or virtiofs), and a native process here would use WAL and
//! `fcntl` locks that the other side never sees (DESIGN.md, ADR 16).
//!
//! An unknown value is an error naming where it came from and what it said.
//!
//! May use `super` (detection) and the lock files' names (`crate::lock::files`), to see a lock
//! table beside the database.

use std::fmt;
use std::path::Path;

use crate::detect::{self, FsClass};

/// The URI parameter that selects the mode for one database.
pub const URI_PARAMETER: &str = "netfs";
/// The environment variable that selects the mode where the URI says nothing.
pub const ENV_VARIABLE: &str = "SQLITE_NETFS";

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    Auto,
    On,
    Off,
}

impl Setting {
    /// Parses a setting; `origin` names where it came from, for the error message.
    pub fn parse(value: &str, origin: &str) -> Result<Setting, String> {
        match value.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(Setting::Auto),
            "on" | "1" | "true" | "yes" => Ok(Setting::On),
            "off" | "0" | "false" | "no" => Ok(Setting::Off),
            _ => Err(format!(
                "unknown value {value:?} for {origin} (expected auto, on or off)"
            )),
        }
    }
}

/// How a database is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Straight to SQLite's `unix` VFS: WAL, shared memory, mmap, fcntl locks.
    Native,
    /// Lockfile locking, rollback journal, coherent caches.
    Network,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Native => "native",
            Mode::Network => "network",
        })
    }
}

/// Which source made the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionSource {
    UriParameter,
    Environment,
    /// Network mode's lock files beside a database on a local disk.
    LockFiles,
    Detection,
}

impl fmt::Display for DecisionSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DecisionSource::UriParameter => "URI parameter netfs",
            DecisionSource::Environment => "environment SQLITE_NETFS",
            DecisionSource::LockFiles => "lock files beside the database",
            DecisionSource::Detection => "filesystem detection",
        })
    }
}

/// What the shim decided for a path, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    pub mode: Mode,
    pub source: DecisionSource,
    /// The filesystem type as the system names it (`ext4`, `fuse.sshfs`, `nfs4`, ...), or
    /// `unknown` when it could not be probed.
    pub fs_type: String,
    pub class: FsClass,
    /// One sentence: why this mode.
    pub reason: String,
    /// The filesystem is mounted read-only.
    pub read_only: bool,
}

/// Decides the mode for `path` from the URI value (if any), the environment, and the
/// filesystem.
pub fn decide(path: &Path, uri_value: Option<&str>) -> Result<Detection, String> {
    let env_value = std::env::var(ENV_VARIABLE).ok();
    let (setting, source) = match (uri_value, env_value.as_deref()) {
        (Some(v), _) => (
            Setting::parse(v, &format!("URI parameter {URI_PARAMETER}"))?,
            DecisionSource::UriParameter,
        ),
        (None, Some(v)) => (
            Setting::parse(v, &format!("environment variable {ENV_VARIABLE}"))?,
            DecisionSource::Environment,
        ),
        (None, None) => (Setting::Auto, DecisionSource::Detection),
    };
    let probed = detect::probe(path);
    let (fs_type, class, fs_reason, read_only) = match &probed {
        Ok(info) => (
            info.fs_type.clone(),
            info.class,
            info.reason.clone(),
            info.read_only,
        ),
        Err(e) => (
            "unknown".to_owned(),
            FsClass::Unknown,
            format!("filesystem could not be probed: {e}"),
            false,
        ),
    };
    let (mode, source, reason) = match setting {
        Setting::On => (Mode::Network, source, format!("forced on by {source}")),
        Setting::Off => (Mode::Native, source, format!("forced off by {source}")),
        Setting::Auto => match class {
            FsClass::Local if has_network_lock_table(path) => (
                Mode::Network,
                DecisionSource::LockFiles,
                format!(
                    "{fs_reason}; but network mode's lock table is beside the database, so another host or VM shares it over a network filesystem"
                ),
            ),
            FsClass::Local => (Mode::Native, DecisionSource::Detection, fs_reason),
            FsClass::Network | FsClass::Unknown => {
                (Mode::Network, DecisionSource::Detection, fs_reason)
            }
        },
    };
    Ok(Detection {
        mode,
        source,
        fs_type,
        class,
        reason,
        read_only,
    })
}

/// Whether network mode's lock table lies beside the database at `path` (a symbolic link
/// counts: network mode will refuse it by name).
fn has_network_lock_table(path: &Path) -> bool {
    let mut table = path.as_os_str().to_owned();
    table.push(crate::lock::files::LockFileName::Table.suffix());
    std::fs::symlink_metadata(table).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_database_with_network_lock_files_stays_in_network_mode() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("shared.db");
        let d = decide(&db, None).unwrap();
        assert_eq!(
            (d.mode, d.source),
            (Mode::Native, DecisionSource::Detection)
        );
        std::fs::write(dir.path().join("shared.db-netfs-table"), b"").unwrap();
        let d = decide(&db, None).unwrap();
        assert_eq!(
            (d.mode, d.source),
            (Mode::Network, DecisionSource::LockFiles),
            "{d:?}"
        );
        assert!(d.reason.contains("lock table"), "{}", d.reason);
        let d = decide(&db, Some("off")).unwrap();
        assert_eq!(d.mode, Mode::Native, "an explicit setting still wins");
    }

    #[test]
    fn settings_parse_and_errors_name_origin_and_value() {
        assert_eq!(Setting::parse("AUTO", "x"), Ok(Setting::Auto));
        assert_eq!(Setting::parse("on", "x"), Ok(Setting::On));
        assert_eq!(Setting::parse("off", "x"), Ok(Setting::Off));
        let err = Setting::parse("maybe", "URI parameter netfs").unwrap_err();
        assert!(err.contains("URI parameter netfs"), "{err}");
        assert!(err.contains("\"maybe\""), "{err}");
    }

    #[test]
    fn uri_value_wins_and_forces_the_mode() {
        let dir = std::env::temp_dir();
        let d = decide(&dir.join("x.db"), Some("on")).unwrap();
        assert_eq!(
            (d.mode, d.source),
            (Mode::Network, DecisionSource::UriParameter)
        );
        let d = decide(&dir.join("x.db"), Some("off")).unwrap();
        assert_eq!(
            (d.mode, d.source),
            (Mode::Native, DecisionSource::UriParameter)
        );
        assert!(decide(&dir.join("x.db"), Some("sometimes")).is_err());
    }
}
