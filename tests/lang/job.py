"""The job a language worker runs, as the Rust tests hand it over (tests/common/worker.rs):
`key=value` lines in SQLITE_NETFS_TEST_JOB."""

import os


def load_job():
    job = {}
    for line in os.environ["SQLITE_NETFS_TEST_JOB"].splitlines():
        key, _, value = line.partition("=")
        job[key] = value
    for key in ("worker_id", "transactions", "busy_timeout_ms"):
        job[key] = int(job[key])
    return job


def payload_size(job, seq):
    """The size of transaction `seq`'s random payload, as the Rust workers compute it."""
    kind, _, n = job["payload"].partition(":")
    n = int(n)
    if kind == "fixed":
        return n
    if kind == "growing":
        return 50 + (seq * 97) % max(n, 1)
    raise ValueError(f"unknown payload {job['payload']!r}")


def summary(counts):
    return ",".join(f"{k}={v}" for k, v in sorted(counts.items()))


def reader_summary(checks, torn, busy, errors):
    return f"# reader checks={checks} torn={torn} busy={busy} errors={summary(errors)}\n"


def run(writer, reader):
    """Runs the job's role, `writer(job, log)` or `reader(job, log)`, appending to its log."""
    job = load_job()
    with open(job["out"], "a") as log:
        {"writer": writer, "reader": reader}[job["role"]](job, log)
