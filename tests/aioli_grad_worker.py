"""Worker of the 2-rank gradient-estimator test: DeepSpeed ZeRO 0-2 on gloo, a tiny GPT.

For each (stage, precision) it trains two steps, then reads Adam's preconditioner from the
engine (ZeRO 0: the torch optimizer's own state; ZeRO 1-2: DeepSpeed's partitions, gathered)
and takes one gradient estimate of A on each rank's own samples. Rank 0 writes what every
rank got as JSON; the test compares stages and ranks.

Usage (under torchrun --nproc_per_node=2): aioli_grad_worker.py OUT.json
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch

from megamix.model.gpt import GPT, GPTConfig
from megamix.training.aioli_gradient import AioliGradientEstimator, ValidationDraws, make_preconditioner
from megamix.training.distributed import all_gather_object, distributed_session
from megamix.training.loader import MicroBatch, StepBatch

K, SEQ, MBS = 3, 8, 2
CFG = dict(vocab_size=64, num_layers=2, hidden_size=32, num_attention_heads=4, seq_length=SEQ)


class Valid:
    """Domain d's validation samples: tokens drawn from its own third of the vocabulary."""

    def __init__(self, d: int) -> None:
        self.name = f"d{d}"
        self.w = np.random.default_rng(50 + d).integers(20 * d, 20 * d + 20, size=(6, SEQ + 1))

    def __len__(self) -> int:
        return len(self.w)

    def __getitem__(self, k: int) -> dict:
        return {"tokens": self.w[k][:-1], "labels": self.w[k][1:], "loss_mask": np.ones(SEQ, np.float32)}


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """8 samples: windows and domain ids (rank r takes rows 4r..4r+3)."""
    rng = np.random.default_rng(step)
    dom = np.array([0, 1, 2, 0, 2, 2, 0, 1]) if step < 2 else np.array([0, 0, 2, 2, 0, 1, 1, 2])
    rows = [rng.integers(20 * d, 20 * d + 20, size=SEQ + 1) for d in dom]
    return torch.tensor(np.stack(rows)), torch.tensor(dom)


def train(engine, rank: int, precision: str) -> None:
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    for step in range(2):
        windows, _ = global_batch(step)
        mine = windows[4 * rank: 4 * rank + 4]
        for m in range(0, 4, MBS):
            chunk = mine[m:m + MBS]
            loss = engine(chunk[:, :-1], chunk[:, 1:]).mean()  # the engine divides by the 2 accumulation steps
            engine.backward(loss.to(dtype) if dtype != torch.float32 else loss)
            engine.step()


def one_case(stage: int, precision: str, rank: int) -> dict:
    import deepspeed

    torch.manual_seed(0)
    model = GPT(GPTConfig(**CFG))
    if precision == "bf16":
        model = model.to(torch.bfloat16)
    kw = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    cfg = {"train_batch_size": 8, "train_micro_batch_size_per_gpu": MBS, "gradient_accumulation_steps": 2,
           "zero_optimization": {"stage": stage}, "bf16": {"enabled": precision == "bf16"},
           "steps_per_print": 1 << 30}
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), **kw),
                                      config=cfg)
    train(engine, rank, precision)
    params = [p for p in engine.module.parameters() if p.requires_grad]
    pre = make_preconditioner(engine.optimizer, params)
    p_ds = pre.flat(torch.device("cpu"), torch.float32)
    out = {"p": p_ds.tolist()}
    if precision == "fp32":  # Adam's next step with a zero gradient: the momentum term, from m and v
        out["update"] = pre.update(torch.device("cpu"), torch.float32)(torch.zeros_like(p_ds)).tolist()
    draws = ValidationDraws([Valid(d) for d in range(K)], None, MBS, rank, 2)
    est = AioliGradientEstimator(engine.module, engine.optimizer, K, torch.device("cpu"), draws, MBS, 1, stage)
    windows, dom = global_batch(2)
    mine = [MicroBatch(windows[4 * rank + m: 4 * rank + m + MBS], dom[4 * rank + m: 4 * rank + m + MBS])
            for m in range(0, 4, MBS)]
    batch = StepBatch(2, mine, np.bincount(dom.numpy(), minlength=K) * float(SEQ))
    out["estimate"] = est.before_step(2, batch, 1e-2).tolist()
    if precision == "fp32":
        look = AioliGradientEstimator(engine.module, engine.optimizer, K, torch.device("cpu"), draws, MBS, 1, stage,
                                      "lookahead")
        out["lookahead"] = look.before_step(2, batch, 1e-2).tolist()
    return out


def main() -> None:
    out_path = sys.argv[1]
    with distributed_session() as info:
        results = {}
        for stage, precision in ((0, "fp32"), (1, "fp32"), (2, "fp32"), (0, "bf16"), (2, "bf16")):
            results[f"{stage}-{precision}"] = all_gather_object(one_case(stage, precision, info.rank))
        if info.rank == 0:
            with open(out_path + ".tmp", "w") as f:
                json.dump(results, f)
            os.replace(out_path + ".tmp", out_path)


if __name__ == "__main__":
    main()
