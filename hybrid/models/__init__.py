"""The hybrid model: a Llama or GPT-2 base with LM2 internal memory and LongMem external memory.

    modeling.py      the decoder (blocks, segments, generation) shared by both families
    layers.py        norms, RoPE, MLP, the joint (local + retrieved) attention
    internal_memory.py  LM2's memory slots
    params.py        which parameters are the memory's
    controls.py      eval-time controls (issue 16): `memory_gates_closed(model)`, `set_memory_gates`, …
                     (the other control, swapping memory between rows, is forward's `memory_row_order`)
    pretrained.py    model folders: our safetensors format, HuggingFace Llama / Mistral / Qwen2 / GPT-2 in and out
                     (key-mapping tables, config.json translation, export-hf's folder)
    hybrid_llama.py, hybrid_gpt2.py   the family classes (`HybridLlamaConfig`, `HybridLlamaForCausalLM`, …)

and here:
    from_pretrained(path, **settings)                           any supported folder (ours, an HF base, an export-hf
                                                               folder); the family comes from its config.json
    model_class(family)                                         the family's class
    build_model(model_cfg, vocab_size=None, memory_cfg=None)   the model a config describes (from `pretrained`
                                                               when set; freeze_base applied; store backend set)
    trainable_parameters(model)                                 [(name, param)] that the optimizer should get
    count_parameters(model)                                     {"total", "trainable", "memory"}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hybrid.config.memory import MemoryConfig
from hybrid.config.model import MEMORY_FIELDS, ModelConfig
from hybrid.memory import store_factory
from hybrid.models.controls import memory_gates_closed, memory_read_gates, restore_memory_gates, set_memory_gates  # noqa: F401 (public: the benchmarks' controls)
from hybrid.models.hybrid_gpt2 import HybridGPT2ForCausalLM  # noqa: F401 (defines the family)
from hybrid.models.hybrid_llama import HybridLlamaForCausalLM  # noqa: F401 (defines the family)
from hybrid.models.modeling import HybridForCausalLM
from hybrid.models.params import is_memory_param


def from_pretrained(path: str | Path, **settings: Any) -> HybridForCausalLM:
    """The model in `path` — our checkpoint, a HuggingFace Llama / Mistral / Qwen2 / GPT-2 folder, or what
    `hybrid export-hf` wrote (its memory included) — with `settings` (memory settings, segment_length, …) on top:
    `from_pretrained("SmolLM2-135M", use_external_memory=True, retrieval_k=4)`."""
    return HybridForCausalLM.from_pretrained(path, **settings)


def model_class(family: str) -> type[HybridForCausalLM]:
    return HybridForCausalLM.for_family(family)


def build_model(
    model_cfg: ModelConfig, vocab_size: int | None = None, memory_cfg: MemoryConfig | None = None
) -> HybridForCausalLM:
    """The model `model_cfg` describes. With `pretrained`, sizes come from the checkpoint and the memory,
    segment and training fields from `model_cfg`; a `vocab_size` (the tokenizer's) larger than the checkpoint's
    grows its embeddings. Without, a random init with `vocab_size` replacing `model_cfg.vocab_size`."""
    cls = model_class(model_cfg.family)
    if model_cfg.pretrained:
        overrides = {k: getattr(model_cfg, k) for k in MEMORY_FIELDS}
        model = cls.from_pretrained(model_cfg.pretrained, **overrides)
        if vocab_size is not None and vocab_size > model.config.vocab_size:
            model.resize_token_embeddings(vocab_size)  # the special tokens our tokenizer adds to the base's
    else:
        fields = model_cfg.model_dump()
        if vocab_size is not None:
            fields["vocab_size"] = vocab_size
        model = cls(cls.config_class(**fields))
    if model_cfg.freeze_base:
        model.freeze_base()
    if memory_cfg is not None:
        c = model.config
        model.store_factory = store_factory(memory_cfg, c.chunks_capacity, c.chunk_size, c.use_gpu_to_search)
    return model


def trainable_parameters(model: Any) -> list[tuple[str, Any]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def count_parameters(model: Any) -> dict[str, int]:
    params = list(model.named_parameters())
    return {
        "total": sum(p.numel() for _, p in params),
        "trainable": sum(p.numel() for _, p in params if p.requires_grad),
        "memory": sum(p.numel() for n, p in params if is_memory_param(n)),
    }
