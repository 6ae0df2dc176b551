"""The behaviours issue 4 lists under "How it must behave", each a test, on tiny models of both families."""

from __future__ import annotations

import pathlib

import pytest
import torch

from tests.hybrid.models.model_helpers import FAMILIES, open_gates, tiny_model

S = 16  # segment length of the tiny configs


@pytest.mark.parametrize("family", FAMILIES)
def test_causal_within_and_across_segments(family):
    model = tiny_model(family)
    open_gates(model)  # memory paths active, so a leak through them would show
    torch.manual_seed(1)
    ids = torch.randint(0, 97, (2, 4 * S))
    base = model(ids).logits
    for t in (5, S - 1, S, 2 * S + 3, 4 * S - 1):  # inside a segment, at boundaries, in later segments
        changed = ids.clone()
        changed[:, t] = (changed[:, t] + 1) % 97
        out = model(changed).logits
        assert torch.equal(out[:, :t], base[:, :t]), f"changing token {t} changed earlier logits"
        assert not torch.allclose(out[:, t], base[:, t]), "the changed token itself must matter"


@pytest.mark.parametrize("family", FAMILIES)
def test_rows_are_isolated(family):
    model = tiny_model(family)
    open_gates(model)
    torch.manual_seed(2)
    ids = torch.randint(0, 97, (3, 3 * S + 5))
    base = model(ids).logits
    other = ids.clone()
    other[1] = torch.randint(0, 97, (3 * S + 5,))
    out = model(other).logits
    assert torch.equal(out[0], base[0]) and torch.equal(out[2], base[2])
    assert not torch.allclose(out[1], base[1])
    alone = model(ids[:1]).logits  # and a row alone equals the row in a batch
    torch.testing.assert_close(alone[0], base[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_noop_at_init_on_pretrained_base_and_gates_get_gradient(family, tmp_path):
    base = tiny_model(family, use_internal_memory=False, use_external_memory=False)
    base.save_pretrained(tmp_path)
    cls = type(base)
    hybrid = cls.from_pretrained(tmp_path, use_internal_memory=True, use_external_memory=True)
    assert hybrid.config.use_internal_memory and hybrid.memory_parameters()
    torch.manual_seed(3)
    ids = torch.randint(0, 97, (2, 3 * S + 4))
    with torch.no_grad():
        diff = (hybrid(ids).logits - base(ids).logits).abs().max().item()
    assert diff <= 1e-5
    hybrid.train()
    hybrid(ids, labels=ids).loss.backward()
    gates = {
        n: p.grad
        for n, p in hybrid.named_parameters()
        if n.endswith("internal_memory.gate") or n.endswith("memory_gate")
    }
    assert len(gates) == 2 + 1  # one internal gate per layer, one external gate at the retrieval layer
    for name, grad in gates.items():
        assert grad is not None and grad.abs().sum() > 0, f"{name} gets no gradient at init"
    # After one optimizer step every memory parameter learns (write gates, slots, projections, …).
    opt = torch.optim.SGD([p for _, p in hybrid.memory_parameters()], lr=0.5)
    opt.step()
    opt.zero_grad()
    hybrid(ids, labels=ids).loss.backward()
    for name, p in hybrid.memory_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} gets no gradient after one step"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("memory", ["internal", "external", "none"])
def test_memory_carries_information_across_segments(family, memory):
    model = tiny_model(family, use_internal_memory=memory == "internal", use_external_memory=memory == "external")
    open_gates(model)
    torch.manual_seed(4)
    ids = torch.randint(0, 97, (1, 4 * S))
    base = model(ids).logits
    changed = ids.clone()
    changed[0, S + 3] = (changed[0, S + 3] + 7) % 97  # a token in segment 1
    out = model(changed).logits
    seg3 = slice(3 * S, 4 * S)
    if memory == "none":
        assert torch.equal(out[:, seg3], base[:, seg3])
    else:
        assert (out[:, seg3] - base[:, seg3]).abs().max() > 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_memory_state_fp32_under_bf16_autocast(family):
    from hybrid.memory.torch_store import TorchStore

    model = tiny_model(family)
    open_gates(model)
    store = TorchStore(model.config.chunks_capacity)
    ids = torch.randint(0, 97, (2, 3 * S))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, labels=ids, memory_store=store, namespaces=["a", "b"])
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)
    assert all(m.dtype == torch.float32 for m in out.internal_memory)
    stats = store.stats()
    assert stats["chunks"] > 0 and stats["dtypes"] == ["torch.float32"]
    out.loss.backward()


def test_no_cuda_calls_in_model_or_memory_code():
    root = pathlib.Path(__file__).resolve().parents[3] / "hybrid"
    for folder in ("models", "memory"):
        for path in (root / folder).glob("*.py"):
            assert ".cuda(" not in path.read_text(), f"{path} calls .cuda(): devices must follow the inputs"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_devices_follow_inputs_on_gpu():
    model = tiny_model("llama").to("cuda")
    open_gates(model)
    ids = torch.randint(0, 97, (2, 3 * S), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(ids, labels=ids)
    out.loss.backward()
    assert out.logits.device.type == "cuda" and all(m.dtype == torch.float32 for m in out.internal_memory)


@pytest.mark.parametrize("family", FAMILIES)
def test_joint_fusion_is_causal_isolated_reads_memory_and_is_local_attention_when_closed(family):
    """model.external_fusion=joint: one softmax over the segment's and the retrieved keys. Causal across segments,
    rows isolated, a token in segment 1 reaches segment 3 through the memory; with the gate closed it is the model
    without external memory (the same weights), and the closed gate still gets a gradient (it can open)."""
    joint = tiny_model(family, use_internal_memory=False, use_external_memory=True, external_fusion="joint")
    plain = tiny_model(family, use_internal_memory=False, use_external_memory=False)
    torch.manual_seed(5)
    ids = torch.randint(0, 97, (2, 4 * S))
    with torch.no_grad():
        closed = joint(ids).logits  # gates at 0 (their init)
    torch.testing.assert_close(closed, plain(ids).logits, atol=1e-5, rtol=0)
    joint.train()
    joint(ids, labels=ids).loss.backward()
    gate = next(p for n, p in joint.named_parameters() if n.endswith("memory_gate"))
    assert gate.grad is not None and gate.grad.abs().sum() > 0
    joint.eval()
    open_gates(joint, 0.9)
    with torch.no_grad():
        base = joint(ids).logits
        assert (base - closed).abs().max() > 1e-4  # the open gate reads memory
        for t in (S - 1, S, 2 * S + 3):
            changed = ids.clone()
            changed[:, t] = (changed[:, t] + 1) % 97
            out = joint(changed).logits
            assert torch.equal(out[:, :t], base[:, :t]), f"changing token {t} changed earlier logits"
        changed = ids.clone()
        changed[0, S + 3] = (changed[0, S + 3] + 7) % 97  # a token in segment 1 of row 0
        out = joint(changed).logits
        seg3 = slice(3 * S, 4 * S)
        assert (out[0, seg3] - base[0, seg3]).abs().max() > 1e-4 and torch.equal(out[1], base[1])


@pytest.mark.parametrize("fusion", ["gate", "joint"])
def test_retrieval_from_chunk_rows_equals_retrieval_from_copies(fusion):
    """The model reads a TorchStore's answer as rows of its banks (`search_chunks`: no per-query copies); a store
    without that (every other backend) hands over per-query copies (`search`). Same logits, same gradients."""
    from hybrid.memory.torch_store import TorchStore

    class CopiesOnly(TorchStore):
        search_chunks = None  # as FAISS and the Ray store: only the protocol's search

    results = []
    for store_class in (TorchStore, CopiesOnly):
        model = tiny_model("llama", external_fusion=fusion, use_internal_memory=False).train()
        open_gates(model, 0.5)
        model.store_factory = lambda: store_class(model.config.chunks_capacity)  # noqa: B023
        torch.manual_seed(5)
        ids = torch.randint(0, 97, (2, 4 * S))
        out = model(ids, labels=ids)
        out.loss.backward()
        q = model.model.layers[1].self_attn.q_proj.weight.grad
        results.append((out.logits.detach(), q.clone()))
    (logits, grad), (logits_copies, grad_copies) = results
    torch.testing.assert_close(logits, logits_copies, atol=1e-6, rtol=0)
    torch.testing.assert_close(grad, grad_copies, atol=1e-6, rtol=1e-5)
    assert grad.abs().sum() > 0
