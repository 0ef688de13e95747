"""The job config: YAML in, one validated JobConfig out, or a ConfigError naming the field and the fix."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from dcoord.configbase import MAX_ROUNDS, MAX_WORKERS, ConfigModel, Seed
from dcoord.dtypes import PayloadDtype
from dcoord.errors import ConfigError
from dcoord.privacy.config import PrivacyConfig
from dcoord.sim.config import SimulateConfig
from dcoord.stragglers import InjectConfig
from dcoord.walk.config import TokenConfig

#: the most models trained concurrently (the wire carries a model index as 32 bits)
MAX_MODELS = 100_000
#: heartbeat bounds, seconds: faster only loads the control plane; slower hides a lost worker for minutes
MIN_HEARTBEAT_S, MAX_HEARTBEAT_S = 0.05, 600.0
#: a job name: it names the run directory, metric labels and log lines, so a safe printable set only
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"


class OptimizerConfig(ConfigModel):
    name: Literal["sgd", "adam"] = Field("sgd", description="torch optimizer the coordinator steps with")
    lr: float | list[float] = Field(0.1, description="one value, or one per model (a learning-rate sweep)")
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="sgd momentum")
    weight_decay: float = Field(0.0, ge=0.0, description="L2 penalty added by the optimizer")

    @field_validator("lr")
    @classmethod
    def _positive(cls, v):
        vals = v if isinstance(v, list) else [v]
        if not vals or any(x <= 0 for x in vals):
            raise ValueError("must be > 0 (one value, or a non-empty list of values > 0, one per model)")
        return v


class CodingConfig(ConfigModel):
    scheme: str = Field("uncoded", description="a registered scheme (dcoord.coding.registry; docs: Gradient coding)")
    stragglers: int = Field(0, ge=0, le=MAX_WORKERS, description="s: stragglers tolerated per round (plain codes)")
    B: int | None = Field(None, ge=1, le=MAX_ROUNDS, description="burst length (sequential codes)")
    W: int | None = Field(None, ge=2, le=MAX_ROUNDS, description="window length (sequential codes)")
    lam: int | None = Field(None, ge=1, le=MAX_WORKERS, alias="lambda",
                            description="stragglers per window (sequential codes)")
    models: int | None = Field(None, ge=1, le=MAX_MODELS,
                               description="models trained concurrently (default: delay + 1)")
    mu: float = Field(1.0, ge=0.0, description="straggler rule: late if not back by (1+mu) * fastest")
    wait: Literal["all", "minimal"] = Field(
        "all", description="sequential codes, when stragglers do not fit the model: wait for all, or the fewest needed"
    )
    close: Literal["straggler-rule", "earliest"] = Field(
        "straggler-rule",
        description="sequential codes: close by the (1+mu) straggler rule (the paper), or at the first arrival "
        "whose straggler set still fits the (B, W, lambda) model and keeps every pending job decodable",
    )
    payload_dtype: PayloadDtype = Field(
        "float64", description="dtype of the coded messages (workers combine in float64 and round once)"
    )
    precision: Literal["check", "accept"] = Field(
        "check",
        description="check: refuse a scheme, size and payload dtype whose searched worst decode error exceeds "
        "the bound a run promises (1e-5 relative; 4 x eps for bfloat16); accept: run anyway and record the "
        "bound in summary.json (docs: Gradient coding, decode precision)",
    )
    seed: Seed = Field(0, description="seed of the code's own random choices (random constructions)")
    speeds: list[float] | None = Field(
        None, description="gc-hetero: each worker's relative speed (one per worker; null = measured in the first "
        "rounds, then re-planned on drift; docs: Heterogeneous clusters)")
    byzantine: int = Field(
        0, ge=0, le=MAX_WORKERS,
        description="a: lying workers tolerated per round, exactly, besides the s stragglers (gc-fr, gc-binary: "
        "groups of 2a+s+1 replicas, a value is accepted once a+1 digests agree; docs: Byzantine workers)",
    )
    aggregate: Literal["sum", "median", "krum", "centered-clipping"] = Field(
        "sum",
        description="sum: decode exactly; median, krum, centered-clipping: APPROXIMATE robust aggregation of "
        "uncoded messages, a baseline for runs without the redundancy of coding.byzantine (which then counts "
        "the liars Krum assumes; docs: Byzantine workers)",
    )
    exclude_after: int = Field(
        1, ge=1, le=MAX_ROUNDS,
        description="coding.byzantine: offences (a digest against its group's, or a payload against its own "
        "digest) after which a worker is excluded for the rest of the run",
    )

    @field_validator("scheme")
    @classmethod
    def _registered(cls, v: str) -> str:
        from dcoord.coding.registry import scheme_spec

        scheme_spec(v)  # SchemeError (a ValueError) listing the allowed names
        return v


class RuntimeConfig(ConfigModel):
    round_timeout_s: float = Field(60.0, gt=0, description="fail a round that cannot decode after this long")
    worker_wait_s: float = Field(20.0, ge=0, description="wait this long for replacements when too few are alive")
    heartbeat_s: float = Field(
        1.0, ge=MIN_HEARTBEAT_S, le=MAX_HEARTBEAT_S,
        description=f"seconds between a worker's heartbeats ({MIN_HEARTBEAT_S:g}..{MAX_HEARTBEAT_S:g}; a worker "
        "silent for 10 of them, at least 5 s, counts as gone)",
    )
    emulate_part_s: float = Field(
        0.0, ge=0.0,
        description="sleep this long per part computed, to emulate one machine per worker on a small box",
    )
    emulate_job_s: float = Field(
        0.0, ge=0.0,
        description="sleep this long times the fraction of one job's gradient computed (the simulator's "
        "base_comp), so emulated compute follows the normalised load whatever the part sizes",
    )
    checkpoint_every: int = Field(10, ge=0, le=MAX_ROUNDS, description="rounds between atomic checkpoints (0 = only at the end)")
    keep_checkpoints: int = Field(3, ge=1, le=1000, description="checkpoints kept (the newest K; older ones are deleted)")
    elastic: bool = Field(False, description="re-plan n and s over the workers present instead of failing")
    restart_workers: bool = Field(False, description="dcoord run: restart a local worker that dies (same id)")
    progress: bool = Field(True, description="show the progress bar on the console")
    loader_workers: int = Field(
        0, ge=0, le=64, description="Dataset workloads: DataLoader processes per worker reading samples (0 = inline)"
    )
    data_port: int = Field(
        0, ge=0, lt=65536,
        description="transport: tcp -- the data plane's port on the coordinator's host (0 = any free port; fix it "
        "when a firewall or a Kubernetes Service must name it)",
    )
    stream_chunk_bytes: int = Field(
        1 << 20, ge=0, le=1 << 30, description="gRPC: send payloads larger than this as chunks of this size (0 = never)"
    )
    digest_every: int = Field(
        10, ge=0, le=MAX_ROUNDS,
        description="transport: allreduce -- every K model versions the workers send a digest of their replica and "
        "the coordinator checks that all agree (0 = never)",
    )


class JobConfig(ConfigModel):
    name: str = Field("job", description="letters, digits, '.', '_' and '-' (up to 100, starting with a letter or digit): "
                      "it names the run directory (runs/NAME by default), metric labels and log lines")
    plugins: list[str] = Field(
        default_factory=list,
        description="modules imported first (in every process) that register schemes or workloads",
    )
    mode: Literal["coded", "token"] = Field(
        "coded", description="coded: gradient coding rounds; token: token walks over a graph of workers"
    )
    workload: str = Field(
        "logreg-digits", description="a built-in workload name or package.module:function returning a Workload"
    )
    workload_args: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments of the workload function, e.g. {data: DIR}"
    )
    seed: Seed = Field(0, description="seeds the model init, batches, injected stragglers and walks")
    workers: int = Field(4, ge=1, le=MAX_WORKERS, description="n: number of workers")
    rounds: int = Field(10, ge=1, le=MAX_ROUNDS,
                        description="jobs to run (1..1e9); with several models they are shared round-robin")
    batch_size: int | None = Field(None, ge=1, description="samples per job; null = the whole dataset every round")
    optimizer: OptimizerConfig = OptimizerConfig()
    coding: CodingConfig = CodingConfig()
    inject: InjectConfig = InjectConfig()
    transport: str | None = Field(
        None, description="the data plane payloads travel on: grpc (inside the control stream, runs everywhere), "
        "tcp (dcoord run, dcoord coordinator + worker), torch (torchrun), mpi (mpirun), or a plugin's; left out: "
        "the fastest that runs where the job runs (printed at start)",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where workers compute (auto: the GPU when there is one); a worker's --device wins"
    )
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

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not re.fullmatch(NAME_PATTERN, v):
            raise ValueError("use letters, digits, '.', '_' and '-' (1 to 100 characters, starting with a letter or "
                             f"digit): it names the run directory, metric labels and log lines (got {ascii(v)})")
        return v

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
        if self.coding.byzantine or self.coding.aggregate != "sum":
            self._check_byzantine()
        if self.runtime.elastic:
            from dcoord.coding.elastic import elastic_schemes

            elastic = elastic_schemes()
            if self.mode != "coded" or self.coding.scheme not in elastic or self.privacy is not None:
                raise ValueError(f"runtime.elastic: only plain codes ({', '.join(elastic)}) without "
                                 "privacy can be re-planned; set runtime.elastic: false")
        self.straggler_model()  # validates inject against workers
        return self

    def _check_byzantine(self) -> None:
        """Repetition checks need bit-identical replicas and one coordinator that sees every digest."""
        if self.mode != "coded":
            raise ValueError("coding.byzantine: only in mode: coded (token walks have no replicas to compare)")
        c = self.coding
        if c.aggregate != "sum":
            if c.scheme != "uncoded":
                raise ValueError(f"coding.aggregate: {c.aggregate} combines one uncoded message per worker; set "
                                 f"coding.scheme: uncoded (or coding.aggregate: sum for {c.scheme})")
            if c.aggregate == "krum" and self.workers < 2 * c.byzantine + 3:
                raise ValueError(f"coding.aggregate: krum needs workers >= 2 * coding.byzantine + 3 (got "
                                 f"{self.workers} workers, byzantine {c.byzantine})")
        if self.privacy is not None:
            raise ValueError("coding.byzantine: not with privacy yet (privatized replicas differ by their noise); "
                             "set coding.byzantine: 0 or remove privacy")
        if self.runtime.elastic:
            raise ValueError("coding.byzantine: not with runtime.elastic yet (re-planning would mix groups); "
                             "set runtime.elastic: false")
        # a collective plane (payloads stay with the workers) is refused by the Coordinator: the config does
        # not import the planes

    def _check_privacy(self) -> None:
        """Private runs are single-model, coded-mode runs, full-batch or Poisson-sampled (what the accounting
        assumes)."""
        if self.mode == "token":
            raise ValueError("privacy: not supported in token mode yet (each hop would need its own "
                             "accounting); use mode: coded")
        if self.batch_size is not None:
            raise ValueError("privacy: needs batch_size: null (fixed-size batches are not accounted), got "
                             f"batch_size {self.batch_size}; for mini-batches use privacy.sampling: poisson "
                             "with privacy.sample_rate q (expected batch q x dataset size)")
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
        if c.aggregate != "sum":  # a robust aggregator reads byzantine as the liars it assumes, not replicas
            return make_scheme(c.scheme, self.workers, s=c.stragglers, jobs=self.rounds, models=c.models, speeds=c.speeds)
        if c.byzantine:  # replicas per group 2a+s+1: the code is built as if it tolerated 2a+s stragglers
            from dcoord.coding.byzantine import check_byzantine

            check_byzantine(c.scheme, self.workers, c.byzantine, c.stragglers)
        return make_scheme(c.scheme, self.workers, s=c.stragglers + 2 * c.byzantine, B=c.B, W=c.W, lam=c.lam,
                           jobs=self.rounds, models=c.models, speeds=c.speeds)

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


def _is_type_tag(part: object) -> bool:
    """A union member's tag in an error location (``float``, ``list[float]``, ``function-after[...]``)."""
    p = str(part)
    return "[" in p or p.startswith("function-") or p in ("int", "float", "str", "bool", "none")


def _fmt_loc(loc: tuple) -> str:
    """``("optimizer", "lr", "list[float]", 1)`` -> ``optimizer.lr[1]``."""
    out = ""
    for p in loc:
        if isinstance(p, int):
            out += f"[{p}]"
        elif not _is_type_tag(p):
            out += f".{p}" if out else str(p)
    return out


#: pydantic's type errors in the words of a YAML file
_PLAIN = {
    "int_type": "must be an integer (not true/false, a decimal or a string)",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number (not true/false or a string)",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number (not .nan or .inf)",
    "bool_type": "must be true or false",
    "string_type": "must be a string (quote it)",
    "list_type": "must be a list, e.g. [1, 2]",
    "model_type": "must be a mapping of keys (key: value, ...)",
    "dict_type": "must be a mapping of keys (key: value, ...)",
}
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _show(v: object) -> str:
    """A value as the YAML user wrote it (true, not True)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return ascii(v) if isinstance(v, str) else repr(v)


def format_validation_error(exc: ValidationError, source: str = "config") -> str:
    """One line: the first problem, naming the field and what is allowed."""
    errors = exc.errors()
    # the deepest location first: of a union's branches (``lr: [0.1, .nan]``), the one that reached the value
    err = max(errors, key=lambda e: len([p for p in e["loc"] if not _is_type_tag(p)]))
    loc = _fmt_loc(err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if loc and msg.startswith(loc):  # validators that already name their field
        loc = ""
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "extra_forbidden":
        msg = "unknown key (check the spelling; every key is in the docs' config reference)"
    elif kind == "literal_error":
        msg = f"{msg} (got {err.get('input')!r})"
    elif kind in _PLAIN:
        msg = _PLAIN[kind]
    elif kind in _BOUNDS:
        bound = next(iter(ctx.values()), "?")
        msg = f"must be {_BOUNDS[kind]} {bound:g}" if isinstance(bound, float) else f"must be {_BOUNDS[kind]} {bound}"
    if (kind in _PLAIN or kind in _BOUNDS) and not isinstance(err.get("input"), dict | list):
        msg += f" (got {_show(err.get('input'))})"
    others = {_fmt_loc(e["loc"]) for e in errors[1:]} - {_fmt_loc(err["loc"])}
    more = f" (+{len(others)} more)" if others else ""
    where = f"{loc}: " if loc else ""
    return f"{source}: {where}{msg}{more}"


class _JobLoader(yaml.SafeLoader):
    """PyYAML's safe loader reading ``1e-3`` and ``1e18`` as numbers (YAML 1.2), not as strings (YAML 1.1)."""


_JobLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)

#: deepest nesting a job file may have (a real one is 4 or 5 deep; this leaves workload_args room)
MAX_DEPTH = 32


def parse_yaml(text: str, source: str) -> Any:
    """YAML text to Python data; a ConfigError naming ``source`` when it is not YAML or nested too deeply."""
    try:
        data = yaml.load(text, Loader=_JobLoader)  # noqa: S506 -- a SafeLoader subclass
    except RecursionError:
        data = None
        deep = True
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{source}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    else:
        deep = _depth(data) > MAX_DEPTH
    if deep:
        raise ConfigError(f"{source} is nested too deeply (at most {MAX_DEPTH} levels of sections and lists)")
    return data


def _depth(data: Any) -> int:
    """How deeply ``data`` nests dicts and lists (iteratively: a deep input must not exhaust the stack)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, d)
            if d <= MAX_DEPTH:
                stack.extend((c, d + 1) for c in (node.values() if isinstance(node, dict) else node))
    return deepest


def read_job_file(path: str | Path) -> dict:
    """A job file's top-level mapping; every way it cannot be one (missing, a directory, not UTF-8, empty,
    not YAML, too deep, not a mapping) is a ConfigError with one line naming the file."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{p} is a directory; give a job file (YAML), e.g. examples/quickstart.yaml")
    if not p.is_file():
        raise ConfigError(f"{p}: no such config file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                          "save the job file as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read it ({exc.strerror})") from None
    data = parse_yaml(text, str(p))
    if data is None:
        raise ConfigError(f"{p} is empty; a job file names at least its workload and workers "
                          "(see examples/quickstart.yaml)")
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of keys (name:, workload:, ...)")
    return data


def set_dotted(data: dict, assignment: str) -> None:
    """Apply one ``--set key.sub=value`` (value parsed as YAML) to a nested dict."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key=value, e.g. --set coding.stragglers=2")
    key, raw = assignment.split("=", 1)
    value = parse_yaml(raw, f"--set {key}") if raw != "" else None
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {assignment!r}: give a key such as coding.stragglers (no empty part)")
    node = data
    for p in parts[:-1]:
        if not isinstance(node.get(p, {}), dict):
            raise ConfigError(f"--set {key}: {p} is not a section")
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def load_config(path: str | Path | None, overrides: list[str] | None = None, data: dict | None = None) -> JobConfig:
    """Read, override and validate a job config; every failure is a ConfigError with one clear line."""
    source = "config" if data is not None else str(path)
    data = dict(read_job_file(path) if data is None else data)  # type: ignore[arg-type]
    for ov in overrides or []:
        set_dotted(data, ov)
    if _depth(data) > MAX_DEPTH:
        raise ConfigError(f"{source} is nested too deeply (at most {MAX_DEPTH} levels of sections and lists)")
    try:
        return JobConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None
