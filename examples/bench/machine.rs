//! The machine a run happened on, for the report.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sqlite_netfs::rusqlite;

pub(crate) struct Machine {
    pub(crate) cpus: usize,
    pub(crate) cpu_model: String,
    pub(crate) kernel: String,
    pub(crate) load_at_start: String,
    pub(crate) sqlite: &'static str,
    pub(crate) work_root: PathBuf,
    pub(crate) work_fs: String,
    pub(crate) source: String,
}

impl Machine {
    pub(crate) fn probe(work_root: &Path) -> Machine {
        let cpu_model = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, model)| model.trim().to_string())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            load_at_start: load_average(),
            sqlite: rusqlite::version(),
            work_root: work_root.to_path_buf(),
            work_fs: fs_type(work_root),
            source: source_revision(),
        }
    }

    pub(crate) fn describe(&self) -> String {
        format!(
            "{} CPUs ({}), Linux {}, SQLite {}; databases in {} ({}); sqlite-netfs {}",
            self.cpus,
            self.cpu_model,
            self.kernel,
            self.sqlite,
            self.work_root.display(),
            self.work_fs,
            self.source
        )
    }
}

/// The crate's git revision, and whether the work tree differs from it.
pub(crate) fn source_revision() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(env!("CARGO_MANIFEST_DIR"))
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(revision) => match git(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(changes) if changes.is_empty() => revision,
            _ => format!("{revision} with uncommitted changes"),
        },
        None => "(no git revision)".into(),
    }
}

pub(crate) fn read_trimmed(path: &str) -> String {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// The 1, 5 and 15 minute load averages.
pub(crate) fn load_average() -> String {
    let all = read_trimmed("/proc/loadavg");
    all.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

pub(crate) fn fs_type(dir: &Path) -> String {
    sqlite_netfs::detect(&dir.join("probe.db"))
        .map_or_else(|e| format!("unknown: {e}"), |d| d.fs_type)
}

/// `/var/tmp`, unless it is a tmpfs (fsync would cost nothing and flatter the slow paths):
/// then the output directory.
pub(crate) fn default_work_root(out: &Path) -> PathBuf {
    let var_tmp = PathBuf::from("/var/tmp");
    if var_tmp.is_dir() && fs_type(&var_tmp) != "tmpfs" {
        var_tmp
    } else {
        out.to_path_buf()
    }
}
