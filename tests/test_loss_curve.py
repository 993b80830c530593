"""A stored loss curve: a short fixed-seed Aioli run must reproduce tests/assets/loss_curve_aioli.json.

It guards against changes that silently move training (data order, the objective, the
optimizer, Aioli's decisions). When a change is *meant* to move the curve, regenerate the
file and say why in the commit:

    DS_ACCELERATOR=cpu .venv/bin/python tests/test_loss_curve.py --regenerate
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from launch import events, launch, make_data, tiny_args  # noqa: E402

ASSET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "loss_curve_aioli.json")
ITERS = 24
FLAGS = {"--mixing-method": "aioli", "--aioli-lp-rounds": 1, "--aioli-lp-steps": 2, "--mixing-update-interval": 12,
         "--skip-test": True, "--seed": 4321}


def curve(workdir: str) -> dict:
    """Per-step training losses and mixture weights of the reference run, trained in ``workdir``."""
    prefixes = make_data(os.path.join(workdir, "data"))
    run = os.path.join(workdir, "run")
    launch(tiny_args(prefixes, run, os.path.join(workdir, "cache"), iters=ITERS, **FLAGS))
    train = events(run, "train")
    return {"command": "tests/launch.py tiny_args(iters=%d) + %s" % (ITERS, json.dumps(FLAGS)),
            "loss": [e["loss"] for e in train],
            "weights": [list(e["weights"].values()) for e in train]}


def test_the_stored_loss_curve_is_reproduced(tmp_path):
    with open(ASSET) as f:
        stored = json.load(f)
    got = curve(str(tmp_path))
    assert len(got["loss"]) == ITERS
    assert got["loss"] == pytest.approx(stored["loss"], rel=1e-5, abs=0), (
        "training moved; if that is intended, regenerate (see this file's docstring)")
    for mine, theirs in zip(got["weights"], stored["weights"]):
        assert mine == pytest.approx(theirs, abs=1e-6)


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit(__doc__)
    with tempfile.TemporaryDirectory() as tmp:
        result = curve(tmp)
    with open(ASSET + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    os.replace(ASSET + ".tmp", ASSET)
    print(f"wrote {ASSET}: {len(result['loss'])} steps, final loss {result['loss'][-1]:.4f}")
