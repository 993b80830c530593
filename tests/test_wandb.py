"""Weights & Biases through the metrics sink: offline runs hold the TensorBoard scalars; off unless asked."""

from __future__ import annotations

import glob
import json
import os
import sys
import time

import pytest

from megamix.training.config import LoggingConfig
from megamix.training.metrics import MetricsSink, scalar_items
from megamix.training.wandb_writer import WandbWriter, wandb_writer_for

EVENTS = [
    {"event": "eval", "step": 0, "val_loss": {"code": 5.0, "math": 6.25}, "avg_val_loss": 5.625},
    {"event": "train", "step": 1, "loss": 6.5, "domain_loss": {"code": 6.0, "math": 7.0}, "lr": 1e-3,
     "tokens_per_s": 1000.0, "weights": {"code": 0.5, "math": 0.5}, "domain_epochs": {"code": 0.1, "math": 0.2}},
    {"event": "train", "step": 2, "loss": 6.0, "domain_loss": {"code": 5.5, "math": float("nan")}, "lr": 2e-3,
     "tokens_per_s": 1100.0, "weights": {"code": 0.5, "math": 0.5}, "domain_epochs": {"code": 0.2, "math": 0.4}},
    {"event": "aioli_round", "round": 0, "step": 2, "domains": ["code", "math"], "weights": [0.25, 0.75],
     "A": [[1.0, 0.0], [0.0, 1.0]]},
]


def read_wandb_history(run_file: str) -> tuple[list[dict], bool]:
    """(history rows, whether the run's exit record is there) of an offline ``run-*.wandb`` file
    (LevelDB-log records of wandb Record protobufs)."""
    from wandb.proto import wandb_internal_pb2 as pb

    with open(run_file, "rb") as f:
        data = f.read()
    assert data[:4] == b":W&B", data[:8]
    pos, buf, rows, finished = 7, b"", [], False
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if left < 7 or (length == 0 and kind == 0):
            pos += left if left < 7 else 7
            continue
        if pos + 7 + length > len(data):  # a record still being written
            break
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            rec = pb.Record()
            rec.ParseFromString(buf)
            buf = b""
            if rec.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in rec.history.item})
            finished |= rec.WhichOneof("record_type") == "exit"
    return rows, finished


def logged_scalars(directory: str) -> dict:
    """{(step, tag): value} of the one offline run under ``directory``/wandb."""
    runs = glob.glob(os.path.join(directory, "wandb", "offline-run-*", "run-*.wandb"))
    assert len(runs) == 1, runs
    deadline = time.monotonic() + 60
    rows, finished = read_wandb_history(runs[0])
    while not finished and time.monotonic() < deadline:  # wandb's service may still be writing the file
        time.sleep(0.5)
        rows, finished = read_wandb_history(runs[0])
    assert finished, f"{runs[0]}: no exit record after 60 s"
    out = {}
    for row in rows:
        out.update({(row["_step"], k): v for k, v in row.items() if not k.startswith("_")})
    return out


def test_offline_run_holds_the_tensorboard_scalars(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    writer = WandbWriter("megamix-test", "unit", str(tmp_path / "wb"), {"model": {"num_layers": 2}})
    sink = MetricsSink(str(tmp_path / "run"), True, str(tmp_path / "tb"), writer)
    for event in EVENTS:
        sink.record(event)
    sink.close()
    expected = {(e["step"], tag): v for e in EVENTS for tag, v in scalar_items(e)}
    assert (2, "train/domain_loss/math") not in expected  # NaN is skipped
    assert expected[(2, "aioli_round/weights/math")] == 0.75  # Aioli's per-domain lists become scalars
    assert expected[(1, "train/domain_epochs/math")] == 0.2
    assert logged_scalars(str(tmp_path / "wb")) == pytest.approx(expected)


def test_off_unless_asked_and_rank_zero_only(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_writer_for(None, None, None, str(tmp_path), True) is None
    assert wandb_writer_for("p", "n", None, str(tmp_path), False) is None
    assert not os.path.exists(tmp_path / "wandb")
    assert MetricsSink(None, False, None, wandb=object())._wandb is None


def test_missing_wandb_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now raises ImportError
    with pytest.raises(ValueError, match=r"--wandb-project was given but the wandb package is not installed.*"
                                         r"pip install wandb=="):
        LoggingConfig(wandb_project="megamix")
    LoggingConfig()  # without the flag nothing needs wandb
    with pytest.raises(ValueError, match="need --wandb-project"):
        LoggingConfig(wandb_exp_name="x")
