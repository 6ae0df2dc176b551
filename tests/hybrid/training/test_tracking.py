"""Experiment tracking: TensorBoard event files in the run folder by default, an MLflow run in a local file store
when train.mlflow_uri is set — both next to metrics.jsonl, with the same numbers."""

from __future__ import annotations

import json

import pytest

from hybrid.cli.config import load_config
from hybrid.training.train import train


def test_tensorboard_and_mlflow_record_the_run(io_data, tmp_path, tiny_overrides):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    store = f"file://{tmp_path / 'mlruns'}"
    res = train(
        load_config(
            tiny_overrides(
                io_data,
                tmp_path / "run",
                "train.max_iters=4",
                "train.eval_every=2",
                "train.log_every=1",
                f"train.mlflow_uri={store}",
                "train.mlflow_experiment=tracking-test",
            )
        ).recipe(),
        quiet=True,
    )
    logged = [json.loads(line) for line in (res.output_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    losses = [r["loss"] for r in logged if "loss" in r]
    vals = [r["val_loss"] for r in logged if "val_loss" in r]

    events = EventAccumulator(str(res.output_dir / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/lr", "train/tokens_per_s", "validation/loss"} <= set(events.Tags()["scalars"])
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(losses)
    assert [e.step for e in events.Scalars("validation/loss")] == [2, 4]
    assert [e.value for e in events.Scalars("validation/loss")] == pytest.approx(vals)

    client = MlflowClient(store)
    [run] = client.search_runs([client.get_experiment_by_name("tracking-test").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["train.max_iters"] == "4" and run.data.params["model.family"] == "llama"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == pytest.approx(losses)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [2, 4]


def test_tensorboard_can_be_turned_off(io_data, tmp_path, tiny_overrides):
    res = train(
        load_config(tiny_overrides(io_data, tmp_path / "run", "train.max_iters=1", "train.tensorboard=false")).recipe(),
        quiet=True,
    )
    assert not (res.output_dir / "tensorboard").exists() and (res.output_dir / "metrics.jsonl").exists()
