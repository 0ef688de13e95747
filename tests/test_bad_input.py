"""Bad input is refused in one line naming the field or flag and what is allowed; never a traceback, never a
silent wrong run. Config values are checked through ``load_config`` (what every command and the Python API
call); each distinct way in through the command line runs the real ``python -m dcoord`` once."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import types
import typing
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
from pydantic import BaseModel, ValidationError
from test_cli import EXAMPLES, dcoord, one_line_error

from dcoord.cli import walk_parsers
from dcoord.coding.precision import MAX_SETS, measure, measure_dtypes
from dcoord.config import JobConfig, format_validation_error, load_config
from dcoord.configbase import ConfigModel
from dcoord.errors import ConfigError, StragglerError
from dcoord.stragglers import MAX_INJECTED_DELAY_S, InjectConfig, load_trace_csv, make_straggler_model

BASE = {"name": "t", "workers": 3, "rounds": 2}


def refused(overrides: list[str], *needles: str, data: dict | None = None) -> str:
    """The one-line ConfigError of BASE (or ``data``) with ``overrides``; it must name every needle."""
    with pytest.raises(ConfigError) as exc:
        load_config(None, overrides, data=dict(BASE if data is None else data))
    msg = str(exc.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, msg
    return msg


# -- 1. values that were accepted and must not be ------------------------------------------------------------
@pytest.mark.parametrize(("override", "needles"), [
    ("optimizer.lr=.nan", ["optimizer.lr", "finite"]),
    ("optimizer.lr=.inf", ["optimizer.lr", "finite"]),
    ("optimizer.lr=[0.1, .nan]", ["optimizer.lr", "finite"]),
    ("rounds=true", ["rounds", "integer", "got true"]),
    ("rounds=1e18", ["rounds", "integer"]),
    ("rounds=1000000000000000000", ["rounds", "<= 1000000000"]),
    ("runtime.heartbeat_s=1e-9", ["runtime.heartbeat_s", ">= 0.05"]),
    ("inject={model: fixed, workers: [0], slowdown: 1e308}", ["inject.slowdown", "<= 1000"]),
    ("inject={model: bernoulli, p: 0.5, slowdown: 1e308}", ["inject.slowdown", "<= 1000"]),
    ('name="a\\u202eb"', ["name", "letters, digits", "a\\u202eb"]),
    ('name="a\\x1b[31mb"', ["name", "letters, digits"]),
    ('name="run\\nnext"', ["name", "letters, digits"]),
    ("name=../escape", ["name", "letters, digits"]),
    ("seed=1180591620717411303424", ["seed", "<= 4294967295"]),
    ("seed=-1", ["seed", ">= 0"]),
    # found by the new-user sweep (one wrong field per example)
    ("token={alpha: 1.0e+300}", ["token.alpha", "<= 10000"]),  # OverflowError in the walk
    ("privacy={noise_multiplier: 1.0e+300, clip: 1}", ["privacy.noise_multiplier", "1e+07"]),  # OverflowError
    ("simulate={max_delay: 1000}", ["simulate.max_delay", "<= 32"]),  # a search of ~1e6 candidates
    ("simulate={base_comp: 1.0e+300}", ["simulate.base_comp", "<= 1e+06"]),
])
def test_config_value_refused(override, needles):
    refused([override], *needles)


def test_a_float_field_still_takes_integers_and_exponents():
    """Strict types must not refuse what YAML users write: ``lr: 1`` and ``lr: 1e-3`` are numbers."""
    assert load_config(None, ["optimizer.lr=1"], data=dict(BASE)).optimizer.lr == 1.0
    assert load_config(None, ["optimizer.lr=1e-3"], data=dict(BASE)).optimizer.lr == 1e-3
    assert load_config(None, ["name=gpt-char_v2.1"], data=dict(BASE)).name == "gpt-char_v2.1"


# -- 1. the generic rule, swept over every numeric field of every config section --------------------------
def _leaves(annotation) -> list[tuple[type, bool]]:
    """(leaf type, inside a list) for every type an annotation admits (Annotated, unions, lists unwrapped)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _leaves(args[0])
    if origin in (typing.Union, types.UnionType):
        return [leaf for a in args for leaf in _leaves(a)]
    if origin is list:
        return [(t, True) for t, _ in _leaves(args[0])]
    if origin is typing.Literal or origin is dict:
        return []
    return [(annotation, False)] if isinstance(annotation, type) else []


def _sections(model: type[BaseModel] = JobConfig) -> list[type[BaseModel]]:
    out = [model]
    for f in model.model_fields.values():
        for t, _ in _leaves(f.annotation):
            if issubclass(t, BaseModel) and t not in out:
                out += [m for m in _sections(t) if m not in out]
    return out


SECTIONS = _sections()
#: what a section needs besides the field under test: required fields, and the kind a field applies to
REQUIRED = {"PrivacyConfig": {"clip": 1.0}, "NetworkConfig": {"link_gbps": 1.0, "model_mb": 10.0},
            ("GraphConfig", "d"): {"kind": "random-regular"},
            ("GraphConfig", "rows"): {"kind": "torus"}, ("GraphConfig", "cols"): {"kind": "torus"}}
BAD = {int: [True, 2.5, 3.0, "3", 2**70, -(2**70)], float: [math.nan, math.inf, -math.inf, True, "1.0"]}


def _numeric_fields() -> list[tuple[type[BaseModel], str, type, bool]]:
    out = []
    for model in SECTIONS:
        for name, f in model.model_fields.items():
            for t, in_list in _leaves(f.annotation):
                if t in (int, float):
                    out.append((model, f.alias or name, t, in_list))
    return out


NUMERIC = _numeric_fields()


def test_the_sweep_sees_every_section_and_numeric_field():
    names = {m.__name__ for m in SECTIONS}
    assert {"JobConfig", "OptimizerConfig", "CodingConfig", "RuntimeConfig", "InjectConfig", "SimulateConfig",
            "PrivacyConfig", "TokenConfig", "GraphConfig"} <= names
    fields = {(m.__name__, f) for m, f, _, _ in NUMERIC}
    assert {("JobConfig", "rounds"), ("OptimizerConfig", "lr"), ("InjectConfig", "workers"),
            ("RuntimeConfig", "heartbeat_s"), ("GraphConfig", "seed"), ("SimulateConfig", "lambda_grid")} <= fields


@pytest.mark.parametrize("model", SECTIONS, ids=lambda m: m.__name__)
def test_every_config_section_derives_from_the_strict_base(model):
    """One rule for every section: a new section that forgets it is caught here."""
    assert issubclass(model, ConfigModel), f"{model.__name__} must derive from dcoord.configbase.ConfigModel"


@pytest.mark.parametrize(("model", "field", "kind", "in_list"), NUMERIC,
                         ids=[f"{m.__name__}.{f}{'[]' if lst else ''}" for m, f, _, lst in NUMERIC])
def test_every_numeric_field_is_strict_finite_and_bounded(model, field, kind, in_list):
    """Every float field refuses non-finite values, true/false and strings; every integer field refuses
    true/false, decimals, strings and values outside 64 bits; the one line names the field."""
    need = {**REQUIRED.get(model.__name__, {}), **REQUIRED.get((model.__name__, field), {})}
    for bad in BAD[kind]:
        with pytest.raises(ValidationError) as exc:
            model.model_validate({**need, field: [bad] if in_list else bad})
        assert any(e["loc"][:1] == (field,) for e in exc.value.errors()), (bad, exc.value.errors())
        line = format_validation_error(exc.value, "job.yaml")
        assert (f"{field}:" in line or f"{field}[" in line) and "\n" not in line, (bad, line)


# -- 1 and 2. job files that are not a job -------------------------------------------------------------------
@pytest.mark.parametrize(("content", "needle"), [
    (b"", "job.yaml is empty"),
    (b"# only a comment\n", "job.yaml is empty"),
    (b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", "job.yaml is nested too deeply"),
    (b"name: x\nworkload_args: " + b"{a: " * 40 + b"1" + b"}" * 40 + b"\n", "job.yaml is nested too deeply"),
    ("name: café\n".encode("latin-1"), "job.yaml: not UTF-8 text (byte 0xe9"),
])
def test_job_file_refused(tmp_path, content, needle):
    (tmp_path / "job.yaml").write_bytes(content)
    with pytest.raises(ConfigError, match=None) as exc:
        load_config(tmp_path / "job.yaml")
    assert needle in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize(("data", "override", "needle"), [
    ({"workload": "gpt-char", "workload_args": {"d_model": None}}, None, "workload_args.d_model: give a positive"),
    ({"workload": "gpt-char", "workload_args": {"chars": 2**70}}, None, "workload_args.chars: give a positive"),
    ({"workload": "resnet18-cifar", "workload_args": {"width": None}}, None, "workload_args.width: give a positive"),
    ({}, "=1", "give a key"),
    ({}, "coding..stragglers=1", "give a key"),
])
def test_sweep_findings_refused(data, override, needle):
    """A null workload argument reached ``None % heads`` (TypeError) or the workload function; an empty
    --set key gave "unknown key" without naming one."""
    refused([override] if override else [], needle, data={**BASE, **data})


def test_an_injected_delay_is_finite_and_capped():
    """Pareto shape 0.001 drew delays past float range: ``inf`` in the simulator's table, a sleep no clock
    holds on a worker."""
    m = make_straggler_model(InjectConfig(model="pareto", shape=0.001), 64, 0)
    d = np.concatenate([m.extra_delay(r, np.ones(64)) for r in range(20)])
    assert np.isfinite(d).all() and d.max() == MAX_INJECTED_DELAY_S


def test_set_value_nested_too_deeply():
    refused(["workload_args=" + "[" * 5000 + "]" * 5000], "--set workload_args is nested too deeply")


# -- the same through the command line: one line, status 2, no traceback, nothing left behind ---------------
@pytest.mark.parametrize(("command", "content", "needle"), [
    ("run", b"name: t\nworkers: 3\nrounds: 2\noptimizer: {lr: .nan}\n", "optimizer.lr: must be a finite number"),
    ("simulate", b"name: t\nworkers: 3\nrounds: 2\nseed: 1180591620717411303424\n", "seed: must be <= 4294967295"),
    ("simulate", b"", "job.yaml is empty"),
    ("simulate", b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", "job.yaml is nested too deeply"),
    ("simulate", "name: café\n".encode("latin-1"), "job.yaml: not UTF-8 text"),
], ids=["lr-nan", "seed-2^70", "empty", "nested-5000", "latin-1"])
@pytest.mark.slow
def test_cli_refuses_job_in_one_line(tmp_path, command, content, needle):
    """Every command loads its job the same way (``dcoord.cli.options.load_job``): ``run`` once (the command
    where a NaN rate cost 20 s and a misleading error), ``simulate`` (no runtime to import) for the rest."""
    job = tmp_path / "job.yaml"
    job.write_bytes(content)
    one_line_error(dcoord(command, str(job), "--out", str(tmp_path / "out")), 2, needle)
    assert not (tmp_path / "out").exists()


# -- 2. trace files that are not a trace ---------------------------------------------------------------------
def _latin1_trace(tmp_path: Path) -> Path:
    p = tmp_path / "trace.csv"
    p.write_bytes("1.0,1.0,1.0\n1.0,2.0,1.0 # é\n".encode("latin-1"))
    return p


def test_tune_refuses_a_non_utf8_trace_in_one_line(tmp_path):
    one_line_error(dcoord("tune", str(_latin1_trace(tmp_path))), 2, "trace.csv: not UTF-8 text")


def test_simulate_refuses_a_non_utf8_trace_in_one_line(tmp_path):
    trace = _latin1_trace(tmp_path)
    one_line_error(dcoord("simulate", str(EXAMPLES / "quickstart.yaml"), "--no-plot", "--out", str(tmp_path / "out"),
                          "--set", f"simulate.trace={trace}"), 2, "trace.csv: not UTF-8 text")


@pytest.mark.parametrize("path", ["dir", "missing.csv"])
def test_trace_that_is_a_directory_or_missing(tmp_path, path):
    (tmp_path / "dir").mkdir()
    with pytest.raises(StragglerError, match="is a directory" if path == "dir" else "not found"):
        load_trace_csv(tmp_path / path)


# -- 3. dcoord tune says what it did; every argument has help --------------------------------------------
def _profile(tmp_path: Path, rows: int) -> Path:
    p = tmp_path / "profile.csv"
    np.savetxt(p, 1.0 + np.random.default_rng(0).exponential(0.1, size=(rows, 6)), delimiter=",", fmt="%.4f")
    return p


def test_tune_says_when_jobs_are_capped_and_prints_no_python_dict(tmp_path):
    p = dcoord("tune", str(_profile(tmp_path, 10)), "--jobs", "20")
    assert p.returncode == 0, p.stderr
    note = [line for line in p.stderr.splitlines() if line.startswith("note:")]
    assert len(note) == 1 and "--jobs 20 capped: ran 2 jobs to tune" in note[0], p.stderr
    assert "need 23 rows per part" in note[0]
    rec = [line for line in p.stdout.splitlines() if line.startswith("recommended")]
    assert len(rec) == 1 and "{" not in rec[0] and "close rule" in rec[0], p.stdout
    assert "{" not in p.stdout


def test_tune_json_stays_machine_readable_with_the_note_on_stderr(tmp_path):
    p = dcoord("tune", str(_profile(tmp_path, 10)), "--jobs", "20", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["tune_jobs"] == 2 and "capped" in p.stderr


def test_tune_in_sample_says_rows_are_reused(tmp_path):
    p = dcoord("tune", str(_profile(tmp_path, 10)), "--jobs", "20", "--holdout", "0", "--top", "2")
    assert p.returncode == 0, p.stderr
    assert "rows are reused (round r reads row r mod 10)" in p.stderr


#: arguments whose help is only an environment variable, in modules this check cannot fix; the list is a
#: ratchet: delete an entry when its help is written (the test then fails until it is)
HELP_PENDING = {("dcoord worker", "--device")}


def _undocumented() -> set[tuple[str, str]]:

    out = set()
    for prog, parser in walk_parsers():
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                out |= {(prog, c.dest) for c in a._choices_actions if not (c.help or "").strip()}
                continue
            words = (a.help or "").replace("%(default)s", "")
            words = " ".join(w for w in words.split() if not (w.startswith("[") and w.endswith("]")))
            if a.help != argparse.SUPPRESS and not words.strip():
                out.add((prog, "/".join(a.option_strings) or a.dest))
    return out


def test_every_argument_of_every_command_has_help():
    progs = {prog for prog, _ in walk_parsers()}
    assert {"dcoord", "dcoord run", "dcoord coordinator", "dcoord worker", "dcoord tune", "dcoord simulate",
            "dcoord privacy", "dcoord status"} <= progs
    missing = {(prog, opt.split("/")[-1]) for prog, opt in _undocumented()}
    assert missing == HELP_PENDING, f"arguments without help: {sorted(missing - HELP_PENDING)}; " \
                                    f"written since (delete from HELP_PENDING): {sorted(HELP_PENDING - missing)}"


# -- 4. --version -------------------------------------------------------------------------------------------
def test_version():
    p = dcoord("--version")
    assert p.returncode == 0 and p.stdout.strip() == f"dcoord {version('dcoord')}", (p.stdout, p.stderr)
    script = Path(sys.executable).parent / "dcoord"  # the console script, where installed
    if script.exists():
        p = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0 and p.stdout.strip() == f"dcoord {version('dcoord')}", (p.stdout, p.stderr)


# -- 5. the decode-amplification figure ---------------------------------------------------------------------
def test_a_sample_of_survivor_sets_never_reports_worse_than_all_of_them():
    """The README's table (64 sets) and the CLI's line (32) disagreed at n = 8, s = 4: the test gradients
    were drawn after the sampled sets from one generator, so each sample size measured other gradients.
    Every sample must see the same gradients: its worst is then at most the worst over all C(8, 4) = 70."""
    full = measure("gc-cyclic", 8, 4, "float32", max_sets=70)
    assert full.exhaustive and full.sets == 70
    for k in (16, 32, 64):
        part = measure("gc-cyclic", 8, 4, "float32", max_sets=k)
        assert not part.exhaustive and part.worst_rel_error <= full.worst_rel_error, k


def test_the_cli_figure_is_the_one_measure_gives_and_is_reproducible():
    """One figure for a config: the same whichever dtypes are measured together (the docs' table measures
    three at once), and the same in a fresh process."""
    one = measure("gc-cyclic", 8, 4, "float32")
    assert one.sets == MAX_SETS
    assert measure_dtypes("gc-cyclic", 8, 4, ("float64", "float32", "bfloat16"))["float32"] == one
    code = ("from dcoord.coding.precision import measure; "
            "print(repr(measure('gc-cyclic', 8, 4, 'float32').amplification))")
    again = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(again.stdout) == one.amplification


# -- 6. flags with values that failed late, or never finished ------------------------------------------------
@pytest.mark.parametrize(("args", "needle"), [
    (["tune", "PROFILE", "--holdout", "0", "--max-delay", "1000000"], "--max-delay: must be >= 0 and <= 32"),
    (["tune", "PROFILE", "--base-comp", "1e308"], "--base-comp: must be a finite number >= 0 and <= 1e+06"),
    (["status", "127.0.0.1:1", "--timeout", "-1"], "--timeout: must be a finite number > 0"),
    (["simulate", str(EXAMPLES / "quickstart.yaml"), "--no-plot", "--out", "FILE"], "--out FILE is a file"),
], ids=["tune-max-delay-hung", "tune-base-comp-inf", "status-timeout", "simulate-out-a-file"])
def test_flag_refused_in_one_line(tmp_path, args, needle):
    """--max-delay 1e6 searched ~1e12 candidates (no end in sight); --base-comp 1e308 printed inf and a numpy
    warning; --out naming a file ran the whole simulation, then raised FileExistsError."""
    (tmp_path / "file").write_text("x")
    sub = {"PROFILE": str(_profile(tmp_path, 10)), "FILE": str(tmp_path / "file")}
    p = dcoord(*[sub.get(a, a) for a in args])
    one_line_error(p, 2, needle.replace("FILE", sub["FILE"]))
