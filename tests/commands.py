"""Running a command from a test. `run_process` is `subprocess.run(..., capture_output=True, text=True)` whose timeout
always ends before the test's own (pytest-timeout's, set in pyproject.toml), so a command that hangs fails its test
with the end of its output — not with pytest-timeout's dump of a test stuck in `subprocess.run`."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

MARGIN_S = 30  # what a test keeps after its command's timeout: its own checks, then its fixtures' teardown
_deadline: list[float] = []  # when pytest-timeout stops the running test (time.monotonic()); set by tests/conftest.py


def set_test_timeout(seconds: float | None) -> None:
    """The running test is stopped `seconds` from now (None: it has no timeout)."""
    _deadline[:] = [time.monotonic() + seconds] if seconds else []


def command_timeout(timeout: float) -> float:
    """`timeout`, cut to end `MARGIN_S` before the running test's own timeout (at least 1 s)."""
    if not _deadline:
        return timeout
    return max(1.0, min(timeout, _deadline[0] - time.monotonic() - MARGIN_S))


def run_process(args: list[str], *, timeout: float, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run `args` to the end, its output captured as text, in a process group of its own (see `finish_process`)."""
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs
    )
    out, err = finish_process(proc, timeout)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def finish_process(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """`proc.communicate()` for a command started with `start_new_session=True` and text pipes. Past its timeout
    (`timeout`, or less: see `command_timeout`) the command and everything it started (its process group) are killed
    and the test fails with the last lines of its stdout and stderr."""
    limit = command_timeout(timeout)
    try:
        return proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        out, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:  # a process that left the group still holds the pipes: stop reading
        out, err = "", "(not readable: a process the command started, outside its process group, holds the pipes)"
    pytest.fail(
        f"`{' '.join(map(str, proc.args))[:300]}` still ran after {limit:.0f} s: killed.\n"
        f"--- its stdout ended with:\n{out[-3000:]}\n--- its stderr ended with:\n{err[-5000:]}",
        pytrace=False,
    )
