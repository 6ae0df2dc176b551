"""Base building blocks: norms, rotary embeddings, feed-forward networks, and the joint attention.

Names follow HuggingFace Llama (`q_proj`, `gate_proj`, `input_layernorm` …) so a Llama checkpoint loads with an
identity key map; GPT-2 keys are mapped by the table in `hybrid/models/pretrained.py`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hybrid.config.model import ModelConfig, RopeScaling
from hybrid.memory.store import MemoryStore, SearchResult
from hybrid.memory.torch_store import ChunkResult


class _RMSNormFunction(torch.autograd.Function):
    """weight * (x * rsqrt(mean(x²) + eps)).to(x.dtype), normalised in float32 as `transformers`' LlamaRMSNorm,
    with the backward written out: dx = r · (g_y − y · mean(g_y · y)), g_y = g · weight. Autograd's own backward of
    the five forward ops makes about twice the (T, d) passes (measured: 0.9 → 0.5 ms fwd+bwd at (512, 256) on one
    CPU thread); a model has 2–3 norms per block per segment."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        xf = x.float()
        r = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)  # (..., 1)
        y = (xf * r).to(x.dtype)
        ctx.save_for_backward(y, r, weight)
        return weight * y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        y, r, weight = ctx.saved_tensors
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = (grad * y).reshape(-1, y.shape[-1]).sum(0).to(weight.dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            gy, yf = (grad * weight).float(), y.float()
            grad_x = ((gy - yf * (gy * yf).mean(-1, keepdim=True)) * r).to(y.dtype)
        return grad_x, grad_weight, None


class RMSNorm(nn.Module):
    """Llama's RMSNorm, computed in float32 like the reference (so parity holds at 1e-5)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _RMSNormFunction.apply(x, self.weight, self.eps)


def make_norm(config: ModelConfig, dim: int | None = None) -> nn.Module:
    dim = dim or config.hidden_size
    if config.family == "llama":
        return RMSNorm(dim, config.rms_norm_eps)
    return nn.LayerNorm(dim, eps=config.rms_norm_eps)


class RotaryEmbedding(nn.Module):
    """RoPE (rotate-half convention of HF Llama), plain or with Llama 3.x scaling. Positions restart at 0 in
    every segment."""

    def __init__(self, head_dim: int, theta: float, scaling: RopeScaling | None = None):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        if scaling is not None:
            inv_freq = llama3_inv_freq(inv_freq, scaling)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, T: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(T, device=device, dtype=torch.float32)
        freqs = torch.outer(pos, self.inv_freq.to(device))  # (T, D/2)
        emb = torch.cat([freqs, freqs], dim=-1)  # (T, D)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def llama3_inv_freq(inv_freq: torch.Tensor, scaling: RopeScaling) -> torch.Tensor:
    """Llama 3.1's RoPE scaling, step for step as `transformers`' `_compute_llama3_parameters` (v5.25): wavelengths
    longer than original/low_freq_factor are divided by `factor`, shorter than original/high_freq_factor kept, and
    the ones between interpolated smoothly."""
    factor, low, high = scaling.factor, scaling.low_freq_factor, scaling.high_freq_factor
    old_context_len = scaling.original_max_position_embeddings
    low_freq_wavelen, high_freq_wavelen = old_context_len / low, old_context_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_half(x) * sin  # x (B, H, T, D), cos/sin (T, D)


class MLP(nn.Module):
    """SwiGLU (Llama: down(silu(gate(x)) * up(x))) or GELU MLP (GPT-2: down(gelu(up(x))))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        d, f = config.hidden_size, config.intermediate_size
        self.gated = config.family == "llama"
        bias = config.family == "gpt2"
        if self.gated:
            self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=bias)
        self.down_proj = nn.Linear(f, d, bias=bias)
        self.act = config.activation

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        if self.act == "silu":
            return F.silu(x)
        return F.gelu(x, approximate="tanh" if self.act == "gelu_new" else "none")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            return self.down_proj(self._act(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(self._act(self.up_proj(x)))


@dataclass
class ExternalContext:
    """What a retrieval layer needs for one segment: the store, each row's namespace, and whether to write."""

    store: MemoryStore
    namespaces: Sequence[str]  # one per batch row, for this layer
    write: bool
    read: bool = True  # False when the store is known to be empty (a fresh memory's first segment)


class JointAttention(nn.Module):
    """Causal self-attention over the current segment; at retrieval layers fused with external memory.

    Retrieval (LongMem, arXiv 2306.07174 §3, our own code): the segment's *pre-RoPE* keys are stored per kv head
    in chunks of `chunk_size` tokens (search key = mean of the chunk's keys; payload = its keys and values).
    Each query (the same q projection as local attention, before RoPE) retrieves the top `retrieval_k` chunks of
    its own row's memory. Two ways to fuse (`model.external_fusion`), per head h with w_h = tanh(β_h):
      "gate" (LongMem, Memorizing Transformers): local and memory attention have separate softmaxes and
        out_h = local_h + w_h · (memory_h − local_h)              (β = 0 at init: a no-op with ∂/∂β ≠ 0)
      "joint" (as the Focused Transformer reads its memory): one softmax over the segment's keys and the retrieved
        keys, the memory's terms weighted by max(w_h, 0), so each query decides how much it reads from memory
        (w_h = 1: a plain joint softmax; w_h = 0: local attention exactly, with ∂/∂β ≠ 0 at 0).
    Retrieved keys/values carry no gradient. Read before write: a segment never retrieves itself.
    """

    def __init__(self, config: ModelConfig, retrieval: bool = False):
        super().__init__()
        self.H, self.Hkv, self.D = config.num_attention_heads, config.kv_heads, config.head_size
        d = config.hidden_size
        bias = config.attention_bias or config.family == "gpt2"
        qkv_bias = bias or config.qkv_bias  # Qwen2: q/k/v biased, o not
        self.q_proj = nn.Linear(d, self.H * self.D, bias=qkv_bias)
        self.k_proj = nn.Linear(d, self.Hkv * self.D, bias=qkv_bias)
        self.v_proj = nn.Linear(d, self.Hkv * self.D, bias=qkv_bias)
        self.o_proj = nn.Linear(self.H * self.D, d, bias=bias)
        self.dropout = config.dropout
        self.retrieval = retrieval
        if retrieval:
            # tanh(β_h), per head; 0 = no-op at init (model.external_gate_init)
            self.memory_gate = nn.Parameter(torch.full((self.H,), math.atanh(config.external_gate_init)))
            self.retrieval_k = config.retrieval_k
            self.chunk_size = config.chunk_size
            self.joint = config.external_fusion == "joint"

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        attn_mask: torch.Tensor | None = None,
        external: ExternalContext | None = None,
    ) -> torch.Tensor:
        # B batch, T tokens of the segment, H heads, Hkv kv heads, G = H/Hkv, D head dim, K retrieved tokens
        B, T, _ = x.shape
        H, Hkv, D = self.H, self.Hkv, self.D
        q = self.q_proj(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.v_proj(x).view(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)
        handle = None
        if external is not None and external.read:
            G = H // Hkv
            queries = q.detach().reshape(B, Hkv, G * T, D)  # (B, Hkv, G*T, D) grouped by kv head (pre-RoPE)
            handle = _search(external, queries.float(), self.retrieval_k)
        q_raw, k_raw = q, k
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        drop = self.dropout if self.training else 0.0
        if handle is not None and self.joint:
            local = self._joint(q, k, v, attn_mask, q_raw, handle.result(), drop)
            handle = None
        elif attn_mask is None:
            local = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=drop, enable_gqa=Hkv != H)
        else:
            local = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=drop, enable_gqa=Hkv != H
            )  # (B, H, T, D)
        if external is not None:
            if handle is not None:
                local = self._fuse(local, q_raw, handle.result())
            if external.write:
                self._write(external, k_raw, v)
        out = local.transpose(1, 2).reshape(B, T, H * D)  # (B, T, H*D)
        return self.o_proj(out)

    def _retrieved(self, res, B: int, T: int, dtype: torch.dtype) -> _Gathered | _ChunkRows:
        """The retrieved tokens per query, K = k·c of them, and which are real (B, H, T, K)."""
        H, Hkv = self.H, self.Hkv
        G = H // Hkv
        k = res.mask.shape[3]
        c = res.bank_keys.shape[1] if isinstance(res, ChunkResult) else res.keys.shape[4]
        valid = res.mask.view(B, Hkv, G, T, k, 1).expand(B, Hkv, G, T, k, c).reshape(B, H, T, k * c)  # (B,H,T,K)
        if isinstance(res, ChunkResult):
            return _ChunkRows(res, valid, dtype)
        return _Gathered(res, valid, dtype)

    def _joint(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attn_mask: torch.Tensor | None,
        q_raw: torch.Tensor,
        res,
        drop: float,
    ) -> torch.Tensor:
        """One softmax over the segment's keys (causal, `attn_mask`) and each query's retrieved keys, the memory's
        exponentials weighted by max(tanh β_h, 0). Local scores use the rotated q/k, memory scores the pre-RoPE
        ones (stored keys have no position here), as in `_fuse`."""
        B, H, T, D = q.shape
        G = H // self.Hkv
        dtype = q.dtype
        kk, vv = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)  # (B, H, T, D)
        s_loc = (q @ kk.transpose(-1, -2)).float() / math.sqrt(D)  # (B, H, T, T)
        allowed = attn_mask if attn_mask is not None else torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        s_loc = s_loc.masked_fill(~allowed, float("-inf"))
        mem = self._retrieved(res, B, T, dtype)
        valid = mem.valid
        s_mem = mem.scores(q_raw.to(dtype)).float() / math.sqrt(D)  # (B, H, T, K)
        s_mem = s_mem.masked_fill(~valid, float("-inf"))
        top = torch.maximum(s_loc.amax(-1, keepdim=True), s_mem.amax(-1, keepdim=True)).detach()  # (B, H, T, 1)
        w = torch.tanh(self.memory_gate).clamp_min(0).view(1, H, 1, 1)
        e_loc, e_mem = torch.exp(s_loc - top), torch.exp(s_mem - top) * w  # the diagonal keeps `top` finite
        norm = e_loc.sum(-1, keepdim=True) + e_mem.sum(-1, keepdim=True)
        p_loc, p_mem = (e_loc / norm).to(dtype), (e_mem / norm).to(dtype)
        if drop:
            p_loc, p_mem = F.dropout(p_loc, drop), F.dropout(p_mem, drop)
        return p_loc @ vv + mem.read(p_mem)  # (B, H, T, D)

    def _fuse(self, local: torch.Tensor, q_raw: torch.Tensor, res) -> torch.Tensor:
        B, H, T, D = local.shape
        dtype = local.dtype
        mem = self._retrieved(res, B, T, dtype)
        valid = mem.valid
        scores = mem.scores(q_raw.to(dtype)) / math.sqrt(D)  # (B, H, T, K)
        scores = scores.float().masked_fill(~valid, float("-inf"))
        has_any = valid.any(-1, keepdim=True)  # (B, H, T, 1) rows with nothing retrieved keep the local output
        probs = torch.softmax(scores.masked_fill(~has_any, 0.0), dim=-1).to(dtype)
        memory = mem.read(probs)  # (B, H, T, D)
        gate = torch.tanh(self.memory_gate).to(dtype).view(1, H, 1, 1)
        return local + gate * torch.where(has_any, memory - local, torch.zeros_like(local))

    def _write(self, external: ExternalContext, k_raw: torch.Tensor, v: torch.Tensor) -> None:
        B, Hkv, T, D = k_raw.shape
        c = self.chunk_size
        n = T // c  # only whole chunks are stored (every segment but a call's last is whole)
        if n == 0:
            return
        ck = k_raw[:, :, : n * c].detach().float().reshape(B, Hkv, n, c, D)  # (B, Hkv, C, c, D)
        cv = v[:, :, : n * c].detach().float().reshape(B, Hkv, n, c, D)  # (B, Hkv, C, c, D)
        external.store.add(external.namespaces, ck.mean(3), ck, cv)  # chunk key = mean of its keys


def _search(external: ExternalContext, queries: torch.Tensor, k: int):
    """Start one search: a store that can answer with chunk rows (`TorchStore.search_chunks`) does, else the
    protocol's `search_async` (a handle whose `.result()` is a `SearchResult`)."""
    search_chunks = getattr(external.store, "search_chunks", None)
    if search_chunks is not None:
        res = search_chunks(external.namespaces, queries, k)
        if res is not None:
            return res
    return external.store.search_async(external.namespaces, queries, k)


class _Gathered:
    """Retrieved tokens given per query (`SearchResult.keys/values`, (B, Hkv, G*T, k, c, D)): the reads are two
    batched products over the (B, H, T, K, D) copies."""

    def __init__(self, res: SearchResult, valid: torch.Tensor, dtype: torch.dtype):
        B, H, T, K = valid.shape
        D = res.keys.shape[-1]
        self.valid = valid
        self.keys = res.keys.reshape(B, H, T, K, D).to(dtype)  # (B, H, T, K, D)
        self.values = res.values.reshape(B, H, T, K, D).to(dtype)  # (B, H, T, K, D)

    def scores(self, q: torch.Tensor) -> torch.Tensor:  # q (B, H, T, D) -> (B, H, T, K)
        return torch.einsum("bhtd,bhtkd->bhtk", q, self.keys)

    def read(self, p: torch.Tensor) -> torch.Tensor:  # p (B, H, T, K) -> (B, H, T, D)
        return torch.einsum("bhtk,bhtkd->bhtd", p, self.values)


class _ChunkRows:
    """Retrieved tokens given as rows of a chunk bank (`ChunkResult`): the same two reads, computed block by block
    of queries from the bank, so no (B, H, T, K, D) copy is ever made. At the bench's shape those were 2 x 8 MB per
    retrieving segment, freshly mapped and page-faulted each time: the retrieval layer's forward+backward took 35,
    43, 46 ms with 128, 256, 384 chunks stored and takes 33, 35, 35 ms (one CPU thread; 23 ms without retrieval)."""

    def __init__(self, res: ChunkResult, valid: torch.Tensor, dtype: torch.dtype):
        self.valid = valid
        self.bank_keys = res.bank_keys.to(dtype)  # (R, c, D)
        self.bank_values = res.bank_values.to(dtype)  # (R, c, D)
        self.index = res.index.reshape(-1, res.index.shape[-1])  # (B*H*T, k): query rows in (b, h, t) order

    def scores(self, q: torch.Tensor) -> torch.Tensor:
        B, H, T, K = self.valid.shape
        out = _RowScores.apply(q.reshape(B * H * T, -1), self.bank_keys, self.index)  # (B*H*T, K)
        return out.view(B, H, T, K)

    def read(self, p: torch.Tensor) -> torch.Tensor:
        B, H, T, K = p.shape
        out = _RowRead.apply(p.reshape(B * H * T, K), self.bank_values, self.index)  # (B*H*T, D)
        return out.view(B, H, T, -1)


_BLOCK_ELEMENTS = 1 << 18  # gathered floats per block (1 MB in float32): small enough to be reused, not mapped


def _blocks(index: torch.Tensor, bank: torch.Tensor):
    """(row slice, that block's gathered tokens (n, K, D)) over the query rows of `index` (N, k)."""
    N, k = index.shape
    c, D = bank.shape[1], bank.shape[2]
    step = max(1, _BLOCK_ELEMENTS // (k * c * D))
    for n0 in range(0, N, step):
        rows = slice(n0, min(N, n0 + step))
        yield rows, bank.index_select(0, index[rows].reshape(-1)).view(-1, k * c, D)


def _row_scores(q: torch.Tensor, bank: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """s[n, j] = q[n] · token j of row n's retrieved chunks: (N, D) → (N, K)."""
    out = q.new_empty(index.shape[0], index.shape[1] * bank.shape[1])
    for rows, tokens in _blocks(index, bank):
        out[rows] = torch.einsum("nd,nkd->nk", q[rows], tokens)
    return out


def _row_mix(p: torch.Tensor, bank: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """o[n] = Σ_j p[n, j] · token j of row n's retrieved chunks: (N, K) → (N, D)."""
    out = p.new_empty(index.shape[0], bank.shape[2])
    for rows, tokens in _blocks(index, bank):
        out[rows] = torch.einsum("nk,nkd->nd", p[rows], tokens)
    return out


class _RowScores(torch.autograd.Function):
    """s[n, j] = q[n] · key j of row n's retrieved chunks; q (N, D), bank (R, c, D) (no gradient), index (N, k).
    Its backward is `_row_mix` of the gradient (and `_RowRead`'s the other way round)."""

    @staticmethod
    def forward(ctx, q, bank, index):
        ctx.save_for_backward(bank, index)
        return _row_scores(q, bank, index)

    @staticmethod
    def backward(ctx, grad):
        bank, index = ctx.saved_tensors
        return _row_mix(grad, bank, index), None, None


class _RowRead(torch.autograd.Function):
    """o[n] = Σ_j p[n, j] · value j of row n's retrieved chunks; p (N, K), bank (R, c, D) (no gradient)."""

    @staticmethod
    def forward(ctx, p, bank, index):
        ctx.save_for_backward(bank, index)
        return _row_mix(p, bank, index)

    @staticmethod
    def backward(ctx, grad):
        bank, index = ctx.saved_tensors
        return _row_scores(grad, bank, index), None, None
