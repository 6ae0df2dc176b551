"""`compile_blocks` (train.compile): the compiled model computes what the eager one does, and it really compiles."""

from __future__ import annotations

import os

import pytest

from tests.hybrid.models.model_helpers import open_gates, tiny_model

S = 16


INDUCTOR = pytest.param(
    "llama",
    "inductor",
    marks=pytest.mark.skipif(
        not os.environ.get("HYBRID_TEST_INDUCTOR"),
        reason="inductor builds C++ kernels for a minute or more here; HYBRID_TEST_INDUCTOR=1 runs it",
    ),
)


@pytest.mark.slow
@pytest.mark.parametrize("family,backend", [INDUCTOR, ("gpt2", "aot_eager")])
def test_compiled_blocks_equal_eager_with_every_memory(family, backend):
    """inductor (train.compile's default backend) generates C++ for every kernel, more than a minute for one block on
    a CPU without its cache, so it runs on request: one block with internal memory, whole segments, no padding.
    Every path — retrieval, a partial last segment, a padded row — is traced with aot_eager (no code generation),
    here for GPT-2 and through training for Llama (tests/hybrid/training/test_train.py)."""
    import torch._dynamo

    whole = backend == "inductor"
    one_block = dict(num_hidden_layers=1, use_external_memory=False, retrieval_layers=None) if whole else {}
    eager, compiled = tiny_model(family, **one_block).train(), tiny_model(family, **one_block).train()
    open_gates(eager, 0.5)
    open_gates(compiled, 0.5)  # the memory paths matter, so a compiled read or write that differs would show
    keys = list(compiled.state_dict())
    torch._dynamo.reset()
    compiled.compile_blocks(backend=backend)
    assert list(compiled.state_dict()) == keys  # checkpoints keep their names
    torch.manual_seed(3)
    ids = torch.randint(0, 97, (2, 3 * S if whole else 3 * S + 5))  # three whole segments (and a partial one)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0  # a padded row: the masked write path
    for attention_mask in (None,) if whole else (None, mask):
        out_e = eager(ids, labels=ids, attention_mask=attention_mask)
        out_c = compiled(ids, labels=ids, attention_mask=attention_mask)
        out_e.loss.backward()
        out_c.loss.backward()
        torch.testing.assert_close(out_c.logits, out_e.logits, atol=1e-5, rtol=1e-5)
        for (name, p_e), p_c in zip(eager.named_parameters(), compiled.parameters()):
            if p_e.grad is None:
                assert p_c.grad is None, name
                continue
            torch.testing.assert_close(p_c.grad, p_e.grad, atol=1e-5, rtol=1e-4, msg=name)
        eager.zero_grad(set_to_none=True)
        compiled.zero_grad(set_to_none=True)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert graphs >= 1, "compile_blocks compiled nothing"
