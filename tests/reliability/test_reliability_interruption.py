"""Interruption and divergence: a killed or stopped command leaves the last good state and no stale lock
(docs/reliability.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from tests.reliability.conftest import ROOT, assert_one_line_error, cli
from tests.repo_builder import RepoBuilder


def test_a_killed_lock_holder_leaves_no_stale_lock(tmp_path):
    data = tmp_path / "data"
    lock = data / "repos" / ".registry.lock"
    code = (
        f"import sys, time; sys.path.insert(0, {str(ROOT)!r})\n"
        f"from hybrid.core.io import exclusive_lock\n"
        f"with exclusive_lock({str(lock)!r}, 'x'):\n    print('held', flush=True); time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    src = RepoBuilder(tmp_path / "src")
    src.write("a.py", "x = 1\n")
    src.commit("one")
    r = cli("repos", "add", str(src.path), f"pipeline.data_dir={data}", timeout=60)
    assert r.returncode == 0, r.stderr


def test_nan_loss_stops_training_and_never_becomes_best(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text(
        "".join(json.dumps({"input": f"alpha beta {i % 3}", "output": "beta alpha"}) + "\n" for i in range(16))
    )
    run = tmp_path / "run"
    r = cli(
        "train",
        "model=tiny_llama_hybrid",
        "train=tiny",
        f"data.train={data}",
        f"data.validation={data}",
        f"train.output_dir={run}",
        "train.learning_rate=1e30",
        "train.eval_every=1",
        "train.max_iters=6",
        "train.warmup_iters=0",
        timeout=300,
    )
    assert_one_line_error(r.returncode, r.stderr, "diverged", "train.learning_rate", out=r.stdout)
    best = run / "best"
    if best.exists():  # the last finite step, never a NaN one
        state = json.loads((best.resolve() / "trainer_state.json").read_text())
        loss = state["metrics"]["val_loss"]
        assert loss == loss and loss != float("inf")


def test_interrupted_command_says_so(tmp_path):
    """Ctrl-C: exit 130 and one line, no traceback."""
    from hybrid.cli import run_command

    def stopped(args):
        raise KeyboardInterrupt

    assert run_command(stopped, None) == 130
