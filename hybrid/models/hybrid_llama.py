"""The Llama family: RMSNorm, RoPE, SwiGLU, grouped-query attention — plus both memories.

from hybrid.models.hybrid_llama import HybridLlamaConfig, HybridLlamaForCausalLM
model = HybridLlamaForCausalLM(HybridLlamaConfig(hidden_size=64, num_hidden_layers=2, ...))
model = HybridLlamaForCausalLM.from_pretrained("path/to/hf-llama", use_external_memory=True, retrieval_k=4)
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from hybrid.config.model import ModelConfig
from hybrid.models.modeling import CausalLMOutput, HybridForCausalLM


class HybridLlamaConfig(ModelConfig):
    family: Literal["llama"] = Field("llama", description="base architecture")


class HybridLlamaForCausalLM(HybridForCausalLM):
    family = "llama"
    config_class = HybridLlamaConfig


__all__ = ["HybridLlamaConfig", "HybridLlamaForCausalLM", "CausalLMOutput"]
