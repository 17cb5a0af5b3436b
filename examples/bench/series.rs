//! Series: one alternative measured over interleaved rounds, and the statistics of its results.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::*;

pub(crate) struct Series {
    pub(crate) job: Job,
    pub(crate) outcomes: Vec<Outcome>,
}

impl Series {
    pub(crate) fn new(setup: Setup, role: Role, processes: usize, dbs: Vec<PathBuf>) -> Series {
        Series::of(Job::new(setup, role, processes, dbs))
    }

    pub(crate) fn of(job: Job) -> Series {
        Series {
            job,
            outcomes: Vec::new(),
        }
    }

    pub(crate) fn name(&self) -> String {
        format!("{}, {}", self.label(), self.job.workload())
    }

    /// The setup's label, with the mode the shim chose when it is the shim.
    pub(crate) fn label(&self) -> String {
        let network = self.outcomes.iter().find_map(|o| o.network);
        match (self.job.setup.vfs, network) {
            ("netfs", Some(true)) => format!("{} [network mode]", self.job.setup.label),
            ("netfs", Some(false)) => format!("{} [native]", self.job.setup.label),
            _ => self.job.setup.label.to_string(),
        }
    }

    pub(crate) fn rates(&self) -> Vec<f64> {
        self.outcomes.iter().map(Outcome::txn_per_s).collect()
    }

    pub(crate) fn stats(&self) -> Option<Stats> {
        Stats::of(&self.rates())
    }

    pub(crate) fn errors(&self) -> BTreeMap<String, u64> {
        let mut all = BTreeMap::new();
        for (message, count) in self.outcomes.iter().flat_map(|o| &o.errors) {
            *all.entry(message.clone()).or_default() += count;
        }
        all
    }

    pub(crate) fn busy(&self) -> u64 {
        self.outcomes.iter().map(|o| o.busy).sum()
    }

    /// "812 txn/s (790–830)", when each writer was done where each had a quota, and the
    /// errors, if any.
    pub(crate) fn value(&self) -> String {
        let mut value = match self.stats() {
            Some(s) => format!("{} txn/s ({}–{})", rate(s.median), rate(s.min), rate(s.max)),
            None => "no data".to_string(),
        };
        if self.job.until_commits.is_some() {
            // Each round: when each writer met its quota, in worker order ("—": it did not;
            // the errors say why).
            let rounds: Vec<String> = self
                .outcomes
                .iter()
                .map(|o| {
                    let done: Vec<String> = o
                        .finished_s
                        .iter()
                        .map(|f| f.map_or("—".into(), |s| format!("{s:.1}")))
                        .collect();
                    done.join(" / ")
                })
                .collect();
            let _ = write!(
                value,
                "; {}s done after {} s",
                self.job.role.noun(),
                rounds.join(" · ")
            );
        }
        let errors = self.errors();
        if !errors.is_empty() {
            let list: Vec<String> = errors.iter().map(|(m, n)| format!("{m} ×{n}")).collect();
            let _ = write!(value, "; errors: {}", list.join(", "));
        }
        value
    }
}

/// Runs every series once per round, in order, for `rounds` rounds (A, B, A, B, ...), each
/// for a window of `seconds` or until its quota is met. Within a round all series get the
/// same seeds, so the same payloads.
pub(crate) fn run_rounds(series: &mut [Series], rounds: u32, seconds: f64) {
    let window = Duration::from_secs_f64(seconds);
    for round in 0..rounds {
        for s in series.iter_mut() {
            let started = Instant::now();
            let outcome = measure(&s.job, s.job.stop(window), u64::from(round) * 1000);
            let txn_per_s = outcome.txn_per_s();
            let errors: u64 = outcome.errors.values().sum();
            s.outcomes.push(outcome);
            eprintln!(
                "  round {}/{rounds}  {:<62} {:>8} txn/s  ({:.1} s wall{})",
                round + 1,
                s.name(),
                rate(txn_per_s),
                started.elapsed().as_secs_f64(),
                if errors > 0 {
                    format!(", {errors} errors")
                } else {
                    String::new()
                }
            );
        }
    }
}

#[derive(Clone, Copy)]
pub(crate) struct Stats {
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
}

impl Stats {
    pub(crate) fn of(values: &[f64]) -> Option<Stats> {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let mid = sorted.len() / 2;
        let median = if sorted.len().is_multiple_of(2) {
            (sorted[mid - 1] + sorted[mid]) / 2.0
        } else {
            sorted[mid]
        };
        Some(Stats {
            median,
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        })
    }
}

/// A rate with as many digits as it deserves.
pub(crate) fn rate(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// The `p`-th quantile (0..=1) of sorted values, nearest rank.
pub(crate) fn quantile(sorted: &[u64], p: f64) -> u64 {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}
