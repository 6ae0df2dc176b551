"""LM2-style internal memory (arXiv 2502.06049, §3), written from the paper's description, not its code.

Per sequence and per layer a state M ∈ R^{N×d} (N = memory_slots) starts from a learned value.

    read  (segment s, from M_{s-1}):  E = MHA(q = x W_q, k = M W_k, v = M W_v) W_o            (B, T, d)
                                      (computed in slot space: see `read`)
                                      out = tanh(α) ⊙ σ(E W_g + b_g) ⊙ E                   (added to the residual)
    write (after segment s):          C = MHA(q = M W_q', k = x W_k', v = x W_v')          (B, N, d)
                                      i = σ([M, C] W_i + b_i),  f = σ([M, C] W_f + b_f),  b_f = forget_bias
                                      M_s = i ⊙ tanh(C) + f ⊙ M_{s-1}                      (kept in float32)

No term mixes tokens of a segment into the read of the same segment (LM2's released gates use a sequence mean,
which leaks future tokens), and the state is per batch row (never shared across rows, fresh for every call).
α = 0 at init makes the block a no-op on a pretrained base while ∂loss/∂α = σ(·)⊙E ≠ 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hybrid.config.model import ModelConfig


class InternalMemory(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        d, self.n_heads = config.hidden_size, config.num_mem_heads
        self.slots = config.memory_slots
        std = config.initializer_range
        self.initial_memory = nn.Parameter(torch.randn(self.slots, d) * std)  # M_0, learned
        self.read_q, self.read_k, self.read_v, self.read_o = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.out_gate = nn.Linear(d, d)  # σ(E W_g + b_g), LM2's output gate
        # tanh(α): opens the read path; 0 = no-op at init (model.memory_gate_init)
        self.gate = nn.Parameter(torch.full((d,), math.atanh(config.memory_gate_init)))
        self.write_q, self.write_k, self.write_v = (nn.Linear(d, d, bias=False) for _ in range(3))
        self.input_gate = nn.Linear(2 * d, d)
        self.forget_gate = nn.Linear(2 * d, d)
        for lin in (
            self.read_q,
            self.read_k,
            self.read_v,
            self.read_o,
            self.out_gate,
            self.write_q,
            self.write_k,
            self.write_v,
            self.input_gate,
            self.forget_gate,
        ):
            nn.init.normal_(lin.weight, std=std)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
        nn.init.constant_(self.forget_gate.bias, config.forget_bias)  # LM2 §3, as in LSTMs: remember by default

    def initial_state(self, batch_size: int) -> torch.Tensor:
        """A fresh state for `batch_size` sequences: (B, N, d) float32 on the parameters' device."""
        return self.initial_memory.float().unsqueeze(0).expand(batch_size, -1, -1)

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor, write: bool, key_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The block's use of the memory for one segment: (read output (B, T, d), M_s when `write`, else M_{s-1}).
        One call, so that `torch.compile` (train.compile) sees the read and the write as one graph."""
        out = self.read(x, memory)
        return out, (self.write(x, memory, key_mask) if write else memory)

    def _heads(self, linear: nn.Linear) -> torch.Tensor:
        """A (d_out=M*Dm, d_in=d) weight as (M, Dm, d), one (Dm, d) block per head."""
        return linear.weight.view(self.n_heads, -1, linear.weight.shape[1])

    # Both directions are computed in *slot space*: the token-side projection of each head is folded into the
    # N slot-side vectors (associativity: (x W_q^T)·(M W_k^T)^T = x·(M W_k^T W_q)^T), so the per-token cost is
    # O(M·N·d) instead of O(d²) — the same function and parameters as plain multi-head attention, ~10x fewer
    # FLOPs at N=16, M=4, d=512.
    def read(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """x (B, T, d) normed hidden states; memory (B, N, d) float32 = M_{s-1}. Returns (B, T, d)."""
        # B batch, T tokens, N slots, M memory heads, Dm = d/M, d width
        B, T, d = x.shape
        M, N = self.n_heads, memory.shape[1]
        m = memory.to(x.dtype) if not torch.is_autocast_enabled(x.device.type) else memory
        k = self.read_k(m).view(B, N, M, -1)  # (B, N, M, Dm)
        v = self.read_v(m).view(B, N, M, -1)  # (B, N, M, Dm)
        wq = self._heads(self.read_q).to(k.dtype)  # (M, Dm, d)
        wo = self.read_o.weight.view(d, M, -1).to(v.dtype)  # (d, M, Dm)
        k_x = torch.einsum("bnme,med->bmnd", k, wq).reshape(B, M * N, d)  # (B, M*N, d) keys in token space
        v_o = torch.einsum("bnme,dme->bmnd", v, wo).reshape(B, M * N, d)  # (B, M*N, d) values after W_o
        g_o = v_o @ self.out_gate.weight.t().to(v_o.dtype)  # (B, M*N, d) gate logits per slot (E W_g is linear)
        scores = (x @ k_x.transpose(1, 2).to(x.dtype)) * (k.shape[-1] ** -0.5)  # (B, T, M*N)
        probs = torch.softmax(scores.float().view(B, T, M, N), -1).to(x.dtype).view(B, T, M * N)
        # The per-token work is one (T, M*N) @ (M*N, 2d) product and one fused GLU (a ⊙ σ(b)): tanh(α) scales the
        # M*N slot values instead of the T outputs, and since each head's probabilities sum to 1,
        # probs @ (g_o + b_g/M) = probs @ g_o + b_g puts the bias on the slot rows too (profiled: the token-side
        # scaling, bias add, sigmoid and products were about a third of the read; docs/model.md).
        slot_e = v_o * torch.tanh(self.gate).to(v_o.dtype)  # (B, M*N, d): tanh(α) ⊙ values
        slot_g = g_o + self.out_gate.bias.to(g_o.dtype) / M  # (B, M*N, d)
        e_g = probs @ torch.cat([slot_e, slot_g], -1).to(x.dtype)  # (B, T, 2d) = [tanh(α) ⊙ E, E W_g + b_g]
        return F.glu(e_g, -1)  # (B, T, d) = tanh(α) ⊙ E ⊙ σ(E W_g + b_g)

    def write(self, x: torch.Tensor, memory: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """M_s from M_{s-1} (B, N, d) float32 and the segment's x (B, T, d). Returns float32 (B, N, d)."""
        B, T, d = x.shape
        M, N = self.n_heads, memory.shape[1]
        m = memory.to(x.dtype) if not torch.is_autocast_enabled(x.device.type) else memory
        q = self.write_q(m).view(B, N, M, -1)  # (B, N, M, Dm)
        wk = self._heads(self.write_k).to(q.dtype)  # (M, Dm, d)
        wv = self._heads(self.write_v)  # (M, Dm, d)
        q_x = torch.einsum("bnme,med->bmnd", q, wk).reshape(B, M * N, d)  # (B, M*N, d) queries in token space
        scores = (q_x.to(x.dtype) @ x.transpose(1, 2)).float() * (q.shape[-1] ** -0.5)  # (B, M*N, T)
        if key_mask is not None:  # a row with no real token in the segment attends to all (its output is unused)
            key_mask = key_mask | ~key_mask.any(-1, keepdim=True)
            scores = scores.masked_fill(~key_mask[:, None, :], float("-inf"))
        agg = (torch.softmax(scores, -1).to(x.dtype) @ x).view(B, M, N, d)  # (B, M, N, d)
        cand = torch.einsum("bmnd,med->bnme", agg, wv.to(agg.dtype)).reshape(B, N, d)  # (B, N, d) = C
        both = torch.cat([m.to(cand.dtype), cand], dim=-1)  # (B, N, 2d)
        i = self.input_gate(both)
        f = self.forget_gate(both)
        with torch.autocast(x.device.type, enabled=False):  # the state stays float32 under bf16 autocast
            return torch.sigmoid(i.float()) * torch.tanh(cand.float()) + torch.sigmoid(f.float()) * memory.float()
