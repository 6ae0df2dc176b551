"""The training recipe (torchtune's `full_finetune_distributed` is the model): one class, read top to bottom.

    setup()            the process's place (Ray Train worker, torchrun rank, or alone), then
      _setup_model()     build, load the checkpoint to resume (or train.init_from), wrap for the strategy
      _setup_optimizer() AdamW (no decay on norms, biases, gates) + warmup/cosine; resumed state
      _setup_data()      this rank's micro-batches of the stream (hybrid/training/datastream.py), past the consumed ones
    train()            the loop: a global step = `gradient_accumulation_steps` micro-batches per rank; the loss of a
                       step is the sum of cross-entropies over the output tokens of the whole global batch divided by
                       their global count (each rank scales its summed loss, hybrid/training/distributed.py)
    validate()         the shared evaluation loop (hybrid/training/evaluate.py) over this rank's share
    save_checkpoint()  atomically, `best` by validation loss, the last few kept; reported to Ray Train

`run(spec, source, reporter)` is what a Ray Train worker, the in-process run and `python -m hybrid.train` under torchrun
call, each with its own data source and reporter (hybrid/training/launchers.py): the recipe does not know which
started it. Where it writes is the spec's work folder, published to the run's output through hybrid/core/storage.py
(a folder or a URI alike). After each checkpoint it calls the `after_checkpoint` callbacks (the tests' kill hook).

Collectives: two small ones a step, whatever the strategy — before the forward passes the step's counts (and whether
every rank still has data, and under FSDP with memory each micro-batch's padded length), after the optimizer step
the loss and what the log line shows — each one all-gather of a few float64s, summed or maxed on every rank.
"""

from __future__ import annotations

import itertools
import math
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError

from hybrid.core import storage
from hybrid.core.errors import HybridError, describe_os_error
from hybrid.core.io import atomic_write_jsonl, iter_jsonl
from hybrid.core.ray_utils import for_the_user
from hybrid.data.encode import collate
from hybrid.data.tokenizer import TextTokenizer
from hybrid.models import build_model
from hybrid.models.modeling import count_scored
from hybrid.training import checkpoints as ckpt_io
from hybrid.training import distributed
from hybrid.training.checkpoints import TrainerState
from hybrid.training.datastream import TRUNCATED, StreamPlan
from hybrid.training.evaluate import score_batches
from hybrid.training.spec import TrainingSpec
from hybrid.training.tracking import Tracker

# What every evaluation reports besides the step (`_evaluate_and_save`, and `best_val_loss` with it): the metrics a
# sweep can rank its trials by (tune.metric is checked against them before any trial starts)
REPORTED_METRICS = ("val_loss", "val_exact_match", "train_loss", "best_val_loss", "lr", "tokens_seen")


class DataSource(Protocol):
    """Where this rank's data comes from (hybrid/training/launchers.py: read in-process, or Ray Data's shards)."""

    def train_batches(
        self, plan: StreamPlan, tokenizer: TextTokenizer, rank: int, world: int
    ) -> Iterator[list[dict[str, Any]]]: ...

    def eval_rows(self, spec: TrainingSpec, tokenizer: TextTokenizer) -> Iterator[dict[str, Any]]: ...


class Reporter(Protocol):
    """What the launcher keeps: a checkpoint to restart from, each evaluation with its checkpoint."""

    def restored_checkpoint(self) -> Path | None: ...

    def report(self, metrics: dict[str, Any], checkpoint: Path | None, step: int) -> None: ...


AfterCheckpoint = Callable[[int, "Path | None"], None]  # (step, the checkpoint on rank 0 / None elsewhere)


def lr_lambda(warmup: int, max_iters: int, min_ratio: float):
    """Linear warmup to the peak over `warmup` steps, then cosine down to `min_ratio` × peak at `max_iters`."""

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        span = max(1, max_iters - warmup)
        progress = min(1.0, (step - warmup) / span)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def say(line: str) -> None:
    """A progress line on stdout. Not `print`: Ray Train patches print in workers to both print and log, which shows
    every line twice on the driver. In a Ray worker the line is tagged for the user: the driver shows it, bare,
    and keeps Ray's own lines off the terminal (hybrid.core.ray_utils.quiet_ray_logs)."""
    import sys

    sys.stdout.write(for_the_user(line) + "\n")
    sys.stdout.flush()


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports ru_maxrss in KiB, macOS in bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _fmt_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class TrainingRecipe:
    def __init__(
        self,
        spec: TrainingSpec,
        source: DataSource,
        reporter: Reporter,
        after_checkpoint: tuple[AfterCheckpoint, ...] = (),
    ):
        """`spec` (built by `hybrid.training.train.prepare`): the resolved config, where outputs go, the tokenizer,
        the data plan, what to resume from; `source` and `reporter`: the launcher's (hybrid/training/launchers.py)."""
        self.spec, self.source, self.reporter = spec, source, reporter
        self.after_checkpoint = tuple(after_checkpoint)
        self.cfg = spec.cfg
        self.output = spec.output  # a folder or a URI: what the checkpoints are published to
        self.output_dir = Path(spec.work_dir)  # where this run writes them first (the output folder itself, locally)
        self.strategy = spec.strategy
        self.plan = spec.plan
        self.state = TrainerState()

    # -- setup -----------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        tcfg = self.cfg.train
        self.ctx = distributed.detect(bool(self.spec.use_gpu))
        self.is_main = self.ctx.rank == 0
        self.bf16 = tcfg.precision == "bf16" or (tcfg.precision == "auto" and self.ctx.device.type == "cuda")
        self.tokenizer = TextTokenizer.from_json(self.spec.tokenizer_json)
        self.resume_path = self._resume_path()
        self._setup_model()
        self._setup_optimizer()
        self._setup_data()
        if self.is_main:
            self._trim_metrics()
        self.tracker = Tracker(self.cfg, self.output_dir, self.output_dir.name, enabled=self.is_main)

    def _resume_path(self) -> Path | None:
        restored = self.reporter.restored_checkpoint()  # a restarted worker group: the launcher's latest
        if restored is not None:
            return self._local(restored)
        return self._local(Path(self.spec.resume_from)) if self.spec.resume_from else None

    def _local(self, path: Path) -> Path:
        """A checkpoint staged in a work folder on the driver's machine is fetched from the output when this rank
        runs elsewhere."""
        if not path.is_dir() and path.parent == self.output_dir:
            path.parent.mkdir(parents=True, exist_ok=True)
            ckpt_io.fetch_checkpoint(storage.join(self.output, path.name), dest=path)
            if self.is_main:
                ckpt_io.fetch_run_files(self.output, self.output_dir)
        return path

    def _setup_model(self) -> None:
        torch.manual_seed(self.cfg.train.seed)  # same initial weights on every rank (FSDP does not broadcast)
        model = build_model(self.cfg.model, vocab_size=int(self.spec.vocab_size), memory_cfg=self.cfg.memory)
        if self.resume_path is not None:
            loaded = ckpt_io.load_model(self.resume_path)
            try:
                model.load_state_dict(loaded.state_dict())
            except RuntimeError as e:
                raise HybridError(
                    f"{self.resume_path}: does not fit this run's model ({str(e).splitlines()[-1].strip()[:200]})"
                ) from None
            del loaded
            self.state = TrainerState.from_json(ckpt_io.read_trainer_state(self.resume_path))
        elif self.spec.init_from:  # weights only: optimizer, scheduler and step start fresh
            ckpt_io.init_weights_from(model, self.spec.init_from)
        self.model_config, self.model_class = model.config, type(model).__name__
        self.model = distributed.wrap(model, self.strategy, self.ctx)
        if self.cfg.train.compile:  # after wrapping, as torchtune does (FSDP2 shards each block before it compiles)
            distributed.unwrap(self.model).compile_blocks(backend=self.cfg.train.compile_backend)

    def _setup_optimizer(self) -> None:
        tcfg = self.cfg.train
        decay, no_decay = [], []
        for p in self.model.parameters():
            if p.requires_grad:
                (decay if p.dim() >= 2 else no_decay).append(p)  # norms, biases, gates: no weight decay
        groups = [{"params": decay, "weight_decay": tcfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        self.params = decay + no_decay
        self.optimizer = torch.optim.AdamW(groups, lr=tcfg.learning_rate, betas=(tcfg.beta1, tcfg.beta2))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(tcfg.warmup_iters, tcfg.max_iters, tcfg.min_lr_ratio)
        )
        if self.resume_path is None:
            return
        if self.strategy == "fsdp" and self.ctx.distributed:
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

            shards = self.resume_path / "optimizer"
            if not shards.is_dir():
                raise HybridError(
                    f"{self.resume_path}: has no sharded optimizer state (optimizer/): it was not "
                    f"written by train.strategy=fsdp; resume it with the strategy that wrote it"
                )
            state = {"optim": get_optimizer_state_dict(self.model, self.optimizer)}
            dcp.load(state, checkpoint_id=str(shards))
            set_optimizer_state_dict(self.model, self.optimizer, state["optim"])
        else:
            if not (self.resume_path / "optimizer.pt").exists() and (self.resume_path / "optimizer").is_dir():
                raise HybridError(
                    f"{self.resume_path}: its optimizer state is sharded (written by "
                    f"train.strategy=fsdp); resume it with train.strategy=fsdp"
                )
            self.optimizer.load_state_dict(ckpt_io.load_state_file(self.resume_path / "optimizer.pt"))
        self.scheduler.load_state_dict(ckpt_io.load_state_file(self.resume_path / "scheduler.pt"))

    def _setup_data(self) -> None:
        consumed = self.state.step * self.cfg.train.gradient_accumulation_steps
        stream = self.source.train_batches(self.plan, self.tokenizer, self.ctx.rank, self.ctx.world)
        self.micro_batches = itertools.islice(stream, consumed, None)

    def _trim_metrics(self) -> None:
        """A resumed run rewrites the steps after its checkpoint: drop them from metrics.jsonl first."""
        path = self.output_dir / "metrics.jsonl"
        step = self.state.step
        if path.exists():
            records = [r for _, r in iter_jsonl(path)]
            if any(r.get("step", 0) > step for r in records):
                atomic_write_jsonl(path, [r for r in records if r.get("step", 0) <= step])
        if step == 0 and self.resume_path is None:
            path.unlink(missing_ok=True)

    # -- the loop --------------------------------------------------------------------------------------------------
    def _autocast(self):
        return torch.autocast(device_type=self.ctx.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def train(self) -> dict[str, Any]:
        tcfg, ctx = self.cfg.train, self.ctx
        self.model.train()
        step = first_step = self.state.step
        t_start = time.time()
        seconds_before = self.state.train_seconds  # a resumed run adds to its earlier time
        budget_s = tcfg.max_minutes * 60 if tcfg.max_minutes else None
        window_tokens, window_t = 0, time.time()
        data_wait_s = 0.0  # time this rank waited for its next batches (the stream not keeping up)
        last_metrics: dict[str, Any] = {}
        truncated = dict(self.state.truncated)
        if self.is_main and step:
            say(f"resuming from {self.resume_path} at step {step}")
        try:
            while step < tcfg.max_iters:
                torch.manual_seed(tcfg.seed * 7919 + step * 131 + ctx.rank)  # dropout: a function of the step
                t_wait = time.time()
                batches = list(itertools.islice(self.micro_batches, tcfg.gradient_accumulation_steps))
                data_wait_s += time.time() - t_wait
                stepped = self._step(batches)
                if stepped is None:
                    if self.is_main:
                        say(f"the data stream ended at step {step} (before train.max_iters={tcfg.max_iters})")
                    break
                loss_sum, info = stepped
                elapsed = time.time() - t_start
                # the step's second collective: the loss, and what the log line shows (maxima over the ranks)
                cuda_mb = torch.cuda.max_memory_allocated(ctx.device) / 2**20 if ctx.device.type == "cuda" else 0.0
                ranks = ctx.gather(
                    [loss_sum, float(budget_s is not None and elapsed >= budget_s), peak_rss_mb(), cuda_mb, data_wait_s]
                )
                loss = sum(r[0] for r in ranks) / max(1.0, info["output_tokens"])
                out_of_time = any(r[1] > 0 for r in ranks)
                rss_mb, cuda_mb, wait_s = (max(r[i] for r in ranks) for i in (2, 3, 4))
                if not math.isfinite(loss):  # diverged: stop before anything of it is saved (or becomes `best`)
                    raise HybridError(
                        f"step {step + 1}: the training loss is {loss} — training diverged; lower "
                        f"train.learning_rate (now {tcfg.learning_rate:g}) or check the data; the "
                        f"checkpoints written before stay as they were"
                    )
                step += 1
                self.state.step = step
                self.state.tokens_seen += info["tokens"]
                for k, v in info["truncated"].items():
                    truncated[k] = truncated.get(k, 0) + v
                self.state.truncated = truncated
                window_tokens += info["tokens"]
                self.state.train_seconds = seconds_before + (time.time() - t_start)
                if step == first_step + 1:
                    self.state.first_step_s = time.time() - (self.spec.t0 or t_start)
                if step % tcfg.log_every == 0 or step == tcfg.max_iters or step == first_step + 1:
                    now = time.time()
                    tok_s = window_tokens / max(1e-9, now - window_t)
                    window_tokens, window_t = 0, now
                    eta = (tcfg.max_iters - step) * elapsed / max(1, step - first_step)
                    if budget_s is not None:
                        eta = min(eta, budget_s - elapsed)
                    self.tracker.log(
                        {
                            "step": step,
                            "loss": loss,
                            "lr": info["lr"],
                            "grad_norm": info["grad_norm"],
                            "tokens_per_s": tok_s,
                            "tokens": info["tokens"],
                            "padded_tokens": info["padded"],
                            "output_tokens": info["output_tokens"],
                            "elapsed_s": elapsed,
                            "data_wait_s": wait_s,
                            "peak_rss_mb": rss_mb,
                            "peak_cuda_mb": cuda_mb,
                            "first_step_s": self.state.first_step_s,
                            **truncated,
                        }
                    )
                    if self.is_main:
                        say(
                            f"step {step:>5}/{tcfg.max_iters} | loss {loss:.4f} | lr {info['lr']:.2e} | "
                            f"{tok_s:,.0f} tok/s | ETA {_fmt_eta(eta)}"
                        )
                if step % tcfg.eval_every == 0 or step == tcfg.max_iters or out_of_time:
                    last_metrics = self._evaluate_and_save(step, loss, info["lr"])
                if out_of_time:
                    if self.is_main:
                        say(f"time budget of {tcfg.max_minutes} min reached at step {step}")
                    break
            if step > first_step and (not last_metrics or last_metrics.get("step") != step):
                last_metrics = self._evaluate_and_save(step, loss, info["lr"])  # the stream ended between checkpoints
        finally:
            self.tracker.close()
        return last_metrics

    def _needs_common_length(self) -> bool:
        """FSDP gathers each block's weights at every call, so all ranks must make the same calls: a model with memory
        runs one call per segment, so every rank pads each micro-batch to the longest of them over the ranks."""
        return self.strategy == "fsdp" and self.ctx.distributed and self.cfg.model.has_memory

    def _pad_length(self, longest: int) -> int:
        """How long a validation batch is padded (`_needs_common_length`): one collective, per batch."""
        if self._needs_common_length():
            return int(self.ctx.max([float(longest)])[0])
        return longest

    def _step(self, micro_batches: list[list[dict[str, Any]]]) -> tuple[float, dict[str, Any]] | None:
        """One optimizer step over this rank's micro-batches: (this rank's summed loss, what to log), or None when
        some rank's stream has run out (all ranks stop together)."""
        tcfg, ctx = self.cfg.train, self.ctx
        n = tcfg.gradient_accumulation_steps
        full = len(micro_batches) == n
        tensors = [
            collate([(r["ids"], r["prompt_len"]) for r in rows], self.tokenizer.pad_id) for rows in micro_batches
        ]
        trunc = [0] * len(TRUNCATED)
        for rows in micro_batches:
            for r in rows:
                trunc[r["trunc"]] += 1
        lengths = [float(ids.shape[1]) for ids, _, _ in tensors] + [0.0] * (n - len(tensors))
        sizes = [float(ids.shape[0]) for ids, _, _ in tensors] + [0.0] * (n - len(tensors))
        local = [
            float(not full),
            sum(count_scored(lab) for _, lab, _ in tensors),
            sum(int(m.sum()) for _, _, m in tensors),
        ]
        # the step's first collective: every rank's counts, sizes and lengths (summed or maxed below, on each rank)
        ranks = ctx.gather(local + trunc + sizes + lengths)
        if any(r[0] > 0 for r in ranks):
            return None
        total = [sum(col) for col in zip(*ranks)]
        global_out, global_all, trunc = total[1], total[2], total[3 : 3 + len(TRUNCATED)]
        k = 3 + len(TRUNCATED)
        if self._needs_common_length():
            common = [max(r[k + n + j] for r in ranks) for j in range(n)]
            global_padded = sum(r[k + j] * common[j] for r in ranks for j in range(n))
            tensors = [
                collate([(r["ids"], r["prompt_len"]) for r in rows], self.tokenizer.pad_id, int(common[j]))
                for j, rows in enumerate(micro_batches)
            ]
        else:
            global_padded = sum(r[k + j] * r[k + n + j] for r in ranks for j in range(n))
        tensors = [tuple(t.to(ctx.device) for t in batch) for batch in tensors]
        scale = distributed.loss_scale(self.strategy, ctx, global_out)
        loss_sum = 0.0
        for a, (ids, labels, mask) in enumerate(tensors):
            with distributed.no_sync(self.model, self.strategy, sync=a == len(tensors) - 1):
                with self._autocast():
                    out = self.model(ids, labels=labels, attention_mask=mask)
                (out.loss_sum * scale).backward()
            loss_sum += float(out.loss_sum.detach())
        if self.strategy == "allreduce":
            distributed.sum_gradients(self.params, ctx)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, tcfg.grad_clip if tcfg.grad_clip > 0 else float("inf"))
        if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP
            grad_norm = grad_norm.full_tensor()
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        truncated = {name: int(n) for name, n in zip(TRUNCATED, trunc) if name}
        return loss_sum, {
            "lr": lr,
            "grad_norm": float(grad_norm),
            "tokens": int(global_all),
            "padded": int(global_padded),
            "output_tokens": int(global_out),
            "truncated": truncated,
        }

    # -- validation ------------------------------------------------------------------------------------------------
    def validate(self) -> dict[str, float | None]:
        """Validation loss and teacher-forced exact match (the share of examples whose every output token is the
        argmax) over every validation example, or the first `train.eval_batches` global batches: global batch j is
        rows jG…jG+G-1 of the validation set in file order, and rank r scores its B of them."""
        if not self.spec.val_files:
            return {"val_loss": None, "val_exact_match": None}
        ctx, B = self.ctx, self.cfg.train.batch_size
        G = B * ctx.world
        n_batches = -(-int(self.spec.val_rows) // G)
        if self.cfg.train.eval_batches:
            n_batches = min(n_batches, self.cfg.train.eval_batches)
        rows = self.source.eval_rows(self.spec, self.tokenizer)

        real = [0]  # rows of this rank's share that are examples (not the stand-in below)

        def mine() -> Iterator[list[tuple[list[int], int]]]:
            for _ in range(n_batches):
                chunk = list(itertools.islice(rows, G))
                part = [(r["ids"], r["prompt_len"]) for r in chunk[ctx.rank * B : (ctx.rank + 1) * B]]
                real[0] += len(part)
                # every rank runs the same number of forward passes (FSDP's collectives need it): an empty share is a
                # one-token row without labels (it never matches: it has no output)
                yield part or [([self.tokenizer.pad_id], 1)]

        self.model.eval()
        loss_sum, n_tokens, matches = score_batches(
            self.model,
            mine(),
            self.tokenizer.pad_id,
            ctx.device,
            self._autocast,
            matches=True,
            pad_length=self._pad_length,
        )
        self.model.train()
        loss_sum, n_tokens, matched, examples = ctx.sum([loss_sum, n_tokens, sum(matches), real[0]])
        return {"val_loss": loss_sum / max(1.0, n_tokens), "val_exact_match": matched / max(1.0, examples)}

    # -- checkpoints -----------------------------------------------------------------------------------------------
    def _evaluate_and_save(self, step: int, loss: float, lr: float) -> dict[str, Any]:
        val = self.validate()
        if val["val_loss"] is not None and not math.isfinite(val["val_loss"]):
            raise HybridError(
                f"step {step}: the validation loss is {val['val_loss']} — training diverged; lower "
                f"train.learning_rate (now {self.cfg.train.learning_rate:g}); nothing saved for this step"
            )
        metrics = {"step": step, "train_loss": loss, **val, "lr": lr, "tokens_seen": self.state.tokens_seen}
        self.tracker.log({"step": step, **val})
        if self.is_main and val["val_loss"] is not None:
            say(
                f"step {step:>5} | validation loss {val['val_loss']:.4f} "
                f"(ppl {math.exp(min(val['val_loss'], 50)):.2f}) "
                f"| exact match {val['val_exact_match']:.1%}"
            )
        self.save_checkpoint(step, metrics)
        return metrics

    def _improves(self, metrics: dict[str, Any]) -> bool:
        """Whether this evaluation beats the best so far by `train.best_by` (lower loss, higher exact match)."""
        key = self.cfg.train.best_by
        value, best = metrics.get(key), self.state.best
        if value is None or not math.isfinite(value):
            return False
        return best is None or (value < best if key == "val_loss" else value > best)

    def save_checkpoint(self, step: int, metrics: dict[str, Any]) -> None:
        """Rank 0 writes the checkpoint into a temp folder of the work folder (every rank its optimizer shard under
        FSDP), renames it into place and publishes it to the output; `best` follows `train.best_by`; every rank
        reports to the launcher, then the last few and the best are kept."""
        ctx, fsdp = self.ctx, self.strategy == "fsdp" and self.ctx.distributed
        improved = self._improves(metrics)
        if improved:
            self.state.best = metrics[self.cfg.train.best_by]
        if metrics.get("val_loss") is not None and (
            self.state.best_val_loss is None or metrics["val_loss"] < self.state.best_val_loss
        ):
            self.state.best_val_loss = metrics["val_loss"]
        self.state.metrics = metrics
        # the whole model's weights: a collective under FSDP (rank 0 gets them), a copy of the replica otherwise
        model_state = distributed.full_state_dict(self.model, self.strategy) if fsdp or self.is_main else None
        tmp = ckpt_io.temp_checkpoint_dir(self.output_dir, step, self.spec.run_id)
        path = None
        if self.is_main:
            if tmp.exists():
                shutil.rmtree(tmp)
            try:
                ckpt_io.write_checkpoint(
                    tmp,
                    model_state,
                    self.model_config,
                    self.model_class,
                    None if fsdp else self.optimizer.state_dict(),
                    self.scheduler.state_dict(),
                    self.state,
                    self.spec.config_yaml,
                    self.spec.tokenizer_json,
                )
            except (OSError, RuntimeError, SafetensorError) as e:  # how torch and safetensors report a failed write
                shutil.rmtree(tmp, ignore_errors=True)
                why = (
                    describe_os_error(e)
                    if isinstance(e, OSError)
                    else f"{str(e).splitlines()[0][:160]}: the disk is full or the folder is not writable"
                )
                raise HybridError(
                    f"{self.output_dir}: cannot write the checkpoint of step {step} ({why}); the earlier "
                    f"checkpoints are intact — free space and rerun to resume"
                ) from None
        if fsdp:
            self._save_optimizer_shards(tmp, step)
        if self.is_main:
            path = ckpt_io.commit_checkpoint(tmp, step)
            # the checkpoint (trainer_state.json last), the run's files, then `best` (each nothing to do locally)
            ckpt_io.publish_checkpoint(path, self.output)
            ckpt_io.publish_files(self.output_dir, self.output)
            if improved or metrics.get(self.cfg.train.best_by) is None:  # without validation: the latest
                ckpt_io.set_best(self.output, path.name)
        self.reporter.report({**metrics, "best_val_loss": self.state.best_val_loss}, path, step)
        ctx.barrier()
        if self.is_main:
            ckpt_io.prune(self.output, self.cfg.train.keep_last, work_dir=self.output_dir)
        for callback in self.after_checkpoint:
            callback(step, path)

    def _save_optimizer_shards(self, tmp: Path, step: int) -> None:
        """FSDP: every rank writes its optimizer shard (DCP) into the checkpoint's optimizer/ folder. When the output
        is written through a staging folder (a URI: no folder every node sees), a rank other than 0 writes its
        shard into a folder of its own and uploads it into the output's checkpoint before rank 0 publishes the rest
        (trainer_state.json last, so the checkpoint is whole when it counts)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        ctx, where = self.ctx, storage.at(self.output)
        own = where.stages and not self.is_main
        folder = self.output_dir / f".shards-{self.spec.run_id}-rank{ctx.rank}" if own else tmp / "optimizer"
        ctx.barrier()  # the checkpoint folder exists
        dcp.save({"optim": get_optimizer_state_dict(self.model, self.optimizer)}, checkpoint_id=str(folder))
        if own:
            dest = where.join(self.output, ckpt_io.checkpoint_name(step), "optimizer")
            for shard in sorted(folder.glob("*.distcp")):
                where.put_file(shard, where.join(dest, shard.name))
            shutil.rmtree(folder, ignore_errors=True)
        ctx.barrier()


def run(
    spec: TrainingSpec, source: DataSource, reporter: Reporter, after_checkpoint: tuple[AfterCheckpoint, ...] = ()
) -> dict[str, Any]:
    """Set up and train: what every process of a run calls, with its launcher's data source and reporter."""
    recipe = TrainingRecipe(spec, source, reporter, after_checkpoint)
    recipe.setup()
    return recipe.train()
