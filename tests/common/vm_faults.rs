//! Faults for the VM testbeds: workers SIGKILLed inside the guests, a guest killed whole (a
//! host crash) and a guest frozen past its lease. Safety is asserted; how long the other
//! guest waited is reported in `FIGURES` lines.

use std::time::{Duration, Instant};

use super::faults::{self, FaultPlan, FaultRun, KillPlan};
use super::vm::VmTestbed;

/// The shim's lease in the fault runs: how long a dead guest's locks stand.
pub const LEASE: Duration = Duration::from_secs(5);

/// Fault workers on both guests (even workers on the first), the reader on the first.
pub fn fault_plan(tb: &VmTestbed, label: &str) -> FaultPlan {
    let mut plan = tb.fault_plan(label);
    plan.lease = Some(LEASE);
    plan.writers = 4;
    plan.readers = 1;
    plan
}

/// Kills every two to six seconds for `window` (`SQLITE_NETFS_SOAK_SECS` replaces it).
pub fn kill_plan(window: Duration) -> KillPlan {
    let mut kills = KillPlan::sized(
        window,
        (Duration::from_secs(2), Duration::from_secs(6)),
        LEASE,
    );
    // A worker killed inside a file-server request can stay in the guest's kernel for
    // minutes (seen on NFS: 150 s under TCG) while its page write is in flight; whatever lock
    // it holds waits for it, since that write may still land.
    kills.progress_timeout = Duration::from_secs(300);
    kills.finish_timeout = Duration::from_secs(300);
    kills
}

/// Kills workers in both guests for `window` (`SQLITE_NETFS_SOAK_SECS` replaces it) and
/// asserts that nothing acknowledged was lost, nothing torn, the file intact.
pub fn kills_lose_nothing(tb: &VmTestbed, label: &str, window: Duration) {
    let plan = fault_plan(tb, label);
    let report = faults::run_with_kills(&plan, &kill_plan(window));
    report.print("sigkill");
    assert!(report.kills > 0, "no kill was made");
    // Safety is asserted; liveness is reported: a kernel client stall under TCG is one the
    // shim must wait out, since the dying process's write may still land.
    assert!(report.safe(), "{}", report.figures("sigkill"));
}

/// What happens to the first guest.
#[derive(Clone, Copy, PartialEq)]
pub enum GuestFault {
    /// Its QEMU is killed: a host crash.
    Crash,
    /// Its QEMU is stopped for three leases, then continued.
    Freeze,
}

/// Runs fault workers on both guests; once everyone commits, strikes the first guest while
/// one of its writers holds RESERVED, and reports the time until every writer on the second
/// guest committed again. Then the run ends (a frozen guest thawed and committing again
/// first) and is verified.
pub fn recovery_after(tb: &mut VmTestbed, label: &str, fault: GuestFault) {
    let plan = fault_plan(tb, label);
    let mut run = FaultRun::start(&plan);
    let stalled = run.wait_for_progress(Duration::from_secs(180));
    if !stalled.is_empty() {
        fail_keeping_evidence(run, label, &stalled, "never committed");
    }
    let (first, second): (Vec<usize>, Vec<usize>) = (0..plan.writers).partition(|i| i % 2 == 0);
    let aimed = run.slots[0].wait_for_phase("reserved", Duration::from_secs(60));
    let at = Instant::now();
    match fault {
        GuestFault::Crash => {
            tb.guests[0].kill();
            let mut gone = first.clone();
            gone.extend((plan.writers..plan.writers + plan.readers).filter(|i| i % 2 == 0));
            run.lost_host(&gone);
        }
        GuestFault::Freeze => tb.guests[0].freeze(),
    }
    let stalled = run.wait_for_progress_of(&second, Duration::from_secs(180));
    let recovery = at.elapsed();
    if fault == GuestFault::Freeze {
        std::thread::sleep((at + LEASE * 3).saturating_duration_since(Instant::now()));
        tb.guests[0].thaw();
        let stalled = run.wait_for_progress(Duration::from_secs(180));
        if !stalled.is_empty() {
            fail_keeping_evidence(run, label, &stalled, "stuck after the thaw");
        }
    }
    if !stalled.is_empty() {
        fail_keeping_evidence(
            run,
            label,
            &stalled,
            "of the second guest never committed again",
        );
    }
    let report = run.finish(Duration::from_secs(180));
    report.print(label);
    let server_lease = tb
        .server_lease_secs()
        .map(|s| format!(" server_lease_s={s}"))
        .unwrap_or_default();
    eprintln!(
        "FIGURES fault={label} testbed={} aimed_at_reserved={aimed} recovery_s={:.1} shim_lease_s={}{server_lease}",
        tb.kind(),
        recovery.as_secs_f64(),
        LEASE.as_secs()
    );
    assert!(report.correct(), "{}", report.figures(label));
}

/// Ends a run whose writers `stalled`, keeping its evidence (worker logs and traces) for the
/// failure report, then fails the test.
fn fail_keeping_evidence(mut run: FaultRun, label: &str, stalled: &[usize], what: &str) -> ! {
    run.stalled_writers = stalled.len() as u64;
    let report = run.finish(Duration::from_secs(180));
    report.print(label);
    panic!("writers {stalled:?} {what}: {}", report.figures(label));
}
