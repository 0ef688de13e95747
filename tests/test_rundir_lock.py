"""One process at a time per run directory: a second RunDir (another process, a --resume or --overwrite of
a directory in use) is refused with one clear line and touches nothing; a SIGKILLed holder leaves no lock."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dcoord.config import load_config
from dcoord.runtime.coordinator.resume import open_rundir
from dcoord.runtime.store import checkpoint as ckpt
from dcoord.runtime.store.dirlock import LOCK_NAME
from dcoord.runtime.store.rundir import RunDir, RunDirError, is_run

ROOT = Path(__file__).resolve().parents[1]

# holds a RunDir on argv[1] (mode argv[2]) until killed
HOLDER = """
import sys, time
from dcoord.runtime.store.rundir import RunDir
rd = RunDir(sys.argv[1], sys.argv[2])
print("ready", flush=True)
time.sleep(600)
"""


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT))


class _Holder:
    """A real child process holding the run directory's lock; killed (SIGKILL) on exit of the block."""

    def __init__(self, path: Path, mode: str = "new") -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), mode], env=_env(),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", (line, self.proc.stderr.read() if self.proc.poll() is not None else "")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.proc.stdout.close()
        self.proc.stderr.close()

    def __enter__(self) -> "_Holder":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()


def _crashed_run(path: Path) -> dict[str, bytes]:
    """A run directory as a crashed run leaves it (metrics, config, a checkpoint); returns its files' bytes."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.jsonl").write_text('{"round": 0}\n{"round": 1}\n')
    (path / "config.yaml").write_text("name: x\n")
    ckpt.save(path / "checkpoints", {"x": 1}, round=1, keep=2)
    return _files(path)


def _files(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p.name != LOCK_NAME}


def test_second_rundir_is_refused_naming_directory_and_holder_until_the_first_closes(tmp_path):
    run = tmp_path / "run"
    first = RunDir(run)
    for mode in ("new", "overwrite"):
        with pytest.raises(RunDirError, match=rf"^--out {run}: another dcoord process \(pid {os.getpid()} on host "
                                              r".*\) is using this run directory; wait for it .* another --out$"):
            RunDir(run, mode)
    # a refused attempt closed only its own descriptor: the first still holds the lock
    with pytest.raises(RunDirError, match="another dcoord process"):
        RunDir(run)
    first.close()
    first.close()  # idempotent
    second = RunDir(run, "overwrite")
    assert (run / LOCK_NAME).is_file()  # --overwrite keeps the lock file
    with pytest.raises(RunDirError, match="another dcoord process"):
        RunDir(run, "overwrite")
    second.finish({"rounds": 0}, {})  # finish() releases it too
    assert (run / "summary.json").is_file()
    third = RunDir(run, "overwrite")
    third.close()


def test_lock_file_alone_is_not_a_run(tmp_path):
    RunDir(tmp_path).close()
    assert (tmp_path / LOCK_NAME).is_file() and not is_run(tmp_path)
    RunDir(tmp_path).close()  # a new run there is allowed


def test_refused_resume_on_a_run_in_use_comes_before_the_run_checks(tmp_path):
    """A run in progress has no summary.json yet but may lack a checkpoint: the user is told it is in use."""
    run = tmp_path / "run"
    first = RunDir(run)
    with pytest.raises(RunDirError, match=rf"^--resume {run}: another dcoord process"):
        RunDir(run, "resume")
    first.close()
    with pytest.raises(RunDirError, match="no checkpoint there"):
        RunDir(run, "resume")
    RunDir(run).close()  # that refusal released its lock


def test_resume_refused_for_another_config_releases_the_lock(tmp_path):
    run = tmp_path / "run"
    _crashed_run(run)
    (run / "config.yaml").write_text(load_config(None, data={"seed": 0}).to_yaml())
    with pytest.raises(RunDirError, match="differs from the run's at seed"):
        open_rundir(load_config(None, data={"seed": 3}), run, "resume")
    RunDir(run, "resume").close()  # the refused resume did not keep the directory locked


def test_child_process_holds_the_lock_and_sigkill_frees_it(tmp_path):
    run = tmp_path / "run"
    before = _crashed_run(run)
    with _Holder(run, "resume") as holder:
        for mode in ("resume", "overwrite", "new"):
            with pytest.raises(RunDirError, match=rf"{run}: another dcoord process \(pid {holder.proc.pid} on host"):
                RunDir(run, mode)
            assert _files(run) == before, mode  # nothing removed (overwrite) or cut back (resume)
        assert holder.proc.poll() is None
        holder.kill()  # a crash: no cleanup runs in the child
        assert holder.proc.returncode == -signal.SIGKILL
        rd = RunDir(run, "resume")  # no stale lock
        rd.close()
    assert _files(run) == before


@pytest.mark.slow
def test_cli_run_on_a_directory_in_use_is_one_line_error(tmp_path):
    run = tmp_path / "run"
    before = _crashed_run(run)
    with _Holder(run, "resume") as holder:
        for flags in (["--out", str(run), "--overwrite"], ["--resume", str(run)]):
            p = subprocess.run([sys.executable, "-m", "dcoord", "run", str(ROOT / "examples" / "quickstart.yaml"),
                                *flags, "--quiet", "--set", "rounds=2"],
                               capture_output=True, text=True, timeout=120, env=_env(), cwd=tmp_path)
            assert p.returncode != 0, (flags, p.stdout, p.stderr)
            assert "Traceback" not in p.stderr, p.stderr
            lines = p.stderr.strip().splitlines()
            assert len(lines) == 1 and "another dcoord process" in lines[0] and f"pid {holder.proc.pid}" in lines[0] \
                and str(run) in lines[0], p.stderr
            assert _files(run) == before, flags
        assert holder.proc.poll() is None


def test_library_rundir_none_takes_no_lock(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rd = RunDir(None)
    rd.log_round({"round": 0})
    rd.close()
    other = RunDir(None)  # two at once are fine: nothing is locked
    other.finish({}, {})
    assert not list(tmp_path.rglob(LOCK_NAME)) and not list(tmp_path.iterdir())
