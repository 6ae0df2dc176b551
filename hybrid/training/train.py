"""`train(cfg)`, the driver of a training run: everything that can be wrong is found here with a one-line error before
a worker starts, then the recipe (hybrid/training/recipe.py) runs — in this process (train.num_workers=0) or on Ray
Train workers that stream their data through Ray Data (hybrid/training/datastream.py).

    files       data.train / data.validation resolved to files (a file, folder, glob or URI)
    scan        every file read once (Ray tasks on the cluster's CPUs): usable records, bad ones (the first is a
                file:line error, or counted with data.on_bad_record=skip), the tokenizer's sample
    tokenizer   the checkpoint's, the base's, or trained on that sample (train.tokenizer_sample records)
    plan        the stream's order and its length (enough epochs for train.max_iters)
    fit         the recipe on 1..N workers; the driver holds the file list and the sample, never the data set
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybrid.config.recipe import RecipeConfig
from hybrid.core import storage
from hybrid.core.errors import ConfigError, HybridError, root_cause
from hybrid.core.io import atomic_write_json, atomic_write_text, exclusive_lock
from hybrid.core.ray_utils import fixed_resources, init_ray
from hybrid.data.io_pairs import data_files
from hybrid.data.tokenizer import TextTokenizer, pretrained_tokenizer, train_bpe, train_word_level
from hybrid.models import build_model
from hybrid.training import checkpoints as ckpt_io
from hybrid.training.datastream import StreamPlan, ray_eval_dataset, ray_train_dataset, scan
from hybrid.training.launchers import AfterCheckpoint, ray_worker, run_local
from hybrid.training.spec import TrainingSpec

BLOCK_BYTES = 4 << 20  # Ray Data blocks of the training stream


@dataclass
class TrainResult:
    output_dir: Path | str  # a URI when train.output_dir is one (and then the checkpoints too)
    checkpoint: Path | str | None  # the latest checkpoint
    best_checkpoint: Path | str | None
    metrics: dict[str, Any]
    data_counts: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0


def resolve_resume(resume: str, output: str, work_dir: Path) -> Path | None:
    """The checkpoint to continue from, as a local folder (when `output` is a URI, the latest one is downloaded into
    the run's work folder `work_dir`), or None."""
    value = (resume or "").strip()
    if value.lower() in ("none", "no", "false", ""):
        if ckpt_io.checkpoint_names(output):
            raise ConfigError(
                f"train.resume=none: {storage.shown(output)} already holds "
                f"checkpoints; pick a new train.output_dir or use train.resume=auto to continue"
            )
        return None
    if value.lower() == "auto":
        names = ckpt_io.checkpoint_names(output)
        return ckpt_io.fetch_checkpoint(storage.join(output, names[-1]), dest=work_dir / names[-1]) if names else None
    return ckpt_io.resolve_checkpoint(value)


def output_location(cfg: RecipeConfig, hold: contextlib.ExitStack | None = None) -> tuple[Path, str]:
    """(the local folder the run writes in, where it publishes to): the output folder itself, or — for a location
    written through a staging folder (a URI) — a fresh staging folder, locked first when `hold` is given (one run
    per URI on a machine): what counts is what reached the output."""
    out = cfg.train.output_dir
    where = storage.at(out)
    output, work_dir = where.absolute(out), where.work_dir(out)
    if not where.stages:
        return work_dir, output
    if hold is not None:
        hold.enter_context(
            exclusive_lock(
                work_dir.with_name(work_dir.name + ".lock"), f"train.output_dir {where.shown(output)}", wait=False
            )
        )
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    return work_dir, output


def needs_tokenizer_training(cfg: RecipeConfig, resume_from: Path | None, init_from: Path | None) -> bool:
    return resume_from is None and init_from is None and not cfg.model.pretrained


def get_tokenizer(
    cfg: RecipeConfig, resume_from: Path | None, sample_texts: list[str], init_from: Path | None = None
) -> TextTokenizer:
    """The run's tokenizer: the checkpoint's (resume, init_from), the base's (model.pretrained), else one trained on
    the sample of training texts."""
    if resume_from is not None:
        return TextTokenizer.load(resume_from)
    if init_from is not None:
        return TextTokenizer.load(init_from)
    if cfg.model.pretrained:
        if cfg.train.tokenizer != "bpe":
            raise ConfigError(
                f"train.tokenizer={cfg.train.tokenizer}: model.pretrained brings its own tokenizer (drop one of them)"
            )
        return pretrained_tokenizer(cfg.model.pretrained)
    if cfg.train.tokenizer == "word":
        return train_word_level(sample_texts)
    return train_bpe(sample_texts, cfg.train.tokenizer_vocab_size)


def check_resume_fits(resume_from: Path, cfg: RecipeConfig) -> None:
    """The checkpoint to resume from was trained with the same model (sizes, memory settings)."""
    import yaml

    try:
        saved = yaml.safe_load((resume_from / "config.yaml").read_text())["model"]
    except Exception as e:
        raise HybridError(f"{resume_from / 'config.yaml'}: unreadable ({e})") from None
    now = cfg.model.model_dump(mode="json")
    for key in sorted(set(saved) | set(now)):
        if key in ("gradient_checkpointing", "use_gpu_to_search", "pretrained"):
            continue  # how to run it, not what it is
        if saved.get(key) != now.get(key):
            raise ConfigError(
                f"model.{key}: {now.get(key)!r} here, but {resume_from} was trained with "
                f"{saved.get(key)!r} (use the same model settings, or train.resume=none with a "
                f"new train.output_dir)"
            )


def resolve_init_from(cfg: RecipeConfig) -> Path | None:
    """The checkpoint `train.init_from` names (validated), or None."""
    value = (cfg.train.init_from or "").strip()
    if value.lower() in ("", "none"):
        return None
    if cfg.model.pretrained:
        raise ConfigError(f"train.init_from={value} and model.pretrained={cfg.model.pretrained}: set one of them")
    return ckpt_io.resolve_checkpoint(value)


def check_init_fits(init_from: Path, cfg: RecipeConfig) -> str:
    """Before any worker starts: every parameter shared by this run's model and the checkpoint has the same shape
    (a one-line error naming the first that does not). Returns the line describing what will be loaded."""
    import torch

    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = build_model(cfg.model, vocab_size=cfg.model.vocab_size)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    plan = ckpt_io.plan_init(
        own, ckpt_io.checkpoint_shapes(init_from), init_from, bool(model.config.tie_word_embeddings)
    )
    return ckpt_io.describe_init(init_from, *plan)


def _use_gpu(cfg: RecipeConfig) -> bool:
    """train.use_gpu=auto: GPUs when the cluster has them (the driver may run on a CPU-only head), else when this
    machine has CUDA."""
    if cfg.train.use_gpu != "auto":
        return bool(cfg.train.use_gpu)
    if cfg.train.num_workers > 0:
        import ray

        return ray.cluster_resources().get("GPU", 0) > 0
    import torch

    return torch.cuda.is_available()


def strategy_of(cfg: RecipeConfig) -> str:
    return "ddp" if cfg.train.strategy == "auto" else cfg.train.strategy


def data_resources(cfg: RecipeConfig) -> tuple[float, int]:
    """(CPUs each reading/tokenizing task reserves, how many run at once) beside the training workers: a whole CPU
    when one is left over, half of one when only that is (a Tune trial holds a sliver), none when the workers take
    them all (two workers on a 2-core laptop: the tasks then share the workers' CPUs); `data.cpus_per_task` and
    `data.read_tasks` say otherwise."""
    import ray

    free = ray.available_resources().get("CPU", 0.0) - cfg.train.num_workers * cfg.train.cpus_per_worker
    if cfg.data.cpus_per_task is not None:
        cpus = cfg.data.cpus_per_task
    else:
        cpus = 1.0 if free >= 1 else 0.5 if free >= 0.5 else 0.0
    tasks = cfg.data.read_tasks or (max(1, int(free // cpus)) if cpus else 1)
    return cpus, tasks


def check_fits(cfg: RecipeConfig, what: str = "") -> None:
    """Before anything starts: the run's workers (and its data tasks, when they reserve CPUs) fit the cluster — on a
    Ray whose resources are known and fixed (a local one this process started). Otherwise Ray Train waits 60 s for
    a worker group that can never start and fails with a long traceback. A joined cluster is not checked: it may
    autoscale, so what does not fit now may fit in a minute."""
    res = fixed_resources()
    if res is None or cfg.train.num_workers == 0:
        return
    t = cfg.train
    need = t.num_workers * t.cpus_per_worker + (cfg.data.cpus_per_task or 0)
    asked = f"train.num_workers={t.num_workers} × train.cpus_per_worker={t.cpus_per_worker:g}" + (
        f" + data.cpus_per_task={cfg.data.cpus_per_task:g}" if cfg.data.cpus_per_task else ""
    )
    if need > res.get("CPU", 0) + 1e-9:
        raise ConfigError(
            f"{what}{asked} asks for {need:g} CPUs, but the local Ray has {res.get('CPU', 0):g}; lower "
            f"train.num_workers or train.cpus_per_worker (or join a larger cluster with RAY_ADDRESS)"
        )
    if t.use_gpu is True and t.num_workers > res.get("GPU", 0):
        raise ConfigError(
            f"{what}train.num_workers={t.num_workers} with train.use_gpu=true asks for {t.num_workers} "
            f"GPUs, but the local Ray has {res.get('GPU', 0):g}"
        )


def prepare(
    cfg: RecipeConfig, workers: int, use_ray: bool, quiet: bool = False, hold: contextlib.ExitStack | None = None
) -> TrainingSpec:
    """Everything before the loop, on the driver (or torchrun's rank 0): resolve, scan, tokenizer, checks, the
    run folder's config.yaml / data_stats.json / tokenizer, the plan. Returns the spec every process of the run gets.
    `hold`: the output folder's lock goes on this stack, taken once the checks have passed (a run refused by a
    check creates nothing), before the first write."""
    t0 = time.time()
    if not cfg.data.train:
        raise ConfigError("data.train: no training data given (data.train=PATH to a JSONL/Parquet file or folder)")
    tcfg = cfg.train
    where = storage.at(tcfg.output_dir)
    if where.exists(tcfg.output_dir) and not where.is_dir(tcfg.output_dir):
        raise ConfigError(f"train.output_dir: {where.shown(where.absolute(tcfg.output_dir))} is a file, not a folder")
    output_dir, output = output_location(cfg, hold)
    train_files = data_files(cfg.data.train)
    val_files = data_files(cfg.data.validation) if cfg.data.validation else []
    resume_from = resolve_resume(tcfg.resume, output, output_dir)
    init_from = resolve_init_from(cfg) if resume_from is None else None  # a resumed run continues its own
    sample = tcfg.tokenizer_sample if needs_tokenizer_training(cfg, resume_from, init_from) else 0
    on_bad = cfg.data.on_bad_record
    train_scan = scan(train_files, on_bad, sample, tcfg.seed, use_ray=use_ray)
    val_scan = scan(val_files, on_bad, 0, tcfg.seed, use_ray=use_ray) if val_files else None
    tokenizer = get_tokenizer(cfg, resume_from, train_scan.sample, init_from)
    train_scan.sample = []  # trained on: the driver keeps no texts

    model_cfg = cfg.model.model_copy(
        update={
            "vocab_size": tokenizer.vocab_size,
            "gradient_checkpointing": cfg.model.gradient_checkpointing or tcfg.activation_checkpointing,
        }
    )
    cfg = cfg.model_copy(update={"model": model_cfg})
    if resume_from is not None:
        check_resume_fits(resume_from, cfg)
    init_line = check_init_fits(init_from, cfg) if init_from is not None else None
    strategy = strategy_of(cfg)
    counts = {
        "train": {
            "files": len(train_files),
            "examples": train_scan.rows,
            "skipped": train_scan.skipped,
            "tokenizer_sample": sample and min(sample, train_scan.rows),
        },
        "validation": (
            {"files": len(val_files), "examples": val_scan.rows, "skipped": val_scan.skipped} if val_scan else None
        ),
    }
    config_yaml = cfg.to_yaml()
    if hold is not None and not where.stages:  # a staging folder was locked when it was made
        hold.enter_context(output_dir_lock(output_dir))
    atomic_write_text(output_dir / "config.yaml", config_yaml)
    atomic_write_json(output_dir / "data_stats.json", counts)
    tokenizer.save(output_dir)
    ckpt_io.publish_files(
        output_dir,
        output,
        names=("config.yaml", "data_stats.json", "tokenizer.json", "tokenizer_config.json"),
        folders=(),
    )
    if resume_from is not None:
        ckpt_io.fetch_run_files(output, output_dir)
    if not quiet:
        t = counts["train"]
        origin = (
            f"trained on a sample of {t['tokenizer_sample']:,} pairs"
            if sample
            else "from the checkpoint"
            if resume_from or init_from
            else "the base model's"
        )
        skipped = f" ({sum(t['skipped'].values())} bad records skipped)" if t["skipped"] else ""
        print(
            f"train: {t['examples']:,} IO pairs in {t['files']} file(s){skipped}; tokenizer {origin}, "
            f"vocabulary {tokenizer.vocab_size:,}"
            + (f"; validation: {counts['validation']['examples']:,} IO pairs" if val_scan else "")
            + (f"; {workers} workers ({strategy})" if workers > 1 else ""),
            flush=True,
        )
        if resume_from:
            print(f"resuming from {resume_from}", flush=True)
        if init_line:
            print(init_line, flush=True)
    plan = StreamPlan.for_run(
        train_files,
        train_scan.rows,
        tcfg.max_iters * tcfg.gradient_accumulation_steps,
        tcfg.seed,
        cfg.data.shuffle_window,
        tcfg.batch_size,
        max(1, workers),
        cfg.model.segment_length if cfg.data.bucket_by_length else None,
        cfg.data.max_length,
        on_bad,
    )
    return TrainingSpec(
        cfg=cfg,
        output=output,
        work_dir=str(output_dir),
        config_yaml=config_yaml,
        tokenizer_json=tokenizer.to_json(),
        vocab_size=tokenizer.vocab_size,
        use_gpu=_use_gpu(cfg),
        strategy=strategy,
        plan=plan,
        val_files=tuple(val_files),
        val_rows=val_scan.rows if val_scan else 0,
        resume_from=str(resume_from) if resume_from else None,
        init_from=str(init_from) if init_from else None,
        run_id=uuid.uuid4().hex[:12],
        t0=t0,
        counts=counts,
    )


def train(cfg: RecipeConfig, quiet: bool = False, after_checkpoint: tuple[AfterCheckpoint, ...] = ()) -> TrainResult:
    """Train per `cfg` (data.train / data.validation, model, train sections) and return where it went.
    `after_checkpoint`: callables (step, checkpoint folder or None) every process calls after each checkpoint."""
    t0 = time.time()
    n_workers = cfg.train.num_workers
    with contextlib.ExitStack() as hold:
        if n_workers:
            init_ray(
                include_dashboard=True
            )  # the dashboard shows the run; Ray Train's placement-group cleaner needs it
            check_fits(cfg)
        spec = prepare(cfg, n_workers, use_ray=n_workers > 0, quiet=quiet, hold=hold)
        if n_workers == 0:  # in this process: the same recipe reads the same stream itself
            metrics = run_local(spec, after_checkpoint)
        else:
            metrics = fit_on_ray(spec, after_checkpoint=after_checkpoint)
        return result_of(spec, metrics, t0)


def output_dir_lock(output_dir: str | Path):
    """One training at a time per output folder: a second run into the same `train.output_dir` would interleave
    its checkpoints, `best` and retention with the first one's. A one-line error, not a wait; the lock goes with
    the process that holds it (a killed run leaves none). (A URI output locks its staging folder instead.)"""
    folder = Path(output_dir).resolve()
    return exclusive_lock(folder / ".train.lock", f"train.output_dir {folder}", wait=False)


def result_of(spec: TrainingSpec, metrics: dict[str, Any], t0: float) -> TrainResult:
    """What reached the output is the result (rank 0 may have staged it on another node)."""
    where = storage.at(spec.output)
    counts = {**spec.counts, "train": dict(spec.counts["train"])}
    names = ckpt_io.checkpoint_names(spec.output)
    latest = where.join(spec.output, names[-1]) if names else None
    if latest is not None:
        file = where.join(latest, ckpt_io.TRAINER_STATE)
        state = ckpt_io.parse_trainer_state(where.read_text(file), where.shown(file))
        metrics = metrics or state.get("metrics", {})
        counts["train"]["truncated"] = state.get("truncated", {})
    return TrainResult(
        output_dir=where.native(spec.output),
        checkpoint=where.native(latest) if latest else None,
        best_checkpoint=ckpt_io.best_checkpoint(spec.output),
        metrics=metrics,
        data_counts=counts,
        wall_s=time.time() - t0,
    )


def fit_on_ray(
    spec: TrainingSpec,
    callbacks: tuple = (),
    start_retries: int = 0,
    after_checkpoint: tuple[AfterCheckpoint, ...] = (),
) -> dict[str, Any]:
    """The recipe on Ray Train workers (`callbacks`: Ray Train's, e.g. Tune's report callback); the training stream
    split over them in order, validation read by each. `start_retries`: how many times a worker group that did not
    start in time (Ray Train's 60 s) is tried again — a Tune trial waits for other trials to free their CPUs; a
    plain run checked its resources up front (`check_fits`), so there it stays 0. `after_checkpoint`: as `train`'s,
    run in the workers."""
    import ray.data
    from ray.data import ExecutionOptions, ExecutionResources
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train import DataConfig as RayDataConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    cfg, plan, output_dir, use_gpu = spec.cfg, spec.plan, Path(spec.work_dir), spec.use_gpu
    tokenizer_json, val_files = spec.tokenizer_json, list(spec.val_files)
    n_workers = cfg.train.num_workers
    ctx = ray.data.DataContext.get_current()
    saved = (ctx.enable_progress_bars, ctx.execution_options.preserve_order, ctx.target_max_block_size)
    # the trainer captures the context when it is built: order preserved (the stream's order is the plan's), no
    # progress bars (they would garble the step lines), and blocks of at most 4 MiB, so a task reading a large file
    # hands over its first rows long before it has tokenized the whole file (the first step waits for them)
    ctx.enable_progress_bars, ctx.execution_options.preserve_order = False, True
    ctx.target_max_block_size = min(ctx.target_max_block_size or BLOCK_BYTES, BLOCK_BYTES)
    cpus, tasks = data_resources(cfg)
    datasets = {}  # a small stream each worker reads itself (RaySource), with no Ray Data execution to start
    if not spec.train_on_worker:
        datasets["train"] = ray_train_dataset(plan, tokenizer_json, cpus, tasks)
    if val_files and not spec.eval_on_worker:
        datasets["validation"] = ray_eval_dataset(
            val_files, tokenizer_json, cfg.data.max_length, cfg.data.on_bad_record, cpus, tasks
        )
    # What to resume from is decided above (train.resume); Ray's bookkeeping of an earlier fit in this folder
    # would reference checkpoints our retention removed (Ray then refuses to start), so it starts afresh.
    (output_dir / "checkpoint_manager_snapshot.json").unlink(missing_ok=True)
    run_config = RunConfig(
        name=output_dir.name,
        storage_path=str(output_dir.parent),
        # retention (the last few + `best`) is ours: Ray's policy keeps either the latest or the top-scored
        checkpoint_config=CheckpointConfig(num_to_keep=None),
        failure_config=FailureConfig(max_failures=cfg.train.max_failures, controller_failure_limit=start_retries),
        callbacks=list(callbacks),
        worker_runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k == "OMP_NUM_THREADS"}},
    )
    trainer = TorchTrainer(
        ray_worker,
        train_loop_config={"spec": spec, "after_checkpoint": tuple(after_checkpoint)},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=n_workers, use_gpu=use_gpu, resources_per_worker={"CPU": cfg.train.cpus_per_worker}
        ),
        run_config=run_config,
        datasets=datasets,
        dataset_config=RayDataConfig(
            datasets_to_split=["train"] if "train" in datasets else [],
            execution_options=ExecutionOptions(
                preserve_order=True, resource_limits=ExecutionResources(object_store_memory=read_ahead_bytes(cfg))
            ),
        ),
    )
    try:
        result = trainer.fit()
    except HybridError:
        raise
    except Exception as e:
        cause = root_cause(e)
        if isinstance(cause, HybridError):
            raise HybridError(str(cause)) from None
        raise
    finally:
        ctx.enable_progress_bars, ctx.execution_options.preserve_order, ctx.target_max_block_size = saved
    return dict(result.metrics or {})


def read_ahead_bytes(cfg: RecipeConfig) -> int:
    """How far the training stream may read and tokenize ahead of the workers (`data.read_ahead_mb`; null = 8 shuffle
    windows of full-length rows, at least 16 MiB). Unbounded, Ray Data fills its object-store budget (GBs): a run on
    a large data set then spends the CPUs beside the training workers tokenizing rows it has not reached — measured
    here, one worker's steps took 3.5x longer for the first minute of a 10-file run and were back to normal once
    the whole set had been read."""
    if cfg.data.read_ahead_mb is not None:
        return int(cfg.data.read_ahead_mb * 2**20)
    return max(16 << 20, 8 * cfg.data.shuffle_window * cfg.data.max_length * 4)


def describe(result: TrainResult) -> str:
    m = result.metrics
    parts = [f"checkpoints in {storage.shown(result.output_dir)}"]
    if result.best_checkpoint:
        parts.append(f"best: {storage.base_name(result.best_checkpoint)}")
    if m.get("val_loss") is not None:
        parts.append(f"validation loss {m['val_loss']:.4f}")
    if m.get("train_loss") is not None:
        parts.append(f"train loss {m['train_loss']:.4f}")
    parts.append(f"{result.wall_s:.0f} s")
    return " | ".join(parts)
