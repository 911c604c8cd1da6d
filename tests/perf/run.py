"""`make bench`: every benchmark in turn, each printing its own figures."""

from __future__ import annotations

import asyncio

from tests.perf import bench_delivery, bench_report


def main() -> None:
    asyncio.run(bench_report.main(seconds=6, callers=64, rounds=3))
    print()
    asyncio.run(bench_delivery.main(reports=200_000))


if __name__ == "__main__":
    main()
