"""The `memory` section: which external-memory store backs the model. (Issues 4 and 6.)"""

from typing import Literal

from pydantic import Field

from hybrid.schema import Section


class MemoryConfig(Section):
    backend: Literal["torch", "faiss", "ray"] = Field("torch", description="external memory store")
