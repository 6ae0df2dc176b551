"""LM2-style internal memory (arXiv 2502.06049, §3), written from the paper's description, not its code.

Per sequence and per layer a state M ∈ R^{N×d} (N = memory_slots) starts from a learned value.

    read  (segment s, from M_{s-1}):  E = MHA(q = x W_q, k = M W_k, v = M W_v) W_o            (B, T, d)
                                      out = tanh(α) ⊙ σ(E W_g + b_g) ⊙ E                   (added to the residual)
    write (after segment s):          C = MHA(q = M W_q', k = x W_k', v = x W_v')          (B, N, d)
                                      i = σ([M, C] W_i + b_i),  f = σ([M, C] W_f + b_f),  b_f = forget_bias
                                      M_s = i ⊙ tanh(C) + f ⊙ M_{s-1}                      (kept in float32)

No term mixes tokens of a segment into the read of the same segment (LM2's released gates use a sequence mean,
which leaks future tokens), and the state is per batch row (never shared across rows, fresh for every call).
α = 0 at init makes the block a no-op on a pretrained base while ∂loss/∂α = σ(·)⊙E ≠ 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hybrid.models.config import ModelConfig


class InternalMemory(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        d, self.n_heads = config.hidden_size, config.num_mem_heads
        self.slots = config.memory_slots
        std = config.initializer_range
        self.initial_memory = nn.Parameter(torch.randn(self.slots, d) * std)  # M_0, learned
        self.read_q, self.read_k, self.read_v, self.read_o = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.out_gate = nn.Linear(d, d)  # σ(E W_g + b_g), LM2's output gate
        self.gate = nn.Parameter(torch.zeros(d))  # tanh(α): opens the read path; 0 = no-op at init
        self.write_q, self.write_k, self.write_v = (nn.Linear(d, d, bias=False) for _ in range(3))
        self.input_gate = nn.Linear(2 * d, d)
        self.forget_gate = nn.Linear(2 * d, d)
        for lin in (self.read_q, self.read_k, self.read_v, self.read_o, self.out_gate, self.write_q, self.write_k,
                    self.write_v, self.input_gate, self.forget_gate):
            nn.init.normal_(lin.weight, std=std)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
        nn.init.constant_(self.forget_gate.bias, config.forget_bias)  # LM2 §3, as in LSTMs: remember by default

    def initial_state(self, batch_size: int) -> torch.Tensor:
        """A fresh state for `batch_size` sequences: (B, N, d) float32 on the parameters' device."""
        return self.initial_memory.float().unsqueeze(0).expand(batch_size, -1, -1)

    def _mha(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None = None):
        # q (B, Tq, d), k/v (B, Tk, d) -> (B, Tq, d); M heads of width d/M, no causal mask (slots are unordered)
        B, Tq, d = q.shape
        Tk = k.shape[1]
        Hm, Dm = self.n_heads, d // self.n_heads
        q = q.view(B, Tq, Hm, Dm).transpose(1, 2)  # (B, Hm, Tq, Dm)
        k = k.view(B, Tk, Hm, Dm).transpose(1, 2)  # (B, Hm, Tk, Dm)
        v = v.view(B, Tk, Hm, Dm).transpose(1, 2)  # (B, Hm, Tk, Dm)
        mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, Tk) True = attend
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, Hm, Tq, Dm)
        return o.transpose(1, 2).reshape(B, Tq, d)

    def read(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """x (B, T, d) normed hidden states; memory (B, N, d) float32 = M_{s-1}. Returns (B, T, d)."""
        m = memory.to(x.dtype) if not torch.is_autocast_enabled(x.device.type) else memory
        e = self.read_o(self._mha(self.read_q(x), self.read_k(m), self.read_v(m)))  # (B, T, d)
        return torch.tanh(self.gate).to(e.dtype) * torch.sigmoid(self.out_gate(e)) * e

    def write(self, x: torch.Tensor, memory: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """M_s from M_{s-1} (B, N, d) float32 and the segment's x (B, T, d). Returns float32 (B, N, d)."""
        m = memory.to(x.dtype) if not torch.is_autocast_enabled(x.device.type) else memory
        if key_mask is not None:  # a row with no real token in the segment attends to all (its output is unused)
            key_mask = key_mask | ~key_mask.any(-1, keepdim=True)
        cand = self._mha(self.write_q(m), self.write_k(x), self.write_v(x), key_mask)  # (B, N, d)
        both = torch.cat([m.to(cand.dtype), cand], dim=-1)  # (B, N, 2d)
        i = self.input_gate(both)
        f = self.forget_gate(both)
        with torch.autocast(x.device.type, enabled=False):  # the state stays float32 under bf16 autocast
            return torch.sigmoid(i.float()) * torch.tanh(cand.float()) + torch.sigmoid(f.float()) * memory.float()
