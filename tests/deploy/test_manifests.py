"""The Kubernetes manifests, rendered from each overlay, checked offline: every built-in resource against the
Kubernetes JSON schemas (strict: a misspelled field fails), the custom resources (ServiceMonitor,
CloudNativePG) structurally, and what a schema cannot see: that each process gets only settings it knows,
probes hit the real endpoints, the ingress reaches only what the network policies let it, and graceful stops
are long enough."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import kubernetes_validate
import pytest

from faregate.cli import SERVICES, load_all_configs, settings_class
from shared import config
from shared.config import CommonSettings
from tests.deploy.conftest import ROOT, SECRETS, Manifest, Rendered

# Oldest Kubernetes we support (matchLabelKeys in topology spread is on by default from 1.27) and the
# newest the validator knows.
K8S_VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())
CRD_KINDS = {"ServiceMonitor", "Cluster", "ObjectStore", "ScheduledBackup", "PrometheusRule"}
# The services a cluster runs (mock-upstream is a dev-only fake provider).
DEPLOYED = ("gateway", "keys", "billing", "usage", "notifier")
CONSUMERS = ("billing", "usage", "notifier")
# The gateway opens no Postgres pool (services/gateway/app.py: open_resources(..., use_db=False)).
NO_DATABASE = {"gateway", "mock-upstream"}


def _env_prefix(service: str) -> str:
    return service.upper().replace("-", "_")


def _known(service: str | None) -> set[str]:
    """FAREGATE_* variables a `faregate <service>` worker knows: the common ones and its service's own."""
    load_all_configs()
    prefixes = {""} | ({_env_prefix(service)} if service else set())
    return {name for name, (svc, _) in config.known_variables().items() if svc in prefixes}


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        present = expr["key"] in labels
        if expr["operator"] == "In" and (not present or labels[expr["key"]] not in expr["values"]):
            return False
        if expr["operator"] == "NotIn" and present and labels[expr["key"]] in expr["values"]:
            return False
        if expr["operator"] == "Exists" and not present:
            return False
    return True


def _pods(overlay: Rendered) -> dict[str, dict[str, str]]:
    """Deployment name -> its pods' labels."""
    return {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
            for d in overlay.of_kind("Deployment")}


# --- schemas ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_builtin_resource_is_valid_against_the_schema(overlay: Rendered, version: str) -> None:
    errors = []
    checked = 0
    for doc in overlay.docs:
        if doc["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
            checked += 1
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message}")
    assert not errors, "\n".join(errors)
    assert checked >= 25, f"only {checked} resources validated in {overlay.name}"


def test_the_strict_validator_rejects_a_misspelled_field(rendered: dict[str, Rendered]) -> None:
    """The validation above has teeth: one typo in a probe fails it."""
    gateway = copy.deepcopy(rendered["production"].get("Deployment", "faregate-gateway"))
    probe = gateway["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    probe["periodSecond"] = probe.pop("periodSeconds")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(gateway, K8S_VERSIONS[-1], strict=True)


def test_only_known_custom_resources_escape_schema_validation(overlay: Rendered) -> None:
    custom = {d["kind"] for d in overlay.docs if d["kind"] in CRD_KINDS}
    expected = {"ServiceMonitor", "PrometheusRule", "Cluster", "ObjectStore", "ScheduledBackup"}
    if overlay.name == "dev":
        expected = set()
    assert custom == expected


# --- custom resources, structurally -------------------------------------------------------------------------


def test_service_monitor_scrapes_metrics_of_every_service(rendered: dict[str, Rendered]) -> None:
    prod = rendered["production"]
    (monitor,) = prod.of_kind("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    scraped = [s for s in prod.of_kind("Service")
               if _selects(monitor["spec"]["selector"], s["metadata"]["labels"])]
    assert sorted(s["metadata"]["name"] for s in scraped) == sorted(f"faregate-{n}" for n in DEPLOYED)
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["path"] == "/metrics"
        for service in scraped:
            assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}


def test_alert_rules_and_dashboard_ship_with_monitoring(rendered: dict[str, Rendered]) -> None:
    prod = rendered["production"]
    rules = [rule for doc in prod.of_kind("PrometheusRule") for group in doc["spec"]["groups"]
             for rule in group["rules"]]
    names = {rule["alert"] for rule in rules}
    assert {"FaregateHighErrorRate", "FaregateConsumerLag", "FaregateSpoolGrowing", "FaregateChannelDown",
            "FaregateLedgerMismatch"} <= names
    assert all(rule["expr"].strip() for rule in rules)
    # Every alert has its entry in the runbook.
    runbook = (ROOT / "deploy" / "README.md").read_text()
    missing = sorted(name for name in names if name not in runbook)
    assert not missing, f"alerts without a runbook entry: {missing}"
    # The target-down alert matches the job names the ServiceMonitor gives the scraped services.
    (down,) = [rule for rule in rules if rule["alert"] == "FaregateTargetDown"]
    job_pattern = re.search(r'job=~"([^"]+)"', down["expr"])
    assert job_pattern
    (monitor,) = prod.of_kind("ServiceMonitor")
    for service in prod.of_kind("Service"):
        if _selects(monitor["spec"]["selector"], service["metadata"]["labels"]):
            job = service["metadata"]["labels"][monitor["spec"]["jobLabel"]]
            assert re.fullmatch(job_pattern.group(1), job), job
    dashboards = [c for c in prod.of_kind("ConfigMap") if c["metadata"]["labels"].get("grafana_dashboard")]
    assert len(dashboards) == 1
    (dashboard,) = dashboards[0]["data"].values()
    assert json.loads(dashboard)["panels"]


def test_postgres_cluster_is_highly_available_and_backed_up(rendered: dict[str, Rendered]) -> None:
    prod = rendered["production"]
    cluster = prod.get("Cluster", "faregate-db")
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1"
    spec = cluster["spec"]
    assert spec["instances"] >= 3
    assert spec["postgresql"]["synchronous"]["number"] >= 1
    assert spec["storage"]["size"] and spec["walStorage"]["size"]
    # The operator names the app Secret `<cluster>-app`; every Faregate pod reads its `uri`.
    assert "secret" not in spec["bootstrap"]["initdb"]
    for _, container in prod.faregate_containers():
        if container["args"][0] in NO_DATABASE:
            continue
        refs = [v["valueFrom"]["secretKeyRef"] for v in container.get("env", []) if v["name"] ==
                "FAREGATE_DATABASE_URL"]
        assert refs == [{"name": f"{cluster['metadata']['name']}-app", "key": "uri"}]
    (plugin,) = spec["plugins"]
    store = prod.get("ObjectStore", plugin["parameters"]["barmanObjectName"])
    assert store["spec"]["configuration"]["destinationPath"].startswith("s3://")
    (backup,) = prod.of_kind("ScheduledBackup")
    assert backup["spec"]["cluster"]["name"] == cluster["metadata"]["name"]
    assert backup["spec"]["pluginConfiguration"]["name"] == plugin["name"]
    assert len(backup["spec"]["schedule"].split()) == 6  # CloudNativePG schedules have a seconds field


# --- the image and the CLI ----------------------------------------------------------------------------------


def _cli_accepts(args: list[str]) -> bool:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "faregate.cli", *args, "--help"], capture_output=True,
                         timeout=60)
    return out.returncode == 0


def test_every_command_in_the_manifests_is_a_real_cli_subcommand(overlay: Rendered) -> None:
    commands = {tuple(c["args"]) for _, c in overlay.faregate_containers()}
    assert ("migrate",) in commands and ("billing", "verify") in commands
    for args in commands:
        assert args[0] in SERVICES or args == ("migrate",), args
        assert _cli_accepts(list(args)), f"`faregate {' '.join(args)}` is not a CLI command"
    assert not _cli_accepts(["no-such-service"])  # the check above can fail


def test_each_service_runs_in_its_own_deployment_on_its_port(overlay: Rendered) -> None:
    load_all_configs()
    deployed = set()
    for workload, container in overlay.faregate_containers():
        if workload["kind"] != "Deployment":
            continue
        (service,) = container["args"]  # `faregate <service>` serves; longer commands are one-off tasks
        deployed.add(service)
        assert workload["metadata"]["name"] == f"faregate-{service}"
        env = overlay.container_env(container)
        prefix = f"FAREGATE_{_env_prefix(service)}_"
        assert env[prefix + "HOST"] == "0.0.0.0"  # reachable from other pods, not only the loopback
        port = int(env[prefix + "PORT"] or 0)
        default_port = settings_class(SERVICES[service])().port
        assert port == default_port, f"{service} listens on {port}, the documented port is {default_port}"
        (http,) = [p for p in container["ports"] if p["name"] == "http"]
        assert http["containerPort"] == port
    assert set(DEPLOYED) <= deployed
    assert ("mock-upstream" in deployed) == (overlay.name == "dev")


# --- settings -----------------------------------------------------------------------------------------------


def test_every_process_gets_only_settings_it_knows_and_they_parse(overlay: Rendered) -> None:
    """A worker refuses to start on a FAREGATE_* variable outside the common settings and its service's."""
    load_all_configs()
    for workload, container in overlay.faregate_containers():
        service = container["args"][0]
        env = overlay.process_env(container)
        names = {n for n in env if n.startswith("FAREGATE_")}
        unknown = names - _known(None if service == "migrate" else service)
        assert not unknown, f"{workload['metadata']['name']} gets unknown settings {sorted(unknown)}"
        literal = {k: v for k, v in env.items() if v is not None and k.startswith("FAREGATE_")}
        config.load(CommonSettings, literal)
        if len(container["args"]) == 1 and service != "migrate":  # a server reads its service's settings too
            config.load(settings_class(SERVICES[service]), literal)


def test_a_secret_a_service_cannot_start_without_is_not_optional(overlay: Rendered) -> None:
    billing = overlay.get("Deployment", "faregate-billing")["spec"]["template"]["spec"]["containers"][0]
    env = overlay.container_env(billing)
    (ref,) = [s["secretRef"] for s in billing["envFrom"]
              if s.get("secretRef", {}).get("name", "").startswith("faregate-billing-secrets")]
    if env.get("FAREGATE_BILLING_PAYMENT_PROVIDER") == "stripe":
        assert ref.get("optional") is False


def test_every_referenced_secret_is_documented_in_the_runbook() -> None:
    runbook = (ROOT / "deploy" / "README.md").read_text()
    for name, variables in SECRETS.items():
        assert name in runbook
        for variable in variables:
            assert variable in runbook, variable


def test_secrets_come_from_secrets_not_configmaps(overlay: Rendered) -> None:
    secret_fields = {"secret_key", "internal_token", "database_url", "redis_url"}
    secretish = ("PASSWORD", "SECRET", "TOKEN")
    for configmap in overlay.of_kind("ConfigMap"):
        for name in configmap.get("data", {}):
            assert not any(word in name for word in secretish), f"{name} in {configmap['metadata']['name']}"
            assert name.removeprefix("FAREGATE_").lower() not in secret_fields, name
    for _, container in overlay.faregate_containers():
        if container["args"][0] == "mock-upstream":  # holds no state and no secrets
            continue
        db_urls = [v for v in container.get("env", []) if v["name"] == "FAREGATE_DATABASE_URL"]
        if container["args"][0] in NO_DATABASE:
            assert not db_urls, "least privilege: a process without a database gets no credentials for one"
        else:
            (db_url,) = db_urls
            assert "secretKeyRef" in db_url["valueFrom"]
        secret_refs = [s["secretRef"]["name"] for s in container["envFrom"] if "secretRef" in s]
        assert any(name.startswith("faregate-secrets") for name in secret_refs)
    generated = overlay.secret_data(next((s["metadata"]["name"] for s in overlay.of_kind("Secret")
                                          if s["metadata"]["name"].startswith("faregate-secrets")), ""))
    # dev generates its throwaway Secret; production references one made out of band.
    if overlay.name == "dev":
        assert generated is not None
        assert {"FAREGATE_SECRET_KEY", "FAREGATE_INTERNAL_TOKEN", "FAREGATE_REDIS_URL"} <= set(generated)
    else:
        assert generated is None, "production must not carry secret values in the repository"


# --- pods: probes, stops, resources, security ---------------------------------------------------------------


def _pre_stop_seconds(container: Manifest) -> int:
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    return int(command[1])


def test_services_have_probes_graceful_stops_resources_and_a_read_only_root(overlay: Rendered) -> None:
    for workload, container in overlay.faregate_containers():
        if workload["kind"] != "Deployment":
            continue
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", name
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", name
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["port"] == "http", name
        requests, limits = container["resources"]["requests"], container["resources"]["limits"]
        assert {"cpu", "memory"} <= set(requests) and "memory" in limits, name
        if container["args"][0] != "mock-upstream":
            # The endpoint leaves the load balancers during preStop; the grace covers it plus work in hand.
            pre_stop = _pre_stop_seconds(container)
            assert pod["terminationGracePeriodSeconds"] >= pre_stop + 20, name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["automountServiceAccountToken"] is False, name
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True, name
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["capabilities"]["drop"] == ["ALL"], name
        # The spool and prometheus files need a writable FAREGATE_DATA_DIR.
        data_dir = overlay.container_env(container)["FAREGATE_DATA_DIR"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert data_dir in mounts and "/tmp" in mounts, name
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert set(volumes[mounts[data_dir]]) & {"emptyDir", "persistentVolumeClaim", "ephemeral"}, name


def test_gateway_lets_a_streaming_response_finish_and_scales_out(overlay: Rendered) -> None:
    gateway = overlay.get("Deployment", "faregate-gateway")
    pod = gateway["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= _pre_stop_seconds(pod["containers"][0]) + 120
    assert gateway["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    keys = {c["topologyKey"] for c in pod["topologySpreadConstraints"]}
    assert {"topology.kubernetes.io/zone", "kubernetes.io/hostname"} <= keys
    labels = gateway["spec"]["template"]["metadata"]["labels"]
    for constraint in pod["topologySpreadConstraints"]:
        assert _selects(constraint["labelSelector"], labels)
    hpa = overlay.get("HorizontalPodAutoscaler", "faregate-gateway")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                            "name": "faregate-gateway"}
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert "replicas" not in gateway["spec"], "the HPA owns it; `kubectl apply` would reset it"
    pdb = overlay.get("PodDisruptionBudget", "faregate-gateway")
    assert _selects(pdb["spec"]["selector"], labels)


def test_consumers_run_two_replicas_behind_a_disruption_budget(rendered: dict[str, Rendered]) -> None:
    for overlay in rendered.values():
        pods = _pods(overlay)
        for service in CONSUMERS:
            deployment = overlay.get("Deployment", f"faregate-{service}")
            assert deployment["spec"]["replicas"] >= 2, f"{overlay.name}: {service}"
            pdb = overlay.get("PodDisruptionBudget", f"faregate-{service}")
            matched = [n for n, labels in pods.items() if _selects(pdb["spec"]["selector"], labels)]
            assert matched == [f"faregate-{service}"]


def test_services_select_exactly_their_deployment(overlay: Rendered) -> None:
    pods = _pods(overlay)
    for service in overlay.of_kind("Service"):
        selector = service["spec"].get("selector")
        if not selector:
            assert service["metadata"]["name"] == "faregate-blocked"
            continue
        matched = [n for n, labels in pods.items() if all(labels.get(k) == v for k, v in selector.items())]
        assert matched == [service["metadata"]["name"]], service["metadata"]["name"]
        containers = overlay.get("Deployment", matched[0])["spec"]["template"]["spec"]["containers"]
        port_names = {p["name"] for c in containers for p in c["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names or port["targetPort"] in {p["containerPort"] for c in
                                                                            containers for p in c["ports"]}


def _wave(doc: Manifest) -> int:
    return int(doc["metadata"].get("annotations", {}).get("argocd.argoproj.io/sync-wave", "0"))


def test_migrations_run_as_a_job_before_the_rollout(overlay: Rendered) -> None:
    """Argo CD: the database (wave -3), settings (-2), the migrate Job as a Sync hook (-1, waited for), then
    the rest (0)."""
    job = overlay.get("Job", "faregate-migrate")
    annotations = job["metadata"]["annotations"]
    assert annotations["argocd.argoproj.io/hook"] == "Sync"  # PreSync would run before the new ConfigMaps
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")
    reads = [s["configMapRef"]["name"] for s in container["envFrom"] if "configMapRef" in s]
    reads += [s["secretRef"]["name"] for s in container["envFrom"] if "secretRef" in s]
    reads += [v["valueFrom"]["secretKeyRef"]["name"] for v in container.get("env", [])]
    for name in reads:
        found = [d for d in overlay.of_kind("ConfigMap") + overlay.of_kind("Secret")
                 if d["metadata"]["name"] == name]
        for doc in found:  # Secrets made out of band are not in the render
            assert _wave(doc) < _wave(job), name
    for kind in ("Deployment", "CronJob", "Service"):
        for doc in overlay.of_kind(kind):
            assert _wave(doc) > _wave(job), doc["metadata"]["name"]
    for cluster in overlay.of_kind("Cluster"):  # the database the Job migrates exists before it runs
        assert _wave(cluster) < _wave(job)


def test_one_image_for_every_faregate_container(overlay: Rendered) -> None:
    images = {c["image"] for _, c in overlay.faregate_containers()}
    assert len(images) == 1, images
    if overlay.name == "production":
        (image,) = images
        assert "/" in image and ":" in image.rsplit("/", 1)[1], f"pin a registry and a tag: {image}"


# --- network ------------------------------------------------------------------------------------------------


def _ingress_backends(overlay: Rendered) -> dict[tuple[str, str], str]:
    out = {}
    for ingress in overlay.of_kind("Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                out[(rule["host"], path["path"])] = path["backend"]["service"]["name"]
    return out


def _allowed_from(overlay: Rendered, policy_name: str) -> set[str]:
    policy = overlay.get("NetworkPolicy", policy_name)
    selector = policy["spec"]["podSelector"]
    return {name for name, labels in _pods(overlay).items() if _selects(selector, labels)}


def test_ingress_reaches_only_the_edge_and_never_internal_apis_or_metrics(overlay: Rendered) -> None:
    backends = _ingress_backends(overlay)
    hosts = {host for host, _ in backends}
    assert len(hosts) == 2
    for host in hosts:
        assert backends[(host, "/internal")] == "faregate-blocked"
        assert backends[(host, "/metrics")] == "faregate-blocked"
    blocked = overlay.get("Service", "faregate-blocked")
    assert "selector" not in blocked["spec"]  # no endpoints: the controller answers 503 itself
    routed = {name for name in backends.values() if name != "faregate-blocked"}
    assert "faregate-gateway" in routed and "faregate-keys" in routed
    # The ingress controller may open connections to exactly the Deployments behind those routes.
    assert _allowed_from(overlay, "faregate-from-ingress-controller") == routed
    ingress_rule = overlay.get("NetworkPolicy", "faregate-from-ingress-controller")["spec"]["ingress"][0]
    assert ingress_rule["from"][0]["namespaceSelector"]["matchLabels"]


def test_everything_else_is_denied_by_default(overlay: Rendered) -> None:
    deny = overlay.get("NetworkPolicy", "faregate-default-deny-ingress")
    assert deny["spec"]["podSelector"] == {} and deny["spec"]["policyTypes"] == ["Ingress"]
    assert "ingress" not in deny["spec"]
    # Faregate's own pods reach each other's internal APIs; that rule admits no other namespace.
    internal = overlay.get("NetworkPolicy", "faregate-internal")["spec"]["ingress"]
    assert all("namespaceSelector" not in peer for rule in internal for peer in rule["from"])
    assert _allowed_from(overlay, "faregate-internal") >= {f"faregate-{n}" for n in DEPLOYED}


def _selected(doc: Manifest, key: str, values: set[str]) -> bool:
    return doc["metadata"].get("labels", {}).get(key) in values


def test_the_migrate_first_apply_carries_what_the_job_needs(overlay: Rendered) -> None:
    """deploy/README.md "Upgrade": `kubectl apply -k ... -l 'app.kubernetes.io/component in (config,migrate)'`
    runs before the rest, so it must hold the Job and every ConfigMap/Secret the Job reads, and no
    Deployment."""
    runbook = (ROOT / "deploy" / "README.md").read_text()
    assert "-l 'app.kubernetes.io/component in (config,migrate)'" in runbook
    chosen = [d for d in overlay.docs if _selected(d, "app.kubernetes.io/component", {"config", "migrate"})]
    names = {(d["kind"], d["metadata"]["name"]) for d in chosen}
    assert ("Job", "faregate-migrate") in names
    assert not any(kind in ("Deployment", "CronJob", "Service") for kind, _ in names)
    job = overlay.get("Job", "faregate-migrate")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    for source in container["envFrom"]:
        if "configMapRef" in source:
            assert ("ConfigMap", source["configMapRef"]["name"]) in names
        elif overlay.secret_data(source["secretRef"]["name"]) is not None:  # generated by the overlay
            assert ("Secret", source["secretRef"]["name"]) in names
    for var in container.get("env", []):
        ref = var["valueFrom"]["secretKeyRef"]["name"]
        if overlay.secret_data(ref) is not None:
            assert ("Secret", ref) in names


RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}


def test_production_pods_meet_the_restricted_pod_security_standard(rendered: dict[str, Rendered]) -> None:
    """The production namespace enforces `restricted`: a pod that breaks it is refused at admission, which no
    schema check would notice."""
    prod = rendered["production"]
    (namespace,) = prod.of_kind("Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    checked = 0
    for workload, pod in prod.workloads():
        name = workload["metadata"]["name"]
        pod_security = pod.get("securityContext", {})
        assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), name
        assert set().union(*(v.keys() for v in pod.get("volumes", []))) - {"name"} <= RESTRICTED_VOLUMES, name
        for container in pod["containers"] + pod.get("initContainers", []):
            security = {**pod_security, **container.get("securityContext", {})}
            assert security.get("runAsNonRoot") is True, name
            assert security.get("seccompProfile", {}).get("type") in ("RuntimeDefault", "Localhost"), name
            assert container["securityContext"].get("allowPrivilegeEscalation") is False, name
            capabilities = container["securityContext"].get("capabilities", {})
            assert "ALL" in capabilities.get("drop", []), name
            assert set(capabilities.get("add", [])) <= {"NET_BIND_SERVICE"}, name
            assert not any(p.get("hostPort") for p in container.get("ports", [])), name
            checked += 1
    assert checked >= 7  # five services, the migrate Job, the verify CronJob


def test_every_faregate_pod_may_reach_postgres(rendered: dict[str, Rendered]) -> None:
    """The database's NetworkPolicy admits pods by label: every pod that gets a database URL carries it."""
    prod = rendered["production"]
    db_policy = prod.get("NetworkPolicy", "faregate-db")
    peers = [peer["podSelector"] for rule in db_policy["spec"]["ingress"] for peer in rule["from"]
             if "podSelector" in peer and any(p["port"] == 5432 for p in rule["ports"])]
    for workload, container in prod.faregate_containers():
        if not any(v["name"] == "FAREGATE_DATABASE_URL" for v in container.get("env", [])):
            continue
        spec = workload["spec"]["jobTemplate"]["spec"] if workload["kind"] == "CronJob" else workload["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert any(_selects(peer, labels) for peer in peers), workload["metadata"]["name"]
