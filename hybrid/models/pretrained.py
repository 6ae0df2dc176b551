"""Model folders (`from_pretrained` / `save_pretrained`): our own (safetensors + config.json) and HuggingFace
Llama / Mistral / Qwen2 / GPT-2 folders, read without importing `transformers`; and the way back (`save_hf`, for
`hybrid export-hf`): the base in its own HuggingFace format, the memory beside it. HF parameter names map to ours
through the small tables below (tested against `transformers`). Training checkpoints (optimizer, scheduler, step)
are `hybrid.training.checkpoints`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from hybrid.config.model import HF_ARCHITECTURES, MEMORY_FIELDS, ModelConfig
from hybrid.core.errors import ConfigError, HybridError
from hybrid.core.io import atomic_path, atomic_write_json
from hybrid.models.params import is_memory_param, memory_module

FORMAT_KEY = "hybrid_model_format"
FORMAT_VERSION = 1
# `export-hf` folders: the base in its own HuggingFace format, the memory beside it in these two files.
MEMORY_WEIGHTS = "memory.safetensors"
MEMORY_CONFIG = "memory_config.json"
MEMORY_FORMAT_KEY = "hybrid_memory_format"
EXPORTED_MEMORY_FIELDS = tuple(
    f for f in MEMORY_FIELDS if f not in ("freeze_base", "dropout", "gradient_checkpointing", "use_gpu_to_search")
)

# (HF key regex, our key, transform). Transforms: "T" = transpose (GPT-2 Conv1D stores (in, out)),
# "qkv" = GPT-2's fused c_attn, split into q/k/v and transposed. Llama names are ours already.
LLAMA_KEY_MAP: list[tuple[str, str, str | None]] = [
    (r"^model\.(.+)$", r"model.\1", None),
    (r"^lm_head\.weight$", "lm_head.weight", None),
]
LLAMA_IGNORED = (r"\.rotary_emb\.inv_freq$",)

_GPT2 = r"^(?:transformer\.)?"
GPT2_KEY_MAP: list[tuple[str, str, str | None]] = [
    (_GPT2 + r"wte\.weight$", "model.embed_tokens.weight", None),
    (_GPT2 + r"wpe\.weight$", "model.embed_positions.weight", None),
    (_GPT2 + r"h\.(\d+)\.ln_1\.(weight|bias)$", r"model.layers.\1.input_layernorm.\2", None),
    (_GPT2 + r"h\.(\d+)\.attn\.c_attn\.(weight|bias)$", r"model.layers.\1.self_attn.{q,k,v}_proj.\2", "qkv"),
    (_GPT2 + r"h\.(\d+)\.attn\.c_proj\.weight$", r"model.layers.\1.self_attn.o_proj.weight", "T"),
    (_GPT2 + r"h\.(\d+)\.attn\.c_proj\.bias$", r"model.layers.\1.self_attn.o_proj.bias", None),
    (_GPT2 + r"h\.(\d+)\.ln_2\.(weight|bias)$", r"model.layers.\1.post_attention_layernorm.\2", None),
    (_GPT2 + r"h\.(\d+)\.mlp\.c_fc\.weight$", r"model.layers.\1.mlp.up_proj.weight", "T"),
    (_GPT2 + r"h\.(\d+)\.mlp\.c_fc\.bias$", r"model.layers.\1.mlp.up_proj.bias", None),
    (_GPT2 + r"h\.(\d+)\.mlp\.c_proj\.weight$", r"model.layers.\1.mlp.down_proj.weight", "T"),
    (_GPT2 + r"h\.(\d+)\.mlp\.c_proj\.bias$", r"model.layers.\1.mlp.down_proj.bias", None),
    (_GPT2 + r"ln_f\.(weight|bias)$", r"model.norm.\1", None),
    (r"^lm_head\.weight$", "lm_head.weight", None),
]
GPT2_IGNORED = (r"\.attn\.bias$", r"\.attn\.masked_bias$")


def map_hf_state_dict(family: str, state: dict[str, torch.Tensor], n_heads: int | None = None) -> dict:
    """HF parameter names and layouts -> ours. Unknown keys are an error (nothing is guessed)."""
    table, ignored = (LLAMA_KEY_MAP, LLAMA_IGNORED) if family == "llama" else (GPT2_KEY_MAP, GPT2_IGNORED)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if any(re.search(p, key) for p in ignored):
            continue
        for pattern, target, transform in table:
            m = re.match(pattern, key)
            if not m:
                continue
            name = m.expand(target)
            if transform == "T":
                out[name] = tensor.t().contiguous()
            elif transform == "qkv":
                t = tensor.t() if tensor.dim() == 2 else tensor  # weight (d, 3d) -> (3d, d)
                for part, piece in zip("qkv", t.chunk(3, dim=0)):
                    out[name.replace("{q,k,v}", part)] = piece.contiguous()
            else:
                out[name] = tensor
            break
        else:
            raise HybridError(f"unexpected parameter {key!r} in a {family} checkpoint (no mapping)")
    return out


def _supported() -> str:
    return ", ".join(f"{arch} ({kind})" for kind, arch in HF_ARCHITECTURES.items())


def hf_config_to_ours(hf: dict[str, Any], path: Path) -> dict[str, Any]:
    """A HuggingFace config.json -> our config fields. Llama, Mistral and Qwen2 are all family `llama`
    (`hf_model_type` keeps which); anything we would compute differently is refused in one line."""
    kind = hf.get("model_type")
    archs = hf.get("architectures") or []
    if kind not in HF_ARCHITECTURES or any(a != HF_ARCHITECTURES[kind] for a in archs):
        named = f"{archs[0]} (model_type {kind!r})" if archs else f"model_type {kind!r}"
        raise HybridError(f"{path}/config.json: architecture {named} is not supported; supported: {_supported()}")
    if kind == "gpt2":
        return _gpt2_config(hf, path)
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})  # v5 / v4 names
    rope_type = rope.get("rope_type", rope.get("type")) or "default"
    if rope_type not in ("default", "llama3"):
        raise HybridError(f"{path}: rope type {rope_type!r} is not supported (default or llama3)")
    if hf.get("mlp_bias"):
        raise HybridError(f"{path}: mlp_bias=true is not supported")
    if kind == "qwen2" and (hf.get("use_sliding_window") or "sliding_attention" in (hf.get("layer_types") or [])):
        raise HybridError(f"{path}: Qwen2 with use_sliding_window=true is not supported (per-layer windows)")
    hidden, heads = hf["hidden_size"], hf["num_attention_heads"]
    head_dim = hf.get("head_dim")
    cfg = dict(
        family="llama",
        hf_model_type=kind,
        vocab_size=hf["vocab_size"],
        hidden_size=hidden,
        intermediate_size=hf["intermediate_size"],
        num_hidden_layers=hf["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=hf.get("num_key_value_heads") or heads,
        head_dim=head_dim if head_dim and head_dim != hidden // heads else None,
        max_position_embeddings=hf.get("max_position_embeddings", 2048),
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        attention_bias=bool(hf.get("attention_bias", False)) and kind != "qwen2",
        qkv_bias=kind == "qwen2",  # Qwen2's q/k/v always have biases, its o_proj none
        sliding_window=hf.get("sliding_window") if kind == "mistral" else None,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        hidden_act=hf.get("hidden_act", "silu"),
    )
    if rope_type == "llama3":
        fields = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        missing = [f for f in fields if f not in rope]
        if missing:
            raise HybridError(f"{path}: llama3 rope scaling without {', '.join(missing)}")
        cfg["rope_scaling"] = {f: rope[f] for f in fields}
    cfg["segment_length"] = min(ModelConfig.model_fields["segment_length"].default, cfg["max_position_embeddings"])
    return cfg


def _gpt2_config(hf: dict[str, Any], path: Path) -> dict[str, Any]:
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
        raise HybridError(f"{path}: scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not supported")
    if hf.get("scale_attn_weights") is False:
        raise HybridError(f"{path}: scale_attn_weights=false is not supported")
    hidden = hf["n_embd"]
    cfg = dict(
        family="gpt2",
        hf_model_type="gpt2",
        vocab_size=hf["vocab_size"],
        hidden_size=hidden,
        intermediate_size=hf.get("n_inner") or 4 * hidden,
        num_hidden_layers=hf["n_layer"],
        num_attention_heads=hf["n_head"],
        num_key_value_heads=None,
        max_position_embeddings=hf.get("n_positions", 1024),
        rms_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
        hidden_act=hf.get("activation_function", "gelu_new"),
    )
    if cfg["hidden_act"] not in ("gelu_new", "gelu"):
        raise HybridError(f"{path}: activation_function {cfg['hidden_act']!r} is not supported")
    cfg["segment_length"] = min(ModelConfig.model_fields["segment_length"].default, cfg["max_position_embeddings"])
    return cfg


def read_safetensors(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if single.is_file():
        return load_file(str(single))
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(str(directory / shard)))
        return state
    raise HybridError(f"{directory}: no model.safetensors (or model.safetensors.index.json)")


def load_checkpoint(cls, directory, **overrides):
    """Our checkpoint or a HF Llama / GPT-2 folder -> a model of `cls` (fp32). Memory parameters absent from a
    base checkpoint keep their (no-op) initialisation; any other missing or unexpected parameter is an error."""
    directory = Path(directory)
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise HybridError(f"{directory}: no config.json (expected a checkpoint folder)")
    try:
        raw = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise HybridError(f"{cfg_path}: not valid JSON ({e.msg})") from None
    ours = FORMAT_KEY in raw
    if ours:
        fields = {k: v for k, v in raw.items() if k in ModelConfig.model_fields}
    else:
        fields = hf_config_to_ours(raw, directory)
        fields.update(read_memory_config(directory))  # an export-hf folder: the memory it was trained with
    for key in overrides:
        if key not in ModelConfig.model_fields:
            raise ConfigError(f"model.{key}: unknown key")
    fields.update(overrides)
    fields["pretrained"] = str(directory)
    family = getattr(cls, "family", None)
    if family is not None and fields.get("family", family) != family:
        raise HybridError(f"{directory}: holds a {fields.get('family')} model, not {family} ({cls.__name__})")
    try:
        config = cls.config_class(**fields)
    except Exception as e:  # pydantic ValidationError -> one line naming the key
        if isinstance(e, ValidationError):
            err = e.errors()[0]
            raise ConfigError(f"model.{'.'.join(map(str, err['loc'])) or 'config'}: {err['msg']}") from None
        raise
    if family is None:
        cls = cls.for_family(config.family)
    model = cls(config)
    state = read_safetensors(directory)
    if not ours:
        state = map_hf_state_dict(config.family, state)
        if (directory / MEMORY_WEIGHTS).is_file():
            from safetensors.torch import load_file

            own = model.state_dict()  # memories the caller switched off are left out
            state.update({k: v for k, v in load_file(str(directory / MEMORY_WEIGHTS)).items() if k in own})
    _load_state(model, state, directory)
    return model


def read_memory_config(directory: Path) -> dict[str, Any]:
    """The memory settings `export-hf` wrote beside a base (memory_config.json); {} when there are none."""
    path = directory / MEMORY_CONFIG
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise HybridError(f"{path}: not valid JSON ({e.msg})") from None
    unknown = [k for k in raw if k not in EXPORTED_MEMORY_FIELDS and k != MEMORY_FORMAT_KEY]
    if unknown or MEMORY_FORMAT_KEY not in raw:
        why = f"unknown key {unknown[0]!r}" if unknown else f"no {MEMORY_FORMAT_KEY}"
        raise HybridError(f"{path}: not a hybrid memory config ({why})")
    return {k: v for k, v in raw.items() if k != MEMORY_FORMAT_KEY}


def _load_state(model, state: dict[str, torch.Tensor], directory: Path) -> None:
    own = model.state_dict()
    tied = model.config.tie_word_embeddings
    unexpected = [k for k in state if k not in own]
    if unexpected:
        raise HybridError(
            f"{directory}: unexpected parameter {unexpected[0]!r}"
            + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else "")
            + " — does the config match the weights?"
        )
    # A memory module absent from the checkpoint altogether (a base model, or ours saved with that memory off)
    # keeps its no-op initialisation; one present only in part is an error.
    saved_modules = {memory_module(k) for k in state} - {None}
    missing = [
        k
        for k in own
        if k not in state
        and not (tied and k == "lm_head.weight")
        and not (is_memory_param(k) and memory_module(k) not in saved_modules)
    ]
    if missing:
        raise HybridError(
            f"{directory}: missing parameter {missing[0]!r}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    for k, t in state.items():
        if tuple(t.shape) != tuple(own[k].shape):
            raise HybridError(
                f"{directory}: parameter {k!r} has shape {tuple(t.shape)}, the config expects {tuple(own[k].shape)}"
            )
    with torch.no_grad():
        params = dict(model.named_parameters(remove_duplicate=False))
        buffers = dict(model.named_buffers())
        for k, t in state.items():
            if tied and k == "lm_head.weight":
                continue  # the embedding is the head
            target = params.get(k, buffers.get(k))
            target.copy_(t.to(target.dtype))


def save_checkpoint(model, directory) -> None:
    """config.json (our format marker + every config field) and model.safetensors, each written atomically."""
    save_weights(model.state_dict(), model.config, type(model).__name__, directory)


def save_weights(state: dict[str, torch.Tensor], config: ModelConfig, class_name: str, directory) -> None:
    """A model folder from a state dict (e.g. gathered from FSDP shards), loadable by `from_pretrained`."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().contiguous().cpu()
        for k, v in state.items()
        if not (config.tie_word_embeddings and k == "lm_head.weight")
    }
    with atomic_path(directory / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", FORMAT_KEY: str(FORMAT_VERSION)})
    cfg = config.model_dump(mode="json")
    cfg.update({FORMAT_KEY: FORMAT_VERSION, "architectures": [class_name], "model_type": cfg["family"]})
    atomic_write_json(directory / "config.json", cfg)


# -- back to HuggingFace (`hybrid export-hf`) ---------------------------------------------------------------------


def hf_config_of(config: ModelConfig, eos_token_id: int | None = None) -> dict[str, Any]:
    """The HuggingFace config.json of a model's base (memory left out): the architecture it came from, or the
    family's when it was trained from scratch."""
    kind = config.hf_model_type or config.family
    if config.family == "gpt2":
        hf = dict(
            vocab_size=config.vocab_size,
            n_embd=config.hidden_size,
            n_layer=config.num_hidden_layers,
            n_head=config.num_attention_heads,
            n_inner=config.intermediate_size,
            n_positions=config.max_position_embeddings,
            layer_norm_epsilon=config.rms_norm_eps,
            activation_function=config.activation,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    else:
        if config.qkv_bias and kind != "qwen2" or config.sliding_window and kind != "mistral":
            raise HybridError(f"a {kind} model with qkv_bias / sliding_window has no HuggingFace equivalent")
        if config.attention_bias and kind != "llama":
            raise HybridError(f"a {kind} model with attention_bias has no HuggingFace equivalent")
        hf = dict(
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=config.num_attention_heads,
            num_key_value_heads=config.kv_heads,
            head_dim=config.head_size,
            max_position_embeddings=config.max_position_embeddings,
            rms_norm_eps=config.rms_norm_eps,
            hidden_act=config.activation,
            attention_dropout=0.0,
            rope_theta=config.rope_theta,
            rope_scaling=None,
        )
        if config.rope_scaling is not None:  # v4's name; transformers 5 reads it too (tested)
            hf["rope_scaling"] = config.rope_scaling.model_dump()
        if kind == "llama":
            hf.update(attention_bias=config.attention_bias, mlp_bias=False)
        elif kind == "mistral":
            hf.update(sliding_window=config.sliding_window)
        else:
            hf.update(use_sliding_window=False, sliding_window=None)
    hf.update(
        model_type=kind,
        architectures=[HF_ARCHITECTURES[kind]],
        tie_word_embeddings=config.tie_word_embeddings,
        torch_dtype="float32",
    )
    if eos_token_id is not None:
        hf.update(eos_token_id=eos_token_id, pad_token_id=eos_token_id)
    return hf


def hf_state_dict(model) -> dict[str, torch.Tensor]:
    """The base's parameters under HuggingFace names and layouts (the inverse of `map_hf_state_dict`); the memory's
    are left out, and a tied head is saved once, as the embedding (as transformers saves it)."""
    config = model.config
    base = {
        k: v.detach().cpu().contiguous()
        for k, v in model.state_dict().items()
        if not is_memory_param(k) and not (config.tie_word_embeddings and k == "lm_head.weight")
    }
    if config.family == "gpt2":
        return _gpt2_to_hf(base)
    return base  # Llama, Mistral, Qwen2: our names are theirs


# Our GPT-2 names -> HF's (the inverse of GPT2_KEY_MAP; q/k/v are fused back into c_attn by `_gpt2_to_hf`).
_OURS = r"^model\.layers\.(\d+)\."
GPT2_EXPORT_MAP: list[tuple[str, str, str | None]] = [
    (r"^model\.embed_tokens\.weight$", "transformer.wte.weight", None),
    (r"^model\.embed_positions\.weight$", "transformer.wpe.weight", None),
    (_OURS + r"input_layernorm\.(weight|bias)$", r"transformer.h.\1.ln_1.\2", None),
    (_OURS + r"self_attn\.o_proj\.weight$", r"transformer.h.\1.attn.c_proj.weight", "T"),
    (_OURS + r"self_attn\.o_proj\.bias$", r"transformer.h.\1.attn.c_proj.bias", None),
    (_OURS + r"post_attention_layernorm\.(weight|bias)$", r"transformer.h.\1.ln_2.\2", None),
    (_OURS + r"mlp\.up_proj\.weight$", r"transformer.h.\1.mlp.c_fc.weight", "T"),
    (_OURS + r"mlp\.up_proj\.bias$", r"transformer.h.\1.mlp.c_fc.bias", None),
    (_OURS + r"mlp\.down_proj\.weight$", r"transformer.h.\1.mlp.c_proj.weight", "T"),
    (_OURS + r"mlp\.down_proj\.bias$", r"transformer.h.\1.mlp.c_proj.bias", None),
    (r"^model\.norm\.(weight|bias)$", r"transformer.ln_f.\1", None),
    (r"^lm_head\.weight$", "lm_head.weight", None),
]


def _gpt2_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        m = re.match(_OURS + r"self_attn\.([qkv])_proj\.(weight|bias)$", key)
        if m:
            if m.group(2) == "q":  # q, k, v (3 x (d, d)) -> c_attn (d, 3d), Conv1D's (in, out) layout
                fused = torch.cat([state[key.replace(".q_proj.", f".{p}_proj.")] for p in "qkv"], 0)
                out[f"transformer.h.{m.group(1)}.attn.c_attn.{m.group(3)}"] = (
                    fused.t().contiguous() if fused.dim() == 2 else fused
                )
            continue
        for pattern, target, transform in GPT2_EXPORT_MAP:
            m = re.match(pattern, key)
            if m:
                out[m.expand(target)] = tensor.t().contiguous() if transform == "T" else tensor
                break
        else:
            raise HybridError(f"parameter {key!r} has no GPT-2 name")
    return out


def memory_state_dict(model) -> dict[str, torch.Tensor]:
    """The memory's parameters under our names (what `from_pretrained` adds to an exported base)."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if is_memory_param(k)}


def save_hf(model, directory, eos_token_id: int | None = None) -> list[str]:
    """Write the base as a HuggingFace folder (config.json, model.safetensors) and the memory beside it
    (memory.safetensors, memory_config.json) into `directory`, which the caller owns (export-hf writes into a
    temp folder it renames). Returns the file names written."""
    from safetensors.torch import save_file

    directory = Path(directory)
    save_file(hf_state_dict(model), str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(hf_config_of(model.config, eos_token_id), indent=2) + "\n")
    names = ["config.json", "model.safetensors", MEMORY_CONFIG]
    memory = memory_state_dict(model)
    if memory:
        save_file(memory, str(directory / MEMORY_WEIGHTS), metadata={"format": "pt"})
        names.append(MEMORY_WEIGHTS)
    settings = {k: getattr(model.config, k) for k in EXPORTED_MEMORY_FIELDS}
    (directory / MEMORY_CONFIG).write_text(json.dumps({MEMORY_FORMAT_KEY: 1, **settings}, indent=2) + "\n")
    return names
