"""Helpers for the model tests. Tiny configurations (2 layers, 64 wide, 16-token segments) so every model test runs in about a second."""

from __future__ import annotations

import torch

TINY = dict(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            segment_length=16, memory_slots=4, num_mem_heads=2, external_memory_size=64, retrieval_k=2,
            chunk_size=2, retrieval_layers=[1])


def tiny_config(family: str = "llama", **kw):
    from hybrid.models.hybrid_gpt2 import HybridGPT2Config
    from hybrid.models.hybrid_llama import HybridLlamaConfig

    fields = dict(TINY)
    if family == "llama":
        fields.update(num_key_value_heads=2)
        fields.update(kw)
        return HybridLlamaConfig(**fields)
    fields.update(max_position_embeddings=64, intermediate_size=256)
    fields.update(kw)
    return HybridGPT2Config(**fields)


def tiny_model(family: str = "llama", seed: int = 0, **kw):
    from hybrid.models import model_class

    torch.manual_seed(seed)
    return model_class(family)(tiny_config(family, **kw)).eval()


def open_gates(model, value: float = 1.0) -> None:
    """Open the memory gates (zero at init, i.e. a no-op) as training would."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("internal_memory.gate") or name.endswith("memory_gate"):
                p.fill_(value)


FAMILIES = ["llama", "gpt2"]
