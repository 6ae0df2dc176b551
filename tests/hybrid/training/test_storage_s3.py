"""Training, resume and evaluation with data and checkpoints on an S3-compatible store (moto's server on 127.0.0.1,
spoken to over HTTP by pyarrow): checkpoints land there with `best`, a killed run resumes from there on a fresh
staging folder, `hybrid eval` reads the checkpoint from there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hybrid.core import storage
from hybrid.training import checkpoints as ckpt_io

ROOT = Path(__file__).resolve().parents[3]
DIE_AFTER = str(Path(__file__).with_name("train_then_die.py"))  # a training run that SIGKILLs itself


def upload(local: Path, uri: str) -> str:
    storage.write_text(uri, local.read_text())
    return uri


@pytest.mark.slow
def test_train_resume_and_eval_on_s3(s3_server, io_data, tiny_overrides, tmp_path):
    from tests.commands import run_process

    bucket = s3_server.bucket()
    train_uri = upload(io_data["train"], f"s3://{bucket}/data/train.jsonl")
    val_uri = upload(io_data["validation"], f"s3://{bucket}/data/validation.jsonl")
    out = f"s3://{bucket}/runs/tiny"
    env = {**os.environ, **s3_server.env, "HYBRID_CACHE_DIR": str(tmp_path / "cache")}
    args = [
        sys.executable,
        "-m",
        "hybrid",
        "train",
        *tiny_overrides(
            {"train": train_uri, "validation": val_uri},
            out,
            "train.max_iters=8",
            "train.eval_every=4",
            "train.keep_last=1",
        ),
    ]
    first = subprocess.run(
        [sys.executable, DIE_AFTER, "4", *args[4:]], env=env, capture_output=True, text=True, cwd=ROOT, timeout=600
    )
    assert first.returncode == -9, first.stderr[-2000:]  # killed after step 4's checkpoint
    assert ckpt_io.checkpoint_names(out) == ["checkpoint_step_000004"]
    assert ckpt_io.best_name(out) == "checkpoint_step_000004"
    assert storage.exists(f"{out}/checkpoint_step_000004/model.safetensors")

    # another machine: nothing staged locally, everything comes from the store
    shutil.rmtree(tmp_path / "cache")
    summary = tmp_path / "train.json"
    second = subprocess.run(
        [*args, "--json", str(summary)], env=env, capture_output=True, text=True, cwd=ROOT, timeout=600
    )
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resuming from" in second.stdout and f"checkpoints in {out}" in second.stdout
    result = json.loads(summary.read_text())
    assert result["checkpoint"] == f"{out}/checkpoint_step_000008"
    names = ckpt_io.checkpoint_names(out)
    best = ckpt_io.best_name(out)
    assert names[-1] == "checkpoint_step_000008" and set(names) == {best, names[-1]}  # keep_last=1, plus best
    records = [json.loads(line) for line in storage.read_text(f"{out}/metrics.jsonl").splitlines()]
    assert sorted({r["step"] for r in records if "val_loss" in r}) == [4, 8]  # one history across the kill
    assert storage.list_dir(f"{out}/tensorboard")

    # the resumed run equals an uninterrupted local one
    local = tmp_path / "local"
    whole = run_process(
        [
            sys.executable,
            "-m",
            "hybrid",
            "train",
            *tiny_overrides(io_data, local, "train.max_iters=8", "train.eval_every=4"),
        ],
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert whole.returncode == 0, whole.stderr[-2000:]
    import torch
    from safetensors.torch import load_file

    remote = ckpt_io.fetch_checkpoint(f"{out}/checkpoint_step_000008")
    a, b = load_file(local / "checkpoint_step_000008" / "model.safetensors"), load_file(remote / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)

    # hybrid eval: the output URI resolves to its best checkpoint; the test data is read from the store too
    report = tmp_path / "eval.json"
    ev = run_process(
        [
            sys.executable,
            "-m",
            "hybrid",
            "eval",
            "--checkpoint",
            out,
            "--test-data",
            val_uri,
            "--json",
            str(report),
            "--max-generate",
            "0",
        ],
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert ev.returncode == 0, ev.stderr[-2000:]
    metrics = json.loads(report.read_text())
    state = json.loads(storage.read_text(f"{out}/{best}/trainer_state.json"))
    assert metrics["examples"] == 8 and metrics["loss"] == pytest.approx(state["best_val_loss"], rel=1e-4)
    assert s3_server.env["AWS_SECRET_ACCESS_KEY"] not in second.stdout + second.stderr + ev.stdout + ev.stderr


def test_a_missing_bucket_or_checkpoint_is_one_line(s3_server, io_data, tiny_overrides, tmp_path):
    from tests.commands import run_process

    env = {**os.environ, **s3_server.env}
    missing = run_process(
        [
            sys.executable,
            "-m",
            "hybrid",
            "eval",
            "--checkpoint",
            "s3://no-such-bucket/run",
            "--test-data",
            str(io_data["validation"]),
        ],
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.startswith("error: s3://no-such-bucket/run") and len(missing.stderr.splitlines()) == 1
    empty = f"s3://{s3_server.bucket()}/nothing"
    nothing = run_process(
        [sys.executable, "-m", "hybrid", "eval", "--checkpoint", empty, "--test-data", str(io_data["validation"])],
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert nothing.returncode == 2 and nothing.stderr.strip() == (f"error: {empty}: no such checkpoint folder")
