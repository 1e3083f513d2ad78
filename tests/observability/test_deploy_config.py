"""The Grafana dashboard and the Prometheus rules in deploy/ name only metrics (and labels) the code exports,
and cover what operators need: every gateway and event metric on the dashboard, an alert for each failure
mode."""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "faregate-overview.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"

KINDS = {"Counter", "Gauge", "Histogram", "Summary"}
# Labels Prometheus adds at scrape time, and the one it reserves for histogram buckets.
TARGET_LABELS = {"job", "instance"}
# Series Prometheus itself makes, not the code.
BUILTIN = {"up": set[str]()}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                "offset", "inf", "nan"}


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str
    labels: frozenset[str]


def exported_metrics() -> dict[str, Metric]:
    """Every prometheus_client metric defined in services/ and shared/, read from the source (not imported, so
    a service that fails to import still shows up as a failure here rather than as a missing metric)."""
    found: dict[str, Metric] = {}
    for path in [*ROOT.glob("services/**/*.py"), *ROOT.glob("shared/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in KINDS):
                continue
            first = node.args[0] if node.args else None
            if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                continue
            labels: list[str] = []
            label_node = node.args[2] if len(node.args) > 2 else next(
                (k.value for k in node.keywords if k.arg == "labelnames"), None)
            if isinstance(label_node, (ast.List, ast.Tuple)):
                labels = [e.value for e in label_node.elts if isinstance(e, ast.Constant)]
            found[node.args[0].value] = Metric(node.args[0].value, node.func.id, frozenset(labels))
    return found


def series_names(metrics: dict[str, Metric]) -> dict[str, frozenset[str]]:
    """Exposed series name -> its labels (prometheus_client's suffix rules)."""
    out: dict[str, frozenset[str]] = {}
    for m in metrics.values():
        if m.kind == "Counter":
            base = m.name.removesuffix("_total")
            out[f"{base}_total"] = m.labels
            out[f"{base}_created"] = m.labels
        elif m.kind == "Gauge":
            out[m.name] = m.labels
        elif m.kind == "Histogram":
            out[f"{m.name}_bucket"] = m.labels | {"le"}
            for suffix in ("_sum", "_count", "_created"):
                out[m.name + suffix] = m.labels
        else:
            for suffix in ("", "_sum", "_count", "_created"):
                out[m.name + suffix] = m.labels
    return out


@dataclass(frozen=True)
class Parsed:
    metrics: set[str]
    selectors: list[tuple[str, set[str]]]  # (metric, label names used in its {...})
    grouping: set[str]  # label names in by (...) / without (...) / on (...)


def parse_promql(expr: str) -> Parsed:
    """Enough of PromQL to find metric and label names (no need for a full parser for our own files)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals: their contents are values, not names
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery selectors
    selectors = [(m.group(1), set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", m.group(2))))
                 for m in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}", text)]
    text = re.sub(r"\{[^}]*\}", "", text)
    grouping: set[str] = set()
    for m in re.finditer(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", text):
        grouping |= {g.strip() for g in m.group(1).split(",") if g.strip()}
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for m in re.finditer(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        if m.group(2) or m.group(1).lower() in PROMQL_WORDS:
            continue  # a function or aggregation, or a keyword
        names.add(m.group(1))
    return Parsed(names, selectors, grouping)


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            exprs += re.findall(r"label_values\(([a-zA-Z_:][a-zA-Z0-9_:]*)", q)
    return exprs


def alert_rules() -> list[dict[str, object]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def _check(exprs: list[str], where: str) -> list[str]:
    series = {**series_names(exported_metrics()), **{k: frozenset(v) for k, v in BUILTIN.items()}}
    problems = []
    for expr in exprs:
        parsed = parse_promql(expr)
        if not parsed.metrics:
            problems.append(f"{where}: no metric in {expr!r}")
        for name in parsed.metrics - set(series):
            problems.append(f"{where}: {name} is not exported by any code (in {expr!r})")
        for name, labels in parsed.selectors:
            allowed = series.get(name, frozenset()) | TARGET_LABELS
            for label in labels - allowed:
                problems.append(f"{where}: {name} has no label {label!r} (in {expr!r})")
        known = set().union(*(series.get(n, frozenset()) for n in parsed.metrics)) | TARGET_LABELS
        for label in parsed.grouping - known:
            problems.append(f"{where}: grouping by {label!r}, which none of {sorted(parsed.metrics)} has")
    return problems


def test_the_parser_finds_names_and_labels() -> None:
    p = parse_promql('histogram_quantile(0.95, sum by (le, model) (rate(x_bucket{job=~"$job", a!="b"}[5m])))'
                     " * 3600 / 1e6 and on (instance) up offset 5m")
    assert p.metrics == {"x_bucket", "up"}
    assert p.selectors == [("x_bucket", {"job", "a"})]
    assert p.grouping == {"le", "model", "instance"}


def test_metric_discovery_reads_the_code() -> None:
    metrics = exported_metrics()
    # One defined in shared/, one in a service, with their labels: the discovery itself must not be vacuous.
    assert metrics["faregate_events_consumed_total"].labels == {"consumer", "outcome"}
    assert metrics["faregate_db_pool_connections"].labels == {"service", "state"}
    assert "faregate_usage_batch_duration_seconds_bucket" in series_names(metrics)


def test_a_made_up_metric_or_label_would_be_caught() -> None:
    assert _check(["rate(faregate_no_such_thing_total[5m])"], "probe")
    assert _check(['sum by (model) (faregate_spool_events{consumer="x"})'], "probe")
    assert not _check(['sum by (consumer) (rate(faregate_events_consumed_total{outcome="ok"}[5m]))'], "probe")


def test_the_dashboard_references_only_exported_metrics_and_labels() -> None:
    assert _check(dashboard_exprs(), "dashboard") == []


def test_the_alert_rules_reference_only_exported_metrics_and_labels() -> None:
    assert _check([str(r["expr"]) for r in alert_rules()], "alerts") == []


def test_the_dashboard_shows_every_gateway_and_event_metric() -> None:
    metrics = exported_metrics()
    wanted = {n for n in metrics if n.startswith(("faregate_gateway_", "faregate_event", "faregate_spool",
                                                  "faregate_consumer", "faregate_db_pool"))}
    wanted -= {"faregate_gateway_redis_degraded_total"}  # a degraded-mode counter: alert-worthy, not plotted
    used: set[str] = set()
    for expr in dashboard_exprs():
        used |= parse_promql(expr).metrics
    shown = {m for m in wanted if any(s.startswith(m.removesuffix("_total")) for s in used)}
    assert wanted - shown == set()


def test_there_is_an_alert_for_each_failure_mode() -> None:
    rules = {str(r["alert"]): str(r["expr"]) for r in alert_rules()}
    needs = {
        "error rate": "faregate_gateway_requests_total",
        "latency": "faregate_gateway_ttft_seconds_bucket",
        "consumer lag": "faregate_consumer_pending_events",
        "spool growth": "faregate_spool_events",
        "channel down": "faregate_gateway_circuit_state",
    }
    for what, metric in needs.items():
        assert any(metric in parse_promql(e).metrics for e in rules.values()), what
    for rule in alert_rules():
        assert rule.get("labels", {}).get("severity") in ("page", "warn"), rule["alert"]  # type: ignore[union-attr]
        assert rule.get("annotations", {}).get("summary"), rule["alert"]  # type: ignore[union-attr]


def test_the_dashboard_is_well_formed() -> None:
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        for t in p.get("targets", []):
            assert t["refId"] and t["expr"], p["title"]
    scrape = yaml.safe_load(PROMETHEUS.read_text())
    assert scrape["rule_files"] == ["alerts.yml"]
    assert {j["job_name"] for j in scrape["scrape_configs"]} >= {"faregate-gateway", "faregate-usage"}


def test_kubernetes_gets_the_same_rules_and_dashboard() -> None:
    """deploy/prometheus and deploy/grafana render (kustomize, offline) to a PrometheusRule with exactly the
    groups of alerts.yml and a ConfigMap the Grafana sidecar loads, holding the dashboard file as it is."""
    from tests.deploy.conftest import render

    [rule] = render(ROOT / "deploy" / "prometheus")
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]
    [dashboard] = render(ROOT / "deploy" / "grafana")
    assert dashboard["kind"] == "ConfigMap" and dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["data"]["faregate-overview.json"] == DASHBOARD.read_text()
