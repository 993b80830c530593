"""Read a checkpoint's Adam state per parameter name, outside DeepSpeed (for offline probes).

A DeepSpeed checkpoint keeps the optimizer state in one of two layouts:

* ZeRO 0 (fp32): ``mp_rank_00_model_states.pt["optimizer"]`` is the torch optimizer's
  ``state_dict``; its parameter indices run over the run's parameter groups in order
  (``engine.param_groups``: matrices, then norms and biases), :func:`optimizer_order`.
* ZeRO 1–2: each rank's ``zero_pp_rank_<r>_mp_rank_00_optim_states.pt`` holds, per group,
  its slice of the group's flat fp32 state; the slices concatenated in rank order, less the
  group's trailing padding, are the group's parameters flattened one after another in
  ``param_shapes`` order.

ZeRO 3 checkpoints and 16-bit ZeRO-0 runs (DeepSpeed's wrapper keeps its own layout) are
refused with a message that says so.
"""

from __future__ import annotations

import glob
import os

import torch

ADAM_KEYS = ("exp_avg", "exp_avg_sq")


def _load(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def optimizer_order(model: torch.nn.Module, weight_decay: float) -> list[tuple[str, torch.Size]]:
    """(name, shape) of ``model``'s parameters in the order of the run's optimizer (its state's indices)."""
    from megamix.training.engine import param_groups

    names = {id(p): n for n, p in model.named_parameters()}
    return [(names[id(p)], p.shape) for g in param_groups(model, weight_decay) for p in g["params"]]


def _zero0(model_states: dict, order: list[tuple[str, torch.Size]], where: str) -> dict[str, dict]:
    opt = model_states.get("optimizer")
    if not isinstance(opt, dict) or "state" not in opt or "param_groups" not in opt:
        raise ValueError(f"{where}: the optimizer state is not a torch Adam state_dict (a 16-bit ZeRO-0 run keeps "
                         "DeepSpeed's own layout, which is not read): use --fresh-optimizer")
    out = {}
    for index, (name, shape) in enumerate(order):
        state = opt["state"].get(index)
        if state is None:
            raise ValueError(f"{where}: no optimizer state for {name} (the optimizer never stepped?)")
        out[name] = {"step": float(state["step"]), **{k: state[k].float().reshape(shape) for k in ADAM_KEYS}}
    return out


def _zero12(model_states: dict, files: list[str], where: str) -> dict[str, dict]:
    parts = [_load(f)["optimizer_state_dict"] for f in files]
    out = {}
    for g, group in enumerate(model_states["param_shapes"]):
        states = [p["base_optimizer_state"]["state"][g] for p in parts]
        flat = {k: torch.cat([s[k].float().reshape(-1) for s in states]) for k in ADAM_KEYS}
        used = sum(torch.Size(shape).numel() for shape in group.values())
        pad = int(parts[-1]["group_paddings"][g])
        if flat["exp_avg"].numel() - pad != used:
            raise ValueError(f"{where}: group {g} holds {flat['exp_avg'].numel() - pad} state values for {used} "
                             "parameter values (checkpoint layout not understood)")
        offset = 0
        for name, shape in group.items():
            n = torch.Size(shape).numel()
            out[name] = {"step": float(states[0]["step"]),
                         **{k: flat[k][offset:offset + n].reshape(shape).clone() for k in ADAM_KEYS}}
            offset += n
    return out


def load_adam_state(load_dir: str, tag: str, order: list[tuple[str, torch.Size]]) -> dict[str, dict]:
    """{parameter name: {"step", "exp_avg", "exp_avg_sq"}} of checkpoint ``tag`` in ``load_dir`` (fp32, CPU).

    ``order`` is :func:`optimizer_order` of the run's model (read for ZeRO-0 checkpoints).
    """
    where = os.path.join(load_dir, tag)
    if glob.glob(os.path.join(where, "*zero_pp_rank_*_model_states.pt")):
        raise ValueError(f"{where}: a ZeRO-3 checkpoint; its partitioned optimizer state is not read: "
                         "use --fresh-optimizer")
    model_states = _load(os.path.join(where, "mp_rank_00_model_states.pt"))
    files = sorted(glob.glob(os.path.join(where, "zero_pp_rank_*_mp_rank_00_optim_states.pt")),
                   key=lambda f: int(os.path.basename(f).split("_")[3]))
    if files:
        return _zero12(model_states, files, where)
    return _zero0(model_states, order, where)


def seed_adam(optimizer: torch.optim.Optimizer, named_params: dict[str, torch.nn.Parameter],
              state: dict[str, dict]) -> None:
    """Give a fresh torch Adam/AdamW over ``named_params`` the moments and step count in ``state``."""
    missing = sorted(set(named_params) - set(state))
    if missing:
        raise ValueError(f"the checkpoint's optimizer state lacks {missing[:5]}: use --fresh-optimizer")
    for name, p in named_params.items():
        s = state[name]
        optimizer.state[p] = {"step": torch.tensor(s["step"]),
                              **{k: s[k].to(p.device, p.dtype).clone() for k in ADAM_KEYS}}
