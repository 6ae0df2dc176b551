"""How a training process was started, told to the recipe as two small objects — it never asks (torchtune's recipes
are handed their data loaders the same way):

    a data source   this rank's micro-batches from the start of the training stream, and the validation rows
    a reporter      the checkpoint to restart from that the launcher kept, and where each evaluation is reported

    in-process / torchrun   `LocalSource` (each rank reads its own share of the stream, hybrid/training/datastream.py)
                            and `Reporter` (nothing to restart from, nothing to report to)
    Ray Train               `RaySource` (the shards of the Ray Data streams the driver built; a small training
                            stream or validation set is read by each worker itself) and `RayReporter`
                            (`ray.train.get_checkpoint`, `ray.train.report`): `ray_worker` is the workers' loop

The recipe (hybrid/training/recipe.py) imports none of this; its callers pick the adapters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hybrid.data.tokenizer import TextTokenizer
from hybrid.training.checkpoints import checkpoint_name
from hybrid.training.datastream import (
    StreamPlan,
    local_eval_rows,
    local_micro_batches,
    table_rows,
)
from hybrid.training.recipe import run
from hybrid.training.spec import TrainingSpec

AfterCheckpoint = Callable[[int, Path | None], None]


class LocalSource:
    """The stream read in this process: rank r of `world` takes its share of every global batch."""

    def train_batches(
        self, plan: StreamPlan, tokenizer: TextTokenizer, rank: int, world: int
    ) -> Iterator[list[dict[str, Any]]]:
        yield from local_micro_batches(plan, tokenizer, rank, world)

    def eval_rows(self, spec: TrainingSpec, tokenizer: TextTokenizer) -> Iterator[dict[str, Any]]:
        yield from local_eval_rows(
            list(spec.val_files), tokenizer, spec.cfg.data.max_length, spec.cfg.data.on_bad_record
        )


class Reporter:
    """In-process and torchrun runs: the launcher keeps no checkpoint and takes no reports."""

    def restored_checkpoint(self) -> Path | None:
        return None

    def report(self, metrics: dict[str, Any], checkpoint: Path | None, step: int) -> None:
        pass


class RaySource:
    """This worker's shard of the Ray Data streams `fit_on_ray` passed to the trainer; a small stream (see
    `TrainingSpec.train_on_worker`, `eval_on_worker`) read here, as `LocalSource` reads it."""

    def __init__(self, spec: TrainingSpec):
        self.spec = spec

    def train_batches(
        self, plan: StreamPlan, tokenizer: TextTokenizer, rank: int, world: int
    ) -> Iterator[list[dict[str, Any]]]:
        if self.spec.train_on_worker:
            yield from LocalSource().train_batches(plan, tokenizer, rank, world)
            return
        import ray.train

        shard = ray.train.get_dataset_shard("train")
        for table in shard.iter_batches(batch_size=plan.micro_batch, batch_format="pyarrow", prefetch_batches=2):
            yield table_rows(table)

    def eval_rows(self, spec: TrainingSpec, tokenizer: TextTokenizer) -> Iterator[dict[str, Any]]:
        if spec.eval_on_worker:
            yield from LocalSource().eval_rows(spec, tokenizer)
            return
        import ray.train

        shard = ray.train.get_dataset_shard("validation")
        for table in shard.iter_batches(batch_size=1024, batch_format="pyarrow"):
            yield from table_rows(table)


class RayReporter(Reporter):
    def restored_checkpoint(self) -> Path | None:
        import ray.train

        ck = ray.train.get_checkpoint()  # a restarted worker group: Ray's latest
        return Path(ck.path) if ck is not None else None

    def report(self, metrics: dict[str, Any], checkpoint: Path | None, step: int) -> None:
        import ray.train
        from ray.train import Checkpoint, CheckpointUploadMode

        ray.train.report(
            metrics,
            checkpoint=Checkpoint.from_directory(str(checkpoint)) if checkpoint else None,
            checkpoint_dir_name=checkpoint_name(step),
            checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD,
        )


def run_local(spec: TrainingSpec, after_checkpoint: tuple[AfterCheckpoint, ...] = ()) -> dict[str, Any]:
    """The recipe in this process — alone, or as one torchrun rank."""
    return run(spec, LocalSource(), Reporter(), after_checkpoint)


def ray_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train's `train_loop_per_worker`: `config` holds the spec and the after-checkpoint callbacks."""
    return run(config["spec"], RaySource(config["spec"]), RayReporter(), tuple(config.get("after_checkpoint", ())))
