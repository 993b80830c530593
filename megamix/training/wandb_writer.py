"""Weights & Biases output of the metrics sink: the TensorBoard scalars, from rank 0 only.

Off unless ``--wandb-project`` is given. ``WANDB_MODE=offline`` (or ``wandb offline``)
writes the run under the save directory without a network, to ``wandb sync`` later.
"""

from __future__ import annotations

import os
from typing import Iterable

WANDB_PIN = "wandb==0.31.0"


def require_wandb():
    """The ``wandb`` module; a ValueError naming the flag when it is not installed."""
    try:
        import wandb
    except ImportError:
        raise ValueError(f"--wandb-project was given but the wandb package is not installed; "
                         f"pip install {WANDB_PIN} (or drop --wandb-project)") from None
    return wandb


class WandbWriter:
    """One W&B run; ``log(step, scalars)`` sends (tag, value) pairs at a training step."""

    def __init__(self, project: str, name: str | None, save_dir: str, config: dict | None = None) -> None:
        wandb = require_wandb()
        os.makedirs(save_dir, exist_ok=True)
        self._run = wandb.init(project=project, name=name, dir=save_dir, config=config or {},
                               settings=wandb.Settings(console="off", x_disable_stats=True))
        self._last_step = 0

    def log(self, step: int, scalars: Iterable[tuple[str, float]]) -> None:
        """Log the scalars at ``step`` (an earlier step than the last one is logged at the last one)."""
        data = dict(scalars)
        if not data:
            return
        self._last_step = max(self._last_step, int(step))
        self._run.log(data, step=self._last_step)

    @property
    def directory(self) -> str:
        """The run's local directory (files, logs and the .wandb record)."""
        return self._run.dir

    def close(self) -> None:
        """Finish the run (flushes everything to disk, or to the server when online)."""
        if self._run is not None:
            self._run.finish()
            self._run = None


def wandb_writer_for(project: str | None, name: str | None, save_dir: str | None, run_dir: str | None,
                     is_main: bool, config: dict | None = None) -> WandbWriter | None:
    """The writer of a run on rank 0 when ``project`` is set.

    W&B keeps its files in ``<dir>/wandb/``, ``dir`` being ``save_dir``, else the run directory.
    """
    if not (project and is_main):
        return None
    directory = save_dir or run_dir or "."
    return WandbWriter(project, name, directory, config)
