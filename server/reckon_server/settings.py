"""Server settings: one frozen dataclass, defaults here, overridden by RECKON_* and CLI flags."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Settings:
    """Everything the server can be told. Each field maps to env var `RECKON_<FIELD>`."""

    listen: str = "127.0.0.1:50051"
    """host:port to listen on; port 0 picks a free port (reported by `create_server`)."""

    database_url: str = "sqlite+aiosqlite:///reckon.db"
    """SQLAlchemy URL: `sqlite+aiosqlite:///path` (default) or `postgresql+asyncpg://...`."""

    admin_key: str | None = None
    """An admin API key to provision at start (deployments and tests); never logged."""

    org: str = "default"
    """The org that a provisioned or first-start admin key belongs to."""

    policy_file: Path | None = None
    """Policy file (TOML) for AuditService.Execute; none means every action is POLICY_NOT_FOUND."""

    grace_seconds: float = 10.0
    """How long in-flight calls may finish after SIGTERM before they are cancelled."""

    max_message_bytes: int = 16 * 1024 * 1024
    """Largest request or response message accepted."""

    keepalive_seconds: float = 30.0
    """Interval of server keepalive pings on idle connections."""

    send_timeout_seconds: float = 60.0
    """A streaming call whose caller takes none of the server's messages for this long, while
    one waits to be sent, is ended (CALLER_STALLED), freeing its place for others."""

    check_ttl_seconds: float = 900.0
    """How long an approved governance check (and its reservation) stays valid."""

    pacing_threshold_pct: int = 20
    """Delivery pacing off plan by at least this much raises a budget_authority warning."""

    suspend_on_critical: bool = False
    """Suspend a plan when an outcome raises a critical finding (pending human review)."""

    stream_window: int = 16
    """Batches one delivery stream may have read but not acknowledged."""

    stream_server_inflight: int = 64
    """Delivery batches all streams together may have read but not committed."""

    stream_max_open: int = 512
    """Delivery streams open at once; more are refused UNAVAILABLE / OVERLOADED."""

    stream_idle_seconds: float = 300.0
    """A delivery stream that sends nothing for this long is closed."""

    watch_heartbeat_seconds: float = 15.0
    """WatchPlan sends an event or a heartbeat at least this often."""

    watch_max_open: int = 1024
    """WatchPlan watchers open at once; more are refused UNAVAILABLE / OVERLOADED."""

    watch_backlog: int = 10_000
    """A WatchPlan watcher this many events behind is dropped (WATCH_LAGGING)."""

    auth_cache_seconds: float = 2.0
    """How long an authenticated key is trusted without a lookup. Revocations through the API
    take effect at once on every replica; this bounds only out-of-band revocations."""

    group_commit_linger_ms: float = 2.0
    """Under concurrent writes, how long a group commit waits for more writes to join it.
    Larger transactions cost the server and the database less per write; a lone writer never
    waits."""

    group_commit_max_rows: int = 0
    """Rows (a delivery batch counts its reports) a group-commit transaction takes at most; 0
    for the backend's own: 8,192 on SQLite, 2,048 on PostgreSQL (`storage.group_commit`)."""

    db_pool_size: int = 8
    """Connections held by the PostgreSQL pool (SQLite uses one writer connection)."""

    def __post_init__(self) -> None:
        for name in sorted(_POSITIVE | _NON_NEGATIVE):
            value = getattr(self, name)
            if value < 0 or (value == 0 and name in _POSITIVE):
                bound = "greater than 0" if name in _POSITIVE else "at least 0"
                raise ValueError(f"{name} (RECKON_{name.upper()}) must be {bound}, not {value!r}")

    def with_overrides(self, values: Mapping[str, Any]) -> Settings:
        """A copy with the given non-None values replaced (CLI flags)."""
        return dataclasses.replace(self, **{k: v for k, v in values.items() if v is not None})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Defaults overridden by every `RECKON_<FIELD>` present in the environment."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f"RECKON_{f.name.upper()}")
            if raw is None:
                continue
            values[f.name] = _parse(f.name, str(f.type), raw)
        return cls(**values)


# Numeric settings outside these bounds would stall, refuse or drop all work.
_POSITIVE = {
    "max_message_bytes",
    "keepalive_seconds",
    "send_timeout_seconds",
    "check_ttl_seconds",
    "stream_window",
    "stream_server_inflight",
    "stream_max_open",
    "stream_idle_seconds",
    "watch_heartbeat_seconds",
    "watch_backlog",
    "watch_max_open",
    "db_pool_size",
}
_NON_NEGATIVE = {
    "grace_seconds",
    "auth_cache_seconds",
    "pacing_threshold_pct",
    "group_commit_linger_ms",
    "group_commit_max_rows",
}


def _parse(name: str, type_name: str, raw: str) -> Any:
    try:
        if type_name == "bool":
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes")
        if type_name == "float":
            return float(raw)
        if type_name == "int":
            return int(raw)
        if "Path" in type_name:
            return Path(raw)
    except ValueError as exc:
        raise ValueError(f"RECKON_{name.upper()}={raw!r} is not a valid {type_name}") from exc
    return raw
