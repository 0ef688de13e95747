"""Test the tests: apply known-wrong edits ("mutants") to a copy of the tree and check a test fails on each.

Each mutant is a wrong optimizer that once passed the whole suite: the coordinator ignoring momentum and
weight decay, SA-SRRW's step size taken one hop late or early, and the token schedule's beta one round
ahead. For each, the tree (tracked and untracked, not ignored files) is copied to a temporary directory, the
one edit is made there, and the tests that should catch it run against the copy. A mutant whose tests pass
"survived" and the script exits 1.

    python scripts/check_mutants.py           # the fast tests (about a minute)
    python scripts/check_mutants.py --slow    # also the end-to-end runs that compare with the reference
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAST = "tests/test_optim_reference.py"
WALK = "tests/test_walk_steps.py"


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]  # pytest node ids / -k expressions run against the mutated copy
    slow: tuple[str, ...] = ()


MUTANTS = (
    Mutant("optimizer ignores momentum and weight decay", "dcoord/runtime/coordinator/coordinator.py",
           "return torch.optim.SGD(model.parameters(), lr=lr, momentum=o.momentum, weight_decay=o.weight_decay)",
           "return torch.optim.SGD(model.parameters(), lr=lr)",
           (f"{FAST}::test_coordinator_optimizer_steps_like_the_reference",),
           (f"{FAST}::test_coded_minibatch_run_equals_the_reference_optimizer",)),
    Mutant("Adam ignores weight decay", "dcoord/runtime/coordinator/coordinator.py",
           "return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=o.weight_decay)",
           "return torch.optim.Adam(model.parameters(), lr=lr)",
           (f"{FAST}::test_coordinator_optimizer_steps_like_the_reference",),
           (f"{FAST}::test_coded_minibatch_run_equals_the_reference_optimizer",)),
    Mutant("SA-SRRW step size one hop late", "dcoord/walk/sa.py",
           "beta = float(self.beta(self.walker.hops + 1))", "beta = float(self.beta(self.walker.hops + 2))",
           (f"{WALK}::test_sa_srrw_steps_with_beta_of_the_next_hop",)),
    Mutant("SA-SRRW step size one hop early", "dcoord/walk/sa.py",
           "beta = float(self.beta(self.walker.hops + 1))", "beta = float(self.beta(self.walker.hops))",
           (f"{WALK}::test_sa_srrw_steps_with_beta_of_the_next_hop",)),
    Mutant("token schedule uses beta(round + 1)", "dcoord/walk/schedule.py",
           "coeff = self.beta(round) / self.lr0", "coeff = self.beta(round + 1) / self.lr0",
           (f"{WALK}::test_token_decode_coefficient_is_beta_of_the_round_times_the_weight",),
           (f"{FAST}::test_token_run_with_step_schedule_equals_the_reference",)),
)


def copy_tree(dst: Path) -> None:
    """The working tree as git sees it (tracked and untracked, ignored files left out)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)


def run_tests(tree: Path, tests: tuple[str, ...]) -> int:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(tree / "tests")])}
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    return subprocess.run(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slow", action="store_true", help="also run the end-to-end comparisons (minutes)")
    args = ap.parse_args()
    survived = 0
    with tempfile.TemporaryDirectory(prefix="dcoord-mutants-") as tmp:
        tree = Path(tmp)
        copy_tree(tree)
        every = tuple(dict.fromkeys(t for m in MUTANTS for t in m.tests + (m.slow if args.slow else ())))
        if run_tests(tree, every) != 0:
            print("check_mutants: the tests fail on the unmutated tree; fix that first", file=sys.stderr)
            return 2
        for m in MUTANTS:
            target = tree / m.path
            original = target.read_text()
            if original.count(m.old) != 1:
                print(f"check_mutants: {m.path} no longer contains {m.old!r} once; update the mutant",
                      file=sys.stderr)
                return 2
            target.write_text(original.replace(m.old, m.new))
            try:
                for group in (m.tests,) + ((m.slow,) if args.slow and m.slow else ()):
                    rc = run_tests(tree, group)
                    verdict = "killed" if rc == 1 else "SURVIVED" if rc == 0 else f"error (pytest exit {rc})"
                    print(f"{verdict:>9}  {m.name}  [{m.path}]  by {' '.join(t.split('::')[-1] for t in group)}")
                    survived += rc != 1
            finally:
                target.write_text(original)
    return 1 if survived else 0


if __name__ == "__main__":
    raise SystemExit(main())
