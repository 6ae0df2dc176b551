"""`MemoryShard`: one shard of the Ray memory service — a named Ray actor holding in-process `FaissStore`s.

The actor adds no search logic of its own: every namespace (or namespace *part*, when the client split a namespace
too large for one shard) lives in a `FaissStore` chosen by its *spec* (capacity in chunks and index settings), so
results and FIFO eviction are exactly the in-process store's. What the shard adds:

- a byte bound: each namespace reserves its full-capacity footprint (`namespace_bytes`) on first add; when a new
  namespace does not fit in `shard_bytes`, the oldest namespaces (first added first) are evicted whole, counted and
  remembered, so a later search on them is counted as an `evicted_hit` (the answer is an empty, masked result);
- an `incarnation` id, new each time Ray (re)starts the actor, returned with every answer so clients can tell that
  what they wrote before a restart is gone;
- per-shard statistics (namespaces, vectors, bytes, searches/s, p50/p99 latency) for `hybrid memory stats`, and the
  same as `ray.util.metrics` for the Ray dashboard.

Arrays travel as float32 NumPy (zero-copy through Ray's object store); wrong dtypes and shapes are `ValueError`s /
`TypeError`s that the client re-raises at its call site.
"""

from __future__ import annotations

import time
import uuid
import warnings
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import Any, cast

import numpy as np

from hybrid.memory.faiss_store import FaissStore, padded_dim

# (capacity in chunks, index kind, ivf_min_chunks, ivf_nlist, ivf_nprobe, use_gpu)
Spec = tuple[int, str, int, int, int, bool]

_EVICTED_REMEMBERED = 100_000  # names of evicted namespaces kept for counting late searches on them
_LATENCY_WINDOW = 4096  # search latencies kept for p50/p99
_RATE_WINDOW_S = 60.0  # searches/s is measured over the last minute


def namespace_bytes(heads: int, capacity: int, chunk_size: int, dim: int) -> int:
    """Bytes one namespace reserves at full capacity: the float32 ring of search keys and chunk keys/values that
    `FaissStore` allocates up front, plus the FAISS index (padded float32 vectors and 8-byte ids twice, IDMap2)."""
    ring = 4 * heads * capacity * dim * (1 + 2 * chunk_size)
    index = heads * capacity * (4 * padded_dim(dim) + 16)
    return ring + index


def _spec(spec: Sequence[Any]) -> Spec:
    return cast(Spec, tuple(spec))


def _check_array(name: str, a: Any, ndim: int) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a float32 NumPy array, got {type(a).__name__}")
    if a.dtype != np.float32:
        raise TypeError(f"{name}: expected dtype float32, got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {a.shape}")
    return a


class MemoryShard:
    def __init__(self, shard: int, service: str, shard_bytes: int, threads: int = 0, num_shards: int = 0):
        import faiss

        if threads > 0:  # Ray sets OMP_NUM_THREADS=1 in actors with num_cpus <= 1 (RAY-NOTES)
            faiss.omp_set_num_threads(threads)
        self.shard, self.service, self.shard_bytes = shard, service, int(shard_bytes)
        # The service's shard count, recorded by the shard itself: a client that routes namespaces with another
        # count would look in the wrong shards (a stale or empty answer), so it checks this first.
        self.num_shards = int(num_shards)
        self.incarnation = uuid.uuid4().hex[:12]
        try:
            import ray

            with warnings.catch_warnings():  # Ray 2.60 warns about its own use of a deprecated property here
                warnings.simplefilter("ignore")
                self.restarted = bool(ray.get_runtime_context().was_current_actor_reconstructed)
            self.node = f"{ray.util.get_node_ip_address()} {ray.get_runtime_context().get_node_id()[:8]}"
        except Exception:  # outside Ray (unit use)
            self.restarted, self.node = False, "local"
        # Arrays from Ray's object store are read-only; FaissStore copies what it keeps and never writes to them.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        self.started = time.time()
        self.stores: dict[Spec, FaissStore] = {}
        self.spec_of: OrderedDict[str, Spec] = OrderedDict()  # namespace -> spec, oldest first
        self.reserved: dict[str, int] = {}  # namespace -> bytes reserved
        self.total_reserved = 0
        self.evicted: OrderedDict[str, None] = OrderedDict()
        self.counts = {"add_calls": 0, "search_calls": 0, "queries": 0, "evicted_namespaces": 0, "evicted_hits": 0}
        self.latencies: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self.search_times: deque[tuple[float, int]] = deque()  # (time, queries) within the rate window
        self._metrics = self._make_metrics()

    # -- metrics for the Ray dashboard ------------------------------------------------------------------------
    def _make_metrics(self) -> dict[str, Any] | None:
        try:
            from ray.util.metrics import Counter, Gauge, Histogram

            tags = {"service": self.service, "shard": str(self.shard)}
            keys = tuple(tags)
            m = {
                "searches": Counter("hybrid_memory_search_queries", "queries searched", tag_keys=keys),
                "latency": Histogram(
                    "hybrid_memory_search_seconds",
                    "search call latency in the shard",
                    boundaries=[0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5],
                    tag_keys=keys,
                ),
                "vectors": Gauge("hybrid_memory_vectors", "chunks stored", tag_keys=keys),
                "bytes": Gauge("hybrid_memory_bytes", "bytes reserved", tag_keys=keys),
                "namespaces": Gauge("hybrid_memory_namespaces", "namespaces held", tag_keys=keys),
            }
            for metric in m.values():
                metric.set_default_tags(tags)
            return m
        except Exception:  # metrics are best-effort (no metrics agent in some local setups)
            return None

    def _update_gauges(self) -> None:
        if self._metrics is None:
            return
        try:
            self._metrics["vectors"].set(self._chunks())
            self._metrics["bytes"].set(self.total_reserved)
            self._metrics["namespaces"].set(len(self.spec_of))
        except Exception:
            pass

    # -- stores and the byte bound -----------------------------------------------------------------------------
    def _store(self, spec: Spec) -> FaissStore:
        store = self.stores.get(spec)
        if store is None:
            capacity, index, ivf_min_chunks, ivf_nlist, ivf_nprobe, use_gpu = spec
            store = self.stores[spec] = FaissStore(
                capacity,
                index=index,
                ivf_min_chunks=ivf_min_chunks,
                ivf_nlist=ivf_nlist,
                ivf_nprobe=ivf_nprobe,
                use_gpu=use_gpu,
            )
        return store

    def _drop(self, ns: str) -> None:
        spec = self.spec_of.pop(ns, None)
        if spec is not None:
            self.stores[spec].reset([ns])
            self.total_reserved -= self.reserved.pop(ns)

    def _make_room(self, ns: str, need: int, protect: set[str]) -> None:
        if need > self.shard_bytes:
            raise ValueError(
                f"memory shard {self.shard} of {self.service!r}: namespace {ns!r} needs {need} bytes, "
                f"more than memory.shard_bytes={self.shard_bytes}"
            )
        for old in list(self.spec_of):
            if self.total_reserved + need <= self.shard_bytes:
                break
            if old in protect:
                continue
            self._drop(old)
            self.evicted[old] = None
            self.counts["evicted_namespaces"] += 1
            while len(self.evicted) > _EVICTED_REMEMBERED:
                self.evicted.popitem(last=False)
        if self.total_reserved + need > self.shard_bytes:
            raise ValueError(
                f"memory shard {self.shard} of {self.service!r}: no room for namespace {ns!r} "
                f"({need} bytes): the namespaces of this very call hold {self.total_reserved} of "
                f"memory.shard_bytes={self.shard_bytes}; raise memory.shard_bytes or memory.num_shards"
            )

    # -- the store protocol, batched over namespaces -----------------------------------------------------------
    def add(self, items: list[tuple[Spec, str, np.ndarray, np.ndarray, np.ndarray]]) -> str:
        """items: (spec, namespace, keys (H,C,D), chunk_keys (H,C,c,D), chunk_values (H,C,c,D)), float32.
        Returns this shard's incarnation."""
        import torch

        protect = {ns for _, ns, *_ in items}
        for spec, ns, keys, ck, cv in items:
            _check_array(f"add {ns!r}: keys", keys, 3)
            _check_array(f"add {ns!r}: chunk_keys", ck, 4)
            _check_array(f"add {ns!r}: chunk_values", cv, 4)
            spec = _spec(spec)
            have = self.spec_of.get(ns)
            if have is not None and have != spec:
                raise ValueError(
                    f"add: namespace {ns!r} exists on shard {self.shard} with capacity/index {have}, got {spec}"
                )
            if have is None:
                H, _, D = keys.shape
                need = namespace_bytes(H, spec[0], ck.shape[2], D)
                self._make_room(ns, need, protect)
                self.spec_of[ns] = spec
                self.reserved[ns] = need
                self.total_reserved += need
                self.evicted.pop(ns, None)
            self._store(spec).add(
                [ns], torch.from_numpy(keys)[None], torch.from_numpy(ck)[None], torch.from_numpy(cv)[None]
            )
        self.counts["add_calls"] += 1
        self._update_gauges()
        return self.incarnation

    def search(self, groups: list[tuple[Spec, list[str], np.ndarray]], k: int) -> dict[str, Any]:
        """groups: (spec, namespaces[b], queries (b,H,Q,D) float32). Returns the incarnation and, per group,
        keys/values (b,H,Q,k,c,D), mask (b,H,Q,k), scores (b,H,Q,k) as NumPy."""
        import torch

        t0 = time.perf_counter()
        out = []
        evicted_hits: list[str] = []
        n_queries = 0
        for spec, namespaces, queries in groups:
            _check_array(f"search {namespaces[:1]}: queries", queries, 4)
            for ns in namespaces:
                if ns not in self.spec_of and ns in self.evicted:
                    self.counts["evicted_hits"] += 1
                    evicted_hits.append(ns)
            # each namespace is searched in the store it was created in (a reader may be configured with
            # another capacity than the writer: `hybrid memory build --capacity-tokens`)
            by_spec: dict[Spec, list[int]] = {}
            for i, ns in enumerate(namespaces):
                by_spec.setdefault(self.spec_of.get(ns, _spec(spec)), []).append(i)
            arrays: tuple[np.ndarray, ...] | None = None
            for sp, rows in by_spec.items():
                res = self._store(sp).search([namespaces[i] for i in rows], torch.from_numpy(queries[rows]), k)
                got = (res.keys.numpy(), res.values.numpy(), res.mask.numpy(), res.scores.numpy())
                if len(by_spec) == 1:
                    arrays = got
                    break
                if arrays is None:
                    arrays = tuple(np.zeros((len(namespaces), *a.shape[1:]), a.dtype) for a in got)
                for dst, src in zip(arrays, got):
                    dst[rows] = src
            out.append(arrays)
            n_queries += int(np.prod(queries.shape[:3]))
        dt = time.perf_counter() - t0
        now = time.time()
        self.counts["search_calls"] += 1
        self.counts["queries"] += n_queries
        self.latencies.append(dt)
        self.search_times.append((now, n_queries))
        while self.search_times and self.search_times[0][0] < now - _RATE_WINDOW_S:
            self.search_times.popleft()
        if self._metrics is not None:
            try:
                self._metrics["searches"].inc(n_queries)
                self._metrics["latency"].observe(dt)
            except Exception:
                pass
        return {"incarnation": self.incarnation, "results": out, "evicted": evicted_hits}

    def reset(self, namespaces: list[str] | None = None) -> str:
        for ns in list(self.spec_of) if namespaces is None else namespaces:
            self._drop(ns)
        self._update_gauges()
        return self.incarnation

    def next_ids(self, namespaces: list[str]) -> dict[str, Any]:
        """Chunks ever added per namespace (a split namespace's client needs them to keep FIFO order)."""
        ids = {}
        for ns in namespaces:
            spec = self.spec_of.get(ns)
            bank = None if spec is None else self.stores[spec]._banks.get(ns)
            ids[ns] = 0 if bank is None else int(bank.next_id)
        return {"incarnation": self.incarnation, "next_ids": ids}

    def has(self, namespaces: list[str]) -> dict[str, bool]:
        return {ns: ns in self.spec_of for ns in namespaces}

    def ping(self) -> str:
        return self.incarnation

    def layout(self) -> dict[str, Any]:
        """Who this shard is in its service (checked by every client that connects)."""
        return {"shard": self.shard, "service": self.service, "num_shards": self.num_shards}

    def _chunks(self) -> int:
        return sum(self.stores[spec].stored_chunks(ns) for ns, spec in self.spec_of.items())

    def stats(self, list_namespaces: bool = False) -> dict[str, Any]:
        now = time.time()
        recent = [(t, q) for t, q in self.search_times if t >= now - _RATE_WINDOW_S]
        span = min(_RATE_WINDOW_S, max(1e-3, now - self.started))
        lat = np.array(self.latencies) if self.latencies else None
        out: dict[str, Any]  # the namespace list is added below
        out = {
            "shard": self.shard,
            "service": self.service,
            "num_shards": self.num_shards,
            "incarnation": self.incarnation,
            "restarted": self.restarted,
            "node": self.node,
            "namespaces": len(self.spec_of),
            "vectors": self._chunks(),
            "bytes": self.total_reserved,
            "shard_bytes": self.shard_bytes,
            **self.counts,
            "searches_per_s": sum(q for _, q in recent) / span,
            "search_calls_per_s": len(recent) / span,
            "p50_ms": None if lat is None else float(np.percentile(lat, 50) * 1e3),
            "p99_ms": None if lat is None else float(np.percentile(lat, 99) * 1e3),
        }
        if list_namespaces:
            out["namespace_list"] = {
                ns: {
                    "vectors": self.stores[spec].stored_chunks(ns),
                    "bytes": self.reserved[ns],
                    "capacity": spec[0],
                    "index": self.stores[spec].kind,
                }
                for ns, spec in self.spec_of.items()
            }
        return out
