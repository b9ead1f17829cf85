"""What the deployments run and configure exists in the code: `python -m` modules and settings' env names."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices, AliasPath
from pydantic_settings import BaseSettings

REPO = Path(__file__).resolve().parents[3]
PACKAGES = ("shared", "modelkit", "gateway", "text_service", "vision_service", "video_service", "trainer")
# Every module a manifest or the compose file starts; the lists must agree.
EXPECTED_MODULES = ("gateway", "text_service", "vision_service", "video_service", "trainer", "shared.db")
MANIFEST_TARGETS = ("base", "cpu", "gpu", "dev")
# Names a direct os.environ / os.getenv read with a literal name picks up.
_DIRECT_READ = re.compile(r"""(?:environ\.get|environ\[|getenv)\(?\s*["']([A-Z][A-Z0-9_]*)["']""")
_INSTANTIATED = re.compile(r"\b([A-Z]\w*Settings)\(")

Manifest = dict[str, Any]
Render = Callable[[str], list[Manifest]]


def _module_of(command: list[str]) -> str | None:
    """`python -m pkg ...` -> `pkg`; None for any other command."""
    if len(command) >= 3 and Path(command[0]).name.startswith("python") and command[1] == "-m":
        return command[2]
    return None


def _kashf_containers(objects: list[Manifest]) -> Iterator[tuple[str, Manifest]]:
    for obj in objects:
        if obj["kind"] in {"Deployment", "StatefulSet", "Job"}:
            spec = obj["spec"]["template"]["spec"]
            for c in [*spec.get("initContainers", []), *spec["containers"]]:
                module = _module_of(c.get("command", []))
                if module:
                    yield module, c


def _compose_services() -> Iterator[tuple[str, dict[str, Any]]]:
    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text(encoding="utf-8"))
    for service in compose["services"].values():
        module = _module_of(service.get("command") or [])
        if module:
            yield module, service


def _env_uses(render: Render) -> dict[str, dict[str, set[str]]]:
    """Env names each module is given, with where: {module: {NAME: {"cpu: Deployment ...", ...}}}."""
    uses: dict[str, dict[str, set[str]]] = {}

    def add(module: str, name: str, where: str) -> None:
        uses.setdefault(module, {}).setdefault(name, set()).add(where)

    for target in MANIFEST_TARGETS:
        objects = render(target)
        config_maps = {o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"}
        secrets = {o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "Secret"}
        for module, c in _kashf_containers(objects):
            for var in c.get("env", []):
                add(module, var["name"], f"{target}: env of {c['name']}")
            for source in c.get("envFrom", []):
                ref = source.get("configMapRef") or source.get("secretRef") or {}
                for name in {**config_maps, **secrets}.get(ref.get("name", ""), {}):
                    add(module, name, f"{target}: {ref['name']} (envFrom of {c['name']})")
    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text(encoding="utf-8"))
    common = set(compose.get("x-kashf", {}).get("environment", {}))
    for module, service in _compose_services():
        for name in service.get("environment") or {}:
            # Names of the shared `x-kashf` block reach every process, like a ConfigMap via envFrom.
            add(module, name, "compose.yaml x-kashf (envFrom-like)" if name in common else "compose.yaml")
    return uses


def _settings_classes() -> dict[str, type[BaseSettings]]:
    """Every BaseSettings subclass defined in the project's packages, by class name."""
    found: dict[str, type[BaseSettings]] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if "BaseSettings" not in path.read_text(encoding="utf-8"):
                continue
            dotted = ".".join(path.relative_to(REPO).with_suffix("").parts)
            module = importlib.import_module(dotted.removesuffix(".__init__"))
            for name, obj in inspect.getmembers(module, inspect.isclass):
                if issubclass(obj, BaseSettings) and obj.__module__ == module.__name__:
                    found[name] = obj
    return found


def env_names(cls: type[BaseSettings]) -> set[str]:
    """The environment names pydantic-settings reads for `cls` (upper-cased: not case-sensitive)."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    names: set[str] = set()
    for field_name, field in cls.model_fields.items():
        alias = field.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else [alias] if alias else []
        for choice in choices:
            if isinstance(choice, str):
                names.add(choice)
            elif isinstance(choice, AliasPath) and isinstance(choice.path[0], str):
                names.add(choice.path[0])
        if not choices:
            names.add(field.alias or prefix + field_name)
    return {n.upper() for n in names}


def _direct_reads(paths: list[Path]) -> set[str]:
    return {m for p in paths for m in _DIRECT_READ.findall(p.read_text(encoding="utf-8"))}


def _package_sources(module: str) -> list[Path]:
    """Source files of the package (or module) that `python -m module` runs."""
    path = REPO / Path(*module.split("."))
    return sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]


def _read_by(module: str, classes: dict[str, type[BaseSettings]]) -> tuple[set[str], set[str]]:
    """(settings classes `module` instantiates, env names they and its direct reads take)."""
    sources = _package_sources(module)
    used = {m for p in sources for m in _INSTANTIATED.findall(p.read_text(encoding="utf-8"))} & set(classes)
    names = set().union(*(env_names(classes[c]) for c in used)) if used else set()
    return used, names | _direct_reads(sources)


def all_read_names() -> set[str]:
    """Every env name some settings class, or a literal os.environ read, in the packages takes."""
    classes = _settings_classes()
    direct = _direct_reads([p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")])
    return set().union(direct, *(env_names(c) for c in classes.values()))


# ------------------------------------------------------------------------------------------------ tests


def test_manifests_and_compose_start_exactly_the_expected_modules(render: Render) -> None:
    for target in MANIFEST_TARGETS:
        started = {module for module, _ in _kashf_containers(render(target))}
        assert started == set(EXPECTED_MODULES), target
    assert {module for module, _ in _compose_services()} == set(EXPECTED_MODULES)


@pytest.mark.parametrize("module", EXPECTED_MODULES)
def test_python_dash_m_resolves_to_a_runnable_module_in_the_repository(module: str) -> None:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"`python -m {module}`: no such module"
    origin = Path(spec.origin).resolve()
    assert origin.is_relative_to(REPO), f"{module} resolves outside the repository: {origin}"
    if spec.submodule_search_locations is not None:
        main = importlib.util.find_spec(f"{module}.__main__")
        assert main is not None, f"`python -m {module}`: the package has no __main__.py"
    else:
        assert "__main__" in Path(spec.origin).read_text(encoding="utf-8"), f"{module} has no __main__ guard"


def test_the_settings_reader_sees_the_contract_names_and_nothing_else() -> None:
    # Guards the check below: a reader that accepted every name would make it pass vacuously.
    read = all_read_names()
    contract = {"DATABASE_URL", "NATS_URL", "KASHF_MODELS_DIR", "KASHF_ENVIRONMENT", "KASHF_LOG_JSON",
                "KASHF_DEVICE", "FETCH_ALLOW_HOSTS", "PORT", "KASHF_HEALTH_PORT"}
    assert contract <= read, sorted(contract - read)
    assert "KASHF_NO_SUCH_SETTING" not in read and "MODELS_DIR" not in read


def test_every_env_name_in_the_manifests_is_read_by_the_code(render: Render) -> None:
    classes = _settings_classes()
    everywhere = all_read_names()
    problems: list[str] = []
    for module, names in sorted(_env_uses(render).items()):
        used, read = _read_by(module, classes)
        if not used:
            problems.append(f"{module}: instantiates no settings class, so nothing proves what it reads")
            read = everywhere
        for name, where in sorted(names.items()):
            # A shared ConfigMap reaches every process; its names need only be read by one of them.
            shared_config = all("envFrom" in w for w in where)
            if name not in (everywhere if shared_config else read):
                problems.append(f"{module}: {name} is read by no settings ({', '.join(sorted(where))})")
    assert not problems, "\n".join(problems)


def test_env_names_baked_into_the_image_are_read_by_the_code() -> None:
    text = (REPO / "deploy" / "docker" / "Dockerfile").read_text(encoding="utf-8")
    baked = set(re.findall(r"\b(KASHF_[A-Z0-9_]+)=", text))
    assert baked, "the image sets KASHF_ defaults (models dir, JSON logs)"
    assert baked <= all_read_names(), sorted(baked - all_read_names())
