"""Subcommands for the simulator, tuning and privacy planning (kept apart so `dcoord run` stays small)."""

from __future__ import annotations


def register(sub, job_args) -> None:
    """Add simulate / tune / privacy subcommands when their modules are present."""
