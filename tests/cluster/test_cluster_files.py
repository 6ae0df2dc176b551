"""The files in cluster/ (Ray launcher configs, KubeRay manifests, Dockerfile) and the install paths
(environment.yaml, pyproject's [tool.uv]): checked against Ray's own launcher schema, the project's CLI and config,
and the Ray version pyproject.toml pins, and the KubeRay manifests against KubeRay's CRD schemas (shipped in
kuberay_crds/, see its README). Fast: nothing is launched, no Ray is started.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"
LAUNCHER_FILES = sorted(CLUSTER.glob("*.yaml"))
KUBERAY_FILES = sorted(KUBERAY.glob("*.yaml"))
KUBERAY_CRDS = Path(__file__).resolve().parent / "kuberay_crds"
RAY_KINDS = {"RayCluster", "RayJob"}
SHELL_OPERATORS = {"&&", "||", ";", "(", ")", "|", "&"}
OUTPUT_KEYS = ("pipeline.data_dir", "train.output_dir", "tune.output_dir", "data.train", "data.validation")


# -- what pyproject.toml pins ------------------------------------------------------------------------------------
def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _ray_requirement() -> str:
    """The one `ray[...]==X` requirement in [project].dependencies, e.g. 'ray[default,data,train,tune]==2.60.0'."""
    reqs = [d.replace(" ", "") for d in _pyproject()["project"]["dependencies"] if re.match(r"ray\b", d)]
    assert len(reqs) == 1 and "==" in reqs[0], f"expected one pinned ray requirement in pyproject.toml, got {reqs}"
    return reqs[0]


RAY_REQUIREMENT = _ray_requirement()
RAY_VERSION = RAY_REQUIREMENT.split("==", 1)[1]
RAY_CPU_IMAGE = f"rayproject/ray:{RAY_VERSION}-py311"
RAY_GPU_IMAGE = f"rayproject/ray:{RAY_VERSION}-py311-gpu"


def test_pyproject_pins_ray_and_the_installed_ray_matches():
    import ray

    assert re.fullmatch(r"ray\[default,data,train,tune\]==\d+\.\d+\.\d+", RAY_REQUIREMENT), RAY_REQUIREMENT
    assert ray.__version__ == RAY_VERSION, "the schema checks below use the installed Ray: it must be the pinned one"


def test_the_files_are_there():
    assert {p.name for p in LAUNCHER_FILES} >= {"aws.yaml", "gcp.yaml"}
    assert {p.name for p in KUBERAY_FILES} >= {
        "raycluster.yaml",
        "rayjob-pipeline.yaml",
        "rayjob-train.yaml",
        "rayjob-tune.yaml",
        "shared-pvc.yaml",
    }
    for name in ("Dockerfile", "README.md"):
        assert (CLUSTER / name).is_file(), name
    assert (ROOT / "environment.yaml").is_file()


def test_no_file_names_another_ray_version():
    """Every Ray version written anywhere in cluster/ (images, pins, rayVersion) is the pinned one."""
    pattern = re.compile(
        r"(?:rayproject/ray:|ray\[[a-z,]+\]==|rayVersion:\s*\"?|ray==|RAY_VERSION=|hybrid-llm-trainer:ray)"
        r"(\d+\.\d+\.\d+)"
    )
    seen = 0
    for path in [*CLUSTER.rglob("*"), ROOT / "environment.yaml"]:
        if path.is_file() and path.suffix in {".yaml", ".md", ""}:
            for version in pattern.findall(path.read_text()):
                seen += 1
                assert version == RAY_VERSION, (
                    f"{path.relative_to(ROOT)} names Ray {version}, pyproject pins {RAY_VERSION}"
                )
    assert seen >= 20


# -- Ray cluster launcher configs --------------------------------------------------------------------------------
def _launcher(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _validate_launcher(config: dict) -> dict:
    """What `ray up` does before it talks to the cloud: merge the provider's defaults, then Ray's schema checks."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def _worker_types(config: dict) -> dict:
    return {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}


def _gpu_types(config: dict) -> dict:
    return {
        k: v
        for k, v in _worker_types(config).items()
        if v.get("docker", {}).get("worker_image", config["docker"]["image"]).endswith("-gpu")
    }


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_config_passes_rays_schema(path):
    prepared = _validate_launcher(_launcher(path))
    assert prepared["cluster_name"] == "hybrid-llm-trainer"
    assert prepared["provider"]["type"] == path.stem


def test_the_launcher_schema_check_rejects_broken_configs():
    """The validator used above is real: it fails on an unknown key, a node type without resources, a bad head."""
    import jsonschema

    good = _launcher(CLUSTER / "aws.yaml")
    bad_key = {**copy.deepcopy(good), "max_worker": 3}
    no_resources = copy.deepcopy(good)
    del no_resources["available_node_types"]["ray.worker.gpu1"]["resources"]
    bad_head = {**copy.deepcopy(good), "head_node_type": "ray.head.missing"}
    for broken, error in (
        (bad_key, jsonschema.ValidationError),
        (no_resources, jsonschema.ValidationError),
        (bad_head, ValueError),
    ):
        with pytest.raises(error):
            _validate_launcher(broken)


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_head_is_cpu_and_gpu_workers_scale(path):
    config = _launcher(path)
    head = config["available_node_types"][config["head_node_type"]]
    assert config["docker"]["image"] == RAY_CPU_IMAGE
    assert "docker" not in head and "GPU" not in head["resources"]
    gpu_types = _gpu_types(config)
    assert gpu_types, "no GPU worker node type"
    for name, node in _worker_types(config).items():
        assert isinstance(node["min_workers"], int) and isinstance(node["max_workers"], int), name
        assert 0 <= node["min_workers"] <= node["max_workers"] <= config["max_workers"], name
    for name, node in gpu_types.items():
        assert node["docker"]["worker_image"] == RAY_GPU_IMAGE, name
        if path.stem == "gcp":  # GCP states resources; the GPUs attached must match them
            attached = sum(a["acceleratorCount"] for a in node["node_config"]["guestAccelerators"])
            assert node["resources"]["GPU"] == attached >= 1, name
        else:  # AWS detects resources from the instance type: a GPU family
            assert re.match(r"(g4dn|g5|g6|g6e|p3|p4d|p5)\.", node["node_config"]["InstanceType"]), name


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_installs_the_project_with_the_pinned_ray(path):
    config = _launcher(path)
    assert config["file_mounts"]["~/hybrid-llm-trainer"] == "."
    # Each node runs either the common setup_commands or its own worker_setup_commands (which replace them).
    command_lists = {"head/cpu": config["setup_commands"]}
    command_lists.update({name: node["worker_setup_commands"] for name, node in _gpu_types(config).items()})
    for who, commands in command_lists.items():
        text = "\n".join(commands)
        assert f'"{RAY_REQUIREMENT}"' in text, f"{who}: pip install of {RAY_REQUIREMENT} missing"
        assert re.search(r"pip install .*-e ~/hybrid-llm-trainer\b", text), f"{who}: project not installed"
        assert "torch==" in text, f"{who}: torch not installed before the project"
    cpu_torch = [c for c in config["setup_commands"] if "torch==" in c]
    assert cpu_torch and "download.pytorch.org/whl/cpu" in cpu_torch[0], "head/CPU workers: not the CPU torch"
    # the synced checkout leaves out what git ignores (.venv is gigabytes)
    assert ".gitignore" in config["rsync_filter"]
    assert ".venv/" in (ROOT / ".gitignore").read_text().split()


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_turns_on_token_auth_and_mounts_shared(path):
    config = _launcher(path)
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in config[key] if "ray start" in c]
        assert len(start) == 1 and "export RAY_AUTH_MODE=token;" in start[0], key
    assert "-v /shared:/shared" in config["docker"]["run_options"]
    init_lists = [config["initialization_commands"]] + [
        n["initialization_commands"] for n in config["available_node_types"].values() if "initialization_commands" in n
    ]
    for commands in init_lists:  # docker would create a root-owned /shared the container user cannot write
        assert any("mkdir -p /shared" in c for c in commands)


# -- KubeRay manifests -------------------------------------------------------------------------------------------
def _documents(path: Path) -> list[dict]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path.name}: no YAML documents"
    return docs


def _ray_documents() -> list[tuple[str, dict]]:
    return [(p.name, d) for p in KUBERAY_FILES for d in _documents(p) if d.get("kind") in RAY_KINDS]


def _cluster_spec(doc: dict) -> dict:
    return doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]


def _groups(spec: dict) -> list[tuple[str, dict]]:
    return [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]


def _pvc_name() -> str:
    (pvc,) = _documents(KUBERAY / "shared-pvc.yaml")
    assert pvc["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in pvc["spec"]["accessModes"]
    return pvc["metadata"]["name"]


def _rayjobs() -> dict[str, dict]:
    return {name: doc for name, doc in _ray_documents() if doc["kind"] == "RayJob"}


def _commands(entrypoint: str) -> list[list[str]]:
    """Split a shell entrypoint on its operators (&&, ||, ;, parentheses) into the commands it runs."""
    lexer = shlex.shlex(entrypoint, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token in SHELL_OPERATORS:
            if current:
                commands.append(current)
            current = []
        else:
            current.append(token)
    if current:
        commands.append(current)
    return commands


@pytest.mark.parametrize("path", KUBERAY_FILES, ids=lambda p: p.name)
def test_kuberay_manifest_parses_and_names_its_api(path):
    for doc in _documents(path):
        assert doc.get("metadata", {}).get("name"), f"{path.name}: a document without metadata.name"
        if path.name.startswith("ray"):
            assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] in RAY_KINDS, path.name


def test_kuberay_clusters_run_the_pinned_ray_with_auth_and_object_storage_only():
    """No pod mounts the shared volume by default (shared-pvc.yaml is the option); every Ray container gets the
    object store's credentials from the Secret `hybrid-storage` (optional: a pod's cloud identity serves too)."""
    _pvc_name()  # the option stays a valid ReadWriteMany claim
    docs = _ray_documents()
    assert len(docs) == 4
    for name, doc in docs:
        spec = _cluster_spec(doc)
        assert spec["rayVersion"] == RAY_VERSION, name
        assert spec["authOptions"] == {"mode": "token"}, name
        for group_name, group in _groups(spec):
            pod = group["template"]["spec"]
            assert not [v for v in pod.get("volumes", []) if "persistentVolumeClaim" in v], f"{name} {group_name}"
            for container in pod["containers"]:
                where = f"{name} {group_name} {container['name']}"
                image = container["image"]
                assert f"ray{RAY_VERSION}-py311" in image or image.startswith(RAY_CPU_IMAGE), where
                mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
                assert "/shared" not in mounts, f"{where}: mounts /shared"
                secrets = [e["secretRef"] for e in container.get("envFrom", []) if "secretRef" in e]
                assert {"name": "hybrid-storage", "optional": True} in secrets, f"{where}: no storage credentials"
                limits, requests = container["resources"]["limits"], container["resources"].get("requests", {})
                gpus = limits.get("nvidia.com/gpu", 0)
                if gpus or "gpu" in group_name:
                    assert gpus >= 1 and requests.get("nvidia.com/gpu", gpus) == gpus, f"{where}: no GPU limit"
                    assert image.endswith("-gpu"), f"{where}: GPU group without a -gpu image"
                    assert "/dev/shm" in mounts, f"{where}: NCCL needs a bigger /dev/shm"
                else:
                    assert not image.endswith("-gpu"), f"{where}: CPU pod on the GPU image"


def test_kuberay_has_a_gpu_worker_group_in_raycluster_train_and_tune():
    for name, doc in _ray_documents():
        if name != "rayjob-pipeline.yaml":
            groups = dict(_groups(_cluster_spec(doc)))
            assert any(
                "nvidia.com/gpu" in c["resources"]["limits"]
                for g in groups.values()
                for c in g["template"]["spec"]["containers"]
            ), name


def test_rayjobs_run_hybrid_and_clean_up():
    jobs = _rayjobs()
    assert set(jobs) == {"rayjob-pipeline.yaml", "rayjob-train.yaml", "rayjob-tune.yaml"}
    for name, job in jobs.items():
        spec = job["spec"]
        commands = _commands(spec["entrypoint"])
        assert commands and all(c[0] == "hybrid" for c in commands), f"{name}: {commands}"
        runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
        assert isinstance(spec["runtimeEnvYAML"], str) and isinstance(runtime_env, dict), name
        assert set(runtime_env) <= {"env_vars", "working_dir", "pip", "py_modules", "config"}, name
        assert spec["shutdownAfterJobFinishes"] is True, name
        assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] > 0, name
    runs = {name: [" ".join(c[:3]) for c in _commands(job["spec"]["entrypoint"])] for name, job in jobs.items()}
    assert "hybrid repos add" in runs["rayjob-pipeline.yaml"]
    assert any(r.startswith("hybrid pipeline run") for r in runs["rayjob-pipeline.yaml"])
    assert any(r.startswith("hybrid train") for r in runs["rayjob-train.yaml"])
    assert "memory.backend=ray" in _commands(jobs["rayjob-train.yaml"]["spec"]["entrypoint"])[0]
    assert any(r.startswith("hybrid tune") for r in runs["rayjob-tune.yaml"])
    assert any(
        w.startswith("tune.output_dir=") for c in _commands(jobs["rayjob-tune.yaml"]["spec"]["entrypoint"]) for w in c
    )


def test_rayjob_outputs_go_to_object_storage():
    """A submitted job's cwd is temporary and the pods share no folder: everything it writes or reads is a URI."""
    checked = 0
    for name, job in _rayjobs().items():
        for command in _commands(job["spec"]["entrypoint"]):
            for i, word in enumerate(command):
                key, _, value = word.partition("=")
                if key in OUTPUT_KEYS or (word == "--output-dir" and (value := command[i + 1])):
                    checked += 1
                    assert value.startswith("s3://"), f"{name}: {word} {value}"
    assert checked >= 9


def _subcommands(parser) -> set[str]:
    import argparse

    return {name for a in parser._actions if isinstance(a, argparse._SubParsersAction) for name in a.choices}


def test_rayjob_entrypoints_parse_with_the_real_cli_and_config():
    """Each `hybrid …` in the entrypoints is accepted by the CLI's parser and its key=value overrides by the config
    (nothing runs)."""
    from hybrid.cli.config import load_config, split_overrides
    from hybrid.main import build_parser

    parser = build_parser()
    known = _subcommands(parser)
    parsed = 0
    for name, job in _rayjobs().items():
        for command in _commands(job["spec"]["entrypoint"]):
            assert command[1] in known, f"{name}: unknown command {command[1]!r}"
            parser.parse_args(command[1:])
            overrides, _ = split_overrides(command[2:])
            load_config(overrides)
            parsed += 1
    assert parsed >= 5


def _strict(schema):
    """Kubernetes prunes unknown fields silently; here they are errors (typos)."""
    if isinstance(schema, dict):
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        for value in schema.values():
            _strict(value)
    elif isinstance(schema, list):
        for value in schema:
            _strict(value)
    return schema


def _crd_errors(doc: dict) -> list[str]:
    """What KubeRay v1.7.0's CRD schema (kuberay_crds/) says is wrong with a RayCluster or RayJob document."""
    import jsonschema

    schema = _strict(json.loads((KUBERAY_CRDS / f"{doc['kind']}.v1.json").read_text()))
    return [f"{list(e.absolute_path)}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]


def test_kuberay_manifests_match_the_kuberay_crds():
    for name, doc in _ray_documents():
        errors = _crd_errors(doc)
        assert not errors, f"{name}: {errors[:5]}"


def test_the_crd_check_rejects_broken_manifests():
    """The check above is real: a misspelt field, a wrong type and a missing required field each fail it."""
    job = copy.deepcopy(_rayjobs()["rayjob-train.yaml"])
    typo = copy.deepcopy(job)
    typo["spec"]["shutdownAfterJobFinish"] = typo["spec"].pop("shutdownAfterJobFinishes")
    wrong_type = copy.deepcopy(job)
    wrong_type["spec"]["ttlSecondsAfterFinished"] = "an hour"
    no_containers = copy.deepcopy(job)
    del no_containers["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"]
    for broken, field in ((typo, "shutdownAfterJobFinish"), (wrong_type, "an hour"), (no_containers, "containers")):
        errors = _crd_errors(broken)
        assert errors and any(field in e for e in errors), errors


# -- Dockerfile, conda, uv -----------------------------------------------------------------------------------------
def test_dockerfile_builds_on_the_pinned_gpu_image_and_installs_the_project():
    text = (CLUSTER / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S*)$", text, re.M))
    assert args["BASE_IMAGE"] == RAY_GPU_IMAGE
    assert args["RAY_VERSION"] == RAY_VERSION
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.M)
    assert re.search(r"^COPY --chown=ray:users \. \.$", text, re.M)
    assert '"ray[default,data,train,tune]==${RAY_VERSION}"' in text and "pip install --no-cache-dir -e ." in text
    ignored = (CLUSTER / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", "data", "outputs", ".env"} <= set(ignored) and ".git" not in ignored
    # the manifests run the image's checkout
    pipeline = _rayjobs()["rayjob-pipeline.yaml"]["spec"]["entrypoint"]
    assert (
        re.search(r"^WORKDIR /home/ray/hybrid-llm-trainer$", text, re.M) and "/home/ray/hybrid-llm-trainer" in pipeline
    )


def test_conda_environment_matches_pyproject():
    env = yaml.safe_load((ROOT / "environment.yaml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    (pip,) = [d["pip"] for d in env["dependencies"] if isinstance(d, dict)]
    assert "python=3.11" in conda and "pip" in conda
    assert RAY_REQUIREMENT in pip and "-e .[dev]" in pip
    assert "dev" in _pyproject()["project"]["optional-dependencies"]
    torch_pins = [p for p in pip if p.startswith("torch")]
    makefile_pin = re.search(r"^TORCH_SPEC \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert torch_pins == [makefile_pin]
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in pip


def test_uv_takes_linux_torch_from_the_cpu_index_only():
    uv = _pyproject()["tool"]["uv"]
    (index,) = [i for i in uv["index"] if i["name"] == "pytorch-cpu"]
    assert index["url"] == "https://download.pytorch.org/whl/cpu" and index["explicit"] is True
    (source,) = uv["sources"]["torch"]
    assert source == {"index": "pytorch-cpu", "marker": "sys_platform == 'linux'"}
    assert set(uv["sources"]) == {"torch"}, "only torch comes from the PyTorch index"


# -- the README's commands -----------------------------------------------------------------------------------------
def _readme_commands(prefix: str) -> list[list[str]]:
    """Commands in cluster/README.md's code blocks that start with `prefix` (after VAR=value assignments),
    including what a `ray job submit … -- hybrid …` line submits."""
    text = (CLUSTER / "README.md").read_text()
    found = []
    for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            for command in _commands(line) if line and not line.startswith("#") else []:
                while command and re.fullmatch(r"[A-Z_]+=\S*", command[0]):
                    command = command[1:]
                if command[:1] == [prefix]:
                    found.append(command)
                if command[:1] == ["ray"] and "--" in command and command[command.index("--") + 1 :][:1] == [prefix]:
                    found.append(command[command.index("--") + 1 :])
    return found


def test_readme_ray_commands_exist_in_the_installed_ray_cli():
    """Every `ray …` command and --option the README shows exists in Ray's CLI (no invented flags)."""
    import click
    from ray.scripts.scripts import cli

    commands = _readme_commands("ray")
    assert len(commands) >= 8
    for words in commands:
        command, i = cli, 1
        while isinstance(command, click.Group):
            assert words[i] in command.commands, f"`{' '.join(words)}`: no `{words[i]}` in `ray`"
            command, i = command.commands[words[i]], i + 1
        options = {o for p in command.params for o in p.opts}
        for word in words[i:]:
            if word == "--":
                break
            if word.startswith("-"):
                assert word.split("=", 1)[0] in options, f"`{' '.join(words)}`: {word} is not an option"


def test_readme_hybrid_commands_parse():
    from hybrid.main import build_parser

    parser = build_parser()
    known = _subcommands(parser)
    from hybrid.cli.config import load_config, split_overrides

    commands = _readme_commands("hybrid")
    assert len(commands) >= 5
    for words in commands:
        assert words[1] in known, f"`{' '.join(words)}`: no `{words[1]}` in `hybrid`"
        parser.parse_args(words[1:])
        load_config(split_overrides(words[2:])[0])
