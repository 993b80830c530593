"""What may change when a run is resumed, and re-fitting the LR schedule to a new --train-iters."""

from __future__ import annotations

from megamix.training.checkpoint import config_differences
from megamix.training.ckpt_verify import CheckpointError


def check_resume_config(saved: dict, current: dict, load_dir: str, tag: str, iteration: int) -> list[str]:
    """The allowed changes between checkpoint ``tag`` and this run; ValueError listing any other difference.

    Logging/save/eval/exit intervals, TensorBoard/W&B destinations, --ckpt-step, --exit-signals
    and --train-iters (not below the checkpoint's iteration) may change on resume.
    """
    diffs = config_differences(saved, current)
    if diffs:
        raise ValueError(f"--load {load_dir}: checkpoint {tag} was made with a different configuration; "
                         "resume with the same command. Differences:\n  " + "\n  ".join(diffs))
    new_iters = current["training"]["train_iters"]
    if new_iters < iteration:
        raise CheckpointError(f"--train-iters {new_iters}: checkpoint {load_dir}/{tag} is already at iteration "
                              f"{iteration}; a run can be extended or stopped earlier, not rewound")
    return config_differences(saved, current, allowed=True)


def refit_lr_schedule(engine) -> tuple[float, float] | None:
    """Set the optimizer's learning rate from the LR schedule at its current step; (before, after) or None.

    The schedule's lambda reads the run's --train-iters, so after an extension it describes the
    new length; the learning rate loaded from the checkpoint still belongs to the old one.
    Megatron likewise recomputes its scheduler from the current step. A scheduler that
    DeepSpeed built from a ``--deepspeed_config`` section is left alone (None).
    """
    sched = getattr(engine, "lr_scheduler", None)
    lambdas = getattr(sched, "lr_lambdas", None)
    if sched is None or lambdas is None:
        return None
    groups = sched.optimizer.param_groups
    before = float(groups[0]["lr"])
    for group, base, fn in zip(groups, sched.base_lrs, lambdas):
        group["lr"] = base * fn(sched.last_epoch)
    sched._last_lr = [float(g["lr"]) for g in groups]  # what get_last_lr() reports
    return before, float(groups[0]["lr"])
