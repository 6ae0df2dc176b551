"""`hybrid pipeline export` (datagen outputs → IO pairs). Issue 5 fills this in.
`pipelines.commands` calls `register_export(pipeline_subparsers)`."""

from hybrid.commands_util import not_implemented


def register_export(sub) -> None:
    p = sub.add_parser("export", help="turn data/ast_dataset into datasets/io_pairs/{train,validation,test}.jsonl")
    p.set_defaults(func=not_implemented("hybrid pipeline export", 5))
