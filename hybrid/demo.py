"""`hybrid demo`: the main job on the embedded default repository (the project's own git history)."""

from hybrid.commands_util import not_implemented


def register(sub) -> None:
    p = sub.add_parser("demo", help="the main job: pipeline → IO pairs → train → eval on the default repository")
    p.set_defaults(func=not_implemented("hybrid demo", 5))
