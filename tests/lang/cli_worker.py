"""A writer or reader that is Debian's sqlite3 command-line shell: this script only feeds it
SQL and keeps the logs (tests/common/worker.rs's format). With the job's VFS `netfs` the shell
runs `.load` on the extension (SQLITE_NETFS_EXTENSION) first, so it becomes the default VFS
and `.open` takes the plain path; with `unix` (the native control) nothing is loaded.

The writer's shell runs with `.bail on`: the `ack:N` line after a COMMIT is printed only if
that COMMIT returned OK; the first error ends the shell, whose message is tallied, and a new
shell goes on from the next transaction (BUSY counts as a retry, as in the Rust workers).
"""

import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from job import payload_size, reader_summary, run, summary  # noqa: E402

SHELL = os.environ.get("SQLITE_NETFS_SQLITE3", "/usr/bin/sqlite3")


def preamble(job, bail):
    lines = [f".bail {'on' if bail else 'off'}"]
    if job["vfs"] == "netfs":
        lines.append(f".load {os.environ['SQLITE_NETFS_EXTENSION']}")
    elif job["vfs"] != "unix":
        raise SystemExit(f"cli worker: unknown vfs {job['vfs']!r}")
    lines.append(f".open {job['db']}")
    lines.append(f".timeout {job['busy_timeout_ms']}")
    if job["journal_mode"]:
        lines.append(f"PRAGMA journal_mode={job['journal_mode']};")
    return lines


def run_shell(script):
    return subprocess.run(
        [SHELL, "-batch", ":memory:"],
        input="\n".join(script) + "\n",
        capture_output=True,
        text=True,
    )


def kind(stderr):
    """`Runtime error near line 9: disk I/O error (10)` -> `disk_I/O_error(10)`."""
    line = next((l for l in stderr.splitlines() if l.strip()), "no message")
    message = re.sub(r"^(Runtime error|Parse error|Error)[^:]*: ", "", line.strip())
    return re.sub(r"[ ,=]", "_", message)


def is_busy(message):
    return message.startswith(("database_is_locked", "database_table_is_locked"))


def writer(job, log):
    errors, busy, seq, failures = {}, 0, 0, 0
    while seq < job["transactions"] and failures < 50:
        script = preamble(job, bail=True)
        for s in range(seq, job["transactions"]):
            script += [
                "BEGIN IMMEDIATE;",
                "UPDATE counter SET v = v + 1 WHERE id = 1;",
                f"INSERT INTO rows(worker, seq, payload) VALUES ({job['worker_id']}, {s}, "
                f"randomblob({payload_size(job, s)}));",
                "COMMIT;",
                f"SELECT 'ack:{s}';",
            ]
        done = run_shell(script)
        for line in done.stdout.splitlines():
            if line.startswith("ack:"):
                log.write(f"{line[4:]}\n")
                seq = int(line[4:]) + 1
                failures = 0
        log.flush()
        if done.returncode != 0:
            message = kind(done.stderr)
            if is_busy(message):
                busy += 1
            else:
                errors[message] = errors.get(message, 0) + 1
                failures += 1
                time.sleep(0.02)
    log.write(f"# done busy={busy} errors={summary(errors)}\n")


def reader(job, log):
    checks = torn = busy = 0
    errors = {}
    started = time.monotonic()
    check = (
        "BEGIN; SELECT 'chk:' || ((SELECT v FROM counter WHERE id = 1) = "
        "(SELECT count(*) FROM rows)); COMMIT;"
    )
    while not os.path.exists(job["stop_file"]) and time.monotonic() - started < 600:
        done = run_shell(preamble(job, bail=False) + [check] * 50)
        for line in done.stdout.splitlines():
            if line.startswith("chk:"):
                checks += 1
                torn += line != "chk:1"
        for line in done.stderr.splitlines():
            message = kind(line)
            if "cannot_commit_-_no_transaction_is_active" in message:
                continue  # the COMMIT after a failed BEGIN: that failure is counted
            if is_busy(message):
                busy += 1
            else:
                errors[message] = errors.get(message, 0) + 1
    log.write(reader_summary(checks, torn, busy, errors))


if __name__ == "__main__":
    run(writer, reader)
