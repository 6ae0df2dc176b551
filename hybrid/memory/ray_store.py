"""`RayShardedStore`: the external memory as a service of named Ray actors, one per shard (issue 6).

Same protocol and the same answers as the in-process `FaissStore` (each shard holds `FaissStore`s, see
`ray_shard.MemoryShard`). The client:

- routes each namespace to shard `blake2b(namespace) % num_shards`; a namespace whose full-capacity footprint is
  larger than `shard_bytes` is split into P parts (P divides the capacity) on P different shards: the chunk with
  insertion number i goes to part i % P, so each part keeping its newest capacity/P chunks keeps exactly the
  newest `capacity` chunks overall (FIFO order is preserved), and a search asks every part and merges the top k;
- makes one actor call per shard per `add` / `search` (all rows and heads of a segment at a retrieval layer);
  `add` does not wait (the shard runs its calls in order, and its errors surface at the next search at the
  latest), `search_async` returns at once and `.result()` waits — so the read overlaps the local attention;
- never hangs and never returns a wrong neighbour: a shard that is dead, restarting or slower than
  `call_timeout_s` gives, for its rows, an empty (all-masked) result that is counted and logged, or a
  `HybridError` when `on_shard_failure="error"`; a shard that Ray restarted (new incarnation) has lost what was
  written before — counted as `lost_namespaces` and logged once per namespace;
- checks at the call site: tensor dtypes (floating point only), shapes, each namespace's (heads, chunk size,
  head dim) against its first add.

The actors are named `<service>-shard<i>` in the Ray namespace `hybrid-memory`, detached, restarted by Ray
(`max_restarts=-1`), so every Train worker and Tune trial that uses the same service name shares them. Each asks
for `shard_cpus` CPUs and `shard_bytes` of Ray's `memory` resource; on a cluster of several nodes, shard i is
placed on the i-th node (round robin over the alive nodes that can hold one shard), so shards sit on distinct nodes
whenever there are at least as many nodes as shards (a soft affinity: a node that is full or gone hands its shard to
the scheduler's choice; on one node the placement is Ray's default).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hybrid.config.memory import MemoryConfig
from hybrid.core.errors import HybridError
from hybrid.core.ray_utils import init_ray
from hybrid.memory.faiss_store import index_kind
from hybrid.memory.ray_shard import MemoryShard, Spec, namespace_bytes
from hybrid.memory.store import (
    SearchResult,
    check_add,
    check_search,
    empty_result,
    layer_namespace,
    split_layer_namespace,
)

if TYPE_CHECKING:
    from ray import ObjectRef

log = logging.getLogger("hybrid.memory.ray")

RAY_NAMESPACE = "hybrid-memory"

Shape = tuple[int, int, int, int, int, int]  # (B, H, Q, k, c, D) of a search result
Row = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # one row's keys, values, mask, scores from a shard
# what one search call to one shard covers, per spec group: stored names, batch rows, (part, parts) of each row
Group = tuple[list[str], list[int], list[tuple[int, int]]]
Call = tuple[int, "ObjectRef[dict[str, Any]]", list[Group]]  # (shard, the answer to come, groups)


def shard_name(service: str, shard: int) -> str:
    return f"{service}-shard{shard}"


def home_shard(namespace: str, num_shards: int) -> int:
    """Stable across processes and Python versions (unlike `hash`)."""
    return int.from_bytes(hashlib.blake2b(namespace.encode(), digest_size=8).digest(), "little") % num_shards


def connect_shards(
    service: str,
    num_shards: int,
    shard_bytes: int = 1 << 30,
    shard_cpus: float = 0.0,
    shard_gpus: float = 0.0,
    threads: int = 0,
    create: bool = True,
) -> list[Any]:
    """Handles to the service's shard actors, created when missing (`create`) or looked up by name."""
    import ray

    init_ray()
    if shard_gpus and not ray.cluster_resources().get("GPU", 0):
        log.info(
            "memory service %r: use_gpu_to_search is set but the cluster has no GPU; shards search on CPU", service
        )
        shard_gpus = 0.0  # asking for one would leave the actors unschedulable (a hang)
    handles: list[Any] = []
    placement: list[str | None] = [None] * num_shards
    if create:
        placement = shard_nodes(service, num_shards, ray.nodes(), shard_cpus, shard_bytes)
    for i in range(num_shards):
        name = shard_name(service, i)
        if not create:
            try:
                handles.append(ray.get_actor(name, namespace=RAY_NAMESPACE))
            except ValueError:
                raise HybridError(
                    f"memory service {service!r}: no shard actor {name!r} in Ray namespace "
                    f"{RAY_NAMESPACE!r} (is memory.num_shards right? was the service started?)"
                ) from None
            continue
        cls = ray.remote(MemoryShard)
        handles.append(
            cls.options(
                name=name,
                namespace=RAY_NAMESPACE,
                get_if_exists=True,
                lifetime="detached",
                max_restarts=-1,
                max_task_retries=0,
                num_cpus=shard_cpus,
                num_gpus=shard_gpus,
                memory=shard_bytes,
                scheduling_strategy=_affinity(placement[i]),
            ).remote(i, service, shard_bytes, threads or max(1, int(shard_cpus)), num_shards)
        )
    check_layout(service, num_shards, handles)
    return handles


def shard_nodes(
    service: str, num_shards: int, nodes: list[dict[str, Any]], shard_cpus: float, shard_bytes: int
) -> list[str | None]:
    """The node of each shard (Ray node ids): round robin over the alive nodes that have the CPUs and the memory of
    one shard, sorted by id (the same placement every time for the same cluster); None for each when there is one
    such node (Ray's default placement). A cluster where no node can hold a shard is one line, not a hang."""
    fit = sorted(
        n["NodeID"]
        for n in nodes
        if n.get("Alive")
        and n.get("Resources", {}).get("CPU", 0.0) >= shard_cpus
        and n.get("Resources", {}).get("memory", 0.0) >= shard_bytes
    )
    if not fit:
        most = max((n.get("Resources", {}).get("memory", 0.0) for n in nodes if n.get("Alive")), default=0.0)
        raise HybridError(
            f"memory service {service!r}: no node of the cluster can hold a shard of memory.shard_bytes="
            f"{shard_bytes} with memory.shard_cpus={shard_cpus:g} (the largest node has {int(most)} bytes of Ray "
            f"memory): lower memory.shard_bytes or add nodes"
        )
    if len(fit) == 1:
        return [None] * num_shards
    return [fit[i % len(fit)] for i in range(num_shards)]


def _affinity(node_id: str | None) -> Any:
    if node_id is None:
        return "DEFAULT"
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=node_id, soft=True)


def check_layout(service: str, num_shards: int, handles: list[Any], timeout_s: float = 60.0) -> None:
    """Every shard must have been made for `num_shards` shards: a namespace is routed by the count, so a client
    with another count reads the wrong shard (a stale copy or nothing) — a clear error instead."""
    import ray

    try:
        layouts = ray.get([h.layout.remote() for h in handles], timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise HybridError(
            f"memory service {service!r}: its shards did not answer within {timeout_s:g} s "
            f"(is the cluster overloaded, or the actors unschedulable?)"
        ) from None
    for i, lay in enumerate(layouts):
        recorded = int(lay.get("num_shards") or 0)
        if recorded and recorded != num_shards:
            raise HybridError(
                f"memory service {service!r} was built with memory.num_shards={recorded}, but this "
                f"run asks for {num_shards} (shard {i} says so): set memory.num_shards={recorded}, "
                f"or use another memory.service name"
            )


@dataclass
class _Layout:
    heads: int
    chunk_size: int
    dim: int
    parts: list[tuple[int, str]]  # (shard, stored name); one entry when the namespace is not split
    spec: Spec
    written: dict[str, str] = field(default_factory=dict)  # stored name -> incarnation it was written to
    next_id: int | None = None  # chunks ever added (split namespaces only)


class _SearchHandle:
    def __init__(self, store: RayShardedStore, calls: list[Call], shape: Shape, device: torch.device):
        self.store, self.calls, self.shape, self.device = store, calls, shape, device
        self._result: SearchResult | None = None

    def result(self) -> SearchResult:
        if self._result is None:
            self._result = self.store._gather(self.calls, self.shape, self.device)
        return self._result


class RayShardedStore:
    def __init__(
        self,
        capacity: int,
        chunk_size: int,
        num_shards: int = 2,
        service: str = "hybrid-memory",
        shard_bytes: int = 1 << 30,
        shard_cpus: float = 0.0,
        shard_gpus: float = 0.0,
        index: str = "auto",
        ivf_min_chunks: int = 65536,
        ivf_nlist: int = 0,
        ivf_nprobe: int = 16,
        use_gpu: bool = False,
        threads: int = 0,
        call_timeout_s: float = 60.0,
        on_shard_failure: str = "empty",
        shards: list[Any] | None = None,
    ):
        if capacity < 1 or chunk_size < 1 or num_shards < 1:
            raise ValueError(
                f"RayShardedStore: capacity {capacity}, chunk_size {chunk_size} and num_shards "
                f"{num_shards} must be >= 1"
            )
        if on_shard_failure not in ("empty", "error"):
            raise ValueError(f"on_shard_failure must be empty or error, got {on_shard_failure!r}")
        self.capacity, self.chunk_size, self.num_shards = capacity, chunk_size, num_shards
        self.service, self.shard_bytes = service, shard_bytes
        self.kind = index_kind(index, capacity, ivf_min_chunks)  # for the whole namespace, even when split
        self.ivf = (ivf_min_chunks, ivf_nlist, ivf_nprobe)
        self.use_gpu = use_gpu
        self.call_timeout_s, self.on_shard_failure = call_timeout_s, on_shard_failure
        self.shards = (
            shards
            if shards is not None
            else connect_shards(service, num_shards, shard_bytes, shard_cpus, shard_gpus if use_gpu else 0.0, threads)
        )
        self._layouts: dict[str, _Layout] = {}
        self._pending: list[tuple[int, Any, list[str]]] = []  # unresolved add calls: (shard, ref, stored names)
        self.adds = 0
        self.searches = 0
        self.failures = {"failed_calls": 0, "empty_rows": 0, "lost_namespaces": 0, "evicted_rows": 0}

    @classmethod
    def from_config(
        cls, memory_cfg: MemoryConfig, capacity: int, chunk_size: int, use_gpu: bool = False
    ) -> RayShardedStore:
        """The store the `memory` config section describes, for namespaces of `capacity` chunks."""
        return cls(
            capacity,
            chunk_size,
            num_shards=memory_cfg.num_shards,
            service=memory_cfg.service,
            shard_bytes=memory_cfg.shard_bytes,
            shard_cpus=memory_cfg.shard_cpus,
            shard_gpus=1.0 if use_gpu else 0.0,
            index=memory_cfg.faiss_index,
            ivf_min_chunks=memory_cfg.ivf_min_chunks,
            ivf_nlist=memory_cfg.ivf_nlist,
            ivf_nprobe=memory_cfg.ivf_nprobe,
            use_gpu=use_gpu,
            threads=memory_cfg.search_threads,
            call_timeout_s=memory_cfg.call_timeout_s,
            on_shard_failure=memory_cfg.on_shard_failure,
        )

    # -- layout ------------------------------------------------------------------------------------------------
    def _spec(self, capacity: int) -> Spec:
        return (capacity, self.kind, *self.ivf, self.use_gpu)

    def split_factor(self, heads: int, dim: int) -> int:
        """Parts a namespace of (heads, dim) is split into: the fewest that divide the capacity and fit a shard."""
        for parts in range(1, self.num_shards + 1):
            if (
                self.capacity % parts == 0
                and namespace_bytes(heads, self.capacity // parts, self.chunk_size, dim) <= self.shard_bytes
            ):
                return parts
        need = namespace_bytes(heads, self.capacity, self.chunk_size, dim)
        raise HybridError(
            f"memory service {self.service!r}: one namespace needs {need} bytes "
            f"({heads} heads x {self.capacity} chunks of {self.chunk_size}x{dim}), more than "
            f"memory.num_shards={self.num_shards} shards of memory.shard_bytes={self.shard_bytes} "
            f"can hold (split parts must divide the capacity)"
        )

    def _layout(self, ns: str, heads: int, dim: int, chunk_size: int | None = None) -> _Layout:
        lay = self._layouts.get(ns)
        if lay is None:
            parts = self.split_factor(heads, dim)
            home = home_shard(ns, self.num_shards)
            names = (
                [(home, ns)]
                if parts == 1
                else [((home + p) % self.num_shards, f"{ns}@part{p}of{parts}") for p in range(parts)]
            )
            lay = _Layout(heads, chunk_size or self.chunk_size, dim, names, self._spec(self.capacity // parts))
            self._layouts[ns] = lay
            return lay
        if (lay.heads, lay.dim) != (heads, dim) or (chunk_size is not None and lay.chunk_size != chunk_size):
            got = (heads, chunk_size or lay.chunk_size, dim)
            raise ValueError(
                f"namespace {ns!r} holds (heads, chunk_size, head_dim)="
                f"{(lay.heads, lay.chunk_size, lay.dim)}, got {got}"
            )
        return lay

    @staticmethod
    def _check_dtype(name: str, t: torch.Tensor) -> None:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if not t.dtype.is_floating_point:
            raise TypeError(f"{name}: expected a floating-point tensor (stored as float32), got {t.dtype}")

    # -- writing -----------------------------------------------------------------------------------------------
    def add(
        self, namespaces: Sequence[str], keys: torch.Tensor, chunk_keys: torch.Tensor, chunk_values: torch.Tensor
    ) -> None:
        for name, t in (("add: keys", keys), ("add: chunk_keys", chunk_keys), ("add: chunk_values", chunk_values)):
            self._check_dtype(name, t)
        check_add(namespaces, keys, chunk_keys, chunk_values)
        if len(set(namespaces)) != len(namespaces):
            raise ValueError("add: a namespace appears twice in one call")
        B, H, C, D = keys.shape
        c = chunk_keys.shape[3]
        if c != self.chunk_size:
            raise ValueError(f"add: chunks of {c} tokens, but the store was made for chunk_size {self.chunk_size}")
        k_np, ck_np, cv_np = (
            t.detach().to("cpu", torch.float32).contiguous().numpy() for t in (keys, chunk_keys, chunk_values)
        )
        per_shard: dict[int, list[tuple[Spec, str, np.ndarray, np.ndarray, np.ndarray]]] = {}
        for b, ns in enumerate(namespaces):
            lay = self._layout(ns, H, D, c)
            if len(lay.parts) == 1:
                shard, name = lay.parts[0]
                per_shard.setdefault(shard, []).append((lay.spec, name, k_np[b], ck_np[b], cv_np[b]))
                continue
            P = len(lay.parts)
            if lay.next_id is None:
                lay.next_id = self._next_id(lay)
            ids = lay.next_id + np.arange(C)
            for p, (shard, name) in enumerate(lay.parts):
                sel = np.nonzero(ids % P == p)[0]
                if len(sel):
                    per_shard.setdefault(shard, []).append(
                        (
                            lay.spec,
                            name,
                            np.ascontiguousarray(k_np[b][:, sel]),
                            np.ascontiguousarray(ck_np[b][:, sel]),
                            np.ascontiguousarray(cv_np[b][:, sel]),
                        )
                    )
            lay.next_id += C
        for shard, items in per_shard.items():
            self._pending.append((shard, self.shards[shard].add.remote(items), [it[1] for it in items]))
        self.adds += 1

    def _next_id(self, lay: _Layout) -> int:
        """Chunks ever added to a split namespace (asked of its parts, once per client)."""
        import ray

        refs = [self.shards[s].next_ids.remote([name]) for s, name in lay.parts]
        try:
            answers = ray.get(refs, timeout=self.call_timeout_s)
        except Exception as e:
            raise HybridError(
                f"memory service {self.service!r}: could not read a split namespace's size: {e}"
            ) from None
        return sum(a["next_ids"][name] for a, (_, name) in zip(answers, lay.parts))

    def flush(self) -> None:
        """Wait for the adds sent so far; raise their errors here."""
        self._resolve_pending(time.monotonic() + self.call_timeout_s)

    def _resolve_pending(self, deadline: float) -> None:
        import ray

        pending, self._pending = self._pending, []
        for shard, ref, names in pending:
            try:
                incarnation = ray.get(ref, timeout=max(0.0, deadline - time.monotonic()))
            except Exception as e:
                self._on_failure(shard, e, len(names), "add")
                continue
            self._note_incarnation(shard, names, incarnation)

    # -- failures ----------------------------------------------------------------------------------------------
    def _on_failure(self, shard: int, exc: BaseException, rows: int, what: str) -> None:
        import ray.exceptions as rex

        if isinstance(exc, rex.RayTaskError):  # the shard raised: a user or programming error, not a failure
            cause = getattr(exc, "cause", None)
            raise (cause if isinstance(cause, (ValueError, TypeError, HybridError)) else exc) from None
        if not isinstance(exc, (rex.RayActorError, rex.ActorUnavailableError, rex.GetTimeoutError)):
            raise exc
        kind = "timed out" if isinstance(exc, rex.GetTimeoutError) else "is dead or restarting"
        msg = (
            f"memory service {self.service!r}: shard {shard} ({shard_name(self.service, shard)}) {kind} "
            f"during {what}; {rows} row(s) get an empty memory"
        )
        self.failures["failed_calls"] += 1
        self.failures["empty_rows"] += rows if what == "search" else 0
        if self.on_shard_failure == "error":
            raise HybridError(msg.replace("get an empty memory", "failed") + f" ({type(exc).__name__})") from None
        log.warning("%s (%s)", msg, type(exc).__name__)

    def _note_incarnation(self, shard: int, names: list[str], incarnation: str) -> None:
        """Record which shard incarnation holds each stored name; a change means the data before it is lost."""
        for name in names:
            ns = name.split("@part", 1)[0]
            lay = self._layouts.get(ns)
            if lay is None:
                continue
            before = lay.written.get(name)
            if before is not None and before != incarnation:
                self.failures["lost_namespaces"] += 1
                msg = (
                    f"memory service {self.service!r}: shard {shard} was restarted; namespace {ns!r} lost what "
                    f"was written before (rebuild it: see docs/memory.md)"
                )
                lay.next_id = None  # re-read from the parts
                if self.on_shard_failure == "error":
                    lay.written[name] = incarnation
                    raise HybridError(msg)
                log.warning("%s", msg)
            lay.written[name] = incarnation

    # -- reading -----------------------------------------------------------------------------------------------
    def search_async(self, namespaces: Sequence[str], queries: torch.Tensor, k: int) -> _SearchHandle:
        self._check_dtype("search: queries", queries)
        check_search(namespaces, queries, k)
        B, H, Q, D = queries.shape
        q_np = queries.detach().to("cpu", torch.float32).contiguous().numpy()
        per_shard: dict[int, dict[Spec, Group]] = {}  # shard -> spec -> (names, rows, parts)
        for b, ns in enumerate(namespaces):
            lay = self._layouts.get(ns)
            if lay is not None and (lay.heads, lay.dim) != (H, D):
                raise ValueError(
                    f"search: queries have (heads, dim)=({H}, {D}), namespace {ns!r} holds ({lay.heads}, {lay.dim})"
                )
            if lay is None:
                lay = self._layout(ns, H, D)
                del self._layouts[ns]  # not written by this client: don't keep a layout for it
            for p, (shard, name) in enumerate(lay.parts):
                names, rows, parts = per_shard.setdefault(shard, {}).setdefault(lay.spec, ([], [], []))
                names.append(name)
                rows.append(b)
                parts.append((p, len(lay.parts)))
        calls: list[Call] = []
        for shard, groups in per_shard.items():
            payload = [(spec, names, q_np[rows]) for spec, (names, rows, _) in groups.items()]
            ref = self.shards[shard].search.remote(payload, k)
            calls.append((shard, ref, [(names, rows, parts) for names, rows, parts in groups.values()]))
        self.searches += 1
        return _SearchHandle(self, calls, (B, H, Q, k, self.chunk_size, D), queries.device)

    def search(self, namespaces: Sequence[str], queries: torch.Tensor, k: int) -> SearchResult:
        return self.search_async(namespaces, queries, k).result()

    def _gather(self, calls: list[Call], shape: Shape, device: torch.device) -> SearchResult:
        import ray

        B, H, Q, k, c, D = shape
        deadline = time.monotonic() + self.call_timeout_s
        self._resolve_pending(deadline)
        out = empty_result(B, H, Q, k, c, D, torch.device("cpu"))
        o_keys, o_values, o_mask, o_scores = (t.numpy() for t in (out.keys, out.values, out.mask, out.scores))
        split: dict[int, list[tuple[int, Row]]] = {}  # row -> [(part, (keys, values, mask, scores))]
        for shard, ref, groups in calls:
            try:
                answer = ray.get(ref, timeout=max(0.0, deadline - time.monotonic()))
            except Exception as e:
                self._on_failure(shard, e, sum(len(rows) for _, rows, _ in groups), "search")
                continue
            if answer.get("evicted"):
                self.failures["evicted_rows"] += len(answer["evicted"])
                log.warning(
                    "memory service %r: shard %d evicted namespace(s) %s to stay within memory.shard_bytes=%d; "
                    "they read as empty",
                    self.service,
                    shard,
                    ", ".join(answer["evicted"][:5]),
                    self.shard_bytes,
                )
            for (names, rows, parts), arrays in zip(groups, answer["results"]):
                self._note_incarnation(shard, names, answer["incarnation"])
                keys, values, mask, scores = arrays  # read-only NumPy views of Ray's object store
                for i, (b, (p, P)) in enumerate(zip(rows, parts)):
                    if P == 1:
                        o_keys[b], o_values[b], o_mask[b], o_scores[b] = keys[i], values[i], mask[i], scores[i]
                    else:
                        split.setdefault(b, []).append((p, (keys[i], values[i], mask[i], scores[i])))
        for b, answers in split.items():
            self._merge(out, b, [a for _, a in sorted(answers, key=lambda x: x[0])], k)
        return SearchResult(
            keys=out.keys.to(device),
            values=out.values.to(device),
            mask=out.mask.to(device),
            scores=out.scores.to(device),
        )

    @staticmethod
    def _merge(out: SearchResult, b: int, answers: list[Row], k: int) -> None:
        """Top k of the parts' top k by score (masked entries last)."""
        keys, values, mask, scores = (
            torch.from_numpy(np.concatenate([a[j] for a in answers], 2)) for j in range(4)
        )  # (H, Q, P*k, c, D) x2, (H, Q, P*k) x2
        ranked = scores.masked_fill(~mask, float("-inf"))
        top = torch.sort(ranked, dim=-1, descending=True, stable=True).indices[..., :k]  # (H, Q, k)
        idx = top[..., None, None].expand(*top.shape, *keys.shape[-2:])
        out.keys[b] = keys.gather(2, idx)
        out.values[b] = values.gather(2, idx)
        out.mask[b] = mask.gather(2, top)
        out.scores[b] = scores.gather(2, top)

    # -- housekeeping ------------------------------------------------------------------------------------------
    def reset(self, namespaces: Sequence[str] | None = None) -> None:
        """Forget these namespaces on the service (None: every namespace this client wrote). Does not wait."""
        names = list(self._layouts) if namespaces is None else list(namespaces)
        per_shard: dict[int, list[str]] = {}
        for ns in names:
            lay = self._layouts.pop(ns, None)
            parts = lay.parts if lay is not None else [(home_shard(ns, self.num_shards), ns)]
            for shard, name in parts:
                per_shard.setdefault(shard, []).append(name)
        for shard, stored in per_shard.items():
            self.shards[shard].reset.remote(stored)

    def shard_stats(self, list_namespaces: bool = False) -> list[dict[str, Any]]:
        import ray

        out = []
        for i, s in enumerate(self.shards):
            try:
                out.append(ray.get(s.stats.remote(list_namespaces), timeout=self.call_timeout_s))
            except Exception as e:
                out.append({"shard": i, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"})
        return out

    def namespace_info(self, namespace: str) -> dict[str, Any]:
        """Vectors and bytes of one namespace on the service; a clear error when it is unknown."""
        import ray

        per = ray.get([s.stats.remote(True) for s in self.shards], timeout=self.call_timeout_s)
        found = {
            name: info
            for st in per
            for name, info in st["namespace_list"].items()
            if name == namespace or name.startswith((namespace + "@part", namespace + "/"))
        }
        if not found:
            known = sorted({n.split("@part", 1)[0] for st in per for n in st["namespace_list"]})
            raise HybridError(
                f"memory service {self.service!r}: unknown namespace {namespace!r} "
                f"(known: {', '.join(known[:10]) or 'none'}{' ...' if len(known) > 10 else ''})"
            )
        return {
            "namespace": namespace,
            "parts": len(found),
            "vectors": sum(i["vectors"] for i in found.values()),
            "bytes": sum(i["bytes"] for i in found.values()),
        }

    def stored_chunks(self, namespace: str) -> int:
        try:
            return int(self.namespace_info(namespace)["vectors"])
        except HybridError:
            return 0

    def stats(self) -> dict[str, Any]:
        self.flush()
        shards = self.shard_stats()
        ok = [s for s in shards if "error" not in s]
        return {
            "backend": "ray",
            "service": self.service,
            "index": self.kind,
            "num_shards": self.num_shards,
            "namespaces": sum(s["namespaces"] for s in ok),
            "chunks": sum(s["vectors"] for s in ok),
            "bytes": sum(s["bytes"] for s in ok),
            "capacity_chunks": self.capacity,
            "adds": self.adds,
            "searches": self.searches,
            **self.failures,
            "dtypes": ["torch.float32"],
            "shards": shards,
        }

    def wait_ready(self, timeout_s: float | None = None) -> list[str]:
        """Block until every shard answers (e.g. after a restart); returns their incarnations."""
        import ray
        import ray.exceptions as rex

        deadline = time.monotonic() + (timeout_s or self.call_timeout_s)
        out = []
        for i, s in enumerate(self.shards):
            while True:
                try:
                    out.append(ray.get(s.ping.remote(), timeout=max(0.1, deadline - time.monotonic())))
                    break
                except rex.ActorUnavailableError:  # restarting: ask again
                    if time.monotonic() > deadline:
                        raise HybridError(
                            f"memory service {self.service!r}: shard {i} did not come back within "
                            f"{timeout_s or self.call_timeout_s} s"
                        ) from None
                    time.sleep(0.2)
        return out

    def shutdown(self) -> None:
        """Kill the shard actors for good (their memory is lost)."""
        import ray

        for s in self.shards:
            ray.kill(s, no_restart=True)


class SharedMemoryView:
    """Read-only view of one shared namespace (e.g. built by `hybrid memory build`) for every row: pass it as
    `model(ids, memory_store=SharedMemoryView(store, "repo"), namespaces=["repo"] * B)`. Writes are dropped, so
    evaluating never changes the shared memory; `strict` makes an unknown namespace an error up front."""

    def __init__(self, store: RayShardedStore, namespace: str, strict: bool = True):
        self.store, self.namespace = store, namespace
        if strict:
            store.namespace_info(namespace)

    def add(
        self, namespaces: Sequence[str], keys: torch.Tensor, chunk_keys: torch.Tensor, chunk_values: torch.Tensor
    ) -> None:
        return None

    def search_async(self, namespaces: Sequence[str], queries: torch.Tensor, k: int) -> _SearchHandle:
        return self.store.search_async([self._shared(ns) for ns in namespaces], queries, k)

    def search(self, namespaces: Sequence[str], queries: torch.Tensor, k: int) -> SearchResult:
        return self.search_async(namespaces, queries, k).result()

    def _shared(self, ns: str) -> str:
        """A row's layer namespace -> the shared one of the same layer."""
        _, layer = split_layer_namespace(ns)
        return self.namespace if layer is None else layer_namespace(self.namespace, layer)

    def reset(self, namespaces: Sequence[str] | None = None) -> None:
        return None

    def stats(self) -> dict[str, Any]:
        return self.store.stats()
