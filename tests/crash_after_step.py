"""Run pretrain_gpt_mix.py, but SIGKILL rank 0 right after training step N: a worker crash
(an OOM kill, a lost node) at a known point, so resume tests do not depend on how fast a
poller notices progress. The launcher then stops the other ranks.

Usage (under torchrun): crash_after_step.py N <pretrain_gpt_mix.py flags>
"""

from __future__ import annotations

import os
import runpy
import signal
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _install(crash_step: int) -> None:
    from megamix.training import loop

    train_one = loop.PhaseLoop._train_one

    def train_one_then_crash(self, state):
        train_one(self, state)
        if state.iteration == crash_step and os.environ.get("RANK") == "0":
            print(f"crash_after_step: SIGKILL rank 0 after step {crash_step}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    loop.PhaseLoop._train_one = train_one_then_crash


if __name__ == "__main__":
    _install(int(sys.argv[1]))
    script = os.path.join(REPO, "pretrain_gpt_mix.py")
    sys.argv = [script, *sys.argv[2:]]
    runpy.run_path(script, run_name="__main__")
