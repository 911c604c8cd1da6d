"""Delivery ingest: StreamDelivery against its two bounds, in one run.

    .venv/bin/python -m tests.perf.bench_delivery [--reports 200000]
        [--soak 10000000 [--producer-reports 500000]] [--crowd 60]
        [--sqlite-only | --off-pace-only | --postgres-only | --neighbours 200]

(a) a no-op grpc.aio bidi servicer with the same messages (the transport bound), (b) the same
delivery rows upserted by plain sqlite3 executemany, 500 per transaction (the storage bound;
also printed with each report's outcome row inserted as well, both rows StreamDelivery writes,
then both through apsw, the driver of the server's writer process, then both written as that
process writes new periods and outcomes (its engine and statements), and both going into
in-memory tables without keys, through sqlite3 and through apsw: each driver's own cost),
(c) StreamDelivery on SQLite, (d) StreamDelivery on PostgreSQL, (e) StreamDelivery on SQLite
with every report off pace, so that each carries a finding. Batches of 500 from a client in a
separate process. `--soak N` streams N reports to SQLite, from producers that each send
`--producer-reports` on a connection of their own, one after another, and prints as it goes
the RSS of the server and of its child processes (the SQLite writer and multiprocessing's
resource tracker), and how long GetPlanAuditLogs takes over the growing plan: its first page
(the summary and 1,000 entries) and its next page of 1,000 entries, and the size of the WAL
file (the most the log has held). `--crowd N` has N
producers each send 20 batches of 1,000 reports while another connection holds SQLite's
write lock, then lets the backlog commit, and prints the server's RSS before, while held and
at its peak. `--sqlite-only`, `--off-pace-only` and `--postgres-only` run (c), (e) or (d)
alone: quick to repeat when comparing two versions of the server, or two settings (the
server it starts takes `RECKON_*` from the environment). `--neighbours N` runs (c) alone
after storing periods of N other campaigns for every minute its reports cover, as other
tenants reporting over the same hours would have.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any

import apsw
import sqlalchemy as sa
from grpc import aio

from reckon.v1 import admin_service_pb2, admin_service_pb2_grpc
from reckon.v1 import delivery_service_pb2 as delivery_pb
from reckon.v1 import governance_service_pb2 as pb
from reckon_server.clock import epoch_micros
from reckon_server.services.delivery import StreamLimits
from reckon_server.storage import apsw_dbapi
from reckon_server.storage.database import sqlite_batch_engine
from reckon_server.storage.schema import Base, delivery_periods, plan_outcomes
from reckon_server.storage.sql import BulkInsert
from tests.perf.delivery_client import ON_PLAN_SPEND, START, batches
from tests.support.api import Stubs, new_secret
from tests.support.delivery import stream_commits_held
from tests.support.governance import plan, seed_payload, seed_seller_response, struct
from tests.support.postgres import start_postgres
from tests.support.processes import ServerProcess, start_module, start_reckon

BATCH = 500
MEDIA_BUYS = 50
PLAN = "bench-plan"
NO_FINDINGS = '{"findings":[]}'
INSERT_PERIOD = "INSERT INTO delivery_periods VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"


async def prepare(server: ServerProcess, admin: str) -> str:
    """An agent whose plan has MEDIA_BUYS committed media buys; returns its key."""
    async with aio.insecure_channel(server.target) as channel:
        key = (
            await admin_service_pb2_grpc.AdminServiceStub(channel).RegisterAgent(
                admin_service_pb2.RegisterAgentRequest(name="bench"),
                metadata=(("authorization", f"Bearer {admin}"),),
            )
        ).api_key
        md = (("authorization", f"Bearer {key}"),)
        stubs = Stubs.on(channel)
        await stubs.governance.SyncPlans(
            pb.SyncPlansRequest(
                idempotency_key="bench-sync-0000001", plans=[plan(PLAN, 100_000_000)]
            ),
            metadata=md,
        )
        for n in range(MEDIA_BUYS):
            check = await stubs.governance.CheckGovernance(
                pb.CheckGovernanceRequest(
                    plan_id=PLAN,
                    caller="https://bench.example",
                    payload=struct(seed_payload(1_000_000)),
                ),
                metadata=md,
            )
            await stubs.governance.ReportPlanOutcome(
                pb.ReportPlanOutcomeRequest(
                    plan_id=PLAN,
                    check_id=check.check_id,
                    idempotency_key=f"bench-settle-{n:08d}",
                    outcome=pb.OUTCOME_TYPE_COMPLETED,
                    seller_response=seed_seller_response(1_000_000, media_buy_id=f"mb_{n}"),
                ),
                metadata=md,
            )
    return key


async def client(
    target: str,
    key: str,
    stream_id: str,
    reports: int,
    first: int = 0,
    spend_micros: int = ON_PLAN_SPEND,
) -> dict[str, float]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.perf.delivery_client",
        target,
        key,
        stream_id,
        PLAN,
        str(MEDIA_BUYS),
        str(reports),
        str(BATCH),
        str(first),
        str(spend_micros),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    assert process.returncode == 0, "load generator failed"
    result: dict[str, float] = json.loads(out)
    return result


def bound_rows(reports: int) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The period rows and outcome rows of `reports` reports on MEDIA_BUYS campaigns, as
    StreamDelivery stores them."""
    base = 1_773_532_800_000_000
    periods, outcome_rows = [], []
    for n in range(reports):
        context, outcome_id = f"gc_{n % MEDIA_BUYS}", f"out_{n:024d}"
        start = base + (n // MEDIA_BUYS) * 60_000_000
        end, cpm, plan_hash = start + 60_000_000, 10 * ON_PLAN_SPEND, "0" * 64
        periods.append(
            (
                context,
                start,
                end,
                "org",
                PLAN,
                ON_PLAN_SPEND,
                100,
                cpm,
                None,
                None,
                outcome_id,
                base,
            )
        )
        outcome_rows.append(
            (outcome_id, "org", PLAN, None, context, 1, 3, 1, None, 0, NO_FINDINGS, plan_hash, base)
        )
    return periods, outcome_rows


def writer_bound(path: Path, reports: int) -> float:
    """Reports/s of both rows written as the SQLite writer process writes them (its engine,
    statements and SQLite options), 500 reports per transaction, in the server's own tables."""
    apsw_dbapi.configure_process()
    engine = sqlite_batch_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine, tables=[delivery_periods, plan_outcomes])
    periods, outcome_rows = bound_rows(reports)
    new_periods, outcomes = BulkInsert(delivery_periods), BulkInsert(plan_outcomes)
    started = time.perf_counter()
    with engine.connect() as conn:
        for first in range(0, reports, BATCH):
            with conn.begin():
                new_periods.write(conn, periods[first : first + BATCH])
                outcomes.write(conn, outcome_rows[first : first + BATCH])
    elapsed = time.perf_counter() - started
    engine.dispose()
    return reports / elapsed


def sqlite_bound(
    path: Path | None, reports: int, *, outcomes: bool = False, through_apsw: bool = False
) -> float:
    """Reports/s of the same period upserts through plain sqlite3, 500 per transaction, in the
    server's own tables; with `outcomes`, each report's outcome row too: both rows that
    StreamDelivery writes per report, and nothing else; `through_apsw`, with apsw instead of
    sqlite3. Without a `path`, both rows go into in-memory tables with no key or index: what
    it costs the driver to hand SQLite the rows, before any B-tree or disk."""
    db: Any
    connect: Callable[[str], Any] = (
        apsw.Connection if through_apsw else partial(sqlite3.connect, isolation_level=None)
    )
    if path is None:
        db = connect(":memory:")
        for table in (delivery_periods, plan_outcomes):
            db.execute(f"CREATE TABLE {table.name} ({', '.join(table.columns.keys())})")
    else:
        engine = sa.create_engine(f"sqlite:///{path}")
        Base.metadata.create_all(engine, tables=[delivery_periods, plan_outcomes])
        # Closed before the file is opened again: two SQLite libraries must never hold one file
        # at once in a process.
        engine.dispose()
        db = connect(str(path))
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
    periods, outcome_rows = bound_rows(reports)
    upsert_period = INSERT_PERIOD
    if path is not None:
        upsert_period += (
            " ON CONFLICT (governance_context, period_start, period_end) DO UPDATE SET "
            "spend_micros = excluded.spend_micros, outcome_id = excluded.outcome_id"
        )
    insert_outcome = "INSERT INTO plan_outcomes VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
    started = time.perf_counter()
    for first in range(0, reports, BATCH):
        db.execute("BEGIN IMMEDIATE")
        db.executemany(upsert_period, periods[first : first + BATCH])
        if outcomes:
            db.executemany(insert_outcome, outcome_rows[first : first + BATCH])
        db.execute("COMMIT")
    elapsed = time.perf_counter() - started
    db.close()
    return reports / elapsed


def store_neighbours(path: Path, neighbours: int, reports: int) -> None:
    """Periods of `neighbours` campaigns of another plan for every minute that the load
    generator's `reports` cover."""
    minute = 60_000_000
    first = epoch_micros(START)
    rows = (
        (f"gc_neighbour_{n:06d}", start, start + minute, "org_neighbours", "neighbours",
         ON_PLAN_SPEND, 100, None, None, None, f"out_neighbour_{n}_{start}", first)
        for start in range(first, first + minute * -(-reports // MEDIA_BUYS), minute)
        for n in range(neighbours)
    )  # fmt: skip
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.executemany(INSERT_PERIOD, rows)


async def reckon_run(
    url: str,
    reports: int,
    spend_micros: int = ON_PLAN_SPEND,
    database_cpu: Callable[[], float] | None = None,
    neighbours: int = 0,
) -> tuple[dict[str, float], float]:
    """The load generator's figures, with the CPU use of the server (and of the database
    server, given `database_cpu`) added, and the peak RSS."""
    admin = new_secret()
    server = await start_reckon(url, admin)
    try:
        key = await prepare(server, admin)
        if neighbours:
            store_neighbours(Path(str(sa.make_url(url).database)), neighbours, reports)
        before, database_before = server.cpu_seconds(), database_cpu() if database_cpu else 0.0
        thread_before = server.writer_thread_seconds()
        result = await client(server.target, key, "bench-stream", reports, 0, spend_micros)
        after, database_after = server.cpu_seconds(), database_cpu() if database_cpu else 0.0
        thread_after = server.writer_thread_seconds()
        await check_stored(server.target, key, reports)
        result["server_cores"] = (after[0] - before[0]) / result["seconds"]
        result["writer_cores"] = (after[1] - before[1]) / result["seconds"]
        result["database_cores"] = (database_after - database_before) / result["seconds"]
        if thread_before and thread_after:
            running, waiting = (b - a for a, b in zip(thread_before, thread_after, strict=True))
            result["writer_running"] = running / result["seconds"]
            result["writer_waiting"] = waiting / result["seconds"]
        return result, server.peak_rss_mib()
    finally:
        await server.stop()


async def check_stored(target: str, key: str, reports: int) -> None:
    """Every report acknowledged is an outcome of the plan, beside the settlements `prepare`
    records: a run counts only what was stored."""
    request = pb.GetPlanAuditLogsRequest(plan_ids=[PLAN])
    async with aio.insecure_channel(target) as channel:
        stub, md = Stubs.on(channel).governance, (("authorization", f"Bearer {key}"),)
        [log] = (await stub.GetPlanAuditLogs(request, metadata=md)).plans
    stored = log.summary.outcomes_reported - MEDIA_BUYS
    if stored != reports:
        raise RuntimeError(f"{reports:,} reports acknowledged, {stored:,} stored")


async def audit_log_latency(target: str, key: str) -> tuple[float, float]:
    """Milliseconds GetPlanAuditLogs takes for its first page (the plan's summary and 1,000
    entries) and for the second page of 1,000 entries (a keyset page: the same wherever it
    starts)."""
    request = pb.GetPlanAuditLogsRequest(plan_ids=[PLAN], include_entries=True, page_size=1000)
    async with aio.insecure_channel(target) as channel:
        stub, md = Stubs.on(channel).governance, (("authorization", f"Bearer {key}"),)
        started = time.perf_counter()
        first = await stub.GetPlanAuditLogs(request, metadata=md)
        summary = time.perf_counter() - started
        request.page_token = first.next_page_token
        started = time.perf_counter()
        await stub.GetPlanAuditLogs(request, metadata=md)
        page = time.perf_counter() - started
    return 1000 * summary, 1000 * page


async def soak(reports: int, producer_reports: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        admin = new_secret()
        database = Path(tmp) / "soak.db"
        # SQLite reuses its WAL file from the start and never shrinks it: its size is the
        # longest the log has grown.
        wal = database.with_name(database.name + "-wal")
        server = await start_reckon(f"sqlite+aiosqlite:///{database}", admin)
        try:
            key = await prepare(server, admin)
            report_every = max(1, 50_000 // producer_reports)
            for producer, sent in enumerate(range(0, reports, producer_reports), 1):
                size = min(producer_reports, reports - sent)
                result = await client(server.target, key, f"soak-{sent}", size, first=sent)
                if producer % report_every and sent + size < reports:
                    continue
                summary_ms, page_ms = await audit_log_latency(server.target, key)
                own, *children = server.rss_mib_each()
                print(
                    f"{sent + size:>11,} reports  "
                    f"{result['reports'] / result['seconds']:>9,.0f}/s  "
                    f"RSS {own + sum(children):.0f} MiB (server {own:.0f} + "
                    f"{' + '.join(f'{child:.0f}' for child in children)}; "
                    f"peak {server.peak_rss_mib():.0f} MiB)  "
                    f"audit log: first page {summary_ms:,.0f} ms, next {page_ms:,.0f} ms  "
                    f"WAL {wal.stat().st_size / 2**20:.1f} MiB",
                    flush=True,
                )
        finally:
            await server.stop()


async def crowd(streams: int, batches_each: int = 20) -> None:
    """Memory under many producers whose batches cannot commit for a while, then commit."""

    size, work = 1000, []
    for n in range(streams):
        work.append(batches(PLAN, MEDIA_BUYS, batches_each * size, size, n * batches_each * size))
        for batch in work[-1]:
            for item in batch.reports:
                item.delivery.ext.update({"note": "x" * 400})

    async def produce(target: str, key: str, n: int) -> None:
        async with aio.insecure_channel(target) as channel:

            async def requests() -> AsyncIterator[delivery_pb.StreamDeliveryRequest]:
                yield delivery_pb.StreamDeliveryRequest(
                    open=delivery_pb.StreamOpen(stream_id=f"crowd-{n}")
                )
                for batch in work[n]:
                    yield delivery_pb.StreamDeliveryRequest(batch=batch)
                await asyncio.Event().wait()  # stays connected until the last ack

            call = Stubs.on(channel).delivery.StreamDelivery(
                requests(), metadata=(("authorization", f"Bearer {key}"),)
            )
            acks = 0
            async for response in call:
                acks += response.HasField("ack")
                if acks == batches_each:
                    break

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'crowd.db'}"
        admin = new_secret()
        server = await start_reckon(url, admin)
        try:
            key = await prepare(server, admin)
            before = server.rss_mib()
            async with stream_commits_held(url):
                producers = [
                    asyncio.ensure_future(produce(server.target, key, n)) for n in range(streams)
                ]
                await asyncio.sleep(15)
                held = server.rss_mib()
            await asyncio.gather(*producers)
            print(
                f"{streams} producers x {batches_each} batches of 1,000 reports, commits held "
                f"15 s: server RSS {before:.0f} MiB before, {held:.0f} MiB held, "
                f"peak {server.peak_rss_mib():.0f} MiB"
            )
        finally:
            await server.stop()


SQLITE = "(c) StreamDelivery on SQLite"
OFF_PACE = "(e) (c) with a finding per report"
POSTGRES = "(d) StreamDelivery on PostgreSQL"


def rate(result: dict[str, float]) -> float:
    return result["reports"] / result["seconds"]


def print_run(name: str, result: dict[str, float], rss: float) -> None:
    """One StreamDelivery run: its rate, ack latency, peak RSS and CPU."""
    print(
        f"{name:<37} {rate(result):>10,.0f} reports/s   ack p50 {result['p50_ms']:7.1f} ms"
        f"   p99 {result['p99_ms']:7.1f} ms   server peak RSS {rss:.0f} MiB"
    )

    def cores(key: str) -> str:
        return f"{result[key]:.2f} ({1e6 * result[key] / rate(result):.1f} us per report)"

    writer = (
        f"its writer process {cores('writer_cores')}"
        if result["writer_cores"]
        else f"PostgreSQL {cores('database_cores')}"
    )
    print(
        f"{'':<37} CPU in cores: server {cores('server_cores')}, {writer}, "
        f"load generator {result['client_cores']:.2f}"
    )
    if "writer_running" in result:
        # What is left of the run is when the thread had nothing to run: an fsync, or no
        # transaction yet in its pipe.
        blocked = 1 - result["writer_running"] - result["writer_waiting"]
        print(
            f"{'':<37} the writer's main thread: running {result['writer_running']:.2f} "
            f"of the run, waiting for a core {result['writer_waiting']:.2f}, "
            f"blocked {blocked:.2f}"
        )


OFF_PACE_SPEND = 2 * ON_PLAN_SPEND
"""(e): twice the planned rate, 100 % over pace, so a budget_authority warning on every
report."""


async def sqlite_run(
    directory: Path, reports: int, spend_micros: int, neighbours: int = 0
) -> tuple[dict[str, float], float]:
    url = f"sqlite+aiosqlite:///{directory / f'spend-{spend_micros}.db'}"
    return await reckon_run(url, reports, spend_micros, neighbours=neighbours)


async def postgres_run(reports: int) -> tuple[dict[str, float], float]:
    postgres = start_postgres(private=True)
    try:
        return await reckon_run(
            await postgres.create_database(), reports, database_cpu=postgres.cpu_seconds
        )
    finally:
        postgres.stop()


async def postgres_alone(reports: int) -> None:
    print_run(POSTGRES, *await postgres_run(reports))


async def alone(name: str, reports: int, spend_micros: int, neighbours: int = 0) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        result, rss = await sqlite_run(Path(tmp), reports, spend_micros, neighbours)
    print_run(name, result, rss)


async def main(reports: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        noop = await start_module("tests.perf.noop_delivery_server")
        try:
            baseline = await client(noop.target, "x", "noop", reports)
        finally:
            await noop.stop()
        storage = sqlite_bound(Path(tmp) / "bound.db", reports)
        both_rows = sqlite_bound(Path(tmp) / "both.db", reports, outcomes=True)
        through_apsw = sqlite_bound(
            Path(tmp) / "apsw.db", reports, outcomes=True, through_apsw=True
        )
        handing_over = sqlite_bound(None, reports, outcomes=True)
        handing_over_apsw = sqlite_bound(None, reports, outcomes=True, through_apsw=True)
        # Last of them: it sets SQLite's options for every apsw connection after it.
        writers_way = writer_bound(Path(tmp) / "writer.db", reports)
        sqlite, sqlite_rss = await sqlite_run(Path(tmp), reports, ON_PLAN_SPEND)
        off_pace, off_pace_rss = await sqlite_run(Path(tmp), reports, OFF_PACE_SPEND)
    pg, pg_rss = await postgres_run(reports)

    print(
        f"Delivery benchmark: {reports:,} reports in batches of {BATCH}, window "
        f"{StreamLimits.window} (the server's), client in its own process"
    )
    print(f"(a) no-op grpc.aio bidi servicer      {rate(baseline):>10,.0f} reports/s")
    print(f"(b) sqlite3 executemany, 500/txn      {storage:>10,.0f} reports/s")
    print(f"    (b) with each outcome row as well {both_rows:>10,.0f} reports/s")
    print(f"    both rows, through apsw           {through_apsw:>10,.0f} reports/s")
    print(f"    both rows, as the writer writes   {writers_way:>10,.0f} reports/s")
    print(f"    both rows, in memory, no key/index {handing_over:>9,.0f} reports/s")
    print(f"    the same, through apsw            {handing_over_apsw:>10,.0f} reports/s")
    print_run(SQLITE, sqlite, sqlite_rss)
    print_run(POSTGRES, pg, pg_rss)
    print_run(OFF_PACE, off_pace, off_pace_rss)
    print(
        f"ratios (c)/(a) {rate(sqlite) / rate(baseline):.1%}   (c)/(b) "
        f"{rate(sqlite) / storage:.1%}   (c)/(b with outcomes) {rate(sqlite) / both_rows:.1%}   "
        f"(c)/(both rows as the writer writes) {rate(sqlite) / writers_way:.1%}\n"
        "goal >= 100,000 reports/s on SQLite"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reports", type=int, default=200_000)
    parser.add_argument("--soak", type=int, default=0, help="stream this many to SQLite instead")
    parser.add_argument(
        "--producer-reports", type=int, default=500_000, help="reports per soak producer"
    )
    parser.add_argument("--crowd", type=int, default=0, help="this many producers, commits held")
    alone_group = parser.add_mutually_exclusive_group()
    alone_group.add_argument("--sqlite-only", action="store_true", help="run (c) alone")
    alone_group.add_argument("--off-pace-only", action="store_true", help="run (e) alone")
    alone_group.add_argument("--postgres-only", action="store_true", help="run (d) alone")
    alone_group.add_argument(
        "--neighbours", type=int, default=0, help="run (c) alone beside this many campaigns"
    )
    arguments = parser.parse_args()
    if arguments.sqlite_only:
        asyncio.run(alone(SQLITE, arguments.reports, ON_PLAN_SPEND))
    elif arguments.off_pace_only:
        asyncio.run(alone(OFF_PACE, arguments.reports, OFF_PACE_SPEND))
    elif arguments.postgres_only:
        asyncio.run(postgres_alone(arguments.reports))
    elif arguments.neighbours:
        name = f"{SQLITE}, beside {arguments.neighbours:,} campaigns"
        asyncio.run(alone(name, arguments.reports, ON_PLAN_SPEND, arguments.neighbours))
    elif arguments.soak:
        asyncio.run(soak(arguments.soak, arguments.producer_reports))
    elif arguments.crowd:
        asyncio.run(crowd(arguments.crowd))
    else:
        asyncio.run(main(arguments.reports))
