"""How much a code's decoding amplifies the rounding of worker messages (pure math; the one printer is
``print_precision``, the CLI's hook).

Workers combine in float64 and round their message once into ``coding.payload_dtype``; the coordinator
decodes g = sum a_i f_i in float64. The decoded gradient's error is then the messages' rounding weighted
by the decoding coefficients. ``amplification`` is the worst relative decode error over survivor sets
(all of them when few, else cyclic windows of stragglers plus random sets) divided by the worst relative
error of the plain uncoded sum of n rounded part gradients (at least the dtype's unit roundoff), both measured on the same seeded random part
gradients, in the same dtype.

Tolerance (documented in docs/gradient-coding.md): a run is flagged when amplification x eps(dtype) exceeds
max(DECODE_REL_TOL, 4 eps(dtype)), i.e. when decoding costs more than 4x the dtype's own rounding of an
uncoded sum and more than 1e-5 relative. float64 is never flagged in practice; float32 is flagged above an
amplification of ~168 (1e-5 / 2^-24); bfloat16 above 4.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from dcoord.dtypes import UNIT_ROUNDOFF

#: relative decode error below which no code is flagged, whatever its amplification
DECODE_REL_TOL = 1e-5
#: a code may cost this many times the dtype's own rounding before it is flagged
MAX_AMPLIFICATION = 4.0

#: survivor sets a code is measured on: all of them when C(n, s) <= MAX_SETS, else MAX_SETS (cyclic windows of
#: stragglers, then seeded random sets). ``dcoord run``/``simulate`` and bench/decode_precision.py (the docs'
#: table) all measure with it, so they print the same figure for the same (scheme, n, s, dtype)
MAX_SETS = 64
#: the seed of the measurement (survivor sets and test gradients): a figure is a property of the code, not
#: of the job, and is the same on every run
SEED = 0

DTYPE_EPS = UNIT_ROUNDOFF  # unit roundoff, by payload dtype name

__all__ = ["Precision", "measure", "measure_dtypes", "inner_code_of", "precision_for", "DECODE_REL_TOL", "DTYPE_EPS"]


def round_to(x: np.ndarray, dtype: str) -> np.ndarray:
    """``x`` rounded once to ``dtype`` and widened back to float64 (what the coordinator decodes)."""
    if dtype == "float64":
        return np.asarray(x, dtype=np.float64)
    if dtype == "float32":
        return np.asarray(x, dtype=np.float64).astype(np.float32).astype(np.float64)
    if dtype == "bfloat16":
        m, e = np.frexp(np.asarray(x, dtype=np.float64))
        return np.ldexp(np.rint(np.ldexp(m, 8)), e - 8)
    raise ValueError(f"unknown dtype {dtype!r} (float64, float32 or bfloat16)")


@dataclass(frozen=True)
class Precision:
    """A code's measured decode precision in one dtype."""

    scheme: str
    n: int
    s: int
    dtype: str
    worst_rel_error: float  # worst over survivor sets, relative to the exact sum
    uncoded_rel_error: float  # the plain uncoded sum of n rounded parts, same gradients and dtype
    sets: int
    exhaustive: bool

    @property
    def amplification(self) -> float:
        return self.worst_rel_error / max(self.uncoded_rel_error, DTYPE_EPS[self.dtype])

    @property
    def flagged(self) -> bool:
        eps = DTYPE_EPS[self.dtype]
        return self.amplification * eps > max(DECODE_REL_TOL, MAX_AMPLIFICATION * eps)

    def line(self) -> str:
        how = "all" if self.exhaustive else "sampled"
        return (f"decode precision ({self.scheme}, n={self.n}, s={self.s}, {self.dtype} payloads): amplification "
                f"{self.amplification:.3g}, worst relative error {self.worst_rel_error:.2e} over {self.sets} "
                f"{how} survivor sets (uncoded sum {self.uncoded_rel_error:.2e})")

    def warning(self) -> str | None:
        """A one-line advice when flagged, naming a better scheme or dtype; None otherwise."""
        if not self.flagged:
            return None
        fix = []
        if _spec(self.scheme) is not None and _spec(self.scheme).real_coefficients:
            fix.append("coding.scheme: gc-binary (0/1 coefficients, amplification <= ~1)")
        if self.dtype != "float64":
            wider = "float32" if self.dtype == "bfloat16" else "float64"
            fix.append(f"coding.payload_dtype: {wider}")
        return (f"warning: decoding amplifies {self.dtype} rounding {self.amplification:.3g}x (relative error "
                f"{self.worst_rel_error:.1e}, tolerance max({DECODE_REL_TOL:g}, {MAX_AMPLIFICATION:g} x eps)); "
                f"use {' or '.join(fix) or 'a wider payload dtype'}")


def _survivor_sets(n: int, s: int, max_sets: int, rng: np.random.Generator) -> tuple[list[tuple[int, ...]], bool]:
    if s == 0:
        return [tuple(range(n))], True
    if math.comb(n, s) <= max_sets:
        return [tuple(sorted(set(range(n)) - set(st))) for st in itertools.combinations(range(n), s)], True
    out = set()
    step = max(1, n // max(1, max_sets // 2))
    for o in range(0, n, step):  # s consecutive stragglers: the usual worst case of cyclic codes
        out.add(tuple(sorted(set(range(n)) - {(o + k) % n for k in range(s)})))
        if len(out) >= max_sets // 2:
            break
    while len(out) < max_sets:
        st = set(rng.choice(n, s, replace=False).tolist())
        out.add(tuple(w for w in range(n) if w not in st))
    return sorted(out), False


def _exact_sum(parts: np.ndarray) -> np.ndarray:
    """Column sums correctly rounded (math.fsum), so that float64 payloads are measured too."""
    return np.array([math.fsum(col) for col in parts.T])


def _uncoded_error(n: int, dtype: str, draws: int, dim: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    worst = 0.0
    for _ in range(draws):
        parts = rng.standard_normal((n, dim)) / n
        exact = _exact_sum(parts)
        got = round_to(parts, dtype).sum(axis=0)
        worst = max(worst, float(np.max(np.abs(got - exact)) / np.max(np.abs(exact))))
    return worst


def _spec(name: str):
    """The registered spec of ``name`` (it says how its precision is measured), or None."""
    from dcoord.coding.registry import registered_schemes

    return registered_schemes().get(name)


def inner_code_of(name: str, n: int, s: int = 0, B: int | None = None, W: int | None = None,
                  lam: int | None = None) -> tuple[str, int]:
    """(plain code, s) whose decoding a scheme's precision is, as its spec declares (``SchemeSpec.precision``):
    sequential codes decode their inner cyclic or fractional-repetition code (their uncoded chunks add
    nothing), plain codes themselves."""
    from dcoord.coding.base import SchemeParams

    spec = _spec(name)
    if spec is None or spec.precision is None:
        return name, s
    return spec.precision(n, SchemeParams(s=s, B=B, W=W, lam=lam))


@lru_cache(maxsize=128)
def measure(name: str, n: int, s: int, dtype: str, max_sets: int = MAX_SETS, draws: int = 2, dim: int = 16,
            seed: int = SEED, construction: str = "stable") -> Precision:
    """Decode precision of plain code ``name`` (or ``"inner"``: the sequential codes' inner code) by trial.

    Cached: the coordinator and ``dcoord simulate`` ask once per configuration. Cost: one float64 solve per
    survivor set for gc-cyclic (none for the binary codes).
    """
    return measure_dtypes(name, n, s, (dtype,), max_sets, draws, dim, seed, construction)[dtype]


def measure_dtypes(name: str, n: int, s: int, dtypes: tuple[str, ...], max_sets: int = MAX_SETS, draws: int = 2,
                   dim: int = 16, seed: int = SEED, construction: str = "stable") -> dict[str, Precision]:
    """``measure`` for several dtypes at once (each survivor set is decoded once).

    The survivor sets and the test gradients come from two independent streams of ``seed``: the gradients do
    not depend on how many sets were sampled, so a sample of sets never reports a worse figure than all of
    them (the docs' table once came from 64 sets and the CLI's line from 32, on different gradients).
    """
    from dcoord.coding import gc
    from dcoord.coding.registry import make_scheme
    from dcoord.coding.sgc import InnerCode

    set_rng, grad_rng = (np.random.default_rng(q) for q in np.random.SeedSequence(seed).spawn(2))
    if name == "inner":
        code = InnerCode(n, s, "tandon" if construction == "tandon" else "auto")
        rows = [code.row(i) for i in range(n)]
        frac = np.full(n, 1.0 / n)

        def coefficients(F):
            return code.decode(F)
    else:
        sch = gc.GCCyclic(n, s, construction=construction) if name == gc.GCCyclic.name else make_scheme(name, n, s=s)
        tasks = sch.tasks(0)
        rows = [(tasks[i][0].parts, tasks[i][0].coeffs) for i in range(n)]
        frac = sch.part_fractions()

        def coefficients(F):
            sch.close_round(0, frozenset(F))
            return {ref.worker: c for ref, c in sch.decode(0).items()}
    if name == gc.Uncoded.name:
        s = 0
    sets, exhaustive = _survivor_sets(n, s, max_sets, set_rng)
    E = np.zeros((n, len(frac)))
    for i, (parts, coeffs) in enumerate(rows):
        E[i, list(parts)] = coeffs
    grads = [grad_rng.standard_normal((len(frac), dim)) * frac[:, None] for _ in range(draws)]
    exact = [_exact_sum(g) for g in grads]
    msgs = {dt: [round_to(E @ g, dt) for g in grads] for dt in dtypes}
    worst = dict.fromkeys(dtypes, 0.0)
    for F in sets:
        a = coefficients(F)
        idx = np.fromiter(a.keys(), dtype=np.int64)
        w = np.fromiter(a.values(), dtype=np.float64)
        for dt in dtypes:
            for ex, m in zip(exact, msgs[dt]):
                err = float(np.max(np.abs(w @ m[idx] - ex)) / np.max(np.abs(ex)))
                worst[dt] = max(worst[dt], err)
    return {dt: Precision(name, n, s, dt, worst[dt], _uncoded_error(n, dt, max(draws, 4), dim, seed + 1),
                          len(sets), exhaustive) for dt in dtypes}


def precision_for(coding: dict, n: int) -> Precision | None:
    """The precision of a job's coding config (``CodingConfig.model_dump(by_alias=True)``); None when the
    scheme has no exact decoding to measure (ignore-stragglers is biased by design) or is not a built-in one
    (a user-registered scheme's decoding is its own business)."""
    name = coding.get("scheme", "uncoded")
    spec = _spec(name)
    if spec is None or spec.precision is None:
        return None
    plain, s = inner_code_of(name, n, coding.get("stragglers") or 0, coding.get("B"), coding.get("W"),
                             coding.get("lambda"))
    p = measure(plain, n, s, coding.get("payload_dtype", "float64"))
    return Precision(name, n, s, p.dtype, p.worst_rel_error, p.uncoded_rel_error, p.sets, p.exhaustive)


def print_precision(cfg, console) -> Precision | None:
    """Print a coded job's decode precision (and a warning when flagged) on a rich console; the CLI's hook."""
    if getattr(cfg, "mode", "coded") != "coded":
        return None
    p = precision_for(cfg.coding.model_dump(by_alias=True), cfg.workers)
    if p is None:
        return None
    console.print(p.line(), highlight=False)
    if p.warning():
        console.print(f"[bold yellow]{p.warning()}[/]", highlight=False)
    return p
