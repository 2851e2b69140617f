"""Every collective operation of the package, in one place: which process this is, how the rows
of a dataset are sharded over the processes, and broadcast, gather and all-reduce.

Each function is a no-op (or returns its input) on a single process, so callers never test
whether torch.distributed is running. Collective tensors go through ``comm_device()``: the
current GPU under NCCL, the CPU under gloo.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Subset


def is_distributed() -> bool:
    """Whether torch.distributed runs with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 without torch.distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launched_by_torchrun() -> tuple[int, int] | None:
    """(processes per node, nodes) when torchrun started this process, else None."""
    if dist.is_available() and dist.is_torchelastic_launched():
        per_node = int(os.environ["LOCAL_WORLD_SIZE"])
        return per_node, int(os.environ["WORLD_SIZE"]) // per_node
    return None


def comm_device() -> torch.device:
    """Where collective tensors must live: the current GPU under NCCL, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def has_process_group() -> bool:
    """Whether torch.distributed's default process group exists."""
    return dist.is_available() and dist.is_initialized()


def end_processes() -> None:
    """Destroy the process group, once every process is done with it. Without this, a process
    that exits while gloo's worker threads still run may abort (SIGABRT, "terminate called
    without an active exception") when a peer exited first; call it only after a clean finish,
    since a peer still inside a collective would wait on it for ever."""
    if has_process_group():
        dist.destroy_process_group()


# --- sharding -----------------------------------------------------------------------------------

def shard_range(num: int, rank: int, world_size: int) -> range:
    """The contiguous rows of ``num`` that process ``rank`` of ``world_size`` handles: consecutive
    ranks take consecutive blocks, the first ``num % world_size`` one row more than the others."""
    base, extra = divmod(num, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def dataset_shard(dataset: Dataset) -> Dataset:
    """This process's contiguous shard of ``dataset`` (all of it without torch.distributed)."""
    rank, world = rank_and_world()
    if world == 1:
        return dataset
    if len(dataset) < world:
        raise ValueError(f"cannot shard {len(dataset)} images over {world} processes")
    return Subset(dataset, shard_range(len(dataset), rank, world))


# --- broadcast, all-reduce, all-gather ------------------------------------------------------------

@torch.no_grad()
def broadcast_from_rank0(tensors: Sequence[torch.Tensor]) -> None:
    """Rank 0's values of ``tensors`` on every process, in place."""
    if not is_distributed():
        return
    device = comm_device()
    for tensor in tensors:
        moved = tensor.to(device)  # the tensor itself when already there
        dist.broadcast(moved, src=0)
        if moved is not tensor:
            tensor.copy_(moved)


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` (any picklable object) on every process."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, device=comm_device())
    return box[0]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the processes, in place (through ``comm_device``); returned."""
    if not is_distributed():
        return tensor
    moved = tensor.to(comm_device())
    dist.all_reduce(moved)
    if moved is not tensor:
        tensor.copy_(moved)
    return tensor


def mean_over_processes(total: float, count: int) -> float:
    """The mean of a per-sample quantity summed to ``total`` over ``count`` samples on each
    process, over all processes' samples (nan for none)."""
    if is_distributed():
        total, count = all_reduce_sum(torch.tensor([total, count], dtype=torch.float64)).tolist()
    return total / count if count else float("nan")


def all_gather_sizes(size: int) -> list[int]:
    """Every process's ``size``, in rank order."""
    if not is_distributed():
        return [size]
    device = comm_device()
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([size], dtype=torch.int64, device=device))
    return [int(s.item()) for s in sizes]


def all_gather_columns(table: torch.Tensor, orders: list[list[int]]) -> None:
    """``table[:, orders[q]]`` as process q holds it, on every process, in place: one all-gather
    of equally long index lists (e.g. each process's memory-bank rows after a pass)."""
    if not is_distributed():
        return
    rank = dist.get_rank()
    mine = table[:, orders[rank]].to(comm_device())
    parts = [torch.empty_like(mine) for _ in orders]
    dist.all_gather(parts, mine)
    for order, part in zip(orders, parts):
        table[:, order] = part.to(table.device)


def gather_rows(local: np.ndarray, dst: int | None = None,
                chunk_bytes: int = 64 << 20) -> np.ndarray | None:
    """Every process's rows, concatenated in rank order (dataset order for ``shard_range`` shards),
    on every process (``dst=None``) or only on process ``dst`` (the others get None).

    Sent ``chunk_bytes`` per process at a time, so the communication buffers stay small whatever
    the number of rows; the result is written into one preallocated array.
    """
    rank, world = rank_and_world()
    if world == 1:
        return local
    local = np.ascontiguousarray(local)
    device = comm_device()
    sizes = all_gather_sizes(len(local))
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    receive = dst is None or dst == rank
    out = np.empty((offsets[-1], *local.shape[1:]), dtype=local.dtype) if receive else None
    row_bytes = max(1, local.itemsize * int(np.prod(local.shape[1:], dtype=np.int64)))
    rows = max(1, chunk_bytes // row_bytes)
    source = torch.from_numpy(local)
    for start in range(0, max(sizes), rows):
        send = torch.zeros((rows, *local.shape[1:]), dtype=source.dtype, device=device)
        part = source[start:start + rows]
        send[:len(part)] = part.to(device)
        parts = [torch.empty_like(send) for _ in range(world)] if receive else None
        if dst is None:
            dist.all_gather(parts, send)
        else:
            dist.gather(send, parts, dst=dst)
        if receive:
            for r, received in enumerate(parts):
                count = min(rows, max(0, sizes[r] - start))
                if count:
                    begin = offsets[r] + start
                    out[begin:begin + count] = received[:count].cpu().numpy()
    return out


def count_nonfinite(values: np.ndarray | torch.Tensor) -> int:
    """The number of NaN or infinite entries of every process's ``values``, summed (a run whose
    features break on one process stops on all, instead of leaving the others waiting)."""
    if isinstance(values, torch.Tensor):
        local = int((~torch.isfinite(values)).sum())
    else:
        local = int(values.size - np.isfinite(values).sum())
    if is_distributed():
        local = int(all_reduce_sum(torch.tensor([local], dtype=torch.int64)).item())
    return local
