"""A writer or reader in Python's sqlite3 module, with the sqlite-netfs package's `load()`
when the job's VFS is `netfs` (the extension becomes the default VFS, and the database is
opened by its plain path, as a program that knows nothing of URIs would), or plain SQLite
(the native control) when it is `unix`. The logs are the Rust workers' (tests/common/worker.rs).
"""

import os
import sqlite3
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from job import payload_size, reader_summary, run, summary  # noqa: E402


def kind(e):
    return getattr(e, "sqlite_errorname", None) or type(e).__name__


def is_busy(e):
    return getattr(e, "sqlite_errorcode", 0) & 0xFF in (5, 6)


def connect(job):
    if job["vfs"] == "netfs":
        import sqlite_netfs

        loader = sqlite3.connect(":memory:")
        sqlite_netfs.load(loader)
        loader.close()
    elif job["vfs"] != "unix":
        raise SystemExit(f"python worker: unknown vfs {job['vfs']!r}")
    conn = sqlite3.connect(
        job["db"], timeout=job["busy_timeout_ms"] / 1000, isolation_level=None
    )
    if job["journal_mode"]:
        conn.execute(f"PRAGMA journal_mode={job['journal_mode']}").fetchall()
    return conn


def connect_or_log(job, log):
    """The connection, or None after logging why it could not be opened."""
    try:
        return connect(job)
    except sqlite3.Error as e:
        log.write(f"# open-error {kind(e)}\n")
        return None


def writer(job, log):
    conn = connect_or_log(job, log)
    if conn is None:
        return
    errors, busy, seq, failures = {}, 0, 0, 0
    while seq < job["transactions"] and failures < 50:
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("UPDATE counter SET v = v + 1 WHERE id = 1")
                conn.execute(
                    "INSERT INTO rows(worker, seq, payload) VALUES (?, ?, randomblob(?))",
                    (job["worker_id"], seq, payload_size(job, seq)),
                )
                conn.execute("COMMIT")
            except sqlite3.Error:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            if is_busy(e):
                busy += 1
            else:
                errors[kind(e)] = errors.get(kind(e), 0) + 1
                failures += 1
                time.sleep(0.02)
            continue
        log.write(f"{seq}\n")
        log.flush()
        seq += 1
        failures = 0
    log.write(f"# done busy={busy} errors={summary(errors)}\n")


def reader(job, log):
    conn = connect_or_log(job, log)
    if conn is None:
        return
    checks = torn = busy = 0
    errors = {}
    started = time.monotonic()
    while not os.path.exists(job["stop_file"]) and time.monotonic() - started < 600:
        try:
            conn.execute("BEGIN")
            try:
                v = conn.execute("SELECT v FROM counter WHERE id = 1").fetchone()[0]
                n = conn.execute("SELECT count(*) FROM rows").fetchone()[0]
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")
            checks += 1
            torn += v != n
        except sqlite3.Error as e:
            if is_busy(e):
                busy += 1
            else:
                errors[kind(e)] = errors.get(kind(e), 0) + 1
        time.sleep(0.002)
    log.write(reader_summary(checks, torn, busy, errors))


if __name__ == "__main__":
    run(writer, reader)
