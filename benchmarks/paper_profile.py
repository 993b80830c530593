"""The ``--profile paper`` recipe of benchmarks/mixing_quality.py and the ``--setting`` parser.

The ratios of the authors' released scripts (MIXING.md, "The paper's protocol") carried to
CPU scale: T = 20 rounds of U = N // 20 steps, per-K one-hot factor f, step size η and EMA
γ, reset from the start mixture each round, normalised A, probes from step 0 inside a
warm-up of 10 % of N, cosine to 0.2 × the peak LR. k and s are chosen so that the probe
share k·K·s / U of a round is the paper's (K = 2: 12.8 %, K = 3: 28.8 %). The released
7-domain script has no faithful reading (MIXING.md), so K >= 4 runs megamix's own
best-measured configuration and says so.
"""

from __future__ import annotations

from dataclasses import dataclass

ROUNDS = 20
"""T: rounds per run (the paper's K = 2, 3 scripts: 5000 steps, U = 250)."""


@dataclass(frozen=True)
class AioliRecipe:
    """Aioli's flags for one number of domains K at one round length U, and where they come from."""

    k_domains: int
    round_length: int
    lp_rounds: int
    lp_steps: int
    one_hot_factor: float
    eta: float
    ema: float | None
    update: str
    prior_steps: int
    source: str

    @property
    def probe_share(self) -> float:
        """k·K·s / U: the share of a round's steps spent on probes."""
        return self.lp_rounds * self.k_domains * self.lp_steps / self.round_length

    def flags(self) -> list[str]:
        """pretrain_gpt_mix.py flags of this recipe."""
        out = ["--mixing-method", "aioli", "--aioli-lp-rounds", str(self.lp_rounds),
               "--aioli-lp-steps", str(self.lp_steps), "--aioli-one-hot-factor", str(self.one_hot_factor),
               "--aioli-eta", str(self.eta), "--aioli-update", self.update,
               "--aioli-prior-steps", str(self.prior_steps)]
        return out + (["--aioli-ema", str(self.ema)] if self.ema is not None else [])

    def describe(self) -> str:
        """One line: the recipe and its origin."""
        ema = "off" if self.ema is None else f"{self.ema:g}"
        return (f"K={self.k_domains}: U={self.round_length}, k={self.lp_rounds}, s={self.lp_steps} "
                f"(probe share {self.probe_share:.1%}), f={self.one_hot_factor:g}, eta={self.eta:g}, EMA {ema}, "
                f"{self.update} update, normalised A, {self.prior_steps} warm-up steps before the first "
                f"probe — {self.source}")


# (f, eta, ema, k, s) of the released scripts (U = 250), per K
_PAPER = {2: (0.625, 0.2, 0.1, 4, 4), 3: (0.5, 0.1, 0.5, 4, 6)}
_PAPER_U = 250


def choose_probes(k_domains: int, round_length: int, share: float, max_sweeps: int = 4,
                  max_steps: int | None = None) -> tuple[int, int]:
    """(k, s) whose probe share k·K·s / U is nearest to ``share``, leaving >= 1 training step per round.

    k <= ``max_sweeps`` and s <= ``max_steps`` (the paper's, so a probe is never longer than
    theirs); ties go to the longer probe (larger s): a probe of one step measures mostly noise.
    """
    best = None
    for k in range(1, max_sweeps + 1):
        for s in range(1, min(round_length, max_steps or round_length) + 1):
            total = k * k_domains * s
            if total >= round_length:
                break
            key = (round(abs(total / round_length - share), 12), -s)
            if best is None or key < best[0]:
                best = (key, (k, s))
    if best is None:
        raise ValueError(f"round length U={round_length} is too short for one probe of each of {k_domains} domains "
                         f"plus a training step; raise --train-iters (U = N // {ROUNDS})")
    return best[1]


def aioli_recipe(k_domains: int, round_length: int, own: bool = False) -> AioliRecipe:
    """The paper profile's Aioli for K domains at round length U (``own``: megamix's K >= 4 recipe at any K)."""
    if k_domains in _PAPER and not own:
        f, eta, ema, k0, s0 = _PAPER[k_domains]
        share = k0 * k_domains * s0 / _PAPER_U
        k, s = choose_probes(k_domains, round_length, share, max_sweeps=k0, max_steps=s0)
        return AioliRecipe(k_domains, round_length, k, s, f, eta, ema, "reset", 0,
                           f"the released K={k_domains} script's ratios (probe share {share:.1%})")
    if 2 * k_domains >= round_length:
        raise ValueError(f"round length U={round_length} is too short for {k_domains} probes of 2 steps; "
                         f"raise --train-iters (U = N // {ROUNDS})")
    f = _PAPER[k_domains][0] if k_domains in _PAPER else 0.5  # f must exceed 1/K (the gradient rows ignore it)
    return AioliRecipe(k_domains, round_length, 1, 2, f, 1.0, None, "cumulative", round_length,
                       "megamix's own configuration, not the paper's (at K>=4, where no faithful anchor exists, and in "
                       "the '-own' rows): the best of "
                       "benchmarks/aioli_ablation.py on all-7 (s=2, f=0.5 for K>=4, one warm-up round)")


def parse_setting(text: str, builtin: dict[str, list[str]]) -> tuple[str, list[str]]:
    """``NAME=d1,d2,...`` (or a built-in setting's NAME) → (name, domains); errors name --setting."""
    if "=" not in text:
        if text in builtin:
            return text, list(builtin[text])
        raise ValueError(f"--setting {text!r}: expected NAME=DOMAIN1,DOMAIN2,... or a built-in name "
                         f"({', '.join(builtin)})")
    name, _, rest = text.partition("=")
    domains = [d.strip() for d in rest.split(",") if d.strip()]
    if not name or any(c in name for c in "/ \\") or name.startswith("."):
        raise ValueError(f"--setting {text!r}: the name {name!r} must be non-empty, without '/', '\\' or spaces, "
                         "and not start with '.' (it names the run directory)")
    if len(domains) < 2:
        raise ValueError(f"--setting {text!r}: a setting needs at least 2 domains, got {domains}")
    if len(set(domains)) != len(domains):
        raise ValueError(f"--setting {text!r}: a domain is listed twice")
    return name, domains


def parse_settings(values: list[str] | None, builtin: dict[str, list[str]]) -> dict[str, list[str]]:
    """Every ``--setting`` in order (default: all built-in settings); duplicate names are an error."""
    if not values:
        return {k: list(v) for k, v in builtin.items()}
    out: dict[str, list[str]] = {}
    for text in values:
        name, domains = parse_setting(text, builtin)
        if name in out:
            raise ValueError(f"--setting: the name {name!r} is given twice")
        out[name] = domains
    return out
