"""The TypeScript and Go clients against a real server (SQLite), through their own runners."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.api import RunningServer
from tests.support.delivery import committed_plan
from tests.support.governance import Buyer, M

ROOT = Path(__file__).resolve().parents[2]


PLAN, MEDIA_BUY = "cross-plan", "mb_1"


@dataclass
class Live:
    """A server, and a buyer whose plan has a committed media buy to stream delivery to."""

    server: RunningServer
    buyer: Buyer


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[Live]:
    running = await RunningServer.start(f"sqlite+aiosqlite:///{tmp_path / 'cross.db'}")
    yield Live(running, await committed_plan(running, "producer", PLAN, {MEDIA_BUY: 150_000}))
    await running.close()


async def _run(command: list[str], cwd: Path, live: Live) -> str:
    env = {
        **os.environ,
        "RECKON_TEST_TARGET": live.server.target,
        "RECKON_TEST_ADMIN_KEY": live.server.admin_key,
        "RECKON_TEST_BUYER_KEY": live.buyer.key,
        "RECKON_TEST_PLAN_ID": PLAN,
        "RECKON_TEST_MEDIA_BUY_ID": MEDIA_BUY,
    }
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    text = output.decode()
    assert process.returncode == 0, f"{' '.join(command)} failed:\n{text}"
    return text


@pytest.mark.timeout(300)
async def test_typescript_client_suite_passes_against_the_server(live: Live) -> None:
    output = await _run(["npm", "test", "--silent"], ROOT, live)
    passed = re.search(r"# pass (\d+)", output)
    assert passed, output
    assert int(passed.group(1)) >= 5, output
    assert re.search(r"# fail 0", output), output
    assert re.search(r"# skipped 0", output), output
    await _assert_streamed_once(live)


@pytest.mark.timeout(300)
async def test_go_client_suite_passes_against_the_server(live: Live) -> None:
    output = await _run(["go", "test", "-count=1", "-v", "./..."], ROOT / "clients" / "go", live)
    assert "--- SKIP" not in output, output
    assert re.search(r"--- PASS: TestLiveStreamDelivery", output), output
    assert re.search(r"--- PASS: TestLiveWatchPlan", output), output
    await _assert_streamed_once(live)


async def _assert_streamed_once(live: Live) -> None:
    """The client's one valid report is stored once: not its refused neighbour, nor again
    for the re-sent batch, nor the batch after the gap."""
    assert (await live.buyer.state(PLAN)).spend_micros == 1_000 * M
