"""The notifier in-process against real Postgres, NATS, an SMTP server and a webhook receiver: each event
becomes exactly one message with the right content, whatever is redelivered or down meanwhile."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from prometheus_client import REGISTRY

from services.notifier import consumer, housekeeping
from services.notifier.notifications import Context
from services.notifier.webhooks import verify
from shared import bus, config, crypto, events
from shared.config import CommonSettings
from shared.runtime import Resources
from tests.notifier.receivers import Receiver, SmtpServer, self_signed_tls, until


def uid(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


async def register(res: Resources, account: str, address: str) -> events.AccountRegistered:
    assert res.publisher
    e = events.AccountRegistered(account_id=account, email=address)
    await res.publisher.publish(e)
    return e


async def test_each_event_yields_one_message_with_the_right_content(
    resources: Resources,
    smtp: SmtpServer,
    notifier_app: Any,
) -> None:
    assert resources.publisher
    pub = resources.publisher
    account, address, admin = uid("acct"), f"{uid('u')}@example.com", f"{uid('ops')}@example.com"
    channel = uid("chan")
    expiry = datetime(2030, 1, 2, 3, 4, tzinfo=UTC)
    async with notifier_app(admin_emails=(admin,)):
        await pub.publish(
            events.AccountRegistered(
                account_id=account, email=address, verify_url="https://console.example/verify?t=abc"
            )
        )
        await until(lambda: len(smtp.to(address)) == 1, what="welcome mail")
        welcome = smtp.to(address)[0]
        assert "confirm your e-mail" in welcome.subject
        assert "https://console.example/verify?t=abc" in welcome.text
        assert 'href="https://console.example/verify?t=abc"' in welcome.html

        await pub.publish(
            events.PasswordResetRequested(
                account_id=account,
                email=address,
                reset_url="https://console.example/reset?token=s3cr3t&x=1",
                expires_at=expiry,
            )
        )
        await pub.publish(
            events.WalletCredited(
                account_id=account,
                kind="topup",
                amount_micros=11_000_000,
                bonus_micros=1_000_000,
                paid_micros=10_000_000,
                balance_micros=12_500_000,
                reference="pay_123",
            )
        )
        await pub.publish(
            events.WalletCredited(
                account_id=account, kind="adjustment", amount_micros=5, balance_micros=12_500_005
            )
        )  # not a top-up: no receipt
        await pub.publish(
            events.PlanPurchased(
                account_id=account,
                plan_id="p1",
                plan_name="Pro monthly",
                paid_micros=20_000_000,
                credit_micros=25_000_000,
                expires_at=expiry,
                reference="pay_456",
                balance_micros=37_500_005,
            )
        )
        await pub.publish(
            events.BalanceLow(account_id=account, balance_micros=900_000, threshold_micros=1_000_000)
        )
        await pub.publish(
            events.BalanceLow(
                account_id=account, balance_micros=0, threshold_micros=1_000_000, exhausted=True
            )
        )
        await pub.publish(
            events.KeyExpiring(account_id=account, key_id="key_1", label="ci bot", expires_at=expiry)
        )
        await pub.publish(
            events.ChannelStateChanged(channel_id=channel, state="open", reason="5 errors in 10s")
        )
        await pub.publish(
            events.ChannelStateChanged(channel_id=channel, state="closed")
        )  # restored: no alert

        await until(lambda: len(smtp.to(address)) == 7 and len(smtp.to(admin)) == 1, what="all mails")
        await asyncio.sleep(1.0)  # a wrong extra message would show up here

    mails = smtp.to(address)
    assert len(mails) == 7
    by_subject = {m.subject: m for m in mails}
    assert len(by_subject) == 7

    reset = next(m for m in mails if m.subject.startswith("Reset your"))
    assert "https://console.example/reset?token=s3cr3t&x=1" in reset.text
    assert 'href="https://console.example/reset?token=s3cr3t&amp;x=1"' in reset.html  # escaped in HTML
    assert "2030-01-02 03:04 UTC" in reset.text

    topup = next(m for m in mails if m.subject.startswith("Receipt: $11.000000"))
    for line in (
        "Amount paid:      $10.000000",
        "Bonus:            $1.000000",
        "Credit received:  $11.000000",
        "New balance:      $12.500000",
        "Payment reference: pay_123",
    ):
        assert line in topup.text
    assert "<strong>$10.000000</strong>" in topup.html

    plan = next(m for m in mails if m.subject == "Receipt: Pro monthly plan")
    assert "Amount paid:       $20.000000" in plan.text and "Credit received:   $25.000000" in plan.text
    assert "pay_456" in plan.text and "Valid until:       2030-01-02 03:04 UTC" in plan.text

    low = next(m for m in mails if "balance is low" in m.subject)
    assert "$0.900000" in low.subject and "threshold of $1.000000" in low.text
    assert any("balance is used up" in m.subject for m in mails)

    key = next(m for m in mails if "API key" in m.subject)
    assert key.subject == 'Your API key "ci bot" expires at 2030-01-02 03:04 UTC'
    assert "key_1" in key.text

    alert = smtp.to(admin)[0]
    assert channel in alert.subject and "5 errors in 10s" in alert.text

    # Every message has a distinct, stable Message-ID derived from its outbox key.
    ids = [m.message_id for m in [*mails, alert]]
    assert len(set(ids)) == len(ids) and all(i.endswith("@faregate.local>") for i in ids)

    # The reset link is not kept at rest once sent.
    assert resources.pool
    sealed = await resources.pool.fetchval(
        "SELECT count(*) FROM notifier.outbox WHERE account_id = $1 AND sealed IS NOT NULL", account
    )
    assert sealed == 0


async def test_redelivered_events_and_repeated_expiry_notices_send_once(
    resources: Resources,
    smtp: SmtpServer,
    notifier_app: Any,
) -> None:
    """A redelivery beyond JetStream's de-dup window (a different Nats-Msg-Id, same event) and a second
    key.expiring for the same key and expiry (keys' scan ran twice) each change nothing."""
    assert resources.publisher and resources.js
    account, address = uid("acct"), f"{uid('u')}@example.com"
    expiry = datetime(2031, 5, 6, 7, 8, tzinfo=UTC)
    topup = events.WalletCredited(
        account_id=account,
        kind="topup",
        amount_micros=2_000_000,
        paid_micros=2_000_000,
        balance_micros=2_000_000,
        reference="pay_dup",
    )
    subject = bus.subject(resources.common.namespace, "wallet.credited")
    async with notifier_app():
        await register(resources, account, address)
        for n in range(3):
            await resources.js.publish(subject, events.encode(topup), headers={"Nats-Msg-Id": f"again-{n}"})
        for _ in range(2):
            await resources.publisher.publish(
                events.KeyExpiring(account_id=account, key_id="k9", label="x", expires_at=expiry)
            )
        # A later expiry of the same key is a new notice.
        await resources.publisher.publish(
            events.KeyExpiring(
                account_id=account, key_id="k9", label="x", expires_at=expiry + timedelta(days=30)
            )
        )
        await until(lambda: len(smtp.to(address)) >= 4, what="mails")
        await asyncio.sleep(1.5)
    subjects = sorted(m.subject for m in smtp.to(address))
    assert len(subjects) == 4, subjects
    assert sum("Receipt" in s for s in subjects) == 1
    assert sum("2031-05-06" in s for s in subjects) == 1
    assert sum("2031-06-05" in s for s in subjects) == 1


async def test_commit_without_ack_then_redelivery_queues_nothing_twice(resources: Resources) -> None:
    """The consumer handler committed but the ack was lost: the redelivered batch adds no outbox rows."""
    assert resources.pool
    account = uid("acct")
    batch: list[Any] = [
        (None, events.BalanceLow(account_id=account, balance_micros=1, threshold_micros=5)),
        (
            None,
            events.KeyExpiring(
                account_id=account, key_id="k1", label="a", expires_at=datetime(2032, 1, 1, tzinfo=UTC)
            ),
        ),
    ]
    woken: list[int] = []
    handle = consumer.make_handler(
        resources.pool, Context(), resources.common.secret_key, "notifier-billing", lambda: woken.append(1)
    )
    await handle(batch)
    await handle(batch)
    rows = await resources.pool.fetchval(
        "SELECT count(*) FROM notifier.outbox WHERE account_id = $1", account
    )
    assert rows == 2
    assert woken == [1]


async def test_poison_message_is_terminated_and_the_next_event_still_delivered(
    resources: Resources,
    smtp: SmtpServer,
    notifier_app: Any,
) -> None:
    assert resources.js and resources.publisher
    account, address = uid("acct"), f"{uid('u')}@example.com"
    async with notifier_app():
        await register(resources, account, address)
        await resources.js.publish(
            bus.subject(resources.common.namespace, "balance.low"), b'{"type": "balance.low"'
        )
        await resources.publisher.publish(
            events.BalanceLow(account_id=account, balance_micros=3, threshold_micros=10)
        )
        await until(lambda: len(smtp.to(address)) == 2, what="welcome and alert")
    info = await resources.js.consumer_info(
        bus.stream_name(resources.common.namespace, bus.STREAMS[2]), "notifier-billing"
    )
    assert info.num_ack_pending == 0


async def internal(client: Any, method: str, path: str, account: str, **kw: Any) -> Any:
    headers = {"X-Internal-Token": config.load(CommonSettings).internal_token, "X-Account-Id": account}
    return await client.request(method, path, headers=headers, **kw)


async def test_webhook_receiver_down_then_up_gets_one_signed_delivery(
    resources: Resources,
    smtp: SmtpServer,
    receiver: Receiver,
    notifier_app: Any,
) -> None:
    assert resources.publisher
    account, address = uid("acct"), f"{uid('u')}@example.com"
    async with notifier_app() as client:
        resp = await internal(
            client,
            "PUT",
            "/api/notifications/preferences",
            account,
            json={"webhook_url": receiver.url, "email_alerts": ["receipt"]},
        )
        assert resp.status_code == 200, resp.text
        secret = resp.json()["webhook_secret"]
        assert secret.startswith("whsec_")
        again = await internal(client, "GET", "/api/notifications/preferences", account)
        assert again.json()["webhook_secret"] is None and again.json()["webhook_secret_set"] is True

        receiver.down()
        await register(resources, account, address)
        low = events.BalanceLow(account_id=account, balance_micros=400_000, threshold_micros=500_000)
        await resources.publisher.publish(low)

        # Pending with failed attempts, visible to the owner; e-mail for this alert was switched off.
        async def attempted() -> bool:
            r = await internal(client, "GET", "/api/notifications/deliveries?channel=webhook", account)
            rows = r.json()
            return bool(rows) and rows[0]["attempts"] >= 2 and rows[0]["status"] == "pending"

        for _ in range(200):
            if await attempted():
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("no failed webhook attempts recorded")
        receiver.up()
        await until(lambda: len(receiver.hooks) == 1, what="webhook after receiver came back")
        await asyncio.sleep(1.0)
        rows = (
            await internal(client, "GET", "/api/notifications/deliveries?channel=webhook", account)
        ).json()

    assert len(receiver.hooks) == 1
    hook = receiver.hooks[0]
    assert verify(secret, hook.headers["faregate-signature"], hook.body)
    assert not verify(secret, hook.headers["faregate-signature"], hook.body.replace(b"400000", b"900000"))
    assert not verify("whsec_wrong", hook.headers["faregate-signature"], hook.body)
    body = msgspec.json.decode(hook.body)
    assert body["type"] == "balance_low" and body["event_type"] == "balance.low"
    assert body["data"] == {
        "account_id": account,
        "balance_micros": 400_000,
        "threshold_micros": 500_000,
        "exhausted": False,
    }
    assert hook.headers["idempotency-key"] == body["id"] == hook.headers["faregate-delivery"]
    assert rows[0]["status"] == "sent" and rows[0]["destination"] == receiver.url
    # Only the welcome mail: low-balance e-mails were switched off in the preferences.
    assert [m.subject for m in smtp.to(address)] == ["Welcome to Faregate"]


async def test_webhook_failing_past_the_limit_is_recorded_failed_and_can_be_retried(
    resources: Resources,
    smtp: SmtpServer,
    receiver: Receiver,
    notifier_app: Any,
) -> None:
    assert resources.publisher
    account = uid("acct")
    receiver.status = 500
    async with notifier_app(webhook_max_attempts=3) as client:
        resp = await internal(
            client,
            "PUT",
            "/api/notifications/preferences",
            account,
            json={"webhook_url": receiver.url, "email_alerts": []},
        )
        secret = resp.json()["webhook_secret"]
        await resources.publisher.publish(
            events.KeyExpiring(
                account_id=account, key_id="kx", label="l", expires_at=datetime(2033, 1, 1, tzinfo=UTC)
            )
        )

        async def failed() -> list[dict[str, Any]]:
            r = await internal(client, "GET", "/api/notifications/deliveries?status=failed", account)
            return list(r.json())

        for _ in range(200):
            if rows := await failed():
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("delivery never recorded as failed")
        assert rows[0]["attempts"] == 3 and rows[0]["last_error"] == "webhook answered HTTP 500"
        assert receiver.attempts == 3 and receiver.hooks == []

        receiver.status = 204
        retry = await internal(
            client, "POST", f"/api/notifications/deliveries/{rows[0]['id']}/retry", account
        )
        assert retry.status_code == 202
        await until(lambda: len(receiver.hooks) == 1, what="retried webhook")
        other = await internal(
            client, "POST", f"/api/notifications/deliveries/{rows[0]['id']}/retry", "acct-x"
        )
        assert other.status_code == 404  # not someone else's to retry
    assert verify(secret, receiver.hooks[0].headers["faregate-signature"], receiver.hooks[0].body)


async def test_smtp_down_delays_mail_without_blocking_webhooks_or_consuming(
    resources: Resources,
    smtp: SmtpServer,
    receiver: Receiver,
    notifier_app: Any,
) -> None:
    assert resources.publisher and resources.pool
    account, address = uid("acct"), f"{uid('u')}@example.com"
    smtp.down()
    async with notifier_app() as client:
        await internal(
            client, "PUT", "/api/notifications/preferences", account, json={"webhook_url": receiver.url}
        )
        await register(resources, account, address)
        await resources.publisher.publish(
            events.WalletCredited(
                account_id=account,
                kind="topup",
                amount_micros=1_000_000,
                paid_micros=1_000_000,
                balance_micros=1_000_000,
                reference="pay_down",
            )
        )
        await until(lambda: len(receiver.hooks) == 1, what="webhook while SMTP is down")
        waiting = (
            "SELECT count(*) FROM notifier.outbox WHERE account_id = $1 AND channel = 'email'"
            " AND status = 'pending' AND last_error LIKE 'SMTP unavailable%'"
        )
        # Welcome and receipt: consumed, tried, waiting, not dropped.
        for _ in range(100):
            if await resources.pool.fetchval(waiting, account) == 2:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the e-mails were not tried and kept while SMTP was down")
        smtp.up()
        await until(lambda: len(smtp.to(address)) == 2, what="mail once SMTP is back")
        await asyncio.sleep(1.0)
    assert sorted(m.subject for m in smtp.to(address)) == [
        "Receipt: $1.000000 added to your Faregate wallet",
        "Welcome to Faregate",
    ]


async def test_mail_waits_for_an_address_that_arrives_later(
    resources: Resources,
    smtp: SmtpServer,
    notifier_app: Any,
) -> None:
    """Billing's stream may be read before keys' one: the receipt waits for account.registered."""
    assert resources.publisher
    account, address = uid("acct"), f"{uid('u')}@example.com"
    async with notifier_app():
        await resources.publisher.publish(
            events.BalanceLow(account_id=account, balance_micros=1, threshold_micros=2)
        )
        await asyncio.sleep(1.0)
        assert smtp.to(address) == []
        await register(resources, account, address)
        await until(lambda: len(smtp.to(address)) == 2, what="welcome and the waiting alert")


async def test_the_address_in_the_preferences_wins_over_the_registered_one(
    resources: Resources, smtp: SmtpServer, notifier_app: Any
) -> None:
    assert resources.publisher
    account, registered, billing = uid("acct"), f"{uid('u')}@example.com", f"{uid('billing')}@example.com"
    async with notifier_app() as client:
        await register(resources, account, registered)
        resp = await internal(
            client, "PUT", "/api/notifications/preferences", account, json={"email": billing}
        )
        assert resp.status_code == 200
        await resources.publisher.publish(
            events.BalanceLow(account_id=account, balance_micros=1, threshold_micros=2)
        )
        await until(lambda: len(smtp.to(billing)) == 1, what="alert at the preferred address")
        await until(lambda: len(smtp.to(registered)) == 1, what="welcome at the registered address")
    assert "balance is low" in smtp.to(billing)[0].subject
    assert smtp.to(registered)[0].subject == "Welcome to Faregate"


async def test_housekeeping_prunes_old_finished_rows_and_never_pending_ones(resources: Resources) -> None:
    assert resources.pool
    account = uid("acct")
    insert = (
        "INSERT INTO notifier.outbox (dedupe_key, channel, recipient, account_id, kind, event_type, payload,"
        " status, created_at) VALUES ($1, 'email', 'account:x', $2, 'balance_low', 'balance.low', '{}', $3,"
        " now() - make_interval(days => $4))"
    )
    for key, status, age in [
        ("old-sent", "sent", 40),
        ("old-failed", "failed", 40),
        ("old-pending", "pending", 40),
        ("new-sent", "sent", 1),
    ]:
        await resources.pool.execute(insert, f"{account}-{key}", account, status, age)
    await housekeeping.prune(resources.pool, 30)
    left = await resources.pool.fetch(
        "SELECT dedupe_key FROM notifier.outbox WHERE account_id = $1 ORDER BY dedupe_key", account
    )
    assert [r["dedupe_key"] for r in left] == [f"{account}-new-sent", f"{account}-old-pending"]


async def test_an_address_the_server_refuses_fails_at_once_and_others_still_go(
    resources: Resources, smtp: SmtpServer, notifier_app: Any
) -> None:
    assert resources.publisher and resources.pool
    gone, fine = f"{uid('gone')}@example.com", f"{uid('fine')}@example.com"
    smtp.unknown_users.add(gone)
    async with notifier_app():
        await register(resources, uid("acct"), gone)
        await register(resources, uid("acct"), fine)
        await until(lambda: len(smtp.to(fine)) == 1, what="the deliverable welcome")

        async def failed() -> Any:
            return await resources.pool.fetchrow(
                "SELECT status, attempts, last_error FROM notifier.outbox WHERE recipient = $1",
                f"address:{gone}",
            )

        for _ in range(100):
            row = await failed()
            if row and row["status"] == "failed":
                break
            await asyncio.sleep(0.05)
    assert row is not None and row["status"] == "failed" and row["attempts"] == 1
    assert "550" in row["last_error"]


async def test_starttls_and_auth_are_used_when_configured(
    resources: Resources, smtp: SmtpServer, notifier_app: Any
) -> None:
    """The server requires STARTTLS and a login: with them configured, mail goes through."""
    smtp.down()
    smtp.up(tls=self_signed_tls(), login=("relay", "s3cret"))
    address = f"{uid('tls')}@example.com"
    async with notifier_app(
        smtp_security="starttls", smtp_validate_certs=False, smtp_username="relay", smtp_password="s3cret"
    ):
        await register(resources, uid("acct"), address)
        await until(lambda: len(smtp.to(address)) == 1, what="mail over STARTTLS with AUTH")


async def test_a_wrong_smtp_password_delays_mail_and_never_fails_it(
    resources: Resources, smtp: SmtpServer, notifier_app: Any
) -> None:
    """A refused login is the operator's configuration, not the message's fault: retried, not failed."""
    assert resources.pool
    smtp.down()
    smtp.up(tls=self_signed_tls(), login=("relay", "s3cret"))
    address = f"{uid('auth')}@example.com"
    async with notifier_app(
        smtp_security="starttls", smtp_validate_certs=False, smtp_username="relay", smtp_password="wrong"
    ):
        await register(resources, uid("acct"), address)

        async def row() -> Any:
            return await resources.pool.fetchrow(
                "SELECT status, attempts, last_error FROM notifier.outbox WHERE recipient = $1",
                f"address:{address}",
            )

        for _ in range(100):
            r = await row()
            if r and r["attempts"] >= 2:
                break
            await asyncio.sleep(0.05)
    assert r is not None and r["status"] == "pending" and r["attempts"] >= 2, r
    assert r["last_error"].startswith("SMTP")
    assert smtp.to(address) == []


async def test_the_owner_can_send_a_test_webhook(
    resources: Resources, smtp: SmtpServer, receiver: Receiver, notifier_app: Any
) -> None:
    account = uid("acct")
    async with notifier_app() as client:
        none_yet = await internal(client, "POST", "/api/notifications/webhook/test", account)
        assert none_yet.status_code == 409
        secret = (
            await internal(
                client, "PUT", "/api/notifications/preferences", account, json={"webhook_url": receiver.url}
            )
        ).json()["webhook_secret"]
        queued = await internal(client, "POST", "/api/notifications/webhook/test", account)
        assert queued.status_code == 202 and queued.json()["status"] == "pending"
        await until(lambda: len(receiver.hooks) == 1, what="the test webhook")
    hook = receiver.hooks[0]
    assert verify(secret, hook.headers["faregate-signature"], hook.body)
    assert msgspec.json.decode(hook.body)["type"] == "webhook_test"


async def test_a_webhook_host_that_turned_private_is_refused_at_send_time(
    resources: Resources, smtp: SmtpServer, receiver: Receiver, notifier_app: Any
) -> None:
    """The URL passed the check when it was set (here: written directly); now it is a local address."""
    assert resources.pool and resources.publisher
    account = uid("acct")
    await resources.pool.execute(
        """INSERT INTO notifier.preferences
             (account_id, email_alerts, webhook_url, webhook_secret, webhook_alerts)
           VALUES ($1, '{}', $2, $3, '{low_balance}')""",
        account,
        receiver.url,
        crypto.seal("whsec_x", resources.common.secret_key),
    )
    async with notifier_app(webhook_allow_private=False) as client:
        await resources.publisher.publish(
            events.BalanceLow(account_id=account, balance_micros=1, threshold_micros=2)
        )
        for _ in range(100):
            rows = (
                await internal(client, "GET", "/api/notifications/deliveries?status=failed", account)
            ).json()
            if rows:
                break
            await asyncio.sleep(0.05)
    assert rows and rows[0]["last_error"] == "webhook URL resolves to a private or local address"
    assert receiver.attempts == 0


async def test_the_backlog_is_visible_as_metrics(resources: Resources) -> None:
    """What an operator watches to see that SMTP is down: how many wait, and for how long."""
    assert resources.pool
    await resources.pool.execute(
        "INSERT INTO notifier.outbox (dedupe_key, channel, recipient, kind, event_type, payload, created_at)"
        " VALUES ($1, 'email', 'admin:ops@example.com', 'channel_open', 'channel.state_changed', '{}',"
        " now() - interval '10 minutes')",
        uid("metrics"),
    )
    await housekeeping.measure(resources.pool)
    pending = REGISTRY.get_sample_value("faregate_notifier_outbox_pending", {"channel": "email"})
    oldest = REGISTRY.get_sample_value(
        "faregate_notifier_outbox_oldest_pending_seconds", {"channel": "email"}
    )
    assert pending is not None and pending >= 1
    assert oldest is not None and oldest >= 600
