"""Runs a command as a child subreaper: every orphaned descendant is reaped here at once.

mptest starts its clients with `system("... &")`, so they are orphans; where PID 1 does not
reap orphans (as on these sandboxed machines), a client that exits (crash02.subtest's
`--exit 1`) stays a zombie, and the shim's liveness check rightly sees a process that still
exists holding its lock. A real init reaps it; this does the same for the test.
Usage: reap.py COMMAND [ARGS...]; exits with the command's status (128 + N for signal N).
"""

import ctypes
import os
import subprocess
import sys

PR_SET_CHILD_SUBREAPER = 36

libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
    sys.exit(f"reap.py: prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}")
main = subprocess.Popen(sys.argv[1:])
# Reap whatever ends (the command or an orphaned client) until the command itself has ended.
while True:
    pid, raw = os.waitpid(-1, 0)
    if pid == main.pid:
        status = os.waitstatus_to_exitcode(raw)
        sys.exit(status if status >= 0 else 128 - status)
