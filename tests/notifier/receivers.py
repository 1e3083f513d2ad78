"""Real receivers for the notifier's tests: an SMTP server (aiosmtpd) and an HTTP webhook receiver, both in
this process on their own threads; each can be down (nothing listening) and brought up on a fixed port."""

from __future__ import annotations

import asyncio
import email
import email.policy
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from services.notifier.config import NotifierSettings
from tests.procs import free_port


@dataclass
class Mail:
    rcpt: list[str]
    msg: EmailMessage

    @property
    def subject(self) -> str:
        return str(self.msg["Subject"])

    @property
    def message_id(self) -> str:
        return str(self.msg["Message-ID"])

    @property
    def text(self) -> str:
        part = self.msg.get_body(("plain",))
        assert part is not None
        return str(part.get_content())  # type: ignore[attr-defined]

    @property
    def html(self) -> str:
        part = self.msg.get_body(("html",))
        assert part is not None
        return str(part.get_content())  # type: ignore[attr-defined]


class SmtpServer:
    """Records every message it accepted (answered 250 to). `hold_after(n, rcpt)`: accept n more for rcpt,
    then keep the next one waiting without an answer until `release()`, which refuses it with 451 (so it
    was never accepted)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.mails: list[Mail] = []
        self._lock = threading.Lock()
        self._controller: Controller | None = None
        self._accept_left: int | None = None
        self._hold_for = ""
        self.holding = threading.Event()
        self._release = threading.Event()
        self.delay_s = 0.0  # a slower server, so concurrent senders overlap
        self.unknown_users: set[str] = set()  # refused at RCPT with 550

    # aiosmtpd handler hooks
    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if address in self.unknown_users:
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            counted = self._accept_left is not None and self._hold_for in envelope.rcpt_tos
            hold = counted and self._accept_left <= 0
            if counted and not hold:
                self._accept_left -= 1
        if hold:
            self.holding.set()
            # A threading.Event set from the test's thread: polled, as this runs on the server's own loop.
            while not self._release.is_set():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            return "451 4.3.0 not accepted, try again later"
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self._lock:
            self.mails.append(Mail(list(envelope.rcpt_tos), msg))  # type: ignore[arg-type]
        return "250 OK"

    def up(self, *, tls: ssl.SSLContext | None = None, login: tuple[str, str] | None = None) -> None:
        """`tls`: offer STARTTLS and require it; `login`: require AUTH with this user and password."""
        kw: dict[str, Any] = {}
        if tls is not None:
            kw.update(tls_context=tls, require_starttls=True)
        if login is not None:

            def check(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
                ok = (
                    isinstance(data, LoginPassword) and (data.login.decode(), data.password.decode()) == login
                )
                return AuthResult(success=ok)

            kw.update(authenticator=check, auth_required=True)
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port, **kw)
        self._controller.start()

    def down(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def hold_after(self, n: int, rcpt: str) -> None:
        """Only messages to `rcpt` count and are held; others pass as usual."""
        with self._lock:
            self._accept_left = n
            self._hold_for = rcpt

    def release(self) -> None:
        with self._lock:
            self._accept_left = None
        self._release.set()

    def to(self, address: str) -> list[Mail]:
        with self._lock:
            return [m for m in self.mails if address in m.rcpt]


def self_signed_tls() -> ssl.SSLContext:
    """A server context with a throwaway self-signed certificate for 127.0.0.1."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    folder = tempfile.mkdtemp(prefix="fg-smtp-tls-")
    cert_path, key_path = f"{folder}/cert.pem", f"{folder}/key.pem"
    with open(cert_path, "wb") as fh:
        fh.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_path, key_path)
    return ctx


@dataclass
class Hook:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """An HTTP server that records POSTs and answers `status`; `up()`/`down()` open and close its port."""

    port: int = field(default_factory=free_port)
    status: int = 200
    hooks: list[Hook] = field(default_factory=list)
    attempts: int = 0
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def up(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.attempts += 1
                if 200 <= outer.status < 300:
                    outer.hooks.append(Hook(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def settings_for(smtp: SmtpServer, **kw: Any) -> NotifierSettings:
    base: dict[str, Any] = {
        "smtp_port": smtp.port,
        "smtp_timeout_s": 2.0,
        "webhook_timeout_s": 2.0,
        "lease_s": 5.0,
        "backoff_base_s": 0.2,
        "backoff_max_s": 1.0,
        "poll_interval_s": 0.2,
        "webhook_allow_private": True,
        "console_url": "https://console.example",
    }
    return NotifierSettings(**{**base, **kw})


def env_for(smtp: SmtpServer, **kw: Any) -> dict[str, str]:
    """The same settings for a `faregate notifier` process."""
    s = settings_for(smtp, **kw)
    out = {}
    for name in (
        "smtp_port",
        "smtp_timeout_s",
        "webhook_timeout_s",
        "lease_s",
        "backoff_base_s",
        "backoff_max_s",
        "poll_interval_s",
        "webhook_allow_private",
        "console_url",
        "email_workers",
        "webhook_workers",
    ):
        value = getattr(s, name)
        out[f"FAREGATE_NOTIFIER_{name.upper()}"] = (
            str(value).lower() if isinstance(value, bool) else str(value)
        )
    if s.admin_emails:
        out["FAREGATE_NOTIFIER_ADMIN_EMAILS"] = ",".join(s.admin_emails)
    return out


async def until(
    predicate: Callable[[], object],
    timeout: float = 15.0,  # noqa: ASYNC109 (a plain deadline for a polling helper)
    what: str = "condition",
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
