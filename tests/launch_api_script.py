"""A user's own training script that uses dcoord as a library under torchrun (see tests/test_launch.py).

    torchrun --nproc-per-node 4 tests/launch_api_script.py OUT ROUNDS   # rank 0 + 3 workers
"""

import json
import os
import sys

import dcoord
from dcoord.workloads.builtin import logreg_digits


def main() -> None:
    out, rounds = sys.argv[1], int(sys.argv[2])
    job = {"name": "api", "seed": 0, "rounds": rounds, "optimizer": {"name": "sgd", "lr": 0.5},
           "coding": {"scheme": "uncoded"}, "runtime": {"progress": False}}
    # a Workload object: every rank builds its own, dcoord runs the coordinator or a worker with it
    summary = dcoord.train(job, workload=logreg_digits(0), out=out)
    line = "DCOORD-API " + json.dumps({"role": summary.get("role", "coordinator"),
                                       "rounds": summary.get("rounds_completed", summary.get("rounds_computed"))})
    os.write(1, (line + "\n").encode())  # one write: ranks share the terminal


if __name__ == "__main__":
    main()
