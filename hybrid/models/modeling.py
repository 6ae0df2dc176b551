"""The hybrid decoder: a Llama or GPT-2 base, LM2 internal memory in every block, LongMem retrieval at chosen
layers, processed segment by segment.

    h = h + JointAttention(norm(h))     causal over the current segment; + external memory at retrieval layers
    h = h + InternalMemory(norm(h), M)  read gated memory slots M_{s-1}; write M_s after the segment
    h = h + FFN(norm(h))

Positions restart in every segment (the attention window is the segment). Both memories are fresh for every
call and every batch row unless the caller passes its own store and namespaces.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hybrid.config.model import ModelConfig
from hybrid.core.errors import ConfigError
from hybrid.memory.store import MemoryStore, layer_namespace
from hybrid.memory.torch_store import TorchStore
from hybrid.models.internal_memory import InternalMemory
from hybrid.models.layers import MLP, ExternalContext, JointAttention, RotaryEmbedding, make_norm
from hybrid.models.params import is_memory_param
from hybrid.models.pretrained import load_checkpoint, save_checkpoint


@dataclass
class CausalLMOutput:
    logits: torch.Tensor  # (B, T, V)
    loss: torch.Tensor | None = None  # mean cross-entropy over labels != -100 (labels shifted inside)
    loss_sum: torch.Tensor | None = None  # the same cross-entropies summed (float32): what training scales
    num_tokens: int = 0  # how many labels were scored
    internal_memory: list[torch.Tensor | None] | None = None  # last M per layer (B, N, d) float32; None: no memory


class DecoderBlock(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.input_layernorm = make_norm(config)
        self.self_attn = JointAttention(config, retrieval=layer_idx in config.retrieval_layer_ids)
        if layer_idx in config.internal_memory_layer_ids:
            self.memory_layernorm = make_norm(config)
            self.internal_memory = InternalMemory(config)
        else:
            self.memory_layernorm = self.internal_memory = None
        self.post_attention_layernorm = make_norm(config)
        self.mlp = MLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        h: torch.Tensor,
        rope,
        attn_mask: torch.Tensor | None,
        memory: torch.Tensor | None,
        external: ExternalContext | None,
        write_memory: bool,
        key_mask: torch.Tensor | None,
    ):
        h = h + self.dropout(self.self_attn(self.input_layernorm(h), rope, attn_mask, external))
        if self.internal_memory is not None:
            if (
                memory is None
            ):  # a sequence's first segment; made here, where the block's (maybe sharded) weights are whole
                memory = self.internal_memory.initial_state(h.shape[0])
            read, memory = self.internal_memory(self.memory_layernorm(h), memory, write_memory, key_mask)
            h = h + self.dropout(read)
        h = h + self.dropout(self.mlp(self.post_attention_layernorm(h)))
        return h, memory


class HybridDecoder(nn.Module):
    """The `model.` part of the checkpoint: embeddings, blocks, final norm."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        if config.family == "gpt2":
            self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
            self.rotary = None
        else:
            self.embed_positions = None
            self.rotary = RotaryEmbedding(config.head_size, config.rope_theta, config.rope_scaling)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(DecoderBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm = make_norm(config)


class HybridForCausalLM(nn.Module):
    """Shared by both families; use `HybridLlamaForCausalLM` / `HybridGPT2ForCausalLM`."""

    family: str | None = None
    config_class: type[ModelConfig] = ModelConfig
    _by_family: dict[str, type[HybridForCausalLM]] = {}  # filled as the family classes are defined

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.family is not None:
            HybridForCausalLM._by_family[cls.family] = cls

    @classmethod
    def for_family(cls, family: str) -> type[HybridForCausalLM]:
        """The class of a family ('llama', 'gpt2'); `hybrid.models` defines both when it is imported."""
        try:
            return HybridForCausalLM._by_family[family]
        except KeyError:
            raise ConfigError(
                f"model.family: unknown family {family!r} ({' or '.join(sorted(HybridForCausalLM._by_family))})"
            ) from None

    def __init__(self, config: ModelConfig):
        super().__init__()
        if self.family is not None and config.family != self.family:
            raise ValueError(f"{type(self).__name__} needs family={self.family!r}, got {config.family!r}")
        self.config = config
        self.model = HybridDecoder(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self._init_base_weights()
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        # Creates the external store of a call when the caller passes none; set by build_model from the
        # `memory` config section (torch / faiss / ray). Default: an in-process TorchStore on the input's device.
        self.store_factory: Callable[[], MemoryStore] | None = None

    # -- init -----------------------------------------------------------------------------------------------
    def _init_base_weights(self) -> None:
        std = self.config.initializer_range
        for name, module in self.named_modules():
            if ".internal_memory" in f".{name}":
                continue  # the memory initialises itself
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)

    # -- parameters -----------------------------------------------------------------------------------------
    def memory_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if is_memory_param(n)]

    def resize_token_embeddings(self, vocab_size: int) -> None:
        """Grow the vocabulary (e.g. for the special tokens our tokenizer adds to a pretrained base's).
        New rows start at the mean of the existing embeddings (and output rows), a common choice that keeps
        their logits near the average instead of random."""
        old = self.model.embed_tokens.weight
        n_old = old.shape[0]
        if vocab_size <= n_old:
            return
        tied = self.lm_head.weight is old
        with torch.no_grad():
            emb = nn.Embedding(vocab_size, old.shape[1], device=old.device, dtype=old.dtype)
            emb.weight[:n_old] = old
            emb.weight[n_old:] = old.mean(0, keepdim=True)
            self.model.embed_tokens = emb
            if tied:
                self.lm_head.weight = emb.weight
            else:
                head_old = self.lm_head.weight
                head = nn.Linear(head_old.shape[1], vocab_size, bias=False, device=old.device, dtype=old.dtype)
                head.weight[:n_old] = head_old
                head.weight[n_old:] = head_old.mean(0, keepdim=True)
                self.lm_head = head
        self.config.vocab_size = vocab_size

    def freeze_base(self) -> None:
        """Train only the memory parameters (LongMem's recipe)."""
        if not self.memory_parameters():
            raise ConfigError(
                "model.freeze_base: the model has no memory parameters to train "
                "(enable use_internal_memory or use_external_memory)"
            )
        for name, p in self.named_parameters():
            p.requires_grad_(is_memory_param(name))

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def compile_blocks(self, **options: Any) -> None:
        """`torch.compile` each decoder block in place (regional compilation, as torchtune does; `train.compile`):
        a block without retrieval as a whole; a retrieval block by its parts — norms, internal memory, MLP — since
        its attention talks to the memory store, which stays eager. Parameter names, checkpoints and the results are
        unchanged; the first steps of each new shape compile (seconds to a minute on a CPU)."""
        for block in self.model.layers:
            if not block.self_attn.retrieval:
                block.compile(**options)
                continue
            parts = (block.input_layernorm, block.memory_layernorm, block.internal_memory)
            for part in (*parts, block.post_attention_layernorm, block.mlp):
                if part is not None:
                    part.compile(**options)
        self.model.norm.compile(**options)

    # -- forward --------------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        memory_store: MemoryStore | None = None,
        namespaces: Sequence[str] | None = None,
        memory_row_order: torch.Tensor | Sequence[int] | None = None,
    ) -> CausalLMOutput:
        """input_ids (B, T) of any length; labels (B, T) HuggingFace-style (shifted here, -100 ignored);
        attention_mask (B, T) 1 = token, 0 = padding (right padding needs no mask: it is causally invisible).

        `memory_store` + `namespaces` (one per row): use that external store and keep what is written
        (e.g. a shared namespace); otherwise a fresh store per call whose namespaces are dropped at the end.

        `memory_row_order` (B,), a permutation of 0..B-1: an eval-time control (issue 16). Just before the call's
        last segment (its tokens from (n_segments - 1) * segment_length on), row b takes over the memory of row
        memory_row_order[b] — its internal memory state and its external namespaces, which it then reads and (with
        a caller's store) writes. E.g. [1, 0] swaps two rows' memories; a model without memory ignores it."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (B, T), got {tuple(input_ids.shape)}")
        cfg = self.config
        B, T = input_ids.shape
        if T == 0:
            raise ValueError("input_ids has no tokens")
        row_order = None if memory_row_order is None else _check_row_order(memory_row_order, B)
        key_mask = None
        if attention_mask is not None:
            if attention_mask.shape != input_ids.shape:
                raise ValueError(f"attention_mask {tuple(attention_mask.shape)} != input_ids {tuple(input_ids.shape)}")
            key_mask = attention_mask.bool()
        if cfg.has_memory:
            logits, memory = self._forward_segments(input_ids, key_mask, memory_store, namespaces, row_order)
        else:
            logits, memory = self._forward_independent(input_ids, key_mask), None
        if labels is None:
            return CausalLMOutput(logits=logits, internal_memory=memory)
        if labels.shape != input_ids.shape:
            raise ValueError(f"labels {tuple(labels.shape)} != input_ids {tuple(input_ids.shape)}")
        loss_sum, n = causal_lm_loss_sum(logits, labels)
        return CausalLMOutput(
            logits=logits, loss=loss_sum / max(n, 1), loss_sum=loss_sum, num_tokens=n, internal_memory=memory
        )

    def _embed(self, ids: torch.Tensor, tokens: torch.Tensor | None = None) -> tuple[torch.Tensor, Any]:
        """The segment's input (B, T, d) and its RoPE tables; `tokens`: its token embeddings, already looked up."""
        T = ids.shape[1]
        h = self.model.embed_tokens(ids) if tokens is None else tokens  # (B, T, d)
        rope = None
        if self.model.embed_positions is not None:
            if self.config.max_position_embeddings < T:
                raise ValueError(f"segment of {T} tokens exceeds max_position_embeddings")
            h = h + self.model.embed_positions(torch.arange(T, device=ids.device))
        else:
            rope = self.model.rotary(T, ids.device, h.dtype)
        return self.model.dropout(h), rope

    def _attn_mask(self, T: int, key_mask: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
        """(B or 1, 1, T, T) bool mask: causal, within the sliding window (Mistral) when the segment is longer than
        it, without padded keys (the diagonal stays on so no row is empty). None: plain causal."""
        window = self.config.sliding_window
        banded = window is not None and window < T
        if not banded and (key_mask is None or bool(key_mask.all())):
            return None
        i = torch.arange(T, device=device)
        allowed = i[None, :] <= i[:, None]  # (T, T) query row, key column
        if banded:
            allowed = allowed & (i[None, :] > i[:, None] - window)  # as transformers' sliding_window_overlay
        allowed = allowed[None, None]  # (1, 1, T, T)
        if key_mask is not None:
            allowed = allowed & key_mask[:, None, None, :]  # (B, 1, T, T)
        return allowed | torch.eye(T, dtype=torch.bool, device=device)

    def _run_block(self, layer: DecoderBlock, *args):
        if (
            self.config.gradient_checkpointing
            and self.training
            and torch.is_grad_enabled()
            and not layer.self_attn.retrieval
        ):  # a retrieval layer talks to the store: never re-run it
            from torch.utils.checkpoint import checkpoint

            return checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)

    def _forward_independent(self, input_ids: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        """No memory: segments are independent, so all whole segments run as one batch."""
        B, T = input_ids.shape
        S = self.config.segment_length
        n, rest = divmod(T, S)
        pieces = []
        if n:
            ids = input_ids[:, : n * S].reshape(B * n, S)
            km = None if key_mask is None else key_mask[:, : n * S].reshape(B * n, S)
            pieces.append(self._run_segment(ids, km, None, None, False)[0].view(B, n * S, -1))
        if rest:
            km = None if key_mask is None else key_mask[:, n * S :]
            pieces.append(self._run_segment(input_ids[:, n * S :], km, None, None, False)[0])
        return self._logits(pieces)

    def _logits(self, hidden: list[torch.Tensor]) -> torch.Tensor:
        """(B, T, V) from the segments' last hidden states, in order: one final norm and one lm_head over all of
        them. Concatenating the (B, S, d) hidden states instead of the (B, S, V) logits saves a V/d times larger
        copy and its backward (profiled: the logits' cat was ~3 % of a 4-segment step at d=256, V=8192)."""
        h = hidden[0] if len(hidden) == 1 else torch.cat(hidden, 1)  # (B, T, d)
        return self.lm_head(self.model.norm(h))

    def _run_segment(self, ids, key_mask, memory, externals, write, tokens=None):
        """The blocks over one segment: (last hidden state (B, S, d) before the final norm, new memory)."""
        h, rope = self._embed(ids, tokens)
        attn_mask = self._attn_mask(ids.shape[1], key_mask, ids.device)
        new_memory = []
        for i, layer in enumerate(self.model.layers):
            m = None if memory is None else memory[i]
            ext = None if externals is None else externals.get(i)
            h, m = self._run_block(layer, h, rope, attn_mask, m, ext, write, key_mask)
            new_memory.append(m)
        return h, new_memory

    def _forward_segments(self, input_ids, key_mask, memory_store, namespaces, row_order=None):
        cfg = self.config
        B, T = input_ids.shape
        S = cfg.segment_length
        n_seg = -(-T // S)
        layers = cfg.retrieval_layer_ids
        persistent = memory_store is not None
        store, row_ns = None, None
        if layers:
            if persistent:
                if namespaces is None or len(namespaces) != B:
                    raise ValueError(f"memory_store needs namespaces, one per row ({B})")
                store, row_ns = memory_store, list(namespaces)
            else:
                store = self.store_factory() if self.store_factory is not None else self._default_store()
                call = uuid.uuid4().hex[:12]
                row_ns = [f"{call}/row{b}" for b in range(B)]
        layer_ns = {i: [layer_namespace(ns, i) for ns in row_ns] for i in layers} if layers else {}
        read_ns = layer_ns  # the namespaces each row reads and writes (the reset below drops layer_ns)
        memory = None  # each block starts its own internal memory
        hidden = []
        # Every segment's token embeddings in one lookup: one (V, d) gradient in the backward instead of one per
        # segment (profiled: the per-segment ones cost a (V, d) zero-fill and add each, ~1 % of a step)
        tokens = self.model.embed_tokens(input_ids).split(S, 1)  # n_seg x (B, S, d)
        try:
            for s in range(n_seg):
                last = s == n_seg - 1
                if last and row_order is not None:  # the control: row b continues with row row_order[b]'s memory
                    if memory is not None:  # (one segment: no state yet, and the initial one is every row's)
                        index = torch.tensor(row_order, device=input_ids.device)
                        memory = [None if m is None else m.index_select(0, index.to(m.device)) for m in memory]
                    read_ns = {i: [ns[j] for j in row_order] for i, ns in layer_ns.items()}
                ids = input_ids[:, s * S : (s + 1) * S]
                km = None if key_mask is None else key_mask[:, s * S : (s + 1) * S]
                externals = {
                    i: ExternalContext(store, read_ns[i], write=persistent or not last, read=persistent or s > 0)
                    for i in layers
                }
                out, memory = self._run_segment(ids, km, memory, externals, write=not last, tokens=tokens[s])
                hidden.append(out)
        finally:
            if layers and not persistent:
                store.reset([ns for i in layers for ns in layer_ns[i]])
        return self._logits(hidden), memory

    def _default_store(self):
        return TorchStore(self.config.chunks_capacity)

    # -- generation -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, eos_token_id: int | None = None) -> torch.Tensor:
        """Greedy decoding: (B, T) -> (B, T + new). Rows that produced `eos_token_id` continue with it.

        Exactly what `forward` computes for the last position, without re-running finished segments: their
        memory writes are kept, and each step runs only the current (partial) segment — O(T·S), not O(T²)."""
        was_training = self.training
        self.eval()
        cfg = self.config
        S = cfg.segment_length
        B = input_ids.shape[0]
        layers = cfg.retrieval_layer_ids
        store, layer_ns = None, {}
        if layers:
            store = self.store_factory() if self.store_factory is not None else self._default_store()
            call = uuid.uuid4().hex[:12]
            layer_ns = {i: [layer_namespace(f"{call}/row{b}", i) for b in range(B)] for i in layers}
        memory = None  # each block starts its own internal memory
        written = 0  # segments whose memory writes are done
        try:
            ids = input_ids
            done = torch.zeros(B, dtype=torch.bool, device=ids.device)
            for _ in range(max_new_tokens):
                current = (ids.shape[1] - 1) // S  # the segment of the last position
                while cfg.has_memory and written < current:  # finished segments: run once, keep their writes
                    seg = ids[:, written * S : (written + 1) * S]
                    ext = {i: ExternalContext(store, layer_ns[i], write=True, read=written > 0) for i in layers}
                    _, memory = self._run_segment(seg, None, memory, ext, write=True)
                    written += 1
                ext = {i: ExternalContext(store, layer_ns[i], write=False, read=current > 0) for i in layers}
                h, _ = self._run_segment(ids[:, current * S :], None, memory, ext if layers else None, False)
                nxt = self._logits([h])[:, -1].argmax(-1)  # (B,)
                if eos_token_id is not None:
                    nxt = torch.where(done, torch.full_like(nxt, eos_token_id), nxt)
                    done |= nxt == eos_token_id
                ids = torch.cat([ids, nxt[:, None]], 1)
                if eos_token_id is not None and bool(done.all()):
                    break
            return ids
        finally:
            if layers:
                store.reset([ns for i in layers for ns in layer_ns[i]])
            self.train(was_training)

    # -- checkpoints ----------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        save_checkpoint(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, **overrides: Any) -> HybridForCausalLM:
        """Load our checkpoint or a HuggingFace Llama / GPT-2 folder; `overrides` set config fields
        (memory settings, segment_length, …)."""
        return load_checkpoint(cls, directory, **overrides)


def _check_row_order(order: torch.Tensor | Sequence[int], B: int) -> list[int]:
    """`memory_row_order` as a list of ints, or a ValueError unless it is a permutation of 0..B-1."""
    rows = order.tolist() if isinstance(order, torch.Tensor) else list(order)
    if not all(isinstance(r, int) for r in rows) or sorted(rows) != list(range(B)):
        raise ValueError(f"memory_row_order must be a permutation of 0..{B - 1} (one entry per row), got {rows}")
    return rows


def scored_labels(labels: torch.Tensor) -> torch.Tensor:
    """The labels each position predicts (HuggingFace convention: position t predicts labels[:, t+1]; the last
    position predicts nothing): (B, T), -100 where nothing is scored."""
    return F.pad(labels, (0, 1), value=-100)[:, 1:]


def count_scored(labels: torch.Tensor) -> int:
    """How many tokens a batch's loss sums over — known before the forward pass (training normalises by it)."""
    return int((labels[:, 1:] != -100).sum())


def causal_lm_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(sum of float32 cross-entropies over the scored labels, their count): the one loss of the project — training,
    validation and `hybrid eval` all use it. Labels are shifted (padded with -100) rather than the logits sliced,
    which saves a (B, T, V) copy."""
    shifted = scored_labels(labels).to(logits.device)  # (B, T)
    loss = _CrossEntropySum.apply(logits.reshape(-1, logits.shape[-1]).float(), shifted.reshape(-1))
    return loss, int((shifted != -100).sum())


class _CrossEntropySum(torch.autograd.Function):
    """F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum") for (N, V) float logits, with a backward
    that turns the saved log-probabilities into the gradient (softmax − one-hot) in place: no (N, V) zero-fill and
    no second (N, V) tensor. Measured on one CPU thread: 108 → 53 ms fwd+bwd at (2048, 8192), where each fresh
    64 MB tensor is page-faulted in (the 4-segment bench rows); 7 → 8 ms at (512, 8192). Its backward runs once."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(logits, -1)  # (N, V)
        valid = labels != -100  # (N,)
        target = torch.where(valid, labels, 0)
        picked = logp.gather(1, target[:, None])[:, 0].masked_fill(~valid, 0.0)  # (N,)
        ctx.save_for_backward(logp, target, valid)
        ctx.spent = False
        return -picked.sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.spent:
            raise RuntimeError("causal_lm_loss_sum: its backward runs once (retain_graph is not supported)")
        ctx.spent = True
        logp, target, valid = ctx.saved_tensors
        g = logp.exp_()  # softmax, where the log-probabilities were
        g[torch.arange(g.shape[0], device=g.device), target] -= 1.0
        return g.mul_((valid.to(g.dtype) * grad)[:, None]), None


def argmax_matches(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) bool: the argmax at every scored position equals its label — teacher-forced exact match. With the
    reference as prefix at each step this is exactly greedy decoding reproducing the reference tokens (a first wrong
    argmax is where greedy would leave the reference). Rows without scored labels: False."""
    target = scored_labels(labels).to(logits.device)  # (B, T)
    valid = target != -100
    return ((logits.argmax(-1) == target) | ~valid).all(1) & valid.any(1)
