"""Under torchrun or mpirun: train JOB.yaml with dcoord.train and print what each rank moved on the data plane.

    torchrun --nproc-per-node 5 tests/launch_models_script.py JOB.yaml OUT     (see test_launch_models.py)
"""

import json
import os
import sys

import dcoord


def main() -> None:
    job, out = sys.argv[1], sys.argv[2]
    r = dcoord.train(job, out=out)
    keys = ("role", "worker_id", "rounds_computed", "rounds_completed", "models_received",
            "model_bytes_received", "data_plane_bytes")
    line = "DCOORD-MODELS " + json.dumps({"role": "coordinator", **{k: r[k] for k in keys if k in r}})
    os.write(1, (line + "\n").encode())  # one write: ranks share the terminal


if __name__ == "__main__":
    main()
