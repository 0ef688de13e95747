"""Mutation testing with cosmic-ray over the pure-math packages and the coordinator's decode-and-step path.

Every target module is mutated in a temporary copy of the tree (never in place), one mutant at a time, and
its fast tier of tests runs against the copy; a mutant the tests pass "survived". Survivors listed in
docs/testing.md as equivalent (no observable change in results) are reported as such; any other survivor
makes the exit status 1. Run it through ``./dev.sh mutate [MODULE ...]`` (it installs cosmic-ray, a dev
tool pinned in constraints.txt); it takes long on a small machine, so name modules to run a few.

    python scripts/mutate.py                          # every target (hours on 2 cores)
    python scripts/mutate.py dcoord/walk/schedule.py  # one module
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_mutants import ROOT, copy_tree  # noqa: E402

# each module's fast tier of tests (seconds to a minute; the slow end-to-end runs are left out)
_OPTIM = ("tests/test_optim_reference.py",)
_CODING = ("tests/test_gc_decode.py",)
_PRIVACY = ("tests/test_privacy.py",)
TARGETS: dict[str, tuple[str, ...]] = {
    "dcoord/walk/sa.py": ("tests/test_walk_steps.py",),
    "dcoord/walk/schedule.py": ("tests/test_walk_steps.py",),
    "dcoord/runtime/coordinator/coordinator.py": (*_OPTIM, "tests/test_in_process.py"),
    "dcoord/coding/combine.py": _CODING,
    "dcoord/coding/gc.py": _CODING,
    "dcoord/coding/stable.py": _CODING,
    "dcoord/coding/sgc.py": ("tests/test_sgc.py",),
    "dcoord/coding/elastic.py": _CODING,
    "dcoord/privacy/mechanisms.py": _PRIVACY,
    "dcoord/privacy/accounting.py": _PRIVACY,
    "dcoord/privacy/per_sample.py": _PRIVACY,
    "dcoord/walk/chains.py": ("tests/test_walk.py", "tests/test_walk_sa.py"),
}
# where only some functions are mutated: the step-size and decode paths (the rest is covered elsewhere)
FUNCTIONS = {
    "dcoord/walk/sa.py": ("step",),
    "dcoord/walk/schedule.py": ("beta", "decode"),
    "dcoord/runtime/coordinator/coordinator.py": ("make_optimizer", "_decode_and_step"),
}
# survivors that cannot change a result, with why (docs/testing.md lists them): (module, the mutated line)
# -> (the operators that leave it equivalent, or None for any, why)
EQUIVALENT: dict[tuple[str, str], tuple[frozenset[str] | None, str]] = {
    ("dcoord/walk/schedule.py", "if token == self.models - 1:"): (
        frozenset({"core/ReplaceComparisonOperator_Eq_GtE"}),
        "token runs over 0..models-1: token >= models-1 holds exactly when token == models-1"),
    ("dcoord/runtime/coordinator/coordinator.py", 'if o.name == "adam":'): (
        frozenset({"core/ReplaceComparisonOperator_Eq_LtE", "core/ReplaceComparisonOperator_Eq_Is"}),
        "the name is validated as Literal['sgd', 'adam'] and pydantic hands back the Literal's own string: "
        "`is` agrees with `==`, and 'sgd' <= 'adam' is false"),
    ("dcoord/runtime/coordinator/coordinator.py",
     "if grads is None and self.privacy is None and self._grad_buf is None:"): (
        frozenset({"core/ReplaceAndWithOr"}),
        "only allocates the spare float64 buffer when it is not needed: the gradient still goes where `out` says"),
    ("dcoord/runtime/coordinator/coordinator.py", 'self.cpu_s["step"] += time.thread_time() - t_step'): (
        None, "CPU-time accounting for the metrics, not a result; tests assert no timings"),
    ("dcoord/runtime/coordinator/coordinator.py", 'self.cpu_s["decode"] += t_step - t_dec'): (
        None, "CPU-time accounting for the metrics, not a result; tests assert no timings"),
}
# bitwise and shift operators swapped in for arithmetic on floats raise TypeError at once: left out
SKIPPED_OPERATORS = re.compile(r"_(BitOr|BitAnd|BitXor|LShift|RShift)$")


def _line_ranges(path: Path, names: tuple[str, ...]) -> list[tuple[int, int]]:
    tree = ast.parse(path.read_text())
    return [(n.lineno, n.end_lineno or n.lineno) for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef) and n.name in names]


def _keep_only(db: Path, ranges: list[tuple[int, int]]) -> None:
    """Drop skipped operators and the mutants outside ``ranges`` (1-based lines; empty: keep all lines)."""
    con = sqlite3.connect(db)
    rows = con.execute("select job_id, start_pos_row, operator_name from mutation_specs").fetchall()
    drop = [(j,) for j, row, op in rows
            if SKIPPED_OPERATORS.search(op) or (ranges and not any(a <= row <= b for a, b in ranges))]
    con.executemany("delete from mutation_specs where job_id = ?", drop)
    con.executemany("delete from work_items where job_id = ?", drop)
    con.commit()
    con.close()


def run_module(tree: Path, module: str, tests: tuple[str, ...], timeout: float) -> list[dict]:
    """Mutate one module in ``tree`` with cosmic-ray; the outcome of every mutant."""
    work = tree / ".mutate"
    work.mkdir(exist_ok=True)
    stem = module.replace("/", "_").removesuffix(".py")
    cfg, db = work / f"{stem}.toml", work / f"{stem}.sqlite"
    # the tests see the copy and the project's own packages only (not cosmic-ray's dependencies)
    path = os.pathsep.join([str(tree), str(tree / "tests")])
    cmd = f"env PYTHONPATH={path} {sys.executable} -m pytest -x -q -p no:cacheprovider -m 'not slow' {' '.join(tests)}"
    cfg.write_text(
        "[cosmic-ray]\n"
        f'module-path = "{module}"\n'
        f"timeout = {timeout}\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(cmd)}\n"
        "[cosmic-ray.distributor]\n"
        'name = "local"\n'
    )
    cr = [sys.executable, "-m", "cosmic_ray.cli"]
    subprocess.run([*cr, "init", str(cfg), str(db)], cwd=tree, check=True)
    _keep_only(db, _line_ranges(tree / module, FUNCTIONS[module]) if module in FUNCTIONS else [])
    if os.environ.get("DCOORD_MUTATE_COUNT"):
        con = sqlite3.connect(db)
        print(module, con.execute("select count(*) from work_items").fetchone()[0], "mutants", flush=True)
        return []
    subprocess.run([*cr, "exec", str(cfg), str(db)], cwd=tree, check=True)
    con = sqlite3.connect(db)
    rows = con.execute(
        "select m.module_path, m.operator_name, m.occurrence, m.start_pos_row, r.test_outcome, r.diff "
        "from mutation_specs m join work_results r on m.job_id = r.job_id").fetchall()
    return [{"module": r[0], "operator": r[1], "occurrence": r[2], "line": r[3], "outcome": r[4], "diff": r[5]}
            for r in rows]


def equivalent(r: dict) -> str | None:
    """Why the survivor ``r`` is an equivalent mutant, or None when it is not listed as one."""
    removed = next((ln[1:].strip() for ln in (r["diff"] or "").splitlines()
                    if ln.startswith("-") and not ln.startswith("---")), "")
    ops, why = EQUIVALENT.get((r["module"], removed), (frozenset(), ""))
    return why if why and (ops is None or r["operator"] in ops) else None


def recheck(results: list[dict], tree: Path) -> list[dict]:
    """Apply each survivor of an earlier run (its diff) to a fresh copy and run its module's tests again:
    the survivors the tests written since then do not kill."""
    left = []
    path = os.pathsep.join([str(tree), str(tree / "tests")])
    for r in results:
        if r["outcome"] == "KILLED" or equivalent(r):
            continue
        module = r["module"]
        target = tree / module
        original = target.read_text()
        subprocess.run(["patch", "-s", "-p1"], input=r["diff"].split("\n", 1)[1] + "\n", text=True, cwd=tree, check=True)
        try:
            rc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m",
                                 "not slow", *TARGETS[module]], cwd=tree, env={**os.environ, "PYTHONPATH": path},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
        finally:
            target.write_text(original)
        verdict = "killed now" if rc != 0 else "still survives"
        print(f"{verdict}: {module} line {r['line']} {r['operator']}", flush=True)
        if rc == 0:
            left.append(r)
    return left


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("modules", nargs="*", help=f"modules to mutate (default: all of {len(TARGETS)})")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant's test run")
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "mutation.json", help="results file")
    ap.add_argument("--recheck", type=Path, help="re-run only the survivors of this earlier results file")
    args = ap.parse_args()
    if args.recheck:
        with tempfile.TemporaryDirectory(prefix="dcoord-mutate-") as tmp:
            copy_tree(Path(tmp))
            left = recheck(json.loads(args.recheck.read_text()), Path(tmp))
        print(f"{len(left)} survivors left")
        return 1 if left else 0
    unknown = [m for m in args.modules if m not in TARGETS]
    if unknown:
        print(f"mutate: not a target: {', '.join(unknown)} (targets: {', '.join(TARGETS)})", file=sys.stderr)
        return 2
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="dcoord-mutate-") as tmp:
        tree = Path(tmp)
        copy_tree(tree)
        import cosmic_ray  # cosmic-ray itself must import in its subprocesses

        site = str(Path(cosmic_ray.__file__).resolve().parent.parent)
        os.environ["PYTHONPATH"] = os.pathsep.join([site, *filter(None, [os.environ.get("PYTHONPATH")])])
        for module in args.modules or list(TARGETS):
            got = run_module(tree, module, TARGETS[module], args.timeout)
            results += got
            killed = sum(r["outcome"] == "KILLED" for r in got)
            print(f"{module}: {killed}/{len(got)} killed", flush=True)
            for r in got:
                if r["outcome"] != "KILLED":
                    why = equivalent(r)
                    what = f"equivalent ({why})" if why else "SURVIVED"
                    print(f"  {what}: line {r['line']} {r['operator']} #{r['occurrence']}\n{r['diff']}")
        shutil.rmtree(tree / ".mutate", ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    total, killed = len(results), sum(r["outcome"] == "KILLED" for r in results)
    equiv = sum(r["outcome"] != "KILLED" and equivalent(r) is not None for r in results)
    print(f"mutation score: {killed}/{total} killed ({100.0 * killed / max(total, 1):.1f} %), {equiv} equivalent, "
          f"{total - killed - equiv} non-equivalent survivors; details in {args.out}")
    return 0 if killed + equiv == total else 1


if __name__ == "__main__":
    raise SystemExit(main())
