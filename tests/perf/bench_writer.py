"""The SQLite writer process's cost per streamed report, apart from the server and the client.

    .venv/bin/python -m tests.perf.bench_writer [--reports 60000] [--per-transaction 1500]
        [--off-pace] [--instructions]

Stores the plan and media buys of `bench_delivery` through a real server, opens its stream,
then stops the server and applies the reports in this process as the writer process would:
each transaction's batches pickled as the server sends them, then unpickled, applied on the
writer's engine with its write-ahead log checkpointer, their reply pickled, committed. The
first transactions warm up (imports, prepared statements) and are not counted. Prints the
CPU time per report, which follows the machine's speed of the minute; `--instructions`
applies the same transactions again under valgrind's callgrind and prints the instructions
per report of the counted ones, which do not (it needs valgrind); `--profile FILE` keeps
callgrind's profile of them in FILE, for `callgrind_annotate --inclusive=yes FILE`.
`--off-pace` has every report spend twice its planned rate, as in the benchmark's (e), so that
each carries a finding.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import os
import pickle
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from reckon_server.domain.pacing import DEFAULT_THRESHOLD_PCT
from reckon_server.services.delivery import _stream_rules
from reckon_server.storage import apsw_dbapi
from reckon_server.storage import delivery as store
from reckon_server.storage.database import sqlite_batch_engine
from reckon_server.storage.group_commit import _ApplyAll
from reckon_server.storage.sqlite_writer import _checkpointing
from reckon_server.transport.governance_codec import terms_from_document
from reckon_server.transport.stream_reports import batch_reports
from tests.perf.bench_delivery import (
    BATCH,
    MEDIA_BUYS,
    OFF_PACE_SPEND,
    ON_PLAN_SPEND,
    PLAN,
    client,
    prepare,
)
from tests.perf.delivery_client import batches
from tests.support.api import new_secret
from tests.support.processes import start_reckon

WARM_UP = 4
"""Transactions applied before the count starts."""
STREAM = "bench-stream"


async def stored_plan(directory: Path) -> None:
    """base.db: the plan, its media buys and the stream, with its first batch committed."""
    admin = new_secret()
    server = await start_reckon(f"sqlite+aiosqlite:///{directory / 'base.db'}", admin)
    try:
        key = await prepare(server, admin)
        await client(server.target, key, STREAM, BATCH)
    finally:
        await server.stop()


def transactions(
    directory: Path, reports: int, per_transaction: int, spend_micros: int
) -> list[bytes]:
    """The pickled transactions of `reports` reports after the stream's first batch, as the
    server sends them to the writer process: its batches 5 ms apart, as at 100,000 a second."""
    engine = sqlite_batch_engine(f"sqlite:///{directory / 'base.db'}")
    with engine.connect() as conn:
        org_id, principal_id, generation, next_seq = conn.exec_driver_sql(
            "SELECT org_id, principal_id, generation, next_seq FROM delivery_streams"
        ).one()
    engine.dispose()
    op = store.ApplyDeliveryBatches(
        functools.partial(_stream_rules, threshold_pct=DEFAULT_THRESHOLD_PCT), terms_from_document
    )
    first_sent = datetime.now(UTC)
    stream_batches = [
        store.StreamBatch(
            org_id,
            principal_id,
            STREAM,
            generation,
            next_seq + n,
            batch_reports(batch),
            first_sent + timedelta(milliseconds=5 * n),
        )
        for n, batch in enumerate(batches(PLAN, MEDIA_BUYS, reports, BATCH, BATCH, spend_micros))
    ]
    each = max(1, per_transaction // BATCH)
    return [
        pickle.dumps(_ApplyAll([(op, stream_batches[n : n + each])]), pickle.HIGHEST_PROTOCOL)
        for n in range(0, len(stream_batches), each)
    ]


def apply(directory: Path, payloads: list[bytes]) -> tuple[int, float]:
    """Reports applied after the warm-up, and their CPU seconds."""
    apsw_dbapi.configure_process()
    engine = sqlite_batch_engine(f"sqlite:///{directory / 'run.db'}")
    with engine.connect() as conn, _checkpointing(conn):

        def transaction(_: bytes, payload: bytes) -> bytes:
            work = pickle.loads(payload)
            with conn.begin():
                return pickle.dumps((True, work(conn)), pickle.HIGHEST_PROTOCOL)

        # As the writer process sets its collector (see `sqlite_writer._serve`).
        gc.freeze()
        gc.set_threshold(20_000, 10, 10)
        for payload in payloads[:WARM_UP]:
            transaction(b"", payload)
        started = time.process_time()
        # Each counted transaction runs inside functools.reduce, which nothing else here
        # calls: callgrind counts them alone (--toggle-collect=functools_reduce).
        replies = [functools.reduce(transaction, [payload], b"") for payload in payloads[WARM_UP:]]
        seconds = time.process_time() - started
    engine.dispose()
    counted = 0
    for reply in replies:
        for applied in pickle.loads(reply)[1][0]:
            assert isinstance(applied, store.BatchApplied), applied
            refused = [r for r in applied.results if isinstance(r, Exception)]
            assert not refused, refused[:3]
            counted += len(applied.results)
    return counted, seconds


def fresh_copy(directory: Path) -> None:
    (directory / "run.db").write_bytes((directory / "base.db").read_bytes())
    for suffix in ("-wal", "-shm"):
        (directory / f"run.db{suffix}").unlink(missing_ok=True)


def instructions(directory: Path, profile: str) -> int:
    """Instructions of the counted transactions, applied again under callgrind."""
    run = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={profile}",
            "--collect-atstart=no",
            "--toggle-collect=functools_reduce",
            sys.executable,
            "-m",
            "tests.perf.bench_writer",
            "--apply",
            str(directory),
        ],
        capture_output=True,
        text=True,
        check=True,
        # The same hashes, so the same dictionary layouts, in every run.
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    found = re.search(r"Collected : (\d+)", run.stderr)
    assert found, run.stderr[-2000:]
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=60_000)
    parser.add_argument("--per-transaction", type=int, default=1500)
    parser.add_argument("--off-pace", action="store_true", help="a finding on every report")
    parser.add_argument("--instructions", action="store_true")
    parser.add_argument("--profile", default=os.devnull)
    parser.add_argument("--apply", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.apply:
        directory = Path(args.apply)
        fresh_copy(directory)
        apply(directory, pickle.loads((directory / "transactions.pickle").read_bytes()))
        return
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        asyncio.run(stored_plan(directory))
        spend = OFF_PACE_SPEND if args.off_pace else ON_PLAN_SPEND
        payloads = transactions(directory, args.reports, args.per_transaction, spend)
        fresh_copy(directory)
        counted, seconds = apply(directory, payloads)
        print(
            f"writer: {counted:,} reports in transactions of {args.per_transaction:,}: "
            f"{seconds / counted * 1e6:.2f} us of CPU per report"
        )
        if args.instructions or args.profile != os.devnull:
            (directory / "transactions.pickle").write_bytes(pickle.dumps(payloads))
            counted_instructions = instructions(directory, args.profile)
            print(f"writer: {counted_instructions / counted:,.0f} instructions per report")


if __name__ == "__main__":
    main()
