"""The ``simulate:`` section of a job config."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from dcoord.configbase import MAX_ROUNDS, ConfigModel, FilePath
from dcoord.sim.network import DEFAULT_OVERHEAD_MS, Network

#: the largest delay T the tuner searches: its grid grows as T^2 (m-sgc's (B, W) pairs), about 7,400
#: candidates at T = 32 on 256 workers (the SGC papers use T <= 10)
MAX_TUNE_DELAY = 32
#: the longest simulated compute, seconds (about 11.6 days; past it the simulated clock loses precision)
MAX_SECONDS = 1e6


class NetworkConfig(ConfigModel):
    """The ``simulate.network`` block: per-node links and the model size, for per-plane round predictions."""

    link_gbps: float = Field(gt=0.0, le=1e5, description="each node's link bandwidth, Gbit/s in each direction")
    model_mb: float = Field(gt=0.0, le=1e7, description="model size in MB (10^6 bytes): one coded message's size")
    latency_ms: float = Field(0.0, ge=0.0, le=1e5, description="one-way latency of a link, milliseconds")
    overhead_ms: float = Field(DEFAULT_OVERHEAD_MS, ge=0.0, le=1e5,
                               description="fixed cost of a dcoord round beside compute and wire, milliseconds")
    planes: list[str] | None = Field(None,
                              description="planes to predict: star planes (tcp, grpc) and the collective one (allreduce)")

    def model(self) -> Network:
        return Network(link_gbps=self.link_gbps, model_mb=self.model_mb, latency_ms=self.latency_ms,
                       overhead_ms=self.overhead_ms)


class SimulateConfig(ConfigModel):
    """Virtual-time simulation settings.

    Worker i finishes round r at d_ir(L) = d_ir(0) + L * base_comp, L its normalized load that round.
    d(0) is ``trace`` row (r mod rows) column i (times ``trace_scale``, after dropping ``skip_rows`` warm-up
    rows) when a trace is given, else ``base_time`` passed through the injected straggler model
    (``inject:``): d(L) = model.times(r, base_time + L * base_comp).
    """

    trace: FilePath | None = Field(None, description="CSV of per-worker times at load 0 (rows = rounds)")
    trace_scale: float = Field(1.0, gt=0.0, description="multiply the trace times by this")
    skip_rows: int = Field(0, ge=0, le=MAX_ROUNDS, description="drop this many leading (warm-up) rows of the trace")
    base_comp: float = Field(1.0, ge=0.0, le=MAX_SECONDS, description="seconds to compute one full job's gradient")
    base_time: float = Field(1.0, ge=0.0, le=MAX_SECONDS, description="load-independent seconds per round without a trace")
    mu: float = Field(1.0, ge=0.0, description="straggler rule: late if not back by (1+mu) * fastest")
    jobs: int = Field(20, ge=1, le=MAX_ROUNDS, description="jobs to finish; sequential codes run jobs + T rounds")
    wait: Literal["all", "minimal"] = Field("all", description="fallback when stragglers do not conform")
    plain_close: Literal["decodable", "straggler-rule"] = Field(
        "decodable",
        description="plain codes close at the first decodable arrival (what the coordinator does), or, as in "
        "the SGC paper's comparison, by the (1+mu) straggler rule with wait-all when they cannot decode",
    )
    close: Literal["straggler-rule", "earliest"] = Field(
        "straggler-rule",
        description="sequential codes' close rule (dcoord simulate takes it from coding.close): the (1+mu) "
        "straggler rule, or the first arrival at which the late set fits the (B, W, lambda) model",
    )
    load_model: Literal["actual", "nominal"] = Field(
        "actual",
        description="actual: charge each worker the minitasks it really has (fewer in a run's first and last "
        "T rounds); nominal: as the SGC authors' simulator, every worker the scheme's full normalised load in "
        "every round that has any task (so SR-SGC's closing rounds charge all n workers)",
    )
    carry_over: bool = Field(
        False,
        description="a worker cut off when a round closes keeps computing its stale task and starts the next "
        "round that much later (dcoord's persistent worker processes); false: every round starts every worker "
        "fresh (the paper's one Lambda invocation per worker and round)",
    )
    max_delay: int = Field(3, ge=0, le=MAX_TUNE_DELAY, description="largest T considered when tuning --compare schemes")
    lambda_grid: list[int] | None = Field(None, description="lambda values tried when tuning (default: coarse)")
    hops: int = Field(10_000, ge=1, le=MAX_ROUNDS, description="token mode: hops to simulate")
    network: NetworkConfig | None = Field(
        None, description="links and model size: predict each scheme's round time per data plane (star: tcp, "
        "grpc; collective: allreduce) next to plain DDP, and recommend one")
    problem: Literal["logreg", "none"] = Field(
        "logreg", description="token mode: the optimisation problem whose error curve is reported"
    )

    @field_validator("lambda_grid")
    @classmethod
    def _grid(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or any(x < 1 for x in v)):
            raise ValueError("simulate.lambda_grid must be a non-empty list of integers >= 1")
        return v
