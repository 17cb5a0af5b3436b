//! Command-line options and the quick and full profiles.

use std::path::{Path, PathBuf};

use super::*;

pub(crate) struct Options {
    pub(crate) full: bool,
    pub(crate) out: PathBuf,
    pub(crate) only: Option<String>,
    pub(crate) seconds: Option<f64>,
    pub(crate) rounds: Option<u32>,
    pub(crate) work_dir: Option<PathBuf>,
}

impl Options {
    pub(crate) fn parse(args: &[String]) -> Result<Options, String> {
        let mut options = Options {
            full: false,
            out: Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench"),
            only: None,
            seconds: None,
            rounds: None,
            work_dir: None,
        };
        let mut flags = Flags(args.iter());
        while let Some(flag) = flags.next_flag() {
            match flag {
                "--full" => options.full = true,
                "--out" => options.out = PathBuf::from(flags.value(flag)?),
                "--work-dir" => options.work_dir = Some(PathBuf::from(flags.value(flag)?)),
                "--only" => {
                    let name = flags.value(flag)?;
                    if !SCENARIOS.iter().any(|(known, _)| *known == name) {
                        let known: Vec<&str> = SCENARIOS.iter().map(|(n, _)| *n).collect();
                        return Err(format!("unknown scenario {name}; known: {known:?}"));
                    }
                    options.only = Some(name.to_string());
                }
                "--seconds" => {
                    let seconds: f64 = flags.number(flag)?;
                    if seconds.is_nan() || seconds <= 0.0 {
                        return Err("--seconds must be positive".into());
                    }
                    options.seconds = Some(seconds);
                }
                "--rounds" => options.rounds = Some(flags.number::<u32>(flag)?.max(1)),
                other => return Err(format!("unknown option {other}")),
            }
        }
        Ok(options)
    }

    pub(crate) fn profile(&self) -> Profile {
        let mut profile = if self.full { FULL } else { QUICK };
        if let Some(seconds) = self.seconds {
            profile.local_seconds = seconds;
            profile.sshfs_seconds = seconds;
        }
        if let Some(rounds) = self.rounds {
            profile.rounds = rounds;
            profile.testbed_rounds = rounds;
        }
        profile
    }
}

/// Command-line arguments, read as `--flag [value]`.
pub(crate) struct Flags<'a>(pub(crate) std::slice::Iter<'a, String>);

impl<'a> Flags<'a> {
    pub(crate) fn next_flag(&mut self) -> Option<&'a str> {
        self.0.next().map(String::as_str)
    }

    pub(crate) fn value(&mut self, flag: &str) -> Result<&'a str, String> {
        self.next_flag().ok_or(format!("{flag} needs a value"))
    }

    pub(crate) fn number<T: std::str::FromStr>(&mut self, flag: &str) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        self.value(flag)?
            .parse()
            .map_err(|e| format!("{flag}: {e}"))
    }
}

/// Sizes and durations of one run.
#[derive(Clone, Copy)]
pub(crate) struct Profile {
    pub(crate) name: &'static str,
    pub(crate) rows: u64,
    pub(crate) rounds: u32,
    pub(crate) local_seconds: f64,
    /// The testbeds stall for many seconds at times (see the sshfs notes in the report), so
    /// their windows are longer and, in quick mode, there is one round.
    pub(crate) testbed_rounds: u32,
    pub(crate) sshfs_seconds: f64,
    /// Commits each of four writers makes on the sshfs and SMB testbeds, and how long they
    /// have for it: a starved writer must count against its setup, which a window hides.
    pub(crate) sshfs_commits_each: u64,
    pub(crate) smb_commits_each: u64,
    pub(crate) finish_within: Duration,
    /// Write transactions traced per setup for the cost anatomy, on the local disk and on
    /// the sshfs testbed (where one takes tens of milliseconds).
    pub(crate) strace_transactions: u64,
    pub(crate) testbed_strace_transactions: u64,
    /// Write transactions traced with the file server (slowed much more by its tracing).
    pub(crate) server_strace_transactions: u64,
}

pub(crate) const QUICK: Profile = Profile {
    name: "quick",
    rows: 20_000,
    rounds: 3,
    local_seconds: 1.5,
    testbed_rounds: 1,
    sshfs_seconds: 5.0,
    sshfs_commits_each: 40,
    smb_commits_each: 25,
    finish_within: Duration::from_secs(90),
    strace_transactions: 100,
    testbed_strace_transactions: 60,
    server_strace_transactions: 20,
};

pub(crate) const FULL: Profile = Profile {
    name: "full",
    rows: 50_000,
    rounds: 5,
    local_seconds: 5.0,
    testbed_rounds: 3,
    sshfs_seconds: 10.0,
    sshfs_commits_each: 120,
    smb_commits_each: 60,
    finish_within: Duration::from_secs(300),
    strace_transactions: 1000,
    testbed_strace_transactions: 400,
    server_strace_transactions: 100,
};
