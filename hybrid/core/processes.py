"""Worker processes that end with the command that started them (the benches' `--jobs`)."""

from __future__ import annotations

import concurrent.futures
import ctypes
import multiprocessing
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def process_pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    """A pool of `workers` spawned processes (a fresh interpreter each: no forked torch or Ray state) that end when
    this process ends, however it ends. A pool's workers otherwise outlive a killed parent until their task is done
    — for a bench seed, half an hour of two cores."""
    return concurrent.futures.ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=die_with_parent,
        initargs=(os.getpid(),),
    )


def die_with_parent(parent: int) -> None:
    """Linux: have the kernel send this process SIGTERM when its parent ends (prctl PR_SET_PDEATHSIG), and end now if
    the parent has already gone. Elsewhere nothing (the pool's own pipes end idle workers)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return  # (a sandbox that forbids it: the old behaviour)
    if os.getppid() != parent:
        os._exit(1)
