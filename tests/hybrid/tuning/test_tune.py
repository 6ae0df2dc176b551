"""`hybrid tune` against a real Ray head (dashboard on: Train V2 cleans up the placement groups of trials that ASHA
stops through it): a grid with ASHA, the results a person uses, the best checkpoint and config reproduced,
resume; a sweep whose trials all fail at trial time (one failing trial among others: tests/cluster/test_multinode.py,
on two nodes); and the space checked before any trial starts."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hybrid.cli.config import load_config
from hybrid.config.recipe import with_values
from hybrid.core import storage
from hybrid.core.errors import ConfigError, HybridError
from hybrid.tuning.space import check_space, param_space
from hybrid.tuning.sweep import holds_sweep, run_sweep

ROOT = Path(__file__).resolve().parents[3]
TINY = ["model=tiny_llama_hybrid", "train=tiny", "train.eval_every=2", "train.log_every=1", "data.max_length=32"]
SMALL = ["tune=small", "tune.max_iters=4", "tune.grace_steps=2", "tune.reduction_factor=2", "train.warmup_iters=0"]
# the second and third learning rates barely move the weights, so ASHA's decisions at the first rung do not depend on
# luck: both are stopped there (the first trial of a rung always goes on)
SPACE = "tune.space={train.learning_rate: [0.01, 1.0e-6, 1.0e-7]}"


# Two trials of 2 steps at once, no early stopping. The head has 2 CPUs: each trial's worker reserves half of one and
# its data tasks none (a task reserving a CPU that the other trial's worker took in the meantime would wait forever).
# A learning rate of 1e30 passes the space check (any positive float does) and fails in the trial: AdamW's first step
# moves every weight by about the learning rate, so the second step's loss is not finite ("training diverged").
FAILING = [
    "tune.scheduler=fifo",
    "tune.max_iters=2",
    "tune.max_concurrent_trials=2",
    "train.cpus_per_worker=0.5",
    "data.cpus_per_task=0",
    "data.read_tasks=1",
]
DIVERGED = r"step 2: the training loss is (nan|-?inf) — training diverged; lower train\.learning_rate \(now {lr}\)"


def tune_cmd(io_data, out, *extra):
    return [
        sys.executable,
        "-m",
        "hybrid",
        "tune",
        *TINY,
        *SMALL,
        f"data.train={io_data['train']}",
        f"data.validation={io_data['validation']}",
        f"tune.output_dir={out}",
        *extra,
    ]


def ended_in_stored_state(fs, experiment: str) -> int:
    """How many trials the newest stored `experiment_state-*.json` of a Tune experiment records as TERMINATED."""
    import pyarrow.fs as pafs

    files = [
        f.path
        for f in fs.get_file_info(pafs.FileSelector(experiment, allow_not_found=True))
        if f.base_name.startswith("experiment_state-") and f.base_name.endswith(".json")
    ]
    if not files:
        return 0
    with fs.open_input_stream(max(files)) as stream:
        return stream.read().decode().count("TERMINATED")


@pytest.mark.slow
def test_a_grid_with_asha_killed_resumed_its_results_and_its_best(ray_head, s3_server, io_data, tmp_path):
    """A grid of three points, one trial at a time (so ASHA's decisions do not depend on timing), its output on an
    S3 server, killed once two trials have ended and resumed: no ended trial reruns, every point runs once, ASHA
    stops the weak ones at the first rung (one before the kill, one after: the resumed scheduler's rung holds what
    the first two trials reported; alone at its rung, a trial is never stopped)."""
    import pyarrow.fs as pafs

    out = f"s3://{s3_server.bucket()}/sweeps/grid"
    fs, root = pafs.FileSystem.from_uri(out)

    def stat(rel):  # (text, modification time) of a file under the sweep
        info = fs.get_file_info(f"{root}/{rel}")
        return storage.read_text(f"{out}/{rel}"), info.mtime, info.size

    proc = subprocess.Popen(
        tune_cmd(io_data, out, SPACE, "tune.max_concurrent_trials=1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env={**ray_head.env, "TUNE_GLOBAL_CHECKPOINT_S": "1"},  # (Tune's state saved each second, not each 10 s)
        start_new_session=True,
    )
    seen = []
    for line in proc.stdout:  # kill the whole sweep (driver, trials) once two trials are done
        seen.append(line)
        if line.startswith("trial_00001 ") and (" done at " in line or " stopped early at " in line):
            break
    # Tune saves the sweep's state every few seconds, not at each trial's end: a trial that ended after the last save
    # reruns on resume (Tune's semantics). Kill once the stored state holds both ended trials.
    deadline = time.time() + 120
    while time.time() < deadline and ended_in_stored_state(fs, f"{root}/tune") < 2:
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert any("trial_00000 done" in line for line in seen), "".join(seen[-30:])
    assert "running 1, done 1" in "".join(seen)  # progress while it runs
    finished = {rel: stat(rel) for rel in (f"trials/trial_0000{n}/metrics.jsonl" for n in (0, 1))}
    assert all(text for text, _, _ in finished.values())

    summary = tmp_path / "sweep.json"
    resumed = subprocess.run(
        [sys.executable, "-m", "hybrid", "tune", f"tune.output_dir={out}", "--resume", "--json", str(summary)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=ray_head.env,
        timeout=900,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert finished == {rel: stat(rel) for rel in finished}  # not rerun
    assert s3_server.env["AWS_SECRET_ACCESS_KEY"] not in "".join(seen) + resumed.stdout + resumed.stderr
    assert "trial_00000 step" not in resumed.stdout and "★" in resumed.stdout  # the table at the end
    result = json.loads(summary.read_text())
    trials = result["trials"]
    status = {t["config"]["train.learning_rate"]: (t["status"], t["steps"]) for t in trials}
    assert len(trials) == 3 and status == {
        0.01: ("done", 4),
        1e-6: ("stopped early", 2),  # before the kill
        1e-7: ("stopped early", 2),  # after the resume
    }
    best = min(trials, key=lambda t: t["val_loss"])  # best = the argmin of what the trials reported
    assert result["best"]["trial_id"] == best["trial_id"] and result["best"]["val_loss"] == best["val_loss"]

    # the best checkpoint reproduces the reported metric through `hybrid eval`'s evaluation
    from hybrid.training.evaluate import evaluate

    metrics = evaluate(result["best"]["checkpoint"], io_data["validation"], max_generate=0)
    assert metrics["loss"] == pytest.approx(result["best"]["val_loss"], rel=1e-4)

    rows = list(csv.DictReader(io.StringIO(storage.read_text(f"{out}/results.csv"))))
    assert [r["trial_id"] for r in rows] == sorted(t["trial_id"] for t in trials)
    assert {"status", "steps", "train.learning_rate", "val_loss", "checkpoint"} <= set(rows[0])
    assert fs.get_file_info(f"{root}/sweep.png").size > 10_000
    assert result["best"]["checkpoint"].startswith(f"{out}/trials/")
    # best.yaml, read from the bucket, trains (in this process, one step: the README's sweep test runs `hybrid train
    # --config …/best.yaml` as a command)
    from hybrid.training.train import train

    overrides = [f"train.output_dir={tmp_path / 'again'}", "train.num_workers=0", "train.max_iters=1"]
    assert train(load_config(overrides, base=f"{out}/best.yaml").recipe(), quiet=True).checkpoint is not None
    best_cfg = load_config(base=f"{out}/best.yaml")
    assert best_cfg.train.learning_rate == best["config"]["train.learning_rate"]

    # no placement group is left behind, not even those of the killed sweep or of the trial ASHA stopped
    assert set(ray_head.placement_group_states()) <= {"REMOVED"}
    # --resume on a finished sweep only collects and prints the results again
    t0 = time.time()
    again = subprocess.run(
        [sys.executable, "-m", "hybrid", "tune", f"tune.output_dir={out}", "--resume"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=ray_head.env,
        timeout=300,
    )
    assert again.returncode == 0 and result["best"]["trial_id"] in again.stdout and time.time() - t0 < 120


@pytest.mark.slow
def test_a_sweep_whose_trials_all_fail_exits_2_with_the_first_error_in_one_line(ray_head, io_data, tmp_path):
    out = tmp_path / "sweep"
    run = subprocess.run(
        tune_cmd(io_data, out, *FAILING, "tune.space={train.learning_rate: [1.0e+30, 1.0e+31]}"),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=ray_head.env,
        timeout=600,
    )
    assert run.returncode == 2, run.stderr[-3000:]
    # the first trial's error (its learning rate says which) in one line, and nothing of a traceback (Ray's own log
    # lines may follow it: a raylet's warning can arrive while the driver shuts down)
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, run.stderr[-3000:]
    assert re.fullmatch(
        "error: every trial failed; the first: " + DIVERGED.format(lr=r"1e\+30") + r"[^\n]*", errors[0]
    ), errors[0]
    assert "Traceback" not in run.stderr + run.stdout
    rows = list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))
    assert [(r["train.learning_rate"], r["status"]) for r in rows] == [("1e+30", "failed"), ("1e+31", "failed")]
    assert all(re.match(DIVERGED.format(lr=r"1e\+3[01]"), r["error"]) for r in rows)


def test_the_space_is_checked_before_any_trial(tmp_path):
    base = load_config(TINY).recipe()
    tune = load_config(["tune.space={model.retrieval_k: [1, 4], train.learning_rate: {loguniform: [1e-4, 1e-2]}}"]).tune
    check_space(base, tune)
    space = param_space(tune)
    assert space["model.retrieval_k"] == {"grid_search": [1, 4]}
    assert with_values(base, {"model.retrieval_k": 4}).model.retrieval_k == 4
    for space_text, message in [
        ("{model.bogus: [1]}", r"tune\.space: model\.bogus: unknown key"),
        ("{pipeline.num_workers: [1]}", r"tune\.space: pipeline\.num_workers: not a key of the training config"),
        ("{model.retrieval_k: [0, 2]}", r"tune\.space: model\.retrieval_k: Input should be greater than or equal to 1"),
        ("{model.memory_slots: {uniform: [2, 8]}}", r"model\.memory_slots is an integer"),
        (
            "{train.learning_rate: {loguniform: [0, 1]}}",
            r"tune\.space: train\.learning_rate: loguniform needs a positive",
        ),
        ("{model.retrieval_k: {normal: [1, 2]}}", r"tune\.space: model\.retrieval_k: expected a list"),
        ("{retrieval_k: [1]}", r"tune\.space: retrieval_k: expected a dotted key"),
    ]:
        with pytest.raises(ConfigError, match=message):
            check_space(base, load_config([f"tune.space={space_text}"]).tune)
    with pytest.raises(HybridError, match="no sweep to resume"):
        run_sweep(base, load_config([f"tune.output_dir={tmp_path}"]).tune, resume=True)
    (tmp_path / "sweep.yaml").write_text("{}")  # a sweep that failed to start: no Tune state, the folder is reused
    assert not holds_sweep(str(tmp_path))
    with pytest.raises(ConfigError, match="tune.objective=recall: tune.output_dir=s3://b/x must be a local folder"):
        run_sweep(base, load_config(["tune.objective=recall", "tune.output_dir=s3://b/x"]).tune)
    main = subprocess.run(
        [sys.executable, "-m", "hybrid", "tune", "tune.space={model.bogus: [1]}", "data.train=x", "data.validation=y"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert main.returncode == 2 and main.stderr.strip() == "error: tune.space: model.bogus: unknown key"
