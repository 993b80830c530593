"""Process-group set-up and every collective megamix issues (gloo on CPU, NCCL on GPU).

This module owns all tensor collectives of training: the broadcast-and-check of mixture
weights, the all-reduce of per-domain statistics (training step with its per-sample
signals, evaluation sums) and of the signal providers' gradients. Each puts its tensors on the *group device* recorded
by :func:`init_distributed` (the rank's CUDA device under NCCL, the CPU under gloo), since
NCCL refuses CPU tensors and gloo CUDA ones.
"""

from __future__ import annotations

import contextlib
import os
import time
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
    set_group_device(device)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_GROUP_DEVICE: list[torch.device] = []  # the one process group's device (the group itself is global too)


def set_group_device(device: torch.device | str | None) -> None:
    """Record the device collective tensors must live on (init_distributed calls it; None forgets it)."""
    _GROUP_DEVICE.clear()
    if device is not None:
        _GROUP_DEVICE.append(torch.device(device))


def group_device() -> torch.device:
    """The device of collective tensors: the recorded one, else the backend's (CUDA under NCCL, else CPU)."""
    if _GROUP_DEVICE:
        return _GROUP_DEVICE[0]
    if _active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _active() -> bool:
    """True when a process group of more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def to_host(values: torch.Tensor) -> np.ndarray:
    """A float64 numpy copy of a (device) tensor; the one host sync of a reduced statistic."""
    return values.detach().to("cpu", torch.float64).numpy().copy()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum ``values`` over all ranks; return the sum on the group device.

    A tensor already on the group device is reduced in place (no copy); any other is copied
    there first. Without a process group this only moves the tensor.
    """
    values = values.to(group_device())
    if _active():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def broadcast_and_check(weights: np.ndarray, what: str) -> np.ndarray:
    """Broadcast rank 0's float64 vector; raise on any rank whose own copy differs.

    Every rank computes mixing decisions from identical inputs, so a difference means a bug
    (or non-determinism) that would silently train ranks on different mixtures.
    """
    if not _active():
        return weights
    mine = np.asarray(weights, dtype=np.float64)
    device = group_device()
    t = torch.tensor(mine, dtype=torch.float64, device=device)  # a copy: the broadcast overwrites it
    dist.broadcast(t, src=0)
    ref = to_host(t)
    bad = torch.tensor([0.0 if np.array_equal(ref, mine) else 1.0], dtype=torch.float64, device=device)
    dist.all_reduce(bad, op=dist.ReduceOp.SUM)
    if to_host(bad)[0] > 0:
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
        gloo = dist.get_backend() == "gloo"
        if wait:
            if gloo:
                _let_gloo_threads_finish()
            dist.barrier()
        dist.destroy_process_group()
        if gloo:
            _let_gloo_threads_finish()
    set_group_device(None)


_GLOO_DRAIN_S = 0.1


def _let_gloo_threads_finish() -> None:
    """Release the GIL for a moment so gloo's worker threads can drop the collectives they finished.

    A gloo worker thread destroys each finished collective itself, and with it the last C++
    references to the collective's tensors, which needs the GIL. If the interpreter is already
    finalising by then, the thread is killed inside that destructor and the process aborts
    ("terminate called without an active exception", seen at ZeRO-3, whose parameters keep
    the group alive until exit). A barrier that starts while a thread still holds the previous
    collective keeps it alive until the barrier's own destruction, right at exit; so the
    threads get a moment before the barrier (nothing is left for it to hold) and after the
    teardown (the barrier itself is dropped while Python still runs).
    """
    time.sleep(_GLOO_DRAIN_S)


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
