"""AuditService.Report at 64 concurrent callers vs a no-op grpc.aio servicer, in one run.

    .venv/bin/python -m tests.perf.bench_report [--seconds 6] [--callers 64] [--rounds 5]

Both servers run as separate processes and are driven by the same client code in this
process; the figure that matters is the ratio, measured on the same machine in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from grpc import aio

from reckon.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    audit_service_pb2,
    audit_service_pb2_grpc,
    types_pb2,
)
from tests.support.api import new_secret
from tests.support.processes import start_module, start_reckon, summary

EVENTS = 1000


async def drive(
    target: str, key: str, event_ids: list[str], callers: int, seconds: float
) -> tuple[int, float, list[float]]:
    async with aio.insecure_channel(target) as channel:
        stub = audit_service_pb2_grpc.AuditServiceStub(channel)
        metadata = (("authorization", f"Bearer {key}"),)
        requests = [
            audit_service_pb2.ReportRequest(
                audit_event_id=e,
                outcome=audit_service_pb2.Outcome(
                    status=types_pb2.OUTCOME_STATUS_SUCCESS, message="Migration applied cleanly"
                ),
            )
            for e in event_ids
        ]
        latencies: list[float] = []
        stop_at = 0.0
        measuring = False

        async def caller(index: int) -> int:
            done = 0
            i = index
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                await stub.Report(requests[i % len(requests)], metadata=metadata)
                if measuring:
                    latencies.append(time.perf_counter() - started)
                    done += 1
                i += callers
            return done

        stop_at = time.perf_counter() + 2  # warm-up
        await asyncio.gather(*(caller(i) for i in range(callers)))
        measuring = True
        started = time.perf_counter()
        stop_at = started + seconds
        counts = await asyncio.gather(*(caller(i) for i in range(callers)))
        return sum(counts), time.perf_counter() - started, latencies


async def prepare_reckon(target: str, admin: str) -> tuple[str, list[str]]:
    """An agent key and EVENTS audit events to report on."""
    async with aio.insecure_channel(target) as channel:
        registered = await admin_service_pb2_grpc.AdminServiceStub(channel).RegisterAgent(
            admin_service_pb2.RegisterAgentRequest(name="bench"),
            metadata=(("authorization", f"Bearer {admin}"),),
        )
        audit = audit_service_pb2_grpc.AuditServiceStub(channel)
        agent_metadata = (("authorization", f"Bearer {registered.api_key}"),)
        ids = [
            (
                await audit.Execute(
                    audit_service_pb2.ExecuteRequest(action_type="x"), metadata=agent_metadata
                )
            ).audit_event_id
            for _ in range(EVENTS)
        ]
    return registered.api_key, ids


async def main(seconds: float, callers: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        admin = new_secret()
        noop = await start_module("tests.perf.noop_server")
        reckon = await start_reckon(f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}", admin)
        try:
            key, ids = await prepare_reckon(reckon.target, admin)
            fake_ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(EVENTS)]
            # Alternating rounds expose both servers to the same machine noise; the median
            # ratio is the figure.
            base, ours = [], []
            cpu = [0.0, 0.0, 0.0, 0.0]  # server, its writer process, client, wall seconds
            for _ in range(rounds):
                base.append(await drive(noop.target, "x", fake_ids, callers, seconds))
                before = (*reckon.cpu_seconds(), time.process_time(), time.perf_counter())
                ours.append(await drive(reckon.target, key, ids, callers, seconds))
                after = (*reckon.cpu_seconds(), time.process_time(), time.perf_counter())
                cpu = [c + a - b for c, a, b in zip(cpu, after, before, strict=True)]
            rss = reckon.peak_rss_mib()
        finally:
            await asyncio.gather(noop.stop(), reckon.stop())

    print(
        f"Report benchmark: {callers} concurrent callers, {rounds} alternating rounds of "
        f"{seconds:.0f} s, {EVENTS} events, SQLite"
    )
    ratios = []
    for index, (b, o) in enumerate(zip(base, ours, strict=True), 1):
        ratios.append((o[0] / o[1]) / (b[0] / b[1]))
        print(f"round {index}")
        print("  " + summary("no-op grpc.aio Report (baseline)", *b))
        print("  " + summary("Reckon Report (SQLite)", *o))
    print(
        f"ratio Reckon / no-op per round: {', '.join(f'{r:.0%}' for r in ratios)}; "
        f"median {statistics.median(ratios):.0%} (goal >= 60%); "
        f"server peak RSS {rss:.0f} MiB"
    )
    server, writer, client, wall = cpu
    print(
        f"CPU during the Reckon rounds (warm-up included): server {server / wall:.2f} cores, "
        f"its writer process {writer / wall:.2f}, client {client / wall:.2f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.seconds, arguments.callers, arguments.rounds))
