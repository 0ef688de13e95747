"""The job config: YAML in, one validated JobConfig out, or a ConfigError naming the field and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dcoord.dtypes import PayloadDtype
from dcoord.errors import ConfigError
from dcoord.privacy.config import PrivacyConfig
from dcoord.sim.config import SimulateConfig
from dcoord.stragglers import InjectConfig
from dcoord.walk.config import TokenConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class OptimizerConfig(_Strict):
    name: Literal["sgd", "adam"] = "sgd"
    lr: float | list[float] = Field(0.1, description="one value, or one per model (a learning-rate sweep)")
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)

    @field_validator("lr")
    @classmethod
    def _positive(cls, v):
        vals = v if isinstance(v, list) else [v]
        if not vals or any(x <= 0 for x in vals):
            raise ValueError("must be > 0 (one value, or a non-empty list of values > 0, one per model)")
        return v


class CodingConfig(_Strict):
    scheme: str = Field("uncoded", description="a registered scheme (dcoord.coding.registry; README 'Schemes')")
    stragglers: int = Field(0, ge=0, description="s: stragglers tolerated per round (plain codes)")
    B: int | None = Field(None, ge=1, description="burst length (sequential codes)")
    W: int | None = Field(None, ge=2, description="window length (sequential codes)")
    lam: int | None = Field(None, ge=1, alias="lambda", description="stragglers per window (sequential codes)")
    models: int | None = Field(None, ge=1, description="models trained concurrently (default: delay + 1)")
    mu: float = Field(1.0, ge=0.0, description="straggler rule: late if not back by (1+mu) * fastest")
    wait: Literal["all", "minimal"] = "all"
    close: Literal["straggler-rule", "earliest"] = Field(
        "straggler-rule",
        description="sequential codes: close by the (1+mu) straggler rule (the paper), or at the first arrival "
        "whose straggler set still fits the (B, W, lambda) model and keeps every pending job decodable",
    )
    payload_dtype: PayloadDtype = "float64"  # workers combine in float64, round once
    seed: int = 0

    @field_validator("scheme")
    @classmethod
    def _registered(cls, v: str) -> str:
        from dcoord.coding.registry import scheme_spec

        scheme_spec(v)  # SchemeError (a ValueError) listing the allowed names
        return v


class RuntimeConfig(_Strict):
    round_timeout_s: float = Field(60.0, gt=0, description="fail a round that cannot decode after this long")
    worker_wait_s: float = Field(20.0, ge=0, description="wait this long for replacements when too few are alive")
    heartbeat_s: float = Field(1.0, gt=0)
    emulate_part_s: float = Field(
        0.0, ge=0.0,
        description="sleep this long per part computed, to emulate one machine per worker on a small box",
    )
    emulate_job_s: float = Field(
        0.0, ge=0.0,
        description="sleep this long times the fraction of one job's gradient computed (the simulator's "
        "base_comp), so emulated compute follows the normalised load whatever the part sizes",
    )
    checkpoint_every: int = Field(10, ge=0, description="rounds between atomic checkpoints (0 = only at the end)")
    keep_checkpoints: int = Field(3, ge=1, description="checkpoints kept (the newest K; older ones are deleted)")
    elastic: bool = Field(False, description="re-plan n and s over the workers present instead of failing")
    restart_workers: bool = Field(False, description="dcoord run: restart a local worker that dies (same id)")
    progress: bool = True
    loader_workers: int = Field(
        0, ge=0, le=64, description="Dataset workloads: DataLoader processes per worker reading samples (0 = inline)"
    )
    data_port: int = Field(
        0, ge=0, lt=65536,
        description="transport: tcp -- the data plane's port on the coordinator's host (0 = any free port; fix it "
        "when a firewall or a Kubernetes Service must name it)",
    )
    stream_chunk_bytes: int = Field(
        1 << 20, ge=0, description="gRPC: send payloads larger than this as chunks of this size (0 = never)"
    )


class JobConfig(_Strict):
    name: str = "job"
    plugins: list[str] = Field(
        default_factory=list,
        description="modules imported first (in every process) that register schemes or workloads",
    )
    mode: Literal["coded", "token"] = "coded"
    workload: str = "logreg-digits"
    workload_args: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments of the workload function, e.g. {data: DIR}"
    )
    seed: int = 0
    workers: int = Field(4, ge=1, le=100_000)
    rounds: int = Field(10, ge=1, description="jobs to run; with several models they are shared round-robin")
    batch_size: int | None = Field(None, ge=1)
    optimizer: OptimizerConfig = OptimizerConfig()
    coding: CodingConfig = CodingConfig()
    inject: InjectConfig = InjectConfig()
    transport: str | None = Field(
        None, description="the data plane payloads travel on: grpc (inside the control stream, runs everywhere), "
        "tcp (dcoord run, dcoord coordinator + worker), torch (torchrun), mpi (mpirun), or a plugin's; left out: "
        "the fastest that runs where the job runs (printed at start)",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    runtime: RuntimeConfig = RuntimeConfig()
    shards: Literal["iid", "label-skew"] = Field(
        "iid", description="how the batch is cut into parts: as shuffled, or sorted by label (heterogeneous)"
    )
    token: TokenConfig | None = None
    privacy: PrivacyConfig | None = None
    simulate: SimulateConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _import_plugins(cls, data):
        if isinstance(data, dict) and data.get("plugins"):
            from dcoord.plugins import import_plugins

            import_plugins(data["plugins"])
        return data

    @field_validator("workload")
    @classmethod
    def _workload_name(cls, v: str) -> str:
        from dcoord.workloads.registry import workload_names

        names = workload_names()
        if v not in names and (":" not in v or not all(v.split(":", 1))):
            raise ValueError(f"unknown workload {v!r}; use one of {names} or 'package.module:function'")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> JobConfig:
        from dcoord.workloads.registry import check_workload_args

        check_workload_args(self.workload, self.workload_args)
        if self.mode == "token":
            if self.token is None:
                self.token = TokenConfig()
            o = self.optimizer
            if o.name != "sgd" or o.momentum != 0 or isinstance(o.lr, list):
                raise ValueError("optimizer: token mode takes plain sgd (momentum 0, one lr); "
                                 "the walk's step sizes are set under token:")
            try:
                self.make_scheme()
            except ValueError as exc:
                raise ValueError(str(exc) if str(exc).startswith("token") else f"token: {exc}") from exc
        if self.mode == "coded":
            try:
                scheme = self.make_scheme()
            except ValueError as exc:  # SchemeError
                raise ValueError(f"coding: {exc}") from exc
            lrs = self.optimizer.lr
            if isinstance(lrs, list) and len(lrs) not in (1, scheme.models):
                raise ValueError(
                    f"optimizer.lr: give one value or {scheme.models} (one per model); got {len(lrs)}"
                )
        if self.privacy is not None:
            self._check_privacy()
        if self.runtime.elastic:
            from dcoord.coding.elastic import elastic_schemes

            elastic = elastic_schemes()
            if self.mode != "coded" or self.coding.scheme not in elastic or self.privacy is not None:
                raise ValueError(f"runtime.elastic: only plain codes ({', '.join(elastic)}) without "
                                 "privacy can be re-planned; set runtime.elastic: false")
        self.straggler_model()  # validates inject against workers
        return self

    def _check_privacy(self) -> None:
        """Private runs are single-model, full-batch, coded-mode runs (what the accounting assumes)."""
        if self.mode == "token":
            raise ValueError("privacy: not supported in token mode yet (each hop would need its own "
                             "accounting); use mode: coded")
        if self.batch_size is not None:
            raise ValueError("privacy: needs batch_size: null (full-batch rounds; the accountant uses "
                             f"sample rate 1), got batch_size {self.batch_size}")
        if self.make_scheme().models != 1:
            raise ValueError("privacy: needs one model (coding.models: 1); every extra model trained on the "
                             "same data would spend the privacy budget again")

    # -- derived objects -------------------------------------------------------------------------
    def make_scheme(self):
        """The coding scheme object this config describes (raises SchemeError on bad parameters)."""
        if self.mode == "token":
            from dcoord.walk.schedule import TokenSchedule

            return TokenSchedule(self.token or TokenConfig(), self.workers, self.seed, hops=self.rounds,
                                 lr0=self.lr_for(0))
        from dcoord.coding.registry import make_scheme

        c = self.coding
        return make_scheme(
            c.scheme, self.workers, s=c.stragglers, B=c.B, W=c.W, lam=c.lam, jobs=self.rounds, models=c.models
        )

    def straggler_model(self):
        from dcoord.stragglers import make_straggler_model

        return make_straggler_model(self.inject, self.workers, self.seed)

    def lr_for(self, model: int) -> float:
        lr = self.optimizer.lr
        if isinstance(lr, list):
            return lr[model] if len(lr) > 1 else lr[0]
        return lr

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", by_alias=True), sort_keys=False)


def _fmt_loc(loc: tuple) -> str:
    return ".".join(str(p) for p in loc if not str(p).startswith("function-"))


def format_validation_error(exc: ValidationError, source: str = "config") -> str:
    """One line: the first problem, naming the field and what is allowed."""
    err = exc.errors()[0]
    loc = _fmt_loc(err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if loc and msg.startswith(loc):  # validators that already name their field
        loc = ""
    if err["type"] == "extra_forbidden":
        msg = "unknown key (check the spelling; see README 'Config reference')"
    elif err["type"] == "literal_error":
        msg = f"{msg} (got {err.get('input')!r})"
    more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    where = f"{loc}: " if loc else ""
    return f"{source}: {where}{msg}{more}"


def set_dotted(data: dict, assignment: str) -> None:
    """Apply one ``--set key.sub=value`` (value parsed as YAML) to a nested dict."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key=value, e.g. --set coding.stragglers=2")
    key, raw = assignment.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML ({exc.problem})") from exc
    parts = key.strip().split(".")
    node = data
    for p in parts[:-1]:
        if not isinstance(node.get(p, {}), dict):
            raise ConfigError(f"--set {key}: {p} is not a section")
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def load_config(path: str | Path | None, overrides: list[str] | None = None, data: dict | None = None) -> JobConfig:
    """Read, override and validate a job config; every failure is a ConfigError with one clear line."""
    if data is None:
        p = Path(path)  # type: ignore[arg-type]
        if not p.is_file():
            raise ConfigError(f"{p}: no such config file")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"{p}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of keys (name:, workload:, ...)")
        source = str(p)
    else:
        source = "config"
    data = dict(data)
    for ov in overrides or []:
        set_dotted(data, ov)
    try:
        return JobConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None
