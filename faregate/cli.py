"""`faregate`: one command, a subcommand per process.

faregate gateway|keys|billing|usage|notifier|mock-upstream   run that service's HTTP server (and consumers)
faregate <service> <command> ...                            a service's own commands (see --help)
faregate migrate                                            apply every service's migrations
faregate stack up|down                                      start/stop the private Postgres/Redis/NATS
faregate dev                                                the whole stack in one terminal
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from shared import config
from shared.config import CommonSettings, ConfigError

# service command -> package; every one is an HTTP process with a `from_env` factory in app.py.
SERVICES: dict[str, str] = {
    "gateway": "services.gateway",
    "keys": "services.keys",
    "billing": "services.billing",
    "usage": "services.usage",
    "notifier": "services.notifier",
    "mock-upstream": "services.mock_upstream",
}
ROOT = Path(__file__).resolve().parent.parent


def _optional(module: str) -> ModuleType | None:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return None
        raise


def load_all_configs() -> None:
    """Import every settings class, so an unknown FAREGATE_* variable can be told from a known one."""
    for package in SERVICES.values():
        _optional(f"{package}.config")


def settings_class(package: str) -> type:
    module = importlib.import_module(f"{package}.config")
    classes = [
        c
        for c in vars(module).values()
        if isinstance(c, type) and c.__name__.endswith("Settings") and c.__module__ == module.__name__
    ]
    if len(classes) != 1:
        raise SystemExit(f"{package}.config must define exactly one *Settings class")
    return classes[0]


def serve_service(name: str) -> None:
    package = SERVICES[name]
    settings: Any = config.load(settings_class(package))
    common = config.load(CommonSettings)
    from shared.web import serve

    print(
        f"[{name}] listening on http://{settings.host}:{settings.port} ({settings.workers} worker(s), "
        f"{getattr(settings, 'server_interface', 'asgi')})",
        file=sys.stderr,
        flush=True,
    )
    serve(
        f"{package}.app:from_env",
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        data_dir=common.data_dir,
        service=name,
        shutdown_grace_s=settings.shutdown_grace_s,
        interface=getattr(settings, "server_interface", "asgi"),
    )


def migration_folders() -> list[tuple[str, Path]]:
    out = []
    for name, package in SERVICES.items():
        folder = ROOT / package.replace(".", "/") / "migrations"
        if folder.is_dir():
            out.append((name.replace("-", "_"), folder))
    return out


async def migrate_all(common: CommonSettings) -> list[str]:
    import asyncpg

    from shared import db

    await db.ensure_database(common.database_url)
    conn = await asyncpg.connect(common.database_url)
    applied: list[str] = []
    try:
        for schema, folder in migration_folders():
            applied += await db.migrate(conn, schema, folder)
    finally:
        await conn.close()
    return applied


def _field_comments(cls: type) -> dict[str, str]:
    """The `#` comment block above each field in the settings class's source (fields under one block share it)."""
    import inspect

    out: dict[str, str] = {}
    block: list[str] = []
    grouped = False
    for raw in inspect.getsource(cls).splitlines()[1:]:
        line = raw.strip()
        if line.startswith("#"):
            block.append(line.lstrip("#").strip())
            continue
        m = re.match(r"^([a-z_][a-z0-9_]*)\s*:", line)
        if m and block:
            out[m.group(1)] = " ".join(block)
            block = []
            grouped = True
        elif m and grouped:
            out[m.group(1)] = "(as above)"
        elif not line:
            grouped = False
    return out


def config_table() -> str:
    rows = ["| variable | default | what it is |", "|---|---|---|"]
    for service, cls in sorted(config._REGISTRY.items()):
        comments: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            if klass.__module__.split(".")[0] in ("shared", "services"):
                comments.update(_field_comments(klass))
        defaults = dict(zip(cls.__struct_fields__[-len(cls.__struct_defaults__):], cls.__struct_defaults__,
                            strict=True)) if cls.__struct_defaults__ else {}
        for field in cls.__struct_fields__:
            name = config.env_name(service, field)
            default = defaults.get(field, "")
            if field in ("secret_key", "internal_token"):
                shown = "(development default; set it)"
            elif isinstance(default, tuple):
                shown = f"`{','.join(map(str, default))}`"
            else:
                shown = f"`{default}`" if default != "" else ""
            rows.append(f"| `{name}` | {shown} | {comments.get(field, '').replace('|', '/')} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    load_all_configs()
    parser = argparse.ArgumentParser(
        prog="faregate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    named = (sys.argv[1:] if argv is None else argv)[:1]
    for name, package in SERVICES.items():
        p = sub.add_parser(name, help=f"run the {name} service, or one of its commands")
        # Only the named service's commands are imported: a served process (whose workers granian forks from
        # this one) would otherwise carry every other service's modules; billing's alone (asyncpg and the
        # rest) added 4 MB to each gateway worker.
        commands = _optional(f"{package}.commands") if [name] == named else None
        if commands is not None:
            nested = p.add_subparsers(dest="subcommand")
            commands.add_commands(nested)
    sub.add_parser("migrate", help="apply every service's migrations (idempotent)")
    stack = sub.add_parser("stack", help="start or stop the private Postgres/Redis/NATS for dev and tests")
    stack.add_argument("action", choices=["up", "down"])
    sub.add_parser("config", help="print every setting with its default, as a Markdown table")
    dev = sub.add_parser("dev", help="run the whole stack in one terminal (Ctrl-C stops it)")
    dev.add_argument("--no-seed", action="store_true", help="skip the demo account and key")

    args = parser.parse_args(argv)
    try:
        common = config.load(CommonSettings)
    except ConfigError as exc:
        raise SystemExit(f"faregate: configuration error: {exc}") from None

    if args.command in SERVICES:
        if getattr(args, "subcommand", None):
            args.func(args, common)
        else:
            try:
                serve_service(args.command)
            except ConfigError as exc:
                raise SystemExit(f"faregate: configuration error: {exc}") from None
    elif args.command == "migrate":
        for line in asyncio.run(migrate_all(common)) or ["nothing to apply"]:
            print(line)
    elif args.command == "stack":
        from faregate import stack as st

        if args.action == "up":
            print(st.ensure_all(common.database_url, common.redis_url, common.nats_url, common.data_dir))
        else:
            st.stop_all(common.data_dir)
    elif args.command == "config":
        print(config_table())
    elif args.command == "dev":
        from faregate.dev import run_dev

        sys.exit(run_dev(common, seed=not args.no_seed))


if __name__ == "__main__":
    main()
