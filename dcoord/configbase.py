"""The base of every job-config section: one rule for every number, so no field is left lax by accident.

A config value flows into sleeps, allocations, random generators and file names; a field read loosely is a
silent wrong run (``rounds: true`` read as 1 round, ``lr: .nan`` training garbage until a worker gives up).
Every section model derives from :class:`ConfigModel`, which refuses:

- unknown keys (a typo is not ignored);
- loose types (pydantic strict mode): an integer field takes an integer only, not ``true``, ``3.0`` or
  ``"3"``; a number field takes a number (an integer is widened), not ``true`` or a string;
- non-finite numbers (``.nan``, ``.inf``) in every float field, lists included;
- integers outside the signed 64-bit range, in every integer field without a tighter bound of its own.

Paths stay lax (:data:`FilePath`): a YAML string is a path. Seeds are :data:`Seed`: 0..2^32-1, what every
generator dcoord seeds (numpy, torch, Python's) accepts as is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: the largest integer any integer field takes (signed 64 bits: what the wire and numpy carry)
INT64_MAX = 2**63 - 1
#: the most workers a job may have
MAX_WORKERS = 100_000
#: the most rounds (jobs, hops) a job may run: a billion, far past any run; catches a typo such as 1e18
MAX_ROUNDS = 1_000_000_000
#: the largest seed (every generator dcoord seeds takes 0..2^32-1)
SEED_MAX = 2**32 - 1

#: a seed: an integer 0..2^32-1
Seed = Annotated[int, Field(ge=0, le=SEED_MAX, description="an integer 0..2^32-1")]
#: a file path; a YAML string is accepted (strict mode would want a Path object)
FilePath = Annotated[Path, Field(strict=False)]


def _out_of_range(v: Any) -> int | None:
    """The first integer in ``v`` (or in a list of them) outside the signed 64-bit range, else None."""
    for x in v if isinstance(v, list) else [v]:
        if isinstance(x, int) and not isinstance(x, bool) and not -INT64_MAX - 1 <= x <= INT64_MAX:
            return x
    return None


class ConfigModel(BaseModel):
    """A config section: strict types, finite floats, 64-bit integers, no unknown keys (module docstring)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, populate_by_name=True)

    @field_validator("*", mode="after")
    @classmethod
    def _int64(cls, v: Any) -> Any:
        bad = _out_of_range(v)
        if bad is not None:
            raise ValueError(f"must be an integer in -2^63..2^63-1 (got {bad})")
        return v
