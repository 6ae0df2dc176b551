"""Issue 16's controls that prove the route is memory, at tiny size: with every memory read gate closed the haystack
(the segments before the last) cannot change the last segment's logits; a row given another row's memory answers
as that row; and no row's memory leaks into another's.

The models are tiny (3 layers, 2 of them retrieving) with every weight perturbed from its init, so that no zero
bias or zero gate hides a path, and both gates opened to tanh(·) = 0.5."""

from __future__ import annotations

import pytest
import torch

from hybrid.memory.torch_store import TorchStore
from hybrid.models import memory_gates_closed, memory_read_gates, restore_memory_gates, set_memory_gates
from tests.hybrid.models.model_helpers import FAMILIES, tiny_model

S = 16  # segment length of the tiny configs
HAYSTACK = 3  # segments before the last one
LAST = slice(HAYSTACK * S, (HAYSTACK + 1) * S)  # the last segment's positions
MEMORIES = ["internal", "external", "both"]
TEETH = 1e-3  # well above float noise: the haystack visibly reaches the last segment


def control_model(family: str, memory: str = "both"):
    model = tiny_model(
        family,
        num_hidden_layers=3,
        retrieval_layers=[1, 2],
        use_internal_memory=memory != "external",
        use_external_memory=memory != "internal",
    )
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=generator))
    set_memory_gates(model, 0.5)
    return model


def haystacks_with_one_question(rows: int, seed: int) -> torch.Tensor:
    """(rows, 4S): different random haystacks, the same last segment in every row."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 97, (rows, (HAYSTACK + 1) * S), generator=generator)
    ids[1:, LAST] = ids[0, LAST]
    return ids


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("memory", MEMORIES)
@torch.no_grad()
def test_closed_gates_make_the_last_segment_blind_to_the_haystack(family, memory):
    model = control_model(family, memory)
    ids = haystacks_with_one_question(2, seed=1)
    other = ids.clone()
    other[:, : HAYSTACK * S] = haystacks_with_one_question(2, seed=2)[:, : HAYSTACK * S]  # only the haystack differs
    open_logits = model(ids).logits
    # Teeth: with the gates open the haystack reaches the last segment (through this model's memory, the only route).
    assert max_diff(model(other).logits[:, LAST], open_logits[:, LAST]) > TEETH
    gates = memory_read_gates(model)
    assert len(gates) == {"internal": 3, "external": 2, "both": 5}[memory]
    before = {name: p.clone() for name, p in gates}
    with memory_gates_closed(model):
        assert all(torch.all(torch.tanh(p) == 0) for _, p in gates)
        closed, closed_other = model(ids).logits, model(other).logits
    torch.testing.assert_close(closed_other[:, LAST], closed[:, LAST], atol=1e-6, rtol=0)
    assert max_diff(closed_other[:, : HAYSTACK * S], closed[:, : HAYSTACK * S]) > TEETH  # the inputs did differ
    # On exit the gates are back bit for bit, and so is the model's output.
    assert all(torch.equal(p, before[name]) for name, p in gates)
    assert torch.equal(model(ids).logits, open_logits)


def test_gates_come_back_after_an_error_and_bad_values_are_refused():
    model = control_model("llama")
    before = {name: p.clone() for name, p in memory_read_gates(model)}
    with pytest.raises(RuntimeError, match="inside"), memory_gates_closed(model):
        raise RuntimeError("inside")
    assert all(torch.equal(p, before[name]) for name, p in memory_read_gates(model))
    saved = set_memory_gates(model, -0.25)
    assert all(torch.allclose(torch.tanh(p), torch.tensor(-0.25)) for _, p in memory_read_gates(model))
    restore_memory_gates(model, saved)
    assert all(torch.equal(p, before[name]) for name, p in memory_read_gates(model))
    with pytest.raises(ValueError, match="opening"):
        set_memory_gates(model, 1.0)
    with pytest.raises(ValueError, match="saved gates"):
        restore_memory_gates(model, {})
    assert memory_read_gates(tiny_model("llama", use_internal_memory=False, use_external_memory=False)) == []


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("memory", MEMORIES)
@torch.no_grad()
def test_a_row_given_another_rows_memory_answers_as_that_row(family, memory):
    model = control_model(family, memory)
    ids = haystacks_with_one_question(3, seed=3)
    normal = model(ids).logits
    for a in range(3):  # teeth: the same question, different haystacks, different answers
        for b in range(a + 1, 3):
            assert max_diff(normal[a, LAST], normal[b, LAST]) > TEETH
    order = [2, 0, 1]  # a 3-cycle, so applying the inverse permutation by mistake would show
    moved = model(ids, memory_row_order=torch.tensor(order)).logits
    for row, source in enumerate(order):
        torch.testing.assert_close(moved[row, LAST], normal[source, LAST], atol=1e-5, rtol=0)
    assert torch.equal(moved[:, : HAYSTACK * S], normal[:, : HAYSTACK * S])  # the haystack itself ran as usual
    assert torch.equal(model(ids, memory_row_order=[0, 1, 2]).logits, normal)


@torch.no_grad()
def test_row_order_with_a_callers_store_and_bad_orders():
    model = control_model("llama")
    ids = haystacks_with_one_question(2, seed=4)
    capacity = model.config.chunks_capacity
    normal = model(ids, memory_store=TorchStore(capacity), namespaces=["a", "b"]).logits
    swapped = model(ids, memory_store=TorchStore(capacity), namespaces=["a", "b"], memory_row_order=[1, 0]).logits
    assert max_diff(normal[0, LAST], normal[1, LAST]) > TEETH
    torch.testing.assert_close(swapped[0, LAST], normal[1, LAST], atol=1e-5, rtol=0)
    torch.testing.assert_close(swapped[1, LAST], normal[0, LAST], atol=1e-5, rtol=0)
    for bad in ([0, 0], [0], [0, 1, 2], [1, 2], torch.tensor([[1, 0]]), torch.tensor([1.0, 0.0])):
        with pytest.raises(ValueError, match="memory_row_order"):
            model(ids, memory_row_order=bad)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("store", ["fresh", "caller's"])
@torch.no_grad()
def test_another_rows_haystack_never_reaches_a_row(family, store):
    """LM2's released code shares the memory across batch rows; here changing row 1's haystack leaves row 0's
    logits exactly as they were, and row 1's do change (the teeth)."""
    model = control_model(family)

    def run(ids):
        if store == "fresh":
            return model(ids).logits
        return model(ids, memory_store=TorchStore(model.config.chunks_capacity), namespaces=["r0", "r1"]).logits

    ids = haystacks_with_one_question(2, seed=5)
    other = ids.clone()
    other[1, : HAYSTACK * S] = haystacks_with_one_question(1, seed=6)[0, : HAYSTACK * S]
    base, changed = run(ids), run(other)
    assert torch.equal(changed[0], base[0])
    assert max_diff(changed[1, LAST], base[1, LAST]) > TEETH
