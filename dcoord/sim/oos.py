"""Out-of-sample tuning: pick parameters on one delay profile, score them on others.

Tuning and scoring on the same trace flatters every scheme (the parameters fit that trace's noise) and the
most flexible ones most. Here every (scheme, close rule) policy is tuned on a *tune* source (probe-then-pick:
every parameter tuple, fastest kept) and the chosen parameters are then simulated on *evaluation* sources it
never saw: the rest of the same trace (``holdout_split``: rotations of the held-out rows, so the spread says
how much the result depends on where the run starts) or other probes.

Close rules (``RULES``) apply to both kinds of code:
- ``earliest``: plain codes close at the first decodable arrival (the coordinator's default); sequential
  codes at the first arrival whose late set fits the (B, W, lambda) model (``coding.close: earliest``).
- ``straggler-rule``: the SGC paper's rule for every scheme: wait (1+mu) * fastest, wait for all when the
  late set is not tolerated.
Runtimes are reported per job (seconds), so sources of different lengths compare.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from dcoord.coding.registry import make_scheme
from dcoord.errors import ConfigError
from dcoord.sim.config import SimulateConfig
from dcoord.sim.engine import DelaySource, TraceDelays, simulate
from dcoord.sim.tune import Choice, best_per_scheme, tune_source

RULES = ("earliest", "straggler-rule")


def paper_schemes() -> tuple[str, ...]:
    """The SGC paper's comparison (GC: any s stragglers): the registered schemes that declare ``paper``."""
    from dcoord.coding.registry import registered_schemes

    return tuple(name for name, spec in registered_schemes().items() if spec.paper)


@dataclass(frozen=True)
class EvalSource:
    """A delay source to score on, and how many jobs to run on it."""

    source: DelaySource
    jobs: int
    label: str = ""


def sim_config(rule: str, jobs: int, mu: float = 1.0, load_model: str = "actual", wait: str = "all") -> SimulateConfig:
    """The simulator settings of one close rule (see the module docstring)."""
    if rule not in RULES:
        raise ConfigError(f"close rule must be one of {', '.join(RULES)} (got {rule!r})")
    return SimulateConfig(jobs=jobs, mu=mu, wait=wait, load_model=load_model,  # type: ignore[arg-type]
                          plain_close="decodable" if rule == "earliest" else "straggler-rule", close=rule)


@dataclass
class Scored:
    """One policy: parameters tuned on the tune source, seconds per job there and on every evaluation source."""

    scheme: str
    rule: str
    choice: Choice
    tune_per_job_s: float
    eval_per_job_s: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return float(np.mean(self.eval_per_job_s))

    @property
    def std(self) -> float:
        return float(np.std(self.eval_per_job_s))

    def to_dict(self) -> dict:
        v = np.asarray(self.eval_per_job_s)
        return {"scheme": self.scheme, "rule": self.rule, "params": dict(self.choice.params),
                "load": self.choice.load, "delay": self.choice.delay, "tune_per_job_s": self.tune_per_job_s,
                "eval_per_job_s_mean": float(v.mean()), "eval_per_job_s_std": float(v.std()),
                "eval_per_job_s_min": float(v.min()), "eval_per_job_s_max": float(v.max()),
                "eval_per_job_s": v.tolist()}


def tune_policies(n: int, tune: EvalSource, max_delay: int, *, schemes: Iterable[str] | None = None,
                  rules: Iterable[str] = RULES, mu: float = 1.0, load_model: str = "actual", wait: str = "all",
                  lambda_grid: list[int] | None = None, max_window: int = 10) -> dict[tuple[str, str], Scored]:
    """Best parameters of every (scheme, rule) on the tune source (no evaluation yet)."""
    out: dict[tuple[str, str], Scored] = {}
    for rule in rules:
        cfg = sim_config(rule, tune.jobs, mu, load_model, wait)
        choices = tune_source(n, tune.source, tune.jobs, max_delay, mu=mu, wait=wait, plain_close=cfg.plain_close,
                              close=cfg.close, load_model=load_model,
                              schemes=None if schemes is None else list(schemes), lambda_grid=lambda_grid,
                              max_window=max_window)
        for name, c in best_per_scheme(choices).items():
            out[(name, rule)] = Scored(name, rule, c, c.runtime_s / tune.jobs)
    return out


def evaluate(n: int, policies: dict[tuple[str, str], Scored], evals: Sequence[EvalSource], *, mu: float = 1.0,
             load_model: str = "actual", wait: str = "all") -> dict[tuple[str, str], Scored]:
    """Simulate every policy's tuned parameters on every evaluation source (appends per-job seconds)."""
    for (name, rule), sc in policies.items():
        for ev in evals:
            scheme = make_scheme(name, n, jobs=ev.jobs, **sc.choice.kwargs)
            res = simulate(scheme, ev.source, sim_config(rule, ev.jobs, mu, load_model, wait))
            sc.eval_per_job_s.append(res.runtime_s / ev.jobs)
    return policies


def recommend(policies: dict[tuple[str, str], Scored], schemes: Iterable[str] | None = None,
              rules: Iterable[str] | None = None) -> Scored:
    """The policy with the fastest TUNE runtime (what a user picks before seeing the evaluation data)."""
    pool = [p for (s, r), p in policies.items() if (schemes is None or s in schemes) and (rules is None or r in rules)]
    if not pool:
        raise ConfigError("no policy to recommend from")
    return min(pool, key=lambda p: (p.tune_per_job_s, p.choice.load))


def holdout_split(d0: np.ndarray, n: int, base_comp: float, holdout: float, max_delay: int,
                  jobs: int | None = None, name: str = "trace") -> tuple[EvalSource, list[EvalSource]]:
    """Tune on the first (1 - holdout) of the rows, evaluate on every rotation of the rest.

    Each part runs ``rows - max_delay`` jobs (capped by ``jobs``) so a run never reuses a row; the rotations
    of the held-out rows are the evaluation samples (their spread: where the run starts).
    """
    rows = d0.shape[0]
    if not 0.0 < holdout < 1.0:
        raise ConfigError(f"--holdout must be a fraction in (0, 1) (got {holdout})")
    k = int(round(rows * (1.0 - holdout)))
    if k < max_delay + 1 or rows - k < max_delay + 1:
        raise ConfigError(f"{name}: {rows} rows cannot be split {1 - holdout:.2f}/{holdout:.2f} with max delay "
                         f"{max_delay} (each part needs more than {max_delay} rows); use another --holdout, a "
                         "smaller --max-delay, or --eval with a second profile")
    cap = jobs if jobs is not None else rows
    tune_rows, rest = d0[:k], d0[k:]
    tune = EvalSource(TraceDelays(tune_rows, n, base_comp, name=f"{name} rows 0..{k - 1}"),
                      max(1, min(cap, k - max_delay)), f"rows 0..{k - 1}")
    ej = max(1, min(cap, rest.shape[0] - max_delay))
    evals = [EvalSource(TraceDelays(np.roll(rest, -o, axis=0), n, base_comp, name=f"{name} rows {k}.. from +{o}"),
                        ej, f"rows {k}..{rows - 1} from +{o}") for o in range(rest.shape[0])]
    return tune, evals


def whole(d0: np.ndarray, n: int, base_comp: float, max_delay: int, jobs: int | None = None,
          name: str = "trace") -> EvalSource:
    """A whole profile as one source: rows - max_delay jobs (capped by ``jobs``)."""
    cap = jobs if jobs is not None else d0.shape[0]
    return EvalSource(TraceDelays(d0, n, base_comp, name=name), max(1, min(cap, d0.shape[0] - max_delay)), name)


def tune_out_of_sample(n: int, tune: EvalSource, evals: Sequence[EvalSource], max_delay: int, *,
                       schemes: Iterable[str] | None = None, rules: Iterable[str] = RULES, mu: float = 1.0,
                       load_model: str = "actual", wait: str = "all", lambda_grid: list[int] | None = None,
                       max_window: int = 10) -> dict:
    """Tune every policy on ``tune``, score on ``evals``; the table, the recommendation and the paper's pick."""
    pol = tune_policies(n, tune, max_delay, schemes=schemes, rules=rules, mu=mu, load_model=load_model, wait=wait,
                        lambda_grid=lambda_grid, max_window=max_window)
    evaluate(n, pol, evals, mu=mu, load_model=load_model, wait=wait)
    rows = sorted(pol.values(), key=lambda p: (p.mean, p.scheme, p.rule))
    rec = recommend(pol)
    out = {"tuned_on": tune.label, "tune_jobs": tune.jobs, "evaluated_on": [e.label for e in evals],
           "eval_jobs": [e.jobs for e in evals], "load_model": load_model, "mu": mu,
           "policies": [p.to_dict() for p in rows], "recommended": rec.to_dict()}
    paper_set = paper_schemes()
    if "straggler-rule" in set(rules) and any(s in paper_set for s, _ in pol):
        paper = recommend(pol, paper_set, ["straggler-rule"])
        out["paper_pick"] = paper.to_dict()
        out["recommended_over_paper_pick"] = rec.mean / paper.mean
    return out
