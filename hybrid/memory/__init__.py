"""External-memory stores behind one protocol (`hybrid.memory.store`): `torch_store.TorchStore` (exact, on the
model's device), `faiss_store.FaissStore` (flat / IVF, in process) and `ray_store.RayShardedStore` (FAISS in named
Ray actors). Stores take plain sizes, never the model's config: the model passes its capacity and chunk size.
Light to import: the backends load where used."""

from __future__ import annotations

from collections.abc import Callable

from hybrid.config.memory import MemoryConfig
from hybrid.memory.faiss_store import FaissStore
from hybrid.memory.ray_store import RayShardedStore
from hybrid.memory.store import MemoryStore
from hybrid.memory.torch_store import TorchStore


def make_store(memory_cfg: MemoryConfig, capacity: int, chunk_size: int, use_gpu: bool = False) -> MemoryStore:
    """A store of `capacity` chunks (of `chunk_size` tokens) per namespace and head, per `memory_cfg.backend`."""
    if memory_cfg.backend == "torch":
        return TorchStore(capacity)
    if memory_cfg.backend == "faiss":
        return FaissStore(
            capacity,
            index=memory_cfg.faiss_index,
            ivf_min_chunks=memory_cfg.ivf_min_chunks,
            ivf_nlist=memory_cfg.ivf_nlist,
            ivf_nprobe=memory_cfg.ivf_nprobe,
            use_gpu=use_gpu,
            threads=memory_cfg.search_threads,
        )

    return RayShardedStore.from_config(memory_cfg, capacity, chunk_size, use_gpu)


def store_factory(
    memory_cfg: MemoryConfig, capacity: int, chunk_size: int, use_gpu: bool = False
) -> Callable[[], MemoryStore]:
    """What `model.store_factory` calls once per forward. In-process stores are fresh per call; the Ray store
    is created once and shared (each call uses its own namespaces and drops them at the end)."""
    if memory_cfg.backend == "ray":
        shared = make_store(memory_cfg, capacity, chunk_size, use_gpu)
        return lambda: shared
    return lambda: make_store(memory_cfg, capacity, chunk_size, use_gpu)
