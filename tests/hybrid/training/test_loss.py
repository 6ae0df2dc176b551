import math

import torch

from hybrid.cli.config import load_config
from hybrid.data.encode import collate, encode_pairs
from hybrid.data.tokenizer import train_bpe
from hybrid.models import build_model
from hybrid.models.modeling import causal_lm_loss_sum
from hybrid.training.recipe import lr_lambda


def test_loss_counts_output_tokens_only():
    """The training loss equals a hand-computed mean of -log p(token) over output (+ end-of-text) tokens."""
    torch.manual_seed(0)
    tok = train_bpe(["aa bb cc dd ee ff"] * 10, vocab_size=300)
    records = [
        {"input": "aa bb cc dd ee ff aa bb cc dd ee ff aa bb", "output": "cc dd"},
        {"input": "ff", "output": "ee dd cc bb aa"},
    ]
    enc = encode_pairs(tok, records, max_length=64)
    cfg = load_config(["model=tiny_llama_hybrid"])
    model = build_model(cfg.model, vocab_size=tok.vocab_size).eval()
    ids, labels, mask = collate(list(zip(enc.input_ids, enc.prompt_lengths)), tok.pad_id)
    assert ids.shape[1] > cfg.model.segment_length  # the input spans several segments (memories in use)
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits
        loss_sum, n = causal_lm_loss_sum(logits, labels)
        # independently: walk each row, score the output tokens and the closing end-of-text
        total, count = 0.0, 0
        for row, (seq, p) in enumerate(zip(enc.input_ids, enc.prompt_lengths)):
            logp = torch.log_softmax(logits[row].double(), -1)
            for t in range(p, len(seq)):
                total -= float(logp[t - 1, seq[t]])
                count += 1
        assert count == n == sum(len(s) - p for s, p in zip(enc.input_ids, enc.prompt_lengths))
        assert math.isclose(float(loss_sum) / n, total / count, rel_tol=1e-5)
        # the model's own HF-style mean loss agrees
        assert math.isclose(float(model(ids, labels=labels, attention_mask=mask).loss), total / count, rel_tol=1e-5)
        # the input is read, not scored: another input token changes the loss but not the tokens averaged ...
        ids2 = ids.clone()  # row 1's input shares the segment of its output (at init the memories pass nothing)
        ids2[1, 0] = (ids2[1, 0] + 1) % tok.vocab_size
        loss2, n2 = causal_lm_loss_sum(model(ids2, attention_mask=mask).logits, labels)
        assert n2 == n and not math.isclose(float(loss2), float(loss_sum), rel_tol=1e-9)
        # ... while labels on the input positions would add them to the average
        labels2 = labels.clone()
        labels2[0, : enc.prompt_lengths[0]] = ids[0, : enc.prompt_lengths[0]]
        assert causal_lm_loss_sum(logits, labels2)[1] == n + enc.prompt_lengths[0] - 1


def test_schedule():
    f = lr_lambda(warmup=4, max_iters=20, min_ratio=0.1)
    assert [round(f(s), 3) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert math.isclose(f(20), 0.1) and f(12) < f(8) < 1.0
