//! The run: the scenarios chosen, and the files they leave.

use std::fmt::Write as _;
use std::fs;
use std::time::{Duration, Instant};

use super::*;

/// Everything the outputs are made from.
pub(crate) struct Run {
    pub(crate) machine: Machine,
    pub(crate) profile: Profile,
    pub(crate) command: String,
    pub(crate) elapsed: Duration,
    pub(crate) load_at_end: String,
    pub(crate) report: Report,
}

pub(crate) fn run_bench(options: &Options, args: &[String]) -> Result<(), String> {
    let profile = options.profile();
    fs::create_dir_all(&options.out)
        .map_err(|e| format!("create {}: {e}", options.out.display()))?;
    let work_root = match &options.work_dir {
        Some(dir) => dir.clone(),
        None => default_work_root(&options.out),
    };
    let work = tempfile::Builder::new()
        .prefix("sqlite-netfs-bench-")
        .tempdir_in(&work_root)
        .map_err(|e| format!("work dir in {}: {e}", work_root.display()))?;
    let machine = Machine::probe(&work_root);
    eprintln!("machine: {}", machine.describe());

    let started = Instant::now();
    let template = work.path().join("template.db");
    eprintln!("creating the template database ({} rows)", profile.rows);
    create_template(&template, profile.rows).map_err(|e| format!("template database: {e}"))?;
    let ctx = Context {
        profile,
        work: work.path().to_path_buf(),
        template,
    };
    let mut report = Report::default();
    for (name, scenario) in SCENARIOS {
        if options.only.as_deref().is_some_and(|only| only != name) {
            continue;
        }
        eprintln!("== {name}");
        let scenario_started = Instant::now();
        report.scenario = name;
        if let Err(reason) = scenario(&ctx, &mut report) {
            eprintln!("  skipped: {reason}");
            report.skipped(&first_line(&reason));
        }
        eprintln!("  ({:.0} s)", scenario_started.elapsed().as_secs_f64());
    }

    let run = Run {
        machine,
        profile,
        command: command_line(args),
        elapsed: started.elapsed(),
        load_at_end: load_average(),
        report,
    };
    let markdown = render_markdown(&run);
    print!("{markdown}");
    for (name, text) in [
        ("results.md", markdown),
        ("results.json", render_json(&run)),
        ("chart.svg", render_chart(&run)),
    ] {
        let path = options.out.join(name);
        fs::write(&path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
    }
    eprintln!(
        "wrote results.md, results.json and chart.svg to {}",
        options.out.display()
    );
    Ok(())
}

pub(crate) fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or("");
    line.chars().take(200).collect()
}

pub(crate) fn command_line(args: &[String]) -> String {
    let mut command = "cargo run --release --example bench".to_string();
    if !args.is_empty() {
        let _ = write!(command, " -- {}", args.join(" "));
    }
    command
}

pub(crate) fn render_markdown(run: &Run) -> String {
    let p = &run.profile;
    let mut md = format!("# sqlite-netfs benchmark ({} mode)\n\n", p.name);
    let _ = writeln!(md, "- **Command:** `{}`", run.command);
    let _ = writeln!(md, "- **Machine:** {}", run.machine.describe());
    let _ = writeln!(
        md,
        "- **Load average** (1, 5, 15 min): {} at the start, {} at the end",
        run.machine.load_at_start, run.load_at_end
    );
    let _ = writeln!(
        md,
        "- **Run:** {} rows; local disk: {} × {} s per alternative; testbeds: {}, one writer {} s (sshfs), four writers until each committed {} (sshfs) or {} (SMB), within {} s; {:.0} s in all",
        p.rows,
        plural(p.rounds as usize, "round"),
        p.local_seconds,
        plural(p.testbed_rounds as usize, "round"),
        p.sshfs_seconds,
        p.sshfs_commits_each,
        p.smb_commits_each,
        p.finish_within.as_secs(),
        run.elapsed.as_secs_f64()
    );
    md.push_str(
        "- **Reading it:** each round runs every alternative once, in turn; figures are the \
         median txn/s over the rounds (min–max in brackets), and the ratio is subject / \
         alternative of the medians.\n\n",
    );
    md.push_str("| Scenario | Measurement | Subject | Alternative | Ratio | Goal | Result |\n");
    md.push_str("|---|---|---|---|---|---|---|\n");
    for row in &run.report.rows {
        let cell = |c: &Cell| {
            if c.label.is_empty() {
                escape_md(&c.value)
            } else {
                format!("{}: {}", escape_md(&c.label), escape_md(&c.value))
            }
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} |",
            row.scenario,
            escape_md(&row.measurement),
            cell(&row.subject),
            cell(&row.alternative),
            row.ratio.map_or("—".into(), |r| format!("{r:.2}")),
            row.goal.map_or("—".into(), |g| format!("≥ {g}")),
            escape_md(&row.verdict.text())
        );
    }
    md.push_str(&anatomy_markdown(&run.report.anatomy));
    md
}

/// The cost anatomy of each filesystem: the writer's calls and, where traced, the file
/// server's, by file and call, subject beside alternative.
pub(crate) fn anatomy_markdown(records: &[AnatomyRecord]) -> String {
    let mut md = String::new();
    for pair in records.chunks(2) {
        let first = &pair[0];
        let _ = write!(
            md,
            "\n## Where a write transaction's time goes: {}\n\n\
             One writer, {} write transactions under `strace -ff -T -y`, per transaction: \
             calls, and milliseconds of wall time inside them (a call on a network \
             filesystem waits for its round trips to the server). Tracing slows every call; \
             the counts are exact, the times inflated alike for both sides.\n\n",
            first.testbed, first.transactions
        );
        let server_runs = pair
            .iter()
            .filter(|r| r.server.is_some())
            .map(|r| r.server_transactions)
            .max();
        costs_table(&mut md, "The writer's system calls", pair, |r| {
            Some(&r.client)
        });
        if let Some(transactions) = server_runs {
            let title = format!(
                "The file server's system calls, from a second run of {transactions} \
                 transactions that traced the SFTP servers too (each request served is one \
                 call on a file, a read or write one more `lseek`; \"pipes and sockets\" \
                 carry the requests and replies)"
            );
            costs_table(&mut md, &title, pair, |r| r.server.as_ref());
        }
    }
    md
}

/// A table of `costs` side by side: a bold subtotal per file, most time first, then its
/// calls; calls below 0.05 per transaction are left to the JSON.
pub(crate) fn costs_table(
    md: &mut String,
    title: &str,
    records: &[AnatomyRecord],
    costs: impl Fn(&AnatomyRecord) -> Option<&Costs>,
) {
    let _ = write!(md, "{title}:\n\n| file | call |");
    for record in records {
        let _ = write!(md, " {0} calls | {0} ms |", escape_md(record.label));
    }
    md.push_str("\n|---|---|");
    md.push_str(&"---:|---:|".repeat(records.len()));
    md.push('\n');
    let cell = |record: &AnatomyRecord, keep: &dyn Fn(&(String, String)) -> bool| {
        costs(record).map_or(Cost::default(), |c| {
            c.iter()
                .filter(|(key, _)| keep(key))
                .fold(Cost::default(), |sum, (_, cost)| sum.add(*cost))
        })
    };
    let row =
        |md: &mut String, file: &str, call: &str, keep: &dyn Fn(&(String, String)) -> bool| {
            let _ = write!(md, "| {file} | {call} |");
            for record in records {
                let c = cell(record, keep);
                let _ = write!(md, " {:.2} | {:.2} |", c.calls, c.ms);
            }
            md.push('\n');
        };
    let most = |keep: &dyn Fn(&(String, String)) -> bool| {
        records
            .iter()
            .map(|r| cell(r, keep))
            .fold(Cost::default(), |a, b| Cost {
                calls: a.calls.max(b.calls),
                ms: a.ms.max(b.ms),
            })
    };
    let keys: Vec<&(String, String)> = records
        .iter()
        .filter_map(&costs)
        .flat_map(|c| c.keys())
        .collect();
    let mut files: Vec<&str> = keys.iter().map(|(file, _)| file.as_str()).collect();
    files.sort_unstable();
    files.dedup();
    files.sort_by(|a, b| {
        let ms = |f: &str| most(&|(file, _)| file == f).ms;
        ms(b).total_cmp(&ms(a))
    });
    for file in files {
        row(md, &format!("**{file}**"), "all", &|(f, _)| f == file);
        let mut calls: Vec<&str> = keys
            .iter()
            .filter(|(f, _)| f == file)
            .map(|(_, call)| call.as_str())
            .collect();
        calls.sort_unstable();
        calls.dedup();
        let key = |call: &str| (file.to_string(), call.to_string());
        calls.retain(|call| most(&|k| *k == key(call)).calls >= 0.05);
        calls.sort_by(|a, b| {
            let ms = |call: &str| most(&|k| *k == key(call)).ms;
            ms(b).total_cmp(&ms(a))
        });
        for call in calls {
            row(md, "", call, &|k| *k == key(call));
        }
    }
    // Other threads run beside the transactions, not in their time.
    let own = |(file, _): &(String, String)| !file.ends_with(OTHER_THREAD);
    if keys.iter().all(|key| own(key)) {
        row(md, "**all**", "", &own);
    } else {
        row(md, "**all, transaction thread**", "", &own);
    }
    md.push('\n');
}

/// "1 round", "3 rounds"
pub(crate) fn plural(count: usize, noun: &str) -> String {
    format!("{count} {noun}{}", if count == 1 { "" } else { "s" })
}

pub(crate) fn escape_md(text: &str) -> String {
    text.replace('|', "\\|")
}

pub(crate) fn render_json(run: &Run) -> String {
    let m = &run.machine;
    let p = &run.profile;
    let machine = format!(
        "{{\"cpus\": {}, \"cpu_model\": {}, \"kernel\": {}, \"sqlite\": {}, \"work_dir\": {}, \"work_fs\": {}, \"load_average_start\": {}, \"load_average_end\": {}, \"source\": {}}}",
        m.cpus,
        json_str(&m.cpu_model),
        json_str(&m.kernel),
        json_str(m.sqlite),
        json_str(&m.work_root.display().to_string()),
        json_str(&m.work_fs),
        json_str(&m.load_at_start),
        json_str(&run.load_at_end),
        json_str(&m.source)
    );
    let profile = format!(
        "{{\"mode\": {}, \"rows\": {}, \"rounds\": {}, \"seconds\": {}, \"testbed_rounds\": {}, \"sshfs_seconds\": {}, \"sshfs_commits_each\": {}, \"smb_commits_each\": {}, \"finish_within_seconds\": {}, \"strace_transactions\": {}, \"testbed_strace_transactions\": {}, \"server_strace_transactions\": {}}}",
        json_str(p.name),
        p.rows,
        p.rounds,
        json_num(p.local_seconds),
        p.testbed_rounds,
        json_num(p.sshfs_seconds),
        p.sshfs_commits_each,
        p.smb_commits_each,
        p.finish_within.as_secs(),
        p.strace_transactions,
        p.testbed_strace_transactions,
        p.server_strace_transactions
    );
    let rows = json_list(run.report.rows.iter().map(|r| {
        format!(
            "{{\"scenario\": {}, \"measurement\": {}, \"subject\": {}, \"subject_value\": {}, \"alternative\": {}, \"alternative_value\": {}, \"ratio\": {}, \"goal\": {}, \"result\": {}, \"note\": {}}}",
            json_str(r.scenario),
            json_str(&r.measurement),
            json_str(&r.subject.label),
            json_str(&r.subject.value),
            json_str(&r.alternative.label),
            json_str(&r.alternative.value),
            json_opt(r.ratio),
            json_opt(r.goal),
            json_str(r.verdict.key()),
            json_str(&match &r.verdict {
                Verdict::Skipped(reason) => reason.clone(),
                _ => String::new(),
            })
        )
    }));
    let series = json_list(
        run.report
            .series
            .iter()
            .map(|(scenario, s)| series_json(scenario, s)),
    );
    let latency = json_list(run.report.latency.iter().map(|l| {
        format!(
            "{{\"scenario\": {}, \"name\": {}, \"samples\": {}, \"p50_ms\": {}, \"p99_ms\": {}, \"max_ms\": {}, \"fairness_min_over_max\": {}, \"commits_in_all\": {}}}",
            json_str(l.scenario),
            json_str(&l.name),
            l.samples,
            json_num(l.p50_us as f64 / 1000.0),
            json_num(l.p99_us as f64 / 1000.0),
            json_num(l.max_us as f64 / 1000.0),
            json_opt(l.fairness),
            json_list(l.commits_in_all.iter().map(u64::to_string))
        )
    }));
    let anatomy = json_list(run.report.anatomy.iter().map(|a| {
        format!(
            "{{\"testbed\": {}, \"setup\": {}, \"transactions\": {}, \"wall_ms_per_transaction\": {}, \"client\": {}, \"server_transactions\": {}, \"server\": {}}}",
            json_str(a.testbed),
            json_str(a.label),
            a.transactions,
            json_num(a.wall_ms),
            costs_json(&a.client),
            a.server_transactions,
            a.server.as_ref().map_or("null".into(), costs_json)
        )
    }));
    format!(
        "{{\n\"command\": {},\n\"elapsed_seconds\": {},\n\"machine\": {machine},\n\"profile\": {profile},\n\"rows\": {rows},\n\"series\": {series},\n\"latency\": {latency},\n\"anatomy\": {anatomy}\n}}\n",
        json_str(&run.command),
        json_num(run.elapsed.as_secs_f64())
    )
}

/// Per transaction: `[{"file", "call", "calls", "ms"}, ...]`.
pub(crate) fn costs_json(costs: &Costs) -> String {
    json_list(costs.iter().map(|((file, call), cost)| {
        format!(
            "{{\"file\": {}, \"call\": {}, \"calls\": {}, \"ms\": {}}}",
            json_str(file),
            json_str(call),
            json_num(cost.calls),
            json_num(cost.ms)
        )
    }))
}

pub(crate) fn series_json(scenario: &str, s: &Series) -> String {
    let stats = s.stats();
    let errors = s
        .errors()
        .iter()
        .map(|(m, n)| format!("{}: {n}", json_str(m)))
        .collect::<Vec<_>>()
        .join(", ");
    let journal = s.outcomes.iter().find_map(|o| o.journal.as_deref());
    format!(
        "{{\"scenario\": {}, \"name\": {}, \"txn_per_s\": {}, \"median\": {}, \"min\": {}, \"max\": {}, \"commits_per_process\": {}, \"busy_retries\": {}, \"errors\": {{{errors}}}, \"network_mode\": {}, \"journal_mode\": {}}}",
        json_str(scenario),
        json_str(&s.name()),
        json_list(s.rates().into_iter().map(json_num)),
        json_opt(stats.map(|x| x.median)),
        json_opt(stats.map(|x| x.min)),
        json_opt(stats.map(|x| x.max)),
        json_list(
            s.outcomes
                .iter()
                .map(|o| { json_list(o.commits_per_process.iter().map(u64::to_string)) })
        ),
        s.busy(),
        s.outcomes
            .iter()
            .find_map(|o| o.network)
            .map_or("null".into(), |n| n.to_string()),
        journal.map_or("null".into(), json_str)
    )
}

pub(crate) fn json_str(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub(crate) fn json_num(value: f64) -> String {
    if value.is_finite() {
        format!("{value}")
    } else {
        "null".into()
    }
}

pub(crate) fn json_opt(value: Option<f64>) -> String {
    value.map_or("null".into(), json_num)
}

pub(crate) fn json_list(items: impl Iterator<Item = String>) -> String {
    format!("[{}]", items.collect::<Vec<_>>().join(", "))
}

/// A horizontal bar per ratio that has a goal: green where met, red where missed, with the
/// goal as a vertical mark and parity (1.0) as a dashed line.
pub(crate) fn render_chart(run: &Run) -> String {
    const WIDTH: f64 = 1060.0;
    const LABELS: f64 = 540.0;
    const BARS: f64 = 400.0;
    const ROW: f64 = 40.0;
    const TOP: f64 = 64.0;
    let rows: Vec<(&Row, f64, f64)> = run
        .report
        .rows
        .iter()
        .filter_map(|r| Some((r, r.ratio?, r.goal?)))
        .collect();
    let scale_max = rows
        .iter()
        .flat_map(|(_, ratio, goal)| [*ratio, *goal])
        .fold(1.2_f64, f64::max)
        * 1.1;
    let x = |value: f64| LABELS + value / scale_max * BARS;
    let height = TOP + ROW * rows.len().max(1) as f64 + 30.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"22\" font-size=\"16\" font-weight=\"bold\">sqlite-netfs: ratio of median txn/s (bar) against its goal (black mark)</text>\n\
         <text x=\"10\" y=\"42\" fill=\"#555\">{} mode · {}</text>\n",
        run.profile.name,
        escape_xml(&run.machine.describe())
    );
    if rows.is_empty() {
        let _ = writeln!(
            svg,
            "<text x=\"10\" y=\"{}\">no ratio with a goal in this run</text>",
            TOP + 20.0
        );
    } else {
        let parity = x(1.0);
        let bottom = TOP + ROW * rows.len() as f64;
        let _ = writeln!(
            svg,
            "<line x1=\"{parity:.1}\" y1=\"{TOP}\" x2=\"{parity:.1}\" y2=\"{bottom}\" stroke=\"#999\" stroke-dasharray=\"4 3\"/>\n\
             <text x=\"{parity:.1}\" y=\"{}\" text-anchor=\"middle\" fill=\"#555\">1.0</text>",
            bottom + 16.0
        );
    }
    for (i, (row, ratio, goal)) in rows.iter().enumerate() {
        let y = TOP + ROW * i as f64;
        let colour = match row.verdict {
            Verdict::Met => "#2e7d32",
            _ => "#c62828",
        };
        let label = escape_xml(&format!("{}: {}", row.scenario, row.measurement));
        let setups = escape_xml(&format!(
            "{} / {}",
            row.subject.label, row.alternative.label
        ));
        let bar_width = x(*ratio) - LABELS;
        let goal_x = x(*goal);
        let text_x = x(ratio.max(*goal)) + 6.0;
        let _ = writeln!(
            svg,
            "<text x=\"10\" y=\"{label_y}\">{label}</text>\n\
             <text x=\"10\" y=\"{setups_y}\" fill=\"#555\" font-size=\"11\">{setups}</text>\n\
             <rect x=\"{LABELS}\" y=\"{bar_y}\" width=\"{bar_width:.1}\" height=\"20\" fill=\"{colour}\"/>\n\
             <line x1=\"{goal_x:.1}\" y1=\"{mark_top}\" x2=\"{goal_x:.1}\" y2=\"{mark_bottom}\" stroke=\"black\" stroke-width=\"3\"/>\n\
             <text x=\"{text_x:.1}\" y=\"{value_y}\">{ratio:.2} (goal ≥ {goal})</text>",
            label_y = y + 15.0,
            setups_y = y + 29.0,
            bar_y = y + 8.0,
            mark_top = y + 4.0,
            mark_bottom = y + 32.0,
            value_y = y + 22.0,
        );
    }
    svg.push_str("</svg>\n");
    svg
}

pub(crate) fn escape_xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
