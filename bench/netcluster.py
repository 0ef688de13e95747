"""dcoord against plain torch DDP on an emulated cluster: one network namespace per node on a bridge, each
node's link capped by tc at B (1 Gbit/s) in both directions. Run as root:

    sudo env PYTHONPATH=. python bench/netcluster.py               # n = 4 and 8, 10 MB model, tcp + allreduce
    sudo env PYTHONPATH=. python bench/netcluster.py --quick       # n = 4, fewer rounds: a check on a busy box
    python bench/netcluster.py --predict-only                      # the network model's predictions, no root

Per n, side by side: plain DDP (gloo, one rank per namespace, compute emulated by a sleep of --part-s per
step, one rank --slowdown x slower or not) and dcoord on each plane asked for (--planes; a plane not
registered in this dcoord is skipped with a note), uncoded and gc-cyclic s = 1, with and without the same
slow worker (``inject: fixed``), compute emulated with ``runtime.emulate_part_s = --part-s`` (gc-cyclic s = 1
computes 2 parts a round). The model is bench/netcluster_workload.py's: --model-mb MB of float32 parameters
on a few tiny samples. dcoord's round time is the median period between rounds in the run's metrics.jsonl
(``elapsed_s``), warm-up rounds skipped; DDP's step the median period between steps on rank 0, warm-up skipped.
The medians of --trials trials are reported with the floors 2nM/B (star) and 2M(n-1)/(nB) (ring) and the
network model's prediction (dcoord.sim.network, as `dcoord simulate` / `dcoord tune` use it).
Writes bench/results/netcluster.json. Everything made (namespaces, links, qdiscs, processes) is removed at
the end, on error and on Ctrl-C; leftovers of a killed run are removed at the next start.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import netcluster_net as net  # noqa: E402
from _util import print_table, write_json  # noqa: E402

REPO = HERE.parent
PORT = 50051
WORKLOAD = "netcluster_workload:wide"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "DCOORD_SHARED", "TMPDIR")}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    env["GLOO_SOCKET_IFNAME"] = "eth0"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def params_for(model_mb: float) -> int:
    """float32 parameters in a model of ``model_mb`` MB (10 MB = 2,500,000), a multiple of 8."""
    return int(model_mb * 1e6 / 4) // 8 * 8


def job_config(n: int, plane: str, scheme: str, slow: bool, a: argparse.Namespace) -> dict:
    coding = {"scheme": scheme} if scheme == "uncoded" else {"scheme": scheme, "stragglers": 1}
    return {
        "name": "netcluster", "workload": WORKLOAD, "workload_args": {"params": params_for(a.model_mb)},
        "seed": 0, "workers": n, "rounds": a.rounds, "batch_size": None, "device": "cpu",
        "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.0}, "coding": coding,
        "inject": {"model": "fixed", "workers": [n - 1], "slowdown": float(a.slowdown)} if slow else {"model": "none"},
        "transport": plane,
        "runtime": {"progress": False, "emulate_part_s": a.part_s, "checkpoint_every": 0, "round_timeout_s": 120.0},
    }


def median_after(values: list[float], warmup: int) -> float:
    vals = values[warmup:] if len(values) > warmup else values
    return float(statistics.median(vals))


def round_periods(metrics: Path) -> tuple[list[float], list[float], list[dict]]:
    """(periods between consecutive round ends, each round's own wall_s, each round's per-worker compute_s)
    from a run's metrics.jsonl."""
    recs = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    recs = [r for r in recs if "round" in r and "event" not in r]  # rounds, not membership/group events
    ends = [r["elapsed_s"] for r in recs]
    return [b - a for a, b in zip(ends, ends[1:])], [r["wall_s"] for r in recs], [r["compute_s"] for r in recs]


def part_compute_s(computes: list[dict], parts: int, slow: set[str], warmup: int) -> float:
    """The median compute of one part on the workers that are not made slow (emulated sleep + real work)."""
    vals = [v / parts for rec in computes[warmup:] or computes for w, v in rec.items() if w not in slow]
    return float(statistics.median(vals))


def run_dcoord(cl: net.Cluster, n: int, plane: str, scheme: str, slow: bool, a: argparse.Namespace,
               work: Path) -> dict:
    """One dcoord run on the cluster: coordinator in its namespace, worker i in w<i>; its round times."""
    tag = f"dc-{plane}-{scheme}-{'slow' if slow else 'fast'}-n{n}-{int(time.time() * 1000) % 10**8}"
    d = work / tag
    d.mkdir(parents=True)
    cfg = d / "job.yaml"
    cfg.write_text(yaml.safe_dump(job_config(n, plane, scheme, slow, a)))
    token = d / "token"
    fd = os.open(token, os.O_CREAT | os.O_WRONLY, 0o600)
    with open(fd, "w") as f:
        f.write(secrets.token_hex(32))
    env, py = _env(), sys.executable
    caddr = cl.nodes["coord"]
    coord = cl.popen("coord", [py, "-m", "dcoord", "coordinator", str(cfg), "--listen", f"{caddr}:{PORT}",
                               "--token-file", str(token), "--out", str(d / "run"), "--quiet",
                               "--wait-workers", "300"], env, d / "coordinator.log")
    for i in range(n):
        cl.popen(f"w{i}", [py, "-m", "dcoord", "worker", "--coordinator", f"{caddr}:{PORT}", "--id", str(i),
                           "--token-file", str(token), "--allow-workload", "netcluster_workload:*", "--no-rejoin"],
                 env, d / f"worker{i}.log")
    try:
        rc = coord.wait(timeout=a.run_timeout)
    except Exception:
        rc = None
    cl.stop_procs()
    metrics = d / "run" / "metrics.jsonl"
    if rc != 0 or not metrics.is_file():
        tail = (d / "coordinator.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{tag}: coordinator exit {rc}; its log ends:\n{tail}")
    periods, walls, computes = round_periods(metrics)
    parts = 1 if scheme == "uncoded" else 2  # gc-cyclic s = 1: s + 1 parts a worker
    return {"round_s": median_after(periods, a.warmup), "round_wall_s": median_after(walls, a.warmup),
            "periods": periods, "part_s": part_compute_s(computes, parts, {str(n - 1)} if slow else set(), a.warmup)}


def run_ddp(cl: net.Cluster, n: int, slow: bool, a: argparse.Namespace, work: Path) -> dict:
    """Plain DDP, one rank per worker namespace, rank 0's address as MASTER_ADDR; its step times."""
    d = work / f"ddp-{'slow' if slow else 'fast'}-n{n}-{int(time.time() * 1000) % 10**8}"
    d.mkdir(parents=True)
    spec = json.dumps({"params": params_for(a.model_mb), "compute_s": a.part_s, "slowdown": a.slowdown,
                       "slow_rank": n - 1 if slow else -1, "steps": a.rounds})
    out = d / "steps.json"
    procs = []
    for r in range(n):
        env = {**_env(), "MASTER_ADDR": cl.nodes["w0"], "MASTER_PORT": "29511", "RANK": str(r),
               "WORLD_SIZE": str(n), "LOCAL_RANK": "0"}
        procs.append(cl.popen(f"w{r}", [sys.executable, str(HERE / "netcluster_ddp.py"), spec, str(out)], env,
                              d / f"rank{r}.log"))
    try:
        rc = procs[0].wait(timeout=a.run_timeout)
    except Exception:
        rc = None
    cl.stop_procs()
    if rc != 0 or not out.is_file():
        raise RuntimeError(f"DDP n={n}: rank 0 exit {rc}; its log ends:\n"
                           + (d / "rank0.log").read_text(errors="replace")[-2000:])
    data = json.loads(out.read_text())
    return {"step_s": median_after(data["step_s"], a.warmup), "steps": data["step_s"],
            "part_s": a.part_s + data["fwd_bwd_s"]}


def predictions(n: int, a: argparse.Namespace, planes: list[str], part_s: dict[str, float] | None = None) -> dict:
    """The network model's round time for every case of this n (via the simulator, as `dcoord simulate`),
    with --part-s of compute per part, or per case the compute per part measured in that run (``part_s``:
    the workers' own compute_s, i.e. what a measured delay profile would give `dcoord tune`)."""
    from dcoord.coding.registry import make_scheme
    from dcoord.sim import ModelDelays, SimulateConfig
    from dcoord.sim.network import Network, ddp_step_s
    from dcoord.sim.planes import close_times, ddp_compute_s, predict_planes
    from dcoord.stragglers import InjectConfig, make_straggler_model

    nw = Network(link_gbps=a.gbps, model_mb=a.model_mb, latency_ms=a.latency_ms, overhead_ms=a.overhead_ms)
    cfg = SimulateConfig(jobs=a.rounds)
    out: dict = {}
    for slow in (False, True):
        inj = InjectConfig(model="fixed", workers=[n - 1], slowdown=float(a.slowdown)) if slow else InjectConfig()
        key = "slow" if slow else "fast"

        def source(case: str, inj: InjectConfig = inj) -> ModelDelays:
            # a part is part_s of compute; the job is split into n parts (uncoded, gc-cyclic): base_comp = n part_s
            ps = (part_s or {}).get(case, a.part_s)
            return ModelDelays(make_straggler_model(inj, n, 0), base_time=a.base_time, base_comp=n * ps)

        out[f"ddp/{key}"] = ddp_step_s(ddp_compute_s(n, source(f"ddp/{key}"), cfg), n, nw)
        for scheme in ("uncoded", "gc-cyclic"):
            kw = {} if scheme == "uncoded" else {"s": 1}
            for plane in planes:
                case = f"{plane}/{scheme}/{key}"
                close, _ = close_times(lambda scheme=scheme, kw=kw: make_scheme(scheme, n, jobs=a.rounds, **kw),
                                       source(case), cfg, nw, [plane])
                out[case] = predict_planes(close, n, nw, (plane,))[plane]
    return out


def floors(n: int, a: argparse.Namespace) -> tuple[float, float]:
    from dcoord.sim.network import Network, ring_floor_s, star_floor_s

    nw = Network(link_gbps=a.gbps, model_mb=a.model_mb)
    return star_floor_s(n, nw), ring_floor_s(n, nw)


def measure_cap(cl: net.Cluster, src: str, dst: str, nbytes: int) -> float:
    """Seconds to push ``nbytes`` over TCP from node ``src`` to node ``dst`` (through both capped links)."""
    addr = cl.nodes[dst]
    server = ("import socket,sys;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
              f"s.bind(('{addr}',29600));s.listen(1);c,_=s.accept();n=0\n"
              "while True:\n b=c.recv(1<<20)\n if not b: break\n n+=len(b)\nc.sendall(b'k');print(n)")
    client = ("import socket,time;s=socket.create_connection(("
              f"'{addr}',29600));t=time.perf_counter();s.sendall(b'x'*{nbytes});s.shutdown(socket.SHUT_WR);"
              "s.recv(1);print(time.perf_counter()-t)")
    with tempfile.TemporaryDirectory(prefix="dcnb-cap-") as tmp:
        srv = cl.popen(dst, [sys.executable, "-c", server], _env(), Path(tmp) / "server.log")
        for _ in range(50):  # until the server listens
            p = cl.run(src, [sys.executable, "-c", client], timeout=120)
            if p.returncode == 0:
                srv.wait(timeout=30)
                return float(p.stdout.strip())
            time.sleep(0.1)
    raise RuntimeError(f"could not reach {dst} from {src}: {p.stderr.strip()[-300:]}")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", default="4,8", help="worker counts, comma-separated [4,8]")
    ap.add_argument("--planes", default="tcp,allreduce", help="dcoord planes to run [tcp,allreduce]")
    ap.add_argument("--gbps", type=float, default=1.0, help="each node's link, Gbit/s each way [1]")
    ap.add_argument("--latency-ms", type=float, default=0.0, help="one-way latency per link (netem) [0]")
    ap.add_argument("--model-mb", type=float, default=10.0, help="model size, MB of float32 parameters [10]")
    ap.add_argument("--part-s", type=float, default=0.15, help="emulated compute per part / DDP step, s [0.15]")
    ap.add_argument("--slowdown", type=float, default=5.0, help="the slow worker's factor [5]")
    ap.add_argument("--rounds", type=int, default=14, help="rounds (DDP steps) per run [14]")
    ap.add_argument("--warmup", type=int, default=3, help="leading periods skipped [3]")
    ap.add_argument("--trials", type=int, default=1, help="runs per case; the median is reported [1]")
    ap.add_argument("--overhead-ms", type=float, default=None,
                    help="the network model's per-round overhead (default: dcoord.sim.network's calibrated one)")
    ap.add_argument("--calibrate", action="store_true",
                    help="fit the per-round overhead on the first n's star plane, uncoded, no slow worker, and "
                    "predict every other case with it (the fit is in the JSON)")
    ap.add_argument("--base-time", type=float, default=0.0, help="the model's load-independent compute, s [0]")
    ap.add_argument("--run-timeout", type=float, default=300.0, help="seconds one run may take [300]")
    ap.add_argument("--quick", action="store_true", help="n = 4, 8 rounds, 2 warm-up: a check on a busy machine")
    ap.add_argument("--predict-only", action="store_true", help="print the network model's predictions; run nothing")
    ap.add_argument("--no-slow", action="store_true", help="skip the cases with a slow worker")
    ap.add_argument("--out", type=Path, default=None, help="results folder [bench/results]")
    ap.add_argument("--keep", type=Path, default=None, help="keep every run's logs and run directory here")
    return ap


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    if a.quick:
        a.n, a.rounds, a.warmup = "4", 8, 2
    if a.overhead_ms is None:
        from dcoord.sim.network import DEFAULT_OVERHEAD_MS

        a.overhead_ms = DEFAULT_OVERHEAD_MS
    ns = [int(x) for x in a.n.split(",") if x.strip()]
    import dcoord.runtime.transport  # noqa: F401  (registers the planes)
    from dcoord.runtime.transport.registry import plane_names

    asked = [p.strip() for p in a.planes.split(",") if p.strip()]
    planes = [p for p in asked if p in plane_names()]
    skipped = [p for p in asked if p not in planes]
    for p in skipped:
        print(f"plane {p}: not registered in this dcoord, skipped")
    slows = (False,) if a.no_slow else (False, True)
    from dcoord.sim.planes import collective_planes, plane_family, star_planes

    modelled = [p for p in asked if p in star_planes() + collective_planes()]  # predicted even where not registered
    results: dict = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
                     "skipped_planes": skipped, "cases": []}
    if not a.predict_only:
        why = net.unavailable()
        if why:
            print(f"netcluster: {why}", file=sys.stderr)
            return 2
        for ns_name in net.cleanup_leftovers():
            print(f"removed a leftover namespace of a crashed run: {ns_name}")
    for n in ns:
        star, ring = floors(n, a)
        cases = [("ddp", "-", s) for s in slows] + [(p, sc, s) for p in planes for sc in ("uncoded", "gc-cyclic")
                                                    for s in slows]
        measured: dict = {}
        part_s: dict[str, float] = {}
        if not a.predict_only:
            with tempfile.TemporaryDirectory(prefix="dcnb-") as tmp, net.Cluster(a.gbps, a.latency_ms) as cl:
                if a.keep:
                    a.keep.mkdir(parents=True, exist_ok=True)
                    tmp = str(a.keep)
                cl.add_node("coord")
                for i in range(n):
                    cl.add_node(f"w{i}")
                for plane, scheme, slow in cases:
                    key = f"{plane}/{scheme}/{'slow' if slow else 'fast'}" if plane != "ddp" else \
                        f"ddp/{'slow' if slow else 'fast'}"
                    trials, parts = [], []
                    for _ in range(a.trials):
                        r = (run_ddp(cl, n, slow, a, Path(tmp)) if plane == "ddp"
                             else run_dcoord(cl, n, plane, scheme, slow, a, Path(tmp)))
                        trials.append(r["step_s"] if plane == "ddp" else r["round_s"])
                        parts.append(r["part_s"])
                    measured[key] = (float(statistics.median(trials)), trials)
                    part_s[key] = float(statistics.median(parts))
                    print(f"n={n} {key}: {measured[key][0]:.3f} s (trials {[round(t, 3) for t in trials]}; "
                          f"compute per part {part_s[key]:.3f} s)", flush=True)
        if a.calibrate and "calibration" not in results and part_s:
            star_plane = next((p for p in planes if plane_family(p) == "star"), None)
            ck = f"{star_plane}/uncoded/fast"
            if ck in measured:  # fit the per-round overhead on this one case; every other case checks it
                a.overhead_ms = 0.0
                base = predictions(n, a, [star_plane], part_s)[ck]
                a.overhead_ms = max(0.0, 1e3 * (measured[ck][0] - base))
                results["calibration"] = {"n": n, "case": ck, "overhead_ms": a.overhead_ms}
                print(f"calibrated on n={n} {ck}: per-round overhead {a.overhead_ms:.0f} ms", flush=True)
        nominal = predictions(n, a, modelled)
        calibrated = predictions(n, a, modelled, part_s) if part_s else nominal
        for slow in slows:
            k = "slow" if slow else "fast"
            ddp = measured.get(f"ddp/{k}", (None, []))[0]
            for plane in modelled:
                for scheme in ("uncoded", "gc-cyclic"):
                    key = f"{plane}/{scheme}/{k}"
                    m = measured.get(key, (None, []))
                    results["cases"].append({
                        "n": n, "plane": plane, "scheme": scheme if scheme == "uncoded" else "gc-cyclic s=1",
                        "slow_worker": slow, "dcoord_round_s": m[0], "dcoord_trials_s": m[1], "ddp_step_s": ddp,
                        "ratio": m[0] / ddp if m[0] and ddp else None, "star_floor_s": star, "ring_floor_s": ring,
                        "measured_part_s": part_s.get(key), "measured_ddp_part_s": part_s.get(f"ddp/{k}"),
                        "predicted_round_s": calibrated[key], "predicted_ddp_step_s": calibrated[f"ddp/{k}"],
                        "predicted_round_nominal_s": nominal[key], "predicted_ddp_nominal_s": nominal[f"ddp/{k}"],
                        "prediction_error": (calibrated[key] - m[0]) / m[0] if m[0] else None,
                        "calibration_case": results.get("calibration", {}).get("n") == n
                        and results.get("calibration", {}).get("case") == key,
                        "overhead_ms": a.overhead_ms,
                        "ddp_prediction_error": (calibrated[f"ddp/{k}"] - ddp) / ddp if ddp else None,
                    })
    # the plane the network model picks (as `dcoord tune` would) against the one measured faster
    results["picks"] = []
    by = {}
    for c in results["cases"]:
        by.setdefault((c["n"], c["scheme"], c["slow_worker"]), []).append(c)
    for (n, scheme, slow), cs in by.items():
        if len(cs) < 2:
            continue
        pred = min(cs, key=lambda c: c["predicted_round_s"])["plane"]
        done = [c for c in cs if c["dcoord_round_s"] is not None]
        meas = min(done, key=lambda c: c["dcoord_round_s"])["plane"] if len(done) == len(cs) else None
        results["picks"].append({"n": n, "scheme": scheme, "slow_worker": slow, "predicted": pred, "measured": meas})
        print(f"n={n} {scheme}{', slow worker' if slow else ''}: the model picks {pred}"
              + (f", measured faster: {meas}" if meas else " (not every plane measured)"))

    def f(v):
        return "-" if v is None else v

    rows = []
    for c in results["cases"]:
        rows.append([c["n"], c["plane"], c["scheme"], "yes" if c["slow_worker"] else "no", f(c["dcoord_round_s"]),
                     f(c["ddp_step_s"]), f(c["ratio"]), c["star_floor_s"], c["ring_floor_s"],
                     c["predicted_round_s"], c["predicted_ddp_step_s"],
                     "-" if c["prediction_error"] is None else f"{100 * c['prediction_error']:+.0f}%"])
    print(f"\n{a.gbps:g} Gbit/s links, {a.model_mb:g} MB model, {a.part_s:g} s per part, slow worker "
          f"{a.slowdown:g}x; seconds, median of {a.trials} trial(s) of {a.rounds} rounds ({a.warmup} warm-up)")
    print_table(["n", "plane", "scheme", "slow", "dcoord round", "DDP step", "ratio", "star 2nM/B",
                 "ring 2M(n-1)/(nB)", "predicted", "pred. DDP", "pred. err"], rows)
    if not a.predict_only:
        errs = [abs(c["prediction_error"]) for c in results["cases"]
                if c["prediction_error"] is not None and not c["calibration_case"]]
        if errs:
            print(f"largest prediction error: {100 * max(errs):.0f}% (target: within 25%); predictions use the "
                  "compute per part each run measured (its workers' compute_s), as a measured profile gives "
                  "`dcoord tune`; the JSON also holds the nominal ones (--part-s)")
        path = write_json("netcluster", results, a.out)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
