//! The report: rows, verdicts, latency and cost-anatomy records, and their markdown, JSON and chart.

use std::collections::BTreeMap;

use super::*;

pub(crate) enum Verdict {
    Met,
    Missed,
    Reference,
    AlternativeFailed,
    Skipped(String),
}

impl Verdict {
    pub(crate) fn text(&self) -> String {
        match self {
            Verdict::Met => "met".into(),
            Verdict::Missed => "**missed**".into(),
            Verdict::Reference => "reference".into(),
            Verdict::AlternativeFailed => "alternative failed (see its errors)".into(),
            Verdict::Skipped(reason) => format!("skipped: {reason}"),
        }
    }

    pub(crate) fn key(&self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "missed",
            Verdict::Reference => "reference",
            Verdict::AlternativeFailed => "alternative-failed",
            Verdict::Skipped(_) => "skipped",
        }
    }
}

/// One side of a table row: what was measured, and the figure.
pub(crate) struct Cell {
    pub(crate) label: String,
    pub(crate) value: String,
}

pub(crate) struct Row {
    pub(crate) scenario: &'static str,
    pub(crate) measurement: String,
    pub(crate) subject: Cell,
    pub(crate) alternative: Cell,
    pub(crate) ratio: Option<f64>,
    pub(crate) goal: Option<f64>,
    pub(crate) verdict: Verdict,
}

pub(crate) struct LatencyRecord {
    pub(crate) scenario: &'static str,
    pub(crate) name: String,
    pub(crate) samples: usize,
    pub(crate) p50_us: u64,
    pub(crate) p99_us: u64,
    pub(crate) max_us: u64,
    /// The fewest commits of a process / the most, over all rounds.
    pub(crate) fairness: Option<f64>,
    /// Commits of each process, summed over the rounds.
    pub(crate) commits_in_all: Vec<u64>,
}

/// Calls per transaction and the wall time spent in them.
#[derive(Default, Clone, Copy)]
pub(crate) struct Cost {
    pub(crate) calls: f64,
    pub(crate) ms: f64,
}

impl Cost {
    pub(crate) fn add(self, other: Cost) -> Cost {
        Cost {
            calls: self.calls + other.calls,
            ms: self.ms + other.ms,
        }
    }
}

/// Per transaction, by (file, system call).
pub(crate) type Costs = BTreeMap<(String, String), Cost>;

/// The sum of the costs whose file passes `keep`.
pub(crate) fn total(costs: &Costs, keep: impl Fn(&str) -> bool) -> Cost {
    costs
        .iter()
        .filter(|((file, _), _)| keep(file))
        .fold(Cost::default(), |sum, (_, cost)| sum.add(*cost))
}

/// One writer's transactions under strace (see [`cost_anatomy`]).
pub(crate) struct AnatomyRecord {
    pub(crate) testbed: &'static str,
    pub(crate) label: &'static str,
    pub(crate) transactions: u64,
    /// Wall time per transaction between the window markers, slowed by tracing.
    pub(crate) wall_ms: f64,
    /// The writer's calls.
    pub(crate) client: Costs,
    /// Transactions of the run that traced the server.
    pub(crate) server_transactions: u64,
    /// The file server's calls, where it was traced.
    pub(crate) server: Option<Costs>,
}

impl AnatomyRecord {
    /// The calls of the thread that ran the transactions.
    pub(crate) fn transaction_thread(&self) -> Cost {
        total(&self.client, |file| !file.ends_with(OTHER_THREAD))
    }

    /// The server's calls on files but their `lseek`s: one per file operation it was asked
    /// for (OpenSSH's SFTP server seeks before each read and write).
    pub(crate) fn server_file_operations(&self) -> Option<Cost> {
        let server = self.server.as_ref()?;
        Some(
            server
                .iter()
                .filter(|((file, call), _)| file != CHANNEL && file != NO_FILE && call != "lseek")
                .fold(Cost::default(), |sum, (_, cost)| sum.add(*cost)),
        )
    }
}

#[derive(Default)]
pub(crate) struct Report {
    /// The scenario now running; rows are filed under it.
    pub(crate) scenario: &'static str,
    pub(crate) rows: Vec<Row>,
    pub(crate) series: Vec<(&'static str, Series)>,
    pub(crate) latency: Vec<LatencyRecord>,
    pub(crate) anatomy: Vec<AnatomyRecord>,
}

impl Report {
    /// A row comparing two series by their median txn/s. An alternative that failed gets no
    /// ratio (its errors are shown instead); a subject with errors misses its goal.
    pub(crate) fn compare(
        &mut self,
        measurement: String,
        subject: &Series,
        alt: &Series,
        goal: Option<f64>,
    ) {
        let medians = (subject.stats(), alt.stats());
        let alt_failed = !alt.errors().is_empty();
        let ratio = match medians {
            (Some(s), Some(a)) if a.median > 0.0 && !alt_failed => Some(s.median / a.median),
            _ => None,
        };
        let verdict = match (goal, ratio) {
            (_, None) if alt_failed => Verdict::AlternativeFailed,
            (None, _) => Verdict::Reference,
            (Some(g), Some(r)) if r >= g && subject.errors().is_empty() => Verdict::Met,
            (Some(_), _) => Verdict::Missed,
        };
        // Where the process counts differ (scaling), the labels say so.
        let label = |s: &Series| {
            if subject.job.processes == alt.job.processes {
                s.label()
            } else {
                format!("{}, {}", s.label(), s.job.role.processes(s.job.processes))
            }
        };
        self.rows.push(Row {
            scenario: self.scenario,
            measurement,
            subject: Cell {
                label: label(subject),
                value: subject.value(),
            },
            alternative: Cell {
                label: label(alt),
                value: alt.value(),
            },
            ratio,
            goal,
            verdict,
        });
    }

    /// Rows for lock latency and fairness, subject beside alternative, without goals.
    pub(crate) fn latency(&mut self, subject: &Series, alt: &Series) {
        let [s, a] = [subject, alt].map(|series| latency_record(self.scenario, series));
        let who = subject.job.role.processes(subject.job.processes);
        let cells = |f: &dyn Fn(&LatencyRecord) -> String| {
            [(subject, &s), (alt, &a)].map(|(series, record)| Cell {
                label: series.label(),
                value: f(record),
            })
        };
        let [sl, al] = cells(&|r| {
            format!(
                "p50 {} · p99 {} · max {} ms",
                millis(r.p50_us),
                millis(r.p99_us),
                millis(r.max_us)
            )
        });
        self.push_reference(format!("BEGIN IMMEDIATE until OK, {who}"), sl, al, None);
        let [sf, af] = cells(&|r| {
            let commits: Vec<String> = r.commits_in_all.iter().map(u64::to_string).collect();
            match r.fairness {
                Some(f) => format!("{f:.2} ({} commits)", commits.join(" / ")),
                None => "no data".into(),
            }
        });
        let measurement = format!("commits per process, min/max, {who}");
        self.push_reference(measurement, sf, af, None);
        self.latency.extend([s, a]);
    }

    pub(crate) fn push_reference(
        &mut self,
        measurement: String,
        subject: Cell,
        alternative: Cell,
        ratio: Option<f64>,
    ) {
        self.rows.push(Row {
            scenario: self.scenario,
            measurement,
            subject,
            alternative,
            ratio,
            goal: None,
            verdict: Verdict::Reference,
        });
    }

    /// Rows for the cost anatomy of one filesystem: the calls of a write transaction and,
    /// where the server was traced, its file operations, subject beside alternative.
    pub(crate) fn anatomy(&mut self, records: Vec<AnatomyRecord>) {
        let [subject, alt] = &records[..] else {
            self.skipped("expected a subject and an alternative");
            return;
        };
        let row = |calls_of: &dyn Fn(&AnatomyRecord) -> Option<Cost>, what: &str| {
            let cell = |r: &AnatomyRecord| Cell {
                label: r.label.to_string(),
                value: calls_of(r).map_or("not traced".into(), |c| {
                    format!("{:.1} {what}, {:.2} ms in them", c.calls, c.ms)
                }),
            };
            let ratio = match (calls_of(subject), calls_of(alt)) {
                (Some(s), Some(a)) if a.calls > 0.0 => Some(s.calls / a.calls),
                _ => None,
            };
            (cell(subject), cell(alt), ratio)
        };
        let (s, a, ratio) = row(&|r| Some(r.transaction_thread()), "syscalls");
        let walls = format!(
            "; {:.2} / {:.2} ms per txn traced",
            subject.wall_ms, alt.wall_ms
        );
        let measurement = format!(
            "syscalls per write txn, 1 writer, {} ({} txns under strace{walls})",
            subject.testbed, subject.transactions
        );
        self.push_reference(measurement, s, a, ratio);
        if subject.server.is_some() || alt.server.is_some() {
            let (s, a, ratio) = row(&AnatomyRecord::server_file_operations, "file operations");
            let measurement = format!(
                "file-server operations per write txn, {} (the SFTP servers' file syscalls)",
                subject.testbed
            );
            self.push_reference(measurement, s, a, ratio);
        }
        self.anatomy.extend(records);
    }

    pub(crate) fn skipped(&mut self, reason: &str) {
        let dash = || Cell {
            label: String::new(),
            value: "—".into(),
        };
        self.rows.push(Row {
            scenario: self.scenario,
            measurement: "—".into(),
            subject: dash(),
            alternative: dash(),
            ratio: None,
            goal: None,
            verdict: Verdict::Skipped(reason.to_string()),
        });
    }

    pub(crate) fn keep(&mut self, series: Vec<Series>) {
        let scenario = self.scenario;
        self.series
            .extend(series.into_iter().map(|s| (scenario, s)));
    }
}

pub(crate) fn latency_record(scenario: &'static str, series: &Series) -> LatencyRecord {
    let mut all: Vec<u64> = series
        .outcomes
        .iter()
        .flat_map(|o| o.latencies_us.iter().copied())
        .collect();
    all.sort_unstable();
    let commits = commits_in_all(series);
    let fairness = match (commits.iter().min(), commits.iter().max()) {
        (Some(&min), Some(&max)) if max > 0 => Some(min as f64 / max as f64),
        _ => None,
    };
    let at = |p| if all.is_empty() { 0 } else { quantile(&all, p) };
    LatencyRecord {
        scenario,
        name: series.name(),
        samples: all.len(),
        p50_us: at(0.50),
        p99_us: at(0.99),
        max_us: all.last().copied().unwrap_or(0),
        fairness,
        commits_in_all: commits,
    }
}

pub(crate) fn commits_in_all(series: &Series) -> Vec<u64> {
    let mut sums: Vec<u64> = Vec::new();
    for outcome in &series.outcomes {
        for (i, commits) in outcome.commits_per_process.iter().enumerate() {
            if sums.len() <= i {
                sums.push(0);
            }
            sums[i] += commits;
        }
    }
    sums
}

pub(crate) fn millis(us: u64) -> String {
    let ms = us as f64 / 1000.0;
    if ms >= 10.0 {
        format!("{ms:.0}")
    } else {
        format!("{ms:.2}")
    }
}
