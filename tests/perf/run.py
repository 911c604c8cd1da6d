"""`make bench`: every benchmark in turn, each printing its own figures."""

from __future__ import annotations

import asyncio

from tests.perf import bench_report


def main() -> None:
    asyncio.run(bench_report.main(seconds=6, callers=64, rounds=3))


if __name__ == "__main__":
    main()
