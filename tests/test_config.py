from pathlib import Path

import pytest
import yaml

from hybrid.cli.config import CONFIG_DIR, GROUPS, load_config, split_overrides
from hybrid.core.errors import ConfigError
from hybrid.main import main

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_and_overrides():
    cfg = load_config(["model=gpt2_hybrid", "train.batch_size=4", "train.learning_rate=1e-4"])
    assert cfg.model.family == "gpt2"
    assert cfg.train.batch_size == 4
    assert cfg.train.learning_rate == pytest.approx(1e-4)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.bogus=1", "train.bogus: unknown key"),
        ("train.batch_size=abc", "train.batch_size"),
        ("model=no_such_preset", "model=no_such_preset"),
        ("nosuchgroup=1", "nosuchgroup: unknown config group"),
        ("train.batch_size.x=1", "train.batch_size"),
        ("no-equals-sign", "expected key=value"),
        ("train.compile_backend=nope", "train.compile_backend: unknown torch.compile backend 'nope'"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config([override])


def test_a_uri_where_only_a_local_folder_works_is_refused(tmp_path, monkeypatch):
    """Taken for a relative path, `gs://b/llama` would become a local folder `gs:`; the setting refuses it in one
    line and nothing is written. (`pipeline.data_dir` takes a URI: tests/pipelines/test_pipeline_object_store.py.)"""
    with pytest.raises(ConfigError, match=r"^model[.]pretrained: a URI is not supported here \(") as e:
        load_config(["model.pretrained=gs://b/llama"])
    assert "\n" not in str(e.value)
    monkeypatch.chdir(tmp_path)
    assert main(["repos", "add", str(ROOT), "model.pretrained=gs://b/llama"]) == 2
    assert list(tmp_path.iterdir()) == []


def test_every_shipped_yaml_validates():
    shipped = sorted(CONFIG_DIR.glob("*/*.yaml"))
    assert {p.parent.name for p in shipped} == set(GROUPS)  # every group has presets, and no folder is unknown
    for path in shipped:
        cfg = load_config([f"{path.parent.name}={path.stem}"])
        for key in yaml.safe_load(path.read_text()) or {}:  # each key of the file reached its section
            assert hasattr(getattr(cfg, path.parent.name), key), (path, key)


def test_split_overrides():
    overrides, rest = split_overrides(["myrepo", "train.batch_size=4", "/tmp/a=b/repo", "model=gpt2_hybrid"])
    assert overrides == ["train.batch_size=4", "model=gpt2_hybrid"]
    assert rest == ["myrepo", "/tmp/a=b/repo"]


def test_cli_help_is_light():
    """`hybrid --help` must not import torch, ray, faiss or the pydantic config schemas (STYLE: heavy imports
    where used)."""
    import sys

    from tests.commands import run_process

    code = (
        "import sys; from hybrid.main import build_parser; build_parser(); "
        "heavy = [m for m in ('torch', 'ray', 'faiss', 'transformers', 'pygit2', 'openai', 'pydantic', 'numpy', "
        "'rich', 'hybrid.cli.config') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    out = run_process([sys.executable, "-c", code], cwd=Path(__file__).parent.parent, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_redact_url_hides_credentials_and_query():
    from hybrid.core.redact import redact_url

    assert redact_url("https://user:tok3n@git.example.com/x.git") == "https://***@git.example.com/x.git"
    assert redact_url("http://127.0.0.1:8000/v1?api-key=s3cret") == "http://127.0.0.1:8000/v1?***"
    assert redact_url("https://github.com/a/b.git") == "https://github.com/a/b.git"
    assert redact_url("../some/checkout") == "../some/checkout"


def test_a_whole_config_file_is_the_base_and_overrides_apply_on_top(tmp_path):
    saved = load_config(["model=tiny_gpt2_hybrid", "train.batch_size=3", "data.max_length=77"])
    path = tmp_path / "config.yaml"
    path.write_text(saved.recipe().to_yaml())  # what a checkpoint saves: model, train, data, memory
    cfg = load_config(["train.learning_rate=0.5"], base=path)
    assert cfg.model == saved.model and cfg.data == saved.data and cfg.train.batch_size == 3
    assert cfg.train.learning_rate == 0.5
    assert cfg.pipeline == load_config().pipeline  # a section the file lacks takes the defaults
    assert load_config(["model=tiny_llama_hybrid"], base=path).model.family == "llama"  # a group choice replaces it
    path.write_text("bogus: {}\n")
    with pytest.raises(ConfigError, match="bogus: unknown config group"):
        load_config([], base=path)
    with pytest.raises(ConfigError, match="no such file"):
        load_config([], base=tmp_path / "missing.yaml")
