"""Register's rate limit: per credential and per peer host, with a burst sized to the job.

Why both, and why sized to the job: a whole job registering at once is normal (a node running many ranks,
or a NAT in front of a cluster, is one host, and every worker of a token-authenticated job presents the same
credential), so a credential's bucket holds twice the job's worker count plus ``burst`` (every worker
registering, and retrying once); more than that in a burst, or a sustained rate above ``rate``, is a flood.
The host bucket holds two credentials' worth, so one credential flooding from a host cannot use up what
another credential on that host needs, and a call refused by one bucket takes nothing from the other.
Every call is charged, whatever its answer. Per-credential reservation limits (how many ids one credential
may hold unattached) can key on the same ``credential_of`` value.
"""

from __future__ import annotations

import time

from dcoord.runtime.security.auth import RateLimiter


class RegisterLimits:
    """``check(credential, host)`` before a Register is served."""

    def __init__(self, rate: float, burst: int, workers: int) -> None:
        self.job_burst = 2 * workers + burst
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
