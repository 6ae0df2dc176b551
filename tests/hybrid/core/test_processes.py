"""A bench's `--jobs` workers end with the command: a real parent process with a real pool, killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

PARENT = """
import concurrent.futures, multiprocessing, os, sys, time
from hybrid.core.processes import process_pool

if __name__ == "__main__":
    if sys.argv[1] == "ours":
        pool = process_pool(1)
    else:  # what the benches had: a plain spawned pool
        pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    print(pool.submit(os.getpid).result(), flush=True)
    pool.submit(time.sleep, 120)  # a long task, as a bench seed is
    time.sleep(120)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has ended (nobody may reap it in a container)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux's")
@pytest.mark.parametrize("pool", ["ours", "plain"])
def test_a_killed_parents_pool_workers_end_with_it(pool):
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, pool],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    worker = None
    try:
        worker = int(parent.stdout.readline())
        time.sleep(0.5)  # the long task has reached the worker
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.time() + (10 if pool == "ours" else 3)
        while alive(worker) and time.time() < deadline:
            time.sleep(0.1)
        if pool == "ours":
            assert not alive(worker), "the pool's worker outlived its killed parent"
        else:  # the defect the pool fixes: the worker runs on, to the end of its task
            assert alive(worker)
    finally:
        parent.kill()
        if worker and alive(worker):
            os.kill(worker, signal.SIGKILL)
