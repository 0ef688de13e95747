"""How much a code's decoding amplifies the rounding of worker messages, and the guard that keeps a run within
the precision it promises (pure math, no I/O beyond reading the package's stored table; the one printer is
``print_precision``, the CLI's hook).

Workers combine in float64 and round their message once into ``coding.payload_dtype``; the coordinator
decodes g = sum a_i f_i in float64. The decoded gradient's error is then the messages' rounding weighted
by the decoding coefficients, and a few rare survivor sets make it far worse than a sample shows. So the
figure a run goes by is the *searched* worst case (dcoord.coding.worstcase: every set when few, else every
window of s stragglers, random sets and an adversarial local search), stored for the common sizes in
``data/worst_case.json`` by scripts/worst_case.py and searched within ``SEARCH_BUDGET_S`` otherwise.

The promise (``promised_bound``): relative decode error <= max(1e-5, 4 eps(dtype)). ``check_decode_precision``
refuses a job whose searched worst case breaks it unless ``coding.precision: accept``; summary.json then
records the bound. ``measure``/``measure_dtypes`` remain the quick sampled measurement (a lower estimate)
the simulator and older benchmarks use.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from dcoord.coding.worstcase import code_rows, exact_sum, round_to
from dcoord.dtypes import UNIT_ROUNDOFF

if TYPE_CHECKING:
    from dcoord.coding.worstcase import WorstCase

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

__all__ = ["round_to", "Precision", "measure", "measure_dtypes", "inner_code_of", "precision_for", "DECODE_REL_TOL", "DTYPE_EPS",
           "DecodeBound", "decode_bound", "decode_guard", "check_decode_precision", "promised_bound", "worst_case",
           "stored_worst_cases", "markdown_table", "precision_record"]


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
        how = f"all {self.sets}" if self.exhaustive else f"{self.sets} searched"
        return (f"decode precision ({self.scheme}, n={self.n}, s={self.s}, {self.dtype} payloads): amplification "
                f"{self.amplification:.3g}, worst relative error {self.worst_rel_error:.2e} over {how} "
                f"survivor sets (uncoded sum {self.uncoded_rel_error:.2e})")

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


def _uncoded_error(n: int, dtype: str, draws: int, dim: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    worst = 0.0
    for _ in range(draws):
        parts = rng.standard_normal((n, dim)) / n
        exact = exact_sum(parts)
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

    set_rng, grad_rng = (np.random.default_rng(q) for q in np.random.SeedSequence(seed).spawn(2))
    rows, frac, coefficients = code_rows(name, n, s, construction)
    if name == gc.Uncoded.name:
        s = 0
    sets, exhaustive = _survivor_sets(n, s, max_sets, set_rng)
    E = np.zeros((n, len(frac)))
    for i, (parts, coeffs) in enumerate(rows):
        E[i, list(parts)] = coeffs
    grads = [grad_rng.standard_normal((len(frac), dim)) * frac[:, None] for _ in range(draws)]
    exact = [exact_sum(g) for g in grads]
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


# -- the searched worst case (dcoord.coding.worstcase), stored for the common sizes -------------------------
#: seconds the runtime searches a (code, n, s) that the stored table lacks (the figure is then a lower bound)
SEARCH_BUDGET_S = 5.0
#: the stored table, written by scripts/worst_case.py
WORST_CASE_FILE = "data/worst_case.json"


@lru_cache(maxsize=1)
def stored_worst_cases() -> dict[tuple[str, int, int], WorstCase]:
    """The shipped worst cases by (plain code, n, s) (package data; empty if the file is missing)."""
    from importlib import resources

    from dcoord.coding.worstcase import WorstCase

    f = resources.files("dcoord.coding").joinpath(WORST_CASE_FILE)
    if not f.is_file():
        return {}
    import json

    entries = json.loads(f.read_text())["entries"]
    return {(e["scheme"], e["n"], e["s"]): WorstCase.from_dict({k: v for k, v in e.items() if k != "seconds"})
            for e in entries}


def _stored_key(name: str, n: int, s: int) -> tuple[str, int, int]:
    """The stored entry a plain code's decoding is: the sequential codes' inner code is fractional repetition
    when (s+1) | n, else the cyclic code (dcoord.coding.sgc.InnerCode ``auto``); uncoded has s = 0."""
    if name == "inner":
        name = "gc-fr" if s and n % (s + 1) == 0 else ("uncoded" if s == 0 else "gc-cyclic")
    if name == "uncoded":
        s = 0
    return name, n, s


@lru_cache(maxsize=256)
def worst_case(name: str, n: int, s: int, budget_s: float = SEARCH_BUDGET_S) -> WorstCase:
    """The worst case of plain code ``name`` at (n, s): the stored one when shipped, else a search cut at
    ``budget_s`` seconds (cached per process)."""
    from dcoord.coding.worstcase import search

    key = _stored_key(name, n, s)
    hit = stored_worst_cases().get(key)
    return hit if hit is not None else search(*key, budget_s=budget_s)


def promised_bound(dtype: str) -> float:
    """The relative decode error a run promises: max(1e-5, 4 eps(dtype)) (1e-5 for float32 and float64,
    about 7.8e-3 for bfloat16, whose own rounding of an uncoded sum is already ~1e-3)."""
    return max(DECODE_REL_TOL, MAX_AMPLIFICATION * DTYPE_EPS[dtype])


@dataclass(frozen=True)
class DecodeBound:
    """The searched worst relative decode error a job runs under, and the bound it is held to."""

    scheme: str
    n: int
    s: int
    code: str  # the plain code decoded (a sequential code's inner code)
    code_s: int
    dtype: str
    bound: float  # searched worst relative error (+ the payload-dtype sum's share when summed)
    promised: float
    summed_in_payload_dtype: bool
    source: str  # "stored" or "searched now"
    how: str

    @property
    def holds(self) -> bool:
        return self.bound <= self.promised

    def record(self, accepted: bool) -> dict:
        """The ``decode_precision`` section of summary.json."""
        return {"code": self.code, "n": self.n, "s": self.code_s, "payload_dtype": self.dtype,
                "worst_rel_error": self.bound, "promised": self.promised, "holds": self.holds,
                "accepted_by_config": accepted, "summed_in_payload_dtype": self.summed_in_payload_dtype,
                "source": self.source, "search": self.how}

    def refusal(self) -> str:
        """One line: what breaks the bound, the choices that hold, and the override."""
        inner = self.code != self.scheme
        what = f"{self.scheme} (inner code {self.code})" if inner else self.scheme
        ok = ["coding.payload_dtype: float64"] if self.dtype != "float64" else []
        ok += ["coding.scheme: gc-binary"]
        fits = [k for k in range(1, self.n) if self.n % (k + 1) == 0 and k >= self.code_s]
        if fits and inner:
            ok.append(f"B, W, lambda whose inner s has (s+1) dividing {self.n} (e.g. s={fits[0]}: exact 0/1 decoding)")
        elif fits:
            ok.append(f"coding.scheme: gc-fr (or gc-cyclic) with coding.stragglers: {fits[0]} ((s+1) divides {self.n})")
        summed = " summed in the payload dtype by the data plane," if self.summed_in_payload_dtype else ""
        return (f"coding.precision: {what} at n={self.n}, s={self.code_s} decodes {self.dtype} payloads{summed} "
                f"with relative error up to {self.bound:.1e} on its searched worst survivor set, above the "
                f"{self.promised:.0e} a run promises; use {', '.join(ok)}, or set coding.precision: accept to run "
                "under that bound (recorded in summary.json)")


def decode_guard(scheme: str, n: int, s: int, dtype: str, summed_in_payload_dtype: bool = False, *,
                 B: int | None = None, W: int | None = None, lam: int | None = None,
                 budget_s: float = SEARCH_BUDGET_S) -> DecodeBound | None:
    """The bound a job of ``scheme`` at (n, s) with ``dtype`` payloads decodes within; None when the scheme has
    no exact decoding to bound (ignore-stragglers, a user's scheme).

    ``summed_in_payload_dtype``: the data plane adds the n terms a_i f_i in the payload dtype (an all-reduce)
    instead of the coordinator in float64; that adds about n eps(dtype) max_i |a_i f_i| / |g|, taken from the
    searched ``sum_ratio``."""
    spec = _spec(scheme)
    if spec is None or spec.precision is None:
        return None
    code, cs = inner_code_of(scheme, n, s, B, W, lam)
    key = _stored_key(code, n, cs)
    wc = worst_case(*key, budget_s=budget_s)
    bound = wc.worst_rel_error[dtype]
    if summed_in_payload_dtype:
        bound += n * DTYPE_EPS[dtype] * wc.sum_ratio
    source = "stored" if key in stored_worst_cases() else "searched now"
    return DecodeBound(scheme, n, s, key[0], key[2], dtype, bound, promised_bound(dtype), summed_in_payload_dtype,
                       source, wc.how)


def decode_bound(scheme: str, n: int, s: int, dtype: str, summed_in_payload_dtype: bool = False, **params) -> float:
    """The searched worst relative decode error of ``scheme`` at (n, s) in ``dtype`` (0.0 when there is no
    exact decoding to bound); see ``decode_guard``."""
    b = decode_guard(scheme, n, s, dtype, summed_in_payload_dtype, **params)
    return 0.0 if b is None else b.bound


def check_decode_precision(cfg, summed_in_payload_dtype: bool = False) -> DecodeBound | None:
    """The guard every launch path runs (through ``choose_plane``) before a run directory is made: raise a
    one-line ConfigError when the job's searched worst decode error breaks the promised bound and the config
    does not say ``coding.precision: accept``; return the bound it runs under (None: nothing to bound).

    float64 payloads are checked against the stored table only (the worst amplification found anywhere is
    ~1e7, 1e-9 relative at float64: no search is worth its start-up time)."""
    b = _job_bound(cfg, summed_in_payload_dtype)
    if b is not None and not b.holds and getattr(cfg.coding, "precision", "check") != "accept":
        from dcoord.errors import ConfigError

        raise ConfigError(b.refusal())
    return b


def _job_bound(cfg, summed_in_payload_dtype: bool) -> DecodeBound | None:
    if getattr(cfg, "mode", "coded") != "coded":
        return None
    c = cfg.coding
    code, cs = inner_code_of(c.scheme, cfg.workers, c.stragglers or 0, c.B, c.W, c.lam)
    if c.payload_dtype == "float64" and _stored_key(code, cfg.workers, cs) not in stored_worst_cases():
        return None
    return decode_guard(c.scheme, cfg.workers, c.stragglers or 0, c.payload_dtype, summed_in_payload_dtype,
                        B=c.B, W=c.W, lam=c.lam)


def precision_record(cfg, summed_in_payload_dtype: bool = False) -> dict | None:
    """summary.json's ``decode_precision`` section: the bound the job ran under (None: nothing to bound)."""
    b = _job_bound(cfg, summed_in_payload_dtype)
    return None if b is None else b.record(accepted=getattr(cfg.coding, "precision", "check") == "accept")


def markdown_table(dtype: str = "float32") -> str:
    """The docs' precision table, from the stored worst cases: per (n, s), each code's searched worst
    relative decode error with ``dtype`` payloads, marked where it breaks the promised bound."""
    table = stored_worst_cases()
    codes = ("uncoded", "gc-fr", "gc-binary", "gc-cyclic")
    lim = promised_bound(dtype)
    head = ("| n | s | " + " | ".join(codes) + " | gc-cyclic, float64 | how gc-cyclic was searched |\n"
            + "|" + "---|" * (len(codes) + 4) + "\n")
    lines = []
    for n, s in sorted({(n, s) for (_, n, s) in table if s > 0}):
        cells = []
        for code in codes:
            wc = table.get(_stored_key(code, n, s))
            if wc is None:
                cells.append("n/a")
                continue
            e = wc.worst_rel_error[dtype]
            cells.append(f"{e:.1e}" + (" **over**" if e > lim else ""))
        cyc = table[("gc-cyclic", n, s)]
        cells.append(f"{cyc.worst_rel_error['float64']:.1e}")
        cells.append("every set" if cyc.exhaustive else "windows + random + local search")
        lines.append(f"| {n} | {s} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines)


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
    dtype = coding.get("payload_dtype", "float64")
    wc = worst_case(*_stored_key(plain, n, s))
    return Precision(name, n, s, dtype, wc.worst_rel_error[dtype], wc.uncoded_rel_error[dtype], wc.sets,
                     wc.exhaustive)


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
