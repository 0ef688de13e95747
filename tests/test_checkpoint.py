"""Checkpoint files, scheme/walk state round trips, run directory safety (fast: no worker processes)."""

import errno
import json
import random

import numpy as np
import pytest
import torch

from dcoord.config import load_config
from dcoord.runtime.coordinator.resume import config_difference, default_out, open_rundir
from dcoord.runtime.store import checkpoint as ckpt
from dcoord.runtime.store.rundir import RunDir, RunDirError

# -- files -------------------------------------------------------------------------------------------


def test_roundtrip_keeps_numpy_tuples_and_tensors(tmp_path):
    state = {"a": np.arange(5, dtype=np.int64), "b": (1, 2.5, "x"), "t": torch.ones(3),
             "nested": {3: [np.zeros((2, 2), dtype=bool)], "none": None}, "big": 2**100}
    ckpt.save(tmp_path, state, round=4, keep=3)
    got, path = ckpt.load_latest(tmp_path)
    assert path.name == "ckpt-00000005.pt"
    assert got["a"].dtype == np.int64 and got["a"].tolist() == [0, 1, 2, 3, 4]
    assert got["b"] == (1, 2.5, "x") and torch.equal(got["t"], torch.ones(3))
    assert got["nested"][3][0].dtype == bool and got["nested"]["none"] is None and got["big"] == 2**100


def test_only_the_last_k_are_kept(tmp_path):
    for r in range(6):
        ckpt.save(tmp_path, {"r": r}, round=r, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["ckpt-00000005.pt", "ckpt-00000006.pt"]
    assert not [p for p in tmp_path.iterdir() if "tmp" in p.name]


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_corrupt_newest_falls_back_to_previous_with_a_warning(tmp_path, capsys, damage):
    ckpt.save(tmp_path, {"r": 1, "x": np.ones(100)}, round=1, keep=3)
    newest = ckpt.save(tmp_path, {"r": 2, "x": np.ones(100)}, round=2, keep=3)
    data = newest.read_bytes()
    if damage == "truncate":
        newest.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        i = len(data) - 50
        newest.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])
    else:
        newest.write_bytes(b"")
    got, path = ckpt.load_latest(tmp_path)
    assert got["r"] == 1 and path.name == "ckpt-00000002.pt"
    assert "ckpt-00000003.pt is unusable" in capsys.readouterr().err


def test_every_checkpoint_corrupt_is_a_clear_error(tmp_path):
    p = ckpt.save(tmp_path, {"r": 1}, round=1, keep=3)
    p.write_bytes(b"garbage")
    with pytest.raises(ckpt.CheckpointError, match="every checkpoint is corrupt"):
        ckpt.load_latest(tmp_path)
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint"):
        ckpt.load_latest(tmp_path / "missing")


def test_checkpoint_loads_without_running_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    import io

    buf = io.BytesIO()
    torch.save({"x": Evil()}, buf)
    import hashlib

    payload = buf.getvalue()
    (tmp_path / "ckpt-00000001.pt").write_bytes(
        ckpt.MAGIC + f" sha256={hashlib.sha256(payload).hexdigest()} round=0\n".encode() + payload)
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load_latest(tmp_path)


# -- scheme / walk state -----------------------------------------------------------------------------

SCHEMES = {
    "gc-cyclic": {"workers": 5, "coding": {"scheme": "gc-cyclic", "stragglers": 2}},
    "m-sgc": {"workers": 5, "coding": {"scheme": "m-sgc", "B": 2, "W": 3, "lambda": 2}},
    "sr-sgc": {"workers": 5, "coding": {"scheme": "sr-sgc", "B": 1, "W": 2, "lambda": 2}},
    "token-srrw": {"mode": "token", "workers": 8,
                   "token": {"chain": "srrw", "base": "mhrw", "alpha": 5, "tokens": 2,
                             "graph": {"kind": "watts-strogatz", "k": 4, "p": 0.1, "seed": 1}}},
    "token-nbrw": {"mode": "token", "workers": 8, "token": {"chain": "nbrw", "tokens": 1,
                                                            "graph": {"kind": "ring"}}},
}


def _drive(scheme, r, rng):
    """Plan round r, pick an accepted arrival set at random, close it, decode what is due."""
    tasks = scheme.tasks(r)
    n = scheme.n
    for _ in range(50):
        arrived = frozenset(w for w in range(n) if rng.random() < 0.8)
        if scheme.accepts(r, arrived):
            break
    else:
        arrived = frozenset(range(n))
    newly = scheme.close_round(r, arrived)
    decoded = {j: sorted((k.round, k.worker, k.slot, round(c, 12)) for k, c in scheme.decode(j).items())
               for j in newly}
    return tasks, arrived, decoded


@pytest.mark.parametrize("name", list(SCHEMES))
def test_scheme_state_dict_continues_exactly(tmp_path, name):
    data = {"rounds": 40, "batch_size": None, **SCHEMES[name]}
    cfg = load_config(None, data=data)
    a = cfg.make_scheme()
    if hasattr(a, "bind_data"):
        a.bind_data(1000)
    rng = random.Random(1)
    for r in range(17):
        _drive(a, r, rng)
    ckpt.save(tmp_path, {"scheme": a.state_dict()}, round=16, keep=1)
    b = cfg.make_scheme()
    if hasattr(b, "bind_data"):
        b.bind_data(1000)
    b.load_state_dict(ckpt.load_latest(tmp_path)[0]["scheme"])
    ra, rb = random.Random(7), random.Random(7)
    for r in range(17, 40 + a.delay):
        ta, arr_a, da = _drive(a, r, ra)
        tb, arr_b, db = _drive(b, r, rb)
        assert ta == tb and arr_a == arr_b and da == db, r
    if hasattr(a, "report"):
        assert a.report() == b.report()


# -- config comparison, run directories ----------------------------------------------------------------

def test_config_difference_names_the_field():
    a = load_config(None, data={"workers": 4, "coding": {"scheme": "gc-cyclic", "stragglers": 1}})
    b = load_config(None, data={"workers": 4, "coding": {"scheme": "gc-cyclic", "stragglers": 2}})
    assert config_difference(a.to_yaml(), b) == "coding.stragglers (run: 1, now: 2)"
    c = load_config(None, data={"workers": 4, "coding": {"scheme": "gc-cyclic", "stragglers": 1},
                                "runtime": {"round_timeout_s": 5, "checkpoint_every": 2}})
    assert config_difference(a.to_yaml(), c) is None  # operational settings may change


def test_default_run_dir_never_escapes_runs():
    for name in ["../../x", "/etc/passwd", "..", "a/b", ""]:
        out = default_out(name)
        assert out.parent.as_posix() == "runs" and out.name not in ("", ".", ".."), name


def test_existing_run_is_refused_unless_resume_or_overwrite(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"round": 0}\n')
    (tmp_path / "summary.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match=r"already holds a run; pass --resume .* --overwrite"):
        RunDir(tmp_path)
    assert (tmp_path / "metrics.jsonl").read_text() == '{"round": 0}\n'  # untouched
    cfg = load_config(None, data={})
    with pytest.raises(RunDirError, match="already finished"):
        open_rundir(cfg, tmp_path, "resume")
    (tmp_path / "summary.json").unlink()
    with pytest.raises(RunDirError, match="no checkpoint"):
        open_rundir(cfg, tmp_path, "resume")
    RunDir(tmp_path, "overwrite")
    assert not (tmp_path / "metrics.jsonl").exists()
    assert (tmp_path / "notes.txt").read_text() == "mine"  # only the run's own files are removed


def test_out_that_is_a_file_is_one_clear_error(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(RunDirError, match="is a file, not a directory"):
        RunDir(f)
    with pytest.raises(RunDirError, match="cannot write"):
        RunDir(f / "sub")


def test_resume_with_another_config_is_refused_naming_the_field(tmp_path):
    a = load_config(None, data={"workers": 4, "seed": 0})
    rd = RunDir(tmp_path)
    rd.write_config(a.to_yaml())
    ckpt.save(tmp_path / "checkpoints", {"x": 1}, round=2, keep=1)
    rd.close()  # the run is over (it crashed): its lock is gone, as the kernel drops a dead process's
    b = load_config(None, data={"workers": 4, "seed": 3})
    with pytest.raises(RunDirError, match=r"differs from the run's at seed \(run: 0, now: 3\)"):
        open_rundir(b, tmp_path, "resume")


class _FullDisk:
    """A file object that writes part of what it is given, then fails like a full disk."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.f, name)


def test_metrics_line_is_written_whole_or_not_at_all(tmp_path):
    rd = RunDir(tmp_path)
    rd.open_metrics()
    rd.log_round({"round": 0, "loss": 1.0})
    rd._metrics = _FullDisk(rd._metrics)
    with pytest.raises(RunDirError, match=r"cannot write .*metrics.jsonl: no space left on the device"):
        rd.log_round({"round": 1, "loss": 0.5})
    rd._metrics = rd._metrics.f
    rd.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["round"] for x in lines] == [0]


def test_resume_cuts_metrics_back_to_the_checkpoint(tmp_path):
    rd = RunDir(tmp_path)
    rd.open_metrics()
    for r in range(3):
        rd.log_round({"round": r})
    offset = rd.round_offset
    rd.log_round({"round": 3})
    rd._metrics.write(b'{"round": 4, "lo')  # the line being written when the process died
    rd.close()
    (tmp_path / "checkpoints").mkdir()
    ckpt.save(tmp_path / "checkpoints", {}, 2, 1)
    rd3 = RunDir(tmp_path, "resume")
    rd3.open_metrics(offset)
    rd3.log_round({"round": 3})
    rd3.close()
    assert [json.loads(x)["round"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2, 3]
