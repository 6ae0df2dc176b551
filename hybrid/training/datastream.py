"""The training data as one stream, the same on one worker, many workers, or torchrun.

A plan (`StreamPlan`) fixes the order of every example a run will see, as a function of the seed and the global
micro-batch size G alone — never of the number of workers:

    epochs      epoch e reads the files in a permutation seeded by (seed, e), each file's records in order;
                the epochs follow each other in one stream (as many as the run's steps need)
    windows     the stream is cut into windows of `data.shuffle_window` rows; each window (each epoch's part of it:
                epochs never mix) is permuted by a generator seeded by (seed, its first row) — or, with
                `data.bucket_by_length`, grouped into global micro-batches of G examples of one length bucket (a
                bucket's last batch is filled from the start of the same bucket), in a seeded order
    blocks      the ordered stream is cut into blocks of B = train.batch_size rows (one worker's micro-batch), and
                block k goes to worker k mod W

so global micro-batch g is blocks gW … gW+W-1 = rows gG … gG+G-1 for every W with B·W = G: N workers × batch b
train on the same examples, step for step, as one worker × batch N·b, and a resumed run that skips the micro-batches
it already consumed sees what an uninterrupted one would.

Two executors of a plan:

    Ray Data (Ray Train workers)   from_items(the files of each epoch) → map_batches(read + tokenize, on the
        cluster's CPUs) → repartition(window rows, strict) → map_batches(order a window) → repartition(B rows,
        strict); Ray Train's streaming split with `preserve_order` hands block k to worker k mod W (its splitter
        gives each block to the worker with the fewest rows so far, lowest rank first)
    in process (train.num_workers=0, torchrun)   the same functions as generators; rank r keeps blocks k ≡ r (mod W)

Neither holds the data set: the driver keeps the file list, a Ray Data task one file's window, a worker one block.
Before any of it, `scan` reads every file once (on the cluster's CPUs under Ray) to count the usable records, find
the first bad one (file:line) and sample the texts the tokenizer is trained on.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from hybrid.core.errors import HybridError
from hybrid.data.encode import fit_to_length
from hybrid.data.io_pairs import iter_pairs, shown
from hybrid.data.tokenizer import TextTokenizer

TRUNCATED = ("", "input_truncated_left", "output_truncated")  # the `trunc` column: index into this
ENCODE_CHUNK = 256  # records tokenized together (the tokenizer's batch encoding runs in parallel)
UID_LINE_BITS = 40  # uid = file index << 40 | line: unique per record


# -- the pre-pass ---------------------------------------------------------------------------------------------------
@dataclass
class FileScan:
    file: str
    rows: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    error: str | None = None  # the first bad record (on_bad="error")
    sample: list[str] = field(default_factory=list)  # texts for the tokenizer (inputs and outputs)


def scan_file(path: str, index: int, on_bad: str, sample_size: int, seed: int) -> dict[str, Any]:
    """Read one file: usable records, skips by reason, the first error, and a uniform sample (reservoir, seeded by
    (seed, index)) of up to `sample_size` records' texts."""
    rng = np.random.default_rng([seed, index])
    skipped: Counter = Counter()
    reservoir: list[tuple[str, str]] = []
    out = FileScan(path)
    try:
        for n, (_, record) in enumerate(iter_pairs(path, on_bad, skipped)):
            out.rows += 1
            if len(reservoir) < sample_size:
                reservoir.append((record["input"], record["output"]))
            elif sample_size:
                j = int(rng.integers(0, n + 1))
                if j < sample_size:
                    reservoir[j] = (record["input"], record["output"])
    except HybridError as e:
        out.error = str(e)
    out.skipped = dict(skipped)
    out.sample = [text for pair in reservoir for text in pair]
    return asdict(out)


@dataclass
class Scan:
    """The pre-pass over a data set: what training and validation will stream."""

    files: list[str]
    rows: int
    per_file: list[int]
    skipped: dict[str, int]
    sample: list[str]  # tokenizer texts (2 per sampled record)

    @property
    def sampled_records(self) -> int:
        return len(self.sample) // 2


def scan(files: list[str], on_bad: str, sample_records: int, seed: int, use_ray: bool) -> Scan:
    """Scan every file (Ray tasks on the cluster's CPUs, or in this process); the first error in file order is
    raised as one line. The tokenizer sample takes about `sample_records` records, spread over the files in
    proportion to their sizes."""
    per_file_sample = max(1, math.ceil(sample_records / max(1, len(files)))) if sample_records else 0
    args = [(f, i, on_bad, per_file_sample, seed) for i, f in enumerate(files)]
    if use_ray:
        import ray

        # "DEFAULT": not in the placement group of a caller that has one (a Tune trial), whose bundle is tiny
        task = ray.remote(num_cpus=0.5, scheduling_strategy="DEFAULT")(scan_file)
        results = ray.get([task.remote(*a) for a in args])
    else:
        results = [scan_file(*a) for a in args]
    for r in results:
        if r["error"]:
            raise HybridError(r["error"])
    rows = sum(r["rows"] for r in results)
    skipped: Counter = Counter()
    for r in results:
        skipped.update(r["skipped"])
    if rows == 0:
        where = files[0] if len(files) == 1 else f"{len(files)} files"
        what = f" ({sum(skipped.values())} bad records skipped)" if skipped else ""
        raise HybridError(f"{shown(where)}: no IO pairs{what}")
    # each file's share of the sample follows its size: quota_f = sample_records · rows_f / rows
    sample: list[str] = []
    for r in results:
        quota = round(sample_records * r["rows"] / rows) if sample_records else 0
        sample.extend(r["sample"][: 2 * quota])
    return Scan(
        files=list(files), rows=rows, per_file=[r["rows"] for r in results], skipped=dict(skipped), sample=sample
    )


# -- the plan ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StreamPlan:
    files: tuple[str, ...]
    rows_per_epoch: int
    epochs: int
    seed: int
    window: int  # rows per shuffle window
    micro_batch: int  # B: one worker's micro-batch
    global_batch: int  # G = B · workers
    bucket_width: int | None  # tokens per length bucket (the model's segment length), None = no bucketing
    max_length: int
    on_bad: str

    @classmethod
    def for_run(
        cls,
        files: list[str],
        rows: int,
        micro_batches: int,
        seed: int,
        window: int,
        micro_batch: int,
        workers: int,
        bucket_width: int | None,
        max_length: int,
        on_bad: str,
    ) -> StreamPlan:
        """A plan whose stream holds at least `micro_batches` global micro-batches."""
        G = micro_batch * max(1, workers)
        epochs = max(1, math.ceil(micro_batches * G / rows))
        return cls(tuple(files), rows, epochs, seed, window, micro_batch, G, bucket_width, max_length, on_bad)


def epoch_items(plan: StreamPlan) -> list[dict[str, Any]]:
    """(epoch, file index, file) in stream order: each epoch's files in a permutation seeded by (seed, epoch)."""
    items = []
    for epoch in range(plan.epochs):
        order = np.random.default_rng([plan.seed, epoch, 7]).permutation(len(plan.files))
        items += [{"epoch": epoch, "file_index": int(i), "file": plan.files[i]} for i in order]
    return items


def window_order(
    lengths: np.ndarray, key: tuple[int, int], seed: int, global_batch: int, bucket_width: int | None
) -> np.ndarray:
    """Row indices for one window (repeats allowed): a seeded permutation, or — bucketing — global micro-batches of
    one length bucket each (bucket = ceil(length / bucket_width)), every batch full, in a seeded order."""
    rng = np.random.default_rng([seed, key[0], key[1]])
    n = len(lengths)
    if not bucket_width:
        return rng.permutation(n)
    buckets = -(-np.asarray(lengths) // bucket_width)
    batches: list[np.ndarray] = []
    for b in np.unique(buckets):
        members = np.flatnonzero(buckets == b)
        members = members[rng.permutation(len(members))]
        n_batches = -(-len(members) // global_batch)
        batches += list(np.resize(members, n_batches * global_batch).reshape(n_batches, global_batch))
    return np.concatenate([batches[i] for i in rng.permutation(len(batches))])


def order_window(
    lengths: np.ndarray, epochs: np.ndarray, uids: np.ndarray, seed: int, global_batch: int, bucket_width: int | None
) -> np.ndarray:
    """Row indices for one window of the stream: each run of rows of one epoch (a window at an epoch's end holds the
    next epoch's first rows, which stay after it) ordered by `window_order`, keyed by its first row."""
    starts = [0] + [i for i in range(1, len(epochs)) if epochs[i] != epochs[i - 1]] + [len(epochs)]
    parts = [
        a + window_order(lengths[a:b], (int(epochs[a]), int(uids[a])), seed, global_batch, bucket_width)
        for a, b in zip(starts, starts[1:])
    ]
    return np.concatenate(parts)


# -- reading and tokenizing -------------------------------------------------------------------------------------------
_TOKENIZERS: dict[str, TextTokenizer] = {}


def _tokenizer(tokenizer_json: str) -> TextTokenizer:
    """The tokenizer of this JSON, built once per process (Ray reuses its worker processes across tasks)."""
    key = hashlib.sha1(tokenizer_json.encode()).hexdigest()
    tok = _TOKENIZERS.get(key)
    if tok is None:
        tok = _TOKENIZERS[key] = TextTokenizer.from_json(tokenizer_json)
    return tok


def encoded_rows(
    item: dict[str, Any], tokenizer: TextTokenizer, max_length: int, on_bad: str
) -> Iterator[list[dict[str, Any]]]:
    """Chunks of encoded rows of one file of one epoch: ids, prompt length, epoch, uid, trunc (see TRUNCATED)."""
    chunk: list[tuple[int, dict]] = []

    def encode(chunk):
        texts = [text for _, r in chunk for text in (r["input"], r["output"])]
        ids = tokenizer.encode_batch(texts)
        rows = []
        for k, (line, _) in enumerate(chunk):
            seq, prompt_len, trunc = fit_to_length(
                ids[2 * k], ids[2 * k + 1], tokenizer.sep_id, tokenizer.eos_id, max_length
            )
            rows.append(
                {
                    "ids": seq,
                    "prompt_len": prompt_len,
                    "epoch": item["epoch"],
                    "uid": (item["file_index"] << UID_LINE_BITS) | line,
                    "trunc": TRUNCATED.index(trunc or ""),
                }
            )
        return rows

    for line, record in iter_pairs(item["file"], on_bad):
        chunk.append((line, record))
        if len(chunk) == ENCODE_CHUNK:
            yield encode(chunk)
            chunk = []
    if chunk:
        yield encode(chunk)


def _chunks(rows: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# -- in process -------------------------------------------------------------------------------------------------------
def local_micro_batches(
    plan: StreamPlan, tokenizer: TextTokenizer, rank: int = 0, world: int = 1
) -> Iterator[list[dict[str, Any]]]:
    """This rank's micro-batches (lists of B rows), in order, as the Ray Data executor would hand them to it."""
    rows = (
        row
        for item in epoch_items(plan)
        for chunk in encoded_rows(item, tokenizer, plan.max_length, plan.on_bad)
        for row in chunk
    )
    ordered = (
        window[i]
        for window in _chunks(rows, plan.window)
        for i in order_window(
            np.array([len(r["ids"]) for r in window]),
            np.array([r["epoch"] for r in window]),
            np.array([r["uid"] for r in window]),
            plan.seed,
            plan.global_batch,
            plan.bucket_width,
        )
    )
    for k, block in enumerate(_chunks(ordered, plan.micro_batch)):
        if k % world == rank and len(block) == plan.micro_batch:
            yield block


def read_on_worker(rows: int, local_rows: int) -> bool:
    """Whether a stream of `rows` pairs is read by each Ray Train worker itself (`data.local_rows`), rather than
    through Ray Data, whose execution costs seconds of start-up (and prints its plan) that a small set does not repay;
    every worker then reads the whole stream and keeps its share, as torchrun ranks do."""
    return rows <= local_rows


def local_eval_rows(
    files: list[str], tokenizer: TextTokenizer, max_length: int, on_bad: str
) -> Iterator[dict[str, Any]]:
    """Every row of an evaluation set, in file order."""
    for i, f in enumerate(files):
        yield from (
            row
            for chunk in encoded_rows({"epoch": 0, "file_index": i, "file": f}, tokenizer, max_length, on_bad)
            for row in chunk
        )


# -- Ray Data ---------------------------------------------------------------------------------------------------------
def _rows_table(rows: list[dict[str, Any]]):
    import pyarrow as pa

    return pa.table(
        {
            "ids": pa.array([r["ids"] for r in rows], type=pa.list_(pa.int32())),
            "prompt_len": pa.array([r["prompt_len"] for r in rows], type=pa.int32()),
            "epoch": pa.array([r["epoch"] for r in rows], type=pa.int32()),
            "uid": pa.array([r["uid"] for r in rows], type=pa.int64()),
            "trunc": pa.array([r["trunc"] for r in rows], type=pa.int8()),
        }
    )


class _ReadEncode:
    """Ray Data UDF: a batch of (epoch, file) items -> tables of encoded rows."""

    def __init__(self, tokenizer_json: str, max_length: int, on_bad: str):
        self.tokenizer_json, self.max_length, self.on_bad = tokenizer_json, max_length, on_bad

    def __call__(self, items: dict[str, np.ndarray]):
        tokenizer = _tokenizer(self.tokenizer_json)
        for epoch, file_index, file in zip(items["epoch"], items["file_index"], items["file"]):
            item = {"epoch": int(epoch), "file_index": int(file_index), "file": str(file)}
            for chunk in encoded_rows(item, tokenizer, self.max_length, self.on_bad):
                yield _rows_table(chunk)


class _OrderWindow:
    """Ray Data UDF: one window (a pyarrow table of exactly `window` rows, the last one shorter) -> its order."""

    def __init__(self, seed: int, global_batch: int, bucket_width: int | None):
        self.seed, self.global_batch, self.bucket_width = seed, global_batch, bucket_width

    def __call__(self, table):
        import pyarrow.compute as pc

        lengths = pc.list_value_length(table["ids"]).to_numpy()
        return table.take(
            order_window(
                lengths,
                table["epoch"].to_numpy(),
                table["uid"].to_numpy(),
                self.seed,
                self.global_batch,
                self.bucket_width,
            )
        )


def _exact_blocks(ds, rows: int):
    """`ds.repartition(target_num_rows_per_block=rows, strict=True)` whose tasks reserve no CPU. Ray's repartition
    reserves a whole CPU per task and takes no argument to change that: with the training workers holding every CPU
    (two workers on a 2-core laptop) the pipeline stalls for good, and with one CPU to spare the reading tasks keep it
    while the repartition waits. Its logical operator carries the task options (Ray 2.60), so they are set there."""
    out = ds.repartition(target_num_rows_per_block=rows, strict=True)
    out._logical_plan.dag.ray_remote_args["num_cpus"] = 0
    return out


def ray_train_dataset(plan: StreamPlan, tokenizer_json: str, cpus_per_task: float, read_tasks: int):
    """The Ray Data pipeline of a plan (see the module docstring); hand it to Ray Train with `preserve_order`. Reading
    and tokenizing take the CPUs (`cpus_per_task` each, `read_tasks` at once); cutting and ordering the windows is
    cheap and reserves none, so it never waits behind the reads."""
    import ray.data

    items = epoch_items(plan)
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(
        _ReadEncode(tokenizer_json, plan.max_length, plan.on_bad),
        batch_size=1,
        batch_format="numpy",
        num_cpus=cpus_per_task,
        compute=ray.data.TaskPoolStrategy(size=read_tasks),
    )
    ds = _exact_blocks(ds, plan.window)
    ds = ds.map_batches(
        _OrderWindow(plan.seed, plan.global_batch, plan.bucket_width),
        batch_size=plan.window,
        batch_format="pyarrow",
        num_cpus=0,
        compute=ray.data.TaskPoolStrategy(size=read_tasks),
    )
    return _exact_blocks(ds, plan.micro_batch)


def ray_eval_dataset(
    files: list[str], tokenizer_json: str, max_length: int, on_bad: str, cpus_per_task: float, read_tasks: int
):
    """An evaluation set in file order (every worker reads it whole and scores its share)."""
    import ray.data

    items = [{"epoch": 0, "file_index": i, "file": f} for i, f in enumerate(files)]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    return ds.map_batches(
        _ReadEncode(tokenizer_json, max_length, on_bad),
        batch_size=1,
        batch_format="numpy",
        num_cpus=cpus_per_task,
        compute=ray.data.TaskPoolStrategy(size=read_tasks),
    )


def table_rows(table) -> list[dict[str, Any]]:
    """Rows of a pyarrow batch from the Ray Data pipeline, as the in-process executor yields them."""
    return [
        {"ids": ids, "prompt_len": p, "trunc": t}
        for ids, p, t in zip(table["ids"].to_pylist(), table["prompt_len"].to_pylist(), table["trunc"].to_pylist())
    ]
