"""The command line as users call it: real subprocesses, exit codes, one-line errors, files written."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def dcoord(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dcoord", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def one_line_error(p: subprocess.CompletedProcess, code: int, needle: str) -> None:
    assert p.returncode == code, (p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    if lines and lines[0].startswith("usage:"):  # argparse: the usage, then one error line
        lines = lines[-1:]
    assert len(lines) == 1 and needle in lines[0], p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.slow
def test_simulate_compare_writes_json_and_plot(tmp_path):
    p = dcoord("simulate", str(EXAMPLES / "simulate.yaml"), "--out", str(tmp_path),
               "--compare", "uncoded,gc-cyclic,sr-sgc,m-sgc", "--set", "simulate.jobs=40")
    assert p.returncode == 0, p.stderr
    data = json.loads((tmp_path / "simulation.json").read_text())
    schemes = data["schemes"]
    for name in ("uncoded", "gc-cyclic", "sr-sgc", "m-sgc"):
        entry = next(v for k, v in schemes.items() if k.startswith(name))
        assert {"runtime_s", "wait_all_rounds", "load", "params"} <= set(entry)
        assert entry["runtime_s"] > 0
    # bursty stragglers on 256 workers: waiting for everyone is the slowest choice
    uncoded = next(v for k, v in schemes.items() if k.startswith("uncoded"))["runtime_s"]
    assert next(v for k, v in schemes.items() if k.startswith("gc-cyclic"))["runtime_s"] < uncoded
    assert (tmp_path / "simulation.png").stat().st_size > 1000


@pytest.mark.slow
def test_simulate_token_mode_reports_visits_and_error_curve(tmp_path):
    p = dcoord("simulate", str(EXAMPLES / "token.yaml"), "--out", str(tmp_path), "--no-plot",
               "--set", "simulate.hops=2000")
    assert p.returncode == 0, p.stderr
    data = json.loads((tmp_path / "simulation.json").read_text())
    assert len(data["visit_counts"]) == 16 and all(isinstance(v, int) for v in data["visit_counts"])
    assert sum(data["visit_counts"]) >= 2000
    err = data["sq_error"]
    assert err[-1] < err[0]  # the iterate approaches the optimum


def test_tune_picks_a_scheme_for_a_profile(tmp_path):
    rng = np.random.default_rng(0)
    times = 1.0 + rng.exponential(0.05, size=(30, 16))
    times[rng.random(times.shape) < 0.1] *= 8  # stragglers
    csv = tmp_path / "profile.csv"
    np.savetxt(csv, times, delimiter=",", fmt="%.4f")
    p = dcoord("tune", str(csv), "--jobs", "20", "--max-delay", "2", "--json", "--top", "3", "--holdout", "0")
    assert p.returncode == 0, p.stderr
    choices = json.loads(p.stdout)
    assert 1 <= len(choices) <= 3
    runtimes = [c["runtime_s"] for c in choices]
    assert runtimes == sorted(runtimes)
    assert all(c["delay"] <= 2 for c in choices)


def test_tune_scores_out_of_sample_by_default(tmp_path, capsys):
    """In-process (dcoord.cli.main) so the fast tier runs the tuner; the other tune tests run the real command."""
    from types import SimpleNamespace

    from dcoord.cli import main

    def tune(*args):
        rc = main(["tune", *args])
        cap = capsys.readouterr()
        return SimpleNamespace(returncode=rc, stdout=cap.out, stderr=cap.err)

    rng = np.random.default_rng(1)
    times = 1.0 + rng.exponential(0.05, size=(24, 12))
    times[rng.random(times.shape) < 0.1] *= 6
    csv = tmp_path / "profile.csv"
    np.savetxt(csv, times, delimiter=",", fmt="%.4f")
    p = tune(str(csv), "--max-delay", "2", "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["tuned_on"] == "rows 0..11" and len(data["evaluated_on"]) == 12  # every rotation of the rest
    pols = {(q["scheme"], q["rule"]) for q in data["policies"]}
    assert {("m-sgc", "earliest"), ("m-sgc", "straggler-rule"), ("gc-cyclic", "earliest")} <= pols
    for q in data["policies"]:
        assert len(q["eval_per_job_s"]) == 12
        assert q["eval_per_job_s_std"] == pytest.approx(np.std(q["eval_per_job_s"]))
        assert q["eval_per_job_s_mean"] == pytest.approx(np.mean(q["eval_per_job_s"]))
        assert q["eval_per_job_s_min"] <= q["eval_per_job_s_mean"] <= q["eval_per_job_s_max"]
    # the recommendation is made on the tune rows only, never on the held-out ones
    best_tune = min(q["tune_per_job_s"] for q in data["policies"])
    assert data["recommended"]["tune_per_job_s"] == best_tune
    assert data["recommended_over_paper_pick"] > 0
    # another profile as the evaluation set, and a clear error for an impossible split
    p = tune(str(csv), "--max-delay", "2", "--json", "--eval", str(csv), "--rules", "earliest")
    assert p.returncode == 0, p.stderr
    assert {q["rule"] for q in json.loads(p.stdout)["policies"]} == {"earliest"}
    p = tune(str(csv), "--max-delay", "2", "--holdout", "0.95")
    assert p.returncode != 0 and "--holdout" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.slow
def test_privacy_plan_json_hits_the_target():
    p = dcoord("privacy", str(EXAMPLES / "private.yaml"), "--json")
    assert p.returncode == 0, p.stderr
    plan = json.loads(p.stdout)
    assert plan["epsilon"] == pytest.approx(4.0, rel=0.01)
    assert plan["delta"] == 1e-5 and plan["accountant"] == "rdp"
    assert plan["mechanism"] == "diff2" and plan["restarts"] >= 1
    assert 0 < plan["difference_noise_gain"] < 1  # the example's c2 keeps difference noise from compounding


@pytest.mark.slow
def test_privacy_plan_warns_when_difference_noise_compounds():
    p = dcoord("privacy", str(EXAMPLES / "private.yaml"), "--set", "privacy.clip_diff=30")
    assert p.returncode == 0, p.stderr
    assert "warning" in p.stdout and "privacy.clip_diff" in p.stdout


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["run", "no/such.yaml"], 2, "no such config file"),
        (["run", "examples/quickstart.yaml", "--set", "coding.stragglers=6"], 2, "coding"),
        (["run", "examples/quickstart.yaml", "--set", "nonsense=1"], 2, "unknown key"),
        (["run", "examples/quickstart.yaml", "--workers", "0"], 2, "--workers"),
        (["privacy", "examples/quickstart.yaml"], 2, "no privacy section"),
        (["tune", "no/such.csv"], 2, "no such delay profile"),
        (["status", "127.0.0.1:1", "--timeout", "1"], 1, "127.0.0.1:1"),
    ],
)
@pytest.mark.slow
def test_bad_input_is_one_clear_line(args, code, needle):
    one_line_error(dcoord(*args), code, needle)


def _profile(tmp_path: Path, workers: int = 4) -> Path:
    csv = tmp_path / "profile.csv"
    np.savetxt(csv, 1.0 + np.random.default_rng(0).exponential(0.1, size=(20, workers)), delimiter=",", fmt="%.4f")
    return csv


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--mu", "-1"], "--mu: must be a finite number >= 0 (got -1)"),
        (["--mu", "nan"], "--mu: must be a finite number >= 0"),
        (["--mu", "x"], "--mu: 'x' is not a number"),
        (["--jobs", "0"], "--jobs: must be >= 1"),
        (["--max-delay", "-1"], "--max-delay: must be >= 0"),
        (["--workers", "0"], "--workers: must be >= 1"),
        (["--base-comp", "-0.5"], "--base-comp: must be a finite number >= 0"),
        (["--top", "0"], "--top: must be >= 1"),
        # more workers than the profile has columns, in-sample and held out
        (["--workers", "10", "--holdout", "0"], "simulate at most 4 workers"),
        (["--workers", "10"], "simulate at most 4 workers"),
    ],
)
@pytest.mark.slow
def test_tune_bad_numbers_are_one_clear_line(tmp_path, args, needle):
    one_line_error(dcoord("tune", str(_profile(tmp_path)), *args), 2, needle)


@pytest.mark.slow
def test_simulate_trace_narrower_than_the_workers_is_one_clear_line(tmp_path):
    p = dcoord("simulate", str(EXAMPLES / "simulate.yaml"), "--out", str(tmp_path), "--no-plot",
               "--set", f"simulate.trace={_profile(tmp_path)}")
    one_line_error(p, 2, "4 columns (workers) but 256 workers simulated; simulate at most 4 workers")
