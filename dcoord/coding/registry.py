"""Scheme names -> scheme objects: the one place the config's ``coding.scheme`` is resolved.

Each scheme declares itself beside its class (``register_scheme(SchemeSpec(...))`` in gc.py, sgc.py or a
user's module); the config's allowed values, the simulator, the tuner, plot colours, the CLI help and the
docs table all read the specs from here. Importing this module registers the built-ins.
"""

from __future__ import annotations

from dcoord.coding import gc as _gc  # noqa: F401  (registers the plain codes)
from dcoord.coding import hetero as _hetero  # noqa: F401  (registers the heterogeneity-aware code)
from dcoord.coding import sgc as _sgc  # noqa: F401  (registers the sequential codes)
from dcoord.coding.base import (
    Scheme,
    SchemeError,
    SchemeParams,
    SchemeSpec,
    register_scheme,
    registered_schemes,
)

__all__ = ["SchemeSpec", "make_scheme", "register_scheme", "registered_schemes", "scheme_names",
           "scheme_spec"]

_KEY = {"stragglers": "s", "lambda": "lam"}


def scheme_names() -> tuple[str, ...]:
    """Every registered scheme name, in registration order."""
    return tuple(registered_schemes())


def scheme_spec(name: str) -> SchemeSpec:
    """The spec of a registered scheme; SchemeError listing the allowed names otherwise."""
    spec = registered_schemes().get(name)
    if spec is None:
        raise SchemeError(f"unknown scheme {name!r}; allowed: {', '.join(scheme_names())}")
    return spec


def __getattr__(name: str):  # SCHEMES stays importable and always current (user schemes included)
    if name == "SCHEMES":
        return scheme_names()
    raise AttributeError(name)


def make_scheme(name: str, n: int, *, s: int | None = None, B: int | None = None, W: int | None = None,
                lam: int | None = None, jobs: int | None = None, models: int | None = None,
                speeds=None) -> Scheme:
    """Build a scheme by name; parameter errors are SchemeError naming the parameter."""
    spec = scheme_spec(name)
    given = {"stragglers": s, "B": B, "W": W, "lambda": lam, "models": models}
    if "models" not in spec.params and models not in (None, 1):
        raise SchemeError(f"{name} trains one model (coding.models must be 1 or unset, got {models})")
    if speeds is not None and "speeds" not in spec.params:
        raise SchemeError(f"coding.speeds is read by gc-hetero only (scheme {name} gives every worker equal load)")
    missing = [k for k in spec.required if given[k] is None]
    if missing:
        raise SchemeError(f"{name} needs coding.{', coding.'.join(missing)} (e.g. B: 1, W: 2, lambda: 1)")
    return spec.build(n, SchemeParams(s=s or 0, B=B, W=W, lam=lam, jobs=jobs, models=models,
                                       speeds=None if speeds is None else tuple(speeds)))
