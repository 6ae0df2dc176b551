"""Model folders (`from_pretrained` / `save_pretrained`): our own (safetensors + config.json) and HuggingFace
Llama / GPT-2 folders, without importing `transformers`. HF parameter names map to ours through the small tables
below (tested against `transformers`). Training checkpoints (optimizer, scheduler, step) are
`hybrid.training.checkpoints`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from hybrid.config.model import ModelConfig
from hybrid.core.errors import ConfigError, HybridError
from hybrid.core.io import atomic_path, atomic_write_json
from hybrid.models.params import is_memory_param, memory_module

FORMAT_KEY = "hybrid_model_format"
FORMAT_VERSION = 1

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


def hf_config_to_ours(hf: dict[str, Any], path: Path) -> dict[str, Any]:
    kind = hf.get("model_type")
    if kind == "llama":
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
            raise HybridError(f"{path}: rope type {rope.get('rope_type', rope.get('type'))!r} is not supported "
                              "(only default RoPE)")
        if hf.get("mlp_bias"):
            raise HybridError(f"{path}: mlp_bias=true is not supported")
        hidden, heads = hf["hidden_size"], hf["num_attention_heads"]
        head_dim = hf.get("head_dim")
        cfg = dict(
            family="llama", vocab_size=hf["vocab_size"], hidden_size=hidden,
            intermediate_size=hf["intermediate_size"], num_hidden_layers=hf["num_hidden_layers"],
            num_attention_heads=heads, num_key_value_heads=hf.get("num_key_value_heads") or heads,
            head_dim=head_dim if head_dim and head_dim != hidden // heads else None,
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
            attention_bias=bool(hf.get("attention_bias", False)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            hidden_act=hf.get("hidden_act", "silu"),
        )
    elif kind == "gpt2":
        if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
            raise HybridError(f"{path}: scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not supported")
        if hf.get("scale_attn_weights") is False:
            raise HybridError(f"{path}: scale_attn_weights=false is not supported")
        hidden = hf["n_embd"]
        cfg = dict(
            family="gpt2", vocab_size=hf["vocab_size"], hidden_size=hidden,
            intermediate_size=hf.get("n_inner") or 4 * hidden, num_hidden_layers=hf["n_layer"],
            num_attention_heads=hf["n_head"], num_key_value_heads=None,
            max_position_embeddings=hf.get("n_positions", 1024),
            rms_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
            hidden_act=hf.get("activation_function", "gelu_new"),
        )
        if cfg["hidden_act"] not in ("gelu_new", "gelu"):
            raise HybridError(f"{path}: activation_function {cfg['hidden_act']!r} is not supported")
    else:
        raise HybridError(f"{path}/config.json: model_type {kind!r} is not supported (llama or gpt2)")
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
    _load_state(model, state, directory)
    return model


def _load_state(model, state: dict[str, torch.Tensor], directory: Path) -> None:
    own = model.state_dict()
    tied = model.config.tie_word_embeddings
    unexpected = [k for k in state if k not in own]
    if unexpected:
        raise HybridError(f"{directory}: unexpected parameter {unexpected[0]!r}"
                          + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else "")
                          + " — does the config match the weights?")
    # A memory module absent from the checkpoint altogether (a base model, or ours saved with that memory off)
    # keeps its no-op initialisation; one present only in part is an error.
    saved_modules = {memory_module(k) for k in state} - {None}
    missing = [k for k in own if k not in state and not (tied and k == "lm_head.weight")
               and not (is_memory_param(k) and memory_module(k) not in saved_modules)]
    if missing:
        raise HybridError(f"{directory}: missing parameter {missing[0]!r}"
                          + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    for k, t in state.items():
        if tuple(t.shape) != tuple(own[k].shape):
            raise HybridError(f"{directory}: parameter {k!r} has shape {tuple(t.shape)}, the config expects "
                              f"{tuple(own[k].shape)}")
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
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()
             if not (config.tie_word_embeddings and k == "lm_head.weight")}
    with atomic_path(directory / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", FORMAT_KEY: str(FORMAT_VERSION)})
    cfg = config.model_dump(mode="json")
    cfg.update({FORMAT_KEY: FORMAT_VERSION, "architectures": [class_name], "model_type": cfg["family"]})
    atomic_write_json(directory / "config.json", cfg)
