import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# ../shared beside the repo; DCOORD_SHARED points elsewhere (e.g. from a git worktree)
SHARED = Path(os.environ.get("DCOORD_SHARED") or Path(__file__).resolve().parents[2] / "shared")


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():  # CI has it: a missing one is a broken set-up, not a reason to skip
        pytest.fail(f"no shared dir at {SHARED} (../shared beside the repo, or set DCOORD_SHARED); the trace tests need it")
    return SHARED


# -- the fast tier ---------------------------------------------------------------------------------------
# `./dev.sh test --fast` runs `pytest -m "not slow" --fast-tier`: the inner-loop tier (under 3 minutes on a
# 2-core machine). It must still touch every module of the package, so a change anywhere is exercised by
# something fast; --fast-tier fails the run when a module was never imported by the tests that ran.
#: modules the fast tier cannot import in the test process, and why
FAST_TIER_EXEMPT = {
    "dcoord.__main__": "runs `python -m dcoord`; the CLI it calls (dcoord.cli) is imported in-process",
    "dcoord.runtime.transport.torch_dp": "a torchrun process group's plane: only under torchrun "
                                         "(tests/test_launch.py, slow)",
    "dcoord.runtime.transport.mpi_dp": "an MPI communicator's plane: only under mpirun (tests/test_launch.py, slow)",
}


def pytest_addoption(parser):
    parser.addoption("--fast-tier", action="store_true",
                     help="fail at the end if a dcoord module was never imported by the tests that ran")


def pytest_sessionfinish(session, exitstatus):
    if not session.config.getoption("--fast-tier") or exitstatus != 0:
        return
    import pkgutil

    import dcoord

    every = {m.name for m in pkgutil.walk_packages(dcoord.__path__, "dcoord.") if not m.name.startswith("dcoord.proto")}
    missing = sorted(every - set(sys.modules) - set(FAST_TIER_EXEMPT))
    if missing:
        print(f"\nfast tier: {len(missing)} module(s) never imported by a fast test: {', '.join(missing)}; "
              "add a fast test that uses each (or list it with its reason in FAST_TIER_EXEMPT)")
        session.exitstatus = 1


# -- the image test last ------------------------------------------------------------------------------------
# tests/test_deploy_cluster.py runs the container image. CI builds the image in the background while the rest of
# the suite runs (.ci/run: a cold build is mostly disk and network, about as long as the suite), so those tests
# go last and wait for that build (DCOORD_IMAGE_BUILD_DONE) instead of holding the suite up at the start.
def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: item.nodeid.startswith("tests/test_deploy_cluster.py")
               or item.nodeid.startswith("test_deploy_cluster.py"))
