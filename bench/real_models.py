"""Real models through dcoord vs torchrun + DDP: round time, straggler tolerance, coordinator CPU split.

For resnet18-cifar and gpt-char, 4 workers, same per-worker batch, all measured side by side in one run:
  - no stragglers, uncoded: dcoord's round time on the standalone path (`dcoord run`: coordinator + worker
    processes over loopback, payloads on the tcp data plane) and on the torchrun path
    (`torchrun -m dcoord.launch`, payloads over gloo point-to-point), against torchrun +
    DistributedDataParallel (gloo) step time;
  - one worker 5x slow: gc-cyclic (s=1) round time against DDP's step time with one rank 5x slow;
  - the coordinator's CPU time per round (its event-loop thread) split into receive, decode, step, send.
With --gpu (on a machine with CUDA): resnet18-cifar with its 4 workers on the GPU, rounds per second against
plain single-process torch training the same global batch on that GPU, and the share of round time off the
GPU (1 - GPU compute of one global-batch step with the data resident / dcoord round time; an estimate).

Payloads are float32 here (coding.payload_dtype) for every run: exact for uncoded, and the dtype a user
would pick for 11M-parameter models. Medians over rounds after the first (warm-up).
On a 2-core machine four CPU-bound workers share two cores: absolute times measure that contention; the
ratios compare like with like (same processes, same batch, same machine). Each ratio is measured within one
trial (every path back to back); --trials such trials run interleaved across the models and the ratio
reported is their median, with each trial's beside it (a single run moves by +-0.35 on a shared 2-core
machine). --quick keeps it to minutes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _util import print_table, write_json

from dcoord.config import load_config
from dcoord.runtime.local import run_local

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
SIZES = {
    "quick": {
        "resnet18-cifar": ({"width": 16, "samples": 2048, "test_samples": 64, "eval_samples": 32}, 8, 1e-3),
        "gpt-char": ({"chars": 300000, "block": 64, "d_model": 128, "layers": 2, "heads": 4,
                      "eval_samples": 32}, 8, 1e-3),
    },
    "full": {
        "resnet18-cifar": ({"eval_samples": 64}, 32, 1e-3),
        "gpt-char": ({"eval_samples": 32}, 16, 3e-4),
    },
}
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
           PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
for _k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
    ENV.pop(_k, None)


def job(name: str, args: dict, b: int, workers: int, rounds: int, scheme: str = "uncoded", s: int = 0,
        slow: int | None = None, device: str = "cpu") -> dict:
    inject = {"model": "fixed", "workers": [slow], "slowdown": 5} if slow is not None else {"model": "none"}
    return {"name": f"bench-{name}", "workload": name, "workload_args": args, "workers": workers, "rounds": rounds,
            "batch_size": b * workers, "optimizer": {"name": "sgd", "lr": 0.01},
            "coding": {"scheme": scheme, "stragglers": s, "payload_dtype": "float32"}, "inject": inject,
            "device": device, "runtime": {"progress": False, "checkpoint_every": 0, "round_timeout_s": 600}}


def round_stats(out: Path) -> dict:
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][1:]
    cpu = {k: statistics.median(r["coordinator_cpu_s"][k] for r in recs)
           for k in ("receive", "decode", "step", "send")}
    compute = [statistics.mean(r["compute_s"].values()) for r in recs if r["compute_s"]]
    return {"round_s": statistics.median(r["wall_s"] for r in recs), "coordinator_cpu_s": cpu,
            "worker_compute_s": statistics.median(compute) if compute else None,
            "bytes_received": statistics.median(r["bytes_received"] for r in recs)}


def standalone(spec: dict, tmp: Path) -> dict:
    """`dcoord run`: coordinator and worker processes, control over gRPC, payloads and models on the tcp data
    plane (the standalone path's data plane; gRPC payloads are measured by bench/wire_round.py)."""
    out = tmp / f"run-{time.monotonic_ns()}"
    run_local(load_config(None, data={**spec, "transport": "tcp"}), out, progress=False)
    return round_stats(out)


def torchrun_path(spec: dict, tmp: Path) -> dict:
    out = tmp / f"tr-{time.monotonic_ns()}"
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           str(spec["workers"] + 1), "--max-restarts", "0", "-m", "dcoord.launch", str(path), "--out", str(out)]
    p = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=3600)
    if p.returncode != 0:
        raise RuntimeError(f"torchrun path failed:\n{p.stderr[-2000:]}")
    return round_stats(out)


def ddp(name: str, args: dict, b: int, workers: int, steps: int, tmp: Path, slow: int | None = None) -> dict:
    spec = {"workload": name, "workload_args": args, "seed": 0, "lr": 0.01, "batch_per_worker": b,
            "steps": steps, "slow_rank": -1 if slow is None else slow, "slowdown": 5,
            "out": str(tmp / f"ddp-{time.monotonic_ns()}.json")}
    path = tmp / "ddp.json"
    path.write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(workers),
           "--max-restarts", "0", str(BENCH / "ddp_step.py"), str(path)]
    p = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=3600)
    if p.returncode != 0:
        raise RuntimeError(f"DDP baseline failed:\n{p.stderr[-2000:]}")
    res = json.loads(Path(spec["out"]).read_text())
    return {"step_s": statistics.median(res["step_s"][1:]), "own_compute_s": res["own_compute_s"]}


def one_trial(name: str, size: str, workers: int, rounds: int, tmp: Path) -> dict:
    """Every path for one model, back to back: one side-by-side measurement."""
    args, b, _ = SIZES[size][name]
    print(f"[{name}] standalone uncoded ...", flush=True)
    sa = standalone(job(name, args, b, workers, rounds), tmp)
    print(f"[{name}] torchrun path uncoded ...", flush=True)
    tr = torchrun_path(job(name, args, b, workers, rounds), tmp)
    print(f"[{name}] torchrun + DDP ...", flush=True)
    dd = ddp(name, args, b, workers, rounds, tmp)
    print(f"[{name}] one worker 5x slow: gc-cyclic s=1 and DDP ...", flush=True)
    gc = standalone(job(name, args, b, workers, rounds, "gc-cyclic", 1, slow=workers - 1), tmp)
    dds = ddp(name, args, b, workers, rounds, tmp, slow=workers - 1)
    return {
        "standalone_uncoded": sa, "torchrun_path_uncoded": tr, "ddp": dd,
        "gc_cyclic_s1_one_5x_slow": gc, "ddp_one_5x_slow": dds,
        "ratio_standalone_vs_ddp": sa["round_s"] / dd["step_s"],
        "ratio_torchrun_path_vs_ddp": tr["round_s"] / dd["step_s"],
        "ratio_gc_cyclic_vs_ddp_one_slow": gc["round_s"] / dds["step_s"],
    }


RATIOS = ("ratio_standalone_vs_ddp", "ratio_torchrun_path_vs_ddp", "ratio_gc_cyclic_vs_ddp_one_slow")


def cpu_part(names: list[str], size: str, workers: int, rounds: int, trials: int, tmp: Path) -> dict:
    """``trials`` rounds of measurements, the models interleaved (trial 1 of each model, then trial 2, ...),
    so a slow spell on a shared machine hits one trial of each, not every path of one model. Each ratio is
    taken within a trial (side by side); the reported ratio is the median over trials, with every trial's."""
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for t in range(trials):
        for name in names:
            print(f"-- trial {t + 1}/{trials}", flush=True)
            runs[name].append(one_trial(name, size, workers, rounds, tmp))
    out = {}
    for name, ts in runs.items():
        args, b, _ = SIZES[size][name]
        mid = sorted(ts, key=lambda r: r["ratio_standalone_vs_ddp"])[len(ts) // 2]  # the median trial's detail
        out[name] = {
            "workload_args": args, "batch_per_worker": b, "workers": workers, "rounds": rounds,
            "trials": len(ts), **{k: v for k, v in mid.items() if not k.startswith("ratio_")},
            **{k: statistics.median(r[k] for r in ts) for k in RATIOS},
            "ratios_by_trial": {k: [r[k] for r in ts] for k in RATIOS},
            "by_trial": ts,
        }
    return out


def gpu_part(workers: int, rounds: int, b: int, tmp: Path) -> dict:
    """resnet18-cifar (full size) with its workers on the GPU vs plain single-process torch on that GPU."""
    import numpy as np
    import torch

    from dcoord.workloads import load
    from dcoord.workloads.batching import dataset_job_parts, partition_indices
    from dcoord.workloads.data import SampleSource

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device visible to torch"}
    args = {"eval_samples": 64}
    print("[gpu] dcoord resnet18-cifar, workers on cuda ...", flush=True)
    res = standalone(job("resnet18-cifar", args, b, workers, rounds, device="cuda"), tmp)
    # plain torch: one process, the same global batch (workers x b) per step, same samples
    dev = torch.device("cuda")
    wl = load("resnet18-cifar", 0, args)
    model = wl.model.to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    fr = [1.0 / workers] * workers
    parts = partition_indices(wl.num_samples, fr, 0)
    src = SampleSource(wl, dev)

    def step(x, y) -> None:
        opt.zero_grad()
        wl.loss_fn(model(x), y).backward()
        opt.step()

    def timed(fetch: bool, n: int) -> float:
        times = []
        resident = None
        for r in range(n):
            torch.cuda.synchronize()
            t = time.perf_counter()
            if fetch or resident is None:
                idx = np.concatenate(dataset_job_parts(parts, fr, b * workers, r, 0)[0])
                resident = src.fetch(idx)
            step(*resident)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        return statistics.median(times[1:])

    plain = timed(True, rounds)
    gpu_only = timed(False, rounds)
    return {
        "workers": workers, "batch_per_worker": b, "global_batch": b * workers, "rounds": rounds,
        "gpu": torch.cuda.get_device_name(0), "dcoord": res,
        "dcoord_rounds_per_s": 1 / res["round_s"], "plain_steps_per_s": 1 / plain,
        "plain_step_s_data_resident": gpu_only,
        "ratio_dcoord_vs_plain_rounds_per_s": plain / res["round_s"],
        "fraction_of_round_off_gpu_est": max(0.0, 1 - gpu_only / res["round_s"]),
        "worker_compute_share_of_round": (res["worker_compute_s"] or 0) / res["round_s"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small models and few rounds (this 2-core machine)")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--trials", type=int, default=3,
                    help="side-by-side measurements per model; ratios are the median over them")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--models", default="resnet18-cifar,gpt-char")
    ap.add_argument("--gpu", action="store_true", help="also the GPU part (needs CUDA)")
    ap.add_argument("--gpu-only", action="store_true", help="only the GPU part")
    ap.add_argument("--gpu-batch", type=int, default=64, help="per-worker batch of the GPU part")
    ap.add_argument("--name", default="real_models", help="results file bench/results/NAME.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    os.environ["PYTHONPATH"] = ENV["PYTHONPATH"]  # `dcoord run`'s worker processes import this checkout
    size = "quick" if args.quick else "full"
    rounds = args.rounds or (10 if args.quick else 20)
    if args.trials < 1 or rounds < 2:
        ap.error("--trials must be at least 1 and --rounds at least 2 (the first round is warm-up)")
    t0 = time.time()
    result: dict = {"size": size}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if not args.gpu_only:
            result["cpu"] = cpu_part(args.models.split(","), size, args.workers, rounds, args.trials, tmp)
        if args.gpu or args.gpu_only:
            result["gpu"] = gpu_part(args.workers, args.rounds or 12, args.gpu_batch, tmp)
    result["bench_wall_s"] = time.time() - t0
    path = write_json(args.name, result)
    for name, r in result.get("cpu", {}).items():
        print(f"\n{name} ({args.workers} workers, batch {r['batch_per_worker']}/worker, {size}; "
              f"median of {r['trials']} side-by-side trials, each trial's ratio in brackets)")
        rt = r["ratios_by_trial"]
        each = {k: " ".join(f"{x:.2f}" for x in v) for k, v in rt.items()}
        print_table(["path", "round/step s", "vs DDP", "trials"], [
            ["dcoord standalone (uncoded)", r["standalone_uncoded"]["round_s"], r["ratio_standalone_vs_ddp"],
             each["ratio_standalone_vs_ddp"]],
            ["dcoord torchrun path (uncoded)", r["torchrun_path_uncoded"]["round_s"],
             r["ratio_torchrun_path_vs_ddp"], each["ratio_torchrun_path_vs_ddp"]],
            ["torchrun + DDP (gloo)", r["ddp"]["step_s"], 1.0, ""],
            ["gc-cyclic s=1, one 5x slow", r["gc_cyclic_s1_one_5x_slow"]["round_s"],
             r["ratio_gc_cyclic_vs_ddp_one_slow"], each["ratio_gc_cyclic_vs_ddp_one_slow"]],
            ["DDP, one 5x slow", r["ddp_one_5x_slow"]["step_s"], 1.0, ""],
        ])
        c = r["standalone_uncoded"]["coordinator_cpu_s"]
        print("coordinator CPU s/round (standalone): " + ", ".join(f"{k} {v:.4f}" for k, v in c.items()))
    g = result.get("gpu")
    if g and "skipped" not in g:
        print(f"\nGPU ({g['gpu']}): dcoord {g['dcoord_rounds_per_s']:.2f} rounds/s vs plain "
              f"{g['plain_steps_per_s']:.2f} steps/s (ratio {g['ratio_dcoord_vs_plain_rounds_per_s']:.3f}); "
              f"off-GPU share of a round ~{g['fraction_of_round_off_gpu_est']:.2f}")
    elif g:
        print(f"\nGPU part skipped: {g['skipped']}")
    print(f"\nwrote {path} ({result['bench_wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
