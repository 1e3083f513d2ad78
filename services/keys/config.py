"""Settings of the keys service (environment: FAREGATE_KEYS_*)."""

from __future__ import annotations

from shared.config import ServerSettings, register


@register("KEYS")
class KeysSettings(ServerSettings, frozen=True, kw_only=True):
    port: int = 8101
    # Public address of the web console; reset links point at `<public_url>/reset-password?token=...`.
    public_url: str = "http://127.0.0.1:8101"
    # Whether anyone may register an account (off: only admins create accounts).
    allow_registration: bool = True
    # A session ends after this many seconds without a request, and in any case after session_max_s.
    session_idle_s: int = 12 * 3600
    session_max_s: int = 30 * 24 * 3600
    # Session cookie `Secure` flag: auto (set when the request arrived over HTTPS, per X-Forwarded-Proto too),
    # always, or never.
    cookie_secure: str = "auto"
    # Take the client address from the first X-Forwarded-For entry (only behind a proxy that sets it).
    trust_forwarded_for: bool = False
    # Failed-login throttling: after this many failures within login_window_s, further attempts get 429.
    login_max_failures_per_account: int = 5
    login_max_failures_per_address: int = 20
    login_window_s: int = 15 * 60
    # Password-reset links stay valid this long and work once.
    reset_token_ttl_s: int = 3600
    # Reset e-mails per address and hour; further requests get the same answer but send nothing.
    reset_max_per_hour: int = 5
    min_password_length: int = 10
    # First admin, created at start-up when both are set and no account has that e-mail.
    admin_email: str = ""
    admin_password: str = ""
    # Defaults for new API keys (0 = no limit).
    default_rpm_limit: int = 0
    default_tpm_limit: int = 0
    default_concurrency_limit: int = 100
    # Most keys one account may hold (deleted ones excluded).
    max_keys_per_account: int = 200
    # The expiry scan: how often it runs and how far ahead it warns (key.expiring, once per key and expiry).
    expiry_scan_interval_s: int = 300
    expiry_lookahead_s: int = 3 * 24 * 3600
    # Organisation invitations (link and e-mail) stay valid this long and work once.
    org_invite_ttl_s: int = 7 * 24 * 3600
    # Catalog file imported at start-up when the catalog is empty ("" = none).
    catalog_file: str = ""
    # Web console (services/keys/console.py): the built files ("" = the repo's console/dist), and whether to
    # reverse-proxy the other services' browser APIs (off where an Ingress routes them), and where those live.
    console_dir: str = ""
    console_proxy: bool = True
    gateway_url: str = "http://127.0.0.1:8100"
    notifier_url: str = "http://127.0.0.1:8104"

    def __post_init__(self) -> None:
        if self.cookie_secure not in ("auto", "always", "never"):
            raise ValueError("FAREGATE_KEYS_COOKIE_SECURE must be auto, always or never")
        if self.session_idle_s <= 0 or self.session_max_s <= 0:
            raise ValueError("FAREGATE_KEYS_SESSION_IDLE_S and _MAX_S must be positive")
