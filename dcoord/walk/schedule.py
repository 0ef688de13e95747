"""Token mode as a round policy: the same Scheme interface the coordinator drives for gradient codes.

Round r moves every token one hop. The holder of token k computes the gradient of its own objective
F_i (the mean loss over its shard) at the token's model; the coordinator applies
theta <- theta - beta_n * w_i * grad F_i and the walker picks the next holder. Because the model goes
back through the coordinator each hop, the coordinator always has the token's last state: a token whose
holder dies is restored from it and handed to a live neighbour (``reroute``).

The step beta_n (and the importance weight w_i, and N/|shard_i| turning the part gradient into grad F_i)
is folded into the decoding coefficient, so the coordinator's plain SGD with lr = lr0 applies exactly
theta - beta_n w_i grad F_i.
"""

from __future__ import annotations

import copy

import numpy as np

from dcoord.coding.base import DecodeError, ResultRef, Scheme, SchemeError, Task
from dcoord.walk.config import TokenConfig, build_walkers, token_rngs


class TokenSchedule(Scheme):
    name = "token"
    delay = 0

    def __init__(self, cfg: TokenConfig, n: int, seed: int, hops: int, lr0: float) -> None:
        if cfg.chain == "nbrw" and cfg.importance_weighting == "on":
            raise SchemeError("token.importance_weighting: nbrw has no node-level target to weight by")
        self.cfg = cfg
        self.n = n
        self.jobs = hops
        self.walkers = build_walkers(cfg, n, seed)
        self.models = len(self.walkers)
        self.rngs = token_rngs(seed, len(self.walkers))[1:]
        self.lr0 = float(lr0)
        target = self.walkers[0].target
        uniform = bool(np.allclose(target, 1.0 / n))
        use_iw = {"auto": not uniform, "on": True, "off": False}[cfg.importance_weighting]
        self.weights = (1.0 / n) / target if use_iw else np.ones(n)
        self.shard_sizes: np.ndarray | None = None
        self.holders: dict[int, list[int]] = {}
        self.restored = 0
        self._closed: dict[int, list[int]] = {}
        self.last_holders: list[int] = []

    # -- data binding -------------------------------------------------------------------------------
    def bind_data(self, batch_size: int) -> None:
        """Shard sizes as the workers cut them (split_parts rounding), for N/|shard_i|."""
        bounds = np.rint(np.concatenate([[0.0], np.cumsum(self.part_fractions())]) * batch_size).astype(int)
        bounds[-1] = batch_size
        sizes = np.diff(bounds)
        if np.any(sizes == 0):
            raise SchemeError(f"token mode: {self.n} workers but only {batch_size} samples; some shards are empty")
        self.shard_sizes = sizes

    def part_fractions(self) -> np.ndarray:
        return np.full(self.n, 1.0 / self.n)

    def beta(self, hop: int) -> float:
        """Step size of hop ``hop`` (0-based): constant lr, or lr_scale * (hop+2)^-b (beta_{n+1}, n = hop)."""
        if self.cfg.lr is not None:
            return float(self.cfg.lr)
        return self.cfg.lr_scale * (hop + 2.0) ** (-self.cfg.beta_exponent)

    # -- the Scheme interface -----------------------------------------------------------------------
    def _job(self, round: int, token: int) -> int:
        return round * self.models + token

    def tasks(self, round: int) -> dict[int, list[Task]]:
        out: dict[int, list[Task]] = {i: [] for i in range(self.n)}
        if round >= self.jobs:
            return out
        holders = self.holders.setdefault(round, [w.position for w in self.walkers])
        for k, h in enumerate(holders):
            out[h].append(Task(job=self._job(round, k), parts=(h,), coeffs=(1.0,), kind="token",
                               slot=len(out[h])))
        return out

    def accepts(self, round: int, arrived: frozenset[int]) -> bool:
        holders = self.holders.get(round, [w.position for w in self.walkers])
        return all(h in arrived for h in holders)

    def close_round(self, round: int, arrived: frozenset[int]) -> list[int]:
        if round >= self.jobs:
            return []
        if not self.accepts(round, arrived):
            raise DecodeError(f"round {round}: a token holder did not deliver")
        holders = self.holders.pop(round)
        self._closed[round] = holders
        self.last_holders = list(holders)
        for w, rng in zip(self.walkers, self.rngs):
            w.step(rng)
        return [self._job(round, k) for k in range(self.models)]

    def decode(self, job: int) -> dict[ResultRef, float]:
        if self.shard_sizes is None:
            raise DecodeError("token schedule used before bind_data()")
        round, token = divmod(job, self.models)
        holders = self._closed.get(round)
        if holders is None:
            raise DecodeError(f"job {job} was not closed")
        h = holders[token]
        slot = holders[:token].count(h)
        batch = float(self.shard_sizes.sum())
        coeff = self.beta(round) / self.lr0 * self.weights[h] * batch / self.shard_sizes[h]
        if token == self.models - 1:
            del self._closed[round]
        return {ResultRef(round, h, slot): float(coeff)}

    def load(self) -> float:
        return self.models / self.n

    def model_of(self, job: int) -> int:
        return job % self.models

    def params(self) -> dict:
        c = self.cfg
        return {"n": self.n, "chain": c.chain, "base": c.base, "alpha": c.alpha, "tokens": self.models}

    # -- recovery -----------------------------------------------------------------------------------
    def reroute(self, round: int, alive: frozenset[int]) -> bool:
        """Hand every token whose holder is gone to a live node drawn by its own schedule; True if any moved."""
        holders = self.holders.get(round)
        if holders is None:
            return False
        moved = False
        for k, (w, rng) in enumerate(zip(self.walkers, self.rngs)):
            if holders[k] in alive:
                continue
            for _ in range(64):  # the walk itself picks the replacement, from the dead holder's neighbourhood
                w.position = holders[k]
                nxt = w.step(rng)
                if nxt in alive:
                    break
            else:
                nxt = int(rng.choice(sorted(alive))) if alive else holders[k]
                w.position = nxt
            if nxt in alive:
                holders[k] = nxt
                self.restored += 1
                moved = True
        return moved

    def report(self) -> dict:
        counts = np.sum([w.visit_counts for w in self.walkers], axis=0)
        return {"visit_counts": [int(c) for c in counts], "tokens_restored": self.restored,
                "hops": int(sum(w.hops for w in self.walkers))}

    # -- checkpoints ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Every token's walk state and random generator, the holders of open rounds, closed rounds."""
        return {
            "walkers": [w.state_dict() for w in self.walkers],
            "rngs": [copy.deepcopy(r.bit_generator.state) for r in self.rngs],
            "holders": {r: list(h) for r, h in self.holders.items()},
            "closed": {r: list(h) for r, h in self._closed.items()},
            "restored": self.restored, "last_holders": list(self.last_holders),
        }

    def load_state_dict(self, state: dict) -> None:
        if len(state["walkers"]) != len(self.walkers):
            raise ValueError(f"token: checkpoint has {len(state['walkers'])} tokens, config {len(self.walkers)}")
        for w, ws in zip(self.walkers, state["walkers"]):
            w.load_state_dict(ws)
        for r, rs in zip(self.rngs, state["rngs"]):
            r.bit_generator.state = copy.deepcopy(rs)
        self.holders = {int(r): [int(x) for x in h] for r, h in state["holders"].items()}
        self._closed = {int(r): [int(x) for x in h] for r, h in state["closed"].items()}
        self.restored = int(state["restored"])
        self.last_holders = [int(x) for x in state["last_holders"]]

    def round_info(self, round: int) -> dict:
        return {"holders": self.last_holders, "next_holders": [w.position for w in self.walkers]}
