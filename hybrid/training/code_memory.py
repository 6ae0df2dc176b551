"""Does the memory help on the code we mine? The library behind `hybrid bench code-memory` and the demo's last line
(docs/code-memory.md).

    variants     none / internal / external / both: the same model with each memory on or off, the attention window
                 = one segment; full: no memory, one segment as long as the whole example (the upper bound: what
                 attending to everything buys at this size and budget)
    scoring      one teacher-forced forward per batch: per example the output-token loss, greedy exact match (the
                 argmax at every output position, as `hybrid eval`'s teacher-forced exact match), and the loss on
                 its far tokens (`hybrid.data.code_tasks.far_tokens`)
    repository   the external memory filled from a whole repository (`write_corpus`, as `hybrid memory build` does
    memory       on the Ray service) and read through a `ReadOnlyStore`, so that scoring one example never changes what
                 the next one reads
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from hybrid.data.code_tasks import far_tokens
from hybrid.data.encode import collate, encode_pairs
from hybrid.data.io_pairs import read_io_pairs
from hybrid.data.tokenizer import TextTokenizer
from hybrid.memory.store import SearchResult, empty_result
from hybrid.models.controls import memory_gates_closed
from hybrid.training.evaluate import load

VARIANTS: dict[str, dict[str, bool]] = {
    "none": {"use_internal_memory": False, "use_external_memory": False},
    "internal": {"use_internal_memory": True, "use_external_memory": False},
    "external": {"use_internal_memory": False, "use_external_memory": True},
    "both": {"use_internal_memory": True, "use_external_memory": True},
    "full": {"use_internal_memory": False, "use_external_memory": False},  # segment_length = the whole example
}


@dataclass
class ExampleScore:
    loss: float  # summed over the output tokens (and the closing end-of-text)
    tokens: int
    far_loss: float  # summed over the far tokens
    far: int
    exact: bool
    beyond: bool


def model_values(model: dict[str, Any], variant: str, max_length: int) -> dict[str, Any]:
    """The `model.*` keys of one variant: `model` (the shared settings) with the variant's memories; `full` attends
    over the whole example in one segment."""
    values = {f"model.{k}": v for k, v in model.items()}
    values.update({f"model.{k}": v for k, v in VARIANTS[variant].items()})
    if variant == "full":
        values["model.segment_length"] = max_length
        values["model.max_position_embeddings"] = max(max_length, model.get("max_position_embeddings", 0))
    return values


def encode_examples(
    tokenizer: TextTokenizer, records: Sequence[dict[str, Any]], max_length: int, segment_length: int
) -> tuple[list[tuple[list[int], int]], list[list[int]]]:
    """(rows = (ids, prompt length), far token positions per row) for `records` at `max_length` tokens; far is judged
    against windows of `segment_length` tokens."""
    enc = encode_pairs(tokenizer, records, max_length)
    rows = list(zip(enc.input_ids, enc.prompt_lengths))
    return rows, [far_tokens(tokenizer, ids, p, segment_length).far for ids, p in rows]


def local_rows(
    rows: Sequence[tuple[list[int], int]], far: Sequence[list[int]], window: int
) -> tuple[list[tuple[list[int], int]], list[list[int]]]:
    """The rows cut to their last `window` prompt tokens (the output kept whole), far positions moved along: the
    repository-memory task, where the input is only the local context."""
    out_rows, out_far = [], []
    for (ids, p), f in zip(rows, far):
        cut = max(0, p - window)
        out_rows.append((ids[cut:], p - cut))
        out_far.append([i - cut for i in f])
    return out_rows, out_far


def score_rows(
    model,
    rows: Sequence[tuple[list[int], int]],
    far: Sequence[list[int]],
    pad_id: int,
    batch_size: int = 8,
    memory_store: Any = None,
    namespace: str | None = None,
) -> list[ExampleScore]:
    """Per row: loss, exact match and far-token loss from one teacher-forced forward (rows batched by length). With
    `memory_store` + `namespace`, every row reads that shared namespace (wrap it in `ReadOnlyStore`)."""
    import torch.nn.functional as F

    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    scores: list[ExampleScore | None] = [None] * len(rows)
    device = next(model.parameters()).device
    with torch.no_grad():
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            ids, labels, mask = (t.to(device) for t in collate([rows[i] for i in idx], pad_id))
            kwargs = (
                {} if memory_store is None else {"memory_store": memory_store, "namespaces": [namespace] * len(idx)}
            )
            logits = model(ids, attention_mask=mask, **kwargs).logits.float()
            # position t predicts token t + 1
            nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="none")
            hit = (logits[:, :-1].argmax(-1) == labels[:, 1:]) | (labels[:, 1:] == -100)
            for k, i in enumerate(idx):
                scored = labels[k, 1:] != -100
                far_pos = [p - 1 for p in far[i]]  # token p is predicted at position p - 1
                scores[i] = ExampleScore(
                    loss=float(nll[k][scored].sum()),
                    tokens=int(scored.sum()),
                    far_loss=float(nll[k, far_pos].sum()) if far_pos else 0.0,
                    far=len(far_pos),
                    exact=bool(hit[k].all()),
                    beyond=bool(far[i]),
                )
    return [s for s in scores if s is not None]


def summarize(scores: Sequence[ExampleScore]) -> dict[str, dict[str, float | int | None]]:
    """{subset: {loss (nats per output token), exact_match, far_loss (nats per far token), examples, tokens}} for the
    subsets all / beyond / within."""
    out: dict[str, dict[str, float | int | None]] = {}
    for subset, keep in (("all", lambda s: True), ("beyond", lambda s: s.beyond), ("within", lambda s: not s.beyond)):
        chosen = [s for s in scores if keep(s)]
        tokens = sum(s.tokens for s in chosen)
        far = sum(s.far for s in chosen)
        out[subset] = {
            "loss": sum(s.loss for s in chosen) / tokens if tokens else None,
            "exact_match": sum(s.exact for s in chosen) / len(chosen) if chosen else None,
            "far_loss": sum(s.far_loss for s in chosen) / far if far else None,
            "examples": len(chosen),
            "tokens": tokens,
            "far_tokens": far,
        }
    return out


# -- repository memory ------------------------------------------------------------------------------------------------
def write_corpus(
    model,
    tokenizer: TextTokenizer,
    store: Any,
    namespace: str,
    texts: Sequence[str],
    batch_segments: int = 4,
    read: bool = True,
) -> dict[str, int]:
    """Run `model` over `texts` (each closed by end-of-text, all as one stream) and keep its retrieval layers' chunks
    in `namespace` of `store` — `hybrid memory build`'s work, on any store. Whole segments only. Returns the counts.

    `read=False` writes without searching (`WriteOnlyStore`): the same chunks when the model has one retrieval layer
    (what a layer writes is computed before it reads), many times faster on a large memory; with several retrieval
    layers the later ones would write what they compute without the earlier ones' reads."""
    if not read:
        store = WriteOnlyStore(store)
    stream: list[int] = []
    for text in texts:
        stream.extend(tokenizer.encode(text) + [tokenizer.eos_id])
    S = model.config.segment_length
    n = len(stream) // S * S
    window = S * max(1, batch_segments)
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, n, window):
            ids = torch.tensor([stream[start : min(n, start + window)]], dtype=torch.long, device=device)
            model(ids, memory_store=store, namespaces=[namespace])
    flush = getattr(store, "flush", None)
    if flush is not None:
        flush()
    return {"texts": len(texts), "tokens": len(stream), "tokens_written": n}


class ReadOnlyStore:
    """A store seen through a window that only reads: searches go to `store`, adds and resets are dropped. Scoring
    with a built memory (a repository's) must not write each example into it."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def add(self, namespaces: Sequence[str], keys, chunk_keys, chunk_values) -> None:
        return None

    def search(self, namespaces: Sequence[str], queries: torch.Tensor, k: int) -> SearchResult:
        return self.store.search(namespaces, queries, k)

    def search_async(self, namespaces: Sequence[str], queries: torch.Tensor, k: int):
        return self.store.search(namespaces, queries, k)

    def reset(self, namespaces: Sequence[str] | None = None) -> None:
        return None

    def stats(self) -> dict[str, Any]:
        return self.store.stats()


class WriteOnlyStore:
    """A store that is written but never searched (every search finds nothing): filling a memory whose reads cannot
    change what is written (see `write_corpus`)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def add(self, namespaces: Sequence[str], keys, chunk_keys, chunk_values) -> None:
        self.store.add(namespaces, keys, chunk_keys, chunk_values)

    def search(self, namespaces: Sequence[str], queries: torch.Tensor, k: int) -> SearchResult:
        B, H, Q, D = queries.shape
        return empty_result(B, H, Q, k, 1, D, queries.device)  # as a store does for a namespace it lacks

    def search_async(self, namespaces: Sequence[str], queries: torch.Tensor, k: int) -> SearchResult:
        return self.search(namespaces, queries, k)

    def reset(self, namespaces: Sequence[str] | None = None) -> None:
        self.store.reset(namespaces)

    def stats(self) -> dict[str, Any]:
        return self.store.stats()


# -- the demo's last line -------------------------------------------------------------------------------------------
def memory_effect(checkpoint, data, max_examples: int | None = 96) -> dict[str, Any]:
    """What the memory changed on IO pairs: the checkpoint scored as trained and with every memory read gate closed
    (`hybrid.models.controls.memory_gates_closed`: the same weights, nothing read from memory), on the first
    `max_examples` pairs of `data`; `summarize` of each ("on" / "off") and the window in tokens."""
    ck = load(checkpoint, device="cpu")
    records = read_io_pairs(data).records[:max_examples]
    window = ck.model.config.segment_length
    rows, far = encode_examples(ck.tokenizer, records, ck.max_length, window)
    on = summarize(score_rows(ck.model, rows, far, ck.tokenizer.pad_id))
    with memory_gates_closed(ck.model):
        off = summarize(score_rows(ck.model, rows, far, ck.tokenizer.pad_id))
    return {"on": on, "off": off, "window": window, "examples": len(rows), "memory": ck.model.config.has_memory}


def describe_effect(effect: dict[str, Any]) -> str:
    """One line: the loss on far tokens with the memory read vs not, the counts, and the same for the rest."""
    on, off = effect["on"], effect["off"]
    if not effect["memory"]:
        return "memory: this model has none (nothing to compare)"
    if not on["beyond"]["far_tokens"]:
        return (
            f"memory: none of the {effect['examples']} test pairs names anything found only beyond the "
            f"{effect['window']}-token window; loss with the memory read {on['all']['loss']:.3f}, "
            f"closed {off['all']['loss']:.3f}"
        )
    ratio = on["beyond"]["far_loss"] / off["beyond"]["far_loss"]
    within = (
        f"; the {on['within']['examples']} pairs within the window {on['within']['loss']:.3f} vs "
        f"{off['within']['loss']:.3f}"
        if on["within"]["examples"]
        else ""
    )
    return (
        f"memory: on {effect['examples']} test pairs, the loss on the {on['beyond']['far_tokens']} tokens of names "
        f"seen only beyond the {effect['window']}-token window ({on['beyond']['examples']} pairs) is "
        f"{on['beyond']['far_loss']:.3f} with the memory read vs {off['beyond']['far_loss']:.3f} with every memory "
        f"gate closed ({ratio:.2f}×){within} (nats/token, lower is better)"
    )
