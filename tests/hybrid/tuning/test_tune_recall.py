"""`hybrid tune tune=recall`: the sweep makes the recall task's data and the shared in-window base once, then every
trial trains the recall recipe from that base and is scored by exact match on the validation stream at 4x."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hybrid.cli.config import load_config

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_the_recall_objective_sweeps_on_the_recall_task(ray_head, tmp_path):
    out, summary = tmp_path / "sweep", tmp_path / "sweep.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hybrid",
            "tune",
            "tune=recall",
            f"tune.output_dir={out}",
            "tune.max_iters=4",
            "tune.grace_steps=2",
            "tune.scheduler=fifo",
            # both trials at once on the head's 2 CPUs (as test_tune.py's FAILING)
            "tune.max_concurrent_trials=2",
            "train.cpus_per_worker=0.5",
            "data.cpus_per_task=0",
            "data.read_tasks=1",
            "tune.recall.base_steps=4",
            "tune.recall.train_examples=64",
            "tune.recall.eval_examples=8",
            "tune.space={model.retrieval_k: [1, 2]}",
            "--json",
            str(summary),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=ray_head.env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "recall objective: key_value at 4x" in proc.stdout and "base round 1" in proc.stdout

    val = [json.loads(line) for line in (out / "recall" / "val.jsonl").read_text().splitlines()]
    assert len(val) == 8 and {(r["task"], r["segments"]) for r in val} == {("kv", 4)}
    train = [json.loads(line) for line in (out / "recall" / "train.jsonl").read_text().splitlines()]
    assert {r["task"] for r in train} >= {"kv", "chain"} and {r["segments"] for r in train} >= {1, 2, 4}

    result = json.loads(summary.read_text())
    assert sorted(t["config"]["model.retrieval_k"] for t in result["trials"]) == [1, 2]
    for t in result["trials"]:
        assert t["status"] == "done" and t["steps"] == 4 and 0.0 <= t["val_exact_match"] <= 1.0
    best = max(result["trials"], key=lambda t: t["val_exact_match"])
    assert result["best"]["val_exact_match"] == best["val_exact_match"]

    # every trial is the recall recipe from the shared base, validated on the recall task
    cfg = load_config(base=str(out / "best.yaml"))
    assert cfg.train.init_from and Path(cfg.train.init_from).parent.parent == out / "recall"
    assert cfg.data.validation == str(out / "recall" / "val.jsonl") and cfg.train.tokenizer == "word"
    assert cfg.model.use_internal_memory and cfg.model.use_external_memory and cfg.model.memory_gate_init == 0.5
    assert cfg.model.retrieval_k == result["best"]["config"]["model.retrieval_k"]
    saved = yaml.safe_load((out / "sweep.yaml").read_text())
    assert saved["tune"]["objective"] == "recall" and saved["base"]["data"]["train"].endswith("recall/train.jsonl")
