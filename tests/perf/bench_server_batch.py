"""The server's own work per streamed report, apart from gRPC, the writer and the client.

    .venv/bin/python -m tests.perf.bench_server_batch [--reports 20000] [--rounds 5]

Decodes the benchmark's batches of 500 and checks each report as StreamDelivery does
(`batch_reports`), pickles the batches as they go to the SQLite writer process, then builds and
encodes the acks of as many committed reports (`_committed`); prints the CPU per report of
each, the best of `--rounds` rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import pickle
import time
from collections.abc import Callable
from datetime import UTC, datetime

from reckon.v1 import delivery_service_pb2 as pb
from reckon_server.storage.delivery import BatchApplied, StreamBatch, outcome_ids
from reckon_server.transport.servicers.delivery import _committed
from reckon_server.transport.stream_reports import batch_reports
from tests.perf.bench_delivery import BATCH, MEDIA_BUYS, PLAN
from tests.perf.delivery_client import batches


def best_per_report(work: Callable[[], object], reports: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        work()
        best = min(best, time.process_time() - started)
    return best / reports * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    encoded = [b.SerializeToString() for b in batches(PLAN, MEDIA_BUYS, args.reports, BATCH)]
    sent = datetime.now(UTC)

    def decode_and_check() -> list[StreamBatch]:
        decoded = []
        for seq, raw in enumerate(encoded, 1):
            batch = pb.DeliveryBatch.FromString(raw)
            reports = batch_reports(batch)
            decoded.append(StreamBatch("org", "producer", "stream", 1, seq, reports, sent))
        return decoded

    stream_batches = decode_and_check()

    def pickle_batches() -> None:
        for batch in stream_batches:
            pickle.dumps(batch, pickle.HIGHEST_PROTOCOL)

    applied = BatchApplied(outcome_ids(sent, BATCH))

    async def committed() -> BatchApplied:
        return applied

    async def build_acks() -> None:
        for seq in range(1, len(encoded) + 1):
            response = await _committed(committed(), seq, seq + 1)
            response.SerializeToString()

    reports = len(encoded) * BATCH
    decoding = best_per_report(decode_and_check, reports, args.rounds)
    pickling = best_per_report(pickle_batches, reports, args.rounds)
    acking = best_per_report(lambda: asyncio.run(build_acks()), reports, args.rounds)
    print(f"server: decoding and checking a report {decoding:.2f} us of CPU")
    print(f"server: pickling it for the writer process {pickling:.2f} us of CPU")
    print(f"server: its part of an ack, built and encoded, {acking:.2f} us of CPU")


if __name__ == "__main__":
    main()
