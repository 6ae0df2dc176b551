"""The `model` section: base family, sizes and memory settings. (Owned by the model work; issue 4.)"""

from typing import Literal

from pydantic import Field

from hybrid.schema import Section


class ModelConfig(Section):
    family: Literal["llama", "gpt2"] = Field("llama", description="base architecture")
    pretrained: str | None = Field(None, description="local HuggingFace-format checkpoint folder to start from")
