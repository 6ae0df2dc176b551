"""The base class of every configuration section: unknown keys and wrong types are errors."""

import yaml
from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    def to_yaml(self) -> str:
        """The section as YAML, keys in schema order (what `load_config` and `--config FILE` read back)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
