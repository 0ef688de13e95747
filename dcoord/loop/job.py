"""``dcoord.join()``: a torchrun script keeps its own training loop and becomes straggler-tolerant.

    job = dcoord.join(scheme="gc-cyclic", stragglers=1)     # every rank; rank 0 also hosts the coordinator
    model, optimizer = job.wrap(model, optimizer)           # the same objects, nothing replaced
    for batch in job.batches(dataset, batch_size=256):      # this rank's coded parts of each round's batch
        for part in batch.parts:
            part.backward(loss_fn(model(part.x), part.y))   # scaled by the code's coefficient
        clip_grad_norm_(model.parameters(), 1.0)            # .grad holds the decoded batch gradient here
        optimizer.step()                                    # the user's own optimizer
        scheduler.step()

Why the decode happens in the last part's backward and not in ``optimizer.step()``: DDP's gradient is
all-reduced during backward, so whatever a DDP loop does between backward and step (clipping, logging
the gradient norm, a GradScaler's unscale) sees the averaged gradient. The same holds here: once the
batch's last part went backward, ``.grad`` holds the decoded gradient of the whole batch.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dcoord.errors import ConfigError, DcoordError
from dcoord.loop.batches import Batch, empty_part, global_batches, make_parts

log = logging.getLogger("dcoord.loop")


def join(scheme: str = "uncoded", stragglers: int = 0, *, steps: int | None = None, name: str = "loop",
         seed: int = 0, out: str | Path | None = None, overwrite: bool = False,
         inject: dict | None = None, config: dict | None = None, overrides: list[str] | None = None,
         progress: bool = False) -> Job:
    """Join this torchrun rank to a dcoord job; every rank calls it (rank 0 also hosts the coordinator).

    ``scheme``/``stragglers``: the gradient code (``coding.scheme``, ``coding.stragglers``). ``steps``: the
    number of optimizer steps (default: ``epochs`` x batches per epoch of the first ``batches`` call).
    ``out``: rank 0's run directory (metrics.jsonl, summary.json; default ``runs/NAME``; ``overwrite``:
    replace the run there). ``inject``: an injected straggler
    model (the config's ``inject:`` section, e.g. ``{"model": "fixed", "workers": [1], "slowdown": 5}``).
    ``config``: any other job-config keys as a dict (``runtime``, ``coding``); ``overrides``: ``key=value``
    strings, as ``--set``, applied after ``$DCOORD_SET`` (the same, separated by ``;``: a local trial's
    settings, e.g. an injected straggler, without editing the script). With ``$DCOORD_TOKEN_FILE``
    set, the control plane takes that token (else a fresh one per run).
    """
    import torch.distributed as dist

    from dcoord.launch import detect_launcher

    env = detect_launcher()
    if env.launcher != "torchrun":
        raise ConfigError("dcoord.join() runs in a script started by torchrun (torchrun --nproc-per-node N "
                          "SCRIPT); without a launcher use dcoord.train or `dcoord run`")
    if not dist.is_initialized():
        dist.init_process_group("gloo")  # the launcher's group: only to hand rank 0's address to the others
    settings = {"scheme": scheme, "stragglers": stragglers, "steps": steps, "name": name, "seed": seed,
                "out": out, "overwrite": overwrite, "inject": inject, "config": config or {},
                "overrides": [*env_overrides(), *(overrides or [])], "progress": progress}
    return Job(settings, env.rank, env)


def env_overrides() -> list[str]:
    """``key=value`` settings from ``$DCOORD_SET`` (``;``-separated)."""
    return [s.strip() for s in os.environ.get("DCOORD_SET", "").split(";") if s.strip()]


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _collective_plane() -> str:
    from dcoord.runtime.transport.registry import get_plane, plane_names

    return next(n for n in plane_names() if get_plane(n).collective)


class Job:
    """One rank's view of the job: ``wrap`` once, then iterate ``batches``; ``summary`` on rank 0 at the end."""

    def __init__(self, settings: dict, rank: int, env: Any) -> None:
        self.settings, self.rank, self.env = settings, rank, env
        self.world = env.world_size
        self.model: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.cfg = None
        self.member = None
        self.host = None
        self.step = 0  # optimizer steps applied (= the round whose batch comes next)
        self.total = 0
        self.epoch = 0  # epochs of the data order started so far (the dataset form)
        self.seen = 0  # rounds of the data order iterated so far
        self.steps: int | None = None  # wrap(steps=...)
        self.fractions: np.ndarray | None = None
        self.summary: dict | None = None
        self.finished = False  # the job ended (later batches() calls yield nothing)
        self._last_loss = [float("nan")]
        self._batch: Batch | None = None

    # -- set-up --------------------------------------------------------------------------------------
    def wrap(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, steps: int | None = None
             ) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        """Take part in training ``model`` with ``optimizer``; returns both unchanged (no wrapper classes:
        schedulers, ``state_dict()`` and ``isinstance`` checks see the user's own objects). ``steps``: the
        optimizer steps the loop takes (needed when ``batches`` is given a DataLoader)."""
        self.steps = steps
        if self.model is not None:
            raise DcoordError("job.wrap(model, optimizer) is called once per job")
        if any(p.device.type != "cpu" for p in model.parameters()):
            raise DcoordError("job.wrap: this version trains CPU models (move the model to the CPU)")
        self.model, self.optimizer = model, optimizer
        optimizer.register_step_pre_hook(self._before_step)
        optimizer.register_step_post_hook(self._after_step)
        return model, optimizer

    def _config(self, total: int):
        from dcoord.config import load_config
        from dcoord.loop.host import register_stand_in

        s = self.settings
        workload = register_stand_in(s["name"], self.model, self._last_loss)
        data = {"name": s["name"], "workers": self.world, "rounds": total, "seed": s["seed"], "workload": workload,
                "transport": _collective_plane(), "coding": {"scheme": s["scheme"], "stragglers": s["stragglers"]},
                "runtime": {"checkpoint_every": 0, "progress": s["progress"]}}
        if s["inject"]:
            data["inject"] = s["inject"]
        cfg = load_config(None, s["overrides"], data=_deep_merge(data, s["config"]))
        scheme = cfg.make_scheme()
        if scheme.models != 1 or scheme.delay != 0:
            raise ConfigError(f"coding.scheme: dcoord.join() runs codes that train one model with no delay "
                              f"({cfg.coding.scheme} trains {scheme.models} with delay {scheme.delay}); "
                              "use uncoded, gc-fr, gc-cyclic or gc-binary")
        return cfg

    def _start(self, total: int) -> None:
        """Every rank: the job's config; rank 0: the coordinator; then every rank registers as a worker."""
        import torch.distributed as dist

        from dcoord.launch import coordinator_hosts
        from dcoord.loop.member import Member
        from dcoord.runtime.coordinator.resume import default_out
        from dcoord.runtime.security.auth import ClientSecurity, read_token

        if self.model is None:
            raise DcoordError("call job.wrap(model, optimizer) before job.batches(...)")
        s = self.settings
        found, problem, error = ["", ""], "", DcoordError
        try:
            self.cfg = self._config(total)
        except DcoordError as exc:
            problem, error = str(exc), type(exc)
        if self.rank == 0 and not problem:
            token_file = os.environ.get("DCOORD_TOKEN_FILE")
            token = read_token(token_file, "DCOORD_TOKEN_FILE") if token_file else secrets.token_hex(32)
            from dcoord.loop.host import CoordinatorThread

            out = Path(s["out"]) if s["out"] is not None else default_out(self.cfg.name)
            mode = "overwrite" if s["overwrite"] else "new"
            listen, advertise = coordinator_hosts(self.env)
            try:
                self.host = CoordinatorThread(self.cfg, out, mode, token, listen, advertise, s["progress"],
                                              self._last_loss)
                found = [self.host.wait_listening(60.0), token]
                log.info("coordinator of this job on %s (run directory %s)", found[0], out)
            except DcoordError as exc:
                problem = str(exc)
        if self.rank == 0 and problem:
            found = ["error:" + problem, ""]
        dist.broadcast_object_list(found, src=0)  # the launcher's group: trusted, as torchrun's store is
        if problem:
            raise error(problem)
        if found[0].startswith("error:"):
            raise DcoordError(f"rank 0 could not start the coordinator: {found[0][6:]}")
        self.fractions = self.cfg.make_scheme().part_fractions()
        self.member = Member(self.cfg, found[0], ClientSecurity(token=found[1]), self.rank, self.model)
        self.step = self.member.start()
        self.total = total

    # -- the rounds -----------------------------------------------------------------------------------
    def batches(self, data, batch_size: int | None = None, *, epochs: int = 1):
        """Each round's batch as this rank's coded parts, in the order a DDP loop would see the batches.

        ``data``: the DDP loop's DataLoader over a DistributedSampler (one epoch per call, at the sampler's
        ``set_epoch``; the round's batch is the union of the ranks' batches), or a dataset with
        ``batch_size`` samples per round (``epochs`` epochs per call, DistributedSampler's order).
        Every rank iterates the same rounds; call ``part.backward(loss)`` for every part, then
        ``optimizer.step()``, once per batch. A round that closed without this rank (too slow) has one
        empty part, whose backward only takes the decoded gradient."""
        from torch.utils.data import DataLoader, default_collate

        from dcoord.loop.batches import loader_batches

        if isinstance(data, DataLoader):
            dataset, collate, order = data.dataset, data.collate_fn, loader_batches(data)
            per_call = len(data)
        else:
            n = len(data)
            if batch_size is None or not 1 <= batch_size <= n:
                raise ConfigError(f"job.batches(dataset, batch_size): batch_size must be 1 to {n} (the dataset's "
                                  f"size), not {batch_size}")
            dataset, collate, per_call = data, default_collate, epochs * (n // batch_size)
            order = global_batches(n, batch_size, range(self.epoch, self.epoch + epochs), self.settings["seed"])
            self.epoch += epochs
        if self.member is None:
            steps = self.steps or self.settings["steps"] or (None if isinstance(data, DataLoader) else per_call)
            if steps is None:
                raise ConfigError("job.batches(loader): say how many steps the loop takes: "
                                  "job.wrap(model, optimizer, steps=EPOCHS * len(loader))")
            self._start(steps)
        for idx in order:
            self.seen += 1
            if self.seen <= self.step:  # rounds the job had trained before this rank started
                continue
            if self.step >= self.total:
                break
            batch = self._batch = self._round(dataset, idx, collate)
            yield batch
            if self.step != batch.step + 1:
                raise DcoordError(f"step {batch.step}: call optimizer.step() once per batch (it was called "
                                  f"{self.step - batch.step} times)")
        if self.step >= self.total and not self.finished:
            self._finish()

    def _round(self, dataset, idx: np.ndarray, collate) -> Batch:
        """This rank's batch of the next round: its parts, or none when the round closed without it."""
        for p in self.model.parameters():
            p.grad = None  # the message is this round's parts only
        rnd = self.step
        a = self.member.assignment(rnd)
        batch = Batch(rnd, [], self._deliver)
        if a is None or not a.tasks:
            batch.parts = [empty_part(batch, dataset, idx, collate)]
            return batch
        (t,) = a.tasks
        if t.model_version != rnd:
            raise DcoordError(f"the coordinator assigned version {t.model_version} at step {rnd}")
        batch.assignment = a
        batch.digest = self.member.params_digest() if self.member.digest_due(rnd) else b""
        batch.parts = make_parts(batch, dataset, idx, self.fractions, list(t.parts), list(t.coeffs), collate)
        return batch

    def _deliver(self, batch: Batch) -> None:
        """The batch's last part went backward: send the coded message, then take the decoded gradient."""
        if batch.assignment is None:  # the round closed without this rank
            self._apply_decoded(batch)
            return
        emulated = self.cfg.runtime.emulate_part_s * len(batch.parts)
        if emulated > 0:
            time.sleep(emulated)
        dtype = np.float64 if self.cfg.coding.payload_dtype == "float64" else np.float32
        grads = [p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel()) for p in self.model.parameters()]
        message = torch.cat(grads).detach().numpy().astype(dtype, copy=True)
        self.member.deliver(batch.assignment, [message], [batch.losses], time.perf_counter() - batch.started,
                            batch.digest)
        self._apply_decoded(batch)

    def _apply_decoded(self, batch: Batch) -> None:
        from dcoord.runtime.tensors import flat_grads_to_model

        flat_grads_to_model(self.model, self.member.decoded(batch.step).numpy())
        batch.synced = True

    def _before_step(self, optimizer, args, kwargs) -> None:
        b = self._batch
        if b is None or b.step != self.step or not b.synced:
            raise DcoordError("optimizer.step() before the batch's gradient was decoded: call part.backward(loss) "
                              "for every part of batch.parts first, once per batch of job.batches(...)")

    def _after_step(self, optimizer, args, kwargs) -> None:
        self.step += 1
        self.member.replica.stepped(self.model)

    def _finish(self) -> None:
        """After the last step: the coordinator takes the final parameters and ends the job (rank 0: the summary)."""
        self.finished = True
        self.member.finish()
        if self.host is not None:
            self.summary = self.host.join(self.cfg.runtime.round_timeout_s)
