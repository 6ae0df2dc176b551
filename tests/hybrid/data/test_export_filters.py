"""The export's filters (issue 27): the licence on every record and `pipeline.licenses_allowed`, and decontamination
against the validation/test split and a benchmark file. Real data folders and files; no Ray."""

import gzip
import json

import pytest

from hybrid.core.errors import HybridError
from hybrid.core.io import read_jsonl
from hybrid.core.layout import DatasetLayout
from hybrid.data.decontaminate import NgramIndex, Reference, code_tokens, read_benchmark
from hybrid.data.export import ExportOptions, describe, export_io_pairs
from hybrid.data.licenses import LicensePolicy, read_license
from tests.hybrid.data.test_export import fim, make_dataset

SPLITS = ("train", "validation", "test")
# a body long enough for 13-grams of code tokens
BODY = "\n".join(f"    total = total + values[{i}] * weights[{i}]" for i in range(6))


def write_license(data, repo, spdx, status="detected", file="LICENSE"):
    path = data / "ast_dataset" / repo / "license.json"
    path.write_text(json.dumps({"spdx": spdx, "file": file, "status": status, "commit": "0" * 40}))


def read_splits(out):
    return {s: read_jsonl(out / f"{s}.jsonl") for s in SPLITS}


def options(**kw):
    return ExportOptions.from_config(**kw)


# -- licences ---------------------------------------------------------------------------------------------------------
def test_license_expressions():
    policy = LicensePolicy(["MIT", "Apache-2.0", "none"])
    assert policy.allows("MIT") and policy.allows("mit") and policy.allows("none")
    assert policy.allows("MIT OR GPL-3.0-only") and policy.allows("(GPL-2.0-only OR Apache-2.0)")
    assert not policy.allows("MIT AND GPL-3.0-only") and policy.allows("MIT AND Apache-2.0")
    assert policy.allows("Apache-2.0 WITH LLVM-exception") and not policy.allows("GPL-2.0-only WITH GCC-exception-3.1")
    assert not policy.allows("GPL-3.0-only") and not policy.allows("unknown") and not policy.allows("undetected")
    assert not policy.allows("MIT OR") and not policy.allows("(MIT")  # malformed: not allowed, no crash
    assert LicensePolicy(["*"]).allows("GPL-3.0-only") and LicensePolicy(["*"]).allows("unknown")


def test_read_license(tmp_path):
    layout = DatasetLayout(tmp_path)
    (tmp_path / "ast_dataset" / "r").mkdir(parents=True)
    assert read_license(layout, "r").label == "undetected" and read_license(layout, "r").spdx is None
    write_license(tmp_path, "r", "MIT OR Apache-2.0")
    lic = read_license(layout, "r")
    assert (lic.spdx, lic.label, lic.file) == ("MIT OR Apache-2.0", "MIT OR Apache-2.0", "LICENSE")
    write_license(tmp_path, "r", None, status="none", file=None)
    assert (read_license(layout, "r").spdx, read_license(layout, "r").label) == (None, "none")
    write_license(tmp_path, "r", None, status="maybe")
    with pytest.raises(HybridError, match=r"license.json: status: expected one of detected, unknown, none"):
        read_license(layout, "r")
    (tmp_path / "ast_dataset" / "r" / "license.json").write_text("{oops")
    with pytest.raises(HybridError, match=r"r/license.json: not valid JSON"):
        read_license(layout, "r")


def test_licences_on_every_record_and_not_allowed_dropped(tmp_path):
    data = tmp_path / "data"
    repos = {name: [[fim(name, n, f"{name}_f{n}", f"return {n}")] for n in range(3)] for name in "abcdef"}
    make_dataset(data, repos)
    write_license(data, "a", "MIT")
    write_license(data, "b", "Apache-2.0 OR GPL-2.0-only")
    write_license(data, "c", "GPL-3.0-only", file="COPYING")
    write_license(data, "d", None, status="unknown", file="LICENSE.txt")
    write_license(data, "e", None, status="none", file=None)
    # f: no license.json (undetected)
    res = export_io_pairs(data, tmp_path / "out")
    records = [r for split in read_splits(tmp_path / "out").values() for r in split]
    assert {r["repo"] for r in records} == {"a", "b", "e", "f"}
    by_repo = {r["repo"]: r["license"] for r in records}
    assert by_repo == {"a": "MIT", "b": "Apache-2.0 OR GPL-2.0-only", "e": None, "f": None}
    assert list(records[0]) == ["input", "output", "repo", "commit_number", "function_id", "kind", "id", "license"]
    # 6 records per repository (3 FIM + 3 reasoning): c and d dropped, each under its own reason
    assert res.dropped == {"license_not_allowed": 6, "license_unknown": 6}
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["dropped"] == {"license_not_allowed": 6, "license_unknown": 6}
    assert stats["licenses"]["GPL-3.0-only"] == {"repos": ["c"], "kept": 0, "dropped": 6, "allowed": False}
    assert stats["licenses"]["MIT"]["kept"] == 6 and stats["licenses"]["none"]["allowed"] is True
    text = describe(res)
    assert "license_not_allowed" in text and "warning: e: no licence file: its 6 records are kept" in text
    assert "warning: d: licence file LICENSE.txt not identified: its 6 records are dropped" in text
    assert 'add "unknown" to pipeline.licenses_allowed' in text

    # the user keeps "unknown" and drops "none" through the list; "*" keeps everything
    res = export_io_pairs(data, tmp_path / "out2", options=options(licenses_allowed=("MIT", "unknown", "undetected")))
    kept = {r["repo"] for split in read_splits(tmp_path / "out2").values() for r in split}
    assert kept == {"a", "d", "f"} and res.dropped == {"license_not_allowed": 12, "license_none": 6}
    res = export_io_pairs(data, tmp_path / "out3", options=options(licenses_allowed=("*",)))
    assert sum(res.sizes.values()) == 36 and not res.dropped


def test_everything_dropped_by_licence_is_one_line(tmp_path):
    make_dataset(tmp_path / "data", {"c": [[fim("c", 0, "f", "pass")]]})
    write_license(tmp_path / "data", "c", "GPL-3.0-only")
    with pytest.raises(HybridError, match=r"every record was dropped by the licence policy \(license_not_allowed 2"):
        export_io_pairs(tmp_path / "data", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_license_setting_is_checked():
    from hybrid.cli.config import load_config

    assert load_config(["pipeline.licenses_allowed=[MIT, unknown]"]).pipeline.licenses_allowed == ["MIT", "unknown"]
    with pytest.raises(HybridError, match=r"pipeline.licenses_allowed: .*empty licence entry"):
        load_config(["pipeline.licenses_allowed=[MIT, ' ']"])
    with pytest.raises(HybridError, match=r"pipeline.decontamination_threshold: Input should be less than or equal"):
        load_config(["pipeline.decontamination_threshold=1.5"])


# -- decontamination ----------------------------------------------------------------------------------------------
def test_ngram_index_matches_a_copy_reformatted():
    index = NgramIndex(n=13, threshold=0.5)
    index.add(Reference("test", "t1", "output"), BODY)
    index.add(Reference("test", "short", "output"), "return 1")
    assert index.too_short == {"test": 1} and len(index) == 1
    reformatted = "def f(values, weights):\n  total = 0\n" + BODY.replace(" = ", "=").replace(" * ", "*") + "\n"
    ref, share = index.match(reformatted)
    assert ref.id == "t1" and share == 1.0
    assert index.match("def g():\n    return sum(v * w for v, w in zip(values, weights))\n") is None
    half = "\n".join(BODY.splitlines()[:2])  # a third of the reference: under the threshold
    assert index.match(half) is None
    assert code_tokens("a+=b1") == ["a", "+", "=", "b1"]


def test_a_planted_test_example_is_dropped_from_training(tmp_path):
    data = tmp_path / "data"
    commits = [[fim("r", n, f"f{n}", f"return {n}")] for n in range(10)]
    commits[9].append(fim("r", 9, "late", BODY))  # the last commit: test split
    commits[2].append(fim("r", 2, "copy", "x = 1\n" + BODY + "\nreturn total"))  # train holds it
    commits[3].append(fim("r", 3, "context", "return 3", task=BODY))  # only in the input: the loss skips it
    make_dataset(data, {"r": commits})
    res = export_io_pairs(data, tmp_path / "out")
    splits = read_splits(tmp_path / "out")
    assert "late#0" in {r["id"] for r in splits["test"]}
    assert "copy#0" not in {r["id"] for r in splits["train"]}
    assert res.dropped == {"decontaminated": 1} and res.sizes["train"] == len(splits["train"])
    listed = read_jsonl(tmp_path / "out" / "decontamination.jsonl")
    assert listed == [
        {
            "id": "copy#0",
            "repo": "r",
            "function_id": "copy",
            "kind": "fim",
            "commit_number": 2,
            "overlap": 1.0,
            "ngram": 13,
            "against": {"source": "test", "id": "late#0", "field": "output"},
        }
    ]
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["decontamination"]["dropped"] == 1 and stats["decontamination"]["references"] == {"test": 1}
    assert "context#0" in {r["id"] for r in splits["train"]}

    # pipeline.decontaminate_inputs: the inputs are searched too
    res = export_io_pairs(data, tmp_path / "out", options=options(decontaminate_inputs=True))
    assert res.dropped == {"decontaminated": 2}
    assert {d["id"] for d in read_jsonl(tmp_path / "out" / "decontamination.jsonl")} == {"copy#0", "context#0"}

    # off: the copy stays, and no list from the earlier export is left behind
    res = export_io_pairs(data, tmp_path / "out", options=options(decontaminate_splits=False))
    assert "copy#0" in {r["id"] for r in read_jsonl(tmp_path / "out" / "train.jsonl")} and not res.dropped
    assert not (tmp_path / "out" / "decontamination.jsonl").exists()


def test_a_benchmark_file_decontaminates(tmp_path):
    data = tmp_path / "data"
    solution = "    for idx, elem in enumerate(numbers):\n        for idx2, elem2 in enumerate(numbers):\n"
    commits = [[fim("r", n, f"f{n}", f"return {n}")] for n in range(10)]
    commits[1].append(fim("r", 1, "has_close", solution + "            return True\n"))
    make_dataset(data, {"r": commits})
    bench = tmp_path / "HumanEval.jsonl.gz"
    with gzip.open(bench, "wt") as f:
        f.write(json.dumps({"task_id": "HumanEval/0", "prompt": "def has_close_elements(numbers, t):\n"}) + "\n\n")
        f.write(json.dumps({"task_id": "HumanEval/0b", "canonical_solution": solution}) + "\n")
    res = export_io_pairs(data, tmp_path / "out", options=options(benchmarks=(str(bench),), decontaminate_splits=False))
    assert res.dropped == {"decontaminated": 1}
    (line,) = read_jsonl(tmp_path / "out" / "decontamination.jsonl")
    assert line["id"] == "has_close#0" and line["against"] == {
        "source": "benchmark",
        "id": "HumanEval/0b",
        "field": "canonical_solution",
        "file": str(bench),
        "line": 3,
    }
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())["decontamination"]
    assert stats["too_short"] == {"benchmark": 1} and stats["against_splits"] is False


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"prompt": "x"}\n{oops\n', r"bench.jsonl:2: not valid JSON"),
        ('{"prompt": "x"}\n{"answer": "y"}\n', r"bench.jsonl:2: no prompt, canonical_solution, code, text field"),
        ("\n", r"bench.jsonl: empty file \(no benchmark records\)"),
    ],
)
def test_bad_benchmark_is_one_line(tmp_path, content, message):
    (tmp_path / "bench.jsonl").write_text(content)
    with pytest.raises(HybridError, match=message):
        read_benchmark(str(tmp_path / "bench.jsonl"))


def test_missing_benchmark_is_one_line_and_nothing_written(tmp_path, capsys):
    from hybrid.main import main

    make_dataset(tmp_path / "data", {"r": [[fim("r", n, f"f{n}", "pass")] for n in range(3)]})
    argv = ["pipeline", "export", f"pipeline.data_dir={tmp_path / 'data'}", "--output-dir", str(tmp_path / "out")]
    assert main([*argv, "--decontaminate-against", str(tmp_path / "nope.jsonl")]) == 2
    assert "nope.jsonl: no such file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
