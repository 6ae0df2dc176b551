"""`FaissStore`: the in-process FAISS external memory (same protocol and results as `TorchStore`).

Per namespace and kv head one inner-product index over chunk keys, ids = insertion number (slot = id % capacity):
- flat: `IndexIDMap2(IndexFlatIP)`; eviction of the oldest = `remove_ids(IDSelectorRange)`;
- IVF (`index="ivf"`, or "auto" when capacity >= ivf_min_chunks): `IndexIVFFlat`, trained once enough chunks
  are stored (until then the flat index serves); eviction by id range as well;
- GPU (`use_gpu` and a FAISS GPU build with a GPU): a flat GPU index rebuilt from the ring after writes
  (GPU indexes cannot `remove_ids`, faiss #1585).
Keys/values are kept as float32 CPU tensors. FAISS answers id -1 / score -3.4e38 when fewer than k chunks are
stored: those come back masked with score 0 (they caused NaN losses, RAY-NOTES).
Head dims below 128 are zero-padded to 128: flat IP search at d=64 was ~7x slower than at 128 on this build
(RAY-NOTES), and zero padding leaves inner products unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from hybrid.memory.store import SearchResult, check_add, check_search, empty_result

INDEX_KINDS = ("auto", "flat", "ivf")


def padded_dim(d: int) -> int:
    """The head dim a FAISS index stores: `d` zero-padded to a multiple of 128 (see the module docstring)."""
    return d if d % 128 == 0 else 128 * math.ceil(d / 128)


def index_kind(index: str, capacity: int, ivf_min_chunks: int) -> str:
    """The FAISS index a namespace of `capacity` chunks gets: `ivf` when asked for, or for `auto` from
    `ivf_min_chunks` chunks on; else `flat`. (A GPU store searches flat whatever this says.)"""
    if index not in INDEX_KINDS:
        raise ValueError(f"memory.faiss_index must be auto, flat or ivf, got {index!r}")
    return "ivf" if index == "ivf" or (index == "auto" and capacity >= ivf_min_chunks) else "flat"


@dataclass
class _Bank:
    indexes: list[Any]  # one per head
    keys: torch.Tensor  # (H, cap, D) float32 CPU, for IVF training and GPU rebuilds
    chunk_keys: torch.Tensor  # (H, cap, c, D)
    chunk_values: torch.Tensor  # (H, cap, c, D)
    next_id: int = 0
    trained: bool = True  # IVF: False until trained (the flat `staging` indexes answer meanwhile)
    staging: list[Any] = field(default_factory=list)
    dirty: bool = False  # GPU: rebuild before the next search


class FaissStore:
    def __init__(
        self,
        capacity: int,
        index: str = "auto",
        ivf_min_chunks: int = 65536,
        ivf_nlist: int = 0,
        ivf_nprobe: int = 16,
        use_gpu: bool = False,
        threads: int = 0,
    ):
        import faiss

        if capacity < 1:
            raise ValueError(f"FaissStore: capacity must be >= 1 chunk, got {capacity}")
        self.faiss = faiss
        self.capacity = capacity
        self.kind = index_kind(index, capacity, ivf_min_chunks)
        self.nlist = ivf_nlist or max(1, int(4 * math.sqrt(capacity)))
        self.nprobe = ivf_nprobe
        self.gpu = None
        if use_gpu and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
            self.gpu = faiss.StandardGpuResources()
            self.kind = "flat"  # GPU path: flat, rebuilt after writes
        if threads:
            faiss.omp_set_num_threads(threads)
        self._banks: dict[str, _Bank] = {}
        self.adds = 0
        self.searches = 0

    # -- writing --------------------------------------------------------------------------------------------
    def _flat(self, dp: int) -> Any:
        return self.faiss.IndexIDMap2(self.faiss.IndexFlatIP(dp))

    def _new_bank(self, H: int, c: int, D: int) -> _Bank:
        dp = padded_dim(D)
        cap = self.capacity
        bank = _Bank(
            indexes=[],
            keys=torch.zeros(H, cap, D),
            chunk_keys=torch.zeros(H, cap, c, D),
            chunk_values=torch.zeros(H, cap, c, D),
        )
        if self.kind == "ivf":
            for _ in range(H):
                quantizer = self.faiss.IndexFlatIP(dp)
                ivf = self.faiss.IndexIVFFlat(quantizer, dp, self.nlist, self.faiss.METRIC_INNER_PRODUCT)
                ivf.nprobe = self.nprobe
                bank.indexes.append((ivf, quantizer))  # keep the quantizer alive with its index
            bank.trained = False
            bank.staging = [self._flat(dp) for _ in range(H)]
        else:
            bank.indexes = [self._flat(dp) for _ in range(H)]
        return bank

    @staticmethod
    def _pad(x: np.ndarray, dp: int) -> np.ndarray:
        if x.shape[-1] == dp:
            return np.ascontiguousarray(x, dtype=np.float32)
        out = np.zeros((*x.shape[:-1], dp), dtype=np.float32)
        out[..., : x.shape[-1]] = x
        return out

    def _active(self, bank: _Bank, h: int) -> Any:
        if self.kind == "ivf":
            return bank.indexes[h][0] if bank.trained else bank.staging[h]
        return bank.indexes[h]

    def add(
        self, namespaces: Sequence[str], keys: torch.Tensor, chunk_keys: torch.Tensor, chunk_values: torch.Tensor
    ) -> None:
        check_add(namespaces, keys, chunk_keys, chunk_values)
        B, H, C, D = keys.shape
        c = chunk_keys.shape[3]
        keys, chunk_keys, chunk_values = (t.detach().float().cpu() for t in (keys, chunk_keys, chunk_values))
        if self.capacity < C:
            skip = C - self.capacity
            keys, chunk_keys, chunk_values = keys[:, :, skip:], chunk_keys[:, :, skip:], chunk_values[:, :, skip:]
            C = self.capacity
        else:
            skip = 0
        dp = padded_dim(D)
        for b, ns in enumerate(namespaces):
            bank = self._banks.get(ns)
            if bank is None:
                bank = self._banks[ns] = self._new_bank(H, c, D)
            have = (bank.keys.shape[0], bank.chunk_keys.shape[2], bank.keys.shape[2])
            if have != (H, c, D):
                raise ValueError(f"add: namespace {ns!r} holds (heads, chunk_size, head_dim)={have}, got {(H, c, D)}")
            start = bank.next_id + skip
            ids = np.arange(start, start + C, dtype=np.int64)
            slots = torch.from_numpy(ids % self.capacity)
            bank.keys[:, slots] = keys[b]
            bank.chunk_keys[:, slots] = chunk_keys[b]
            bank.chunk_values[:, slots] = chunk_values[b]
            bank.next_id = start + C
            oldest = max(0, bank.next_id - self.capacity)  # ids below this are evicted
            vecs = self._pad(keys[b].numpy(), dp)  # (H, C, dp)
            if self.gpu is not None:
                bank.dirty = True
                continue
            for h in range(H):
                index = self._active(bank, h)
                if oldest > 0:
                    index.remove_ids(self.faiss.IDSelectorRange(0, oldest))
                index.add_with_ids(vecs[h], ids)
            if self.kind == "ivf" and not bank.trained and bank.next_id - oldest >= min(self.capacity, 39 * self.nlist):
                self._train_ivf(bank, dp, oldest)
        self.adds += 1

    def _train_ivf(self, bank: _Bank, dp: int, oldest: int) -> None:
        live = np.arange(oldest, bank.next_id, dtype=np.int64)
        slots = torch.from_numpy(live % self.capacity)
        for h, (ivf, _) in enumerate(bank.indexes):
            vecs = self._pad(bank.keys[h, slots].numpy(), dp)
            ivf.train(vecs)
            ivf.add_with_ids(vecs, live)
        bank.trained, bank.staging = True, []

    def _rebuild_gpu(self, bank: _Bank) -> None:
        """GPU: a flat index holding the live chunks in slot order (label = slot)."""
        assert self.gpu is not None  # only GPU stores mark banks dirty
        n = min(bank.next_id, self.capacity)
        dp = padded_dim(bank.keys.shape[2])
        bank.indexes = []
        for h in range(bank.keys.shape[0]):
            cpu = self.faiss.IndexFlatIP(dp)
            cpu.add(self._pad(bank.keys[h, :n].numpy(), dp))
            bank.indexes.append(self.faiss.index_cpu_to_gpu(self.gpu, 0, cpu))
        bank.dirty = False

    # -- reading --------------------------------------------------------------------------------------------
    def search(self, namespaces: Sequence[str], queries: torch.Tensor, k: int) -> SearchResult:
        check_search(namespaces, queries, k)
        self.searches += 1
        B, H, Q, D = queries.shape
        known = [self._banks.get(ns) for ns in namespaces]
        c = next((bk.chunk_keys.shape[2] for bk in known if bk is not None), 1)
        out = empty_result(B, H, Q, k, c, D, torch.device("cpu"))
        q = queries.detach().float().cpu().numpy()
        dp = padded_dim(D)
        for b, bank in enumerate(known):
            if bank is None or bank.next_id == 0:
                continue
            if bank.keys.shape[0] != H or bank.keys.shape[2] != D:
                raise ValueError(
                    f"search: queries have (heads, dim)=({H}, {D}), namespace {namespaces[b]!r} "
                    f"holds ({bank.keys.shape[0]}, {bank.keys.shape[2]})"
                )
            if self.gpu is not None and bank.dirty:
                self._rebuild_gpu(bank)
            qb = self._pad(q[b], dp)  # (H, Q, dp)
            for h in range(H):
                scores, ids = self._active(bank, h).search(qb[h], k)  # (Q, k) each
                valid = ids >= 0
                slots = torch.from_numpy(np.where(valid, ids % self.capacity, 0))  # GPU labels are slots already
                mask = torch.from_numpy(valid)
                out.keys[b, h] = bank.chunk_keys[h][slots] * mask[..., None, None]
                out.values[b, h] = bank.chunk_values[h][slots] * mask[..., None, None]
                out.mask[b, h] = mask
                out.scores[b, h] = torch.from_numpy(np.where(valid, scores, 0.0).astype(np.float32))
        dev = queries.device
        return SearchResult(
            keys=out.keys.to(dev), values=out.values.to(dev), mask=out.mask.to(dev), scores=out.scores.to(dev)
        )

    def search_async(self, namespaces: Sequence[str], queries: torch.Tensor, k: int) -> SearchResult:
        return self.search(namespaces, queries, k)

    # -- housekeeping ---------------------------------------------------------------------------------------
    def reset(self, namespaces: Sequence[str] | None = None) -> None:
        if namespaces is None:
            self._banks.clear()
        else:
            for ns in namespaces:
                self._banks.pop(ns, None)

    def stored_chunks(self, namespace: str) -> int:
        bank = self._banks.get(namespace)
        return 0 if bank is None else min(bank.next_id, self.capacity)

    def stats(self) -> dict[str, Any]:
        nbytes = sum(t.numel() * 4 for bk in self._banks.values() for t in (bk.keys, bk.chunk_keys, bk.chunk_values))
        return {
            "backend": "faiss",
            "index": self.kind,
            "gpu": self.gpu is not None,
            "namespaces": len(self._banks),
            "chunks": sum(self.stored_chunks(n) for n in self._banks),
            "bytes": nbytes,
            "capacity_chunks": self.capacity,
            "adds": self.adds,
            "searches": self.searches,
            "dtypes": ["torch.float32"] if self._banks else [],
        }
