"""torch.distributed helpers: set-up under torchrun, and all-gathers that keep gradients.

Mining sees the global batch: every process all-gathers the embeddings (with gradients), the
meta-entities and the sample ids, then mines its own anchors against all of them. The gather's
backward sums, on each process, the gradients that every process computed for its rows, so with
per-process losses scaled as in :mod:`medtrim_ext.training.objective_step` and DDP's gradient averaging
the update equals that of one process with the whole global batch (tested with gloo).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..entities.meta_entities import MetaEntities


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> DistContext:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1); else a single process.

    NCCL for CUDA devices, gloo for the CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        if device_kind == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


# How long the main thread lets go of the GIL before it leaves the process group (see shutdown).
WORKER_DRAIN_S = 0.2


def shutdown(ctx: DistContext, *, finished: bool = True) -> None:
    """Leave the process group so that the interpreter can exit cleanly (``finished=False`` after
    an error: no barrier, which a failed process's peers, stuck in another collective, never reach).

    A gloo worker thread drops its references to a finished collective's tensors a moment after
    the caller's ``wait()`` returns, and dropping a reference to a tensor that Python also holds
    takes the GIL. DDP keeps the process group, and with it the worker threads, alive until the
    interpreter exits (``destroy_process_group`` cannot join them), so a worker still waiting for
    the GIL when finalization starts aborts the process ("terminate called without an active
    exception", SIGABRT: 2 in 25 torchrun runs of the DDP test; 4 in 15 of a bare all_reduce loop).
    So: a barrier (every process has finished its last collective), then a pause with the GIL
    released, in which the workers finish dropping those references, then the group goes.
    """
    if ctx.enabled and dist.is_initialized():
        if finished:
            dist.barrier()
            time.sleep(WORKER_DRAIN_S)  # sleeps without the GIL: the gloo workers can take it
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward sums every process's gradient for this process's rows."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size()
        ctx.rank, ctx.rows = dist.get_rank(), tensor.shape[0]
        out = torch.empty((world * tensor.shape[0], *tensor.shape[1:]), dtype=tensor.dtype,
                          device=tensor.device)
        dist.all_gather_into_tensor(out, tensor.contiguous())
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        if dist.get_backend() == dist.Backend.NCCL:
            mine = torch.empty((ctx.rows, *grad.shape[1:]), dtype=grad.dtype, device=grad.device)
            dist.reduce_scatter_tensor(mine, grad)
            return mine
        # gloo has no reduce-scatter: reduce everything, keep this process's slice
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_with_grad(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Rows of every process concatenated in rank order; gradients flow back to their owners.

    Every process must pass the same number of rows.
    """
    if not ctx.enabled:
        return tensor
    return _GatherWithGrad.apply(tensor)


@torch.no_grad()
def gather(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """all_gather without gradients (ids, bitsets), concatenated in rank order."""
    if not ctx.enabled:
        return tensor
    out = torch.empty((ctx.world_size * tensor.shape[0], *tensor.shape[1:]), dtype=tensor.dtype,
                      device=tensor.device)
    dist.all_gather_into_tensor(out, tensor.contiguous())
    return out


def gather_entities(entities: MetaEntities, ctx: DistContext) -> MetaEntities:
    if not ctx.enabled:
        return entities
    # every rank's entities were checked when built: no second look at the bits (no sync)
    return MetaEntities._derived(gather(entities.disease_bits, ctx),
                                 gather(entities.adjective_bits, ctx),
                                 gather(entities.direction_bits, ctx), entities.vocabulary)


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.enabled:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
    return tensor


def ddp_count_reducer(ctx: DistContext):
    """For an objective's ``count_reducer``: this process's count of valid triplets -> the global
    count / W. Dividing the local sum by it gives ``W * local sum / global count``, which DDP's
    averaging over W processes turns into the mean over the global batch."""
    def reduce(count: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(count, ctx).float() / ctx.world_size

    return reduce


def broadcast_object(obj, ctx: DistContext):
    """The main process's ``obj`` (picklable) on every process."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
