"""The one reader of a checkpoint's run state (``megamix_state.json``): resume, reference models, tools.

The state is what :class:`megamix.training.run.Run` hands to every save: loop position,
mixture schedule, mixer, RNG, metrics offset, the run's config and the checkpoint's file
manifest. It carries a ``version``; a reader refuses one it does not know. Version 1 is the
first versioned layout (a method's settings under ``mixing.options``, per-domain statistics
as named ``DomainStats``); a state without a version was written by an earlier megamix in a
layout this one cannot continue (per-method config sections, packed statistics vectors), and
is refused with that explanation rather than misread.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch

from megamix.training.checkpoint import find_checkpoint
from megamix.training.ckpt_verify import STATE_FILE, read_state, verified_state
from megamix.training.config import RunConfig

STATE_VERSION = 1
KNOWN_STATE_VERSIONS = (1,)


@dataclass
class RunState:
    """A checkpoint's run state: where it lives and the client dict saved with it."""

    load_dir: str
    """The checkpoint directory (``--load``)."""
    tag: str
    """The checkpoint's name in ``load_dir`` (``iter_NNNNNNN``)."""
    client: dict
    """The saved client state: loop, schedule, mixer, rng, metrics_offset, config, domains, files."""

    @property
    def path(self) -> str:
        """The state file."""
        return os.path.join(self.load_dir, self.tag, STATE_FILE)

    @property
    def iteration(self) -> int:
        """Optimizer steps done when the checkpoint was taken."""
        return int(self.client["loop"]["iteration"])

    @functools.cached_property
    def config(self) -> RunConfig:
        """The run's config as saved (built on first use; ValueError naming the file when it does not parse)."""
        try:
            return RunConfig.from_dict(self.client["config"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{self.path}: the saved config does not load: {err}") from None


def _check_version(client: dict, path: str) -> None:
    """ValueError naming ``path`` unless the state's version is one this megamix reads."""
    version = client.get("version")
    if version is None:
        raise ValueError(f"{path}: run state without a version, written by a megamix older than this one's first "
                         "versioned layout (per-method config sections, packed statistics): resume it with the "
                         "megamix that wrote it, or start the run again")
    if version not in KNOWN_STATE_VERSIONS:
        raise ValueError(f"{path}: run state version {version!r} is not one this megamix reads (known: "
                         f"{', '.join(map(str, KNOWN_STATE_VERSIONS))}); it was written by a newer megamix")


def read_run_state(load_dir: str, tag: str | None = None, rank: int = 0, world_size: int = 1,
                   verify: bool = True) -> RunState:
    """The run state of checkpoint ``tag`` (default: the one ``latest`` names) in ``load_dir``.

    With ``verify`` every rank checks its share of the checkpoint's files against the manifest
    (collective; CheckpointError naming the damage and the newest earlier checkpoint that
    verifies); without, only the state file's own seal is checked.
    """
    tag = tag or find_checkpoint(load_dir)
    if tag is None:
        raise FileNotFoundError(f"{load_dir}: no megamix checkpoint (no 'latest' file)")
    client = verified_state(load_dir, tag, rank, world_size) if verify else read_state(load_dir, tag)
    state = RunState(load_dir, tag, client)
    _check_version(client, state.path)
    return state


def load_state_dict_from_checkpoint(load_dir: str) -> dict[str, torch.Tensor]:
    """The full fp32 model state dict of the newest checkpoint in ``load_dir`` (any ZeRO stage)."""
    state = read_run_state(load_dir)  # every file verified, before unpickling any
    tag = state.tag
    if state.config.training.zero_stage == 3:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(load_dir, tag=tag)
    states = torch.load(os.path.join(load_dir, tag, "mp_rank_00_model_states.pt"), map_location="cpu",
                        weights_only=False)
    return {k: v.float() for k, v in states["module"].items()}
