"""NetworkPolicies and secrets, evaluated on the rendered manifests the way a CNI would apply them."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import pytest

Manifest = dict[str, Any]
Render = Callable[[str], list[Manifest]]
TARGETS = ("base", "cpu", "gpu", "dev")
DB_CLIENTS = {"gateway", "trainer", "kashf-migrate"}
FETCHERS = {"vision-service", "video-service", "trainer"}  # the trainer delivers webhooks
NAMESPACE = "kashf"  # the namespace every object lands in (the manifests are namespace-agnostic)


def _selects(selector: Manifest, labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions In/NotIn/Exists)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if (op == "In" and labels.get(key) not in values) or (op == "NotIn" and labels.get(key) in values):
            return False
        if (op == "Exists" and key not in labels) or (op == "DoesNotExist" and key in labels):
            return False
    return True


def _peer_admits(peer: Manifest, labels: dict[str, str] | None, ip: str | None) -> bool:
    """One `from`/`to` entry against a pod of this namespace (labels) or an outside address (ip)."""
    if "ipBlock" in peer:
        if ip is None:
            return False  # pod traffic is judged by selectors here; ipBlocks name outside addresses
        address = ipaddress.ip_address(ip)
        block = peer["ipBlock"]
        net = ipaddress.ip_network(block["cidr"])
        if address.version != net.version or address not in net:
            return False
        return not any(address in ipaddress.ip_network(e) for e in block.get("except", [])
                       if ipaddress.ip_network(e).version == address.version)
    if labels is None:
        return False
    if "podSelector" in peer and not _selects(peer["podSelector"], labels):
        return False
    return "podSelector" in peer or "namespaceSelector" in peer


def _rule_admits(rule: Manifest, key: str, port: int, labels: dict[str, str] | None, ip: str | None) -> bool:
    ports = rule.get("ports")
    if ports and not any(p.get("protocol", "TCP") == "TCP" and p.get("port") == port for p in ports):
        return False
    peers = rule.get(key)
    return not peers or any(_peer_admits(peer, labels, ip) for peer in peers)


def allowed(objects: list[Manifest], src: dict[str, str], port: int, *,
            dst: dict[str, str] | None = None, ip: str | None = None) -> bool:
    """Whether a TCP connection from a pod (src labels) to a pod (dst labels) or an address is allowed."""
    policies = [o["spec"] for o in objects if o["kind"] == "NetworkPolicy"]

    def side(pod: dict[str, str], kind: str, key: str, peer: dict[str, str] | None, addr: str | None) -> bool:
        selecting = [p for p in policies if kind in p.get("policyTypes", []) and _selects(p["podSelector"], pod)]
        if not selecting:
            return True
        return any(_rule_admits(rule, key, port, peer, addr) for p in selecting for rule in p.get(kind.lower(), []))

    egress_ok = side(src, "Egress", "to", dst, ip)
    ingress_ok = dst is None or side(dst, "Ingress", "from", src, None)
    return egress_ok and ingress_ok


def pods(objects: list[Manifest]) -> dict[str, tuple[dict[str, str], Manifest]]:
    """Workload name -> (pod labels, pod spec)."""
    return {o["metadata"]["name"]: (o["spec"]["template"]["metadata"]["labels"], o["spec"]["template"]["spec"])
            for o in objects if o["kind"] in {"Deployment", "StatefulSet", "Job"}}


@pytest.mark.parametrize("target", TARGETS)
def test_everything_is_denied_unless_a_policy_allows_it(render: Render, target: str) -> None:
    objects = render(target)
    deny = [o["spec"] for o in objects if o["kind"] == "NetworkPolicy" and o["spec"]["podSelector"] == {}]
    assert deny and set(deny[0]["policyTypes"]) == {"Ingress", "Egress"}
    assert not deny[0].get("ingress") and not deny[0].get("egress")
    workloads = pods(objects)
    kashf = {n: labels for n, (labels, _) in workloads.items() if labels.get("app.kubernetes.io/part-of") == "kashf"}
    assert {"gateway", "trainer", "text-service", "vision-service", "video-service", "kashf-migrate"} <= set(kashf)
    for name, labels in kashf.items():
        assert allowed(objects, labels, 4222, ip="10.1.2.3"), f"{name} must reach NATS"
        assert not allowed(objects, labels, 6379, ip="10.1.2.3"), f"{name} reaches an arbitrary port"
        assert not allowed(objects, labels, 22, ip="93.184.216.34"), name


@pytest.mark.parametrize("target", TARGETS)
def test_only_the_gateway_trainer_and_migrations_reach_postgres(render: Render, target: str) -> None:
    objects = render(target)
    for name, (labels, spec) in pods(objects).items():
        if labels.get("app.kubernetes.io/part-of") != "kashf":
            continue
        assert allowed(objects, labels, 5432, ip="10.1.2.3") == (name in DB_CLIENTS), name
        # The pods that fetch user-chosen URLs and decode uploads hold no secret but their own NATS login.
        if name not in DB_CLIENTS:
            for container in spec["containers"]:
                refs = [e for e in container.get("env", [])
                        if e.get("valueFrom", {}).get("secretKeyRef", {}).get("name", "kashf-nats") != "kashf-nats"]
                refs += [e for e in container.get("envFrom", []) if "secretRef" in e]
                assert not refs, f"{name} receives secrets: {refs}"


@pytest.mark.parametrize("target", TARGETS)
def test_fetchers_reach_the_public_web_but_no_private_or_metadata_address(render: Render, target: str) -> None:
    objects = render(target)
    workloads = pods(objects)
    for name in ("vision-service", "video-service", "text-service", "trainer", "gateway"):
        labels = workloads[name][0]
        public = allowed(objects, labels, 443, ip="93.184.216.34") and allowed(objects, labels, 80, ip="8.8.8.8")
        assert public == (name in FETCHERS), name
        for private in ("169.254.169.254", "10.96.0.1", "172.20.0.5", "192.168.1.1", "100.64.0.1", "127.0.0.1",
                        "fd00::1", "fe80::1"):
            assert not allowed(objects, labels, 80, ip=private), f"{name} -> {private}"
        assert allowed(objects, labels, 443, ip="2606:2800:220:1::1") == (name in FETCHERS), name


def test_dev_overlay_admits_only_kashf_to_its_nats_and_postgres(render: Render) -> None:
    objects = render("dev")
    workloads = pods(objects)
    postgres, nats = workloads["postgres"][0], workloads["nats"][0]
    for name, (labels, _) in workloads.items():
        if labels.get("app.kubernetes.io/part-of") != "kashf":
            continue
        assert allowed(objects, labels, 4222, dst=nats), name
        assert allowed(objects, labels, 5432, dst=postgres) == (name in DB_CLIENTS), name
    stranger = {"app.kubernetes.io/name": "debug-shell"}
    assert not allowed(objects, stranger, 5432, dst=postgres)
    assert not allowed(objects, stranger, 4222, dst=nats)
    # The API port is open to clients (the Ingress controller, wherever it runs); nothing else of the gateway.
    gateway = workloads["gateway"][0]
    rules = [r for o in objects if o["kind"] == "NetworkPolicy" and "Ingress" in o["spec"]["policyTypes"]
             and o["spec"]["podSelector"] and _selects(o["spec"]["podSelector"], gateway)
             for r in o["spec"].get("ingress", [])]
    assert rules and all(not r.get("from") and [p["port"] for p in r["ports"]] == [8000] for r in rules)
