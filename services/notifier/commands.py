"""`faregate notifier test-email --to ADDRESS`: check the SMTP settings by sending one message now."""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
from typing import Any

from services.notifier import mailer, templating
from services.notifier.config import NotifierSettings
from shared import config
from shared.config import CommonSettings


async def send_test(settings: NotifierSettings, to: str) -> None:
    rendered = templating.render("smtp_test", {"product_name": settings.product_name,
                                               "smtp_host": settings.smtp_host,
                                               "smtp_port": str(settings.smtp_port),
                                               "smtp_security": settings.smtp_security})
    msg = mailer.build_message(settings, to=to, rendered=rendered, delivery_id=f"test-{secrets.token_hex(8)}")
    async with asyncio.timeout(settings.smtp_timeout_s):
        await mailer.send(settings, msg)


def test_email(args: argparse.Namespace, common: CommonSettings) -> None:
    settings = config.load(NotifierSettings)
    try:
        asyncio.run(send_test(settings, args.to))
    except (mailer.SendError, TimeoutError) as exc:
        sys.exit(f"faregate: test e-mail not sent via {settings.smtp_host}:{settings.smtp_port}: {exc}")
    print(f"sent a test e-mail to {args.to} via {settings.smtp_host}:{settings.smtp_port}")


def add_commands(subparsers: Any) -> None:
    p = subparsers.add_parser("test-email", help="send one e-mail with the current SMTP settings")
    p.add_argument("--to", required=True, help="recipient address")
    p.set_defaults(func=test_email)
