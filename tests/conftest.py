import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# ../shared beside the repo; DCOORD_SHARED points elsewhere (e.g. from a git worktree)
SHARED = Path(os.environ.get("DCOORD_SHARED") or Path(__file__).resolve().parents[2] / "shared")


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"no shared dir at {SHARED} (../shared beside the repo, or set DCOORD_SHARED); the trace tests need it")
    return SHARED
