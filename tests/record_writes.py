"""Run pretrain_gpt_mix.py while recording, per global rank, what it writes and which mixtures it computes.

Usage (under torchrun): record_writes.py OUT_DIR WATCH_DIR[,WATCH_DIR...] CRASH_AFTER <pretrain flags>

Appends to ``OUT_DIR/writes_rank<R>.jsonl`` every file this process opens for writing or
renames into place under a watched directory (Python-level writes, through an audit hook:
megamix's metrics, client state, ``latest``, schedule and cache files; DeepSpeed's tensor
files are written by C++ and not seen), and to ``OUT_DIR/weights_rank<R>.jsonl`` every
phase's mixture as this rank computed it, before the broadcast-and-check. CRASH_AFTER > 0
SIGKILLs rank 0 after that step (tests/crash_after_step.py); 0 runs normally.
"""

from __future__ import annotations

import json
import os
import runpy
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_busy = [False]


def _append(path: str, record: dict) -> None:
    _busy[0] = True  # our own log writes must not be recorded
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
    finally:
        _busy[0] = False


def _install_write_hook(out: str, watch: list[str], rank: str) -> None:
    log = os.path.join(out, f"writes_rank{rank}.jsonl")
    watch = [os.path.realpath(w) + os.sep for w in watch]

    def hook(event: str, args: tuple) -> None:
        if _busy[0] or event not in ("open", "os.rename"):
            return
        path = args[1] if event == "os.rename" else args[0]
        if event == "open":
            mode, flags = args[1], args[2]
            if isinstance(mode, str):
                writing = any(c in mode for c in "wax+")
            else:
                writing = bool(flags & (os.O_WRONLY | os.O_RDWR))
            if not writing:
                return
        if isinstance(path, str) and any(os.path.realpath(path).startswith(w) for w in watch):
            _append(log, {"event": event, "path": os.path.realpath(path)})

    sys.addaudithook(hook)


def _install_weight_recorder(out: str, rank: str) -> None:
    from megamix.training import loop

    original = loop.broadcast_and_check

    def recording(weights, what):
        _append(os.path.join(out, f"weights_rank{rank}.jsonl"), {"what": what, "weights": list(map(float, weights))})
        return original(weights, what)

    loop.broadcast_and_check = recording


if __name__ == "__main__":
    out_dir, watch_dirs, crash_after = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
    os.makedirs(out_dir, exist_ok=True)
    rank = os.environ.get("RANK", "0")
    sys.path.insert(0, os.path.join(REPO, "tests"))
    _install_weight_recorder(out_dir, rank)
    if crash_after:
        from crash_after_step import _install as install_crash

        install_crash(crash_after)
    _install_write_hook(out_dir, watch_dirs, rank)
    script = os.path.join(REPO, "pretrain_gpt_mix.py")
    sys.argv = [script, *sys.argv[4:]]
    runpy.run_path(script, run_name="__main__")
