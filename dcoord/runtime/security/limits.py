"""Register's rate limit: per credential and per peer host, with a burst sized to the job.

Why both, and why sized to the job: a whole job registering at once is normal (a node running many ranks,
or a NAT in front of a cluster, is one host, and every worker of a token-authenticated job presents the same
credential), so each bucket holds the job's worker count plus ``burst``; more than that in a burst, or a
sustained rate above ``rate``, is a flood. The host bucket holds two credentials' worth, so one credential
flooding from a host cannot use up what another credential on that host needs, and a call refused by one
bucket takes nothing from the other. A call refused because the job is full gives its token back (it
reserved nothing). Per-credential reservation limits can key on the same ``credential_of`` value.
"""

from __future__ import annotations

import time

from dcoord.runtime.security.auth import RateLimiter


class RegisterLimits:
    """``check(credential, host)`` before a Register is served; ``refund`` when it reserved nothing."""

    def __init__(self, rate: float, burst: int, workers: int) -> None:
        self.job_burst = workers + burst
        self.per_credential = RateLimiter(rate, self.job_burst)
        self.per_host = RateLimiter(rate, 2 * self.job_burst)

    def check(self, credential: str, host: str, now: float | None = None) -> str | None:
        """None when the call may go on (one token taken from each bucket), else which limit refused it."""
        now = time.monotonic() if now is None else now
        if self.per_credential.level(credential, now) < 1.0:
            return "credential"
        if self.per_host.level(host, now) < 1.0:
            return "host"
        self.per_credential.take(credential, 1.0, now)
        self.per_host.take(host, 1.0, now)
        return None

    def refund(self, credential: str, host: str) -> None:
        """Give back the tokens of a call that reserved nothing (the job was full)."""
        self.per_credential.take(credential, -1.0)
        self.per_host.take(host, -1.0)
