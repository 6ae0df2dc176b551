"""Helpers for the model tests. Tiny configurations (2 layers, 64 wide, 16-token segments) so every model test
runs in about a second."""

from __future__ import annotations

import torch

TINY = dict(
    vocab_size=97,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    segment_length=16,
    memory_slots=4,
    num_mem_heads=2,
    external_memory_size=64,
    retrieval_k=2,
    chunk_size=2,
    retrieval_layers=[1],
)


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

# Tiny HuggingFace bases, built with `transformers` (the callers skip without it) and saved to a folder.
VOCAB = 101
SIZES = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
)
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}  # 16: wavelengths of 2π..~2e4 fall in all three bands


def hf_base(folder, kind: str, seed: int = 0, **kw):
    """A tiny random `transformers` model of `kind`, saved to `folder`; norms and biases random too, so a misplaced
    norm or a lost bias shows."""
    import transformers

    if kind == "gpt2":
        cfg = transformers.GPT2Config(
            **{
                **dict(
                    vocab_size=VOCAB,
                    n_embd=64,
                    n_layer=2,
                    n_head=4,
                    n_positions=64,
                    resid_pdrop=0.0,
                    embd_pdrop=0.0,
                    attn_pdrop=0.0,
                ),
                **kw,
            }
        )
    else:
        config_class = {
            "llama": transformers.LlamaConfig,
            "qwen2": transformers.Qwen2Config,
            "mistral": transformers.MistralConfig,
        }[kind]
        cfg = config_class(**{**SIZES, **kw})
    torch.manual_seed(seed)
    hf = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name or ".ln_" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                p.normal_(0, 0.1)
    hf.save_pretrained(folder, safe_serialization=True)
    return hf
