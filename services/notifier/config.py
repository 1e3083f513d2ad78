"""Settings of the notifier service (environment: FAREGATE_NOTIFIER_*)."""

from __future__ import annotations

from shared.config import ConfigError, ServerSettings, register


@register("NOTIFIER")
class NotifierSettings(ServerSettings, frozen=True, kw_only=True):
    port: int = 8104  # HTTP API (preferences, delivery history) and /healthz, /readyz, /metrics

    # --- SMTP -----------------------------------------------------------------------------------------------
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    # none (plain), starttls (upgrade after connecting; fails if the server lacks it) or tls (implicit).
    smtp_security: str = "none"
    smtp_username: str = ""  # empty: no AUTH
    smtp_password: str = ""  # with smtp_username
    smtp_timeout_s: float = 20.0  # whole conversation per message; must stay well below lease_s
    smtp_validate_certs: bool = True  # false only for a test server with a self-signed certificate
    mail_from: str = "Faregate <no-reply@faregate.local>"  # the From header and envelope sender
    # Right-hand side of the Message-ID we derive from each outbox key (receivers de-duplicate on it).
    message_id_domain: str = "faregate.local"

    # --- Webhooks -------------------------------------------------------------------------------------------
    webhook_timeout_s: float = 10.0  # per attempt; must stay well below lease_s
    webhook_max_attempts: int = 10  # then the delivery is recorded as failed, visible to the owner
    # Allow account webhooks to loopback/private addresses (tests, a private deployment). Off: a webhook must
    # not be a way to reach the operator's internal network.
    webhook_allow_private: bool = False
    # Operators' own webhook for admin alerts (channel out of rotation); empty: none. Secret signs its bodies.
    admin_webhook_url: str = ""
    admin_webhook_secret: str = ""  # signs admin webhook bodies (WEBHOOKS.md)

    # --- Sending --------------------------------------------------------------------------------------------
    email_max_attempts: int = 20  # SMTP transient failures (down, 4xx); a 5xx for the message fails at once
    backoff_base_s: float = 5.0  # retry n waits about base * 2^(n-1), jittered, capped by backoff_max_s
    backoff_max_s: float = 3600.0  # the longest wait between two attempts
    # How long a sender owns a claimed row; a sender killed mid-send leaves it to be retried after this.
    lease_s: float = 60.0
    # Concurrent senders per channel in this process (each claims one row at a time).
    email_workers: int = 4
    webhook_workers: int = 8
    poll_interval_s: float = 1.0  # how often idle senders look for due rows (new rows also wake them at once)
    # Sent, cancelled and failed outbox rows (the owners' delivery history) are deleted after this many days.
    # Processed-event ids are kept as long, and at least 8 days (longer than JetStream keeps events).
    retention_days: int = 30
    # An e-mail whose account has no known address yet waits this long for account.registered, then fails.
    address_wait_s: float = 3600.0

    # --- Content --------------------------------------------------------------------------------------------
    # Addresses that receive admin alerts (a channel taken out of rotation); comma-separated.
    admin_emails: tuple[str, ...] = ()
    # Base URL of the web console, used for links in e-mails.
    console_url: str = "http://127.0.0.1:8101"
    product_name: str = "Faregate"  # the name e-mails are signed with

    def __post_init__(self) -> None:
        # ConfigError rather than ValueError: `config.load` passes it through, naming the variable.
        if self.smtp_security not in ("none", "starttls", "tls"):
            raise ConfigError("FAREGATE_NOTIFIER_SMTP_SECURITY must be none, starttls or tls")
        if max(self.smtp_timeout_s, self.webhook_timeout_s) * 2 > self.lease_s:
            raise ConfigError("FAREGATE_NOTIFIER_LEASE_S must be at least twice the SMTP and webhook"
                              " timeouts")
        if self.email_workers < 1 or self.webhook_workers < 1:
            raise ConfigError("FAREGATE_NOTIFIER_EMAIL_WORKERS and _WEBHOOK_WORKERS must be at least 1")
