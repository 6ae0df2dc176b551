"""Where a run's numbers go, on rank 0: metrics.jsonl in the output folder (always), TensorBoard event files in
<output_dir>/tensorboard (`train.tensorboard`, on by default: `tensorboard --logdir <output_dir>`), and an MLflow
run when `train.mlflow_uri` is set (a tracking server, or a local store such as `file:///path/mlruns`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hybrid.config.recipe import RecipeConfig
from hybrid.core.errors import ConfigError

SCALARS = ("loss", "val_loss", "val_exact_match", "lr", "tokens_per_s", "grad_norm")  # what TensorBoard and MLflow get


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class Tracker:
    def __init__(self, cfg: RecipeConfig, output_dir: Path, run_name: str, enabled: bool):
        self.enabled = enabled
        self.metrics_path = output_dir / "metrics.jsonl"
        self.tb = None
        self.mlflow = None
        if not enabled:
            return
        if cfg.train.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(output_dir / "tensorboard"))
        if cfg.train.mlflow_uri:
            try:
                import mlflow
            except ImportError:
                raise ConfigError("train.mlflow_uri: MLflow is not installed (pip install mlflow-skinny)") from None
            if cfg.train.mlflow_uri.startswith("file:"):
                # MLflow 3 keeps its file store only on request; a file: URI is that request
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri(cfg.train.mlflow_uri)
            mlflow.set_experiment(cfg.train.mlflow_experiment)
            self.mlflow = mlflow
            mlflow.start_run(run_name=run_name)
            params = {k: v for k, v in _flat(cfg.model_dump(mode="json")).items() if v is not None}
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})

    def log(self, record: dict[str, Any]) -> None:
        """One line of metrics.jsonl (step, then its numbers); the scalars also go to TensorBoard / MLflow."""
        if not self.enabled:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        step = int(record["step"])
        scalars = {k: float(v) for k, v in record.items() if k in SCALARS and v is not None}
        if self.tb is not None:
            for k, v in scalars.items():
                name = {"val_loss": "validation/loss", "val_exact_match": "validation/exact_match"}.get(k, f"train/{k}")
                self.tb.add_scalar(name, v, step)
            self.tb.flush()
        if self.mlflow is not None and scalars:
            self.mlflow.log_metrics(scalars, step=step)

    def close(self, status: str = "FINISHED") -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.mlflow is not None:
            self.mlflow.end_run(status=status)
            self.mlflow = None
