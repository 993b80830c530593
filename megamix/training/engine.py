"""DeepSpeed engine set-up: the config built from flags (or checked against a file), AdamW and the LR schedule."""

from __future__ import annotations

import json
import math

import torch

from megamix.model.fused import make_adam
from megamix.training.config import OptimizerConfig, TrainingConfig

_BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


def lr_at(step: int, cfg: OptimizerConfig, train_iters: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup, then decay to min_lr."""
    if cfg.lr_warmup_iters and step < cfg.lr_warmup_iters:
        return cfg.lr * (step + 1) / cfg.lr_warmup_iters
    if cfg.lr_decay_style == "constant":
        return cfg.lr
    decay_iters = cfg.lr_decay_iters or train_iters
    span = max(1, decay_iters - cfg.lr_warmup_iters)
    ratio = min(1.0, (step - cfg.lr_warmup_iters) / span)
    if cfg.lr_decay_style == "linear":
        coeff = 1.0 - ratio
    else:
        coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * coeff


def _flag_config(train: TrainingConfig, opt: OptimizerConfig, dp_size: int) -> dict:
    return {
        "train_batch_size": train.global_batch_size,
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.gradient_accumulation_steps(dp_size),
        "gradient_clipping": opt.clip_grad,
        "zero_optimization": {"stage": train.zero_stage},
        "bf16": {"enabled": train.precision == "bf16"},
        "fp16": {"enabled": train.precision == "fp16"},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def build_ds_config(train: TrainingConfig, opt: OptimizerConfig, dp_size: int) -> dict:
    """The DeepSpeed config: from flags, or ``--deepspeed_config`` checked against the flags.

    A file may add any DeepSpeed section; where it states batch sizes or the ZeRO stage
    they must agree with the flags, otherwise it is an error naming both.
    """
    cfg = _flag_config(train, opt, dp_size)
    if not train.deepspeed_config:
        return cfg
    with open(train.deepspeed_config) as f:
        try:
            user = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"--deepspeed_config {train.deepspeed_config}: not valid JSON ({e})") from None
    for key in _BATCH_KEYS:
        if key in user and user[key] != "auto" and int(user[key]) != cfg[key]:
            raise ValueError(f"--deepspeed_config {train.deepspeed_config}: {key}={user[key]} disagrees with the "
                             f"flags (--global-batch-size/--micro-batch-size and {dp_size} ranks give {cfg[key]})")
    stage = user.get("zero_optimization", {}).get("stage")
    if stage is not None and train.zero_stage not in (0, stage):
        raise ValueError(f"--deepspeed_config {train.deepspeed_config}: zero_optimization.stage={stage} "
                         f"disagrees with --zero-stage {train.zero_stage}")
    merged = {**cfg, **{k: v for k, v in user.items() if v != "auto"}}
    for key in _BATCH_KEYS:
        merged[key] = cfg[key]
    return merged


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (ndim >= 2); none on norms and biases (Megatron's rule)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_engine(model: torch.nn.Module, train: TrainingConfig, opt: OptimizerConfig, dp_size: int,
                 device: torch.device):
    """``deepspeed.initialize`` the model with AdamW and the warmup/decay schedule.

    Returns the engine. If the DeepSpeed config file brings its own optimizer/scheduler,
    DeepSpeed builds those instead.
    """
    import deepspeed

    ds_config = build_ds_config(train, opt, dp_size)
    optimizer = scheduler = None
    if "optimizer" not in ds_config:
        optimizer = make_adam(param_groups(model, opt.weight_decay), lr=opt.lr,
                              betas=(opt.adam_beta1, opt.adam_beta2), eps=opt.adam_eps,
                              weight_decay=opt.weight_decay, fused=opt.fused, device=device)
    if "scheduler" not in ds_config and optimizer is not None:
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_at(step, opt, train.train_iters) / opt.lr)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config)
    return engine
