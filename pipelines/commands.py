"""`hybrid repos …` and `hybrid pipeline …` (and the seed's console scripts). Issue 2 fills these in."""

from hybrid.commands_util import not_implemented


def register(sub) -> None:
    p = sub.add_parser("repos", help="add, list or remove repositories (manage-repos)")
    p.set_defaults(func=not_implemented("hybrid repos", 2))
    p = sub.add_parser("pipeline", help="data-generation stages and `pipeline run`")
    p.set_defaults(func=not_implemented("hybrid pipeline", 2))
