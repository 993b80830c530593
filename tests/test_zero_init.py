"""Under ZeRO-3 the GPT is built partitioned (deepspeed.zero.Init) with the same weights as a plain build."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from launch import REPO, job_env

WORKER = '''
import json, sys
import torch
import deepspeed
from megamix.model.gpt import GPT, GPTConfig
from megamix.training.config import OptimizerConfig, TrainingConfig
from megamix.training.distributed import distributed_session
from megamix.training.engine import build_model, param_groups

cfg = GPTConfig(vocab_size=128, num_layers=2, hidden_size=32, num_attention_heads=4, seq_length=16)
with distributed_session() as info:
    torch.manual_seed(7)
    plain = GPT(cfg)
    torch.manual_seed(7)
    train = TrainingConfig(micro_batch_size=2, global_batch_size=4, zero_stage=3)
    model = build_model(cfg, train, OptimizerConfig(lr=1e-3), dp_size=info.world_size)
    params = dict(model.named_parameters())
    partitioned = all(p.numel() == 0 and hasattr(p, "ds_numel") for p in params.values())
    shards = sum(p.ds_tensor.numel() for p in params.values())
    with deepspeed.zero.GatheredParameters(list(params.values())):
        same = {n: torch.equal(p, dict(plain.named_parameters())[n]) for n, p in params.items()}
    groups = [len(g["params"]) for g in param_groups(model, 0.1)]
    plain_groups = [len(g["params"]) for g in param_groups(plain, 0.1)]
    if info.rank == 0:
        print("RESULT " + json.dumps({"partitioned": partitioned, "same": same, "shards": shards,
              "full": plain.num_parameters(), "counted": model.num_parameters(),
              "groups": groups, "plain_groups": plain_groups}), flush=True)
'''


@pytest.mark.slow
def test_zero3_builds_partitioned_with_the_plain_weights(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script)], env=job_env(), capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    res = json.loads(line[len("RESULT "):])
    assert res["partitioned"], "parameters were whole after construction: zero.Init was not used"
    assert res["same"] and all(res["same"].values()), res["same"]
    assert res["shards"] < res["full"]  # this rank holds a part, not the whole model
    assert res["counted"] == res["full"]
    assert res["groups"] == res["plain_groups"]  # weight decay still on matrices only
