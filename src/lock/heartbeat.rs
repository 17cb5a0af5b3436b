//! The lease heartbeat: one background thread per process that rewrites the table entry of
//! every lock held longer than a quarter lease, so other hosts can tell a long transaction
//! from a dead one, and publishes releases still owed to the table: those that linger while
//! their connection is idle, and those that found the latch busy.
//!
//! May use `super` (the connection's lock and its handle) only.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use parking_lot::Mutex;

use crate::lock::{ConnectionLock, LockHandle};

/// How often the thread looks; renewal itself happens only when a lock is due.
const TICK: Duration = Duration::from_millis(100);
/// How often it looks while some release is owed: a lingering release should reach the table
/// soon after [`crate::lock::RELEASE_LINGER`], for writers waiting on another host.
const SETTLE_TICK: Duration = Duration::from_millis(5);

static WATCHED: Mutex<Vec<Weak<ConnectionLock>>> = Mutex::new(Vec::new());

/// Keeps `lock` renewed while it is held, for as long as it exists.
pub fn watch(lock: &LockHandle) {
    static THREAD: OnceLock<()> = OnceLock::new();
    WATCHED.lock().push(Arc::downgrade(lock));
    THREAD.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("sqlite-netfs-lease".into())
            .spawn(beat_forever);
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the lease heartbeat; long transactions will lose their locks");
        }
    });
}

fn beat_forever() {
    let mut tick = TICK;
    loop {
        std::thread::sleep(tick);
        let live: Vec<LockHandle> = {
            let mut watched = WATCHED.lock();
            watched.retain(|w| w.strong_count() > 0);
            watched.iter().filter_map(Weak::upgrade).collect()
        };
        tick = TICK;
        for lock in live {
            // A panic must not end the thread: every lock of the process would stop renewing.
            let beat = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| beat(&lock)));
            match beat {
                Ok(true) => tick = SETTLE_TICK,
                Ok(false) => {}
                Err(_) => {
                    tracing::error!("lease heartbeat panicked; it goes on with the next beat")
                }
            }
        }
    }
}

/// Renews and settles one lock as due; true if a release is still owed afterwards.
fn beat(lock: &LockHandle) -> bool {
    // Held by the connection itself, which may wait up to a lease for the latch (a held lock
    // being confirmed): its edit renews what is due. Waiting here would stall every other
    // connection's renewals.
    let Some(mut lock) = lock.try_lock() else {
        return false;
    };
    if lock.renewal_due()
        && let Err(e) = lock.renew()
    {
        tracing::warn!(owner = %lock.owner(), error = %e, "lease renewal failed");
    }
    if lock.settle_due()
        && let Err(e) = lock.settle(crate::lock::LATCH_WAIT)
    {
        tracing::warn!(owner = %lock.owner(), error = %e, "deferred lock release failed");
    }
    lock.release_owed()
}
