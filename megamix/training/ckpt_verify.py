"""Checkpoint integrity: a size and sha256 for every file of a checkpoint, checked before a resume.

At save, each rank records the files it wrote itself (DeepSpeed's writes go through the
engine's checkpoint engine, which :func:`recording_writes` wraps); rank 0 stores the merged
manifest in ``megamix_state.json``, which also carries a sha256 of its own content. At load,
each rank checks the files it wrote (``rank`` in the manifest, modulo the world size), the
ranks agree on the outcome, and a checkpoint that fails is an error naming the file, what
was expected and found, and the newest earlier checkpoint that verifies.

sha256 over 8 MiB chunks: 0.4-0.9 GB/s on this 2-core machine against 1.0-1.2 GB/s for
zlib.crc32, not enough of a gap to give up a hash that also catches deliberate edits.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from contextlib import contextmanager
from typing import Iterator

from megamix.fileio import file_sha256
from megamix.training.distributed import all_gather_object

STATE_FILE = "megamix_state.json"
_TAG = re.compile(r"^iter_(\d{7})$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from, or a save that failed; the message says which file and why."""


def describe_files(root: str, paths: list[str], rank: int) -> dict[str, dict]:
    """Manifest entries ``{relative path: {rank, size, sha256}}`` of files under ``root``."""
    out = {}
    for path in sorted(set(paths)):
        rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
        out[rel] = {"rank": rank, "size": os.path.getsize(path), "sha256": file_sha256(path)}
    return out


@contextmanager
def recording_writes(engine) -> Iterator[dict]:
    """Record the files DeepSpeed writes during a save, and any error, instead of raising it mid-save.

    DeepSpeed's save holds barriers; a rank that raised half-way would leave the others waiting
    there forever. Each write error is kept in ``record["error"]`` so the ranks can agree on it
    after DeepSpeed's own collectives have run.
    """
    ckpt = engine.checkpoint_engine
    original, original_makedirs = ckpt.save, ckpt.makedirs
    record: dict = {"paths": [], "error": None}

    def makedirs(path, *args, **kwargs):
        try:
            return original_makedirs(path, *args, **kwargs)
        except OSError as err:
            record["error"] = record["error"] or f"creating {path}: {type(err).__name__}: {err}"
            return None

    def save(state_dict, path, *args, **kwargs):
        if record["error"] is not None:
            return None
        try:
            result = original(state_dict, path, *args, **kwargs)
        except Exception as err:  # noqa: BLE001 - re-raised on every rank by the caller
            record["error"] = f"writing {path}: {type(err).__name__}: {err}"
            return None
        record["paths"].append(str(path))
        return result

    ckpt.save, ckpt.makedirs = save, makedirs
    try:
        yield record
    finally:
        ckpt.save, ckpt.makedirs = original, original_makedirs


def seal(client_state: dict) -> dict:
    """``client_state`` plus ``state_sha256``, a sha256 over its canonical JSON."""
    body = {k: v for k, v in client_state.items() if k != "state_sha256"}
    return {**body, "state_sha256": hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()}


def read_state(load_dir: str, tag: str) -> dict:
    """The client state of checkpoint ``tag``; CheckpointError when missing, torn or altered."""
    path = os.path.join(load_dir, tag, STATE_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: missing (the save of {tag} did not finish)")
    try:
        with open(path) as f:
            state = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err}); the file is truncated or corrupted "
                              f"({os.path.getsize(path)} bytes)") from None
    stored = state.get("state_sha256")
    if stored is not None and seal(state)["state_sha256"] != stored:
        raise CheckpointError(f"{path}: content does not match its recorded sha256 (the file was altered)")
    return state


def check_files(load_dir: str, tag: str, manifest: dict, rank: int, world_size: int) -> list[str]:
    """Problems with this rank's files of checkpoint ``tag`` (empty when they all match)."""
    problems = []
    for rel, want in sorted(manifest.items()):
        if want["rank"] % world_size != rank:
            continue
        path = os.path.join(load_dir, tag, rel)
        if not os.path.isfile(path):
            problems.append(f"{path}: missing (expected {want['size']} bytes)")
            continue
        size = os.path.getsize(path)
        if size != want["size"]:
            problems.append(f"{path}: {size} bytes, expected {want['size']} (truncated or overwritten)")
        elif file_sha256(path) != want["sha256"]:
            problems.append(f"{path}: sha256 {file_sha256(path)[:16]}…, expected {want['sha256'][:16]}… "
                            "(the content was altered)")
    return problems


def verify(load_dir: str, tag: str, rank: int, world_size: int) -> tuple[dict | None, list[str]]:
    """(client state, problems) of checkpoint ``tag``, agreed by every rank; collective."""
    try:
        state = read_state(load_dir, tag)
        mine = check_files(load_dir, tag, state.get("files", {}), rank, world_size)
    except CheckpointError as err:
        state, mine = None, [str(err)]
    problems = sorted({p for rank_problems in all_gather_object(mine) for p in rank_problems})
    return (None if problems else state), problems


def earlier_tags(load_dir: str, tag: str) -> list[str]:
    """Checkpoint directories in ``load_dir`` older than ``tag``, newest first."""
    names = [n for n in os.listdir(load_dir) if _TAG.match(n) and os.path.isdir(os.path.join(load_dir, n))]
    return sorted((n for n in names if n < tag), reverse=True)


def newest_verified_before(load_dir: str, tag: str, rank: int, world_size: int) -> str | None:
    """The newest checkpoint older than ``tag`` whose files all verify; collective."""
    for earlier in earlier_tags(load_dir, tag):
        state, problems = verify(load_dir, earlier, rank, world_size)
        if not problems:
            return earlier
    return None


def verified_state(load_dir: str, tag: str, rank: int, world_size: int) -> dict:
    """The client state of ``tag`` after every rank checked its files; CheckpointError naming the damage."""
    state, problems = verify(load_dir, tag, rank, world_size)
    if not problems:
        return state
    earlier = newest_verified_before(load_dir, tag, rank, world_size)
    hint = (f"the newest earlier checkpoint that verifies is {load_dir}/{earlier}: resume from it with "
            f"--ckpt-step {int(_TAG.match(earlier).group(1))}" if earlier
            else f"no earlier checkpoint in {load_dir} verifies")
    raise CheckpointError(f"{load_dir}: checkpoint {tag} is damaged:\n  " + "\n  ".join(problems)
                          + f"\n{hint}")
