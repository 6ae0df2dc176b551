"""The external-memory store protocol (LongMem-style chunk memory), shared by every backend.

A store holds, per *namespace* (one sequence's memory at one retrieval layer, e.g. ``"call3/row0/layer4"``, see
`layer_namespace`), a FIFO bank of chunks per key/value head. A chunk is ``chunk_size`` consecutive tokens; its
search key is the mean of their attention keys; its payload is the tokens' keys and values. Capacity is counted
in chunks; when full, the oldest chunks are evicted first.

Every call is *batched*: one call covers all rows (namespaces) and all heads of one segment at one retrieval
layer, so a remote (Ray-sharded) backend makes one actor call per shard per model call. Shapes:

    B namespaces (rows), H kv heads, C new chunks, c = chunk_size, D head dim, Q queries per head, k retrieved

    add(namespaces[B], keys (B,H,C,D), chunk_keys (B,H,C,c,D), chunk_values (B,H,C,c,D))
    search(namespaces[B], queries (B,H,Q,D), k) -> SearchResult
        .keys / .values (B,H,Q,k,c,D) float32   the retrieved chunks' tokens (no gradient)
        .mask           (B,H,Q,k)     bool      True where a real chunk was found (fewer than k stored -> False)
        .scores         (B,H,Q,k)     float32   inner products (masked entries are 0, never -3.4e38)
    search_async(...) -> SearchHandle            .result() waits (lets a remote store overlap the search with
                                                 local attention)
    reset(namespaces=None)                       forget those namespaces (None: all)
    stats() -> dict                              namespaces, chunks, bytes, adds, searches

Tensors come in on the model's device and results must come back as float32 tensors on the *queries'* device.
State is kept in float32 whatever the autocast dtype. A namespace's head count, chunk size and head dim are fixed
by its first `add`; searching a namespace never added to returns an all-False mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass
class SearchResult:
    keys: torch.Tensor  # (B, H, Q, k, c, D) float32
    values: torch.Tensor  # (B, H, Q, k, c, D) float32
    mask: torch.Tensor  # (B, H, Q, k) bool
    scores: torch.Tensor  # (B, H, Q, k) float32

    def result(self) -> SearchResult:  # a finished search is its own handle
        return self


class SearchHandle(Protocol):
    def result(self) -> SearchResult: ...


@runtime_checkable
class MemoryStore(Protocol):
    def add(
        self, namespaces: Sequence[str], keys: torch.Tensor, chunk_keys: torch.Tensor, chunk_values: torch.Tensor
    ) -> None: ...

    def search(self, namespaces: Sequence[str], queries: torch.Tensor, k: int) -> SearchResult: ...

    def search_async(self, namespaces: Sequence[str], queries: torch.Tensor, k: int) -> SearchHandle: ...

    def reset(self, namespaces: Sequence[str] | None = None) -> None: ...

    def stats(self) -> dict[str, Any]: ...


def layer_namespace(row: str, layer: int) -> str:
    """The namespace of one row's memory at one retrieval layer: `<row>/layer<i>`. The model names its rows'
    memories so, and `hybrid memory build` a shared one (row = the shared name)."""
    return f"{row}/layer{layer}"


def split_layer_namespace(namespace: str) -> tuple[str, int | None]:
    """`layer_namespace`'s inverse: (row, layer); (namespace, None) for a name without a layer part."""
    row, sep, layer = namespace.rpartition("/layer")
    return (row, int(layer)) if sep and layer.isdecimal() else (namespace, None)


def check_add(
    namespaces: Sequence[str], keys: torch.Tensor, chunk_keys: torch.Tensor, chunk_values: torch.Tensor
) -> None:
    """Shape checks shared by the backends (a wrong shape here is a programming error: fail loudly)."""
    if keys.dim() != 4 or keys.shape[0] != len(namespaces):
        raise ValueError(f"add: keys must be (B={len(namespaces)}, H, C, D), got {tuple(keys.shape)}")
    B, H, C, D = keys.shape
    if chunk_keys.dim() != 5 or chunk_keys.shape[:3] != (B, H, C) or chunk_keys.shape[-1] != D:
        raise ValueError(f"add: chunk_keys must be (B, H, C, c, D)={B, H, C, 'c', D}, got {tuple(chunk_keys.shape)}")
    if chunk_values.shape != chunk_keys.shape:
        raise ValueError(f"add: chunk_values {tuple(chunk_values.shape)} != chunk_keys {tuple(chunk_keys.shape)}")


def check_search(namespaces: Sequence[str], queries: torch.Tensor, k: int) -> None:
    if queries.dim() != 4 or queries.shape[0] != len(namespaces):
        raise ValueError(f"search: queries must be (B={len(namespaces)}, H, Q, D), got {tuple(queries.shape)}")
    if k < 1:
        raise ValueError(f"search: k must be >= 1, got {k}")


def empty_result(B: int, H: int, Q: int, k: int, c: int, D: int, device: torch.device) -> SearchResult:
    z = torch.zeros(B, H, Q, k, c, D, device=device)
    return SearchResult(
        keys=z,
        values=z.clone(),
        mask=torch.zeros(B, H, Q, k, dtype=torch.bool, device=device),
        scores=torch.zeros(B, H, Q, k, device=device),
    )
