"""Run pretrain_gpt_mix.py with one injected fault at a known point, for the fault suite.

Usage (under torchrun): fault_hooks.py SPEC <pretrain_gpt_mix.py flags>, SPEC one of

    kill9-step:N   SIGKILL rank 0 right after training step N
    kill9-save:N   SIGKILL rank 0 in the save of iteration N, after DeepSpeed wrote its files
                   and before megamix_state.json and ``latest``
    enospc:N       rank 0's DeepSpeed writes in the save of iteration N fail with ENOSPC after
                   writing part of the file (a disk that fills up mid-save)
    sigterm:N      after step N, rank 0 sends SIGTERM to the launcher (torchrun), which passes
                   it on to every rank, as a scheduler's preemption does
"""

from __future__ import annotations

import errno
import os
import runpy
import signal
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RANK0 = os.environ.get("RANK") == "0"


def _say(msg: str) -> None:
    print(f"fault_hooks: {msg}", file=sys.stderr, flush=True)


def _after_step(step: int, action) -> None:
    from megamix.training import loop

    train_one = loop.PhaseLoop._train_one

    def wrapped(self, state):
        train_one(self, state)
        if state.iteration == step and RANK0:
            action()

    loop.PhaseLoop._train_one = wrapped


def _kill_self() -> None:
    _say("SIGKILL rank 0")
    os.kill(os.getpid(), signal.SIGKILL)


def _sigterm_launcher() -> None:
    """SIGTERM the launcher, then wait until it has passed the signal on to this rank, so that the
    ranks agree to stop after this very step (a real scheduler's signal lands at any moment)."""
    handler = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)  # megamix's ExitSignalHandler
    _say("SIGTERM to the launcher")
    os.kill(os.getppid(), signal.SIGTERM)
    deadline = time.time() + 20
    while handler is not None and handler.received is None and time.time() < deadline:
        time.sleep(0.01)


def _kill_in_save(iteration: int) -> None:
    from megamix.training import checkpoint

    commit = checkpoint._commit

    def wrapped(save_dir, tag, it, client_state):
        if it == iteration:
            _kill_self()
        return commit(save_dir, tag, it, client_state)

    checkpoint._commit = wrapped


def _enospc_in_save(iteration: int) -> None:
    import torch

    save = torch.save

    def failing(obj, f, *args, **kwargs):
        if RANK0 and isinstance(f, str) and f"iter_{iteration:07d}" in f:
            with open(f, "wb") as fh:
                fh.write(b"\0" * 4096)  # the part that fit
            _say(f"ENOSPC writing {f}")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f)
        return save(obj, f, *args, **kwargs)

    torch.save = failing


def install(spec: str) -> None:
    """Install the fault that ``spec`` names."""
    kind, n = spec.split(":")
    n = int(n)
    if kind == "kill9-step":
        _after_step(n, _kill_self)
    elif kind == "kill9-save":
        _kill_in_save(n)
    elif kind == "enospc":
        _enospc_in_save(n)
    elif kind == "sigterm":
        _after_step(n, _sigterm_launcher)
    else:
        raise SystemExit(f"fault_hooks: unknown fault {spec!r}")


if __name__ == "__main__":
    install(sys.argv[1])
    script = os.path.join(REPO, "pretrain_gpt_mix.py")
    sys.argv = [script, *sys.argv[2:]]
    runpy.run_path(script, run_name="__main__")
