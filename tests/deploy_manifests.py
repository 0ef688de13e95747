"""Helpers for tests/test_deploy.py: render deploy/ with kubectl kustomize, find containers, validate.

Kept apart from the tests so that both the static checks and the emulated cluster read manifests the
same way.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def kustomizations() -> list[Path]:
    """Every directory under deploy/ with a kustomization.yaml (relative to deploy/)."""
    return sorted(p.parent.relative_to(DEPLOY) for p in DEPLOY.rglob("kustomization.yaml"))


def render(rel: Path | str) -> list[dict]:
    """``kubectl kustomize deploy/REL`` parsed into a list of objects."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RuntimeError("kubectl is not on PATH (it renders the kustomizations)")
    out = subprocess.run([kubectl, "kustomize", str(DEPLOY / rel)], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise AssertionError(f"kubectl kustomize deploy/{rel} failed: {out.stderr.strip()}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_templates(doc: dict) -> list[tuple[str, dict]]:
    """(role, pod template) of a workload object: Job, Pod, PyTorchJob or MPIJob."""
    kind = doc["kind"]
    if kind == "Job":
        return [(doc["metadata"]["name"], doc["spec"]["template"])]
    if kind == "Pod":
        return [(doc["metadata"]["name"], {"metadata": doc["metadata"], "spec": doc["spec"]})]
    for key in ("pytorchReplicaSpecs", "mpiReplicaSpecs"):
        if key in doc.get("spec", {}):
            return [(role, rs["template"]) for role, rs in doc["spec"][key].items()]
    return []


def argv(container: dict) -> list[str]:
    return list(container.get("command", [])) + list(container.get("args", []))


def flag_values(args: list[str]) -> dict[str, str]:
    """``--flag=value`` / ``--flag value`` pairs (flags without a value map to "")."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("--"):
            if "=" in a:
                k, v = a.split("=", 1)
                out[k] = v
            elif i + 1 < len(args) and not args[i + 1].startswith("-"):
                out[a] = args[i + 1]
                i += 1
            else:
                out[a] = ""
        i += 1
    return out


def resolve_env(container: dict, pod_meta: dict, extra_fields: dict[str, str] | None = None,
                configmaps: dict[str, dict] | None = None, secrets: dict[str, dict] | None = None) -> dict[str, str]:
    """The container's environment as the kubelet would set it (value, fieldRef, configMap/secretKeyRef)."""
    fields = dict(extra_fields or {})
    for k, v in (pod_meta.get("annotations") or {}).items():
        fields[f"metadata.annotations['{k}']"] = v
    for k, v in (pod_meta.get("labels") or {}).items():
        fields[f"metadata.labels['{k}']"] = v
    env: dict[str, str] = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = _expand(str(e["value"]), env)
            continue
        src = e.get("valueFrom", {})
        if "fieldRef" in src:
            path = src["fieldRef"]["fieldPath"]
            if path not in fields:
                raise KeyError(f"env {e['name']}: no value for fieldRef {path}")
            env[e["name"]] = fields[path]
        elif "configMapKeyRef" in src:
            ref = src["configMapKeyRef"]
            env[e["name"]] = (configmaps or {})[ref["name"]][ref["key"]]
        elif "secretKeyRef" in src:
            ref = src["secretKeyRef"]
            env[e["name"]] = (secrets or {})[ref["name"]][ref["key"]]
        else:
            raise KeyError(f"env {e['name']}: unsupported valueFrom {src}")
    return env


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion (only variables defined earlier; $$ escapes)."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value)


def expand_argv(container: dict, env: dict[str, str]) -> list[str]:
    return [_expand(a, env) for a in argv(container)]


def mounted_file(template: dict, container: dict, path: str) -> tuple[dict, str] | None:
    """(volume, key) of the ConfigMap/Secret item that appears at ``path`` in the container, else None."""
    volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
    for m in container.get("volumeMounts", []):
        root = m["mountPath"].rstrip("/") + "/"
        if not path.startswith(root):
            continue
        vol = volumes[m["name"]]
        src = vol.get("secret") or vol.get("configMap")
        if src is None:
            return None
        rel = path[len(root):]
        for item in src.get("items", []):
            if item["path"] == rel:
                return vol, item["key"]
        return None
    return None


def mount_for(container: dict, path: str) -> dict | None:
    """The volumeMount whose mountPath holds ``path`` (longest match)."""
    best = None
    for m in container.get("volumeMounts", []):
        root = m["mountPath"].rstrip("/")
        if (path == root or path.startswith(root + "/")) and (best is None or len(root) > len(best["mountPath"])):
            best = m
    return best


# -------------------------------------------------------------------------------- offline validation
def _k8s_schema_dir(version: str) -> str:
    return f"kubernetes-json-schema/v{version}.0-local-strict"


def validate_k8s(doc: dict, version: str) -> None:
    """Strict validation of a built-in kind against the Kubernetes OpenAPI schema (kubernetes-validate)."""
    import kubernetes_validate

    kubernetes_validate.validate(doc, version, strict=True)


def definition_validator(version: str, definition: str):
    """A strict jsonschema validator for one Kubernetes definition (e.g. io.k8s.api.core.v1.PodTemplateSpec)."""
    import jsonschema
    from kubernetes_validate.utils import schema_contents
    from referencing import Registry, Resource

    defs = schema_contents(f"{_k8s_schema_dir(version)}/_definitions.json", version)
    registry = Resource.from_contents(defs) @ Registry()
    schema = {"$ref": f"{defs['$id']}#/$defs/{definition}"}
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


def _k8s_definition_for(model_name: str, version: str) -> str:
    """'V1PodTemplateSpec' -> 'io.k8s.api.core.v1.PodTemplateSpec' (looked up in the schema, not by hand)."""
    from kubernetes_validate.utils import schema_contents

    m = re.match(r"V(\d+(?:alpha\d+|beta\d+)?)(\w+)$", model_name)
    assert m, model_name
    defs = schema_contents(f"{_k8s_schema_dir(version)}/_definitions.json", version)["$defs"]
    hits = [k for k in defs if k.endswith(f".v{m.group(1)}.{m.group(2)}")]
    assert len(hits) == 1, f"{model_name}: {hits}"
    return hits[0]


def validate_kubeflow(doc: dict, version: str) -> None:
    """Strict structural validation of a Kubeflow training-operator object.

    No PyPI package ships the operator's CRD YAML (its openAPIV3Schema), so this walks the object along the
    OpenAPI-generated models of the operator's own SDK (kubeflow-training): every key must be one the
    model declares (camelCase ``attribute_map``), values must have the declared types, the models'
    required fields are enforced by constructing them, and the embedded Kubernetes types (pod templates,
    object metadata) are validated strictly against the Kubernetes schema. Enums that the SDK does not
    carry (replica types, container name) are checked against the SDK's constants.
    """
    from kubeflow.training import models
    from kubeflow.training.constants import constants as kc

    params = kc.JOB_PARAMETERS[doc["kind"]]
    assert doc["apiVersion"] == kc.API_VERSION, doc["apiVersion"]

    def walk(value, typ: str, where: str):
        if value is None:
            return None
        if typ.startswith("list["):
            assert isinstance(value, list), f"{where}: expected a list"
            return [walk(v, typ[5:-1], f"{where}[{i}]") for i, v in enumerate(value)]
        if typ.startswith("dict("):
            inner = typ[5:-1].split(",", 1)[1].strip()
            assert isinstance(value, dict), f"{where}: expected a mapping"
            return {k: walk(v, inner, f"{where}.{k}") for k, v in value.items()}
        prim = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object}
        if typ in prim:
            assert isinstance(value, prim[typ]) and not (typ == "int" and isinstance(value, bool)), \
                f"{where}: expected {typ}, got {value!r}"
            return value
        if typ.startswith("V1") or typ.startswith("V2"):
            errors = list(definition_validator(version, _k8s_definition_for(typ, version)).iter_errors(value))
            assert not errors, f"{where}: " + "; ".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)
            return value
        cls = getattr(models, typ)
        assert isinstance(value, dict), f"{where}: expected an object ({typ})"
        by_json = {j: a for a, j in cls.attribute_map.items()}
        unknown = sorted(set(value) - set(by_json))
        assert not unknown, f"{where}: {typ} has no field(s) {unknown} (known: {sorted(by_json)})"
        kwargs = {by_json[k]: walk(v, cls.openapi_types[by_json[k]], f"{where}.{k}") for k, v in value.items()}
        return cls(**kwargs)  # the generated setters refuse missing required fields

    top = params["model"] if isinstance(params["model"], str) else params["model"].__name__
    walk(doc, top, doc["kind"])
    replicas = doc["spec"].get("pytorchReplicaSpecs") or doc["spec"].get("mpiReplicaSpecs")
    allowed = {"PyTorchJob": (kc.REPLICA_TYPE_MASTER, kc.REPLICA_TYPE_WORKER),
               "MPIJob": (kc.REPLICA_TYPE_LAUNCHER, kc.REPLICA_TYPE_WORKER)}[doc["kind"]]
    assert set(replicas) <= set(allowed), f"replica types {sorted(replicas)} not in {allowed}"
    for role, rs in replicas.items():
        names = [c["name"] for c in rs["template"]["spec"]["containers"]]
        assert params["container"] in names, f"{role}: the operator needs a container named {params['container']}"
        assert rs.get("restartPolicy", "Never") in ("Always", "OnFailure", "Never", "ExitCode")


@contextlib.contextmanager
def environ(env: dict[str, str]):
    """os.environ replaced by ``env`` for the block (dcoord reads DCOORD_* when its parser is built)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
