"""`TrainingSpec`: what `prepare()` (hybrid/training/train.py) hands every process of a training run — the contract
between the driver, the recipe (hybrid/training/recipe.py) and the sweeps (hybrid/tuning/)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hybrid.config.recipe import RecipeConfig
from hybrid.training.datastream import StreamPlan, read_on_worker


@dataclass(frozen=True)
class TrainingSpec:
    cfg: RecipeConfig  # the resolved config (vocabulary size from the tokenizer), validated once, on the driver
    output: str  # where the run's checkpoints, `best` and files go: an absolute folder or a URI
    work_dir: str  # the local folder the run writes in: `output` itself, or its staging folder (hybrid.core.storage)
    config_yaml: str  # `cfg` as every checkpoint saves it
    tokenizer_json: str
    vocab_size: int
    use_gpu: bool
    strategy: str  # ddp | fsdp | allreduce (hybrid/training/distributed.py)
    plan: StreamPlan  # the training stream's files, order and length
    val_files: tuple[str, ...] = ()
    val_rows: int = 0
    resume_from: str | None = None  # a local checkpoint folder (a URI's is downloaded into `work_dir` first)
    init_from: str | None = None  # train.init_from, resolved: weights only
    run_id: str = ""  # names this run's temp folders, so two runs never write into each other's
    t0: float = 0.0  # when the driver started (the first step's latency is measured from it)
    counts: dict[str, Any] = field(default_factory=dict)  # data_stats.json: examples, files, skipped records

    @property
    def train_on_worker(self) -> bool:
        """A small training stream: each Ray Train worker reads it itself (`data.local_rows`), no Ray Data."""
        return read_on_worker(self.plan.rows_per_epoch * self.plan.epochs, self.cfg.data.local_rows)

    @property
    def eval_on_worker(self) -> bool:
        """A small validation set: each Ray Train worker reads it itself (`data.local_rows`), no Ray Data."""
        return read_on_worker(self.val_rows, self.cfg.data.local_rows)
