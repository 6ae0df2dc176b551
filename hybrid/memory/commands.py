"""`hybrid memory stats|build`. Issue 6 fills these in."""

from hybrid.commands_util import not_implemented


def register(sub) -> None:
    p = sub.add_parser("memory", help="the shared external-memory service (stats, build)")
    p.set_defaults(func=not_implemented("hybrid memory", 6))
