"""Checkpoints: DeepSpeed's engine state plus megamix's JSON client state, committed atomically.

Layout of a save directory::

    <save>/iter_0000100/            DeepSpeed's files for that step
    <save>/iter_0000100/megamix_state.json   iteration, schedule, phase, mixer, RNG, config
    <save>/latest                   the tag of the newest *complete* checkpoint

``latest`` is replaced (write + rename) only after every rank finished writing, so a crash
during a save leaves the previous checkpoint as the one that resumes. ``megamix_state.json``
also lists every file of the checkpoint with its size and sha256 (see ckpt_verify.py), and a
save that fails on any rank fails on all of them without touching ``latest``.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import warnings

import numpy as np
import torch

from megamix.fileio import atomic_write_text
from megamix.training.ckpt_verify import (STATE_FILE, CheckpointError, describe_files, earlier_tags,
                                          recording_writes, seal)
from megamix.training.distributed import all_gather_object, barrier

LATEST_FILE = "latest"
# Config fields that may change between the run and its resumption: they do not change what
# has already happened (train_iters extends or shortens the run; the LR schedule follows).
RESUMABLE_CHANGES = {
    "training.save", "training.load", "training.save_interval", "training.exit_interval",
    "training.eval_interval", "training.skip_test", "training.train_iters", "training.ckpt_step",
    "training.exit_signals", "training.test_samples_per_domain",
    "logging.log_interval", "logging.tensorboard_dir",
    "logging.wandb_project", "logging.wandb_exp_name", "logging.wandb_save_dir",
    # activation recompute trades memory for time and compilation changes no number
    "model.recompute_granularity", "model.recompute_method", "model.recompute_num_layers",
    "training.compile", "training.tf32", "logging.peak_tflops", "data.dataloader_prefetch",
    "training.eval_micro_batch_size",  # evaluation gives the same losses at any batch size
    "training.max_domain_epochs",  # its error says "raise --max-domain-epochs" and resume
}


def tag_for(iteration: int) -> str:
    """The directory name of the checkpoint taken after ``iteration`` steps."""
    return f"iter_{iteration:07d}"


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode()


def _from_b64(text: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(text), dtype=np.uint8).copy())


def rng_state() -> dict:
    """Python, numpy, torch and (on a GPU) this device's CUDA RNG states, JSON-able.

    Data-parallel ranks are seeded alike and draw alike, so rank 0's states are every rank's.
    """
    state = {
        "python": base64.b64encode(json.dumps(random.getstate()).encode()).decode(),
        "numpy": base64.b64encode(json.dumps(np.random.get_state(legacy=False), default=_np_default).encode()).decode(),
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = _b64(torch.cuda.get_rng_state())
    return state


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
    torch.set_rng_state(_from_b64(state["torch"]))
    if "cuda" in state:
        if torch.cuda.is_available():
            torch.cuda.set_rng_state(_from_b64(state["cuda"]))
        else:
            warnings.warn("the checkpoint holds a CUDA RNG state (a GPU run) but no GPU is available: with "
                          "dropout, the resumed run's masks differ from an uninterrupted run's")


def save_checkpoint(engine, save_dir: str, iteration: int, client_state: dict, is_main: bool) -> str:
    """Save the engine and ``client_state`` as the checkpoint of ``iteration``; return its tag.

    Collective. A write that fails on any rank (a full disk, a permission, an I/O error) is a
    CheckpointError on every rank; ``latest`` and the previous checkpoint stay as they were
    and the partial ``iter_N`` directory is removed.
    """
    tag = tag_for(iteration)
    with recording_writes(engine) as record:
        engine.save_checkpoint(save_dir, tag=tag, client_state={}, save_latest=False)
    files = {}
    if record["error"] is None:
        try:
            files = describe_files(os.path.join(save_dir, tag), record["paths"], 0)
        except OSError as err:
            record["error"] = f"reading back {save_dir}/{tag}: {err}"
    gathered = all_gather_object((record["error"], files))
    errors = [f"rank {r}: {err}" for r, (err, _) in enumerate(gathered) if err]
    if not errors and is_main:
        manifest = {name: {**entry, "rank": r} for r, (_, f) in enumerate(gathered) for name, entry in f.items()}
        errors = _commit(save_dir, tag, iteration, {**client_state, "files": manifest})
    errors = [e for rank_errors in all_gather_object(errors if is_main else []) for e in rank_errors] or errors
    if errors:
        _fail(save_dir, tag, errors, is_main)
    return tag


def _commit(save_dir: str, tag: str, iteration: int, client_state: dict) -> list[str]:
    """Rank 0: write the sealed client state, then point ``latest`` at ``tag``; the errors, if any."""
    try:
        atomic_write_text(os.path.join(save_dir, tag, STATE_FILE), json.dumps(seal(client_state)))
        atomic_write_text(os.path.join(save_dir, "latest_checkpointed_iteration.txt"), str(iteration))
        atomic_write_text(os.path.join(save_dir, LATEST_FILE), tag)  # last: the commit point
    except OSError as err:
        return [f"rank 0: writing {save_dir}/{tag}/{STATE_FILE} and {LATEST_FILE}: {err}"]
    return []


def _fail(save_dir: str, tag: str, errors: list[str], is_main: bool) -> None:
    """Remove the partial ``tag`` (never the one ``latest`` names) and raise the save error on every rank."""
    latest = _read_latest(save_dir)
    if is_main and latest != tag:
        shutil.rmtree(os.path.join(save_dir, tag), ignore_errors=True)
    barrier()
    kept = f"{save_dir}/{latest} (named by {LATEST_FILE}) is untouched" if latest else "no earlier checkpoint exists"
    raise CheckpointError(f"--save {save_dir}: saving checkpoint {tag} failed:\n  " + "\n  ".join(errors)
                          + f"\nthe partial {tag} was removed; {kept}. Free space or fix the directory, "
                          "then re-run the same command to resume.")


def _read_latest(load_dir: str) -> str | None:
    path = os.path.join(load_dir, LATEST_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return f.read().strip() or None


def find_checkpoint(load_dir: str | None, ckpt_step: int | None = None) -> str | None:
    """The tag to resume from in ``load_dir`` (``iter_<ckpt_step>`` when given, else ``latest``).

    None when there is nothing to resume from; a --ckpt-step that names no checkpoint is an error.
    """
    if not load_dir:
        return None
    if ckpt_step is not None:
        tag = tag_for(ckpt_step)
        if not os.path.isdir(os.path.join(load_dir, tag)):
            have = ", ".join(earlier_tags(load_dir, "iter_9999999")) if os.path.isdir(load_dir) else "nothing"
            raise CheckpointError(f"--ckpt-step {ckpt_step}: no checkpoint {load_dir}/{tag} (found: {have or 'none'})")
        return tag
    return _read_latest(load_dir)


def load_checkpoint(engine, load_dir: str, tag: str) -> None:
    """Restore the engine (model, optimizer, LR schedule) from ``tag`` (verified beforehand)."""
    path, _ = engine.load_checkpoint(load_dir, tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True)
    if path is None:
        raise CheckpointError(f"--load {load_dir}: DeepSpeed could not load checkpoint {tag}")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(saved: dict, current: dict, allowed: bool = False) -> list[str]:
    """Config fields that differ between a checkpoint and this run and may not change on resume
    (with ``allowed``: those that differ and may)."""
    a, b = _flatten(saved), _flatten(current)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if (key in RESUMABLE_CHANGES) == allowed and a.get(key) != b.get(key):
            diffs.append(f"{key}: checkpoint has {a.get(key)!r}, this run has {b.get(key)!r}")
    return diffs
