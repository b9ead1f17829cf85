"""Every test module that starts real Kashf processes carries the `integration` marker (pytest -m selects it)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
# `python -m <one of these>` in a test starts a real service process (or the whole stack).
_PROCESS = re.compile(r'"-m",\s*"(gateway|text_service|vision_service|video_service|trainer|devtools\.stack)"')


def _marks(tree: ast.Module) -> set[str]:
    """Names in `pytestmark = pytest.mark.x` or `pytestmark = [pytest.mark.x, ...]`."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in node.targets):
            values = node.value.elts if isinstance(node.value, ast.List) else [node.value]
            return {v.attr for v in values if isinstance(v, ast.Attribute)}
    return set()


def test_modules_that_start_processes_are_marked_integration() -> None:
    starting = []
    for path in sorted(TESTS.rglob("test_*.py")):
        text = path.read_text(encoding="utf-8")
        if "tests/integration" in path.as_posix() or _PROCESS.search(text):
            starting.append(path)
            assert "integration" in _marks(ast.parse(text)), f"{path.relative_to(TESTS)} lacks pytestmark integration"
    # The check has something to check: the stack tests and the service-process tests.
    names = {p.name for p in starting}
    assert {"test_make_up.py", "test_text_process.py", "test_trainer_process.py"} <= names
