"""A worker's own privacy account (``trust: workers``): every message it released, per partition.

Why the worker keeps it: the coordinator declares the plan, and a compromised coordinator can declare any
plan. What a worker released is what it knows for sure: each new message about partition j is one Gaussian
release of a query of sensitivity k C / N at the multiplier its noise actually had (``RoundSpec.
partition_multiplier``: z, or z / sqrt(J) with ``noise_split: aggregate``). One sample lies in one partition,
so partitions compose in parallel and the worker's epsilon is the largest over its partitions; messages about
one partition compose by the job's own accountant (``privacy.accountant``, the coordinator's too). The same
question answered again (the identical message, see the answer ledger) releases nothing and is not charged.
With ``max_epsilon`` a release that would take the worker past it is refused before anything is computed.
With ``store`` (``dcoord worker --privacy-account FILE``) the account outlives the worker: it is loaded at
start and written before each new message leaves, so a restarted worker (or the next job on the same data)
goes on from what was released, whatever a coordinator declares.
Under Poisson sampling each message is a subsampled Gaussian at the sample rate q the worker drew its batch
with (from the workers' key, which the coordinator never holds), so it is charged with amplification at q.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from dcoord.errors import PrivacyError
from dcoord.privacy.accounting import get_accountant


class WorkerBudget:
    """Releases per partition, as {(multiplier, sample rate): count}; the epsilon they cost; refusals past
    ``max_epsilon``."""

    def __init__(self, accountant: str, delta: float, max_epsilon: float | None = None, *,
                 store: str | Path | None = None, layout: str = "") -> None:
        self.accountant = get_accountant(accountant)
        self.delta = float(delta)
        self.max_epsilon = max_epsilon
        # partition -> (multiplier, sample rate) -> messages released
        self.releases: dict[int, dict[tuple[float, float], int]] = {}
        self.refused = 0
        self._eps: dict[tuple, float] = {}  # history -> epsilon (partitions share them)
        self.store = None if store is None else Path(store)
        self.layout = layout
        self._saved: dict[str, dict[str, list[list[float]]]] = {}  # layout -> partition -> [[z, q, count]]
        self.carried: dict[tuple[float, float], int] = {}  # every release of other layouts (see load)
        if self.store is not None:
            self._load()

    def _load(self) -> None:
        """Earlier workers' releases from ``store``. Those of this data layout continue per partition; those
        of another layout (other partitions of the data) are all charged to every partition now: a sample
        was in one old partition, which one is not known here, so the union bounds what it already cost."""
        assert self.store is not None
        try:
            data = json.loads(self.store.read_text())
            saved = data["layouts"]
            assert data.get("version") == 1 and isinstance(saved, dict)
            for lay, parts in saved.items():
                for part, hist in parts.items():
                    for z, q, n in hist:
                        key, n = (float(z), float(q)), int(n)
                        assert n >= 0 and 0 < key[1] <= 1 and key[0] >= 0
                        if lay == self.layout:
                            counts = self.releases.setdefault(int(part), {})
                            counts[key] = counts.get(key, 0) + n
                        else:
                            self.carried[key] = self.carried.get(key, 0) + n
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, AssertionError) as exc:
            raise PrivacyError(f"--privacy-account {self.store}: not a privacy account this worker wrote "
                               f"({type(exc).__name__}); it is not replaced, move it away only if you know "
                               "what it held") from None
        self._saved = {lay: parts for lay, parts in saved.items() if lay != self.layout}

    def _save(self) -> None:
        """Write the account before the message leaves (atomic rename, fsynced): a crash after a release never
        forgets it."""
        assert self.store is not None
        layouts = dict(self._saved)
        layouts[self.layout] = {str(p): [[z, q, n] for (z, q), n in sorted(c.items())]
                                for p, c in self.releases.items()}
        tmp = self.store.with_name(self.store.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump({"version": 1, "layouts": layouts}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.store)

    def _epsilon(self, counts: dict[tuple[float, float], int]) -> float:
        merged = dict(self.carried)
        for key, n in counts.items():
            merged[key] = merged.get(key, 0) + n
        hist = tuple(sorted(merged.items()))
        eps = self._eps.get(hist)
        if eps is None:
            eps = self._eps[hist] = self.accountant.epsilon([(z, q, n) for (z, q), n in hist], self.delta)
        return eps

    def epsilon(self, partition: int | None = None) -> float:
        """What this worker's releases cost: about ``partition``, or the most over all partitions."""
        if partition is not None:
            return self._epsilon(self.releases.get(partition, {}))
        return max((self._epsilon(c) for c in self.releases.values()), default=0.0)

    def charge(self, partition: int, multiplier: float, what: str = "", sample_rate: float = 1.0) -> None:
        """Account one new message about ``partition`` with noise ``multiplier`` x sensitivity (on a Poisson
        batch of rate ``sample_rate``), or refuse it (PrivacyError, nothing recorded) when it would take this
        worker past ``max_epsilon``."""
        if not (multiplier >= 0 and not math.isnan(multiplier)):
            raise PrivacyError(f"bad noise multiplier {multiplier}")
        if not 0 < sample_rate <= 1:
            raise PrivacyError(f"bad sample rate {sample_rate}")
        counts = dict(self.releases.get(partition, {}))
        key = (float(multiplier), float(sample_rate))
        counts[key] = counts.get(key, 0) + 1
        eps = self._epsilon(counts)
        if self.max_epsilon is not None and not eps <= self.max_epsilon:
            self.refused += 1
            raise PrivacyError(f"{what or f'partition {partition}'}: answering would take this worker's own epsilon "
                               f"about partition {partition} to {eps:.4g}, past its --max-epsilon "
                               f"{self.max_epsilon:g} (it has released {sum(counts.values()) - 1} messages about it)")
        self.releases[partition] = counts
        if self.store is not None:
            self._save()
