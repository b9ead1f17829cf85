"""Production overlays keep three copies of every JetStream stream (heads included); dev's lone NATS keeps one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from shared.settings import CommonSettings

Render = Callable[[str], list[dict[str, Any]]]
WANT = {"cpu": 3, "gpu": 3, "cpu+components": 3, "dev": 1}


@pytest.mark.parametrize("target", sorted(WANT))
def test_every_process_gets_the_overlays_replicas(render: Render, target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    objects = render(target)
    config = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("kashf-config"))
    value = config["data"]["KASHF_JETSTREAM_REPLICAS"]
    monkeypatch.setenv("KASHF_JETSTREAM_REPLICAS", value)
    assert CommonSettings().jetstream_replicas == WANT[target]  # what the processes will read
    # Every Kashf workload takes its environment from that ConfigMap.
    for obj in objects:
        if obj["kind"] in {"Deployment", "Job"}:
            for container in obj["spec"]["template"]["spec"]["containers"]:
                sources = [s.get("configMapRef", {}).get("name") for s in container.get("envFrom", [])]
                assert config["metadata"]["name"] in sources, (obj["metadata"]["name"], sources)
