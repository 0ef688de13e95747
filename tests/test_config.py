"""Bad configs and CLI arguments end in one clear line and exit status 2, never a traceback."""

import subprocess
import sys

import pytest
import yaml

from dcoord.config import load_config
from dcoord.errors import ConfigError

GOOD = {
    "name": "t", "workload": "logreg-digits", "workers": 6, "rounds": 3,
    "coding": {"scheme": "gc-cyclic", "stragglers": 2},
    "inject": {"model": "fixed", "workers": [1, 4], "slowdown": 20},
}


def _with(**kv):
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    for path, value in kv.items():
        node = data
        keys = path.split("__")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return data


def test_good_config_and_overrides():
    cfg = load_config(None, ["coding.stragglers=1", "optimizer.lr=0.25"], data=GOOD)
    assert cfg.coding.stragglers == 1 and cfg.optimizer.lr == 0.25
    assert cfg.make_scheme().name == "gc-cyclic"


@pytest.mark.parametrize("data,pattern", [
    (_with(coding__colour="red"), r"coding\.colour: unknown key"),
    (_with(workers="six"), r"workers: .*integer"),
    (_with(coding__stragglers=6), r"coding.*0 <= s < workers"),
    (_with(coding__scheme="gc-fr", coding__stragglers=3), r"coding.*divide"),
    (_with(coding__scheme="fountain"), r"coding\.scheme: .*'fountain'"),
    (_with(inject__workers=[1, 9]), r"inject.*9"),
    (_with(inject__slowdown=0.5), r"inject\.slowdown"),
    (_with(workload="nope"), r"workload: unknown workload 'nope'"),
    (_with(optimizer__lr=-1), r"optimizer\.lr: must be > 0"),
    (_with(coding__scheme="m-sgc"), r"coding: .*m-sgc needs"),
])
def test_bad_config_names_the_field(data, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, data=data)


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["coding.stragglers"], data=GOOD)


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "dcoord", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


@pytest.mark.parametrize("content,pattern", [
    ("name: x\nworkers: 4\ncoding: {scheme: gc-cyclic, stragglers: 4}\n", "0 <= s < workers"),
    ("name: x\nworkers: 6\ncoding: {scheme: gc-fr, stragglers: 3}\n", "divide"),
    ("name: x\nbogus: 1\n", "bogus: unknown key"),
    ("name: x\nrounds: many\n", "rounds"),
    ("- just\n- a list\n", "top level must be a mapping"),
    ("name: [unclosed\n", "not valid YAML"),
])
@pytest.mark.slow
def test_cli_bad_config_exits_2_with_one_line(tmp_path, content, pattern):
    job = tmp_path / "job.yaml"
    job.write_text(content)
    r = _cli("run", str(job), "--out", str(tmp_path / "out"))
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and pattern in lines[0], r.stderr


@pytest.mark.slow
def test_cli_missing_file_and_bad_arguments(tmp_path):
    r = _cli("run", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2 and "no such config file" in r.stderr and "Traceback" not in r.stderr
    r = _cli("status", "not-an-address")
    assert r.returncode == 2 and "HOST:PORT" in r.stderr
    r = _cli("run", "examples/quickstart.yaml", "--workers", "0")
    assert r.returncode == 2 and "--workers" in r.stderr


def test_a_token_config_passed_on_to_workers_still_validates():
    """The coordinator's public config carries every default as if written (token.alpha too): a worker that
    validates it again must accept it (chain: srw never started before: every worker refused alpha)."""
    import yaml

    from dcoord.runtime.coordinator.sessions import public_config_yaml

    cfg = load_config(None, data={"workload": "logreg-digits", "workers": 6, "mode": "token",
                                  "optimizer": {"name": "sgd", "lr": 0.5}, "token": {"chain": "srw"}})
    again = load_config(None, data=yaml.safe_load(public_config_yaml(cfg)))
    assert again.token.chain == "srw"
