"""Print pyproject.toml's dependencies (plus chosen extras) as a requirements file.

Lets the image install third-party packages in a layer that survives source edits.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

# pyproject uses `; extra != 'gpu'` to swap onnxruntime for onnxruntime-gpu; pip cannot evaluate
# `extra` in a requirements file the way it does for an installed project, so it is resolved here.
_EXTRA_MARKER = re.compile(r"""^extra\s*(==|!=)\s*['"]([A-Za-z0-9_.-]+)['"]$""")


def _keep(marker: str, extras: set[str]) -> str | None:
    """Return the marker to keep (possibly empty), or None when the requirement is excluded."""
    match = _EXTRA_MARKER.match(marker.strip())
    if match is None:
        return marker.strip()
    op, name = match.groups()
    wanted = name in extras
    return "" if (op == "==") == wanted else None


def requirements(pyproject: Path, extras: list[str], drop: list[str]) -> list[str]:
    """Requirement lines of the project's dependencies and `extras`, minus packages named in `drop`."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    chosen = set(extras)
    lines = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise SystemExit(f"pyproject.toml has no extra named {extra!r}")
        lines.extend(optional[extra])
    dropped = {name.lower() for name in drop}
    out: list[str] = []
    for line in lines:
        spec, _, marker = line.partition(";")
        kept = _keep(marker, chosen) if marker else ""
        if kept is None:
            continue
        name = re.split(r"[\s\[<>=!~;]", spec.strip(), maxsplit=1)[0].lower()
        if name in dropped or name == project["name"].lower():
            continue
        out.append(f"{spec.strip()}; {kept}" if kept else spec.strip())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("--extra", action="append", default=[], help="extra to include (repeatable)")
    parser.add_argument("--drop", action="append", default=[], help="package to leave out (repeatable)")
    args = parser.parse_args()
    sys.stdout.write("\n".join(requirements(args.pyproject, args.extra, args.drop)) + "\n")


if __name__ == "__main__":
    main()
