"""External-memory stores behind one protocol (`hybrid.memory.store`). Light to import: the backends
(`torch_store.TorchStore`, `faiss_store.FaissStore`, issue 6's Ray service) are imported where used."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover
    from hybrid.memory.config import MemoryConfig
    from hybrid.models.config import ModelConfig


def make_store(memory_cfg: "MemoryConfig", model_cfg: "ModelConfig") -> Any:
    """A store for one model call (or a long-lived one), sized by the model config."""
    capacity = model_cfg.chunks_capacity
    if memory_cfg.backend == "torch":
        from hybrid.memory.torch_store import TorchStore

        return TorchStore(capacity)
    if memory_cfg.backend == "faiss":
        from hybrid.memory.faiss_store import FaissStore

        return FaissStore(capacity, index=memory_cfg.faiss_index, ivf_min_chunks=memory_cfg.ivf_min_chunks,
                          ivf_nlist=memory_cfg.ivf_nlist, ivf_nprobe=memory_cfg.ivf_nprobe,
                          use_gpu=model_cfg.use_gpu_to_search, threads=memory_cfg.search_threads)
    from hybrid.memory.ray_store import RayShardedStore

    return RayShardedStore.from_config(memory_cfg, model_cfg)


def store_factory(memory_cfg: "MemoryConfig", model_cfg: "ModelConfig") -> Callable[[], Any]:
    """What `model.store_factory` calls once per forward. In-process stores are fresh per call; the Ray store
    is created once and shared (each call uses its own namespaces and drops them at the end)."""
    if memory_cfg.backend == "ray":
        shared = make_store(memory_cfg, model_cfg)
        return lambda: shared
    return lambda: make_store(memory_cfg, model_cfg)
