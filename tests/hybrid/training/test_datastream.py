"""The training stream (hybrid/training/datastream.py), in process: the order is a function of the seed and the
global batch alone — N workers × batch b see the examples of one worker × batch N·b, step for step — epochs cover
every example, JSONL and Parquet folders stream, bad records are found by the scan."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hybrid.core.errors import HybridError
from hybrid.data.io_pairs import data_files
from hybrid.data.tokenizer import train_word_level
from hybrid.training.datastream import StreamPlan, local_micro_batches, scan

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def pairs(n, start=0):
    return [
        {"input": " ".join(WORDS[(i + j) % 8] for j in range(1 + i % 7)), "output": f"w{i}"}
        for i in range(start, start + n)
    ]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A folder of two JSONL files and a Parquet file (23 + 9 + 14 = 46 records), plus export's stats.json."""
    d = tmp_path_factory.mktemp("stream")
    write_jsonl(d / "a.jsonl", pairs(23))
    write_jsonl(d / "b.jsonl", pairs(9, 100))
    pq.write_table(pa.Table.from_pylist(pairs(14, 200)), d / "c.parquet")
    (d / "stats.json").write_text("{}")
    return d


@pytest.fixture(scope="module")
def tok(folder):
    return train_word_level([t for r in pairs(23) + pairs(9, 100) + pairs(14, 200) for t in (r["input"], r["output"])])


def plan_for(folder, micro_batch, workers, steps=20, window=10, bucket=None, seed=5):
    files = data_files(folder)
    return StreamPlan.for_run(files, 46, steps, seed, window, micro_batch, workers, bucket, 32, "error")


def outputs(batch, tok):
    return [tok.decode(r["ids"][r["prompt_len"] : -1]) for r in batch]


@pytest.mark.parametrize("bucket", [None, 4])
def test_the_global_batch_is_the_same_for_any_number_of_workers(folder, tok, bucket):
    one = [outputs(b, tok) for b in local_micro_batches(plan_for(folder, 4, 1, bucket=bucket), tok)]
    assert len(one) >= 20
    for workers in (2, 4):
        per_rank = [
            [
                outputs(b, tok)
                for b in local_micro_batches(plan_for(folder, 4 // workers, workers, bucket=bucket), tok, rank, workers)
            ]
            for rank in range(workers)
        ]
        for step, batch in enumerate(one[:20]):
            assert [x for rank in per_rank for x in rank[step]] == batch, (workers, step)


def test_epochs_cover_every_example_and_are_reshuffled(folder, tok):
    stream = [x for b in local_micro_batches(plan_for(folder, 1, 1, steps=46 * 3), tok) for x in outputs(b, tok)]
    everything = sorted(r["output"] for r in pairs(23) + pairs(9, 100) + pairs(14, 200))
    epochs = [stream[i * 46 : (i + 1) * 46] for i in range(3)]
    assert all(sorted(e) == everything for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    again = [x for b in local_micro_batches(plan_for(folder, 1, 1, steps=46 * 3), tok) for x in outputs(b, tok)]
    assert again == stream  # a function of the plan
    other = [x for b in local_micro_batches(plan_for(folder, 1, 1, steps=46, seed=6), tok) for x in outputs(b, tok)]
    assert other != stream[:46]


def test_the_scan_counts_samples_and_finds_bad_records(folder, tmp_path):
    files = data_files(folder)
    assert [f.rsplit("/", 1)[1] for f in files] == ["a.jsonl", "b.jsonl", "c.parquet"]  # stats.json left out
    s = scan(files, "error", 10, seed=0, use_ray=False)
    assert (s.rows, s.per_file, s.skipped) == (46, [23, 9, 14], {})
    assert 8 <= s.sampled_records <= 12  # about the sample asked for, spread over the files by size
    assert s.sampled_records == len(set(s.sample[1::2]))  # distinct records (outputs are unique)
    bad = write_jsonl(tmp_path / "bad.jsonl", pairs(3))
    with open(bad, "a") as f:
        f.write('{"input": "x"}\nnot json\n')
    with pytest.raises(HybridError, match=r"bad\.jsonl:4: record has no 'output'"):
        scan([str(bad)], "error", 0, 0, use_ray=False)
    skipped = scan([str(bad)], "skip", 0, 0, use_ray=False)
    assert skipped.rows == 3 and skipped.skipped == {"bad_record": 1, "not_json": 1}
    assert data_files(str(folder / "*.jsonl")) == files[:2]  # globs
    with pytest.raises(HybridError, match="no file matches"):
        data_files(str(folder / "*.txt"))


def test_a_resumed_stream_skips_exactly_what_was_consumed(folder, tok):
    """What resume relies on: the micro-batches after position k are the same whether the stream was read from the
    start or not (the recipe drops the first step × accumulation micro-batches)."""
    plan = plan_for(folder, 2, 2)
    full = [outputs(b, tok) for b in local_micro_batches(plan, tok, 1, 2)]
    import itertools

    resumed = [outputs(b, tok) for b in itertools.islice(local_micro_batches(plan, tok, 1, 2), 7, None)]
    assert resumed == full[7:] and Counter(map(len, full)) == Counter({2: len(full)})


def test_a_validation_set_reads_the_same_through_ray_data_as_in_the_worker(folder, tok, ray_session):
    """A small validation set is read by each Ray Train worker itself (`read_on_worker`, `data.local_rows`), a large
    one streams through Ray Data (`ray_eval_dataset`): both give the same rows in the same order."""
    from hybrid.training.datastream import local_eval_rows, ray_eval_dataset, read_on_worker, table_rows

    assert read_on_worker(20_000, 20_000) and not read_on_worker(20_001, 20_000) and not read_on_worker(1, 0)
    import ray.data

    files = data_files(folder)
    ctx = ray.data.DataContext.get_current()
    saved, ctx.execution_options.preserve_order = ctx.execution_options.preserve_order, True  # as fit_on_ray sets it
    try:
        ds = ray_eval_dataset(files, tok.to_json(), 32, "error", 0, 2)
        through_ray = [r for b in ds.iter_batches(batch_size=1024, batch_format="pyarrow") for r in table_rows(b)]
    finally:
        ctx.execution_options.preserve_order = saved
    here = [{k: r[k] for k in ("ids", "prompt_len", "trunc")} for r in local_eval_rows(files, tok, 32, "error")]
    assert len(here) == 46 and through_ray == here
