"""Checkpoint directories: written atomically, never pickled, validated on load.

    <output_dir>/checkpoint_step_000050/
        config.json, *.safetensors   the model (`save_pretrained`; loads with `from_pretrained`)
        optimizer.pt, scheduler.pt   state dicts of tensors and numbers (torch.load(weights_only=True));
        optimizer/                   instead of optimizer.pt under FSDP: each rank's shard (torch.distributed.checkpoint)
        trainer_state.json           step, epoch position, best validation loss, metrics
        config.yaml                  the resolved run configuration
        tokenizer.json, tokenizer_config.json
    <output_dir>/best -> checkpoint_step_…   (symlink, swapped atomically) the lowest validation loss so far

A checkpoint is written into a hidden temp folder beside its final name and renamed into place, so a folder named
`checkpoint_step_*` is always complete; a run killed mid-write leaves only a `.tmp-…` folder, removed next time.

`train.output_dir` may also be a URI (`s3://bucket/runs/x`, any pyarrow file system). The run then writes into a
local staging folder (`staging_dir`) as above and publishes each checkpoint to the URI file by file with
`trainer_state.json` last — object stores have no rename, so a remote checkpoint counts only once that file is
there — then the run's files (metrics.jsonl, TensorBoard events) and `best`, which on a URI is a small text file
holding the checkpoint's name. Resume and `hybrid eval` download the checkpoint they need into a local cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from hybrid.core import storage
from hybrid.core.errors import HybridError
from hybrid.core.redact import library_message
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


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir()
             if p.is_dir() and not p.is_symlink() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a training output folder (→ its `best`, else its latest checkpoint); validated.
    On a URI: the same, downloaded into a local cache (once)."""
    if storage.is_uri(path):
        return fetch_checkpoint(resolve_remote(str(path)))
    path = Path(path)
    if not path.exists():
        raise HybridError(f"{path}: no such checkpoint folder")
    if path.is_dir() and not (path / TRAINER_STATE).exists() and not (path / "config.json").exists():
        if (path / BEST).exists():
            path = (path / BEST).resolve()
        elif latest_checkpoint(path):
            path = latest_checkpoint(path)
    validate_checkpoint(path)
    return path


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
        state = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise HybridError(f"{file}: corrupt checkpoint state ({e})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise HybridError(f"{file}: corrupt checkpoint state (no integer 'step')")
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


def write_checkpoint(tmp: Path, model_state: dict[str, Any], model_config, class_name: str,
                     optimizer_state: dict[str, Any] | None, scheduler_state: dict[str, Any],
                     trainer_state: dict[str, Any], config_yaml: str, tokenizer_json: str) -> None:
    """Everything but sharded optimizer state into `tmp` (created here): the model folder (`from_pretrained` loads
    it), optimizer.pt (unless the optimizer is sharded: each rank then writes optimizer/ with DCP), scheduler.pt,
    trainer_state.json, config.yaml, the tokenizer."""
    import torch

    tmp.mkdir(parents=True, exist_ok=True)
    save_weights(model_state, model_config, class_name, tmp)
    if optimizer_state is not None:
        torch.save(optimizer_state, tmp / "optimizer.pt")
    torch.save(scheduler_state, tmp / "scheduler.pt")
    (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2) + "\n")
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


def save_checkpoint(output_dir: str | Path, step: int, model, optimizer, scheduler, trainer_state: dict[str, Any],
                    config_yaml: str, tokenizer_json: str, run_id: str = "single") -> Path:
    """Write a single process's checkpoint atomically (temp folder + rename) and return its folder."""
    tmp = temp_checkpoint_dir(output_dir, step, run_id)
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        write_checkpoint(tmp, model.state_dict(), model.config, type(model).__name__, optimizer.state_dict(),
                         scheduler.state_dict(), trainer_state, config_yaml, tokenizer_json)
        return commit_checkpoint(tmp, step)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def set_best(output_dir: str | Path, checkpoint: Path) -> None:
    """Point `best` at `checkpoint` (relative symlink, replaced atomically)."""
    output_dir = Path(output_dir)
    tmp = output_dir / f".tmp-{BEST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"  # unique: never another run's
    os.symlink(checkpoint.name, tmp)
    os.replace(tmp, output_dir / BEST)


def best_checkpoint(output_dir: str | Path) -> Path | None:
    best = Path(output_dir) / BEST
    return best.resolve() if best.exists() else None


def prune(output_dir: str | Path, keep_last: int) -> None:
    """Keep the last `keep_last` checkpoints and the best; remove older ones and stale temp folders."""
    output_dir = Path(output_dir)
    found = list_checkpoints(output_dir)
    best = best_checkpoint(output_dir)
    for ckpt in found[:-keep_last]:
        if best is None or ckpt.resolve() != best:
            shutil.rmtree(ckpt, ignore_errors=True)
    for stale in output_dir.glob(f".tmp-*{PREFIX}*"):  # left by a run killed mid-write
        shutil.rmtree(stale, ignore_errors=True)
    for stale in output_dir.glob(f".tmp-{BEST}-*"):  # a `best` link a killed run had not swapped in yet
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
                for k in f.keys():
                    shapes[k] = tuple(f.get_slice(k).get_shape())
        except Exception as e:
            raise HybridError(f"{file}: corrupt checkpoint file ({str(e).splitlines()[0][:200]})") from None
    return shapes


def plan_init(own_shapes: dict[str, tuple[int, ...]], saved_shapes: dict[str, tuple[int, ...]], path: Path,
              tied: bool) -> tuple[list[str], list[str], list[str]]:
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
            raise HybridError(f"train.init_from: parameter {k!r} has shape {tuple(saved_shapes[k])} in {path}, "
                              f"but this run's model expects {tuple(shape)}")
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
    loaded, fresh, unused = plan_init({k: tuple(v.shape) for k, v in own.items()},
                                      {k: tuple(v.shape) for k, v in state.items()}, path,
                                      bool(model.config.tie_word_embeddings))
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


# -- output folders on a URI ------------------------------------------------------------------------------------
def _cache_root() -> Path:
    return Path(os.environ.get("HYBRID_CACHE_DIR") or Path(tempfile.gettempdir()) / "hybrid-cache")


def staging_dir(output: str) -> Path:
    """Where a run whose train.output_dir is the URI `output` writes before publishing (one per URI, per machine)."""
    key = hashlib.blake2b(output.rstrip("/").encode(), digest_size=8).hexdigest()
    return _cache_root() / "runs" / key


def remote_checkpoints(uri: str) -> list[str]:
    """Names of the complete checkpoints under the URI (those whose trainer_state.json is there), oldest first."""
    names = [n for n, is_dir in storage.list_dir(uri)
             if is_dir and n.startswith(PREFIX) and n[len(PREFIX):].isdigit()]
    names.sort(key=lambda n: int(n[len(PREFIX):]))
    return [n for n in names if storage.exists(storage.join(uri, n, TRAINER_STATE))]


def remote_best(uri: str) -> str | None:
    """The checkpoint name `best` holds on a URI, if any."""
    best = storage.join(uri, BEST)
    if not storage.exists(best):
        return None
    name = storage.read_text(best).strip()
    if not (name.startswith(PREFIX) and name[len(PREFIX):].isdigit()):
        raise HybridError(f"{storage.shown(best)}: not a checkpoint name ({name[:60]!r})")
    return name


def resolve_remote(uri: str) -> str:
    """A checkpoint URI, or a training output URI (→ its `best`, else its latest complete checkpoint)."""
    uri = uri.rstrip("/")
    if storage.exists(storage.join(uri, TRAINER_STATE)):
        return uri
    name = remote_best(uri) or (remote_checkpoints(uri) or [None])[-1]
    if name is None:
        raise HybridError(f"{storage.shown(uri)}: no checkpoint there (nor a training output folder with one)")
    return storage.join(uri, name)


def fetch_checkpoint(uri: str, dest: Path | None = None) -> Path:
    """A local, validated copy of the checkpoint at `uri` (downloaded once; a partial download is redone)."""
    dest = dest or _cache_root() / "checkpoints" / hashlib.blake2b(uri.encode(), digest_size=8).hexdigest()
    if dest.is_dir():
        try:
            validate_checkpoint(dest)
            return dest
        except HybridError:
            shutil.rmtree(dest, ignore_errors=True)
    tmp = dest.with_name(f".tmp-{os.getpid()}-{dest.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    storage.download_dir(uri, tmp)
    validate_checkpoint(tmp)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest


def publish_checkpoint(local: Path, uri: str) -> str:
    """Upload a committed local checkpoint to <uri>/<its name>, trainer_state.json last; returns its URI."""
    dest = storage.join(uri, local.name)
    storage.upload_dir(local, dest, last=TRAINER_STATE)
    return dest


def publish_files(local_dir: Path, uri: str, names: tuple[str, ...] = ("metrics.jsonl",),
                  folders: tuple[str, ...] = ("tensorboard",)) -> None:
    """The run's own files (each one whole PUT) and folders next to the checkpoints on the URI."""
    for name in names:
        if (local_dir / name).is_file():
            storage.write_text(storage.join(uri, name), (local_dir / name).read_text(encoding="utf-8"))
    for name in folders:
        if (local_dir / name).is_dir():
            storage.upload_dir(local_dir / name, storage.join(uri, name))


def fetch_run_files(uri: str, local_dir: Path, names: tuple[str, ...] = ("metrics.jsonl",)) -> None:
    """The run's files from the URI into a fresh staging folder (a resumed run appends to its metrics.jsonl)."""
    for name in names:
        if not (local_dir / name).exists() and storage.exists(storage.join(uri, name)):
            atomic_write(local_dir / name, storage.read_text(storage.join(uri, name)))


def latest_state(output: str | Path) -> dict[str, Any] | None:
    """The trainer state of the latest complete checkpoint in a training output folder or URI, or None."""
    if storage.is_uri(output):
        names = remote_checkpoints(str(output))
        if not names:
            return None
        try:
            return json.loads(storage.read_text(storage.join(str(output), names[-1], TRAINER_STATE)))
        except json.JSONDecodeError as e:
            raise HybridError(f"{storage.shown(output)}/{names[-1]}/{TRAINER_STATE}: corrupt "
                              f"({library_message(e, str(output))})") from None
    latest = latest_checkpoint(output)
    return read_trainer_state(latest) if latest is not None else None


def set_remote_best(uri: str, name: str) -> None:
    storage.write_text(storage.join(uri, BEST), name + "\n")


def prune_remote(uri: str, keep_last: int) -> None:
    """Keep the last `keep_last` complete checkpoints and `best` on the URI; remove older ones."""
    best = remote_best(uri)
    for name in remote_checkpoints(uri)[:-keep_last]:
        if name != best:
            storage.remove_dir(storage.join(uri, name))
