"""The package boundaries hold, and `make lint` (lint-imports) fails when one is broken."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = (
    "shared", "modelkit", "gateway", "text_service", "vision_service", "video_service", "trainer",
    "modelbuild", "devtools", "tests", "bench",
)


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    return subprocess.run(
        [exe, "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=240, check=False,
    )


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repository's Python packages and pyproject.toml, to break on purpose."""
    root = tmp_path_factory.mktemp("repo")
    shutil.copy(REPO / "pyproject.toml", root)
    ignore = shutil.ignore_patterns("__pycache__", "*.onnx", "models")
    for name in PACKAGES:
        shutil.copytree(REPO / name, root / name, ignore=ignore)
    return root


def test_the_repository_keeps_every_contract(tree: Path) -> None:
    done = _lint_imports(tree)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("gateway/app.py", "import text_service.service", "No service imports another service"),
        ("gateway/app.py", "import modelkit.heads", "The gateway runs no inference code"),
        ("trainer/main.py", "import devtools.stack", "Nothing at run time imports the build or dev tools"),
        ("text_service/main.py", "import modelbuild.export", "Nothing at run time imports the build or dev tools"),
        ("shared/errors.py", "import gateway.app", "shared holds contracts only"),
        ("video_service/service.py", "import tests.fileserver", "Nothing at run time imports the build or dev"),
        ("gateway/repository.py", "import gateway.service.tagging", "The gateway's layers call only downwards"),
        ("gateway/uow.py", "import gateway.routes.common", "The gateway's layers call only downwards"),
    ],
)
def test_a_broken_boundary_fails_lint(tree: Path, module: str, line: str, contract: str) -> None:
    path = tree / module
    original = path.read_text(encoding="utf-8")
    path.write_text(original + f"\n{line}  # noqa\n", encoding="utf-8")
    try:
        done = _lint_imports(tree)
    finally:
        path.write_text(original, encoding="utf-8")
    assert done.returncode != 0, done.stdout
    broken = [ln for ln in done.stdout.splitlines() if ln.endswith("BROKEN")]
    assert any(ln.startswith(contract) for ln in broken), done.stdout
