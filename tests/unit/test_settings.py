"""Settings: RECKON_* parsing and the bounds that keep a server able to work."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from reckon_server.settings import Settings


def test_environment_overrides_defaults_by_type() -> None:
    settings = Settings.from_env(
        {
            "RECKON_WATCH_BACKLOG": "50",
            "RECKON_GRACE_SECONDS": "0",
            "RECKON_SUSPEND_ON_CRITICAL": "yes",
            "RECKON_POLICY_FILE": "policies.toml",
        }
    )
    assert settings.watch_backlog == 50
    assert settings.grace_seconds == 0.0
    assert settings.suspend_on_critical is True
    assert settings.policy_file == Path("policies.toml")
    assert settings.stream_window == Settings().stream_window


@pytest.mark.parametrize(
    ("variable", "raw", "message"),
    [
        (
            "RECKON_WATCH_BACKLOG",
            "0",
            "watch_backlog (RECKON_WATCH_BACKLOG) must be greater than 0",
        ),
        (
            "RECKON_STREAM_WINDOW",
            "-3",
            "stream_window (RECKON_STREAM_WINDOW) must be greater than 0",
        ),
        (
            "RECKON_SEND_TIMEOUT_SECONDS",
            "0",
            "send_timeout_seconds (RECKON_SEND_TIMEOUT_SECONDS) must be greater than 0",
        ),
        ("RECKON_GRACE_SECONDS", "-1", "grace_seconds (RECKON_GRACE_SECONDS) must be at least 0"),
        (
            "RECKON_GROUP_COMMIT_MAX_ROWS",
            "-1",
            "group_commit_max_rows (RECKON_GROUP_COMMIT_MAX_ROWS) must be at least 0",
        ),
        ("RECKON_DB_POOL_SIZE", "many", "RECKON_DB_POOL_SIZE='many' is not a valid int"),
        ("RECKON_SUSPEND_ON_CRITICAL", "maybe", "RECKON_SUSPEND_ON_CRITICAL='maybe'"),
    ],
)
def test_out_of_range_or_malformed_values_are_refused(
    variable: str, raw: str, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Settings.from_env({variable: raw})
