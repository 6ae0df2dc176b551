"""`hybrid pipeline export` (datagen outputs → IO pairs).
`pipelines.commands` calls `register_export(pipeline_subparsers)`."""

from __future__ import annotations

import argparse


def register_export(sub) -> None:
    p = sub.add_parser("export", help="turn data/ast_dataset into datasets/io_pairs/{train,validation,test}.jsonl")
    p.add_argument("repos", nargs="*", help="repositories to export (default: all) and key=value config overrides")
    p.add_argument("--output-dir", "--output_dir", default="datasets/io_pairs", help="where the JSONL files go")
    p.add_argument("--kinds", default="fim,reasoning", help="comma-separated: fim, reasoning")
    p.add_argument("--validation-fraction", type=float, default=0.1, help="share of records for validation")
    p.add_argument("--test-fraction", type=float, default=0.1, help="share of records for test")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from hybrid.config import load_config, split_overrides
    from hybrid.data.export import describe, export_io_pairs
    from hybrid.errors import HybridError

    overrides, repos = split_overrides(args.repos)
    cfg = load_config(overrides)
    for name in ("validation_fraction", "test_fraction"):
        value = getattr(args, name)
        if not 0 <= value < 1:
            raise HybridError(f"--{name.replace('_', '-')}: must be in [0, 1), got {value}")
    result = export_io_pairs(cfg.pipeline.data_dir, args.output_dir,
                             kinds=tuple(k.strip() for k in args.kinds.split(",") if k.strip()),
                             validation_fraction=args.validation_fraction, test_fraction=args.test_fraction,
                             repos=repos or None)
    print(describe(result))
    return 0
