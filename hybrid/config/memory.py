"""The `memory` section: which external-memory store backs the model.

The model's own memory sizes (capacity, retrieval_k, chunk_size, use_gpu_to_search) live in the `model` section;
this section picks and tunes the store that holds the external memory.
"""

from typing import Literal

from pydantic import Field

from hybrid.config.section import Section


class MemoryConfig(Section):
    backend: Literal["torch", "faiss", "ray"] = Field(
        "torch",
        description="external memory store: torch (exact, on the model's device), faiss (in-process), "
        "ray (sharded FAISS actors, issue 6)",
    )
    faiss_index: Literal["auto", "flat", "ivf"] = Field(
        "auto", description="FAISS index kind; auto = flat below ivf_min_chunks, IVF from there"
    )
    ivf_min_chunks: int = Field(
        65536, ge=1, description="auto: a namespace whose capacity reaches this many chunks uses IVF"
    )
    ivf_nlist: int = Field(0, ge=0, description="IVF lists; 0 = about 4*sqrt(capacity)")
    ivf_nprobe: int = Field(16, ge=1, description="IVF lists searched per query")
    search_threads: int = Field(0, ge=0, description="FAISS OpenMP threads; 0 = FAISS's default")
    shared_namespace: str | None = Field(
        None,
        description="an explicit namespace shared by every row (e.g. one repository's code); "
        "null = a fresh private namespace per row and call",
    )
    num_shards: int = Field(2, ge=1, description="ray: FAISS actors the namespaces are hash-partitioned over")
    service: str = Field(
        "hybrid-memory",
        description="ray: service name; shard i is the named actor "
        "'<service>-shard<i>' in Ray namespace 'hybrid-memory'",
    )
    shard_bytes: int = Field(
        1 << 30,
        ge=1 << 16,
        description="ray: most bytes one shard holds (oldest namespaces evicted first; bigger ones split)",
    )
    shard_cpus: float = Field(
        0.0,
        ge=0,
        description="ray: CPUs reserved per shard actor, also its FAISS threads "
        "(0: reserve none, 1 thread; never starves Train workers)",
    )
    call_timeout_s: float = Field(60.0, gt=0, description="ray: seconds to wait for a shard before giving up")
    on_shard_failure: Literal["empty", "error"] = Field(
        "empty",
        description="ray: a dead or restarted shard gives an empty (masked) result, counted and logged, or an error",
    )
