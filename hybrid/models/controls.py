"""Eval-time controls that show a result comes through memory (issue 16).

    memory_read_gates(model)              [(name, parameter)]: every memory read gate — each internal memory's
                                          `gate` (its read is scaled by tanh(α)) and each retrieval layer's
                                          `memory_gate` (tanh(β) per head)
    set_memory_gates(model, opening)      every read gate's opening tanh(·) set to `opening`; returns the old values
    restore_memory_gates(model, saved)    puts back what `set_memory_gates` returned, bit for bit
    memory_gates_closed(model)            a context manager: every gate at 0 inside, restored on exit (also on error)

With every gate at 0 the memories are still written but nothing reads them: a segment's logits are exactly those
it would have without the segments before it. The other control, giving one row another row's memory before the
last segment, is `model(input_ids, memory_row_order=...)`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from hybrid.models.internal_memory import InternalMemory
from hybrid.models.layers import JointAttention


def memory_read_gates(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Every memory read gate of `model` (empty for a model without memory), found by module type, not by name."""
    gates = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, InternalMemory):
            gates.append((f"{prefix}gate", module.gate))
        elif isinstance(module, JointAttention) and module.retrieval:
            gates.append((f"{prefix}memory_gate", module.memory_gate))
    return gates


def set_memory_gates(model: nn.Module, opening: float) -> dict[str, torch.Tensor]:
    """Set every read gate to tanh(·) = `opening` (0 = closed, -1 < opening < 1). Returns the old parameter values
    by name, for `restore_memory_gates`."""
    if not -1.0 < opening < 1.0:
        raise ValueError(f"set_memory_gates: opening must be in (-1, 1) (it is a tanh), got {opening}")
    saved = {}
    with torch.no_grad():
        for name, p in memory_read_gates(model):
            saved[name] = p.detach().clone()
            p.fill_(math.atanh(opening))
    return saved


def restore_memory_gates(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """Put back the gate values `set_memory_gates` returned (in place: an optimizer's references stay valid)."""
    gates = dict(memory_read_gates(model))
    if gates.keys() != saved.keys():
        raise ValueError(f"restore_memory_gates: saved gates {sorted(saved)} are not the model's {sorted(gates)}")
    with torch.no_grad():
        for name, p in gates.items():
            p.copy_(saved[name])


@contextmanager
def memory_gates_closed(model: nn.Module) -> Iterator[nn.Module]:
    """Inside, no memory is read (every read gate is 0); on exit the gates are what they were."""
    saved = set_memory_gates(model, 0.0)
    try:
        yield model
    finally:
        restore_memory_gates(model, saved)
