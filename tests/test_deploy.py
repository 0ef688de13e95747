"""deploy/: every kustomization renders, validates offline and strictly, and runs the command lines dcoord has.

Static checks here; the emulated cluster (network namespaces) is in test_deploy_cluster.py.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml
from deploy_manifests import (
    DEPLOY,
    ROOT,
    argv,
    environ,
    find,
    flag_values,
    kustomizations,
    mount_for,
    mounted_file,
    one,
    pod_templates,
    render,
    resolve_env,
    validate_k8s,
    validate_kubeflow,
)

from dcoord.config import load_config

#: the oldest Kubernetes the manifests are written for (Indexed Job backoffLimitPerIndex: 1.29) and the
#: newest whose schemas kubernetes-validate ships
K8S_VERSIONS = ("1.29", "1.37")
#: environment variables the manifests may set that are not dcoord's
STANDARD_ENV = {"HOME"}
INDEX_FIELD = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
SAMPLE_FIELDS = {INDEX_FIELD: "2", "status.podIP": "10.0.0.7"}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {str(k): render(k) for k in kustomizations()}


def _workloads(docs):
    for d in docs:
        for role, tpl in pod_templates(d):
            for c in tpl["spec"]["containers"]:
                yield d, role, tpl, c


def dockerfile() -> dict[str, str]:
    """The last value of each Dockerfile instruction (continuation lines joined)."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out[word.upper()] = rest.strip()
    return out


def parse_dcoord(args: list[str], env: dict[str, str]) -> argparse.Namespace:
    """dcoord's real parser, built under ``env`` (options read DCOORD_* when it is built)."""
    from dcoord.cli import build_parser

    err = io.StringIO()
    with environ(env), contextlib.redirect_stderr(err):
        try:
            return build_parser().parse_args(args)
        except SystemExit:
            raise AssertionError(f"dcoord {shlex.join(args)} is refused by dcoord's parser: {err.getvalue()}") from None


def parse_launch(args: list[str], env: dict[str, str]) -> argparse.Namespace:
    from dcoord.launch import build_parser

    err = io.StringIO()
    with environ(env), contextlib.redirect_stderr(err):
        try:
            return build_parser().parse_args(args)
        except SystemExit:
            raise AssertionError(f"python -m dcoord.launch {shlex.join(args)} is refused: {err.getvalue()}") from None


# ------------------------------------------------------------------------------------- render + validate
@pytest.mark.slow
def test_every_kustomization_renders_and_validates_strictly(rendered):
    assert {"common", "base", "overlays/cpu", "overlays/gpu", "kubeflow/pytorchjob", "kubeflow/mpijob",
            "tools/fetch"} <= set(rendered)
    for name, docs in rendered.items():
        assert docs, f"{name} rendered nothing"
        for d in docs:
            for v in K8S_VERSIONS:
                where = f"deploy/{name}: {d['kind']}/{d['metadata']['name']} (Kubernetes {v})"
                try:
                    if d["apiVersion"].startswith("kubeflow.org/"):
                        validate_kubeflow(d, v)
                    else:
                        validate_k8s(d, v)
                except Exception as exc:  # noqa: BLE001 - report which manifest failed and why
                    raise AssertionError(f"{where}: {getattr(exc, 'message', exc)}") from None


def test_validators_are_strict(rendered):
    """The validation above would catch a misspelt field, in built-in kinds and in the Kubeflow CRDs."""
    import kubernetes_validate

    job = json.loads(json.dumps(one(rendered["base"], "Job", "dcoord-coordinator")))
    job["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {"grpc": {"port": 8081}}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_k8s(job, K8S_VERSIONS[0])
    job = json.loads(json.dumps(one(rendered["base"], "Job", "dcoord-workers")))
    job["spec"]["completions"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_k8s(job, K8S_VERSIONS[0])
    for name, kind, bad in [("kubeflow/pytorchjob", "PyTorchJob", ("spec", "nprocsPerNode", "1")),
                            ("kubeflow/mpijob", "MPIJob", ("spec", "slotsPerWorker", "one")),
                            ("kubeflow/mpijob", "MPIJob", ("template", "restartpolicy", "Never"))]:
        doc = json.loads(json.dumps(one(rendered[name], kind)))
        if bad[0] == "spec":
            doc["spec"][bad[1]] = bad[2]
        else:
            doc["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"][bad[1]] = bad[2]
        with pytest.raises(AssertionError):
            validate_kubeflow(doc, K8S_VERSIONS[0])


# ------------------------------------------------------------------------------ dcoord's command lines
def test_container_commands_and_env_are_dcoords(rendered):
    """Each dcoord container's command line parses with dcoord's parser, and each DCOORD_* variable the
    manifest sets changes what dcoord reads (no setting exists only in YAML)."""
    entry = json.loads(dockerfile()["ENTRYPOINT"])
    seen = 0
    for name, docs in rendered.items():
        for _d, role, tpl, c in _workloads(docs):
            cmd = argv(c)
            if cmd[:1] != ["dcoord"]:
                continue
            seen += 1
            assert c.get("command") == entry, f"{name} {role}: command {c.get('command')} is not the image's {entry}"
            env = resolve_env(c, tpl["metadata"], SAMPLE_FIELDS)
            assert all(k.startswith("DCOORD_") or k in STANDARD_ENV for k in env), f"{name} {role}: {sorted(env)}"
            parse_dcoord(cmd[1:], env)
            bare = vars(parse_dcoord(cmd[1:], {}))
            for k, v in env.items():
                if k.startswith("DCOORD_"):
                    assert vars(parse_dcoord(cmd[1:], {k: v})) != bare, \
                        f"{name} {role}: dcoord does not read ${k} (set to {v!r} in the manifest)"
    assert seen >= 6  # coordinator + workers in base, cpu, gpu


@pytest.mark.parametrize("variant", ["base", "overlays/cpu", "overlays/gpu"])
def test_plain_kubernetes_wiring(rendered, variant, tmp_path):
    docs = rendered[variant]
    coord_job, workers_job = one(docs, "Job", "dcoord-coordinator"), one(docs, "Job", "dcoord-workers")
    ctpl, wtpl = coord_job["spec"]["template"], workers_job["spec"]["template"]
    (cc,), (wc,) = ctpl["spec"]["containers"], wtpl["spec"]["containers"]
    cenv = resolve_env(cc, ctpl["metadata"], SAMPLE_FIELDS)
    wenv = resolve_env(wc, wtpl["metadata"], SAMPLE_FIELDS)
    cns, wns = parse_dcoord(argv(cc)[1:], cenv), parse_dcoord(argv(wc)[1:], wenv)
    assert (cns.command, wns.command) == ("coordinator", "worker")

    # the job config in the ConfigMap (with the coordinator's --set) is what the coordinator runs and what
    # the workers receive; its worker count is the Indexed Job's
    cm = one(docs, "ConfigMap", "dcoord-job")
    vol, key = mounted_file(ctpl, cc, cns.job)
    assert vol["configMap"]["name"] == cm["metadata"]["name"] and key in cm["data"]
    (tmp_path / "job.yaml").write_text(cm["data"][key])
    cfg = load_config(str(tmp_path / "job.yaml"), list(cns.set or []))
    assert cfg.transport == "tcp", "the plain-Kubernetes job runs the standalone tcp data plane"
    spec = workers_job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == cfg.workers
    # the completion index becomes the worker id
    assert wns.id == int(SAMPLE_FIELDS[INDEX_FIELD])

    # ports: listen / data / metrics / health = container ports = probes = Service = NetworkPolicy
    ports = {p["name"]: p["containerPort"] for p in cc["ports"]}
    assert int(cns.listen.rpartition(":")[2]) == ports["grpc"]
    assert cfg.runtime.data_port == ports["data"]  # a fixed port: 0 (any free one) could not be named below
    assert cns.metrics_port == ports["metrics"] and cns.health_port == ports["health"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert cc[probe]["grpc"]["port"] == cns.health_port
    ann = ctpl["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and int(ann["prometheus.io/port"]) == cns.metrics_port
    svc = one(docs, "Service", "dcoord-coordinator")
    labels_c, labels_w = ctpl["metadata"]["labels"], wtpl["metadata"]["labels"]
    assert _selects(svc["spec"]["selector"], labels_c) and not _selects(svc["spec"]["selector"], labels_w)
    svc_ports = {p["targetPort"]: p["port"] for p in svc["spec"]["ports"]}
    host, _, port = wns.coordinator.rpartition(":")
    assert host == svc["metadata"]["name"] and int(port) == svc_ports["grpc"]
    # workers dial the data port the coordinator reports (its own), through the Service: same number
    assert svc_ports["data"] == ports["data"]
    assert int(svc["metadata"]["annotations"]["prometheus.io/port"]) == svc_ports["metrics"]

    # NetworkPolicy: only this job's workers reach the job port; metrics open for scraping; workers closed
    npc = one(docs, "NetworkPolicy", "dcoord-coordinator")
    assert _selects(npc["spec"]["podSelector"]["matchLabels"], labels_c)
    rules: dict[int, list] = {}
    for r in npc["spec"]["ingress"]:
        for p in r["ports"]:
            rules.setdefault(p["port"], []).extend(r["from"])
    assert set(rules) == {ports["grpc"], ports["data"], ports["metrics"]}
    for job_port in (ports["grpc"], ports["data"]):
        (peer,) = rules[job_port]
        assert set(peer) == {"podSelector"}  # this namespace only
        assert _selects(peer["podSelector"]["matchLabels"], labels_w)
        assert not _selects(peer["podSelector"]["matchLabels"], labels_c)
        assert not _selects(peer["podSelector"]["matchLabels"], {**labels_w, "app.kubernetes.io/instance": "other"})
    # workers: only this job's other workers may connect (transport: allreduce's gloo group), on any port
    npw = one(docs, "NetworkPolicy", "dcoord-workers")
    assert _selects(npw["spec"]["podSelector"]["matchLabels"], labels_w)
    (rule,) = npw["spec"]["ingress"]
    assert "ports" not in rule
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}
    assert _selects(peer["podSelector"]["matchLabels"], labels_w)
    assert not _selects(peer["podSelector"]["matchLabels"], labels_c)
    assert not _selects(peer["podSelector"]["matchLabels"], {**labels_w, "app.kubernetes.io/instance": "other"})

    # secrets: every path flag names a projected Secret item; every projected item is used
    for c, ns, tpl in ((cc, cns, ctpl), (wc, wns, wtpl)):
        used = set()
        for flag in ("token_file", "tls_cert", "tls_key", "tls_ca"):
            path = getattr(ns, flag, None)
            if path:
                found = mounted_file(tpl, c, path)
                assert found and "secret" in found[0], f"{c['name']}: --{flag.replace('_', '-')} {path} is not a Secret item"
                used.add((found[0]["secret"]["secretName"], found[1]))
        projected = {(v["secret"]["secretName"], i["key"]) for v in tpl["spec"]["volumes"] if "secret" in v
                     for i in v["secret"]["items"]}
        assert projected == used, f"{c['name']}: mounted but unused secret items {projected - used}"
    assert {("dcoord-token", "token"), ("dcoord-tls", "tls.crt"), ("dcoord-tls", "tls.key")} <= {
        (v["secret"]["secretName"], i["key"]) for v in ctpl["spec"]["volumes"] if "secret" in v
        for i in v["secret"]["items"]}
    assert wns.tls_ca and wns.token_file, "workers must check the coordinator's certificate and send the token"

    # run directory on the volume, writable
    m = mount_for(cc, cns.out)
    vols = {v["name"]: v for v in ctpl["spec"]["volumes"]}
    assert m and not m.get("readOnly") and "persistentVolumeClaim" in vols[m["name"]]
    assert one(docs, "PersistentVolumeClaim", vols[m["name"]]["persistentVolumeClaim"]["claimName"])

    # devices
    want = {"base": "auto", "overlays/cpu": "cpu", "overlays/gpu": "cuda"}[variant]
    assert wns.device == want
    gpus = wc["resources"].get("limits", {}).get("nvidia.com/gpu")
    assert (gpus == 1) == (variant == "overlays/gpu")
    assert wc["image"].endswith({"base": "dcoord", "overlays/cpu": "-cpu", "overlays/gpu": "-cuda"}[variant])


def _selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_pods_are_locked_down(rendered):
    uid = int(dockerfile()["USER"].split(":")[0])
    for name, docs in rendered.items():
        for d, role, tpl, c in _workloads(docs):
            pod = tpl["spec"].get("securityContext", {})
            sc = c.get("securityContext", {})
            where = f"{name} {d['kind']}/{d['metadata']['name']} {role}/{c['name']}"
            assert pod.get("runAsNonRoot") is True and pod.get("runAsUser", uid) != 0, where
            if c["image"].startswith("dcoord"):
                assert pod.get("runAsUser") == uid, f"{where}: runAsUser differs from the image's USER {uid}"
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert c.get("resources", {}).get("requests"), f"{where}: no resource requests"
            if c["image"].startswith("dcoord"):
                tmp = mount_for(c, "/tmp/x")
                vols = {v["name"]: v for v in tpl["spec"]["volumes"]}
                assert tmp and "emptyDir" in vols[tmp["name"]], f"{where}: no writable /tmp"
            if role not in ("Launcher",):  # the MPI launcher gets the operator's service account
                assert tpl["spec"].get("automountServiceAccountToken") is False, where


def test_kubeflow_command_lines(rendered):
    from torch.distributed.run import get_args_parser

    pj = one(rendered["kubeflow/pytorchjob"], "PyTorchJob")
    for role, rs in pj["spec"]["pytorchReplicaSpecs"].items():
        tpl = rs["template"]
        (c,) = tpl["spec"]["containers"]
        cmd = argv(c)
        assert cmd[0] == "torchrun"
        targs = get_args_parser().parse_args(cmd[1:])
        assert targs.module and targs.training_script == "dcoord.launch"
        ns = parse_launch(targs.training_script_args, resolve_env(c, tpl["metadata"], SAMPLE_FIELDS))
        vol, key = mounted_file(tpl, c, ns.job)
        assert key in one(rendered["kubeflow/pytorchjob"], "ConfigMap", vol["configMap"]["name"])["data"]
        if role == "Master":  # rank 0 writes the run directory
            assert "persistentVolumeClaim" in {v["name"]: v for v in tpl["spec"]["volumes"]}[mount_for(c, ns.out)["name"]]
        # the control plane's token and TLS: rank 0 (Master) holds certificate and key, the workers the CA
        wanted = {"token_file": "token", **({"tls_cert": "tls.crt", "tls_key": "tls.key"} if role == "Master"
                                            else {"tls_ca": "ca.crt"})}
        _secret_files(tpl, c, ns, wanted)
        assert ns.resume_or_new and (role == "Master" or ns.tls_server_name == "dcoord-coordinator")

    mj = one(rendered["kubeflow/mpijob"], "MPIJob")
    specs = mj["spec"]["mpiReplicaSpecs"]
    launcher = specs["Launcher"]["template"]["spec"]["containers"][0]
    cmd = argv(launcher)
    assert cmd[0] == "mpirun"
    i = cmd.index("dcoord.launch")
    assert cmd[i - 2:i] == ["python", "-m"]
    mpirun = flag_values([a if not re.fullmatch(r"-n|-np", a) else "--n" for a in cmd[1:i - 2]])
    assert int(mpirun["--n"]) == specs["Worker"]["replicas"] * mj["spec"]["slotsPerWorker"]
    ns = parse_launch(cmd[i + 1:], {})
    wtpl = specs["Worker"]["template"]
    (wc,) = wtpl["spec"]["containers"]
    vol, key = mounted_file(wtpl, wc, ns.job)  # the ranks run in the worker pods
    assert key in one(rendered["kubeflow/mpijob"], "ConfigMap", vol["configMap"]["name"])["data"]
    m = mount_for(wc, ns.out)
    claim = {v["name"]: v for v in wtpl["spec"]["volumes"]}[m["name"]]["persistentVolumeClaim"]["claimName"]
    assert "ReadWriteMany" in one(rendered["kubeflow/mpijob"], "PersistentVolumeClaim", claim)["spec"]["accessModes"]
    # the DCOORD_* variables there are read by dcoord.launch: rank 0 advertises the pod IP, and any
    # worker pod may hold rank 0, so each has the certificate, its key and the CA (the name the
    # certificate carries is checked, not the pod IP dialled)
    from dcoord.launch import LaunchEnv, coordinator_hosts

    env = resolve_env(wc, wtpl["metadata"], SAMPLE_FIELDS)
    assert set(env) <= {"DCOORD_ADVERTISE_HOST", "DCOORD_TOKEN_FILE", "DCOORD_TLS_CERT", "DCOORD_TLS_KEY",
                        "DCOORD_TLS_CA", "DCOORD_TLS_SERVER_NAME"} | STANDARD_ENV
    ns = parse_launch(cmd[i + 1:], env)
    _secret_files(wtpl, wc, ns, {"token_file": "token", "tls_cert": "tls.crt", "tls_key": "tls.key",
                                 "tls_ca": "ca.crt"})
    assert ns.resume_or_new and ns.tls_server_name == "dcoord-coordinator"
    with environ(env):
        assert coordinator_hosts(LaunchEnv("mpirun", 0, 4, 0, 1)) == ("0.0.0.0", SAMPLE_FIELDS["status.podIP"])


def _secret_files(tpl: dict, c: dict, ns, wanted: dict[str, str]) -> None:
    """Each option in ``wanted`` names a file mounted from that key of the Secret the README creates."""
    for opt, key in wanted.items():
        path = getattr(ns, opt)
        assert path, f"{opt} is not set"
        found = mounted_file(tpl, c, path)
        assert found and found[1] == key and "secret" in found[0], (opt, path, found)


def test_dockerfile_and_readme_match_the_manifests(rendered):
    df = dockerfile()
    assert json.loads(df["ENTRYPOINT"]) == ["dcoord"]
    assert re.fullmatch(r"\d+:\d+", df["USER"]) and int(df["USER"].split(":")[0]) != 0
    text = (DEPLOY / "Dockerfile").read_text()
    assert "-c constraints.txt torch" in text  # torch as pinned in constraints.txt
    assert "ARG TORCH_INDEX_URL" in text  # CPU by default, CUDA through the build arg
    readme = (DEPLOY / "README.md").read_text()
    for target in re.findall(r"kubectl (?:apply|delete|kustomize) -k (deploy/[\w/.-]+)", readme):
        assert (ROOT / target / "kustomization.yaml").is_file(), f"README applies {target}: no kustomization"
    # the Secrets the README creates hold exactly the keys the manifests mount
    created: dict[str, set[str]] = {}
    for m in re.finditer(r"kubectl create secret generic (\S+)((?: \\\n\s*)?(?: --from-file=\S+)+)", readme):
        created[m.group(1)] = {f.split("=", 1)[0] for f in re.findall(r"--from-file=(\S+)", m.group(2))}
    mounted: dict[str, set[str]] = {}
    for _d, _role, tpl, _c in _workloads(rendered["base"]):
        for v in tpl["spec"].get("volumes", []):
            if "secret" in v:
                mounted.setdefault(v["secret"]["secretName"], set()).update(i["key"] for i in v["secret"]["items"])
    assert created == mounted


@pytest.mark.slow
def test_bad_health_port_env_is_one_line(tmp_path):
    import subprocess
    import sys

    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "DCOORD_HEALTH_PORT": "probe"}
    p = subprocess.run([sys.executable, "-m", "dcoord", "coordinator", str(DEPLOY / "common" / "job.yaml"),
                        "--listen", "127.0.0.1:0", "--out", str(tmp_path)], capture_output=True, text=True,
                       env=env, timeout=120)
    assert p.returncode != 0
    assert p.stderr.strip().splitlines() == ["dcoord: config error: DCOORD_HEALTH_PORT='probe' is not a port "
                                             "number; set 0-65535 or unset it"]


def test_rendered_yaml_has_no_secret_material(rendered):
    """Token and keys come from Secrets the user creates; nothing secret is kept in deploy/."""
    assert not find([d for docs in rendered.values() for d in docs], "Secret")
    for p in DEPLOY.rglob("*"):
        if p.is_file():
            assert "PRIVATE KEY-----" not in p.read_text(errors="ignore"), p
    assert yaml.safe_load((DEPLOY / "common" / "job.yaml").read_text())["workers"] >= 1
    assert Path(DEPLOY / "README.md").is_file()
