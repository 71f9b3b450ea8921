"""torch.distributed set-up for `torchrun` (one process per GPU, or gloo processes on CPU).

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; a plain `python glue/train.py` is one process and
none of this is used. The seed's `--local_rank` flag is still accepted (older launchers pass it).
"""
import dataclasses
import datetime
import os

import torch
import torch.distributed as dist


@dataclasses.dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def enabled(self):
        return self.world_size > 1


def is_main_process():
    """Rank 0, or a plain one-process run: known from torchrun's variables before any set-up."""
    return int(os.environ.get("RANK", "0")) == 0


def init_distributed(no_cuda=False, local_rank=-1):
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", local_rank if local_rank >= 0 else 0))
    use_cuda = torch.cuda.is_available() and not no_cuda
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def broadcast_object(ctx, obj):
    """Rank 0's value of `obj` on every rank (e.g. a seed drawn at random)."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(ctx, obj):
    if not ctx.enabled:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(ctx, tensor):
    """The sum of `tensor` over all processes (`tensor` itself with one process; no host sync)."""
    return _all_reduce(ctx, tensor, dist.ReduceOp.SUM)


def all_reduce_max(ctx, tensor):
    """The largest `tensor` over all processes (a bool tensor: whether any process's is True)."""
    if not ctx.enabled:
        return tensor
    if tensor.dtype == torch.bool:
        return _all_reduce(ctx, tensor.to(torch.uint8), dist.ReduceOp.MAX).bool()
    return _all_reduce(ctx, tensor, dist.ReduceOp.MAX)


def _all_reduce(ctx, tensor, op):
    if not ctx.enabled:
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor, op=op)
    return tensor


def barrier(ctx):
    if ctx.enabled:
        dist.barrier()


def shutdown(ctx):
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
