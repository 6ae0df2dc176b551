"""`torchrun --nproc_per_node=N -m hybrid.train [key=value …]`: the training recipe under torchrun, without Ray.

The same config, data stream, strategies (train.strategy) and checkpoints as `hybrid train`; torchrun's RANK /
WORLD_SIZE / LOCAL_RANK / MASTER_ADDR say where each process stands (train.num_workers is not used: the world is
torchrun's). Rank 0 prepares the run (scans the data, trains or loads the tokenizer, writes the run folder's
config) and hands the plan to the others; every rank then reads its own share of the stream. Ray Train
(`hybrid train train.num_workers=N`) stays the default and documented way.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from hybrid.core.errors import HybridError


def main(argv: Sequence[str] | None = None) -> int:
    import torch
    import torch.distributed as dist

    from hybrid.cli import error_line
    from hybrid.cli.config import load_config, split_overrides
    from hybrid.training import distributed
    from hybrid.training.launchers import run_local
    from hybrid.training.train import describe, prepare, result_of

    t0 = time.time()
    overrides, rest = split_overrides(sys.argv[1:] if argv is None else argv)
    spec, error, cfg = None, None, None
    try:
        if rest:
            raise HybridError(f"unexpected argument {rest[0]!r} (overrides look like train.batch_size=4)")
        cfg = load_config(overrides).recipe()
    except HybridError as e:
        error = error_line(e)
    use_gpu = torch.cuda.is_available() and (cfg is None or cfg.train.use_gpu is not False)
    ctx = distributed.detect(use_gpu)  # starts the process group (NCCL on GPUs, else gloo)
    try:
        if ctx.rank == 0 and error is None:
            try:
                spec = prepare(cfg, ctx.world, use_ray=False)
            except (HybridError, OSError) as e:  # one line, as `hybrid train` prints them (hybrid.cli.run_command)
                error = error_line(e)
        if error and ctx.rank == 0:
            # printed before the other ranks hear of it: once one of them exits, torchrun stops this one
            print(f"error: {error}", file=sys.stderr, flush=True)
        if ctx.distributed:  # rank 0's plan (or its error) to every rank
            box = [spec, error]
            dist.broadcast_object_list(box, src=0)
            spec, error = box
        if error:
            return 2
        try:
            metrics = run_local(spec)
        except (HybridError, OSError) as e:
            print(f"error (rank {ctx.rank}): {error_line(e)}", file=sys.stderr, flush=True)
            return 2
    finally:
        if ctx.distributed:
            dist.destroy_process_group()
    if ctx.rank == 0:
        print(describe(result_of(spec, metrics, t0)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
