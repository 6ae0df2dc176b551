"""The main job's command end to end (`hybrid demo --quick`) on a small real git history."""

from __future__ import annotations

import argparse
import json

import pytest

from hybrid.cli import run_command
from hybrid.demo import project_checkout, register, sparkline, training_curve
from tests.repo_builder import build_sample_repo


@pytest.mark.slow
def test_demo_quick_on_a_tiny_repo(tmp_path, capsys):
    build_sample_repo(tmp_path / "src")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["demo", "--quick", "--repo", str(tmp_path / "src"), "--workdir", str(tmp_path / "w")])
    assert run_command(args.func, args) == 0
    out = capsys.readouterr().out
    io = tmp_path / "w" / "datasets" / "io_pairs"
    sizes = json.loads((io / "stats.json").read_text())["sizes"]
    assert sizes["train"] > 0 and sum(sizes.values()) == sum(
        1 for s in sizes for _ in (io / f"{s}.jsonl").read_text(encoding="utf-8").splitlines()
    )
    (run,) = (tmp_path / "w" / "outputs" / "demo").iterdir()
    metrics = json.loads((run / "eval.json").read_text())
    assert metrics["examples"] > 0 and metrics["loss"] > 0 and metrics["generated"] == 2
    assert (run / "best").exists() and "demo finished" in out and f"evaluation: {run / 'eval.json'}" in out
    assert (tmp_path / "w" / "data" / "ast_dataset").is_dir()
    # the closing summary: the data, the training curve, the evaluation, then where things went
    summary = out[out.rindex("summary ─") :]
    assert "commits of" in summary and f"{sizes['train']:,} train" in summary
    assert "4 steps in" in summary and f"{metrics['examples']:,} test pairs: loss {metrics['loss']:.3f}" in summary
    # the last line says what the memory changed on the run's test split, with the counts
    effect = metrics["memory_effect"]
    last = out.strip().splitlines()[-1]
    assert last.startswith("memory: ") and f"{effect['examples']} test pairs" in last
    assert effect["on"]["all"]["examples"] == effect["examples"] == effect["off"]["all"]["examples"] > 0


def test_default_repository_is_this_checkout():
    root = project_checkout()
    assert (root / "hybrid" / "demo.py").is_file() and (root / ".git").exists()


def test_demo_rejects_bad_flags(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    with pytest.raises(SystemExit) as exit_info:  # refused while the arguments are parsed
        parser.parse_args(["demo", "--minutes", "0", "--workdir", str(tmp_path)])
    assert exit_info.value.code == 2 and "--minutes: expected a number > 0, got '0'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_training_curve_line(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    rows = [
        {"step": 1, "loss": 7.5},
        {"step": 10, "loss": 6.0},
        {"step": 10, "val_loss": 6.2},
        {"step": 20, "loss": 5.0},
        {"step": 20, "val_loss": 6.4},
        {"step": 23, "val_loss": 6.3},
    ]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert training_curve(metrics, 61.2) == (
        "23 steps in 61 s: train loss 7.50 █▄▁ 5.00, validation 6.300 (best 6.200 at step 10)"
    )
    metrics.write_text(json.dumps({"step": 3, "loss": 2.0}) + "\n" + json.dumps({"step": 3, "val_loss": 1.0}) + "\n")
    assert training_curve(metrics, 1) == "3 steps in 1 s: train loss 2.00 ▁ 2.00, validation 1.000 (best)"
    assert training_curve(tmp_path / "none.jsonl", 1) == "no step logged"
    assert sparkline(list(range(100)), width=8) == "▁▂▃▄▅▆▇█"


def test_eval_examples_take_one_line_each():
    """`hybrid eval`'s (and the demo's) examples: each text one line of the terminal, an input's end kept (the
    output continues it), an output's start kept, cut with "…"; a short text whole."""
    from hybrid.cli.train import _one_line

    text = "def add(a, b):\n" + "x" * 300 + "\nreturn a + b"
    head, tail = _one_line(text, 60, end=False), _one_line(text, 60, end=True)
    assert len(head) == len(tail) == 60
    assert head.startswith("'def add(a, b):\\n") and head.endswith("…")
    assert tail.startswith("…") and tail.endswith("\\nreturn a + b'")
    assert _one_line("short", 60, end=True) == "'short'"
