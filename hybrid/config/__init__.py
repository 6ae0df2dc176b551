"""Configuration sections: the leaves of the layer picture (docs/architecture.md).

One pydantic model per section of `configs/` — `model` (model.py), `train` and `data` (train.py), `memory`
(memory.py), `pipeline` (pipeline.py), `llm` (llm.py) — each rejecting unknown keys and wrong types, and
`RecipeConfig` (recipe.py), the sections one training run reads. These modules import nothing of the project
but `Section` (section.py). Composing the YAML files and the `key=value` overrides into the whole configuration
is the command layer's job (`hybrid.cli.config`).
"""
