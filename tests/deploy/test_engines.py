"""The backing engines' settings (deploy/nats, deploy/redis) hold what Faregate relies on, the production
overlay points at the Services those Helm releases create, and the runbook describes the streams the code
declares."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from shared import bus, config
from shared.config import CommonSettings
from tests.deploy.conftest import ROOT, Rendered

DEPLOY = ROOT / "deploy"
RUNBOOK = (DEPLOY / "README.md").read_text()


def _values(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def _helm_release(path: Path) -> tuple[str, str]:
    """(release, namespace) from the `helm upgrade --install` line at the top of a values file."""
    found = re.search(r"helm upgrade --install (\S+) \S+ -n (\S+)", path.read_text())
    assert found, f"{path} must say how it is installed"
    return found.group(1), found.group(2)


def test_nats_is_a_three_node_jetstream_cluster_on_disk() -> None:
    values = _values(DEPLOY / "nats" / "values.yaml")
    cluster, jetstream = values["config"]["cluster"], values["config"]["jetstream"]
    assert cluster["enabled"] is True and cluster["replicas"] == 3
    assert jetstream["enabled"] is True
    assert jetstream["fileStore"]["enabled"] is True and jetstream["fileStore"]["pvc"]["enabled"] is True
    assert jetstream["memoryStore"]["enabled"] is False
    spread = values["podTemplate"]["topologySpreadConstraints"]
    assert spread["topology.kubernetes.io/zone"]["whenUnsatisfiable"] == "DoNotSchedule"
    assert values["podDisruptionBudget"]["enabled"] is True


def test_production_reaches_nats_through_the_helm_release(rendered: dict[str, Rendered]) -> None:
    release, namespace = _helm_release(DEPLOY / "nats" / "values.yaml")
    url = urlsplit(rendered["production"].generated_configmap("faregate-config")["FAREGATE_NATS_URL"])
    assert url.scheme == "nats" and url.port == 4222
    assert url.hostname == f"{release}.{namespace}.svc.cluster.local"


def test_redis_keeps_every_key_and_one_writable_endpoint() -> None:
    path = DEPLOY / "redis" / "values.yaml"
    values = _values(path)
    lines = values["commonConfiguration"].splitlines()
    settings = dict(line.split(None, 1) for line in lines if line.strip())
    assert settings["maxmemory-policy"] == "noeviction"
    assert settings["appendonly"] == "yes"
    assert values["sentinel"]["enabled"] is True and values["sentinel"]["masterService"]["enabled"] is True
    assert values["auth"]["enabled"] is True and values["auth"]["existingSecret"]
    # The documented FAREGATE_REDIS_URL names the master Service of that release, in that namespace.
    release, namespace = _helm_release(path)
    master = f"{release}-master.{namespace}.svc.cluster.local:6379"
    assert master in path.read_text() and master in RUNBOOK


def test_runbook_describes_the_streams_the_code_declares() -> None:
    for spec in bus.STREAMS:
        assert f"<NS>_{spec.name}" in RUNBOOK, spec.name
        for subject in spec.subjects:
            assert f"`{subject}`" in RUNBOOK, subject
    days = {spec.max_age_s // 86400 for spec in bus.STREAMS}
    assert len(days) == 1
    assert f"{days.pop()} days" in RUNBOOK


def test_streams_are_replicated_on_every_nats_server(rendered: dict[str, Rendered]) -> None:
    servers = _values(DEPLOY / "nats" / "values.yaml")["config"]["cluster"]["replicas"]
    data = rendered["production"].generated_configmap("faregate-config")
    assert int(data["FAREGATE_STREAM_REPLICAS"]) == servers == 3
    assert config.load(CommonSettings, data).stream_replicas == 3
    # The dev cluster has one NATS server: a stream cannot have more replicas than servers.
    dev = rendered["dev"].generated_configmap("faregate-config")
    assert config.load(CommonSettings, dev).stream_replicas == 1
