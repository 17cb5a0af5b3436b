//! The kill driver: workers killed at random moments (aimed at phases) and restarted.

use std::time::{Duration, Instant};

use super::*;

/// How the kill driver behaves.
#[derive(Debug, Clone)]
pub struct KillPlan {
    /// How long to keep killing.
    pub duration: Duration,
    /// Pause after each kill (uniform between the two).
    pub gap: (Duration, Duration),
    /// How long to wait for a worker in the aimed phase before killing whichever is picked.
    pub aim_for: Duration,
    /// After the last kill: how long every writer may take to commit again.
    pub progress_timeout: Duration,
    /// After the stop request: how long every worker may take to finish.
    pub finish_timeout: Duration,
}

impl KillPlan {
    /// `ci` seconds of kills, or [`SOAK_ENV`] seconds when that is set.
    pub fn sized(ci: Duration, gap: (Duration, Duration), lease: Duration) -> KillPlan {
        let duration = std::env::var(SOAK_ENV)
            .ok()
            .and_then(|s| s.parse().ok())
            .map_or(ci, Duration::from_secs);
        KillPlan {
            duration,
            gap,
            aim_for: Duration::from_secs(2),
            progress_timeout: lease * 3 + Duration::from_secs(60),
            finish_timeout: lease * 3 + Duration::from_secs(60),
        }
    }
}

/// How long everyone may take to stop once a writer was found stalled.
const STUCK_FINISH_TIMEOUT: Duration = Duration::from_secs(30);

/// Phases the driver aims at in turn (any worker, any moment for `any`).
const AIMS: [&str; 6] = ["read", "reserved", "pages", "commit", "acked", "any"];

/// Runs `plan`'s workers, SIGKILLs one at a random moment (aimed at a random phase) and restarts
/// it, again and again for `kills.duration`; then requires every writer to commit again, stops
/// everyone and verifies.
pub fn run_with_kills(plan: &FaultPlan, kills: &KillPlan) -> FaultReport {
    run_mixed(plan, kills, None)
}

/// File-server outages mixed into a kill run: every `every`, the server goes down for the next
/// of `downs` (cycled).
pub struct OutageMix<'a> {
    pub server: &'a dyn FileServer,
    pub every: Duration,
    pub downs: Vec<Duration>,
}

/// The soak's driver: kills as [`run_with_kills`] does, with file-server outages among them
/// when `outages` is given, for `kills.duration`; then every writer must commit again, everyone
/// stops, and the database is verified.
pub fn run_mixed(
    plan: &FaultPlan,
    kills: &KillPlan,
    outages: Option<OutageMix<'_>>,
) -> FaultReport {
    let mut rng = Rng::for_run(&plan.label);
    let mut run = FaultRun::start(plan);
    let started = Instant::now();
    let mut made = Vec::new();
    let mut stalled = 0;
    let mut next_outage = outages.as_ref().map(|o| o.every);
    while started.elapsed() < kills.duration {
        std::thread::sleep(rng.between(kills.gap.0, kills.gap.1));
        if let (Some(mix), Some(at)) = (&outages, next_outage)
            && started.elapsed() >= at
        {
            let down = mix.downs[made.len() % mix.downs.len()];
            let (outage, still) = crash_server(&run, mix.server, down, kills.progress_timeout);
            made.push(outage);
            stalled += still;
            next_outage = Some(started.elapsed() + mix.every);
            continue;
        }
        kill_one(&mut run, &mut rng, kills.aim_for);
    }
    stalled += run.wait_for_progress(kills.progress_timeout).len() as u64;
    run.stalled_writers = stalled;
    // A writer that made no progress in all that time is stuck below us (a guest kernel's
    // "task blocked for more than 600 s" on virtiofs): waiting the full finish timeout again
    // only lengthens the run, and it is killed and counted as stuck either way.
    let finish_timeout = if stalled > 0 {
        kills.finish_timeout.min(STUCK_FINISH_TIMEOUT)
    } else {
        kills.finish_timeout
    };
    let mut report = run.finish(finish_timeout);
    report.outages = made;
    report
}

/// Kills one worker, aimed at a random phase (waiting up to `aim_for` for a worker in it), and
/// restarts it.
fn kill_one(run: &mut FaultRun, rng: &mut Rng, aim_for: Duration) {
    let aim = AIMS[rng.below(AIMS.len() as u64) as usize];
    let candidates: Vec<usize> = (0..run.slots.len())
        .filter(|&i| aim != "read" || !run.slots[i].is_writer())
        .collect();
    let aim_deadline = Instant::now() + aim_for;
    let victim = loop {
        if aim == "any" || Instant::now() > aim_deadline {
            break candidates[rng.below(candidates.len() as u64) as usize];
        }
        if let Some(&i) = candidates.iter().find(|&&i| run.slots[i].phase() == aim) {
            break i;
        }
        std::thread::sleep(Duration::from_micros(500));
    };
    run.kill_and_restart(victim);
}
