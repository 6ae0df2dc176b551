"""The base class of every configuration section: unknown keys and wrong types are errors."""

from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo

# Marks a setting that names a file or folder (`Field(..., **PATH)`): a command that runs the setting somewhere other
# than the folder it was started in (a Tune trial runs in its own folder) makes it absolute first
# (hybrid.config.recipe.with_absolute_paths). URIs and the setting's keywords (train.resume=auto) stay as they are.
PATH: dict[str, Any] = {"json_schema_extra": {"path": True}}


def is_path_setting(field: FieldInfo) -> bool:
    return bool((field.json_schema_extra or {}).get("path")) if isinstance(field.json_schema_extra, dict) else False


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    def to_yaml(self) -> str:
        """The section as YAML, keys in schema order (what `load_config` and `--config FILE` read back)."""
        return str(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))


def describe_error(err: ValidationError, prefix: str = "") -> str:
    """One line naming the key of pydantic's first complaint: `train.batch_size: Input should be … (got 'abc')`."""
    first = err.errors()[0]
    key = ".".join(str(p) for p in (*([prefix] if prefix else []), *first["loc"]))
    if first["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    got = first.get("input")
    got_text = "" if isinstance(got, dict) else f" (got {got!r})"
    more = f" [and {err.error_count() - 1} more]" if err.error_count() > 1 else ""
    msg = first["msg"].removeprefix("Value error, ")
    head, sep, rest = msg.partition(": ")
    if first["type"] == "value_error" and sep and head.isidentifier():  # a section's own check: "space: …"
        key, msg, got_text = f"{key}.{head}", rest, ""
    return f"{key}: {msg}{got_text}{more}"
