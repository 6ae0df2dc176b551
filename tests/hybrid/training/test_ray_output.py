"""What a run on Ray Train prints: by default our own lines only (the step lines come from the worker, bare), Ray's own
(worker prefixes, its INFO logs, `Reporting training result`, Ray Data's plans) stay in Ray's log files; `-v` shows
them. Real `hybrid train` processes joining the session's Ray (its start-up is paid once)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.commands import run_process

ROOT = Path(__file__).resolve().parents[3]

# a line from Ray's internals: a worker's prefix `(RayTrainWorker pid=…)` / `(MapBatches(_ReadEncode) pid=…)`,
# (raylet), Ray's Python log format `… INFO worker.py:2029 -- …`, a glog line `[… E 27974 28212] core_worker.cc…`,
# Ray Train's and Ray Data's chatter
RAY_LINE = re.compile(
    r"^\((?:[^()]|\([^()]*\))*pid=\d+[^)]*\)|^\((?:raylet|autoscaler)"
    r"|^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\s+(?:DEBUG|INFO|WARNING|ERROR)\s+\S+:\d+ --"
    r"|^\[\d{4}-\d\d-\d\d [\d:,]+ [DIWEF] \d+ \d+\]"
    r"|Reporting training result|Execution plan of Dataset|Starting execution of Dataset"
)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def lines(r: subprocess.CompletedProcess) -> list[str]:
    return [ANSI.sub("", line) for line in (r.stdout + r.stderr).splitlines()]


@pytest.mark.slow
def test_train_on_ray_prints_ray_lines_only_when_verbose(ray_session, io_data, tmp_path, tiny_overrides):
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    env.pop("HYBRID_VERBOSE", None)
    run = [sys.executable, "-m", "hybrid"]
    args = ["train", "train.num_workers=1", "train.max_iters=2", "train.eval_every=2", "train.log_every=1"]
    ray_data = "data.local_rows=0"  # the stream through Ray Data, whose plans a small set would not print

    quiet = run_process(
        [*run, *args, ray_data, *tiny_overrides(io_data, tmp_path / "quiet")], env=env, cwd=ROOT, timeout=300
    )
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    shown = lines(quiet)
    assert [line for line in shown if RAY_LINE.search(line)] == [], "\n".join(shown)
    # the worker's own lines reach the terminal, bare (no tag, no prefix)
    assert any(line.startswith("step     1/2 | loss") for line in shown), "\n".join(shown)
    assert any(re.match(r"step +2 \| validation loss", line) for line in shown), "\n".join(shown)
    assert not any(":info_message:" in line for line in shown)

    loud = run_process([*run, "-v", *args, *tiny_overrides(io_data, tmp_path / "loud")], env=env, cwd=ROOT, timeout=300)
    assert loud.returncode == 0, loud.stderr[-3000:]
    shown = lines(loud)
    assert any(re.match(r"\(RayTrainWorker pid=\d+\) step +1/2 \| loss", line) for line in shown), "\n".join(shown)
    assert any("Reporting training result" in line for line in shown), "\n".join(shown)
    assert any(line.startswith("(TrainController pid=") for line in shown), "\n".join(shown)
