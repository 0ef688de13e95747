"""What a finished run tells the user: every model of a sweep in the summary table, the same final loss on
the bar, in the status and in the summary; and a metrics port in use is one line with nothing left behind."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys

import pytest
from rich.console import Console

from dcoord.config import load_config
from dcoord.runtime.coordinator.progress import summary_table
from dcoord.runtime.local import run_local

LRS = [0.1, 0.2, 0.5, 1.0]
SWEEP = {  # examples/sgc.yaml, shorter
    "name": "sweep", "workload": "logreg-digits", "seed": 0, "workers": 4, "rounds": 8,
    "optimizer": {"name": "sgd", "lr": LRS},
    "coding": {"scheme": "m-sgc", "B": 1, "W": 2, "lambda": 2, "models": 4},
    "runtime": {"checkpoint_every": 0},
}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_sweep_reports_every_model_and_the_final_loss_everywhere(tmp_path, capsys):
    seen = {}
    summary = run_local(load_config(None, data=SWEEP), tmp_path, progress=True,
                        on_started=lambda coord, *_: seen.setdefault("coord", coord))
    bar = capsys.readouterr().err
    final = summary["final_losses"]
    assert len(final) == 4 and summary["final_loss"] == final[0]
    # the bar's last loss and the status are the final model's loss (not the loss one step before)
    shown = [line for line in bar.splitlines() if "rounds/s" in line]
    assert shown and f"loss {final[0]:.4f}" in shown[-1], bar
    assert seen["coord"].status().last_loss == final[0]
    # summary.json: one entry per model, with its learning rate
    per = json.loads((tmp_path / "summary.json").read_text())["per_model"]
    assert [(m["model"], m["lr"], m["final_loss"]) for m in per] == list(zip(range(4), LRS, final))
    # the table: every model's final loss, not only model 0's
    out = io.StringIO()
    Console(file=out, width=200).print(summary_table(summary))
    table = out.getvalue()
    for m, (lr, loss) in enumerate(zip(LRS, final)):
        assert f"model {m} (lr {lr:g})" in table and f"{loss:.5f}" in table, table


def _taken_port() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_a_metrics_port_in_use_is_one_line_and_leaves_nothing(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({"name": "mp", "workload": "logreg-digits", "workers": 2, "rounds": 2}))
    out = tmp_path / "run"
    with _taken_port() as held:
        port = held.getsockname()[1]
        res = subprocess.run([sys.executable, "-m", "dcoord", "run", str(job), "--out", str(out), "--quiet",
                              "--metrics-port", str(port)], capture_output=True, text=True, timeout=100)
    assert res.returncode != 0
    err = res.stderr.strip().splitlines()
    assert len(err) == 1, res.stderr
    assert f"--metrics-port {port}" in err[0] and "choose another port" in err[0], err
    assert not out.exists(), list(out.rglob("*"))
