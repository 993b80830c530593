"""The one metrics sink: metrics.jsonl, optional TensorBoard and W&B, and rank-0 console lines."""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    return value


def _per_domain(event: dict, value: Any) -> dict | None:
    """A list with one number per domain of an event that names its ``domains`` (a mixer's round record), as a dict."""
    domains = event.get("domains")
    if isinstance(value, list) and isinstance(domains, list) and len(value) == len(domains) and value \
            and all(isinstance(v, (int, float)) for v in value):
        return dict(zip(domains, value))
    return None


def scalar_items(event: dict) -> list[tuple[str, float]]:
    """The finite scalars of an event as (``kind/key`` or ``kind/key/name``, value) pairs.

    Dicts of numbers, and lists with one number per domain when the event names its
    ``domains``, give one scalar per entry.
    """
    kind, items = event["event"], []
    for key, value in event.items():
        if isinstance(value, (int, float)) and key != "step" and math.isfinite(value):
            items.append((f"{kind}/{key}", value))
            continue
        value = _per_domain(event, value) or value
        if isinstance(value, dict):
            items += [(f"{kind}/{key}/{name}", v) for name, v in value.items()
                      if isinstance(v, (int, float)) and math.isfinite(v)]
    return items


class MetricsSink:
    """Writes events on rank 0 only; every other rank gets a sink that does nothing.

    ``record(event)`` appends one JSON line (an ``"event"`` key names the kind) to
    ``<run_dir>/metrics.jsonl`` and sends its scalar fields to TensorBoard and W&B
    (``wandb``: a :class:`~megamix.training.wandb_writer.WandbWriter`, rank 0 only).
    ``offset()`` / ``truncate(offset)`` let a resumed run drop the lines written after its
    checkpoint, so the file reads as if the run had never stopped.
    """

    def __init__(self, run_dir: str | None, is_main: bool, tensorboard_dir: str | None = None,
                 wandb=None) -> None:
        self.enabled = is_main
        self._wandb = wandb if is_main else None
        self.path = os.path.join(run_dir, "metrics.jsonl") if (run_dir and is_main) else None
        self._file = None
        self._tb = None
        if self.path:
            os.makedirs(run_dir, exist_ok=True)
            self._file = open(self.path, "a")
        if tensorboard_dir and is_main:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(tensorboard_dir)

    def record(self, event: dict) -> None:
        """Append one event (a dict with an 'event' key)."""
        if not self.enabled:
            return
        if self._file:
            self._file.write(json.dumps(_jsonable(event)) + "\n")
            self._file.flush()
        if "step" in event and (self._tb or self._wandb):
            scalars = scalar_items(event)
            for tag, value in scalars if self._tb else ():
                self._tb.add_scalar(tag, value, event["step"])
            if self._wandb:
                self._wandb.log(event["step"], scalars)

    def print(self, line: str) -> None:
        """Print on rank 0 only."""
        if self.enabled:
            print(line, file=sys.stdout, flush=True)

    def offset(self) -> int:
        """Bytes written to metrics.jsonl so far (0 without a file)."""
        if not self._file:
            return 0
        self._file.flush()
        return self._file.tell()

    def truncate(self, offset: int) -> None:
        """Drop everything after ``offset`` bytes (lines from steps after a checkpoint)."""
        if not self._file:
            return
        self._file.flush()
        if os.path.getsize(self.path) > offset:
            self._file.truncate(offset)
        self._file.seek(0, os.SEEK_END)

    def close(self) -> None:
        """Flush and close the outputs."""
        if self._file:
            self._file.close()
            self._file = None
        if self._tb:
            self._tb.close()
            self._tb = None
        if self._wandb:
            self._wandb.close()
            self._wandb = None
