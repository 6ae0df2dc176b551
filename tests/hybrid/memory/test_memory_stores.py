"""The external-memory stores: protocol, FIFO eviction, torch/FAISS agreement, masking, isolation."""

from __future__ import annotations

import math

import pytest
import torch

from hybrid.memory.faiss_store import FaissStore, index_kind
from hybrid.memory.store import MemoryStore, layer_namespace, split_layer_namespace
from hybrid.memory.torch_store import TorchStore

STORES = {"torch": lambda cap: TorchStore(cap), "faiss": lambda cap: FaissStore(cap, index="flat")}


def _chunks(B, H, C, c, D, start=0):
    """Chunks whose payload encodes their insertion number (so tests can tell which ones survive)."""
    keys = torch.randn(B, H, C, D)
    ck = torch.randn(B, H, C, c, D)
    cv = torch.arange(start, start + C, dtype=torch.float32).view(1, 1, C, 1, 1).expand(B, H, C, c, D).clone()
    return keys, ck, cv


@pytest.mark.parametrize("kind", STORES)
def test_eviction_keeps_the_newest_chunks(kind):
    cap = 8  # chunks; with chunk_size 2 that is external_memory_size 16 tokens
    store = STORES[kind](cap)
    assert isinstance(store, MemoryStore)
    for step in range(5):  # 5 adds of 3 chunks = 15 chunks: ids 7..14 survive
        store.add(["a", "b"], *_chunks(2, 2, 3, 2, 8, start=3 * step))
    assert store.stored_chunks("a") == cap
    q = torch.randn(2, 2, 5, 8)
    res = store.search(["a", "b"], q, k=cap)
    assert res.mask.all()
    seen = set(res.values[..., 0, 0].flatten().tolist())
    assert seen == {float(i) for i in range(7, 15)}
    big = _chunks(1, 2, 20, 2, 8, start=100)  # one add larger than the capacity keeps its newest chunks
    store.add(["c"], *big)
    res = store.search(["c"], torch.randn(1, 2, 3, 8), k=cap)
    assert set(res.values[..., 0, 0].flatten().tolist()) == {float(i) for i in range(112, 120)}


def test_torch_and_faiss_return_the_same_top_k():
    torch.manual_seed(0)
    t, f = TorchStore(32), FaissStore(32, index="flat")
    for step in range(3):
        chunks = _chunks(3, 2, 10, 4, 16, start=10 * step)  # 30 chunks into 32 slots, then more
        t.add(["x", "y", "z"], *chunks)
        f.add(["x", "y", "z"], *chunks)
    q = torch.randn(3, 2, 7, 16)
    rt, rf = t.search(["x", "y", "z"], q, 5), f.search(["x", "y", "z"], q, 5)
    assert torch.equal(rt.mask, rf.mask)
    torch.testing.assert_close(rt.scores, rf.scores, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(rt.values, rf.values)
    torch.testing.assert_close(rt.keys, rf.keys)
    # a different order of namespaces (the slab fast path does not apply) gives the same answers per row
    rt2 = t.search(["z", "x"], q[[2, 0]], 5)
    torch.testing.assert_close(rt2.values, rt.values[[2, 0]])


def _brute_force_top_k(banks: dict[str, list[tuple[torch.Tensor, torch.Tensor]]], ns: str, q: torch.Tensor, k: int):
    """(sorted top-k scores, their payload ids) of one namespace from what was added, newest `cap` kept."""
    keys = torch.stack([key for key, _ in banks[ns]], 1)  # (H, n, D)
    ids = torch.tensor([i for _, i in banks[ns]], dtype=torch.float32)  # (n,)
    scores = q @ keys.transpose(-1, -2)  # (H, Q, n)
    s, i = scores.topk(min(k, keys.shape[1]), -1)
    return s, ids[i]


def test_torch_store_searches_only_filled_slots_with_the_same_answers():
    """The store scores only the slots that hold a chunk (rows out of step, a ring that wrapped, a reset row):
    every answer equals a brute-force search over what each namespace holds."""
    torch.manual_seed(1)
    cap, H, c, D = 12, 2, 2, 8
    store, banks = TorchStore(cap), {ns: [] for ns in "abc"}
    n = 0

    def add(names, C):
        nonlocal n
        keys, ck, _ = _chunks(len(names), H, C, c, D)
        cv = torch.arange(n, n + len(names) * C, dtype=torch.float32).view(len(names), 1, C, 1, 1)
        store.add(names, keys, ck, cv.expand(-1, H, -1, c, D).clone())
        for b, ns in enumerate(names):
            banks[ns] = (banks[ns] + [(keys[b, :, j], n + b * C + j) for j in range(C)])[-cap:]
        n += len(names) * C

    def check(names, k):
        q = torch.randn(len(names), H, 5, D)
        res = store.search(names, q, k)
        for b, ns in enumerate(names):
            s, ids = _brute_force_top_k(banks, ns, q[b], k)
            got = res.mask[b].sum(-1)
            assert (got == s.shape[-1]).all(), (ns, got)
            torch.testing.assert_close(res.scores[b, ..., : s.shape[-1]], s)
            assert torch.equal(res.values[b, ..., : s.shape[-1], 0, 0], ids)
            assert (res.scores[b][~res.mask[b]] == 0).all()

    add(["a", "b", "c"], 3)  # in step: 3 of 12 slots used
    check(["a", "b", "c"], 4)
    add(["a"], 5)  # out of step: a holds 8, b and c 3
    check(["a", "b", "c"], 4)
    check(["c", "a"], 6)  # not the slab's order
    add(["b"], 14)  # more than the capacity: b wraps
    add(["a"], 7)  # a wraps past the end of the ring
    check(["a", "b", "c"], 5)
    store.reset(["c"])
    banks["c"] = []
    add(["c"], 2)  # c again from slot 0 while its neighbours are full
    check(["b", "c"], 3)


def test_torch_store_chunk_rows_are_the_search_answer():
    """`search_chunks` (the chosen chunks as rows of one copy of the banks, what the model reads from) gives exactly
    `search`'s answer, keeps it when later adds overwrite the ring, and declines what only `search` answers."""
    torch.manual_seed(4)
    store = TorchStore(10)
    for step in range(3):  # 12 chunks into 10 slots: the ring wrapped
        store.add(["a", "b"], *_chunks(2, 2, 4, 3, 8, start=4 * step))
    q = torch.randn(2, 2, 6, 8)
    want, got = store.search(["a", "b"], q, 4), store.search_chunks(["a", "b"], q, 4)
    assert got is not None and got.bank_keys.shape == (2 * 2 * 10, 3, 8)
    same = got.gathered()
    for name in ("keys", "values", "mask", "scores"):
        assert torch.equal(getattr(same, name), getattr(want, name)), name
    store.add(["a", "b"], *_chunks(2, 2, 4, 3, 8, start=100))  # overwrites slots the answer points at
    assert torch.equal(got.gathered().values, want.values)
    searches = store.searches
    assert store.search_chunks(["a", "new"], q, 4) is None  # a namespace never added to
    assert store.search_chunks(["a", "b"], q, 11) is None  # fewer chunks than k: search pads with masked ones
    assert store.searches == searches  # a declined search is not counted (the caller's `search` will be)
    assert TorchStore(4).search_chunks(["a"], q[:1], 2) is None


@pytest.mark.parametrize("kind", STORES)
def test_fewer_than_k_and_unknown_namespaces_are_masked(kind):
    store = STORES[kind](16)
    store.add(["a"], *_chunks(1, 2, 2, 2, 8))
    res = store.search(["a", "never"], torch.randn(2, 2, 3, 8), k=4)
    assert res.keys.shape == (2, 2, 3, 4, 2, 8)
    assert res.mask[0, :, :, :2].all() and not res.mask[0, :, :, 2:].any() and not res.mask[1].any()
    assert torch.isfinite(res.scores).all() and (res.scores[~res.mask] == 0).all()  # never -3.4e38
    assert res.keys.dtype == torch.float32
    empty = store.search(["nothing"], torch.randn(1, 2, 3, 8), k=4)
    assert not empty.mask.any()


@pytest.mark.parametrize("kind", STORES)
def test_namespaces_are_isolated_and_reset(kind):
    store = STORES[kind](16)
    store.add(["a", "b"], *_chunks(2, 1, 4, 1, 8))
    store.add(["b"], *_chunks(1, 1, 4, 1, 8, start=50))
    assert store.stored_chunks("a") == 4 and store.stored_chunks("b") == 8
    res = store.search(["a"], torch.randn(1, 1, 6, 8), k=16)
    assert set(res.values[res.mask][:, 0, 0].tolist()) <= {0.0, 1.0, 2.0, 3.0}
    store.reset(["a"])
    assert store.stored_chunks("a") == 0 and store.stored_chunks("b") == 8
    stats = store.stats()
    assert stats["namespaces"] == 1 and stats["chunks"] == 8 and stats["adds"] == 2 and stats["searches"] == 1
    store.reset()
    assert store.stats()["namespaces"] == 0


@pytest.mark.parametrize("kind", STORES)
def test_wrong_shapes_fail_loudly(kind):
    store = STORES[kind](8)
    with pytest.raises(ValueError, match="keys must be"):
        store.add(["a"], torch.zeros(2, 1, 1, 4), torch.zeros(2, 1, 1, 1, 4), torch.zeros(2, 1, 1, 1, 4))
    store.add(["a"], *_chunks(1, 1, 1, 1, 4))
    with pytest.raises(ValueError, match="holds"):
        store.add(["a"], *_chunks(1, 2, 1, 1, 4))
    with pytest.raises(ValueError, match="k must be"):
        store.search(["a"], torch.zeros(1, 1, 1, 4), 0)


def test_faiss_ivf_finds_what_flat_finds():
    torch.manual_seed(0)
    cap = 2048
    flat, ivf = FaissStore(cap, index="flat"), FaissStore(cap, index="ivf", ivf_nlist=16, ivf_nprobe=16)
    assert ivf.kind == "ivf"
    for step in range(3):  # 3 x 1000 chunks: IVF trains once 624 (39 x 16) are stored, then evicts FIFO
        chunks = _chunks(1, 1, 1000, 1, 32, start=1000 * step)
        flat.add(["n"], *chunks)
        ivf.add(["n"], *chunks)
    assert ivf._banks["n"].trained
    q = torch.randn(1, 1, 20, 32)
    a, b = flat.search(["n"], q, 4), ivf.search(["n"], q, 4)
    assert torch.equal(a.values, b.values)  # nprobe = nlist: exact
    assert set(b.values[..., 0, 0].flatten().tolist()) <= {float(i) for i in range(3000 - cap, 3000)}


def test_index_kind_is_one_rule_for_every_store():
    assert index_kind("auto", 100, 101) == "flat" and index_kind("auto", 101, 101) == "ivf"
    assert index_kind("ivf", 1, 101) == "ivf" and index_kind("flat", 10**6, 101) == "flat"
    assert FaissStore(64, index="auto", ivf_min_chunks=64).kind == "ivf"
    with pytest.raises(ValueError, match="memory.faiss_index must be auto, flat or ivf, got 'hnsw'"):
        FaissStore(64, index="hnsw")


def test_layer_namespaces_round_trip():
    assert layer_namespace("call3/row0", 4) == "call3/row0/layer4"
    assert split_layer_namespace("call3/row0/layer4") == ("call3/row0", 4)
    assert split_layer_namespace("a/layer1/layer12") == ("a/layer1", 12)  # the last layer part counts
    assert split_layer_namespace("repo") == ("repo", None)
    assert split_layer_namespace("repo/layers") == ("repo/layers", None)


def test_model_with_faiss_store_matches_torch_store():
    from hybrid.config.memory import MemoryConfig
    from hybrid.memory import store_factory
    from tests.hybrid.models.model_helpers import open_gates, tiny_model

    model = tiny_model("llama")
    open_gates(model)
    ids = torch.randint(0, 97, (2, 56))
    with torch.no_grad():
        ref = model(ids).logits
        model.store_factory = store_factory(
            MemoryConfig(backend="faiss"), model.config.chunks_capacity, model.config.chunk_size
        )
        out = model(ids).logits
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert not math.isnan(out.sum().item())


def _faiss_gpus() -> int:
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


@pytest.mark.skipif(_faiss_gpus() == 0, reason="needs a FAISS GPU build and a GPU")
def test_faiss_gpu_matches_torch():
    torch.manual_seed(0)
    t, g = TorchStore(16), FaissStore(16, use_gpu=True)
    assert g.stats()["gpu"]
    for step in range(3):
        chunks = _chunks(2, 2, 7, 2, 16, start=7 * step)
        t.add(["a", "b"], *chunks)
        g.add(["a", "b"], *chunks)
    q = torch.randn(2, 2, 5, 16)
    rt, rg = t.search(["a", "b"], q, 3), g.search(["a", "b"], q, 3)
    torch.testing.assert_close(rt.values, rg.values)
