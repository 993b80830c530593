"""Process-group set-up and the few collectives the loop needs (gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on global rank 0, the only rank that writes files and prints."""
        return self.rank == 0


def _skip_shm_comm_build() -> None:
    """On CPU, DeepSpeed JIT-compiles a shared-memory all-reduce op (~1 min) used only for
    inference; training never calls it. Mark it incompatible so init does not build it."""
    import deepspeed.ops

    compatible = deepspeed.ops.__compatible_ops__
    compatible["deepspeed_shm_comm"] = False


def init_distributed() -> DistInfo:
    """Initialise the process group through DeepSpeed, from the launcher's environment.

    Works under the ``deepspeed`` launcher and ``torchrun``; a lone process without one gets
    a one-rank group on a free local port.
    """
    import deepspeed

    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    cuda = torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "") != "cpu"
    if not cuda:
        _skip_shm_comm_build()
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", verbose=False)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum ``values`` over all ranks, in place, and return it (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def broadcast_and_check(weights: np.ndarray, what: str) -> np.ndarray:
    """Broadcast rank 0's float64 vector; raise on any rank whose own copy differs.

    Every rank computes mixing decisions from identical inputs, so a difference means a bug
    (or non-determinism) that would silently train ranks on different mixtures.
    """
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return weights
    mine = np.asarray(weights, dtype=np.float64)
    t = torch.tensor(mine)
    dist.broadcast(t, src=0)
    ref = t.numpy()
    bad = torch.tensor([0.0 if np.array_equal(ref, mine) else 1.0], dtype=torch.float64)
    dist.all_reduce(bad)
    if bad.item() > 0:
        raise RuntimeError(f"{what} differ between ranks (rank {dist.get_rank()}: {mine.tolist()}, "
                           f"rank 0: {ref.tolist()}): ranks would train on different mixtures")
    return ref


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown_distributed(wait: bool = True) -> None:
    """Leave the job cleanly: wait for every rank (``wait``), then tear the group down.

    Without this, a rank that finishes first exits while the others still hold gloo
    connections to it, and their background threads can abort the process at exit
    ("terminate called without an active exception"). After an error other ranks may
    never reach the barrier, so error paths pass ``wait=False``: the group is torn down at
    once and the other ranks fail fast instead of hanging.
    """
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def distributed_session() -> Iterator[DistInfo]:
    """``init_distributed()`` for the body of a ``with``; the group is torn down however it ends.

    A normal end waits for every rank first; an exception (or ``SystemExit``) tears the
    group down without waiting, then propagates. Entry points, benchmarks and test workers
    use this so that no process exits with a live process group.
    """
    info = init_distributed()
    try:
        yield info
    except BaseException:
        shutdown_distributed(wait=False)
        raise
    shutdown_distributed(wait=True)


def all_gather_object(obj: object) -> list:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` without a process group)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
