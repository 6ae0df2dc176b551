"""More HuggingFace bases (issue 29): Qwen2 (q/k/v biases, tied embeddings), Llama 3.x (llama3 RoPE scaling, tied
embeddings: SmolLM2, Llama-3.2), Mistral (sliding window) — logits equal to `transformers`' AutoModelForCausalLM
on tiny random checkpoints built here, memories a no-op at init, unsupported architectures refused in one line;
and the way back: the base in its own format, loadable by `transformers`."""

from __future__ import annotations

import json

import pytest
import torch

from hybrid.core.errors import HybridError
from tests.hybrid.models.model_helpers import LLAMA3_ROPE, VOCAB, hf_base

transformers = pytest.importorskip("transformers")

BASES = {  # name: (kind, config keywords)
    "qwen2-tied": ("qwen2", dict(tie_word_embeddings=True)),
    "llama3-rope-tied": ("llama", dict(tie_word_embeddings=True, rope_parameters={**LLAMA3_ROPE, "rope_theta": 5e5})),
    "mistral-window8": ("mistral", dict(sliding_window=8, head_dim=32)),
}
T = 48  # one segment (segment_length=T): positions restart at every segment, so parity holds within one


def _ids(seed=1):
    return torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(BASES))
def test_base_parity_with_transformers(tmp_path, name):
    from hybrid.models import from_pretrained

    kind, kw = BASES[name]
    hf = hf_base(tmp_path, kind, **kw)
    ours = from_pretrained(tmp_path, use_internal_memory=False, use_external_memory=False, segment_length=T).eval()
    assert ours.config.hf_model_type == kind
    ids = _ids()
    with torch.no_grad():
        ref = hf(ids, labels=ids)
        out = ours(ids, labels=ids)
    assert (out.logits - ref.logits).abs().max().item() <= 1e-4
    assert abs(out.loss.item() - ref.loss.item()) <= 1e-4
    if kw.get("tie_word_embeddings"):
        assert ours.lm_head.weight is ours.model.embed_tokens.weight


def test_qwen2_biases_are_on_q_k_v_only(tmp_path):
    from hybrid.models import from_pretrained

    hf = hf_base(tmp_path, "qwen2", tie_word_embeddings=True)
    ours = from_pretrained(tmp_path, use_internal_memory=False, use_external_memory=False)
    attn = ours.model.layers[1].self_attn
    assert attn.o_proj.bias is None
    assert torch.equal(attn.k_proj.bias, hf.model.layers[1].self_attn.k_proj.bias)


def test_llama3_rope_frequencies_equal_transformers(tmp_path):
    from hybrid.models import from_pretrained

    kind, kw = BASES["llama3-rope-tied"]
    hf = hf_base(tmp_path, kind, **kw)
    ours = from_pretrained(tmp_path, use_internal_memory=False, use_external_memory=False)
    assert ours.config.rope_scaling.factor == 8.0 and ours.config.rope_theta == 5e5
    ref = hf.model.rotary_emb.inv_freq
    assert torch.equal(ours.model.rotary.inv_freq, ref)
    plain = 1.0 / (5e5 ** (torch.arange(0, 16, 2).float() / 16))
    assert not torch.allclose(ref, plain)  # the scaling changes some frequencies: the test above can fail
    # the config.json of checkpoints saved by transformers 4 (Llama-3.1/3.2, SmolLM2 on the hub): rope_theta on
    # top, `rope_scaling` with `rope_type` (or the older `type`)
    cfg = json.loads((tmp_path / "config.json").read_text())
    del cfg["rope_parameters"]
    legacy = {k: v for k, v in LLAMA3_ROPE.items() if k != "rope_type"}
    cfg.update(rope_theta=5e5, rope_scaling={**legacy, "type": "llama3"})
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    old = from_pretrained(tmp_path, use_internal_memory=False, use_external_memory=False)
    assert torch.equal(old.model.rotary.inv_freq, ref)


def test_mistral_sliding_window_matters_and_matches(tmp_path):
    """With window 8 and 48-token inputs the window changes the logits (so the parity test can fail) — ours
    follows it; and `generate` (which re-runs the current segment) continues as forward does."""
    from hybrid.models import from_pretrained

    kind, kw = BASES["mistral-window8"]
    hf = hf_base(tmp_path, kind, **kw)
    ours = from_pretrained(tmp_path, use_internal_memory=False, use_external_memory=False, segment_length=T).eval()
    assert ours.config.sliding_window == 8
    ids = _ids()
    with torch.no_grad():
        ref = hf(ids).logits
        windowed = ours(ids).logits
        ours.config.sliding_window = None
        full = ours(ids).logits
        ours.config.sliding_window = 8
        mask = torch.ones_like(ids)
        padded = ours(ids, attention_mask=mask).logits  # the padding-mask path combines with the window
    assert (windowed - ref).abs().max().item() <= 1e-4
    assert (full - ref).abs().max().item() > 1e-3
    assert (padded - ref).abs().max().item() <= 1e-4
    gen = ours.generate(ids[:, :20], max_new_tokens=4)
    ref_gen = hf.generate(ids[:, :20], max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(gen, ref_gen)


@pytest.mark.parametrize("name", list(BASES))
def test_memories_are_a_noop_at_init_on_each_base(tmp_path, name):
    from hybrid.models import from_pretrained

    kind, kw = BASES[name]
    hf = hf_base(tmp_path, kind, **kw)
    ours = from_pretrained(
        tmp_path, segment_length=T, retrieval_layers=[1], use_external_memory=True, retrieval_k=4
    ).eval()
    assert ours.config.use_internal_memory and ours.config.retrieval_k == 4
    ids = _ids()
    with torch.no_grad():
        assert (ours(ids).logits - hf(ids).logits).abs().max().item() <= 1e-4


def _write_config(folder, **changes):
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def test_unsupported_bases_are_one_line_errors(tmp_path):
    from hybrid.models import from_pretrained

    hf_base(tmp_path, "llama")
    _write_config(tmp_path, model_type="phi", architectures=["PhiForCausalLM"])
    with pytest.raises(HybridError) as e:
        from_pretrained(tmp_path)
    msg = str(e.value)
    assert "PhiForCausalLM" in msg and "'phi'" in msg and "\n" not in msg
    for arch in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "GPT2LMHeadModel"):
        assert arch in msg
    _write_config(tmp_path, model_type="llama", architectures=["LlamaForSequenceClassification"])
    with pytest.raises(HybridError, match="LlamaForSequenceClassification .* not supported"):
        from_pretrained(tmp_path)
    _write_config(tmp_path, architectures=["LlamaForCausalLM"], rope_parameters={"rope_type": "yarn", "factor": 2.0})
    with pytest.raises(HybridError, match="rope type 'yarn' is not supported"):
        from_pretrained(tmp_path)
    _write_config(
        tmp_path, model_type="qwen2", architectures=["Qwen2ForCausalLM"], rope_parameters=None, use_sliding_window=True
    )
    with pytest.raises(HybridError, match="use_sliding_window"):
        from_pretrained(tmp_path)


# -- the way back -------------------------------------------------------------------------------------------------

EXPORTS = {**BASES, "gpt2": ("gpt2", {}), "llama-untied": ("llama", {})}


@pytest.mark.parametrize("name", list(EXPORTS))
def test_saved_hf_folder_loads_in_transformers(tmp_path, name):
    """save_hf writes the base in its own format: transformers loads it (tied or not as the base was) and gives
    our logits with the memory gates closed; our importer reads it back with the memory."""
    from safetensors.torch import load_file

    from hybrid.models import from_pretrained, memory_gates_closed
    from hybrid.models.pretrained import save_hf

    kind, kw = EXPORTS[name]
    hf_base(tmp_path / "base", kind, **kw)
    ours = from_pretrained(
        tmp_path / "base", segment_length=32, retrieval_layers=[1], memory_slots=4, num_mem_heads=2, chunk_size=2
    ).eval()
    with torch.no_grad():  # as if trained: open gates, moved memory
        for n, p in ours.named_parameters():
            if "memory" in n:
                p.add_(0.05 * torch.randn_like(p))
    out = tmp_path / "export"
    out.mkdir()
    names = save_hf(ours, out, eos_token_id=3)
    assert set(names) == {"config.json", "model.safetensors", "memory.safetensors", "memory_config.json"}
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == kind and cfg["eos_token_id"] == 3
    tied = kw.get("tie_word_embeddings", kind == "gpt2")
    weights = load_file(str(out / "model.safetensors"))
    assert ("lm_head.weight" in weights) == (not tied) and not any("memory" in k for k in weights)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == cfg["architectures"][0]
    assert (hf.lm_head.weight is hf.get_input_embeddings().weight) == tied
    ids = torch.randint(0, VOCAB, (2, 32))
    with torch.no_grad(), memory_gates_closed(ours):
        base_logits = ours(ids).logits
    with torch.no_grad():
        assert (hf(ids).logits - base_logits).abs().max().item() <= 1e-5
        back = from_pretrained(out).eval()  # memory settings and weights come back from memory_*.json/safetensors
        assert back.config.memory_slots == 4 and back.config.segment_length == 32
        assert torch.equal(back(ids).logits, ours(ids).logits)
        assert from_pretrained(out, use_internal_memory=False, use_external_memory=False).config.has_memory is False
