"""Sweeps (`hybrid tune`, docs/tune.md) — round two of docs/reliability.md: the README's lines as written (relative
paths, from the folder a user runs them in), Ctrl-C and a second command on a running sweep, what is refused before
anything starts (keys the sweep sets itself, a grid too large to generate, an unknown metric, ASHA's grace past the
budget, more CPUs than the machine has), a failed start that leaves the folder reusable, categorical axes in the plot.

The pure checks run without Ray; one sweep (@slow, on the session's Ray head) covers the README's lines, the lock and
Ctrl-C."""

from __future__ import annotations

import csv
import io
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from hybrid.cli.config import load_config
from hybrid.core.errors import ConfigError
from hybrid.tuning.results import Sweep, TrialRow, write_results
from hybrid.tuning.space import OWNED, check_sweep, with_absolute_sweep_paths
from hybrid.tuning.sweep import holds_sweep
from hybrid.tuning.trial import plan_trials
from tests.hybrid.conftest import make_pairs
from tests.reliability.conftest import ROOT, assert_one_line_error, cli, run_main, tree

README = (ROOT / "README.md").read_text()
TINY = ["model=tiny_llama_hybrid", "train=tiny"]


def readme_lines(command: str) -> list[list[str]]:
    """The README's shell lines that run `hybrid COMMAND`, continuation lines joined and comments cut, as argv."""
    import shlex

    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:2] == ["hybrid", command]:
                lines.append(words[1:])
    return lines


@pytest.fixture
def user_folder(tmp_path, monkeypatch):
    """A folder laid out as the README's tour leaves it (datasets/io_pairs/{train,validation}.jsonl), small."""
    pairs = tmp_path / "datasets" / "io_pairs"
    pairs.mkdir(parents=True)
    make_pairs(pairs / "train.jsonl", 48, 0)
    make_pairs(pairs / "validation.jsonl", 8, 1)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -- 1. relative paths ----------------------------------------------------------------------------------------------
def test_every_path_setting_is_made_absolute_against_the_folder_the_command_started_in(tmp_path):
    cfg = load_config(
        [
            *TINY,
            "data.train=datasets/io_pairs/train.jsonl",
            "data.validation=val/*.jsonl",
            "model.pretrained=bases/llama",
            "train.init_from=runs/a",
            "train.resume=auto",
            "train.mlflow_uri=mlruns",
            "train.output_dir=outputs/x",
            "tune.output_dir=outputs/sweep",
            "tune.space={data.train: [a.jsonl, s3://b/c.jsonl], model.retrieval_k: [1, 2]}",
        ]
    )
    base, tcfg = with_absolute_sweep_paths(cfg.recipe(), cfg.tune, cwd=str(tmp_path))
    assert base.data.train == str(tmp_path / "datasets/io_pairs/train.jsonl")
    assert base.data.validation == str(tmp_path / "val/*.jsonl")  # a glob keeps its pattern
    assert base.model.pretrained == str(tmp_path / "bases/llama")
    assert base.train.init_from == str(tmp_path / "runs/a")
    assert base.train.mlflow_uri == str(tmp_path / "mlruns")
    assert base.train.output_dir == str(tmp_path / "outputs/x")
    assert base.train.resume == "auto"  # a keyword, not a path
    assert tcfg.output_dir == str(tmp_path / "outputs/sweep")
    assert tcfg.space["data.train"] == [str(tmp_path / "a.jsonl"), "s3://b/c.jsonl"]  # URIs as they are
    assert tcfg.space["model.retrieval_k"] == [1, 2]
    same = with_absolute_sweep_paths(base, tcfg, cwd="/elsewhere")  # absolute stays absolute
    assert same[0] == base and same[1] == tcfg


@pytest.mark.slow
def test_the_readmes_tune_lines_as_written_and_ctrl_c_and_a_second_command_on_a_running_sweep(ray_head, user_folder):
    """README §6 run as written, from a folder holding datasets/io_pairs (relative paths): the sweep — interrupted
    with Ctrl-C once its first trial reported, while a `--resume` of it is refused — then `--resume`, then training
    the winner. (Before: every trial failed, `datasets/io_pairs/train.jsonl: no such file`; Ctrl-C exited 0 with
    partial results; the `--resume` was accepted and trained the same trial twice into one folder.)"""
    from tests.commands import finish_process

    sweep_line, resume_line = (line for line in readme_lines("tune") if "tune=recall" not in line)
    train_line = next(line for line in readme_lines("train") if "best.yaml" in " ".join(line))
    assert "data.train=datasets/io_pairs/train.jsonl" in sweep_line and "--resume" in resume_line
    env = {**ray_head.env, "PYTHONPATH": str(ROOT)}
    out = user_folder / "outputs" / "tune-small"

    proc = subprocess.Popen(
        [sys.executable, "-m", "hybrid", *sweep_line],
        cwd=user_folder,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if re.match(r"trial_00000 step 2: val_loss \d", line):
            break
    assert seen and seen[-1].startswith("trial_00000 step 2"), "".join(seen) + proc.stderr.read()[-3000:]
    second = cli(*resume_line, cwd=user_folder, env=env, timeout=120)  # while the sweep runs
    assert_one_line_error(
        second.returncode, second.stderr, "tune.output_dir", "in use by another process", out=second.stdout
    )
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal
    rest, err = finish_process(proc, timeout=180)
    assert proc.returncode == 130, err[-3000:]
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err, err[-3000:]
    assert "--resume" in rest and not (out / "results.csv").exists()  # no partial results as if it had finished
    before = tree(out / "trials")
    time.sleep(4)  # no trial goes on training once the command said it stopped
    assert tree(out / "trials") == before

    resumed = cli(*resume_line, cwd=user_folder, env=env, timeout=540)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))
    assert len(rows) == 4 and {r["status"] for r in rows} <= {"done", "stopped early"}, rows
    saved = yaml.safe_load((out / "sweep.yaml").read_text())
    assert saved["base"]["data"]["train"] == str(user_folder / "datasets/io_pairs/train.jsonl")
    assert saved["tune"]["output_dir"] == str(out)

    # the winner, trained by the README's line (in this process's loop: one step is what this test needs of it)
    winner = cli(*train_line, "train.num_workers=0", "train.max_iters=1", cwd=user_folder, env=env, timeout=300)
    assert winner.returncode == 0, winner.stderr[-3000:]
    assert (user_folder / "outputs" / "best" / "config.yaml").exists()


# -- 3, 6, 7: refused before anything starts -----------------------------------------------------------------------
def _tune(user_folder, capsys, *overrides):
    rc, out, err = run_main(
        [
            "tune",
            *TINY,
            "data.train=datasets/io_pairs/train.jsonl",
            "data.validation=datasets/io_pairs/validation.jsonl",
            "tune.output_dir=outputs/s",
            *overrides,
        ],
        capsys,
    )
    return rc, out, err


@pytest.mark.parametrize("key", sorted(OWNED))
def test_a_key_the_sweep_sets_itself_cannot_be_swept(key, user_folder, capsys):
    value = {
        "train.max_iters": "[1, 2]",
        "train.output_dir": "[a, b]",
        "train.resume": "[auto, none]",
        "train.num_workers": "[1, 2]",
        "train.best_by": "[val_loss, val_exact_match]",
        "memory.service": "[a, b]",
    }[key]
    rc, out, err = _tune(user_folder, capsys, f"tune.space={{{key}: {value}}}")
    line = assert_one_line_error(rc, err, f"tune.space: {key}: set by the sweep", out=out)
    assert "(" in line  # and why
    assert not (user_folder / "outputs").exists()  # nothing written


def test_a_grid_too_large_to_generate_is_refused_with_its_count(user_folder, capsys):
    values = "[" + ", ".join(str(i) for i in range(1, 1001)) + "]"
    t0 = time.time()
    rc, out, err = _tune(
        user_folder, capsys, f"tune.space={{model.retrieval_k: {values}, model.memory_slots: {values}}}"
    )
    assert_one_line_error(rc, err, "1,000,000 trials", "tune.max_trials (1,000)", out=out)
    assert time.time() - t0 < 30 and not (user_folder / "outputs").exists()
    base = load_config([*TINY, "data.train=x"]).recipe()
    check_sweep(
        base,
        load_config(
            [
                "tune.max_trials=4",
                "tune.metric=train_loss",
                "tune.space={model.retrieval_k: [1, 2], model.memory_slots: [2, 4]}",
            ]
        ).tune,
    )
    with pytest.raises(ConfigError, match=r"8 trials \(2 × 2 grid points × tune.num_samples 2\)"):
        check_sweep(
            base,
            load_config(
                [
                    "tune.max_trials=4",
                    "tune.num_samples=2",
                    "tune.metric=train_loss",
                    "tune.space={model.retrieval_k: [1, 2], model.memory_slots: [2, 4]}",
                ]
            ).tune,
        )


def test_an_unknown_metric_and_asha_grace_past_the_budget_are_one_line_config_errors(user_folder, capsys):
    rc, out, err = _tune(user_folder, capsys, "tune=small", "tune.metric=bogus")
    assert_one_line_error(rc, err, "tune.metric=bogus", "val_loss", out=out)
    rc, out, err = _tune(user_folder, capsys, "tune=small", "tune.max_iters=2", "tune.grace_steps=5")
    assert_one_line_error(rc, err, "tune.grace_steps", "max_iters (2)", out=out)
    assert not (user_folder / "outputs").exists()
    rc, out, err = _tune(
        user_folder,
        capsys,
        "tune=small",
        "tune.scheduler=fifo",
        "tune.max_iters=2",
        "tune.grace_steps=5",
        "tune.metric=bogus",
    )  # fifo has no grace: only the metric is wrong
    assert_one_line_error(rc, err, "tune.metric=bogus", out=out)


# -- 5. a sweep that fails to start leaves the folder reusable -----------------------------------------------------
def test_a_sweep_that_cannot_start_leaves_nothing_that_blocks_the_next(user_folder, capsys):
    # in a fresh process: this test process may hold the suite's Ray already, which a command joins as it is
    env = {"RAY_ADDRESS": "127.0.0.1:9"}  # nothing listens on the discard port: refused at once
    for _ in range(2):  # the second is not "holds a sweep already"
        done = cli(
            "tune",
            *TINY,
            "tune=small",
            "data.train=datasets/io_pairs/train.jsonl",
            "data.validation=datasets/io_pairs/validation.jsonl",
            "tune.output_dir=outputs/s",
            cwd=user_folder,
            env=env,
            timeout=120,
        )
        assert_one_line_error(done.returncode, done.stderr, "RAY_ADDRESS=127.0.0.1:9", out=done.stdout)
    out_dir = user_folder / "outputs" / "s"
    assert not (out_dir / "sweep.yaml").exists()
    rc, out, err = run_main(["tune", f"tune.output_dir={out_dir}", "--resume"], capsys)
    assert_one_line_error(rc, err, "no sweep to resume", out=out)
    # a folder left by an older version (sweep.yaml written, Tune never started) is reusable too
    (out_dir / "sweep.yaml").write_text("base: {}\ntune: {}\n")
    assert not holds_sweep(str(out_dir))


# -- 2. more CPUs than the machine has -----------------------------------------------------------------------------
def test_trials_are_planned_to_fit_the_cpus_their_workers_and_data_tasks_need():
    def plan(*overrides, cpus=2.0, fixed=True):
        cfg = load_config([*TINY, *overrides])
        return plan_trials(cfg.recipe(), cfg.tune, {"CPU": cpus}, fixed)

    two = plan("tune.max_concurrent_trials=2", "train.use_gpu=false")
    assert (two.concurrency, two.data_cpus, two.note) == (2, (0.0, 1), None)  # data tasks share the workers' CPUs
    alone = plan("tune.max_concurrent_trials=1", "train.use_gpu=false")
    assert (alone.concurrency, alone.data_cpus) == (1, (1.0, 1))
    auto = plan("tune.max_concurrent_trials=0", "train.use_gpu=false", cpus=16)
    assert (auto.concurrency, auto.data_cpus) == (16, (0.0, 1))
    own = plan("tune.max_concurrent_trials=0", "train.use_gpu=false", "data.cpus_per_task=1", "data.read_tasks=1")
    assert (own.concurrency, own.data_cpus) == (1, None)  # 1 worker CPU + 1 data CPU per trial on 2 CPUs
    many = plan("tune.max_concurrent_trials=4", "train.use_gpu=false")
    assert many.concurrency == 2 and "tune.max_concurrent_trials=4" in many.note and "2 CPUs fit 2" in many.note
    assert plan("tune.max_concurrent_trials=4", "train.use_gpu=false", fixed=False).concurrency == 4  # may autoscale


@pytest.mark.slow
def test_training_on_more_cpus_than_the_local_ray_has_is_one_line_before_anything_starts(ray_session, tmp_path, capsys):
    """(Before: Ray Train waited 60 s and printed a 95-line ControllerError.)"""
    data = make_pairs(tmp_path / "pairs.jsonl", 8, 0)
    cpus = int(ray_session.cluster_resources()["CPU"])
    t0 = time.time()
    rc, out, err = run_main(
        ["train", *TINY, f"data.train={data}", f"train.output_dir={tmp_path / 'run'}", f"train.num_workers={cpus + 2}"],
        capsys,
    )
    assert_one_line_error(
        rc, err, f"train.num_workers={cpus + 2}", f"asks for {cpus + 2} CPUs", f"the local Ray has {cpus}", out=out
    )
    assert time.time() - t0 < 30 and not (tmp_path / "run").exists()


# -- 6. a categorical swept key in the plot ------------------------------------------------------------------------
def test_a_non_numeric_swept_key_is_a_categorical_axis_of_the_plot(tmp_path):
    keys = ["train.tokenizer", "model.retrieval_k"]
    trials = [
        TrialRow(
            f"trial_0000{i}",
            "done",
            4,
            {"train.tokenizer": tok, "model.retrieval_k": k},
            5.0 - i,
            None,
            curve=[(2, 5.5), (4, 5.0 - i)],
        )
        for i, (tok, k) in enumerate([("bpe", 1), ("bpe", 4), ("word", 1), ("word", 4)])
    ]
    sweep = Sweep("val_loss", "min", str(tmp_path), trials, trials[-1], 1.0, keys)
    write_results(sweep, load_config([]).tune)
    assert (tmp_path / "sweep.png").stat().st_size > 10_000
    rows = list(csv.DictReader(io.StringIO((tmp_path / "results.csv").read_text())))
    assert [r["train.tokenizer"] for r in rows] == ["bpe", "bpe", "word", "word"]
