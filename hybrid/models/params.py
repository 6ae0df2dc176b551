"""Which parameters belong to the memory — defined once, for `freeze_base`, parameter counts and checkpoint
loading (a base checkpoint has none of them; they keep their no-op initialisation)."""

from __future__ import annotations

import re

# The memory's modules: LM2's internal memory and its norm, LongMem's per-head retrieval gate.
_MEMORY_MODULE = re.compile(r"^((?:.*?\.)?(?:internal_memory|memory_layernorm|self_attn\.memory_gate))(?:\.|$)")


def memory_module(name: str) -> str | None:
    """'model.layers.0.internal_memory.read_q.weight' -> 'model.layers.0.internal_memory'; None for the base."""
    m = _MEMORY_MODULE.match(name)
    return m.group(1) if m else None


def is_memory_param(name: str) -> bool:
    return memory_module(name) is not None
