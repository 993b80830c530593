"""What identifies and describes a benchmark run: its configuration check, host and mean mixture."""

from __future__ import annotations

import os
import platform

from megamix.fileio import read_json, read_jsonl

RUN_NEUTRAL = ("training.save", "training.load", "data.data_cache_path", "logging")
"""Config keys a finished run may differ in and still be this benchmark's run (where it lies, what it logs)."""


def run_config(cmd_flags: list[str], domains: list[str]) -> dict:
    """The config.json that ``pretrain_gpt_mix.py cmd_flags`` would write (``to_dict`` is already JSON's form)."""
    from megamix.training.arguments import config_from_args, parse_args, tokenizer_config_from_args

    args = parse_args(cmd_flags)
    return {**config_from_args(args, tokenizer_config_from_args(args)).to_dict(), "domains": domains}


def _stored_config(path: str) -> dict:
    """A run's config.json as this megamix reads it back: options added since it was written take
    their defaults (the behaviour the run had), as they do on resume."""
    from megamix.training.config import RunConfig

    had = read_json(path, path)
    try:
        cfg = RunConfig.from_dict({k: v for k, v in had.items() if k != "domains"})
    except (TypeError, ValueError) as e:
        raise SystemExit(f"{path}: cannot read this run's configuration ({e}); give another --out") from None
    return {**cfg.to_dict(), "domains": had.get("domains")}


def config_differences(had: dict, want: dict, prefix: str = "") -> list[str]:
    """``key: had -> want`` for every leaf where two run configs differ, except the RUN_NEUTRAL keys."""
    out = []
    for key in sorted(set(had) | set(want)):
        path = f"{prefix}{key}"
        if path in RUN_NEUTRAL:
            continue
        a, b = had.get(key, "(absent)"), want.get(key, "(absent)")
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, path + ".")
        elif a != b:
            out.append(f"{path}: {a!r} -> {b!r}")
    return out


def without_unread(cfg: dict) -> dict:
    """The config less what its run never read: a probe Aioli run takes no gradient estimates, so its
    ``--aioli-grad-*`` options (whose defaults have changed) do not tell two such runs apart."""
    options = (cfg.get("mixing") or {}).get("options")
    if not isinstance(options, dict) or options.get("estimator") != "probes":
        return cfg
    options = {k: v for k, v in options.items() if not k.startswith("grad_")}
    return {**cfg, "mixing": {**cfg["mixing"], "options": options}}


def check_same_run(run_dir: str, domains: list[str], cmd_flags: list[str]) -> None:
    """A run directory is resumed or reused only when it was started with this run's configuration.

    Finished runs are skipped, so without this a changed flag (``--grad-interval``, the
    domains of a setting, the recipe) would silently report the older run as the new one.
    """
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        return
    diffs = config_differences(without_unread(_stored_config(path)), without_unread(run_config(cmd_flags, domains)))
    if diffs:
        shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
        raise SystemExit(f"{run_dir} was trained with another configuration ({shown}); give the setting "
                         "another name or another --out, or remove that run directory")


def host() -> str:
    """The CPU model and torch version a run trained on (recorded beside its wall time).

    Runs are bit-reproducible on one machine; on another CPU a last-bit difference in a
    floating-point kernel can send a run whose mixture moves freely down another path.
    """
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__}"


def mean_mixture(run_dir: str) -> dict[str, float] | None:
    """The step-weighted mean of the proportions a run trained at (probe phases included), from its
    metrics.jsonl (a resumed run truncates the lines after its checkpoint, so each step counts once)."""
    from megamix.mixing.base import TimeAverage

    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return None
    domains, average = [], None
    for event in read_jsonl(path):
        if event.get("event") == "phase" and event["steps"] > 0:
            if average is None:
                domains, average = list(event["weights"]), TimeAverage(len(event["weights"]))
            average.add([event["weights"][d] for d in domains], event["steps"])
    return None if average is None else dict(zip(domains, (average.total / average.steps).tolist()))
