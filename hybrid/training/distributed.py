"""Where a training process runs and how its model is wrapped for data parallelism.

    Context     rank, world size, device — under Ray Train (which starts the process group), under torchrun (we start
                it from RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR), or alone
    strategies  ddp        DistributedDataParallel (Ray Train's prepare_model under Ray, the same class under
                           torchrun): bucketed gradient all-reduce overlapped with backward, no_sync while accumulating
                fsdp       FSDP2 (`fully_shard` on every decoder block and the root): parameters, gradients and
                           optimizer state sharded over the workers
                allreduce  the project's first scheme, kept for `hybrid bench train`: full replicas, one flat all-reduce
                           of the summed gradients after backward

DDP and FSDP average gradients over the workers, so a rank scales its summed loss by world / (output tokens of the
whole global step): the average of the ranks' gradients is then exactly the gradient of the global-token mean loss,
for any split of tokens between ranks. `allreduce` sums instead, so it scales by 1 / tokens.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

STRATEGIES = ("ddp", "fsdp", "allreduce")


@dataclass
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    launcher: str = "local"  # local | ray | torchrun

    @property
    def distributed(self) -> bool:
        return self.world > 1

    # -- collectives (no-ops alone) ------------------------------------------------------------------------------------
    def _reduce(self, values: list[float], op) -> list[float]:
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=op)
        return t.tolist()

    def sum(self, values: list[float]) -> list[float]:
        return self._reduce(values, dist.ReduceOp.SUM) if self.distributed else list(values)

    def max(self, values: list[float]) -> list[float]:
        return self._reduce(values, dist.ReduceOp.MAX) if self.distributed else list(values)

    def gather(self, values: list[float]) -> list[list[float]]:
        """Every rank's `values`, in rank order (one all-gather of float64s): the recipe sums some columns and maxes
        others on each rank, so one collective serves both. Alone: [values] as they are."""
        if not self.distributed:
            return [list(values)]
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        out = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(out, t)
        return [o.tolist() for o in out]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def detect(use_gpu: bool) -> Context:
    """The context of this process: a Ray Train worker, a torchrun rank, or a single process."""
    launcher = "local"
    try:
        import ray.train

        ctx = ray.train.get_context()
        rank, world, local_rank = ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank()
        launcher = "ray"
    except Exception:  # not inside a Ray Train worker
        rank, world, local_rank = 0, 1, 0
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            local_rank = int(os.environ.get("LOCAL_RANK", 0))
            launcher = "torchrun"
    if use_gpu and torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if launcher == "torchrun" and world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if launcher == "ray" and world > 1 and not dist.is_initialized():
        raise RuntimeError("Ray Train did not start the process group")
    return Context(rank, world, local_rank, device, launcher)


def wrap(model: torch.nn.Module, strategy: str, ctx: Context) -> torch.nn.Module:
    """The model as this strategy trains it (on the context's device)."""
    if not ctx.distributed:
        return model.to(ctx.device)
    if strategy == "ddp":
        # with memory, graphs differ between steps (a batch of one segment neither reads nor writes the memories):
        # some parameters get no gradient in some steps, which DDP must be told about
        kwargs = {"find_unused_parameters": model.config.has_memory}
        if ctx.launcher == "ray":
            from ray.train.torch import prepare_model

            return prepare_model(model, parallel_strategy="ddp", parallel_strategy_kwargs=kwargs)
        model.to(ctx.device)
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None, **kwargs
        )
    if strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        model.to(ctx.device)
        mesh = init_device_mesh(ctx.device.type, (ctx.world,))
        for block in model.model.layers:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    if strategy == "allreduce":
        model.to(ctx.device)
        for t in model.state_dict().values():  # same start everywhere
            dist.broadcast(t, 0)
        return model
    raise ValueError(f"unknown strategy {strategy!r}")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def no_sync(model: torch.nn.Module, strategy: str, sync: bool):
    """The gradient synchronisation of one micro-batch: only the last of an accumulation window syncs."""
    if sync:
        return contextlib.nullcontext()
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.no_sync()
    if strategy == "fsdp" and hasattr(model, "set_requires_gradient_sync"):

        @contextlib.contextmanager
        def fsdp_no_sync():
            model.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                model.set_requires_gradient_sync(True)

        return fsdp_no_sync()
    return contextlib.nullcontext()


def loss_scale(strategy: str, ctx: Context, global_tokens: float) -> float:
    """What a rank multiplies its summed loss by (see the module docstring)."""
    tokens = max(1.0, global_tokens)
    return (ctx.world if ctx.distributed and strategy in ("ddp", "fsdp") else 1.0) / tokens


def sum_gradients(params: list[torch.nn.Parameter], ctx: Context) -> None:
    """`allreduce`: one flat all-reduce of every gradient after the backward pass."""
    if not ctx.distributed:
        return
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    for g, reduced in zip(grads, _unflatten_dense_tensors(flat, grads)):
        g.copy_(reduced)


def full_state_dict(model: torch.nn.Module, strategy: str) -> dict[str, Any]:
    """The whole model's weights on CPU: on every rank (replicas), or on rank 0 only (FSDP; {} elsewhere) —
    a collective under FSDP, so every rank calls it."""
    if strategy == "fsdp" and dist.is_initialized():
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
