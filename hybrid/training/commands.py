"""`hybrid train`, `hybrid eval`, `hybrid generate`. Issue 5 fills these in."""

from hybrid.commands_util import not_implemented


def register(sub) -> None:
    for name, text in (("train", "train a hybrid model with Ray Train"), ("eval", "evaluate a checkpoint"),
                       ("generate", "generate from a checkpoint")):
        p = sub.add_parser(name, help=text)
        p.set_defaults(func=not_implemented(f"hybrid {name}", 5))
