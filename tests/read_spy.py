"""Runs `python -m deepem ARGS...` and logs, as JSON lines in LOG, every file the process
opens for reading and every demo stage it enters and leaves, in order:

    python tests/read_spy.py LOG demo --quick --out OUT

Used by tests/test_demo.py to show that no file of the test split's labels is read before
the final scoring stage. Only the main process logs (the data stage's worker processes are not
followed: that stage makes the labels)."""
import builtins
import io
import json
import os
import sys

LOG = sys.argv[1]
MAIN = os.getpid()
_open = builtins.open
_log = _open(LOG, "a", buffering=1)


def record(entry):
    if os.getpid() == MAIN:
        _log.write(json.dumps(entry) + "\n")


def spy_open(file, mode="r", *args, **kwargs):
    if isinstance(file, (str, bytes, os.PathLike)) and "r" in mode and "+" not in mode:
        record({"read": os.path.realpath(os.fsdecode(file))})
    return _open(file, mode, *args, **kwargs)


builtins.open = io.open = spy_open
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's deepem

from deepem import cli, demo  # noqa: E402  (after the spy: every later open goes through it)

_run_stage = demo.run_stage


def run_stage(root, name, work, times):
    record({"stage": name})
    try:
        return _run_stage(root, name, work, times)
    finally:
        record({"stage_end": name})


demo.run_stage = run_stage
sys.exit(cli.main(sys.argv[2:]))
