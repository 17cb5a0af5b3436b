//! Who holds a lock: the identity of this host, process and connection, and whether a holder
//! recorded by another process of this host is still alive.
//!
//! A "host" here is one kernel boot seen from one pid namespace: exactly the scope in which a
//! recorded pid can be checked. Two containers on one machine are two hosts (their pids are
//! not comparable); so are two machines. The identity can be overridden with the environment
//! variable `SQLITE_NETFS_HOST_ID` (tests use it to play a second host on one machine).
//!
//! May use `super::protocol` (the owner id's form) and `crate::sys` (liveness).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::lock::protocol::OwnerId;

/// Environment variable that replaces the computed host identity.
pub const HOST_ID_ENV: &str = "SQLITE_NETFS_HOST_ID";

/// This host's identity: `<hostname>-<16 hex digits>` of boot id and pid namespace.
pub fn host_id() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| match std::env::var(HOST_ID_ENV) {
        Ok(v) if OwnerId::valid_host(&v) => v,
        Ok(v) => {
            tracing::warn!(value = %v, "ignoring {HOST_ID_ENV}: it must be one token without spaces");
            computed_host_id()
        }
        Err(_) => computed_host_id(),
    })
}

fn computed_host_id() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let hostname = read("/proc/sys/kernel/hostname");
    let hostname = match hostname.trim() {
        "" => std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into()),
        h => h.to_owned(),
    };
    let pid_ns = std::fs::read_link("/proc/self/ns/pid")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let seed = format!(
        "{}\n{}\n{}",
        read("/proc/sys/kernel/random/boot_id").trim(),
        pid_ns,
        hostname
    );
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.bytes() {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    let clean: String = hostname
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(48)
        .collect();
    format!("{clean}-{hash:016x}")
}

/// Start time of a process in clock ticks since boot (Linux `/proc/PID/stat` field 22), so a
/// pid reused by a new process is not mistaken for the recorded one. `None` when unknown.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces: skip past it.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// A fresh owner identity for one connection of this process.
pub fn new_owner() -> OwnerId {
    static NEXT_CONN: AtomicU64 = AtomicU64::new(1);
    let pid = std::process::id();
    OwnerId {
        host: host_id().to_owned(),
        pid,
        start: process_start_time(pid).unwrap_or(0),
        conn: NEXT_CONN.fetch_add(1, Ordering::Relaxed),
    }
}

/// Whether a holder recorded on *this* host is still running. Holders of other hosts cannot be
/// asked; their liveness is judged by lease (see `lock`).
pub fn same_host_process_alive(owner: &OwnerId) -> bool {
    if !crate::sys::process_exists(owner.pid) {
        return false;
    }
    match (owner.start, process_start_time(owner.pid)) {
        (0, _) | (_, None) => true,
        (recorded, Some(now)) => recorded == now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_id_is_one_token() {
        assert!(OwnerId::valid_host(host_id()), "{}", host_id());
    }

    #[test]
    fn this_process_is_alive_and_a_dead_one_is_not() {
        let me = new_owner();
        assert!(same_host_process_alive(&me));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let dead = OwnerId {
            pid,
            start: me.start,
            ..me.clone()
        };
        assert!(!same_host_process_alive(&dead));
        // Our own pid with another start time is a reused pid: not the recorded holder.
        if me.start != 0 {
            let reused = OwnerId {
                start: me.start + 1,
                ..me.clone()
            };
            assert!(!same_host_process_alive(&reused));
        }
    }

    #[test]
    fn connections_get_distinct_owner_ids() {
        assert_ne!(new_owner(), new_owner());
    }
}
