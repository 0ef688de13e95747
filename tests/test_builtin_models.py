"""The real-scale built-ins at small settings: right size at defaults, and a few dcoord rounds lower the loss."""

import json

import pytest

from dcoord.config import load_config
from dcoord.runtime.local import run_local
from dcoord.workloads import evaluate, load

SMALL = {
    "resnet18-cifar": {"width": 8, "samples": 64, "test_samples": 64, "eval_samples": 64},
    "gpt-char": {"chars": 12000, "block": 32, "d_model": 64, "layers": 2, "heads": 2, "eval_samples": 64},
}


def test_default_sizes():
    assert 11_000_000 < load("resnet18-cifar", 0).num_params() < 11_500_000
    assert 10_000_000 <= load("gpt-char", 0).num_params() <= 25_000_000


def test_gpt_char_text_is_python_source_with_held_out_tail():
    wl = load("gpt-char", 0, SMALL["gpt-char"])
    x, y = wl.dataset[0]
    assert x.shape == (32,) and (x[1:] == y[:-1]).all()
    text = bytes(wl.dataset.tokens[:2000].tolist()).decode("utf-8", "replace")
    assert "def " in text or "import " in text
    assert len(wl.dataset) + len(wl.test_dataset) <= 12000 // 32


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18-cifar", "gpt-char"])
def test_builtin_trains_with_falling_loss(tmp_path, name):
    cfg = load_config(None, data={
        "workload": name, "workload_args": SMALL[name], "workers": 2, "rounds": 6, "batch_size": None,
        "optimizer": {"name": "adam", "lr": 1e-3 if name == "resnet18-cifar" else 5e-3},
        "coding": {"scheme": "gc-cyclic", "stragglers": 1}, "runtime": {"progress": False}})
    wl = load(name, cfg.seed, cfg.workload_args)
    before = evaluate.train_loss(wl, wl.model)
    summary = run_local(cfg, tmp_path, progress=False)
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses  # full-batch steps: falls every round
    assert summary["final_loss"] < before
    (acc,) = summary["test_accuracy"]  # one model: its accuracy on the held-out set, a fraction
    assert 0.0 <= acc <= 1.0


@pytest.mark.parametrize("example", ["resnet18.yaml", "gpt-char.yaml"])
def test_examples_validate(example):
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[1] / "examples" / example)
    assert cfg.workload in SMALL
