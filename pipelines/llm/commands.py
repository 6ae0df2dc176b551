"""LLM stage commands: `hybrid pipeline generate-tasks|generate-reasoning|test-llm` and the seed's console
scripts. Issue 3 fills these in. `pipelines.commands` calls `register(pipeline_subparsers)`."""

from hybrid.commands_util import not_implemented


def register(sub) -> None:
    for name in ("generate-tasks", "generate-reasoning", "test-llm"):
        p = sub.add_parser(name, help=f"{name} (LLM stage)")
        p.set_defaults(func=not_implemented(name, 3))
