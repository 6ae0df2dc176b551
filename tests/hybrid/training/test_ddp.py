"""Ray Train with real workers (gloo), the data streamed through Ray Data or read by each worker itself (a small set,
`data.local_rows`): the same global batch gives the same losses in this process and on two workers with DDP or FSDP
— and a resumed streamed run ends where an uninterrupted one does.

The loss of a step is the global sum of output-token cross-entropies over the global token count (each rank scales
its summed loss; DDP and FSDP average the gradients), and global micro-batch g is the same examples for any number
of workers, so the runs compute the same quantities; what differs is float summation order (per-worker partial
sums, batch shapes in the matmuls). Tolerance: 1e-4 relative on every logged loss."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from hybrid.cli.config import load_config
from hybrid.core import storage
from hybrid.training import checkpoints as ckpt_io
from hybrid.training.train import train

COMMON = [
    "train.max_iters=4",
    "train.log_every=1",
    "train.eval_every=2",
    "train.keep_last=1",
    "train.warmup_iters=1",
    "train.learning_rate=3e-3",
    "data.max_length=32",
]


def losses(output_dir):
    text = storage.read_text(storage.join(output_dir, "metrics.jsonl"))
    return [(r["step"], r["loss"]) for r in map(json.loads, text.splitlines()) if "loss" in r]


@pytest.fixture(scope="module")
def mixed_folder(io_data, tmp_path_factory):
    """The training pairs as a folder of one JSONL and one Parquet file."""
    d = tmp_path_factory.mktemp("mixed")
    rows = [json.loads(line) for line in Path(io_data["train"]).read_text(encoding="utf-8").splitlines()]
    (d / "part-0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:30]))
    pq.write_table(pa.Table.from_pylist(rows[30:]), d / "part-1.parquet")
    return {"train": d, "validation": io_data["validation"]}


def run(data, out, tiny_overrides, *extra):
    return train(load_config(tiny_overrides(data, out, *COMMON, *extra)).recipe(), quiet=True)


@pytest.mark.slow
def test_in_process_ddp_and_fsdp_match_and_resume_exactly(
    ray_session, s3_server, mixed_folder, tmp_path, tiny_overrides
):
    """One global batch, bucketed by length (data.bucket_by_length), read from a folder of JSONL and Parquet: in this
    process, on two DDP workers (the stream through Ray Data) and on two FSDP workers (each reading the small set
    itself) the losses agree; a DDP run resumed from its step-3 checkpoint ends with the same weights; FSDP — its
    output on the tests' S3 server, no folder shared by the ranks: rank 1 uploads its own optimizer shard — resumes
    from its own sharded checkpoint there. (One test: every two-worker run costs ~25 s of start-up here, so the runs
    serve several checks.)"""
    fsdp_out = f"s3://{s3_server.bucket()}/fsdp"
    common = ["train.max_iters=6", "train.eval_every=3", "train.keep_last=2", "data.bucket_by_length=true"]
    two = [*common, "train.num_workers=2", "train.batch_size=2"]
    ray_data = ["data.local_rows=0"]  # through Ray Data, however small
    runs = {
        "in process": run(mixed_folder, tmp_path / "local", tiny_overrides, *common, "train.batch_size=4"),
        "2 workers ddp": run(mixed_folder, tmp_path / "ddp", tiny_overrides, *two, *ray_data, "train.strategy=ddp"),
        "2 workers fsdp": run(mixed_folder, fsdp_out, tiny_overrides, *two, "train.strategy=fsdp"),
    }
    curves = {name: losses(r.output_dir) for name, r in runs.items()}
    reference = curves["in process"]
    assert [s for s, _ in reference] == [1, 2, 3, 4, 5, 6] and reference[-1][1] < reference[0][1]  # it learns
    for name, curve in curves.items():
        assert [s for s, _ in curve] == [1, 2, 3, 4, 5, 6], name
        for (_, x), (_, y) in zip(reference, curve):
            assert math.isclose(x, y, rel_tol=1e-4), (name, reference, curve)
        assert runs[name].metrics["val_loss"] == pytest.approx(runs["in process"].metrics["val_loss"], rel=1e-4)
    # the FSDP checkpoint: whole weights for eval / from_pretrained, the optimizer sharded per rank
    ddp, fsdp = runs["2 workers ddp"], runs["2 workers fsdp"]
    assert fsdp.checkpoint == f"{fsdp_out}/checkpoint_step_000006"
    files = {name for name, _ in storage.list_dir(fsdp.checkpoint)}
    assert "model.safetensors" in files and "optimizer.pt" not in files
    shards = sorted(name for name, _ in storage.list_dir(f"{fsdp.checkpoint}/optimizer"))
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    fetched = ckpt_io.fetch_checkpoint(fsdp.checkpoint, dest=tmp_path / "fetched")
    a, b = load_file(fetched / "model.safetensors"), load_file(ddp.checkpoint / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)

    # resumed from step 3, DDP ends where the uninterrupted run did
    resume = f"train.resume={ddp.output_dir / 'checkpoint_step_000003'}"
    resumed = run(mixed_folder, tmp_path / "resumed", tiny_overrides, *two, *ray_data, "train.strategy=ddp", resume)
    assert [s for s, _ in losses(resumed.output_dir)] == [4, 5, 6]
    for (_, x), (_, y) in zip(curves["2 workers ddp"][3:], losses(resumed.output_dir)):
        assert x == pytest.approx(y, rel=1e-6)
    a, b = load_file(ddp.checkpoint / "model.safetensors"), load_file(resumed.checkpoint / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    # FSDP rerun into the same output with more steps: resumes from its sharded step-6 checkpoint (after our
    # retention removed a checkpoint Ray had been told about)
    more = run(
        mixed_folder,
        fsdp_out,
        tiny_overrides,
        *two,
        "train.strategy=fsdp",
        "train.max_iters=8",
        "train.eval_every=4",
    )
    assert more.checkpoint == f"{fsdp_out}/checkpoint_step_000008"
    assert [s for s, _ in losses(more.output_dir)] == [1, 2, 3, 4, 5, 6, 7, 8]
