"""The internal memory computed in slot space equals plain multi-head attention with the same weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tests.hybrid.models.model_helpers import tiny_config


def _mha(q, k, v, heads, key_mask=None):
    B, Tq, d = q.shape
    split = lambda t: t.view(B, t.shape[1], heads, d // heads).transpose(1, 2)  # noqa: E731
    mask = None if key_mask is None else key_mask[:, None, None, :]
    return (
        F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask).transpose(1, 2).reshape(B, Tq, d)
    )


def test_read_and_write_match_reference_attention():
    from hybrid.models.internal_memory import InternalMemory

    torch.manual_seed(0)
    mem = InternalMemory(tiny_config("llama", memory_slots=5, num_mem_heads=4))
    with torch.no_grad():
        mem.gate.fill_(0.7)
        mem.out_gate.bias.normal_()
    x = torch.randn(3, 11, 64)
    m = torch.randn(3, 5, 64)
    e = mem.read_o(_mha(mem.read_q(x), mem.read_k(m), mem.read_v(m), 4))
    ref_read = torch.tanh(mem.gate) * torch.sigmoid(mem.out_gate(e)) * e
    torch.testing.assert_close(mem.read(x, m), ref_read, atol=1e-5, rtol=1e-4)

    key_mask = torch.ones(3, 11, dtype=torch.bool)
    key_mask[1, 7:] = False
    cand = _mha(mem.write_q(m), mem.write_k(x), mem.write_v(x), 4, key_mask)
    both = torch.cat([m, cand], -1)
    ref_write = torch.sigmoid(mem.input_gate(both)) * torch.tanh(cand) + torch.sigmoid(mem.forget_gate(both)) * m
    torch.testing.assert_close(mem.write(x, m, key_mask), ref_write, atol=1e-5, rtol=1e-4)
    assert mem.forget_gate.bias.mean().item() == 1.0  # remember by default (LM2 §3)


def test_initial_state_is_per_row_and_learned():
    from hybrid.models.internal_memory import InternalMemory

    mem = InternalMemory(tiny_config("llama"))
    state = mem.initial_state(3)
    assert state.shape == (3, 4, 64) and state.dtype == torch.float32
    state.sum().backward()
    assert mem.initial_memory.grad is not None
