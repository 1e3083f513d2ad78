"""The notifier turns an organisation invitation into an e-mail to the invited address, the link sealed at
rest."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from services.notifier import consumer, templating
from services.notifier.notifications import Context, plan
from shared import events as ev

T = datetime(2030, 1, 2, 3, 4, tzinfo=UTC)


def test_an_invitation_becomes_a_mail_to_the_invited_address_with_the_link_kept_apart() -> None:
    event = ev.OrgMemberInvited(org_id="org_1", org_name="Acme <R&D>", invitation_id="inv_1",
                                email="bob@example.com", role="member",
                                invite_url="https://console.example/orgs/join?token=s3cret", expires_at=T)
    [item] = plan(event, None, Context(console_url="https://console.example"))
    assert (item.channel, item.recipient, item.kind) == ("email", "address:bob@example.com", "org_invite")
    # The link lets its holder join: it travels only in the sealed part, never in the plain variables.
    assert "s3cret" not in msgspec.json.encode([item.vars, item.data]).decode()
    assert item.secret == {"invite_url": "https://console.example/orgs/join?token=s3cret"}
    mail = templating.render(item.kind, {**item.vars, **item.secret})
    assert mail.subject == "You are invited to join Acme <R&D> on Faregate"
    assert "https://console.example/orgs/join?token=s3cret" in mail.text
    assert "Acme &lt;R&amp;D&gt;" in mail.html and "${" not in mail.html


def test_the_notifier_listens_for_invitations() -> None:
    assert "org.member_invited" in consumer.ACCOUNTS.filter_subjects
