"""`hybrid pipeline export --format parquet` (issue 27): Parquet shards + a dataset card that Hugging Face `datasets`
loads, record for record the JSONL export; to a local folder and to S3 (a real local S3 server, moto)."""

import json

import pytest

from hybrid.core.errors import HybridError
from hybrid.core.io import read_jsonl
from hybrid.data.export import ExportOptions, export_io_pairs
from hybrid.main import main
from tests.hybrid.data.test_export import fim, make_dataset
from tests.hybrid.data.test_export_filters import BODY, write_license

SPLITS = ("train", "validation", "test")


@pytest.fixture
def offline_hf(tmp_path, monkeypatch):
    """`datasets` with its cache in the test's folder and no network."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def sample_data(root):
    data = root / "data"
    commits = [[fim("r", n, f"f{n}", f"return {n}\n# é 中文 {n}")] for n in range(12)]
    commits[11].append(fim("r", 11, "late", BODY))
    commits[3].append(fim("r", 3, "copy", BODY))
    make_dataset(data, {"r": commits, "gpl": [[fim("gpl", 0, "g", "pass")]]})
    write_license(data, "r", "MIT")
    write_license(data, "gpl", "GPL-3.0-only")
    return data


def export(data, out, *extra):
    return main(["pipeline", "export", f"pipeline.data_dir={data}", "--output-dir", str(out), *extra])


def test_parquet_loads_with_datasets_and_matches_jsonl(tmp_path, offline_hf, capsys):
    from datasets import load_dataset

    data = sample_data(tmp_path)
    assert export(data, tmp_path / "jsonl") == 0
    assert export(data, tmp_path / "pq", "--format", "parquet", "--rows-per-shard", "5") == 0
    out = capsys.readouterr().out
    assert "Parquet shards under data/" in out and "license_not_allowed" in out
    jsonl = {s: read_jsonl(tmp_path / "jsonl" / f"{s}.jsonl") for s in SPLITS}
    ds = load_dataset("parquet", data_dir=str(tmp_path / "pq"))
    assert sorted(ds) == sorted(SPLITS)
    for split in SPLITS:
        assert [dict(r) for r in ds[split]] == jsonl[split], split
    assert all(r["license"] == "MIT" for r in jsonl["train"])
    n_train = len(jsonl["train"])
    shards = sorted(p.name for p in (tmp_path / "pq" / "data").iterdir())
    assert f"train-00000-of-{-(-n_train // 5):05d}.parquet" in shards and len(shards) > 3

    # the card: Hub front matter whose configs name the splits' files, then the counts
    card = (tmp_path / "pq" / "README.md").read_text()
    import yaml

    meta = yaml.safe_load(card.split("---\n")[1])
    files = {f["split"]: f["path"] for f in meta["configs"][0]["data_files"]}
    assert files == {s: f"data/{s}-*" for s in SPLITS} and meta["license"] == ["mit"]
    sizes = {s: len(jsonl[s]) for s in SPLITS}
    assert f"| train | {sizes['train']} |" in card and f"| test | {sizes['test']} |" in card
    assert "| license_not_allowed | 2 |" in card and "| decontaminated | 1 |" in card
    assert "| `GPL-3.0-only` | gpl | 0 | 2 | no |" in card and "| python | " in card
    assert "--format parquet --kinds fim,reasoning" in card and "--rows-per-shard 5" in card
    assert load_dataset(str(tmp_path / "pq"))["test"].num_rows == sizes["test"]  # through the card's configs
    stats = json.loads((tmp_path / "pq" / "stats.json").read_text())
    assert stats["format"] == "parquet" and stats["sizes"] == sizes
    assert read_jsonl(tmp_path / "pq" / "decontamination.jsonl") == read_jsonl(
        tmp_path / "jsonl" / "decontamination.jsonl"
    )

    # a re-export with bigger shards leaves no shard of the first one behind
    assert export(data, tmp_path / "pq", "--format", "parquet") == 0
    assert sorted(p.name for p in (tmp_path / "pq" / "data").iterdir()) == [
        f"{s}-00000-of-00001.parquet" for s in ("test", "train", "validation")
    ]
    assert [dict(r) for r in load_dataset("parquet", data_dir=str(tmp_path / "pq"))["train"]] == jsonl["train"]


def test_formats_do_not_mix_in_one_folder(tmp_path, capsys):
    data = sample_data(tmp_path)
    assert export(data, tmp_path / "out") == 0
    assert export(data, tmp_path / "out", "--format", "parquet") == 2
    assert "holds a JSONL export (train.jsonl); give another --output-dir" in capsys.readouterr().err
    assert not (tmp_path / "out" / "data").exists()
    assert export(data, tmp_path / "pq", "--format", "parquet") == 0
    with pytest.raises(HybridError, match=r"holds a Parquet export \(data/"):
        export_io_pairs(data, tmp_path / "pq")
    with pytest.raises(SystemExit) as exit_:
        export(data, tmp_path / "out", "--rows-per-shard", "0")
    assert exit_.value.code == 2 and "--rows-per-shard: expected an integer >= 1" in capsys.readouterr().err


def test_parquet_to_s3(tmp_path, s3_server):
    import pyarrow.parquet as pq

    data = sample_data(tmp_path)
    bucket = s3_server.bucket()
    uri = f"s3://{bucket}/exports/io?endpoint_override={s3_server.endpoint}&scheme=http"
    jsonl = export_io_pairs(data, tmp_path / "jsonl")
    res = export_io_pairs(data, uri, options=ExportOptions.from_config(format="parquet"))
    assert res.sizes == jsonl.sizes
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(uri)
    names = sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(root, recursive=True)) if i.is_file)
    assert names == sorted(
        ["README.md", "stats.json", "decontamination.jsonl"] + [f"{s}-00000-of-00001.parquet" for s in SPLITS]
    )
    table = pq.read_table(f"{root}/data/train-00000-of-00001.parquet", filesystem=fs)
    assert table.to_pylist() == read_jsonl(tmp_path / "jsonl" / "train.jsonl")
    # JSONL to a URI as well, the same bytes as the local export
    jsonl_uri = f"s3://{bucket}/exports/jsonl?endpoint_override={s3_server.endpoint}&scheme=http"
    export_io_pairs(data, jsonl_uri)
    fs, root = pafs.FileSystem.from_uri(jsonl_uri)
    with fs.open_input_stream(f"{root}/train.jsonl") as f:
        assert f.read() == (tmp_path / "jsonl" / "train.jsonl").read_bytes()
