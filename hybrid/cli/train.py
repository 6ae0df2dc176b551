"""`hybrid train`, `hybrid eval`, `hybrid generate`, `hybrid export-hf`."""

from __future__ import annotations

import argparse
import json

from hybrid.cli import at_least, config_and_words, non_negative_int, positive_int
from hybrid.core.errors import HybridError
from hybrid.core.io import atomic_write_json, atomic_write_jsonl
from hybrid.core.text import read_text_lines


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a hybrid model with Ray Train",
        description="Train on IO pairs: hybrid train model=llama_hybrid data.train=PATH "
        "data.validation=PATH train.batch_size=4 train.max_iters=200 train.num_workers=2",
    )
    p.add_argument("overrides", nargs="*", help="key=value config overrides (group=name picks a preset)")
    p.add_argument(
        "--config",
        metavar="FILE",
        help="start from this whole config (a checkpoint's config.yaml, a sweep's best.yaml) instead of "
        "configs/'s defaults; the overrides apply on top",
    )
    p.add_argument("--json", metavar="FILE", help="also write the final metrics and paths as JSON")
    p.set_defaults(func=run_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint: loss, perplexity, exact match")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (or a training output folder → its best)")
    p.add_argument(
        "--test-data", "--test_data", dest="test_data", required=True, help="IO pairs: JSONL/Parquet file or folder"
    )
    p.add_argument("--json", metavar="FILE", help="write the metrics as JSON here")
    p.add_argument("--batch-size", type=positive_int, default=8, help="sequences per forward pass for the loss")
    p.add_argument(
        "--max-generate",
        type=at_least(-1),
        default=64,
        help="examples whose greedy generation is checked for exact match (0 = none, -1 = all)",
    )
    p.add_argument(
        "--max-new-tokens", type=positive_int, default=None, help="generation budget (default: reference length + 8)"
    )
    p.add_argument("--show", type=non_negative_int, default=3, help="examples to print")
    p.set_defaults(func=run_eval)

    p = sub.add_parser("generate", help="generate from a checkpoint (a prompt or a file of inputs)")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (or a training output folder → its best)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="the input text")
    src.add_argument(
        "--input-file",
        "--input_file",
        dest="input_file",
        help="JSONL/Parquet IO pairs (their `input`s) or a .txt file (one input per line)",
    )
    p.add_argument("--max-new-tokens", type=positive_int, default=64, help="tokens to generate at most")
    p.add_argument("--output", help="write {input, generated} JSONL here instead of printing")
    p.set_defaults(func=run_generate)

    p = sub.add_parser(
        "export-hf",
        help="write a checkpoint as a HuggingFace folder (+ its memory beside it)",
        description="The base in its own HuggingFace format (AutoModelForCausalLM loads it), the "
        "memory in memory.safetensors, the tokenizer and a README: hybrid export-hf "
        "--checkpoint outputs/run --output outputs/run-hf",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (or a training output folder → its best)")
    p.add_argument("--output", required=True, help="the folder to write (must not exist, or be empty)")
    p.set_defaults(func=run_export_hf)


def run_train(args: argparse.Namespace) -> int:
    from hybrid.training.recipe import peak_rss_mb
    from hybrid.training.train import describe, train

    cfg, rest = config_and_words(args.overrides, base=args.config, outputs=("train.output_dir",))
    if rest:
        raise HybridError(f"unexpected argument {rest[0]!r} (overrides look like train.batch_size=4)")
    result = train(cfg.recipe())
    print(describe(result))
    if args.json:
        atomic_write_json(
            args.json,
            {
                "output_dir": str(result.output_dir),
                "checkpoint": str(result.checkpoint),
                "best_checkpoint": str(result.best_checkpoint),
                "metrics": result.metrics,
                "data": result.data_counts,
                "wall_s": result.wall_s,
                "driver_peak_rss_mb": peak_rss_mb(),
            },
        )
    return 0


def print_eval(metrics: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"eval of {metrics['checkpoint']}", highlight=False, markup=False)
    table = Table(show_header=False)
    em = metrics["exact_match"]
    for key, value in (
        ("examples", metrics["examples"]),
        ("output tokens", metrics["output_tokens"]),
        ("loss", f"{metrics['loss']:.4f}"),
        ("perplexity", f"{metrics['perplexity']:.2f}"),
        (
            "exact match (teacher-forced, all)",
            "n/a"
            if metrics.get("teacher_forced_exact_match") is None
            else f"{metrics['teacher_forced_exact_match']:.1%} "
            f"({metrics['teacher_forced_exact_match_count']}/{metrics['examples']})",
        ),
        (
            "exact match (greedy generation)",
            "n/a" if em is None else f"{em:.1%} ({metrics['exact_match_count']}/{metrics['generated']})",
        ),
        ("inputs truncated on the left", metrics["input_truncated_left"]),
    ):
        table.add_row(key, str(value))
    console.print(table)
    width = max(60, console.width - 12)  # each text on one line of the terminal (a log's 80 columns too)
    for i, s in enumerate(metrics["samples"], 1):
        console.print(f"[bold]example {i}[/bold] ({'match' if s['match'] else 'no match'})", highlight=False)
        for label, text in (("input", s["input"]), ("expected", s["output"]), ("generated", s["generated"])):
            console.print(f"  {label:<9} {_one_line(text, width, end=label == 'input')}", highlight=False, markup=False)


def _one_line(text: str, width: int, end: bool) -> str:
    """`text` as a Python literal of at most `width` characters: its end (an input, whose last part the output
    continues) or its start, cut with "…"."""
    shown = repr(text[-width:] if end else text[:width])
    if len(shown) <= width:
        return shown
    return "…" + shown[-(width - 1) :] if end else shown[: width - 1] + "…"


def run_eval(args: argparse.Namespace) -> int:
    from hybrid.training.evaluate import evaluate

    max_generate = None if args.max_generate < 0 else args.max_generate
    metrics = evaluate(
        args.checkpoint,
        args.test_data,
        batch_size=args.batch_size,
        max_generate=max_generate,
        max_new_tokens=args.max_new_tokens,
        num_examples=args.show,
    )
    print_eval(metrics)
    if args.json:
        atomic_write_json(args.json, metrics)
        print(f"metrics → {args.json}")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from hybrid.data.io_pairs import read_inputs
    from hybrid.training.evaluate import generate_texts, load

    if args.prompt is not None:
        inputs = [args.prompt]
    elif args.input_file.endswith(".txt"):
        inputs = read_text_lines(args.input_file)
    else:
        inputs = read_inputs(args.input_file)
    ck = load(args.checkpoint)
    outputs = generate_texts(ck, inputs, args.max_new_tokens)
    if args.output:
        atomic_write_jsonl(args.output, [{"input": i, "generated": o} for i, o in zip(inputs, outputs)])
        print(f"{len(outputs)} generations → {args.output}")
    else:
        for o in outputs:
            print(o if len(inputs) == 1 else json.dumps(o, ensure_ascii=False))
    return 0


def run_export_hf(args: argparse.Namespace) -> int:
    from hybrid.training.export_hf import export_hf

    result = export_hf(args.checkpoint, args.output)
    print(
        f"exported {result['checkpoint']} ({result['model_type']}) → {result['output']}: {', '.join(result['files'])}"
    )
    return 0
