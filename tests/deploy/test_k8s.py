"""deploy/k8s: every overlay renders with `kubectl kustomize` and is valid Kubernetes, offline.

Each rendered document is validated (strict: unknown fields are errors) against the Kubernetes
OpenAPI schemas that the `kubernetes-validate` package ships, for 1.30 (ContainerResource HPA
metrics are GA from 1.30) and 1.32 (the kubectl here). Then what a schema cannot say: the pods
are locked down (non-root, read-only root filesystem, no capabilities, RuntimeDefault seccomp),
have probes and resources, every reference resolves (ConfigMaps, ServiceAccounts, volumes,
selectors, ports), the REASEQ_* settings exist in ServiceSettings, the jobs call real `reaseq`
commands and options, and the gpu overlay wires Triton as a sidecar.

kubectl missing: the tests skip, unless REASEQ_REQUIRE_KUBECTL=1.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
KUBERNETES_VERSIONS = ("1.30", "1.32")
EXTERNAL_SECRETS = {"reaseq-redis-auth"}  # created by the operator (base/kustomization.yaml)
OFFLINE_ENV = {"REASEQ_SHARED_DATA", "REASEQ_MODEL_CACHE"}  # read by the offline code
WORKLOADS = {"Deployment", "StatefulSet", "CronJob", "Job", "DaemonSet"}
RESOURCE_KINDS = {
    "Namespace",
    "ServiceAccount",
    "ConfigMap",
    "Deployment",
    "Service",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
    "NetworkPolicy",
    "StatefulSet",
    "CronJob",
    "PersistentVolumeClaim",
}


def kubectl() -> str:
    binary = shutil.which("kubectl")
    if binary is None:
        if os.environ.get("REASEQ_REQUIRE_KUBECTL") == "1":
            pytest.fail("kubectl is not installed (REASEQ_REQUIRE_KUBECTL=1)")
        pytest.skip("kubectl is not installed: it renders the kustomizations (`kubectl kustomize`)")
    return binary


@functools.cache
def _render(path: Path) -> tuple[dict, ...]:
    done = subprocess.run(
        [kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def render(path: Path) -> list[dict]:
    return copy.deepcopy(list(_render(path)))  # a test may change its copy


@pytest.fixture(params=OVERLAYS)
def docs(request: pytest.FixtureRequest) -> list[dict]:
    return render(K8S / "overlays" / request.param)


def kinds(docs: list[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def named(docs: list[dict], kind: str, name: str) -> dict:
    (doc,) = [d for d in kinds(docs, kind) if d["metadata"]["name"] == name]
    return doc


def generated(docs: list[dict], name: str) -> dict:
    """A generated ConfigMap by its name before kustomize's hash suffix."""
    (doc,) = [
        d
        for d in kinds(docs, "ConfigMap")
        if re.fullmatch(rf"{name}(-[a-z0-9]+)?", d["metadata"]["name"])
    ]
    return doc


def pod_specs(docs: list[dict]) -> list[tuple[str, dict, dict]]:
    """(workload kind/name, pod metadata, pod spec) of every workload."""
    out = []
    for doc in docs:
        if doc["kind"] not in WORKLOADS:
            continue
        spec = doc["spec"]["jobTemplate"]["spec"] if doc["kind"] == "CronJob" else doc["spec"]
        template = spec["template"]
        out.append(
            (f"{doc['kind']}/{doc['metadata']['name']}", template["metadata"], template["spec"])
        )
    return out


def containers(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec["containers"]


def serving_pod(docs: list[dict]) -> dict:
    return named(docs, "Deployment", "reaseq-serving")["spec"]["template"]


def container(spec: dict, name: str) -> dict:
    (found,) = [c for c in spec["containers"] if c["name"] == name]
    return found


def env_names(docs: list[dict], c: dict) -> set[str]:
    names = {e["name"] for e in c.get("env", [])}
    for source in c.get("envFrom", []):
        if "configMapRef" in source:
            cm = named(docs, "ConfigMap", source["configMapRef"]["name"])
            names |= set(cm.get("data", {}))
    return names


def selects(selector: dict, labels: dict) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        value, op = labels.get(expr["key"]), expr["operator"]
        if op == "In" and value not in expr["values"]:
            return False
        if op == "NotIn" and value in expr["values"]:
            return False
        if op == "Exists" and value is None:
            return False
        if op == "DoesNotExist" and value is not None:
            return False
    return True


# ---- schemas


@pytest.fixture(scope="module")
def kubernetes_validate():
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail("kubernetes-validate is missing: pip install kubernetes-validate (dev extra)")
    return kubernetes_validate


def test_overlays_exist() -> None:
    assert OVERLAYS == ["cpu", "gpu"]


def test_overlay_renders_and_matches_the_kubernetes_schemas(docs, kubernetes_validate) -> None:
    assert {doc["kind"] for doc in docs} >= RESOURCE_KINDS
    failures = []
    for version in KUBERNETES_VERSIONS:
        for doc in docs:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                failures.append(f"{version} {doc['kind']}/{doc['metadata']['name']}: {err}")
    assert not failures, "\n".join(failures)
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "reaseq", doc["metadata"]["name"]


def test_validation_catches_a_misspelt_field(kubernetes_validate) -> None:
    deployment = named(render(K8S / "overlays" / "cpu"), "Deployment", "reaseq-serving")
    probe = deployment["spec"]["template"]["spec"]["containers"][0]
    probe["readinesProbe"] = probe.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.32", strict=True)


def test_optional_prometheus_operator_folder_renders(kubernetes_validate) -> None:
    # custom resources: Kubernetes' own schemas do not know them, so they are not validated
    docs = render(K8S / "optional" / "prometheus-operator")
    assert {doc["kind"] for doc in docs} == {"ServiceMonitor", "PodMonitor"}
    for doc in docs:
        assert doc["apiVersion"] == "monitoring.coreos.com/v1"
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            kubernetes_validate.validate(doc, "1.32", strict=True)
    monitor = named(docs, "ServiceMonitor", "reaseq-serving")
    service = named(render(K8S / "overlays" / "cpu"), "Service", "reaseq-serving")
    assert selects(monitor["spec"]["selector"], service["metadata"]["labels"])
    ports = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
    gpu_pod = serving_pod(render(K8S / "overlays" / "gpu"))
    triton_ports = {p["name"] for p in container(gpu_pod["spec"], "triton")["ports"]}
    assert {
        e["port"] for e in named(docs, "PodMonitor", "reaseq-triton")["spec"]["podMetricsEndpoints"]
    } <= triton_ports


# ---- security


def test_namespace_enforces_the_restricted_pod_security_standard(docs) -> None:
    (namespace,) = kinds(docs, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_every_pod_is_locked_down(docs) -> None:
    for owner, _, spec in pod_specs(docs):
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, owner
        assert pod.get("runAsUser", 1) != 0, owner
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", owner
        assert spec["automountServiceAccountToken"] is False, owner
        assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), owner
        assert not any("hostPath" in v for v in spec.get("volumes", [])), owner
        for c in containers(spec):
            where = f"{owner} container {c['name']}"
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert not sc["capabilities"].get("add"), where
            assert not sc.get("privileged"), where
            assert sc.get("runAsNonRoot", True) is True and sc.get("runAsUser", 1) != 0, where


def test_every_container_has_resources_and_a_pinned_image(docs) -> None:
    for owner, _, spec in pod_specs(docs):
        for c in containers(spec):
            where = f"{owner} container {c['name']}"
            resources = c["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), where
            assert "memory" in resources["limits"], where
            image = c["image"]
            tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
            assert tag and tag != "latest", f"{where}: image {image} has no fixed tag"


def test_long_running_containers_have_probes(docs) -> None:
    for owner, _, spec in pod_specs(docs):
        if owner.startswith(("CronJob/", "Job/")):
            continue
        for c in spec["containers"]:
            where = f"{owner} container {c['name']}"
            assert "livenessProbe" in c, where
            # a sidecar may leave readiness to the main container (gpu overlay: Triton)
            assert "readinessProbe" in c or c["name"] == "triton", where


def test_service_probes_use_the_service_endpoints(docs) -> None:
    c = container(serving_pod(docs)["spec"], "reaseq")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert ports == {"http": 8000, "grpc": 50051}


# ---- wiring


def test_references_resolve(docs) -> None:
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    pods = pod_specs(docs)
    for owner, _, spec in pods:
        assert ("ServiceAccount", spec["serviceAccountName"]) in names, owner
        claims = {
            v["persistentVolumeClaim"]["claimName"]
            for v in spec.get("volumes", [])
            if "persistentVolumeClaim" in v
        }
        assert {("PersistentVolumeClaim", n) for n in claims} <= names, owner
        volumes = {v["name"] for v in spec.get("volumes", [])}
        for c in containers(spec):
            for mount in c.get("volumeMounts", []):
                assert mount["name"] in volumes or owner.startswith("StatefulSet/"), (owner, mount)
            for source in c.get("envFrom", []):
                assert ("ConfigMap", source["configMapRef"]["name"]) in names, owner
            for env in c.get("env", []):
                ref = env.get("valueFrom", {})
                if "configMapKeyRef" in ref:
                    cm = named(docs, "ConfigMap", ref["configMapKeyRef"]["name"])
                    assert ref["configMapKeyRef"]["key"] in cm["data"], (owner, env)
                if "secretKeyRef" in ref:
                    assert ref["secretKeyRef"]["name"] in EXTERNAL_SECRETS, (owner, env)
    for service in kinds(docs, "Service"):
        matched = [
            (meta, spec)
            for _, meta, spec in pods
            if selects({"matchLabels": service["spec"]["selector"]}, meta["labels"])
        ]
        assert matched, f"Service {service['metadata']['name']} selects no pod"
        for port in service["spec"]["ports"]:
            target = port["targetPort"]
            for _, spec in matched:
                declared = {p["name"] for c in spec["containers"] for p in c.get("ports", [])}
                assert target in declared, (service["metadata"]["name"], target)
    for hpa in kinds(docs, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        target = named(docs, ref["kind"], ref["name"])
        assert "replicas" not in target["spec"], "the HPA owns the replica count"
        assert hpa["spec"]["minReplicas"] >= 2
        for metric in hpa["spec"]["metrics"]:
            if metric["type"] == "ContainerResource":
                spec = target["spec"]["template"]["spec"]
                container(spec, metric["containerResource"]["container"])
    for pdb in kinds(docs, "PodDisruptionBudget"):
        assert any(selects(pdb["spec"]["selector"], meta["labels"]) for _, meta, _ in pods)
    for policy in kinds(docs, "NetworkPolicy"):
        selector = policy["spec"]["podSelector"]
        if selector:
            assert any(selects(selector, meta["labels"]) for _, meta, _ in pods), policy[
                "metadata"
            ]["name"]


def test_network_policy_admits_clients_and_the_store(docs) -> None:
    serving = named(docs, "NetworkPolicy", "reaseq-serving")
    ports = {p["port"] for rule in serving["spec"]["ingress"] for p in rule["ports"]}
    assert ports == {8000, 50051}
    redis = named(docs, "NetworkPolicy", "reaseq-redis")
    (rule,) = redis["spec"]["ingress"]
    for client in ("reaseq-serving", "reaseq-offline"):
        assert any(
            selects(peer["podSelector"], {"app.kubernetes.io/name": client})
            for peer in rule["from"]
        )
    default = named(docs, "NetworkPolicy", "default-deny")
    assert default["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}


def test_settings_are_real_and_ports_agree(docs) -> None:
    from reaseq.service.settings import ServiceSettings

    config = generated(docs, "reaseq-config")["data"]
    fields = {f"REASEQ_{name.upper()}" for name in ServiceSettings.model_fields}
    assert set(config) <= fields, f"unknown settings (silently ignored): {set(config) - fields}"
    settings = ServiceSettings(**{k.removeprefix("REASEQ_").lower(): v for k, v in config.items()})
    assert settings.host == "0.0.0.0" and settings.store == "redis"
    pod = serving_pod(docs)
    ports = {p["name"]: p["containerPort"] for p in container(pod["spec"], "reaseq")["ports"]}
    assert ports == {"http": settings.http_port, "grpc": settings.grpc_port}
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(settings.http_port)
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    url = urlsplit(settings.redis_url)
    store = named(docs, "Service", url.hostname)
    assert url.port in {p["port"] for p in store["spec"]["ports"]}
    offline = generated(docs, "reaseq-offline-config")["data"]
    for key in offline:
        assert not key.startswith("REASEQ_") or key in fields | OFFLINE_ENV, key
    sources = " ".join(p.read_text() for p in (ROOT / "reaseq").rglob("*.py"))
    for key in OFFLINE_ENV:
        assert key in sources, f"{key} is read nowhere in reaseq/"


def cli_problems(words: list[str]) -> list[str]:
    """Why `reaseq WORDS...` would not parse: unknown command, option, or argument count."""
    from typer.main import get_command

    from reaseq.cli import app

    command, words, path = get_command(app), list(words), ["reaseq"]
    while hasattr(command, "commands"):
        name = words.pop(0)
        path.append(name)
        if name not in command.commands:
            return [f"no command `{' '.join(path)}`"]
        command = command.commands[name]
    options = {
        opt: param
        for param in command.params
        if param.param_type_name == "option"
        for opt in (*param.opts, *param.secondary_opts)
    }
    arguments = [p for p in command.params if p.param_type_name == "argument"]
    positional, problems = [], []
    while words:
        word = words.pop(0)
        if word.startswith("-"):
            name, eq, _ = word.partition("=")
            param = options.get(name)
            if param is None:
                problems.append(f"`{' '.join(path)}` has no option {name}")
            elif not (param.is_flag or param.count or eq):
                words.pop(0)
        else:
            positional.append(word)
    if len(positional) != len(arguments):
        problems.append(f"`{' '.join(path)}` takes {len(arguments)} arguments, got {positional}")
    return problems


def command_line(c: dict) -> list[str]:
    """The `reaseq` words a container runs: its args, or the `reaseq` line of its shell script."""
    if c.get("command", [None])[0] in ("/bin/sh", "sh"):
        (script,) = c["args"]
        (line,) = [ln for ln in script.splitlines() if re.match(r"\s*(exec\s+)?reaseq ", ln)]
        words = shlex.split(line)
        return words[words.index("reaseq") + 1 :]
    assert "command" not in c, "the image's entrypoint is `reaseq`"
    return list(c["args"])


def test_the_cli_check_catches_mistakes() -> None:
    assert cli_problems(["pipeline", "synthetic", "--store", "redis"]) == []
    assert cli_problems(["publish", "DIR", "--no-activate", "-v"]) == []
    assert cli_problems(["pipline", "synthetic"])
    assert cli_problems(["makr", "run", "synthetic", "--thread", "4"])
    assert cli_problems(["gbr", "fill", "synthetic", "extra"])


def test_workloads_run_real_reaseq_commands(docs) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for owner, _, spec in pod_specs(docs):
        for c in spec["containers"]:
            if not c["image"].startswith("reaseq-"):
                continue
            words = command_line(c)
            assert not cli_problems(words), (owner, cli_problems(words))
            defined = env_names(docs, c)
            text = " ".join(c.get("args", []))
            used = set(re.findall(r"\$\((\w+)\)", text))  # Kubernetes expands $(VAR)
            used |= set(re.findall(r"\$\{?(\w+)", text)) - {"dir"}  # the shell's $VAR
            assert used <= defined, (owner, used - defined)
            for word in words:  # configs/ is copied into the offline image
                if word.startswith("/opt/reaseq-configs/"):
                    assert "COPY configs /opt/reaseq-configs" in dockerfile
                    assert (ROOT / "configs" / word.rsplit("/", 1)[1]).is_file(), word
    assert command_line(container(serving_pod(docs)["spec"], "reaseq")) == ["serve"]
    jobs = {doc["metadata"]["name"]: doc for doc in kinds(docs, "CronJob")}
    firsts = set()
    for job in jobs.values():
        (c,) = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
        firsts.add(" ".join(command_line(c)[:2]))
    assert firsts == {"pipeline $(DATASET)", "makr run", "gbr train", "publish $dir"}
    for name, job in jobs.items():
        assert job["spec"]["suspend"] is True, f"{name} would publish on a schedule"
        assert job["spec"]["concurrencyPolicy"] == "Forbid", name


# ---- overlays


def test_cpu_overlay_runs_the_model_in_process() -> None:
    docs = render(K8S / "overlays" / "cpu")
    config = generated(docs, "reaseq-config")["data"]
    assert config["REASEQ_BACKEND"] == "local"
    assert [c["name"] for c in serving_pod(docs)["spec"]["containers"]] == ["reaseq"]
    assert "nvidia.com/gpu" not in yaml.safe_dump_all(docs)


def test_gpu_overlay_runs_triton_as_a_sidecar_on_gpu_nodes() -> None:
    docs = render(K8S / "overlays" / "gpu")
    config = generated(docs, "reaseq-config")["data"]
    spec = serving_pod(docs)["spec"]
    assert sorted(c["name"] for c in spec["containers"]) == ["reaseq", "triton"]
    triton = container(spec, "triton")
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in triton["args"])
    assert flags["model-control-mode"] == "explicit"
    assert config["REASEQ_BACKEND"] == "triton"
    assert config["REASEQ_TRITON_URL"] == f"127.0.0.1:{flags['grpc-port']}"
    assert config["REASEQ_TRITON_RUNTIME"] == "onnxruntime"
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert any(key.startswith("nvidia.com/gpu") for key in spec["nodeSelector"])
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    mounts = {m["mountPath"]: m["name"] for m in triton["volumeMounts"]}
    assert flags["model-repository"] in mounts
    service_ports = {p["containerPort"] for p in container(spec, "reaseq")["ports"]}
    triton_ports = {int(flags[k]) for k in ("grpc-port", "http-port", "metrics-port")}
    assert len(triton_ports) == 3 and not service_ports & triton_ports, "ports clash in the pod"
    assert triton["livenessProbe"]["httpGet"]["port"] == "triton-http"
    http = {p["name"]: p["containerPort"] for p in triton["ports"]}["triton-http"]
    assert http == int(flags["http-port"])
    assert ":latest" not in triton["image"]
