"""`train(cfg)`: read and check the data, get a tokenizer, tokenize, and run the loop on Ray Train's TorchTrainer.

Everything that can be wrong with the data or the checkpoint to resume from is found here, on the driver, with a
one-line error naming the file — before a worker starts."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybrid.config.recipe import RecipeConfig
from hybrid.core.errors import ConfigError, HybridError
from hybrid.core.ray_utils import init_ray
from hybrid.data.encode import encode_pairs
from hybrid.data.io_pairs import read_io_pairs
from hybrid.data.tokenizer import TextTokenizer, pretrained_tokenizer, train_bpe, train_word_level
from hybrid.models import build_model
from hybrid.training import checkpoints as ckpt_io
from hybrid.training.loop import CRASH_ENV, train_loop_per_worker


@dataclass
class TrainResult:
    output_dir: Path
    checkpoint: Path | None  # the latest checkpoint
    best_checkpoint: Path | None
    metrics: dict[str, Any]
    data_counts: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0


def resolve_resume(resume: str, output_dir: Path) -> Path | None:
    value = (resume or "").strip()
    if value.lower() in ("none", "no", "false", ""):
        if ckpt_io.list_checkpoints(output_dir):
            raise ConfigError(f"train.resume=none: {output_dir} already holds checkpoints; pick a new "
                              f"train.output_dir or use train.resume=auto to continue")
        return None
    if value.lower() == "auto":
        return ckpt_io.latest_checkpoint(output_dir)
    return ckpt_io.resolve_checkpoint(value)


def get_tokenizer(cfg: RecipeConfig, resume_from: Path | None, train_records: list[dict[str, Any]],
                  init_from: Path | None = None):

    if resume_from is not None:
        return TextTokenizer.load(resume_from)
    if init_from is not None:
        return TextTokenizer.load(init_from)
    if cfg.model.pretrained:
        if cfg.train.tokenizer != "bpe":
            raise ConfigError(f"train.tokenizer={cfg.train.tokenizer}: model.pretrained brings its own tokenizer "
                              f"(drop one of them)")
        return pretrained_tokenizer(cfg.model.pretrained)
    texts = (t for r in train_records for t in (r["input"], r["output"]))
    if cfg.train.tokenizer == "word":
        return train_word_level(texts)
    return train_bpe(texts, cfg.train.tokenizer_vocab_size)


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
            raise ConfigError(f"model.{key}: {now.get(key)!r} here, but {resume_from} was trained with "
                              f"{saved.get(key)!r} (use the same model settings, or train.resume=none with a "
                              f"new train.output_dir)")


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
    plan = ckpt_io.plan_init(own, ckpt_io.checkpoint_shapes(init_from), init_from,
                             bool(model.config.tie_word_embeddings))
    return ckpt_io.describe_init(init_from, *plan)


def _use_gpu(cfg: RecipeConfig) -> bool:
    if cfg.train.use_gpu == "auto":
        import torch

        return torch.cuda.is_available()
    return bool(cfg.train.use_gpu)


def train(cfg: RecipeConfig, quiet: bool = False) -> TrainResult:
    """Train per `cfg` (data.train / data.validation, model, train sections) and return where it went."""

    t0 = time.time()
    if not cfg.data.train:
        raise ConfigError("data.train: no training data given (data.train=PATH to a JSONL/Parquet file or folder)")
    output_dir = Path(cfg.train.output_dir).resolve()
    train_pairs = read_io_pairs(cfg.data.train, cfg.data.on_bad_record)
    val_pairs = read_io_pairs(cfg.data.validation, cfg.data.on_bad_record) if cfg.data.validation else None
    resume_from = resolve_resume(cfg.train.resume, output_dir)
    init_from = resolve_init_from(cfg) if resume_from is None else None  # a resumed run continues its own
    tokenizer = get_tokenizer(cfg, resume_from, train_pairs.records, init_from)

    model_cfg = cfg.model.model_copy(update={
        "vocab_size": tokenizer.vocab_size,
        "gradient_checkpointing": cfg.model.gradient_checkpointing or cfg.train.activation_checkpointing})
    cfg = cfg.model_copy(update={"model": model_cfg})
    if resume_from is not None:
        check_resume_fits(resume_from, cfg)
    init_line = check_init_fits(init_from, cfg) if init_from is not None else None
    train_enc = encode_pairs(tokenizer, train_pairs.records, cfg.data.max_length)
    val_enc = encode_pairs(tokenizer, val_pairs.records, cfg.data.max_length) if val_pairs else None
    counts = {
        "train": {**train_enc.counts, "output_tokens": train_enc.output_tokens(),
                  "skipped": dict(train_pairs.skipped)},
        "validation": ({**val_enc.counts, "output_tokens": val_enc.output_tokens(),
                        "skipped": dict(val_pairs.skipped)} if val_enc else None),
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    config_yaml = cfg.to_yaml()
    (output_dir / "config.yaml").write_text(config_yaml)
    (output_dir / "data_stats.json").write_text(json.dumps(counts, indent=2) + "\n")
    tokenizer.save(output_dir)
    if not quiet:
        t = counts["train"]
        print(f"train: {t['examples']} IO pairs, {t['output_tokens']} output tokens, "
              f"{t.get('input_truncated_left', 0)} inputs truncated on the left, "
              f"{t.get('output_truncated', 0)} outputs truncated; vocabulary {tokenizer.vocab_size}"
              + (f"; validation: {counts['validation']['examples']} IO pairs" if val_enc else ""), flush=True)
        if resume_from:
            print(f"resuming from {resume_from}", flush=True)
        if init_line:
            print(init_line, flush=True)

    use_gpu = _use_gpu(cfg)
    n_workers = cfg.train.num_workers
    loop_config: dict[str, Any] = {
        "cfg": cfg.model_dump(mode="json"), "output_dir": str(output_dir), "config_yaml": config_yaml,
        "tokenizer_json": tokenizer.tokenizer.to_str(), "vocab_size": tokenizer.vocab_size,
        "pad_id": tokenizer.pad_id, "use_gpu": use_gpu,
        "resume_from": str(resume_from) if resume_from else None,
        "init_from": str(init_from) if init_from else None, "examples": None}
    datasets, saved_bars = None, None
    if n_workers == 0:  # in-process: hand the examples over directly, no Ray cluster needed
        loop_config["examples"] = {
            "train": list(zip(train_enc.input_ids, train_enc.prompt_lengths)),
            "validation": list(zip(val_enc.input_ids, val_enc.prompt_lengths)) if val_enc else []}
    else:
        import ray.data

        init_ray(include_dashboard=True)  # the dashboard shows the run; Ray Train's placement-group cleaner needs its State API
        # each worker reads its copy of the data once: a progress bar (the datasets capture the current
        # context) would only garble the step lines that follow
        ctx = ray.data.DataContext.get_current()
        saved_bars, ctx.enable_progress_bars = ctx.enable_progress_bars, False

        def as_dataset(enc):
            return ray.data.from_items([{"idx": i, "input_ids": ids, "prompt_length": p}
                                        for i, (ids, p) in enumerate(zip(enc.input_ids, enc.prompt_lengths))])

        datasets = {"train": as_dataset(train_enc)}
        if val_enc:
            datasets["validation"] = as_dataset(val_enc)

    try:
        result = _fit(train_loop_per_worker, loop_config, cfg, output_dir, n_workers, use_gpu, datasets)
    finally:
        if saved_bars is not None:
            ray.data.DataContext.get_current().enable_progress_bars = saved_bars
    latest = ckpt_io.latest_checkpoint(output_dir)
    metrics = dict(result.metrics or {}) if result is not None else {}
    if not metrics and latest is not None:
        metrics = ckpt_io.read_trainer_state(latest).get("metrics", {})
    return TrainResult(output_dir=output_dir, checkpoint=latest, best_checkpoint=ckpt_io.best_checkpoint(output_dir),
                       metrics=metrics, data_counts=counts, wall_s=time.time() - t0)


def _fit(loop, loop_config, cfg: RecipeConfig, output_dir: Path, n_workers: int, use_gpu: bool, datasets):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train import DataConfig as RayDataConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    # What to resume from is decided above (train.resume); Ray's bookkeeping of an earlier fit in this folder
    # would reference checkpoints our retention removed (Ray then refuses to start), so it starts afresh.
    (output_dir / "checkpoint_manager_snapshot.json").unlink(missing_ok=True)
    scaling = ScalingConfig(num_workers=n_workers, use_gpu=use_gpu and n_workers > 0,
                            resources_per_worker={"CPU": cfg.train.cpus_per_worker} if n_workers else None)
    run_config = RunConfig(
        name=output_dir.name, storage_path=str(output_dir.parent),
        # retention (the last few + `best`) is ours: Ray's policy keeps either the latest or the top-scored
        checkpoint_config=CheckpointConfig(num_to_keep=None),
        failure_config=FailureConfig(max_failures=cfg.train.max_failures, controller_failure_limit=0),
        worker_runtime_env={"env_vars": {k: v for k, v in __import__("os").environ.items()
                                         if k in (CRASH_ENV, "OMP_NUM_THREADS")}} if n_workers else None)
    trainer = TorchTrainer(
        loop, train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=scaling, run_config=run_config, datasets=datasets,
        # every worker gets the whole dataset; the loop takes its slice of each global batch (see loop.py)
        dataset_config=RayDataConfig(datasets_to_split=[]) if datasets else None)
    try:
        return trainer.fit()
    except HybridError:
        raise
    except Exception as e:
        cause = _root_cause(e)
        if isinstance(cause, HybridError):
            raise HybridError(str(cause)) from None
        raise


def _root_cause(e: BaseException) -> BaseException:
    seen = set()
    while id(e) not in seen:
        seen.add(id(e))
        failures = getattr(e, "worker_failures", None)
        if failures:
            e = next(iter(failures.values()))
            continue
        nxt = getattr(e, "cause", None) or e.__cause__
        if nxt is None:
            break
        e = nxt
    return e


def describe(result: TrainResult) -> str:
    m = result.metrics
    parts = [f"checkpoints in {result.output_dir}"]
    if result.best_checkpoint:
        parts.append(f"best: {result.best_checkpoint.name}")
    if m.get("val_loss") is not None:
        parts.append(f"validation loss {m['val_loss']:.4f}")
    if m.get("train_loss") is not None:
        parts.append(f"train loss {m['train_loss']:.4f}")
    parts.append(f"{result.wall_s:.0f} s")
    return " | ".join(parts)

