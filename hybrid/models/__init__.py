"""The hybrid model (issue 4). This module stays light to import (torch is imported inside the functions);
the model code lives in `hybrid.models.modeling`, `hybrid_llama`, `hybrid_gpt2`.

    build_model(model_cfg, vocab_size=None, memory_cfg=None)   the model a config describes (from `pretrained`
                                                               when set; freeze_base applied; store backend set)
    trainable_parameters(model)                                 [(name, param)] that the optimizer should get
    count_parameters(model)                                     {"total", "trainable", "memory"}
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from hybrid.memory.config import MemoryConfig
    from hybrid.models.config import ModelConfig
    from hybrid.models.modeling import HybridForCausalLM


def model_class(family: str):
    if family == "llama":
        from hybrid.models.hybrid_llama import HybridLlamaForCausalLM

        return HybridLlamaForCausalLM
    if family == "gpt2":
        from hybrid.models.hybrid_gpt2 import HybridGPT2ForCausalLM

        return HybridGPT2ForCausalLM
    from hybrid.errors import ConfigError

    raise ConfigError(f"model.family: unknown family {family!r} (llama or gpt2)")


def build_model(model_cfg: "ModelConfig", vocab_size: int | None = None,
                memory_cfg: "MemoryConfig | None" = None) -> "HybridForCausalLM":
    """The model `model_cfg` describes. With `pretrained`, sizes come from the checkpoint and the memory,
    segment and training fields from `model_cfg`; a `vocab_size` (the tokenizer's) larger than the checkpoint's
    grows its embeddings. Without, a random init with `vocab_size` replacing `model_cfg.vocab_size`."""
    from hybrid.models.checkpoint import MEMORY_FIELDS

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
        model = cls(cls.config_class(**{k: v for k, v in fields.items()}))
    if model_cfg.freeze_base:
        model.freeze_base()
    if memory_cfg is not None:
        from hybrid.memory import store_factory

        model.store_factory = store_factory(memory_cfg, model.config)
    return model


def trainable_parameters(model: Any) -> list[tuple[str, Any]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def count_parameters(model: Any) -> dict[str, int]:
    from hybrid.models.modeling import is_memory_param

    params = list(model.named_parameters())
    return {"total": sum(p.numel() for _, p in params),
            "trainable": sum(p.numel() for _, p in params if p.requires_grad),
            "memory": sum(p.numel() for n, p in params if is_memory_param(n))}
