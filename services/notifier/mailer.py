"""SMTP delivery: one message per notification, with a Message-ID derived from the outbox key.

If the notifier dies after the server accepted a message but before the outbox row was marked sent, the row is
sent again after its lease; the second copy carries the same Message-ID, which receivers use to de-duplicate.
"""

from __future__ import annotations

import email.utils
from email.message import EmailMessage

import aiosmtplib

from services.notifier.config import NotifierSettings
from services.notifier.templating import Rendered


class SendError(Exception):
    """A failed send; `permanent` ones are not retried (SMTP 5xx: the server refused the message itself)."""

    def __init__(self, message: str, *, permanent: bool = False, destination: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent
        self.destination = destination  # where it was going, shown to the owner (a webhook URL)


def _header(value: str) -> str:
    # Values such as a key label come from users: never let them start a new header line.
    return " ".join(value.split())


def build_message(settings: NotifierSettings, *, to: str, rendered: Rendered,
                  delivery_id: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = settings.mail_from
    msg["To"] = _header(to)
    msg["Subject"] = _header(rendered.subject)
    msg["Message-ID"] = f"<{delivery_id}@{settings.message_id_domain}>"
    msg["Date"] = email.utils.formatdate(usegmt=True)
    msg["X-Faregate-Delivery"] = delivery_id
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(rendered.text)
    msg.add_alternative(rendered.html, subtype="html")
    return msg


async def send(settings: NotifierSettings, msg: EmailMessage) -> None:
    try:
        await aiosmtplib.send(
            msg,
            hostname=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username or None,
            password=settings.smtp_password or None,
            use_tls=settings.smtp_security == "tls",
            start_tls=True if settings.smtp_security == "starttls" else False,
            validate_certs=settings.smtp_validate_certs,
            timeout=settings.smtp_timeout_s,
        )
    except aiosmtplib.SMTPRecipientsRefused as exc:
        codes = [r.code for r in exc.recipients]
        raise SendError(f"SMTP refused the recipient: {', '.join(map(str, codes))}",
                        permanent=all(500 <= c < 600 for c in codes)) from None
    except (aiosmtplib.SMTPRecipientRefused, aiosmtplib.SMTPDataError) as exc:
        # A 5xx about this message or this recipient will not change on retry. Other refusals (authentication,
        # sender, HELO) are the operator's configuration: retried, so fixing it lets the backlog through.
        raise SendError(f"SMTP {exc.code}: {exc.message}"[:500], permanent=500 <= exc.code < 600) from None
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        raise SendError(f"SMTP unavailable: {type(exc).__name__}: {exc}"[:500]) from None
