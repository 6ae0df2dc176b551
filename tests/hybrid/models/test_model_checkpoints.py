"""Loading HuggingFace checkpoints (parity with `transformers`), our own checkpoints, and bad folders."""

from __future__ import annotations

import json

import pytest
import torch

from hybrid.core.errors import ConfigError, HybridError
from tests.hybrid.models.model_helpers import FAMILIES, open_gates, tiny_model

transformers = pytest.importorskip("transformers")


def _hf_llama(tmp_path, tie=False):
    cfg = transformers.LlamaConfig(
        vocab_size=101,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        rope_theta=500.0,
        tie_word_embeddings=tie,
    )
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # random norms too, so a misplaced norm would show
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    return hf


def _hf_gpt2(tmp_path):
    cfg = transformers.GPT2Config(
        vocab_size=101, n_embd=64, n_layer=2, n_head=4, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0
    )
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if ".ln_" in name:
                p.uniform_(0.5, 1.5)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    return hf


@pytest.mark.parametrize("tie", [False, True])
def test_llama_parity_with_transformers(tmp_path, tie):
    from hybrid.models.hybrid_llama import HybridLlamaForCausalLM

    hf = _hf_llama(tmp_path, tie)
    ours = HybridLlamaForCausalLM.from_pretrained(
        tmp_path, use_internal_memory=False, use_external_memory=False, segment_length=40
    ).eval()
    assert ours.config.num_key_value_heads == 2 and ours.config.rope_theta == 500.0
    ids = torch.randint(0, 101, (2, 40))
    with torch.no_grad():
        ref = hf(ids, labels=ids)
        out = ours(ids, labels=ids)
    assert (out.logits - ref.logits).abs().max().item() <= 1e-4
    assert abs(out.loss.item() - ref.loss.item()) <= 1e-4


def test_gpt2_parity_with_transformers(tmp_path):
    from hybrid.models.hybrid_gpt2 import HybridGPT2ForCausalLM

    hf = _hf_gpt2(tmp_path)
    ours = HybridGPT2ForCausalLM.from_pretrained(
        tmp_path, use_internal_memory=False, use_external_memory=False, segment_length=64
    ).eval()
    ids = torch.randint(0, 101, (2, 64))
    with torch.no_grad():
        ref = hf(ids, labels=ids)
        out = ours(ids, labels=ids)
    assert (out.logits - ref.logits).abs().max().item() <= 1e-4
    assert abs(out.loss.item() - ref.loss.item()) <= 1e-4


@pytest.mark.parametrize("make", [_hf_llama, _hf_gpt2])
def test_memories_on_a_hf_base_are_a_noop_within_a_segment(tmp_path, make):
    from hybrid.models import model_class

    hf = make(tmp_path)
    family = "llama" if "Llama" in type(hf).__name__ else "gpt2"
    ours = model_class(family).from_pretrained(tmp_path, segment_length=32, retrieval_layers=[1]).eval()
    assert ours.config.use_internal_memory and ours.config.use_external_memory
    ids = torch.randint(0, 101, (2, 32))
    with torch.no_grad():
        assert (ours(ids).logits - hf(ids).logits).abs().max().item() <= 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_own_checkpoint_roundtrip(tmp_path, family):
    model = tiny_model(family)
    open_gates(model, 0.3)
    model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "model.safetensors"}
    loaded = type(model).from_pretrained(tmp_path).eval()
    assert loaded.config.model_dump(exclude={"pretrained"}) == model.config.model_dump(exclude={"pretrained"})
    ids = torch.randint(0, 97, (2, 40))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    from hybrid.models.modeling import HybridForCausalLM

    generic = HybridForCausalLM.from_pretrained(tmp_path, retrieval_k=1)  # the family comes from the folder
    assert type(generic) is type(model) and generic.config.retrieval_k == 1


def test_build_model_from_config_sections(tmp_path):
    from hybrid.cli.config import load_config
    from hybrid.models import build_model, count_parameters, trainable_parameters

    base = tiny_model("llama", use_internal_memory=False, use_external_memory=False)
    base.save_pretrained(tmp_path)
    cfg = load_config(
        ["model=tiny_llama_hybrid", f"model.pretrained={tmp_path}", "model.freeze_base=true", "model.memory_slots=3"]
    )
    model = build_model(cfg.model, vocab_size=50, memory_cfg=cfg.memory)
    assert model.config.memory_slots == 3 and model.config.vocab_size == 97  # sizes from the checkpoint
    counts = count_parameters(model)
    names = [n for n, _ in trainable_parameters(model)]
    assert counts["trainable"] == counts["memory"] > 0 and all("memory" in n for n in names)
    grown = build_model(cfg.model, vocab_size=500)  # our tokenizer's special tokens on top of the base's ids
    assert grown.config.vocab_size == 500 and grown.lm_head.weight.shape[0] == 500
    assert torch.equal(grown.model.embed_tokens.weight[:97], model.model.embed_tokens.weight)
    assert torch.allclose(grown.model.embed_tokens.weight[97:], model.model.embed_tokens.weight.mean(0).expand(403, -1))
    assert grown(torch.tensor([[1, 499]])).logits.shape == (1, 2, 500)
    fresh = build_model(load_config(["model=tiny_gpt2_hybrid"]).model, vocab_size=50)
    assert fresh.lm_head.weight.shape[0] == 50 and fresh.lm_head.weight is fresh.model.embed_tokens.weight


def test_freeze_base_trains_only_memory():
    model = tiny_model("llama")
    model.freeze_base()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(0, 97, (2, 48))
    model.train()
    for _ in range(2):
        model(ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    for n, p in model.named_parameters():
        moved = not torch.equal(p, before[n])
        assert moved == ("memory" in n), n
    with pytest.raises(ConfigError, match="freeze_base"):
        tiny_model("llama", use_internal_memory=False, use_external_memory=False).freeze_base()


def test_bad_checkpoints_give_one_line_errors(tmp_path):
    from hybrid.models.hybrid_gpt2 import HybridGPT2ForCausalLM
    from hybrid.models.hybrid_llama import HybridLlamaForCausalLM

    with pytest.raises(HybridError, match="no config.json"):
        HybridLlamaForCausalLM.from_pretrained(tmp_path / "nowhere")
    _hf_llama(tmp_path)
    with pytest.raises(HybridError, match="not gpt2"):
        HybridGPT2ForCausalLM.from_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="model.bogus: unknown key"):
        HybridLlamaForCausalLM.from_pretrained(tmp_path, bogus=1)
    with pytest.raises(ConfigError, match="num_mem_heads"):
        HybridLlamaForCausalLM.from_pretrained(tmp_path, num_mem_heads=5)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["hidden_size"] = 32
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(HybridError, match="shape"):
        HybridLlamaForCausalLM.from_pretrained(tmp_path, use_internal_memory=False)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(HybridError, match="no model.safetensors"):
        HybridLlamaForCausalLM.from_pretrained(tmp_path)


def test_gpt2_key_map_covers_every_hf_key(tmp_path):
    from hybrid.models.pretrained import map_hf_state_dict, read_safetensors

    hf = _hf_gpt2(tmp_path)
    mapped = map_hf_state_dict("gpt2", read_safetensors(tmp_path))
    assert torch.equal(
        mapped["model.layers.1.self_attn.k_proj.weight"], hf.transformer.h[1].attn.c_attn.weight[:, 64:128].t()
    )
    with pytest.raises(HybridError, match="no mapping"):
        map_hf_state_dict("gpt2", {"transformer.h.0.attn.rotary.weight": torch.zeros(1)})
