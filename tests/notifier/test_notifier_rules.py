"""The notifier's rules without any I/O: which event causes which notifications, templates, signatures,
backoff, preference validation."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime

import msgspec
import pytest

from services.notifier import templating
from services.notifier.config import NotifierSettings
from services.notifier.mailer import build_message
from services.notifier.notifications import ALERTS, Context, Prefs, plan
from services.notifier.preferences import PrefsUpdate, Stored, apply_update, check_webhook_url
from services.notifier.sender import backoff_s
from services.notifier.webhooks import sign, verify
from shared import crypto, events
from shared.config import ConfigError, load
from shared.web import ServiceError
from tests.notifier.receivers import SmtpServer

T = datetime(2030, 1, 2, 3, 4, tzinfo=UTC)
CTX = Context(
    admin_emails=("ops@example.com", "oncall@example.com"),
    admin_webhook=True,
    console_url="https://console.example",
)
SECRET_KEY = "x" * 40

EVERY_EVENT: list[events.AnyEvent] = [
    events.AccountRegistered(account_id="a", email="a@example.com"),
    events.AccountRegistered(account_id="a", email="a@example.com", verify_url="https://v.example/?t=1"),
    events.PasswordResetRequested(
        account_id="a", email="a@example.com", reset_url="https://r.example/?t=2", expires_at=T
    ),
    events.WalletCredited(
        account_id="a",
        kind="topup",
        amount_micros=3,
        bonus_micros=1,
        paid_micros=2,
        balance_micros=9,
        reference="r",
    ),
    events.PlanPurchased(
        account_id="a", plan_id="p", plan_name="Pro", paid_micros=1, credit_micros=2, expires_at=T
    ),
    events.BalanceLow(account_id="a", balance_micros=1, threshold_micros=2),
    events.BalanceLow(account_id="a", balance_micros=0, threshold_micros=2, exhausted=True),
    events.KeyExpiring(account_id="a", key_id="k", label="", expires_at=T),
    events.ChannelStateChanged(channel_id="c", state="open"),
]


def test_every_event_maps_to_its_template_and_every_template_renders() -> None:
    kinds = []
    for event in EVERY_EVENT:
        for item in plan(event, None, CTX):
            kinds.append(item.kind)
            assert templating.exists(item.kind)
            rendered = templating.render(item.kind, {**item.vars, **item.secret})
            assert rendered.subject and "${" not in rendered.text and "${" not in rendered.html
    assert sorted(set(kinds)) == sorted(
        [
            "welcome",
            "welcome_verify",
            "password_reset",
            "topup_receipt",
            "plan_receipt",
            "balance_low",
            "balance_exhausted",
            "key_expiring",
            "channel_open",
        ]
    )


def test_events_that_notify_nobody() -> None:
    quiet = [
        events.WalletCredited(account_id="a", kind="code", amount_micros=1, balance_micros=1),
        events.ChannelStateChanged(channel_id="c", state="half_open"),
        events.ChannelStateChanged(channel_id="c", state="closed"),
        events.AccountChanged(account_id="a", status="disabled", group="g", role="user"),
        events.CatalogChanged(version=3),
    ]
    assert [plan(e, None, CTX) for e in quiet] == [[], [], [], [], []]


def test_preferences_choose_channels_and_security_mail_ignores_them() -> None:
    low = events.BalanceLow(account_id="a", balance_micros=1, threshold_micros=2)
    both = Prefs(webhook_url="https://h.example", email_alerts=ALERTS, webhook_alerts=("low_balance",))
    assert [(p.channel, p.recipient) for p in plan(low, both, CTX)] == [
        ("email", "account:a"),
        ("webhook", "account:a"),
    ]
    none = Prefs(email_alerts=(), webhook_url="https://h.example", webhook_alerts=("receipt",))
    assert plan(low, none, CTX) == []
    reset = EVERY_EVENT[2]
    planned = plan(reset, none, CTX)
    assert [(p.channel, p.recipient) for p in planned] == [("email", "address:a@example.com")]
    assert (
        "https://r.example" not in msgspec.json.encode(planned[0].vars).decode()
    )  # kept apart, sealed at rest
    assert planned[0].secret == {"reset_url": "https://r.example/?t=2"}


def test_admin_alert_goes_to_every_admin_address_and_the_admin_webhook() -> None:
    out = plan(events.ChannelStateChanged(channel_id="c", state="open", reason="timeouts"), None, CTX)
    assert sorted(p.recipient for p in out) == [
        "admin:oncall@example.com",
        "admin:ops@example.com",
        "admin:webhook",
    ]
    assert all(p.account_id is None for p in out)


def test_key_expiring_is_keyed_by_key_and_expiry_not_by_event() -> None:
    a = events.KeyExpiring(account_id="a", key_id="k", label="l", expires_at=T)
    b = events.KeyExpiring(account_id="a", key_id="k", label="l", expires_at=T)
    assert a.event_id != b.event_id
    assert [p.delivery_id for p in plan(a, None, CTX)] == [p.delivery_id for p in plan(b, None, CTX)]


def test_html_escapes_values_but_text_keeps_them() -> None:
    event = events.KeyExpiring(account_id="a", key_id="k", label="<b>x</b> & y", expires_at=T)
    item = plan(event, None, CTX)[0]
    r = templating.render(item.kind, item.vars)
    assert "&lt;b&gt;x&lt;/b&gt; &amp; y" in r.html and "<b>x</b>" not in r.html
    assert '"<b>x</b> & y"' in r.text


def test_a_missing_template_variable_is_an_error_not_a_blank() -> None:
    with pytest.raises(KeyError, match="reset_url"):
        templating.render(
            "password_reset", {"product_name": "F", "console_url": "c", "email": "e", "expires_at": "t"}
        )


def test_message_id_is_stable_and_user_text_cannot_add_headers() -> None:
    settings = NotifierSettings()
    item = plan(
        events.KeyExpiring(account_id="a", key_id="k", label="x\r\nBcc: evil@example.com", expires_at=T),
        None,
        CTX,
    )[0]
    msg = build_message(
        settings,
        to="a@example.com",
        rendered=templating.render(item.kind, item.vars),
        delivery_id=item.delivery_id,
    )
    assert msg["Message-ID"] == f"<{item.delivery_id}@faregate.local>"
    assert msg["Bcc"] is None and "\n" not in str(msg["Subject"])


def test_signature_verifies_and_rejects_tampering_wrong_secret_and_old_timestamps() -> None:
    body = b'{"id":"d1","data":{"balance_micros":5}}'
    now = int(time.time())
    header = sign("whsec_a", now, body)
    assert verify("whsec_a", header, body)
    assert not verify("whsec_a", header, body.replace(b"5", b"6"))
    assert not verify("whsec_b", header, body)
    old = sign("whsec_a", now - 301, body)
    assert not verify("whsec_a", old, body)
    assert not verify("whsec_a", "garbage", body)
    # Known answer, so a receiver in another language can check its implementation against ours.
    assert sign("whsec_test", 1700000000, b"{}") == (
        "t=1700000000,v1=" + __import__("hmac").new(b"whsec_test", b"1700000000.{}", "sha256").hexdigest()
    )


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    for attempt, (lo, hi) in {
        1: (2.5, 5),
        2: (5, 10),
        3: (10, 20),
        12: (1800, 3600),
        40: (1800, 3600),
    }.items():
        samples = [backoff_s(attempt, 5.0, 3600.0) for _ in range(200)]
        assert lo <= min(samples) and max(samples) <= hi
    assert len({backoff_s(3, 5.0, 3600.0) for _ in range(20)}) > 1


def test_preferences_validation_and_the_secret_shown_once() -> None:
    current = Stored(account_id="a")
    new, plain = apply_update(
        current,
        PrefsUpdate(webhook_url="https://hooks.example/x"),
        secret_key=SECRET_KEY,
        allow_private=False,
    )
    assert plain and plain.startswith("whsec_") and new.webhook_secret is not None
    assert crypto.unseal(new.webhook_secret, SECRET_KEY) == plain
    again, plain2 = apply_update(
        new, PrefsUpdate(webhook_url="https://hooks.example/y"), secret_key=SECRET_KEY, allow_private=False
    )
    assert plain2 is None and again.webhook_secret == new.webhook_secret
    cleared, _ = apply_update(
        again, PrefsUpdate(webhook_url=None), secret_key=SECRET_KEY, allow_private=False
    )
    assert cleared.webhook_url is None and cleared.webhook_secret is None
    for bad in (
        PrefsUpdate(email="not-an-address"),
        PrefsUpdate(email_alerts=["receipt", "spam"]),
        PrefsUpdate(webhook_url="ftp://x.example"),
    ):
        with pytest.raises(ServiceError) as exc:
            apply_update(current, bad, secret_key=SECRET_KEY, allow_private=False)
        assert exc.value.status == 422


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8101/internal",
        "http://localhost/x",
        "http://10.0.0.5/",
        "http://[::1]/",
        "http://169.254.169.254/latest/meta-data",
    ],
)
def test_webhooks_to_local_or_private_addresses_are_refused_unless_allowed(url: str) -> None:
    with pytest.raises(ServiceError, match="private or local"):
        check_webhook_url(url, allow_private=False)
    assert check_webhook_url(url, allow_private=True) == url


def test_settings_refuse_a_lease_shorter_than_a_send() -> None:
    with pytest.raises(ConfigError, match="LEASE_S"):
        load(NotifierSettings, {"FAREGATE_NOTIFIER_LEASE_S": "5"})
    with pytest.raises(ConfigError, match="SMTP_SECURITY"):
        load(NotifierSettings, {"FAREGATE_NOTIFIER_SMTP_SECURITY": "ssl"})


def test_the_test_email_command_sends_through_the_configured_server(smtp: SmtpServer) -> None:
    env = {**os.environ, "FAREGATE_NOTIFIER_SMTP_PORT": str(smtp.port)}
    ok = subprocess.run(
        [sys.executable, "-m", "faregate.cli", "notifier", "test-email", "--to", "ops-test@example.com"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    [mail] = smtp.to("ops-test@example.com")
    assert mail.subject == "Faregate SMTP test" and f"127.0.0.1:{smtp.port}" in mail.text
    smtp.down()
    down = subprocess.run(
        [sys.executable, "-m", "faregate.cli", "notifier", "test-email", "--to", "ops-test@example.com"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert down.returncode != 0 and "test e-mail not sent" in down.stderr
