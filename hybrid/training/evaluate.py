"""Evaluate a checkpoint on IO pairs: loss and perplexity on output tokens (teacher forcing), exact match of greedy
generations, a few examples; and plain generation from inputs. `score_batches` is the one evaluation loop: training's
validation runs it too."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybrid.core.errors import HybridError
from hybrid.data.encode import collate, encode_pairs, encode_prompt
from hybrid.data.io_pairs import read_io_pairs
from hybrid.data.tokenizer import TextTokenizer
from hybrid.models.modeling import argmax_matches
from hybrid.training import checkpoints as ckpt_io


@dataclass
class LoadedCheckpoint:
    path: Path
    model: Any
    tokenizer: Any
    max_length: int


def load(checkpoint: str | Path, device: str | None = None) -> LoadedCheckpoint:
    import torch
    import yaml

    path = ckpt_io.resolve_checkpoint(checkpoint)
    tokenizer = TextTokenizer.load(path)
    model = ckpt_io.load_model(path)
    if model.config.vocab_size < tokenizer.vocab_size:
        raise HybridError(f"{path}: tokenizer has {tokenizer.vocab_size} tokens, model only {model.config.vocab_size}")
    try:
        max_length = int(yaml.safe_load((path / "config.yaml").read_text())["data"]["max_length"])
    except Exception:
        max_length = 512
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(dev).eval()
    return LoadedCheckpoint(path=path, model=model, tokenizer=tokenizer, max_length=max_length)


def generate_texts(ck: LoadedCheckpoint, inputs: Sequence[str], max_new_tokens: int = 64) -> list[str]:
    """Greedy continuation of each input (one at a time: prompts differ in length), decoded to text."""
    import torch

    if max_new_tokens < 1 or max_new_tokens > ck.max_length - 2:
        raise HybridError(
            f"max_new_tokens={max_new_tokens}: must be 1..{ck.max_length - 2} — the model reads at "
            f"most {ck.max_length} tokens (its data.max_length), and the prompt needs at least one "
            f"token and the separator"
        )
    device = next(ck.model.parameters()).device
    outs = []
    for text in inputs:
        prompt = encode_prompt(ck.tokenizer, text, ck.max_length, max_new_tokens)
        ids = torch.tensor([prompt], dtype=torch.long, device=device)
        seq = ck.model.generate(ids, max_new_tokens=max_new_tokens, eos_token_id=ck.tokenizer.eos_id)[0].tolist()
        new = seq[len(prompt) :]
        if ck.tokenizer.eos_id in new:
            new = new[: new.index(ck.tokenizer.eos_id)]
        outs.append(ck.tokenizer.decode(new))
    return outs


def score_batches(
    model,
    batches: Iterable[Sequence[tuple[Sequence[int], int]]],
    pad_id: int,
    device,
    autocast=contextlib.nullcontext,
    matches: bool = False,
    pad_length=lambda longest: longest,
) -> tuple[float, int, list[bool]]:
    """The evaluation loop — training's validation and `hybrid eval` both run it. For batches of rows (ids, prompt
    length): (sum of the model's loss over the output tokens, their count, per row whether every output token is the
    argmax — only when `matches`). Right padding never changes a real token's logits; `pad_length(longest)` says how
    long a batch is padded (FSDP: as long as every rank's, so all run the same segments)."""
    import torch

    loss_sum, n_tokens, found = 0.0, 0, []
    with torch.no_grad():
        for rows in batches:
            longest = pad_length(max(len(ids) for ids, _ in rows))
            ids, labels, mask = (t.to(device) for t in collate(list(rows), pad_id, longest))
            with autocast():
                out = model(ids, labels=labels, attention_mask=mask)
            loss_sum += float(out.loss_sum)
            n_tokens += out.num_tokens
            if matches:
                found += [bool(m) for m in argmax_matches(out.logits, labels)]
    return loss_sum, n_tokens, found


def teacher_forced(
    model, rows: Sequence[tuple[Sequence[int], int]], pad_id: int, batch_size: int = 8
) -> tuple[float, int, list[bool]]:
    """(loss sum, output-token count, per-row exact match) of `rows` = (ids, prompt length), in batches.

    A row matches when the argmax at every output position equals the reference token. Given the same prompt
    ids this is greedy exact match at the token level: greedy decoding feeds back its own argmax, which equals
    the reference as long as every earlier argmax did, so it reproduces the reference (and its end-of-text) iff
    every teacher-forced argmax is right. Rows are batched by length (shortest first); the matches come back in the
    order of `rows`."""
    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))  # batch similar lengths: little padding
    batches = ([rows[i] for i in order[b : b + batch_size]] for b in range(0, len(rows), batch_size))
    loss_sum, n_tokens, found = score_batches(model, batches, pad_id, device, matches=True)
    matched = [False] * len(rows)
    for i, m in zip(order, found):
        matched[i] = m
    return loss_sum, n_tokens, matched


def evaluate(
    checkpoint: str | Path,
    data: str | Path,
    batch_size: int = 8,
    max_generate: int | None = 64,
    max_new_tokens: int | None = None,
    num_examples: int = 3,
    device: str | None = None,
    on_bad_record: str = "error",
) -> dict[str, Any]:
    """Metrics of `checkpoint` on the IO pairs at `data`.

    loss / perplexity: mean cross-entropy over output tokens (+ the closing end-of-text), all examples.
    teacher_forced_exact_match: the argmax at every output position (+ the closing end-of-text) equals the
    reference token, in the same batched forward as the loss, all examples — token for token what greedy decoding
    from the same prompt would reproduce (see `teacher_forced`).
    exact_match: greedy generation equals the output (after stripping surrounding whitespace), on the first
    `max_generate` examples (None = all); generation stops at end-of-text or at the reference length + 8 tokens."""

    t0 = time.time()
    if batch_size < 1:
        raise HybridError(f"batch_size={batch_size}: must be >= 1")
    pairs = read_io_pairs(data, on_bad_record)
    ck = load(checkpoint, device)
    enc = encode_pairs(ck.tokenizer, pairs.records, ck.max_length)
    loss_sum, n_tokens, tf_matches = teacher_forced(
        ck.model, list(zip(enc.input_ids, enc.prompt_lengths)), ck.tokenizer.pad_id, batch_size
    )
    if n_tokens == 0:  # a loss over nothing is not 0.0
        raise HybridError(f"{data}: no output tokens to score")
    loss = loss_sum / n_tokens
    n_gen = len(pairs) if max_generate is None else min(max_generate, len(pairs))
    matches, examples = 0, []
    for i in range(n_gen):
        rec = pairs.records[i]
        ref_len = len(enc.input_ids[i]) - enc.prompt_lengths[i]
        budget = max_new_tokens or min(ref_len + 8, ck.max_length - 2)
        (pred,) = generate_texts(ck, [rec["input"]], budget)
        ok = pred.strip() == rec["output"].strip()
        matches += ok
        if len(examples) < num_examples:
            examples.append({"input": rec["input"][-300:], "output": rec["output"], "generated": pred, "match": ok})
    return {
        "checkpoint": str(ck.path),
        "data": str(data),
        "examples": len(pairs),
        "output_tokens": n_tokens,
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "exact_match": matches / n_gen if n_gen else None,
        "exact_match_count": matches,
        "generated": n_gen,
        "teacher_forced_exact_match": sum(tf_matches) / len(tf_matches) if tf_matches else None,
        "teacher_forced_exact_match_count": sum(tf_matches),
        "input_truncated_left": enc.counts.get("input_truncated_left", 0),
        "skipped": dict(pairs.skipped),
        "samples": examples,
        "seconds": time.time() - t0,
    }
