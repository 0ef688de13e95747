"""Scheme names -> scheme objects (the one place the config's `coding.scheme` is resolved)."""

from __future__ import annotations

from dcoord.coding.base import Scheme, SchemeError

PLAIN = ("uncoded", "gc-fr", "gc-cyclic", "gc-binary", "ignore-stragglers")
SEQUENTIAL = ("sr-sgc", "m-sgc")
SCHEMES = PLAIN + SEQUENTIAL


def _require(name: str, **params) -> None:
    missing = [k for k, v in params.items() if v is None]
    if missing:
        raise SchemeError(f"{name} needs coding.{', coding.'.join(missing)} (e.g. B: 1, W: 2, lambda: 1)")


def make_scheme(name: str, n: int, *, s: int | None = None, B: int | None = None, W: int | None = None,
                lam: int | None = None, jobs: int | None = None, models: int | None = None) -> Scheme:
    """Build a scheme by name; parameter errors are SchemeError naming the parameter."""
    from dcoord.coding import gc

    s = s or 0
    if name in PLAIN:
        if models not in (None, 1):
            raise SchemeError(f"{name} trains one model (coding.models must be 1 or unset, got {models})")
        cls = {"uncoded": gc.Uncoded, "gc-fr": gc.GCFractional, "gc-cyclic": gc.GCCyclic, "gc-binary": gc.GCBinary,
               "ignore-stragglers": gc.IgnoreStragglers}[name]
        return cls(n, s, jobs=jobs)
    if name in SEQUENTIAL:
        from dcoord.coding import sgc

        _require(name, B=B, W=W, **{"lambda": lam})
        cls = sgc.SRSGC if name == "sr-sgc" else sgc.MSGC
        kwargs = {"models": models} if models is not None else {}
        return cls(n, B, W, lam, jobs=jobs, **kwargs)
    raise SchemeError(f"unknown scheme {name!r}; allowed: {', '.join(SCHEMES)}")
