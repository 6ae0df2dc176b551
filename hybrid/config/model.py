"""The `model` section: base family, sizes and memory settings.

One schema serves the YAML presets in `configs/model/`, the `key=value` overrides and the model classes
(`HybridLlamaConfig` / `HybridGPT2Config` are this class with the family fixed). Sizes use HuggingFace names.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from hybrid.config.section import PATH, Section
from hybrid.core import storage

# The HuggingFace architectures a base can come from (config.json `model_type` -> its `architectures` entry).
# Mistral and Qwen2 are Llama blocks with a sliding window / q,k,v biases: family `llama`, `hf_model_type` says which.
HF_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gpt2": "GPT2LMHeadModel",
}

# Config fields that describe the memory / segments / training rather than the base network: they come from the
# caller (overrides, the `model` config section), never from a base checkpoint.
MEMORY_FIELDS = (
    "segment_length",
    "use_internal_memory",
    "use_external_memory",
    "internal_memory_layers",
    "memory_slots",
    "num_mem_heads",
    "forget_bias",
    "memory_gate_init",
    "external_gate_init",
    "external_fusion",
    "external_memory_size",
    "retrieval_k",
    "chunk_size",
    "retrieval_layers",
    "use_gpu_to_search",
    "freeze_base",
    "dropout",
    "gradient_checkpointing",
)


class RopeScaling(Section):
    """Llama 3.x's frequency-dependent RoPE scaling (config.json `rope_scaling` / `rope_parameters` of type
    `llama3`): long wavelengths divided by `factor`, short ones kept, the ones between interpolated."""

    rope_type: Literal["llama3"] = Field("llama3", description="the only scaling supported")
    factor: float = Field(8.0, gt=0, description="divisor of the low frequencies")
    low_freq_factor: float = Field(1.0, gt=0, description="wavelengths above original/low_freq_factor are scaled")
    high_freq_factor: float = Field(4.0, gt=0, description="wavelengths below original/high_freq_factor are kept")
    original_max_position_embeddings: int = Field(8192, ge=1, description="the context length before scaling")


class ModelConfig(Section):
    # --- base ---------------------------------------------------------------------------------------------
    family: Literal["llama", "gpt2"] = Field("llama", description="base architecture")
    pretrained: str | None = Field(None, description="local HuggingFace-format checkpoint folder to start from", **PATH)
    vocab_size: int = Field(32000, ge=2, description="token vocabulary size (replaced by the tokenizer's)")
    hidden_size: int = Field(512, ge=8, description="model width d")
    intermediate_size: int = Field(1376, ge=1, description="FFN inner width (GPT-2: usually 4*hidden_size)")
    num_hidden_layers: int = Field(8, ge=1, description="number of decoder blocks")
    num_attention_heads: int = Field(8, ge=1, description="query heads")
    num_key_value_heads: int | None = Field(
        None, ge=1, description="key/value heads (grouped-query attention); null = num_attention_heads"
    )
    head_dim: int | None = Field(None, ge=1, description="per-head width; null = hidden_size / num_attention_heads")
    max_position_embeddings: int = Field(
        2048, ge=1, description="longest position (GPT-2's learned table size); positions restart each segment"
    )
    rms_norm_eps: float = Field(1e-5, gt=0, description="epsilon of RMSNorm (Llama) / LayerNorm (GPT-2)")
    rope_theta: float = Field(10000.0, gt=0, description="RoPE base (Llama)")
    attention_bias: bool = Field(False, description="biases on q/k/v/o projections (Llama; GPT-2 always has them)")
    qkv_bias: bool = Field(False, description="biases on the q/k/v projections only, not on o (Qwen2)")
    sliding_window: int | None = Field(
        None,
        ge=1,
        description="a token attends to at most this many latest tokens, itself included (Mistral); "
        "null = the whole segment",
    )
    rope_scaling: RopeScaling | None = Field(None, description="Llama 3.x RoPE scaling; null = plain RoPE")
    hf_model_type: Literal["llama", "mistral", "qwen2", "gpt2"] | None = Field(
        None, description="the HuggingFace model_type the base came from (export-hf writes it back); null = family"
    )
    tie_word_embeddings: bool = Field(False, description="share the input embedding with the LM head")
    hidden_act: Literal["silu", "gelu_new", "gelu"] | None = Field(
        None, description="FFN activation; null = the family's (silu for Llama, gelu_new for GPT-2)"
    )
    initializer_range: float = Field(0.02, gt=0, description="std of the normal init of random weights")
    # --- segments and memory --------------------------------------------------------------------------------
    segment_length: int = Field(
        512, ge=1, description="tokens per segment; attention sees only the current segment, memory carries the rest"
    )
    use_internal_memory: bool = Field(True, description="LM2-style gated memory slots in every block")
    use_external_memory: bool = Field(True, description="LongMem-style retrieval of past keys/values")
    internal_memory_layers: list[int] | None = Field(
        None,
        description="0-based layers with internal memory; null = every layer (LM2). Each costs ~12*d^2 "
        "parameters, so large bases may want only some",
    )
    memory_slots: int = Field(16, ge=1, description="internal memory slots N per sequence and layer")
    num_mem_heads: int = Field(4, ge=1, description="heads of the internal memory read/write cross-attention")
    forget_bias: float = Field(1.0, description="initial forget-gate bias of the internal memory (LM2, as in LSTMs)")
    memory_gate_init: float = Field(
        0.0,
        gt=-1,
        lt=1,
        description="initial opening tanh(α) of the internal memory's read gate; 0 = a no-op at "
        "init (right for a pretrained base), but then the read gets almost no gradient: "
        "0.5 lets it learn (docs/recall.md)",
    )
    external_memory_size: int = Field(
        8192, ge=1, description="external memory capacity in tokens per sequence and retrieval layer (oldest evicted)"
    )
    external_gate_init: float = Field(
        0.0,
        gt=-1,
        lt=1,
        description="initial opening tanh(β) of the external memory's read gate per head; 0 = a "
        "no-op at init (it opens by itself: its read is full-size)",
    )
    external_fusion: Literal["gate", "joint"] = Field(
        "gate",
        description="how a retrieval layer reads: gate = separate softmax mixed in by the per-head gate tanh(β) "
        "(LongMem); joint = one softmax over local and retrieved keys, the memory weighted by tanh(β) "
        "(each query decides; docs/code-memory.md)",
    )
    retrieval_k: int = Field(4, ge=1, description="chunks retrieved per query token")
    chunk_size: int = Field(4, ge=1, description="tokens per stored chunk (chunk key = mean of its keys); 1 = exact")
    retrieval_layers: list[int] | None = Field(
        None, description="0-based layers that retrieve from external memory; null = the middle layer"
    )
    use_gpu_to_search: bool = Field(False, description="FAISS store: search on the GPU when one is present")
    # --- training -------------------------------------------------------------------------------------------
    freeze_base: bool = Field(False, description="train only the memory parameters (LongMem's recipe)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on attention probabilities and residual branches")
    gradient_checkpointing: bool = Field(False, description="recompute block activations in backward")

    @field_validator("pretrained")
    @classmethod
    def _local_pretrained(cls, value: str | None) -> str | None:
        if value is not None:
            storage.refuse_uri(value, "a base model is read from a local folder: download it first")
        return value

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        kv = self.num_key_value_heads or self.num_attention_heads
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if self.num_attention_heads % kv:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of num_key_value_heads {kv}"
            )
        if self.hidden_size % self.num_mem_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_mem_heads {self.num_mem_heads}")
        if self.segment_length % self.chunk_size:
            raise ValueError(f"segment_length {self.segment_length} is not a multiple of chunk_size {self.chunk_size}")
        if self.external_memory_size < self.chunk_size:
            raise ValueError(
                f"external_memory_size {self.external_memory_size} is smaller than chunk_size {self.chunk_size}"
            )
        if self.family == "gpt2" and self.segment_length > self.max_position_embeddings:
            raise ValueError(
                f"segment_length {self.segment_length} exceeds GPT-2's max_position_embeddings "
                f"{self.max_position_embeddings}"
            )
        if self.hf_model_type is not None and (self.hf_model_type == "gpt2") != (self.family == "gpt2"):
            raise ValueError(f"hf_model_type {self.hf_model_type} does not fit family {self.family}")
        for name in ("retrieval_layers", "internal_memory_layers"):
            for layer in getattr(self, name) or []:
                if not 0 <= layer < self.num_hidden_layers:
                    raise ValueError(f"{name}: {layer} is not a layer of 0..{self.num_hidden_layers - 1}")
        return self

    # Derived values (not settable).
    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def activation(self) -> str:
        return self.hidden_act or ("silu" if self.family == "llama" else "gelu_new")

    @property
    def retrieval_layer_ids(self) -> list[int]:
        """Layers that retrieve (empty when the external memory is off)."""
        if not self.use_external_memory:
            return []
        if self.retrieval_layers is None:
            return [self.num_hidden_layers // 2]
        return sorted(set(self.retrieval_layers))

    @property
    def internal_memory_layer_ids(self) -> list[int]:
        """Layers with internal memory (empty when it is off)."""
        if not self.use_internal_memory:
            return []
        if self.internal_memory_layers is None:
            return list(range(self.num_hidden_layers))
        return sorted(set(self.internal_memory_layers))

    @property
    def chunks_capacity(self) -> int:
        """External memory capacity in chunks per (sequence, layer, kv head)."""
        return max(1, self.external_memory_size // self.chunk_size)

    @property
    def has_memory(self) -> bool:
        return bool(self.internal_memory_layer_ids) or bool(self.retrieval_layer_ids)
