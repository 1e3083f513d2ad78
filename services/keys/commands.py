"""`faregate keys <command>`: create-admin, import-catalog, republish."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from shared.config import CommonSettings

if TYPE_CHECKING:
    from services.keys.context import Ctx

# The CLI builds its parser for every `faregate ...` run, including the one that starts the servers: the
# service modules (and their Prometheus metrics) are imported only when a command runs.
DEFAULT_CATALOG = Path(__file__).with_name("catalog") / "default.json"

T = TypeVar("T")


def _run(common: CommonSettings, work: Callable[[Ctx], Awaitable[T]]) -> T:
    from services.keys.config import KeysSettings
    from services.keys.context import Ctx
    from services.keys.errors import InvalidInput
    from shared import config
    from shared.runtime import open_resources
    from shared.web import ServiceError

    async def main() -> T:
        settings = config.load(KeysSettings)
        async with open_resources(common, "keys-cli", pool_size=2) as res:
            return await work(Ctx.from_resources(settings, res))

    try:
        return asyncio.run(main())
    except InvalidInput as exc:
        raise SystemExit(f"faregate keys: {'; '.join(f'{k}: {v}' for k, v in exc.fields.items())}") from None
    except ServiceError as exc:
        raise SystemExit(f"faregate keys: {exc.message}") from None


def create_admin(args: argparse.Namespace, common: CommonSettings) -> None:
    from services.keys import accounts

    # Never a command-line argument: those show up in `ps` and shell history.
    if sys.stdin.isatty():
        password = getpass.getpass("password for the new admin: ")
    else:
        password = sys.stdin.readline().rstrip("\n")
    account_id, created = _run(common, lambda ctx: accounts.ensure_admin(ctx, args.email, password))
    print(f"{'created' if created else 'promoted existing account'} {account_id} ({args.email}) as admin")


def import_catalog(args: argparse.Namespace, common: CommonSettings) -> None:
    from services.keys import catalog_admin

    raw = Path(args.file).read_bytes()

    async def work(ctx: Ctx) -> int:
        return (await catalog_admin.import_file(ctx, catalog_admin.parse_file(raw))).version

    print(f"catalog version {_run(common, work)}")


def republish(args: argparse.Namespace, common: CommonSettings) -> None:
    from services.keys import apikeys, catalog_admin

    async def work(ctx: Ctx) -> int:
        await catalog_admin.ensure_published(ctx)
        return await apikeys.republish_all(ctx)

    print(f"republished the catalog and {_run(common, work)} key snapshot(s)")


def add_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("create-admin", help="create (or promote) an admin account; the password is "
                              "read from stdin or a prompt")
    p.add_argument("--email", required=True)
    p.set_defaults(func=create_admin)
    p = subparsers.add_parser("import-catalog",
                              help="import a catalog file (models, groups, channels); idempotent")
    p.add_argument("file", nargs="?", default=str(DEFAULT_CATALOG))
    p.set_defaults(func=import_catalog)
    p = subparsers.add_parser("republish", help="rewrite every key snapshot and the catalog in Redis and "
                              "publish them (after Redis lost its data)")
    p.set_defaults(func=republish)
