"""What the model must answer: JSON schemas sent as `response_format` (strict mode) and the pydantic models
that validate the answers. Model output is data: it is parsed and validated, never executed."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskItem(_Answer):
    description: str = Field(min_length=8, max_length=600)
    function_ids: list[str] = Field(default_factory=list, max_length=200)


class TaskAnswer(_Answer):
    tasks: list[TaskItem] = Field(min_length=1, max_length=20)


class ReasoningAnswer(_Answer):
    reasoning: str = Field(min_length=30, max_length=6000)


# Strict JSON-schema mode wants every property required and no additional properties.
TASKS_SCHEMA = {
    "type": "object",
    "properties": {
        "tasks": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "description": {
                        "type": "string",
                        "description": "one task, imperative, as a developer would be asked",
                    },
                    "function_ids": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "ids of the changed functions this task needs; [] for the whole commit",
                    },
                },
                "required": ["description", "function_ids"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["tasks"],
    "additionalProperties": False,
}

REASONING_SCHEMA = {
    "type": "object",
    "properties": {"reasoning": {"type": "string", "description": "first-person reasoning of the developer"}},
    "required": ["reasoning"],
    "additionalProperties": False,
}

PING_SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "word": {"type": "string"}},
    "required": ["ok", "word"],
    "additionalProperties": False,
}


class PingAnswer(_Answer):
    ok: bool
    word: str


SCHEMAS: dict[str, tuple[dict, type[BaseModel]]] = {
    "tasks": (TASKS_SCHEMA, TaskAnswer),
    "reasoning": (REASONING_SCHEMA, ReasoningAnswer),
    "ping": (PING_SCHEMA, PingAnswer),
}
