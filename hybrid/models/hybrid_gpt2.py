"""The GPT-2 family: LayerNorm, learned positions, GELU MLP — plus both memories.

from hybrid.models.hybrid_gpt2 import HybridGPT2Config, HybridGPT2ForCausalLM
model = HybridGPT2ForCausalLM.from_pretrained("path/to/hf-gpt2", use_internal_memory=True)
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from hybrid.config.model import ModelConfig
from hybrid.models.modeling import CausalLMOutput, HybridForCausalLM


class HybridGPT2Config(ModelConfig):
    family: Literal["gpt2"] = Field("gpt2", description="base architecture")
    intermediate_size: int = Field(2048, ge=1, description="FFN inner width (GPT-2: usually 4*hidden_size)")
    max_position_embeddings: int = Field(1024, ge=1, description="learned position table size")
    tie_word_embeddings: bool = Field(True, description="share the input embedding with the LM head")


class HybridGPT2ForCausalLM(HybridForCausalLM):
    family = "gpt2"
    config_class = HybridGPT2Config


__all__ = ["HybridGPT2Config", "HybridGPT2ForCausalLM", "CausalLMOutput"]
