"""The training loop, as Ray Train's `train_loop_per_worker`: setup → train → evaluate → save, in one place.

Data parallelism. Every worker holds the whole (tokenized) training set and takes its own slice of each global
micro-batch from one seeded order of examples, so the examples of optimizer step `s` are a function of `s` alone:
a resumed run sees exactly what an uninterrupted one would, and N workers × batch b see the same examples as one
worker × batch N·b. The loss of a step is the sum of cross-entropies over the output tokens of the whole global
batch divided by their global count (computed with one all-reduce before the backward pass); gradients are then
summed across workers with all-reduce — what DDP does, but exact for any split of tokens between workers, which a
mean of per-worker means is not. Weights start equal on every worker (same seed, then a broadcast from rank 0).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from hybrid.config.recipe import RecipeConfig
from hybrid.core.errors import HybridError
from hybrid.data.encode import IGNORE_INDEX, collate
from hybrid.models import build_model
from hybrid.training import checkpoints as ckpt_io

CRASH_ENV = "HYBRID_TRAIN_CRASH_AT_STEP"  # tests: SIGKILL this process after that optimizer step's checkpoint


# -- pieces ------------------------------------------------------------------------------------------------------
def lr_lambda(warmup: int, max_iters: int, min_ratio: float):
    """Linear warmup to the peak over `warmup` steps, then cosine down to `min_ratio` × peak at `max_iters`."""

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        span = max(1, max_iters - warmup)
        progress = min(1.0, (step - warmup) / span)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def build_optimizer(model, tcfg):
    import torch

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)  # norms, biases, gates: no weight decay
    groups = [{"params": decay, "weight_decay": tcfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=tcfg.learning_rate, betas=(tcfg.beta1, tcfg.beta2))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(tcfg.warmup_iters, tcfg.max_iters, tcfg.min_lr_ratio))
    return optimizer, scheduler


def stream_indices(n_examples: int, seed: int, start: int, count: int) -> list[int]:
    """Positions [start, start+count) of the endless stream of seeded per-epoch permutations of the examples."""
    import torch

    out, pos, cache = [], start, {}
    while len(out) < count:
        epoch, offset = divmod(pos, n_examples)
        if epoch not in cache:
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            cache[epoch] = torch.randperm(n_examples, generator=g).tolist()
        take = min(count - len(out), n_examples - offset)
        out.extend(cache[epoch][offset:offset + take])
        pos += take
    return out


class LengthBuckets:
    """Global micro-batches drawn from one length bucket each (data.bucket_by_length): a mix of short and long
    examples is not padded to the longest in every batch.

    Bucket = ceil(token length / width) (width = the model's segment length: a bucket's examples run the same
    number of segments). Epoch e (seeded by seed and e alone): each bucket's examples in a seeded permutation,
    cut into batches of `size` (the last one filled up from the start of the same permutation, so every batch is
    full and single-bucket), then all batches in a seeded order. Every epoch has the same number of batches, so
    global micro-batch g is a pure function of (seed, g) — what resume and the N-workers = 1-worker equality
    rest on, as for the unbucketed stream: each worker takes its slice of the same global batch."""

    def __init__(self, lengths: list[int], width: int, size: int, seed: int):
        groups: dict[int, list[int]] = {}
        for i, n in enumerate(lengths):
            groups.setdefault(-(-n // width), []).append(i)
        self.buckets = [groups[k] for k in sorted(groups)]
        self.size, self.seed = size, seed
        self.per_bucket = [-(-len(b) // size) for b in self.buckets]
        self.per_epoch = sum(self.per_bucket)
        self._epoch: tuple[int, list[list[int]]] | None = None

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        import torch

        if self._epoch is not None and self._epoch[0] == epoch:
            return self._epoch[1]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        batches = []
        for bucket, n_batches in zip(self.buckets, self.per_bucket):
            perm = [bucket[j] for j in torch.randperm(len(bucket), generator=g).tolist()]
            filled = (perm * (-(-n_batches * self.size // len(perm))))[:n_batches * self.size]
            batches += [filled[k * self.size:(k + 1) * self.size] for k in range(n_batches)]
        order = torch.randperm(len(batches), generator=g).tolist()
        self._epoch = (epoch, [batches[j] for j in order])
        return self._epoch[1]

    def batch(self, g: int) -> list[int]:
        """The example indices of global micro-batch `g` (0, 1, …)."""
        epoch, offset = divmod(g, self.per_epoch)
        return self.epoch_batches(epoch)[offset]


def output_token_loss_sum(logits, labels):
    """Sum of cross-entropies over positions whose (shifted) label is not -100, in float32, and their count."""
    import torch.nn.functional as F

    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    shift_labels = labels[:, 1:].reshape(-1)
    loss = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, int((shift_labels != IGNORE_INDEX).sum())


def output_argmax_matches(logits, labels):
    """(B,) bool: the argmax at every output position (shifted label not -100) equals the label — teacher-forced
    exact match. With the reference as prefix at each step this is exactly greedy decoding reproducing the
    reference tokens (a first wrong argmax is where greedy would leave the reference). Rows without labels: False."""
    shift_labels = labels[:, 1:]  # (B, T-1)
    valid = shift_labels != IGNORE_INDEX
    pred = logits[:, :-1].argmax(-1)  # (B, T-1)
    return ((pred == shift_labels) | ~valid).all(1) & valid.any(1)


class Dist:
    """The few collectives the loop needs; no-ops when there is a single process."""

    def __init__(self):
        import torch.distributed as dist

        self.dist = dist
        self.on = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.on else 0
        self.world = dist.get_world_size() if self.on else 1

    def sum(self, values: list[float], device) -> list[float]:
        if not self.on or self.world == 1:
            return values
        import torch

        t = torch.tensor(values, dtype=torch.float64, device=device)
        self.dist.all_reduce(t)
        return t.tolist()

    def max(self, values: list[float], device) -> list[float]:
        if not self.on or self.world == 1:
            return values
        import torch

        t = torch.tensor(values, dtype=torch.float64, device=device)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return t.tolist()

    def sum_grads(self, params) -> None:
        if not self.on or self.world == 1:
            return
        import torch
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        grads = []
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        flat = _flatten_dense_tensors(grads)
        self.dist.all_reduce(flat)
        for g, reduced in zip(grads, _unflatten_dense_tensors(flat, grads)):
            g.copy_(reduced)

    def broadcast_params(self, model) -> None:
        if not self.on or self.world == 1:
            return
        for t in model.state_dict().values():
            self.dist.broadcast(t, 0)


def _rows(name: str, config: dict[str, Any]) -> list[tuple[list[int], int]]:
    """This worker's copy of a tokenized dataset: from Ray Data (workers) or the config (in-process)."""
    if config.get("examples") is not None:
        return [tuple(e) for e in config["examples"].get(name) or []]
    import ray.data
    import ray.train

    # the shard is read once, whole: its progress bar would only garble the step lines that follow
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        shard = ray.train.get_dataset_shard(name)
    except (KeyError, ValueError):
        return []
    if shard is None:
        return []
    rows = sorted(shard.iter_rows(), key=lambda r: int(r["idx"]))
    return [([int(t) for t in r["input_ids"]], int(r["prompt_length"])) for r in rows]


def say(line: str) -> None:
    """A progress line on stdout. Not `print`: Ray Train patches print in workers to both print and log,
    which shows every line twice on the driver."""
    import sys

    sys.stdout.write(line + "\n")
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


# -- the loop ----------------------------------------------------------------------------------------------------
def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    import ray.train
    import torch
    from ray.train import Checkpoint

    # --- setup
    cfg = RecipeConfig.model_validate(config["cfg"])
    tcfg = cfg.train
    dist = Dist()
    output_dir = Path(config["output_dir"])
    use_gpu = bool(config["use_gpu"]) and torch.cuda.is_available()
    if use_gpu:
        local_rank = ray.train.get_context().get_local_rank() if dist.on else 0
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    bf16 = tcfg.precision == "bf16" or (tcfg.precision == "auto" and use_gpu)
    pad_id = int(config["pad_id"])

    train_rows = _rows("train", config)
    val_rows = _rows("validation", config)

    torch.manual_seed(tcfg.seed)
    model = build_model(cfg.model, vocab_size=int(config["vocab_size"]), memory_cfg=cfg.memory)
    state: dict[str, Any] = {"step": 0, "best_val_loss": None, "tokens_seen": 0, "train_seconds": 0.0}
    resume = ray.train.get_checkpoint()
    resume_path = Path(resume.path) if resume is not None else (Path(config["resume_from"]) if config.get("resume_from") else None)
    if resume_path is not None:
        loaded = ckpt_io.load_model(resume_path)
        try:
            model.load_state_dict(loaded.state_dict())
        except RuntimeError as e:

            raise HybridError(f"{resume_path}: does not fit this run's model "
                              f"({str(e).splitlines()[-1].strip()[:200]})") from None
        del loaded
        state.update(ckpt_io.read_trainer_state(resume_path))
    elif config.get("init_from"):  # weights only: optimizer, scheduler and step start fresh
        ckpt_io.init_weights_from(model, config["init_from"])
    model.to(device)
    dist.broadcast_params(model)
    optimizer, scheduler = build_optimizer(model, tcfg)
    if resume_path is not None:
        optimizer.load_state_dict(ckpt_io.load_state_file(resume_path / "optimizer.pt"))
        scheduler.load_state_dict(ckpt_io.load_state_file(resume_path / "scheduler.pt"))
    params = [p for p in model.parameters() if p.requires_grad]

    B, accum = tcfg.batch_size, tcfg.gradient_accumulation_steps
    global_micro = B * dist.world
    log_path = output_dir / "metrics.jsonl"
    crash_at = int(os.environ.get(CRASH_ENV, "-1"))

    def autocast():
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)

    buckets = (LengthBuckets([len(ids) for ids, _ in train_rows], cfg.model.segment_length, global_micro, tcfg.seed)
               if cfg.data.bucket_by_length else None)

    def micro_batch(step: int, a: int):
        if buckets is not None:
            idx = buckets.batch(step * accum + a)[dist.rank * B:(dist.rank + 1) * B]
        else:
            start = (step * accum + a) * global_micro + dist.rank * B
            idx = stream_indices(len(train_rows), tcfg.seed, start, B)
        ids, labels, mask = collate([train_rows[i] for i in idx], pad_id)
        return ids.to(device), labels.to(device), mask.to(device)

    @torch.no_grad()
    def evaluate() -> float | None:
        if not val_rows:
            return None
        model.eval()
        rows_in_order = val_rows
        if cfg.data.bucket_by_length and not tcfg.eval_batches:  # all rows either way: batch similar lengths
            rows_in_order = sorted(val_rows, key=lambda r: len(r[0]))
        mine = rows_in_order[dist.rank::dist.world]
        loss_sum, n_tokens = 0.0, 0
        n_batches = math.ceil(len(val_rows) / global_micro)
        if tcfg.eval_batches:
            n_batches = min(n_batches, tcfg.eval_batches)
        for b in range(n_batches):
            rows = mine[b * B:(b + 1) * B]
            if not rows:
                continue
            ids, labels, mask = (t.to(device) for t in collate(rows, pad_id))
            with autocast():
                logits = model(ids, attention_mask=mask).logits
            s, n = output_token_loss_sum(logits, labels)
            loss_sum += float(s)
            n_tokens += n
        model.train()
        loss_sum, n_tokens = dist.sum([loss_sum, n_tokens], device)
        return loss_sum / max(1.0, n_tokens)

    def log(record: dict[str, Any]) -> None:
        if dist.rank == 0:
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def save_and_report(step: int, metrics: dict[str, Any]) -> None:
        """Rank 0 writes the checkpoint atomically inside the run folder; every rank reports (Ray syncs)."""
        path = None
        if dist.rank == 0:
            val = metrics.get("val_loss")
            improved = val is not None and (state["best_val_loss"] is None or val < state["best_val_loss"])
            if improved:
                state["best_val_loss"] = val
            path = ckpt_io.save_checkpoint(output_dir, step, model, optimizer, scheduler,
                                           {**state, "step": step, "metrics": metrics},
                                           config["config_yaml"], config["tokenizer_json"])
            if improved or val is None:  # without validation data `best` follows the latest
                ckpt_io.set_best(output_dir, path)
        elif metrics.get("val_loss") is not None and (
                state["best_val_loss"] is None or metrics["val_loss"] < state["best_val_loss"]):
            state["best_val_loss"] = metrics["val_loss"]
        from ray.train import CheckpointUploadMode

        ray.train.report({**metrics, "best_val_loss": state["best_val_loss"]},
                         checkpoint=Checkpoint.from_directory(str(path)) if path else None,
                         checkpoint_dir_name=ckpt_io.checkpoint_name(step),
                         checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD)
        if dist.rank == 0:
            ckpt_io.prune(output_dir, tcfg.keep_last)

    # --- train
    model.train()
    step = first_step = int(state["step"])
    t_start = time.time()
    budget_s = tcfg.max_minutes * 60 if tcfg.max_minutes else None
    window_tokens, window_t = 0, time.time()
    last_metrics: dict[str, Any] = {}
    if dist.rank == 0 and step:
        say(f"resuming from {resume_path} at step {step}")
    while step < tcfg.max_iters:
        torch.manual_seed(tcfg.seed * 7919 + step * 131 + dist.rank)  # dropout: a function of the step alone
        batches = [micro_batch(step, a) for a in range(accum)]
        local_out = sum(int((lab[:, 1:] != IGNORE_INDEX).sum()) for _, lab, _ in batches)
        local_all = sum(int(m.sum()) for _, _, m in batches)
        local_padded = sum(int(m.numel()) for _, _, m in batches)  # tokens computed, padding included
        global_out, global_all, global_padded = dist.sum([local_out, local_all, local_padded], device)
        loss_sum = 0.0
        for ids, labels, mask in batches:
            with autocast():
                logits = model(ids, attention_mask=mask).logits
            s, _ = output_token_loss_sum(logits, labels)
            (s / max(1.0, global_out)).backward()
            loss_sum += float(s.detach())
        dist.sum_grads(params)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip if tcfg.grad_clip > 0 else float("inf"))
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        (loss_global,) = dist.sum([loss_sum], device)
        loss = loss_global / max(1.0, global_out)
        state["step"] = step
        state["tokens_seen"] += int(global_all)
        window_tokens += int(global_all)

        elapsed = time.time() - t_start
        out_of_time = budget_s is not None and dist.sum([float(elapsed >= budget_s)], device)[0] > 0
        if step % tcfg.log_every == 0 or step == tcfg.max_iters or step == 1:
            now = time.time()
            tok_s = window_tokens / max(1e-9, now - window_t)
            window_tokens, window_t = 0, now
            per_step = elapsed / max(1, step - first_step)
            eta = (tcfg.max_iters - step) * per_step
            if budget_s is not None:
                eta = min(eta, budget_s - elapsed)
            rss_mb, cuda_mb = dist.max([peak_rss_mb(), torch.cuda.max_memory_allocated(device) / 2**20
                                        if use_gpu else 0.0], device)
            record = {"step": step, "loss": loss, "lr": lr, "grad_norm": float(grad_norm), "tokens_per_s": tok_s,
                      "tokens": int(global_all), "padded_tokens": int(global_padded),
                      "output_tokens": int(global_out), "elapsed_s": elapsed,
                      "peak_rss_mb": rss_mb, "peak_cuda_mb": cuda_mb}
            log(record)
            if dist.rank == 0:
                say(f"step {step:>5}/{tcfg.max_iters} | loss {loss:.4f} | lr {lr:.2e} | "
                    f"{tok_s:,.0f} tok/s | ETA {_fmt_eta(eta)}")
        if step % tcfg.eval_every == 0 or step == tcfg.max_iters or out_of_time:
            val = evaluate()
            last_metrics = {"step": step, "train_loss": loss, "val_loss": val, "lr": lr,
                            "tokens_seen": state["tokens_seen"]}
            log({"step": step, "val_loss": val})
            if dist.rank == 0 and val is not None:
                say(f"step {step:>5} | validation loss {val:.4f} (ppl {math.exp(min(val, 50)):.2f})")
            save_and_report(step, last_metrics)
            if crash_at == step:
                import signal

                os.kill(os.getpid(), signal.SIGKILL)
        if out_of_time:
            if dist.rank == 0:
                say(f"time budget of {tcfg.max_minutes} min reached at step {step}")
            break
    return last_metrics
