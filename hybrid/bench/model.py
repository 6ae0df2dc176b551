"""`hybrid bench model`: forward+backward tokens/s of the model variants, side by side, same dimensions.

Rows: `transformers`' LlamaForCausalLM (the anchor) and our base on one segment (same work); then our base,
internal memory only, external memory only, and both, on `--segments` segments (memory has something to carry).
Ratios: our base / transformers (target >= 1.1) and each hybrid / our base (target >= 0.9, issue 29).

Each step is timed twice: wall clock, and the process's CPU time. On a shared machine the wall clock also counts
the time other processes held the core; with `--threads 1` the CPU time does not, so its ratios are the steadier
ones there (on an idle machine the two agree). The load average is printed before and after.

`--compile` compiles every row's decoder layers (ours through `compile_blocks`, as `train.compile` does; the
transformers anchor's layers and final norm alike), so its ratios stay like-for-like; the warm-up steps compile.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from hybrid.cli import non_negative_int, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hidden-size", type=positive_int, default=256)
    p.add_argument("--layers", type=positive_int, default=4)
    p.add_argument("--heads", type=positive_int, default=8)
    p.add_argument("--kv-heads", type=positive_int, default=4)
    p.add_argument("--intermediate-size", type=positive_int, default=688)
    p.add_argument("--vocab-size", type=positive_int, default=8192)
    p.add_argument("--batch-size", type=positive_int, default=2)
    p.add_argument("--segment-length", type=positive_int, default=512)
    p.add_argument("--segments", type=positive_int, default=4, help="segments per sequence for the memory variants")
    p.add_argument("--retrieval-layers", type=positive_int, nargs="+", default=None, help="default: the middle layer")
    p.add_argument("--retrieval-k", type=positive_int, default=4)
    p.add_argument("--chunk-size", type=positive_int, default=4)
    p.add_argument("--memory-slots", type=positive_int, default=16)
    p.add_argument("--steps", type=positive_int, default=5, help="timed steps per variant (median reported)")
    p.add_argument("--warmup", type=non_negative_int, default=2)
    p.add_argument("--device", default="cuda_if_available", help="cpu, cuda, or cuda_if_available")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16 = autocast")
    p.add_argument(
        "--threads",
        type=non_negative_int,
        default=0,
        help="CPU threads for torch (0 = torch's default); 1 gives steadier numbers on a busy machine",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile every row's decoder blocks (ours as train.compile does; transformers' layers alike)",
    )
    p.add_argument("--no-transformers", action="store_true", help="skip the transformers anchor")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")


def _step(model, ids, autocast_dtype, device) -> tuple[float, float]:
    """One forward+backward: (wall seconds, process CPU seconds)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        out = model(ids, labels=ids)
    out.loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t0, time.process_time() - c0


def _load() -> str:
    """The 1/5/15-minute load average, as `uptime` shows it ('n/a' where the OS has none)."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def run(args: argparse.Namespace) -> int:
    import torch

    from hybrid.core.errors import HybridError
    from hybrid.models.hybrid_llama import HybridLlamaConfig, HybridLlamaForCausalLM

    if args.compile and args.warmup < 1:
        raise HybridError("--compile needs --warmup 1 or more: the first step of every row compiles")
    if args.threads:
        torch.set_num_threads(args.threads)
    dev_name = args.device
    if dev_name == "cuda_if_available":
        dev_name = "cuda" if torch.cuda.is_available() else "cpu"
    if dev_name == "cuda" and not torch.cuda.is_available():
        raise HybridError("--device cuda: no CUDA GPU here")
    device = torch.device(dev_name)
    autocast_dtype = torch.bfloat16 if args.dtype == "bf16" else None
    S, n_seg, B = args.segment_length, args.segments, args.batch_size
    base = dict(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=max(S * n_seg, 2048),
        segment_length=S,
        retrieval_k=args.retrieval_k,
        chunk_size=args.chunk_size,
        retrieval_layers=args.retrieval_layers,
        memory_slots=args.memory_slots,
        external_memory_size=S * n_seg,
    )
    torch.manual_seed(0)
    short = torch.randint(0, args.vocab_size, (B, S), device=device)
    long = torch.randint(0, args.vocab_size, (B, S * n_seg), device=device)
    entries: list[tuple[str, object, object]] = []

    def measure(name: str, model, ids) -> None:
        model.to(device).train()
        if args.compile:  # regional, like-for-like: each decoder layer (ours: retrieval attention stays eager)
            if hasattr(model, "compile_blocks"):
                model.compile_blocks()
            else:
                for layer in model.model.layers:
                    layer.compile()
                model.model.norm.compile()
        entries.append((name, model, ids))

    print(
        f"fwd+bwd on {device} ({args.dtype}), d={args.hidden_size} L={args.layers} H={args.heads}/"
        f"{args.kv_heads} V={args.vocab_size} B={B} segment={S}, memory variants on {n_seg} segments, "
        f"threads={torch.get_num_threads()}{', blocks compiled' if args.compile else ''}; load average {_load()}",
        flush=True,
    )
    load_before = _load()
    if not args.no_transformers:
        try:
            import transformers
        except ImportError:
            raise HybridError(
                "the transformers anchor needs `pip install transformers` (or --no-transformers)"
            ) from None
        hf_cfg = transformers.LlamaConfig(
            vocab_size=args.vocab_size,
            hidden_size=args.hidden_size,
            intermediate_size=args.intermediate_size,
            num_hidden_layers=args.layers,
            num_attention_heads=args.heads,
            num_key_value_heads=args.kv_heads,
            max_position_embeddings=max(S * n_seg, 2048),
            attn_implementation="sdpa",
        )
        torch.manual_seed(0)
        measure("transformers LlamaForCausalLM, 1 segment", transformers.LlamaForCausalLM(hf_cfg), short)
    cfg = lambda **kw: HybridLlamaConfig(**{**base, **kw})  # noqa: E731
    measure(
        "ours: base, 1 segment",
        HybridLlamaForCausalLM(cfg(use_internal_memory=False, use_external_memory=False)),
        short,
    )
    variants = [
        ("ours: base (no memory)", False, False),
        ("ours: internal memory only", True, False),
        ("ours: external memory only", False, True),
        ("ours: both memories (hybrid)", True, True),
    ]
    for name, internal, external in variants:
        torch.manual_seed(0)
        measure(
            f"{name}, {n_seg} segments",
            HybridLlamaForCausalLM(cfg(use_internal_memory=internal, use_external_memory=external)),
            long,
        )
    # Round-robin: one step of every variant in turn, so load from other processes hits all variants alike.
    times: dict[str, list[float]] = {name: [] for name, _, _ in entries}
    cpu_times: dict[str, list[float]] = {name: [] for name, _, _ in entries}
    for i in range(args.warmup + args.steps):
        for name, model, ids in entries:
            sec, cpu = _step(model, ids, autocast_dtype, device)
            if i >= args.warmup:
                times[name].append(sec)
                cpu_times[name].append(cpu)
    rows = []
    for name, _, ids in entries:
        med, best, cpu_med = statistics.median(times[name]), min(times[name]), statistics.median(cpu_times[name])
        rows.append(
            {
                "variant": name,
                "tokens": int(ids.numel()),
                "seconds_median": med,
                "seconds_min": best,
                "cpu_seconds_median": cpu_med,
                "tokens_per_s": ids.numel() / med,
                "tokens_per_s_best": ids.numel() / best,
                "tokens_per_cpu_s": ids.numel() / cpu_med,
            }
        )
        print(
            f"  {name:<44} {ids.numel() / med:>9.0f} tok/s median {ids.numel() / best:>9.0f} best "
            f"{ids.numel() / cpu_med:>9.0f} per CPU-s ({med * 1000:.0f} ms/step)",
            flush=True,
        )
    ratios: dict[str, float] = {}
    best_ratios: dict[str, float] = {}
    cpu_ratios: dict[str, float] = {}
    for key, out in (("tokens_per_s", ratios), ("tokens_per_s_best", best_ratios), ("tokens_per_cpu_s", cpu_ratios)):
        by = {r["variant"]: r[key] for r in rows}
        if not args.no_transformers:
            out["ours base / transformers"] = (
                by["ours: base, 1 segment"] / by["transformers LlamaForCausalLM, 1 segment"]
            )
        long_base = by[f"ours: base (no memory), {n_seg} segments"]
        for name, _, _ in variants[1:]:
            out[f"{name.split(': ')[1]} / ours base"] = by[f"{name}, {n_seg} segments"] / long_base
    print("ratios (median wall clock; [best step]; {median CPU time} — the last two steadier on a shared machine):")
    for k, v in ratios.items():
        print(f"  {k:<44} {v:>6.2f}x  [{best_ratios[k]:.2f}x]  {{{cpu_ratios[k]:.2f}x}}")
    load_after = _load()
    print(f"load average: {load_before} before the timed steps, {load_after} after")
    if args.json:
        from hybrid.core.io import atomic_write_json

        atomic_write_json(
            args.json,
            {
                "device": str(device),
                "dtype": args.dtype,
                "args": vars(args) | {"func": None},
                "rows": rows,
                "ratios": ratios,
                "ratios_best": best_ratios,
                "ratios_cpu": cpu_ratios,
                "load_average": {"before": load_before, "after": load_after},
            },
        )
        print(f"wrote {args.json}")
    return 0
