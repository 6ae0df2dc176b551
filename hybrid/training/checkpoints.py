"""Checkpoint directories: written atomically, never pickled, validated on load.

    <output_dir>/checkpoint_step_000050/
        config.json, *.safetensors   the model (`save_pretrained`; loads with `from_pretrained`)
        optimizer.pt, scheduler.pt   state dicts of tensors and numbers (torch.load(weights_only=True));
        optimizer/                   instead of optimizer.pt under FSDP: each rank's shard
                                     (torch.distributed.checkpoint)
        trainer_state.json           step, epoch position, best validation loss, metrics
        config.yaml                  the resolved run configuration
        tokenizer.json, tokenizer_config.json
    <output_dir>/best -> checkpoint_step_…   (symlink, swapped atomically) the lowest validation loss so far

A checkpoint is written into a hidden temp folder beside its final name and renamed into place, so a folder named
`checkpoint_step_*` is always complete; a run killed mid-write leaves only a `.tmp-…` folder, removed next time.

`train.output_dir` may also be a URI (`s3://bucket/runs/x`, any pyarrow file system): every function here takes
either, through hybrid/core/storage.py. A run writes into its work folder (the output folder itself, or a local
staging folder for a URI) as above and publishes each checkpoint to the output (nothing to do when they are the
same), file by file with `trainer_state.json` last — object stores have no rename, so a checkpoint counts only
once that file is there — then the run's files (metrics.jsonl, TensorBoard events) and `best`, which on a URI is a
small text file holding the checkpoint's name. Resume and `hybrid eval` read a local folder: the checkpoint itself,
or a download of it into a local cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from hybrid.core import storage
from hybrid.core.errors import HybridError
from hybrid.core.io import atomic_write
from hybrid.data.tokenizer import write_tokenizer_config
from hybrid.models.modeling import HybridForCausalLM
from hybrid.models.pretrained import read_safetensors, save_weights

PREFIX = "checkpoint_step_"
BEST = "best"
TRAINER_STATE = "trainer_state.json"
REQUIRED_FILES = ("config.json", "config.yaml", "tokenizer.json", TRAINER_STATE)


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:06d}"


def _is_checkpoint_name(name: str) -> bool:
    return name.startswith(PREFIX) and name[len(PREFIX) :].isdigit()


def checkpoint_names(output: str | Path) -> list[str]:
    """Names of the complete checkpoints in a training output folder or URI (those whose trainer_state.json is
    there), oldest first."""
    where = storage.at(output)
    names = sorted(
        (n for n, is_dir in where.list_dir(output) if is_dir and _is_checkpoint_name(n)),
        key=lambda n: int(n[len(PREFIX) :]),
    )
    return [n for n in names if where.exists(where.join(output, n, TRAINER_STATE))]


def list_checkpoints(output: str | Path) -> list[Path | str]:
    """Complete checkpoints in `output`, oldest first (folders: `Path`s; on a URI: URIs)."""
    where = storage.at(output)
    return [where.native(where.join(output, n)) for n in checkpoint_names(output)]


def latest_checkpoint(output: str | Path) -> Path | str | None:
    found = list_checkpoints(output)
    return found[-1] if found else None


def best_name(output: str | Path) -> str | None:
    """The checkpoint name `best` holds in `output`, if any."""
    where = storage.at(output)
    name = where.read_pointer(output, BEST)
    if name is not None and not _is_checkpoint_name(name):
        raise HybridError(f"{where.shown(where.join(output, BEST))}: not a checkpoint name ({name[:60]!r})")
    return name


def best_checkpoint(output: str | Path) -> Path | str | None:
    where, name = storage.at(output), best_name(output)
    return where.native(where.join(output, name)) if name else None


def set_best(output: str | Path, checkpoint: str | Path) -> None:
    """Point `best` at `checkpoint` (a checkpoint of `output`, or its name): a relative symlink swapped atomically in
    a folder, a text file holding the name on a URI."""
    storage.at(output).set_pointer(output, BEST, storage.base_name(checkpoint))


def resolve_checkpoint(path: str | Path) -> Path:
    """A local, validated checkpoint folder: `path` itself, or — for a training output folder — its `best`, else
    its latest checkpoint; on a URI downloaded into a local cache (once)."""
    where = storage.at(path)
    if not where.exists(path):
        raise HybridError(f"{where.shown(path)}: no such checkpoint folder")
    if (
        where.is_dir(path)
        and not where.exists(where.join(path, TRAINER_STATE))
        and not where.exists(where.join(path, "config.json"))
    ):
        best, names = best_name(path), checkpoint_names(path)
        if best:
            path = where.absolute(where.join(path, best))
        elif names:
            path = where.join(path, names[-1])
    return fetch_checkpoint(path)


def validate_checkpoint(path: str | Path) -> None:
    path = Path(path)
    if not path.is_dir():
        raise HybridError(f"{path}: not a checkpoint folder")
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
    if not any(path.glob("*.safetensors")):
        missing.append("*.safetensors")
    if missing:
        raise HybridError(f"{path}: not a complete checkpoint (missing {', '.join(missing)})")


def read_trainer_state(path: str | Path) -> dict[str, Any]:
    file = Path(path) / TRAINER_STATE
    try:
        text = file.read_text()
    except OSError as e:
        raise HybridError(f"{file}: corrupt checkpoint state ({e})") from None
    return parse_trainer_state(text, str(file))


def parse_trainer_state(text: str, where: str) -> dict[str, Any]:
    """A trainer_state.json's content; a one-line error naming `where` when it is not one."""
    try:
        state = json.loads(text)
    except json.JSONDecodeError as e:
        raise HybridError(f"{where}: corrupt checkpoint state ({e})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise HybridError(f"{where}: corrupt checkpoint state (no integer 'step')")
    return state


def load_state_file(path: Path) -> Any:
    """A torch.save'd state dict, read without unpickling arbitrary objects."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise HybridError(f"{path}: no such file (incomplete checkpoint)") from None
    except Exception as e:
        raise HybridError(f"{path}: corrupt checkpoint file ({str(e).splitlines()[0][:200]})") from None


def load_model(path: str | Path, **overrides):
    """The model saved in a checkpoint; any damage is a HybridError naming the folder."""

    path = Path(path)
    validate_checkpoint(path)
    try:
        return HybridForCausalLM.from_pretrained(path, **overrides)
    except HybridError:
        raise
    except Exception as e:
        raise HybridError(f"{path}: corrupt checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None


def _fsync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def temp_checkpoint_dir(output_dir: str | Path, step: int, run_id: str) -> Path:
    """The hidden folder a checkpoint is written into before it is renamed into place (unique to the run, so two
    runs never write into each other's)."""
    return Path(output_dir) / f".tmp-{run_id}-{checkpoint_name(step)}"


def write_checkpoint(
    tmp: Path,
    model_state: dict[str, Any],
    model_config,
    class_name: str,
    optimizer_state: dict[str, Any] | None,
    scheduler_state: dict[str, Any],
    trainer_state: TrainerState,
    config_yaml: str,
    tokenizer_json: str,
) -> None:
    """Everything but sharded optimizer state into `tmp` (created here): the model folder (`from_pretrained` loads
    it), optimizer.pt (unless the optimizer is sharded: each rank then writes optimizer/ with DCP), scheduler.pt,
    trainer_state.json, config.yaml, the tokenizer."""
    import torch

    tmp.mkdir(parents=True, exist_ok=True)
    save_weights(model_state, model_config, class_name, tmp)
    if optimizer_state is not None:
        torch.save(optimizer_state, tmp / "optimizer.pt")
    torch.save(scheduler_state, tmp / "scheduler.pt")
    (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state.to_json(), indent=2) + "\n")
    (tmp / "config.yaml").write_text(config_yaml)
    (tmp / "tokenizer.json").write_text(tokenizer_json)
    write_tokenizer_config(tmp)


def commit_checkpoint(tmp: Path, step: int) -> Path:
    """Flush `tmp` to disk and rename it to its final name: a folder named `checkpoint_step_*` is always whole."""
    final = tmp.parent / checkpoint_name(step)
    _fsync_tree(tmp)
    if final.exists():  # a rerun of the same step (e.g. after a crash between rename and report)
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def prune(output: str | Path, keep_last: int, work_dir: str | Path | None = None) -> None:
    """Keep the last `keep_last` checkpoints and the best in `output` (and in the run's local work folder, when that is
    a staging folder); remove older ones, and the temp folders a run killed mid-write left in the work folder."""
    where = storage.at(output)
    work = Path(work_dir) if work_dir is not None else where.work_dir(output)
    best = best_name(output)
    for folder in dict.fromkeys([str(output), str(work)]):
        for name in checkpoint_names(folder)[:-keep_last]:
            if name != best:
                storage.remove_dir(storage.join(folder, name))
    for stale in work.glob(f".tmp-*{PREFIX}*"):  # left by a run killed mid-write
        shutil.rmtree(stale, ignore_errors=True)
    for stale in work.glob(f".tmp-{BEST}-*"):  # a `best` link a killed run had not swapped in yet
        stale.unlink(missing_ok=True)


# -- train.init_from: weights only ------------------------------------------------------------------------------
def _safetensors_files(path: Path) -> list[Path]:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise HybridError(f"{path}: not a complete checkpoint (missing *.safetensors)")
    return files


def checkpoint_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of a checkpoint's weights, read from the safetensors headers (no tensor loaded)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for file in _safetensors_files(Path(path)):
        try:
            with safe_open(str(file), framework="pt") as f:
                for k in f.keys():  # noqa: SIM118 (a safetensors file handle: keys() is its API, no __contains__/__iter__)
                    shapes[k] = tuple(f.get_slice(k).get_shape())
        except Exception as e:
            raise HybridError(f"{file}: corrupt checkpoint file ({str(e).splitlines()[0][:200]})") from None
    return shapes


def plan_init(
    own_shapes: dict[str, tuple[int, ...]], saved_shapes: dict[str, tuple[int, ...]], path: Path, tied: bool
) -> tuple[list[str], list[str], list[str]]:
    """(loaded, fresh, unused) parameter names for initialising a model with `own_shapes` from `path`.

    fresh: in the model, not in the checkpoint (they keep their initialisation, e.g. memory parameters when the
    checkpoint was trained without memory); unused: in the checkpoint, not in the model. A name in both with
    different shapes is an error naming it."""
    skip = {"lm_head.weight"} if tied else set()  # tied: the embedding is the head
    loaded, fresh = [], []
    for k, shape in own_shapes.items():
        if k in skip:
            continue
        if k not in saved_shapes:
            fresh.append(k)
        elif tuple(saved_shapes[k]) != tuple(shape):
            raise HybridError(
                f"train.init_from: parameter {k!r} has shape {tuple(saved_shapes[k])} in {path}, "
                f"but this run's model expects {tuple(shape)}"
            )
        else:
            loaded.append(k)
    unused = [k for k in saved_shapes if k not in own_shapes and k not in skip]
    return loaded, fresh, unused


def init_weights_from(model, path: str | Path) -> tuple[list[str], list[str], list[str]]:
    """Copy the weights of checkpoint `path` into `model` where names (and shapes) agree; the rest of `model`
    keeps its initialisation. Returns (loaded, fresh, unused) as `plan_init`."""
    import torch

    path = Path(path)
    own = model.state_dict()
    try:
        state = read_safetensors(path)
    except HybridError:
        raise
    except Exception as e:
        raise HybridError(f"{path}: corrupt checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    loaded, fresh, unused = plan_init(
        {k: tuple(v.shape) for k, v in own.items()},
        {k: tuple(v.shape) for k, v in state.items()},
        path,
        bool(model.config.tie_word_embeddings),
    )
    with torch.no_grad():
        for k in loaded:
            own[k].copy_(state[k].to(own[k].dtype))
    return loaded, fresh, unused


def describe_init(path: Path, loaded: list[str], fresh: list[str], unused: list[str]) -> str:
    """The one line a run prints about train.init_from."""
    line = f"init from {path}: {len(loaded)} tensors loaded; fresh (not in the checkpoint): "
    line += ", ".join(fresh) if fresh else "none"
    if unused:
        line += f"; unused (not in this model): {', '.join(unused)}"
    return line


# -- publishing from a run's work folder to its output, fetching back ----------------------------------------------
def fetch_checkpoint(location: str | Path, dest: Path | None = None) -> Path:
    """A local, validated copy of the checkpoint at `location`: the folder itself when it is local, else a download
    into `dest` (by default a cache folder; downloaded once, a partial download redone)."""
    where = storage.at(location)
    dest = (
        Path(dest)
        if dest
        else storage.cache_root() / "checkpoints" / hashlib.blake2b(str(location).encode(), digest_size=8).hexdigest()
    )
    if dest.is_dir():
        try:
            validate_checkpoint(dest)
            return dest
        except HybridError:
            shutil.rmtree(dest, ignore_errors=True)
    tmp = dest.with_name(f".tmp-{os.getpid()}-{dest.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    got = where.get_dir(location, tmp)
    validate_checkpoint(got)
    if got != tmp:  # a local folder: used where it is
        return got
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest


def publish_checkpoint(local: Path, output: str | Path) -> Path | str:
    """A committed checkpoint of the work folder at <output>/<its name>, trainer_state.json last; returns it there."""
    where = storage.at(output)
    dest = where.join(output, local.name)
    where.put_dir(local, dest, last=TRAINER_STATE)
    return where.native(dest)


def publish_files(
    local_dir: Path,
    output: str | Path,
    names: tuple[str, ...] = ("metrics.jsonl",),
    folders: tuple[str, ...] = ("tensorboard",),
) -> None:
    """The run's own files (each one whole write) and folders next to the checkpoints in `output`."""
    where = storage.at(output)
    for name in names:
        if (local_dir / name).is_file():
            where.put_file(local_dir / name, where.join(output, name))
    for name in folders:
        if (local_dir / name).is_dir():
            where.put_dir(local_dir / name, where.join(output, name))


def fetch_run_files(output: str | Path, local_dir: Path, names: tuple[str, ...] = ("metrics.jsonl",)) -> None:
    """The run's files from `output` into a fresh work folder (a resumed run appends to its metrics.jsonl)."""
    where = storage.at(output)
    for name in names:
        if not (local_dir / name).exists() and where.exists(where.join(output, name)):
            atomic_write(local_dir / name, where.read_text(where.join(output, name)))


def latest_state(output: str | Path) -> dict[str, Any] | None:
    """The trainer state of the latest complete checkpoint in a training output folder or URI, or None."""
    names = checkpoint_names(output)
    if not names:
        return None
    where = storage.at(output)
    file = where.join(output, names[-1], TRAINER_STATE)
    return parse_trainer_state(where.read_text(file), where.shown(file))


@dataclass
class TrainerState:
    """What a checkpoint's trainer_state.json holds, kept by the recipe and read back on resume — the same keys as
    ever, in the same order, so checkpoints written before this class resume (a key they lack takes its default)."""

    step: int = 0  # optimizer steps done
    best_val_loss: float | None = None
    best: float | None = None  # the best value of train.best_by so far
    tokens_seen: int = 0  # tokens of the training batches, padding left out, over the whole run
    train_seconds: float = 0.0  # time in the training loop, over the run and its resumptions
    truncated: dict[str, int] = field(default_factory=dict)  # training rows cut to data.max_length, by how
    first_step_s: float | None = None  # from the driver's start to this run's first optimizer step
    metrics: dict[str, Any] = field(default_factory=dict)  # the evaluation this checkpoint was saved with

    def to_json(self) -> dict[str, Any]:
        state = asdict(self)
        if self.first_step_s is None:  # as before: only once a step ran
            del state["first_step_s"]
        return state

    @classmethod
    def from_json(cls, state: dict[str, Any]) -> TrainerState:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in state.items() if k in known}
        values["truncated"] = dict(values.get("truncated") or {})
        values["metrics"] = dict(values.get("metrics") or {})
        return cls(**values)
