"""The API others build on: labels, generation, gradient checkpointing, persistent stores, config validation."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from tests.hybrid.models.model_helpers import open_gates, tiny_config, tiny_model


def test_labels_follow_the_huggingface_convention():
    model = tiny_model("llama")
    ids = torch.randint(0, 97, (2, 40))
    labels = ids.clone()
    labels[:, :10] = -100  # e.g. the input part of an IO pair
    out = model(ids, labels=labels)
    manual = torch.nn.functional.cross_entropy(
        out.logits[:, :-1].reshape(-1, 97), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(out.loss, manual)
    assert model(ids).loss is None


@pytest.mark.parametrize(
    "family, memory, prompt_len, new", [("gpt2", True, 20, 5), ("llama", True, 10, 25), ("llama", False, 10, 25)]
)
def test_generate_is_greedy_and_stops_at_eos(family, memory, prompt_len, new):
    model = tiny_model(family, use_internal_memory=memory, use_external_memory=memory)
    open_gates(model)
    prompt = torch.randint(0, 97, (2, prompt_len))  # generation crosses segment boundaries (16, 32)
    out = model.generate(prompt, max_new_tokens=new)
    assert out.shape == (2, prompt_len + new) and torch.equal(out[:, :prompt_len], prompt)
    ids = prompt
    for _ in range(new):  # the reference: a full forward per step
        ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, ids)
    eos = int(out[0, prompt_len])
    stopped = model.generate(prompt[:1], max_new_tokens=5, eos_token_id=eos)
    assert stopped.shape == (1, prompt_len + 1)


def test_gradient_checkpointing_gives_the_same_gradients():
    ids = torch.randint(0, 97, (2, 40))
    grads = []
    for ckpt in (False, True):
        model = tiny_model("llama", gradient_checkpointing=ckpt).train()
        open_gates(model, 0.5)
        model(ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-6, rtol=1e-5, msg=name)


def test_persistent_store_and_shared_namespace():
    """A caller-owned store keeps what was written: a second call can retrieve the first call's segments."""
    from hybrid.memory.torch_store import TorchStore

    model = tiny_model("llama", use_internal_memory=False)
    open_gates(model)
    store = TorchStore(model.config.chunks_capacity)
    first = torch.randint(0, 97, (1, 32))
    second = torch.randint(0, 97, (1, 16))
    fresh = model(second).logits
    model(first, memory_store=store, namespaces=["repo"])
    assert store.stored_chunks("repo/layer1") == 16  # 2 segments x 16 tokens / chunk_size 2
    remembered = model(second, memory_store=store, namespaces=["repo"]).logits
    assert not torch.allclose(remembered, fresh)
    with pytest.raises(ValueError, match="namespaces"):
        model(second, memory_store=store)


def test_fresh_memories_per_call():
    model = tiny_model("llama")
    open_gates(model)
    ids = torch.randint(0, 97, (2, 40))
    a = model(ids).logits
    model(torch.randint(0, 97, (2, 40)))  # nothing of this call may leak into the next
    assert torch.equal(model(ids).logits, a)


def test_right_padding_needs_no_mask_and_a_full_mask_is_a_noop():
    model = tiny_model("llama")
    open_gates(model)
    ids = torch.randint(0, 97, (2, 40))
    a = model(ids).logits
    b = model(ids, attention_mask=torch.ones_like(ids)).logits
    assert torch.equal(a, b)
    mask = torch.ones_like(ids)
    mask[:, :3] = 0  # left padding: masked keys change nothing for a row with everything else equal
    padded = ids.clone()
    padded[:, :3] = 5
    c = model(padded, attention_mask=mask).logits
    padded[:, :3] = 9
    d = model(padded, attention_mask=mask).logits
    torch.testing.assert_close(c[:, 3:16], d[:, 3:16])


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(hidden_size=66), "divisible by num_attention_heads"),
        (dict(num_key_value_heads=3), "multiple of num_key_value_heads"),
        (dict(num_mem_heads=3), "num_mem_heads"),
        (dict(chunk_size=3), "multiple of chunk_size"),
        (dict(retrieval_layers=[2]), "retrieval_layers"),
        (dict(external_memory_size=1), "smaller than chunk_size"),
        (dict(bogus=1), "bogus"),
    ],
)
def test_config_validation(bad, message):
    with pytest.raises(ValidationError, match=message):
        tiny_config("llama", **bad)


def test_config_load_errors_name_the_key():
    from hybrid.cli.config import load_config
    from hybrid.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"model\.retrieval_k"):
        load_config(["model=tiny_llama_hybrid", "model.retrieval_k=0"])
    cfg = load_config(["model=tiny_llama_hybrid", "model.chunk_size=1", "memory=faiss"])
    assert cfg.model.chunk_size == 1 and cfg.memory.backend == "faiss"
    assert tiny_config("llama", retrieval_layers=None).retrieval_layer_ids == [1]
    assert tiny_config("llama", use_external_memory=False).retrieval_layer_ids == []


def test_internal_memory_on_chosen_layers_only():
    model = tiny_model("llama", internal_memory_layers=[1], use_external_memory=False)
    full = tiny_model("llama", use_external_memory=False)
    assert model.model.layers[0].internal_memory is None and model.model.layers[1].internal_memory is not None
    assert model.num_parameters() < full.num_parameters()
    open_gates(model)
    ids = torch.randint(0, 97, (1, 64))
    out = model(ids)
    assert out.internal_memory[0] is None and out.internal_memory[1].dtype == torch.float32
    changed = ids.clone()
    changed[0, 20] = (changed[0, 20] + 1) % 97
    assert (model(changed).logits[:, 48:] - out.logits[:, 48:]).abs().max() > 1e-4  # still carries information
    assert tiny_config("llama", use_internal_memory=False, internal_memory_layers=[0]).internal_memory_layer_ids == []
    with pytest.raises(ValidationError, match="internal_memory_layers"):
        tiny_config("llama", internal_memory_layers=[5])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("train_weight", [True, False])
def test_rms_norm_backward_matches_autograd_of_the_reference(dtype, train_weight):
    """RMSNorm's hand-written backward gives the gradients autograd gives for `transformers`' formula (float32
    exactly to rounding; bf16 inputs to bf16 precision), also with a frozen weight (`freeze_base`)."""
    from hybrid.models.layers import RMSNorm

    torch.manual_seed(0)
    norm = RMSNorm(48, 1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    norm.weight.requires_grad_(train_weight)
    x = (torch.randn(2, 7, 48) * 3).to(dtype).requires_grad_()
    g = torch.randn(2, 7, 48)

    def reference(x, w):
        xf = x.float()
        return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(x.dtype)

    w_ref = norm.weight.detach().clone().requires_grad_(train_weight)
    x_ref = x.detach().clone().requires_grad_()
    out, want = norm(x), reference(x_ref, w_ref)
    assert out.dtype == want.dtype and torch.equal(out, want)  # the forward is the reference's, op for op
    out.backward(g)
    want.backward(g)
    tol = {} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(x.grad, x_ref.grad, **tol)
    assert x.grad.dtype == dtype
    if train_weight:
        torch.testing.assert_close(norm.weight.grad, w_ref.grad, **tol)
    else:
        assert norm.weight.grad is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_loss_and_its_gradient_are_cross_entropys(dtype):
    """causal_lm_loss_sum (its own backward) gives F.cross_entropy's sum and gradient, -100 labels ignored; a
    second backward through it is refused with a message instead of a wrong gradient."""
    from hybrid.models.modeling import causal_lm_loss_sum, scored_labels

    torch.manual_seed(0)
    logits = (torch.randn(2, 9, 31) * 4).to(dtype).requires_grad_()
    labels = torch.randint(0, 31, (2, 9))
    labels[0, :4] = -100
    ref_logits = logits.detach().clone().requires_grad_()
    loss, n = causal_lm_loss_sum(logits, labels)
    want = torch.nn.functional.cross_entropy(
        ref_logits.reshape(-1, 31).float(), scored_labels(labels).reshape(-1), ignore_index=-100, reduction="sum"
    )
    assert n == 2 * 8 - 3
    torch.testing.assert_close(loss, want)
    (loss * 0.5).backward(retain_graph=True)
    (want * 0.5).backward()
    assert logits.grad.dtype == dtype
    torch.testing.assert_close(logits.grad, ref_logits.grad)
    assert (logits.grad[0, :3] == 0).all() and (logits.grad[:, -1] == 0).all()  # unscored positions
    with pytest.raises(RuntimeError, match="runs once"):
        loss.backward()
