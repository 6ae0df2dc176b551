"""`hybrid pipeline export --format parquet`: the splits as Parquet shards under `data/`, named as the Hugging Face
Hub names them (`data/train-00000-of-00002.parquet`), and a dataset card (`README.md`): YAML front matter whose
`configs` name each split's files, then what the export holds and how it was made. `datasets` reads the folder with
`load_dataset("parquet", data_dir=DIR)` (the shard names give the splits) or `load_dataset(DIR)` (the card's
configs). Every file is written through hybrid.core.storage, so DIR may be a URI (`s3://bucket/prefix`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from hybrid.core import storage
from hybrid.core.errors import HybridError

DATA = "data"
CARD = "README.md"

# the columns, in the order of the JSONL records (docs/data-format.md); `license` is null for a repository without
# a detected SPDX licence
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("input", "string", "the prompt: task text, then the FIM prefix/suffix or the function before and after"),
    ("output", "string", "the target: the FIM middle or the first-person reasoning"),
    ("repo", "string", "the repository's name in the pipeline"),
    ("commit_number", "int64", "the commit's place in the first-parent history, oldest first, from 0"),
    ("function_id", "string", "`path::kind::qualified name` of the changed declaration"),
    ("kind", "string", "fim or reasoning"),
    ("id", "string", "the record's id (unique within the export)"),
    ("license", "string", "the repository's licence as an SPDX id or expression; null when none was detected"),
)


def arrow_schema() -> Any:
    import pyarrow as pa

    types = {"string": pa.string(), "int64": pa.int64()}
    return pa.schema([(name, types[kind]) for name, kind, _ in COLUMNS])


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.parquet"


def parquet_bytes(rows: list[dict[str, Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = arrow_schema()
    try:
        table = pa.Table.from_pylist([{name: r.get(name) for name in schema.names} for r in rows], schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise HybridError(f"export: a record does not fit the Parquet schema ({e})") from None
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return bytes(sink.getvalue().to_pybytes())


def write_shards(output_dir: str, splits: dict[str, list[dict[str, Any]]], rows_per_shard: int) -> dict[str, int]:
    """Every non-empty split as shards of at most `rows_per_shard` rows in `output_dir/data/`; then the shards a
    previous export left there that this one did not write are removed (a glob of `data/train-*` must not read
    them). Returns the number of shards per split."""
    if rows_per_shard < 1:
        raise HybridError(f"--rows-per-shard: must be at least 1, got {rows_per_shard}")
    data_dir = storage.join(output_dir, DATA)
    written, counts = set(), {}
    for split, rows in splits.items():
        count = -(-len(rows) // rows_per_shard)
        counts[split] = count
        for i in range(count):
            name = shard_name(split, i, count)
            storage.write_bytes(
                storage.join(data_dir, name), parquet_bytes(rows[i * rows_per_shard : (i + 1) * rows_per_shard])
            )
            written.add(name)
    for name, is_dir in storage.list_dir(data_dir):
        if not is_dir and name.endswith(".parquet") and name not in written:
            storage.remove_file(storage.join(data_dir, name))
    return counts


@dataclass
class CardFacts:
    """What the dataset card reports (collected by hybrid.data.export)."""

    sizes: dict[str, int]
    kinds: dict[str, dict[str, int]]  # split -> kind -> records
    shards: dict[str, int]
    split_by: str
    repos: list[str]
    filters: list[str]  # one line per filter applied
    dropped: dict[str, int]  # reason -> records
    licenses: dict[str, dict[str, Any]]  # label -> {"repos": [...], "kept": n, "dropped": n, "allowed": bool}
    languages: dict[str, int]
    first_commit: str | None
    last_commit: str | None
    command: str
    skipped: dict[str, int] = field(default_factory=dict)


def _size_category(n: int) -> str:
    # the Hub's size_categories values
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < bound:
            return name
    return "1M<n<10M" if n < 10_000_000 else "10M<n<100M"


def _front_matter(facts: CardFacts) -> str:
    hub_licenses = sorted(
        {
            label.lower()
            if all(c.isalnum() or c in ".-" for c in label) and label not in ("none", "unknown", "undetected")
            else "other"
            for label, info in facts.licenses.items()
            if info["kept"]
        }
    )
    meta: dict[str, Any] = {
        "configs": [
            {
                "config_name": "default",
                "data_files": [
                    {"split": split, "path": f"{DATA}/{split}-*"} for split, n in facts.shards.items() if n > 0
                ],
            }
        ],
        "license": hub_licenses or ["other"],
        "tags": ["code", "git-history", "fill-in-the-middle"],
        "size_categories": [_size_category(sum(facts.sizes.values()))],
        "pretty_name": "IO pairs mined from git history",
    }
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _table(head: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def dataset_card(facts: CardFacts) -> str:
    total = sum(facts.sizes.values())
    split_rows = [
        (s, n, facts.kinds.get(s, {}).get("fim", 0), facts.kinds.get(s, {}).get("reasoning", 0), facts.shards.get(s, 0))
        for s, n in facts.sizes.items()
    ]
    how = (
        "whole repositories go to validation and test"
        if facts.split_by == "repository"
        else "by time: each function belongs to the commit where it first appears; the latest functions are the "
        "test split, those before them validation"
    )
    dropped = sorted(facts.dropped.items(), key=lambda kv: (-kv[1], kv[0]))
    licenses = [
        (
            f"`{label}`",
            ", ".join(info["repos"]),
            info["kept"],
            info["dropped"],
            "yes" if info["allowed"] else "no",
        )
        for label, info in sorted(facts.licenses.items())
    ]
    parts = [
        _front_matter(facts),
        "\n# IO pairs mined from git history\n\n",
        f"{total} input/output pairs made by `hybrid pipeline export` (Hybrid LLM Trainer) from the git history of "
        f"{len(facts.repos)} repositor{'y' if len(facts.repos) == 1 else 'ies'}: {', '.join(facts.repos)}. "
        "FIM pairs ask for the code a commit added inside a function; reasoning pairs ask why a function changed.\n\n",
        '```python\nfrom datasets import load_dataset\nds = load_dataset("parquet", data_dir="THIS_FOLDER")\n```\n\n',
        "## Splits\n\n",
        _table(("split", "records", "fim", "reasoning", "shards"), split_rows),
        f"\nSplits never share a function; split {how}.\n\n",
        "## Fields\n\n",
        _table(("field", "type", "meaning"), [(f"`{n}`", t, m) for n, t, m in COLUMNS]),
        "\n## Filters applied\n\n",
        "".join(f"- {line}\n" for line in facts.filters),
        "\n## Dropped, by reason\n\n",
        _table(("reason", "records"), dropped) if dropped else "Nothing was dropped.\n",
        "\n## Licences\n\n",
        _table(("licence", "repositories", "records kept", "records dropped", "allowed"), licenses),
        "\n## Languages\n\n",
        _table(("language", "records"), sorted(facts.languages.items(), key=lambda kv: (-kv[1], kv[0]))),
        "\n## Time range of the commits\n\n",
        f"From {facts.first_commit or 'unknown'} to {facts.last_commit or 'unknown'} (commit dates of the records "
        "kept).\n\n",
        "## How it was made\n\n",
        f"```bash\n{facts.command}\n```\n",
    ]
    if facts.skipped:
        parts.append(
            "\nPipeline outputs skipped as unusable: "
            + ", ".join(f"{k} {v}" for k, v in sorted(facts.skipped.items()))
            + ".\n"
        )
    return "".join(parts)


def write_card(output_dir: str, facts: CardFacts) -> None:
    storage.write_text(storage.join(output_dir, CARD), dataset_card(facts))
