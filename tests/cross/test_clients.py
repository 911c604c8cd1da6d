"""The TypeScript and Go clients against a real server (SQLite), through their own runners."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.api import RunningServer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[RunningServer]:
    running = await RunningServer.start(f"sqlite+aiosqlite:///{tmp_path / 'cross.db'}")
    yield running
    await running.close()


async def _run(command: list[str], cwd: Path, live: RunningServer) -> str:
    env = {
        **os.environ,
        "RECKON_TEST_TARGET": live.target,
        "RECKON_TEST_ADMIN_KEY": live.admin_key,
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
async def test_typescript_client_suite_passes_against_the_server(live: RunningServer) -> None:
    output = await _run(["npm", "test", "--silent"], ROOT, live)
    passed = re.search(r"# pass (\d+)", output)
    assert passed, output
    assert int(passed.group(1)) >= 3, output
    assert re.search(r"# fail 0", output), output
    assert re.search(r"# skipped 0", output), output


@pytest.mark.timeout(300)
async def test_go_client_suite_passes_against_the_server(live: RunningServer) -> None:
    output = await _run(["go", "test", "-count=1", "-v", "./..."], ROOT / "clients" / "go", live)
    assert "--- SKIP" not in output, output
    assert re.search(r"--- PASS: TestLive", output), output
