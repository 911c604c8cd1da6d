"""The `reckon` command as an operator runs it."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import re
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from google.protobuf import struct_pb2
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from reckon.v1 import admin_service_pb2, audit_service_pb2
from reckon_server.storage import migrate
from tests.support.api import RunningServer, Stubs, bearer

RECKON = [sys.executable, "-m", "reckon_server.cli"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _wait_serving(target: str) -> None:
    async with aio.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(100):
            try:
                response = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except aio.AioRpcError:
                await asyncio.sleep(0.1)
    raise AssertionError(f"server at {target} never became SERVING")


async def test_first_serve_prints_an_admin_key_once_and_sigterm_drains(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECKON_")}
    port = _free_port()

    async def serve() -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            *RECKON,
            "--database-url",
            url,
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            env=env,
            stderr=asyncio.subprocess.PIPE,
        )
        await _wait_serving(f"127.0.0.1:{port}")
        return process

    process = await serve()
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 15) == 0
    assert process.stderr is not None
    log = (await process.stderr.read()).decode()
    keys = re.findall(r"rk_[A-Za-z0-9_-]{43}", log)
    assert len(keys) == 1, log

    # The key works, and a second start on the same database mints no new key.
    process = await serve()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            listed = await Stubs.on(channel).admin.ListAgents(
                admin_service_pb2.ListAgentsRequest(), metadata=bearer(keys[0])
            )
            assert [a.name for a in listed.agents] == ["admin"]
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0
    assert process.stderr is not None
    assert "rk_" not in (await process.stderr.read()).decode()


def cli_on(database: Path) -> Callable[..., Awaitable[tuple[int, str, str]]]:
    """`reckon --database-url <database> ARGS...`, run to its end: exit code, stdout, stderr."""

    async def run(*args: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            *RECKON,
            "--database-url",
            f"sqlite+aiosqlite:///{database}",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    return run


async def test_db_upgrade_and_key_commands(tmp_path: Path) -> None:
    run = cli_on(tmp_path / "keys.db")
    code, out, _ = await run("db", "upgrade")
    assert code == 0
    assert "schema at revision" in out
    code, out, err = await run("keys", "create", "--agent", "ingest-bot")
    assert code == 0
    assert re.fullmatch(r"rk_[A-Za-z0-9_-]{43}\n", out)
    key_id = re.search(r"key_id (key_[0-9a-f]+)", err)
    assert key_id
    code, out, _ = await run("keys", "revoke", key_id.group(1))
    assert code == 0
    assert "revoked" in out
    code, _, err = await run("keys", "revoke", "key_doesnotexist")
    assert code == 1
    code, _, err = await run("keys", "create", "--agent", "bad name!")
    assert code == 2
    assert "name" in err


async def test_db_downgrade_goes_back_to_a_revision_and_upgrade_returns(tmp_path: Path) -> None:
    run = cli_on(tmp_path / "down.db")
    head = f"schema at revision {migrate.head_revision()}\n"
    code, out, _ = await run("db", "upgrade")
    assert (code, out) == (0, head)
    code, out, err = await run("db", "downgrade", "0008")
    assert (code, out) == (0, "schema at revision 0008\n")
    assert "Running downgrade 0009 -> 0008" in err
    for ahead_or_unknown in ("0009", "no-such-revision"):
        code, _, err = await run("db", "downgrade", ahead_or_unknown)
        assert code == 2
        assert f"cannot downgrade to {ahead_or_unknown!r}" in err
    code, out, _ = await run("db", "upgrade")
    assert (code, out) == (0, head)


async def test_export_verify_and_agents_list(api: RunningServer, tmp_path: Path) -> None:
    agent = await api.register("exported")
    metadata = struct_pb2.Struct()
    metadata.update({"migration": "0043", "rows": 14200})
    events = []
    for action in ("db.migrate", "db.delete", "tool.read"):
        events.append(
            await api.stubs.audit.Execute(
                audit_service_pb2.ExecuteRequest(action_type=action, metadata=metadata),
                metadata=bearer(agent),
            )
        )
    await api.stubs.audit.Report(
        audit_service_pb2.ReportRequest(
            audit_event_id=events[0].audit_event_id,
            outcome=audit_service_pb2.Outcome(status=1, message="ok, 完了"),
        ),
        metadata=bearer(agent),
    )

    async def run(*args: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            *RECKON,
            "--database-url",
            api.database_url,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    jsonl = tmp_path / "trail.jsonl"
    code, _, err = await run("export", "--format", "jsonl", "-o", str(jsonl))
    assert code == 0, err
    assert "exported 3 events" in err
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["audit_event_id"] for r in rows] == [e.audit_event_id for e in events]
    assert rows[0]["outcome"]["status"] == "SUCCESS"
    assert rows[0]["outcome"]["message"] == "ok, 完了"
    assert rows[0]["metadata"] == {"migration": "0043", "rows": 14200}
    assert rows[1]["outcome"] is None

    code, out, _ = await run("export", "--format", "csv", "--action", "db.*", "--unreported")
    assert code == 0
    table = list(csv.DictReader(io.StringIO(out)))
    assert [r["audit_event_id"] for r in table] == [events[1].audit_event_id]
    assert json.loads(table[0]["metadata"])["rows"] == 14200

    code, out, _ = await run("audit", "verify")
    assert (code, out.strip()) == (0, "audit chain intact: 3 events verified")
    code, out, _ = await run("agents", "list")
    assert code == 0
    assert {line.split("\t")[0] for line in out.splitlines()} == {"admin", "exported"}
    code, _, err = await run("audit", "verify", "--org", "nope")
    assert code == 2
    assert "no org named 'nope'" in err


async def test_a_setting_out_of_range_stops_the_command_with_its_name(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        *RECKON,
        "--database-url",
        f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}",
        "serve",
        "--listen",
        "127.0.0.1:0",
        env={**os.environ, "RECKON_WATCH_BACKLOG": "0"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    assert "RECKON_WATCH_BACKLOG" in err.decode()
    assert "Traceback" not in err.decode()
    assert not (tmp_path / "unused.db").exists()
