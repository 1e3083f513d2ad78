"""Settings of the usage service (environment: FAREGATE_USAGE_*)."""

from __future__ import annotations

from shared.config import ServerSettings, register


@register("USAGE")
class UsageSettings(ServerSettings, frozen=True, kw_only=True):
    port: int = 8103
    # Request-log rows older than this many days are dropped, a whole month partition at a time (a partition
    # goes once all of it is older than this). Hourly and daily aggregates are kept.
    retention_days: int = 400
    # How often the retention job runs in the service process (seconds); 0 disables it (run
    # `faregate usage retention` from cron instead).
    retention_interval_s: float = 3600.0
    # Postgres connections this process may hold (consumer batches, API queries, CSV exports).
    pool_size: int = 10
    # Messages the usage-log consumer writes per transaction: large batches keep up with a busy gateway.
    batch_size: int = 500
    # Cookie holding the console session (the keys service sets it); its value goes to keys' /internal/whoami.
    session_cookie: str = "fg_session"
    # Log API: most rows one page may hold; CSV export is streamed and unbounded.
    max_page_size: int = 500
    # Time-series API: most buckets one query may return (e.g. 90 days of hours is 2160).
    max_series_buckets: int = 5000

    def __post_init__(self) -> None:
        if self.retention_days < 31:
            raise ValueError("FAREGATE_USAGE_RETENTION_DAYS must be at least 31 (partitions are monthly)")
        if self.batch_size < 1 or self.pool_size < 2:
            raise ValueError("FAREGATE_USAGE_BATCH_SIZE must be >= 1 and FAREGATE_USAGE_POOL_SIZE >= 2")
