"""Per-worker session credentials, and the job config as it may leave the coordinator (no secrets).

Register hands each worker a random session credential; its Work stream (hello), heartbeats and every
Result must carry it, so knowing or guessing a worker id is not enough to speak for that worker or to
close its stream. The id stays reserved only until ``reserve_s`` passes without a Work stream.
"""

from __future__ import annotations

import hmac
import secrets

import yaml

from dcoord.config import JobConfig

REDACTED = "<redacted>"
#: config fields that are secrets of the coordinator's process (dotted paths)
SECRET_FIELDS = ("privacy.coordinator_seed",)


def new_session() -> str:
    return secrets.token_urlsafe(32)


def session_ok(expected: str, presented: str) -> bool:
    """Constant-time comparison; an empty expected session (library use without sessions) never matches."""
    return bool(expected) and hmac.compare_digest(expected.encode(), presented.encode())


def public_config(cfg: JobConfig) -> dict:
    """The resolved config without secrets: what workers receive and what config.yaml holds."""
    data = cfg.model_dump(mode="json", by_alias=True)
    for dotted in SECRET_FIELDS:
        *path, last = dotted.split(".")
        node = data
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get(last) is not None:
            node[last] = None
    return data


def public_config_yaml(cfg: JobConfig) -> str:
    """``public_config`` as YAML, with a header naming what was removed (so the file still loads)."""
    removed = [f for f in SECRET_FIELDS if _get(cfg, f) is not None]
    head = "".join(f"# {f}: {REDACTED} (a secret of the coordinator's process; not written)\n" for f in removed)
    return head + yaml.safe_dump(public_config(cfg), sort_keys=False)


def _get(cfg: JobConfig, dotted: str):
    node = cfg
    for key in dotted.split("."):
        node = getattr(node, key, None)
        if node is None:
            return None
    return node
