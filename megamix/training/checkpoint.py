"""Checkpoints: DeepSpeed's engine state plus megamix's JSON client state, committed atomically.

Layout of a save directory::

    <save>/iter_0000100/            DeepSpeed's files for that step
    <save>/iter_0000100/megamix_state.json   iteration, schedule, phase, mixer, RNG, config
    <save>/latest                   the tag of the newest *complete* checkpoint

``latest`` is replaced (write + rename) only after every rank finished writing, so a crash
during a save leaves the previous checkpoint as the one that resumes.
"""

from __future__ import annotations

import base64
import json
import os
import random

import numpy as np
import torch

from megamix.fileio import atomic_write_text
from megamix.training.distributed import barrier

STATE_FILE = "megamix_state.json"
LATEST_FILE = "latest"
# Config fields that may change between the run and its resumption.
RESUMABLE_CHANGES = {
    "training.save", "training.load", "training.save_interval", "training.exit_interval",
    "training.eval_interval", "training.skip_test", "logging.log_interval", "logging.tensorboard_dir",
    "training.max_domain_epochs",  # its error says "raise --max-domain-epochs" and resume
}


def tag_for(iteration: int) -> str:
    """The directory name of the checkpoint taken after ``iteration`` steps."""
    return f"iter_{iteration:07d}"


def rng_state() -> dict:
    """Python, numpy and torch RNG states, JSON-able."""
    return {
        "python": base64.b64encode(json.dumps(random.getstate()).encode()).decode(),
        "numpy": base64.b64encode(json.dumps(np.random.get_state(legacy=False), default=_np_default).encode()).decode(),
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
    }


def _np_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.integer):
        return int(o)
    raise TypeError(type(o))


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    py = json.loads(base64.b64decode(state["python"]))
    random.setstate((py[0], tuple(py[1]), py[2]))
    np.random.set_state(json.loads(base64.b64decode(state["numpy"])))
    raw = np.frombuffer(base64.b64decode(state["torch"]), dtype=np.uint8).copy()
    torch.set_rng_state(torch.from_numpy(raw))


def save_checkpoint(engine, save_dir: str, iteration: int, client_state: dict, is_main: bool) -> str:
    """Save the engine and ``client_state`` as the checkpoint of ``iteration``; return its tag."""
    tag = tag_for(iteration)
    engine.save_checkpoint(save_dir, tag=tag, client_state={}, save_latest=False)
    if is_main:
        atomic_write_text(os.path.join(save_dir, tag, STATE_FILE), json.dumps(client_state))
    barrier()
    if is_main:
        atomic_write_text(os.path.join(save_dir, LATEST_FILE), tag)
        atomic_write_text(os.path.join(save_dir, "latest_checkpointed_iteration.txt"), str(iteration))
    barrier()
    return tag


def find_checkpoint(load_dir: str | None) -> str | None:
    """The tag to resume from in ``load_dir``; None when it is missing or holds no checkpoint."""
    if not load_dir:
        return None
    latest = os.path.join(load_dir, LATEST_FILE)
    if not os.path.isfile(latest):
        return None
    with open(latest) as f:
        tag = f.read().strip()
    if not os.path.isfile(os.path.join(load_dir, tag, STATE_FILE)):
        raise FileNotFoundError(f"--load {load_dir}: 'latest' names {tag!r} but {tag}/{STATE_FILE} is missing")
    return tag


def load_checkpoint(engine, load_dir: str, tag: str) -> dict:
    """Restore the engine (model, optimizer, LR schedule) from ``tag``; return the client state."""
    path, _ = engine.load_checkpoint(load_dir, tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True)
    if path is None:
        raise FileNotFoundError(f"--load {load_dir}: DeepSpeed could not load checkpoint {tag}")
    with open(os.path.join(load_dir, tag, STATE_FILE)) as f:
        return json.load(f)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(saved: dict, current: dict) -> list[str]:
    """Config fields that differ between a checkpoint and this run and may not change on resume."""
    a, b = _flatten(saved), _flatten(current)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key not in RESUMABLE_CHANGES and a.get(key) != b.get(key):
            diffs.append(f"{key}: checkpoint has {a.get(key)!r}, this run has {b.get(key)!r}")
    return diffs
