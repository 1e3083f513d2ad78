"""The Ingress against the routes the services really serve: every public route of a service reaches that
service through the Ingress (by the Ingress's own matching rules: Exact first, then the longest Prefix by path
element), and no `/internal/...` route or `/metrics` reaches any pod from outside.

The apps are built with `create_app` (no lifespan, so no engines are touched) and their routes listed."""

from __future__ import annotations

import importlib
import re

import pytest

from faregate.cli import SERVICES, load_all_configs, settings_class
from shared import config
from shared.config import CommonSettings
from tests.deploy.conftest import Rendered

EDGE = ("gateway", "keys", "billing", "usage", "notifier")
# Served by every service for operators and tooling, not part of a public API.
NOT_PUBLIC = re.compile(r"^/(healthz|readyz|metrics|schema)(/|$)")


def _routes(overlay: Rendered, service: str) -> set[str]:
    """The routes `faregate <service>` serves with the settings this overlay gives its Deployment."""
    load_all_configs()
    package = SERVICES[service]
    container = overlay.get("Deployment", f"faregate-{service}")["spec"]["template"]["spec"]["containers"][0]
    env = {k: v for k, v in overlay.process_env(container).items() if v is not None}
    settings = config.load(settings_class(package), env)  # type: ignore[type-var]
    app = importlib.import_module(f"{package}.app").create_app(settings, config.load(CommonSettings, env))
    # A concrete path for each route: parameters become one path element.
    return {re.sub(r"\{[^}]+\}", "x", route.path) for route in app.routes}


@pytest.fixture(scope="module", params=("dev", "production"))
def served(request: pytest.FixtureRequest,
           rendered: dict[str, Rendered]) -> tuple[Rendered, dict[str, set[str]]]:
    overlay = rendered[request.param]
    return overlay, {service: _routes(overlay, service) for service in EDGE}


def _element_prefix(prefix: str, path: str) -> bool:
    prefix = prefix.rstrip("/")
    return prefix == "" or path == prefix or path.startswith(prefix + "/")


def route(rules: list[dict[str, str]], path: str) -> str | None:
    """The backend Service the Ingress sends `path` to on one host, or None (the controller's 404)."""
    exact = [r for r in rules if r["type"] == "Exact" and r["path"] == path]
    if exact:
        return exact[0]["service"]
    prefixes = [r for r in rules if r["type"] == "Prefix" and _element_prefix(r["path"], path)]
    if not prefixes:
        return None
    return max(prefixes, key=lambda r: len(r["path"].rstrip("/")))["service"]


def _hosts(overlay: Rendered) -> dict[str, list[dict[str, str]]]:
    hosts: dict[str, list[dict[str, str]]] = {}
    for ingress in overlay.of_kind("Ingress"):
        for rule in ingress["spec"]["rules"]:
            hosts.setdefault(rule["host"], []).extend(
                {"path": p["path"], "type": p["pathType"], "service": p["backend"]["service"]["name"]}
                for p in rule["http"]["paths"])
    return hosts


def test_the_matching_rules_used_here() -> None:
    rules = [{"path": "/", "type": "Prefix", "service": "a"}, {"path": "/v1/billing", "type": "Prefix",
                                                               "service": "b"},
             {"path": "/metrics", "type": "Exact", "service": "c"}]
    assert route(rules, "/v1/billing/wallet") == "b"
    assert route(rules, "/v1/billingx") == "a"  # prefixes match whole path elements
    assert route(rules, "/metrics") == "c"
    assert route(rules, "/metrics/x") == "a"
    assert route(rules[1:], "/api") is None


def test_every_public_route_reaches_its_service(served: tuple[Rendered, dict[str, set[str]]]) -> None:
    overlay, routes = served
    hosts = _hosts(overlay)
    unreachable = []
    for service, paths in routes.items():
        for path in sorted(paths):
            if path.startswith("/internal") or NOT_PUBLIC.match(path):
                continue
            if not any(route(rules, path) == f"faregate-{service}" for rules in hosts.values()):
                unreachable.append(f"{service} {path}")
    assert not unreachable, "public routes the Ingress does not reach:\n" + "\n".join(unreachable)


def test_internal_routes_and_metrics_never_reach_a_pod(served: tuple[Rendered, dict[str, set[str]]]) -> None:
    overlay, routes = served
    internal = {path for paths in routes.values() for path in paths if path.startswith("/internal")}
    assert internal, "the services serve internal routes; this test must see them"
    for host, rules in _hosts(overlay).items():
        for path in sorted(internal | {"/metrics"}):
            assert route(rules, path) == "faregate-blocked", f"{host}{path}"


def test_every_ingress_prefix_leads_somewhere(served: tuple[Rendered, dict[str, set[str]]]) -> None:
    """No stale path: each non-root prefix routed to a service matches at least one route it serves."""
    overlay, routes = served
    for rules in _hosts(overlay).values():
        for rule in rules:
            name = rule["service"].removeprefix("faregate-")
            if name == "blocked" or rule["path"] == "/":
                continue
            assert any(_element_prefix(rule["path"], path) for path in routes[name]), rule


# Addresses the services hand to people (e-mail links, payment redirects): they must land on the Ingress.
PUBLIC_URLS = ("FAREGATE_KEYS_PUBLIC_URL", "FAREGATE_NOTIFIER_CONSOLE_URL",
               "FAREGATE_BILLING_STRIPE_SUCCESS_URL", "FAREGATE_BILLING_STRIPE_CANCEL_URL")


def test_links_the_services_send_out_land_on_a_served_page(
        served: tuple[Rendered, dict[str, set[str]]]) -> None:
    from urllib.parse import urlsplit

    overlay, routes = served
    hosts = _hosts(overlay)
    env: dict[str, str] = {}
    for workload, container in overlay.faregate_containers():
        if workload["kind"] == "Deployment":
            env.update({k: v for k, v in overlay.container_env(container).items() if v is not None})
    checked = 0
    for name in PUBLIC_URLS:
        if name not in env:
            continue
        url = urlsplit(env[name])
        assert url.hostname in hosts, f"{name}={env[name]}: no Ingress rule for that host"
        path = url.path or "/"
        target = route(hosts[url.hostname], path)
        assert target and target != "faregate-blocked", f"{name}={env[name]}"
        if path != "/":
            assert path in routes[target.removeprefix("faregate-")], f"{name}={env[name]}: not served"
        checked += 1
    assert checked >= 2
