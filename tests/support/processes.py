"""Server processes for replica tests and benchmarks, and latency summaries."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proc_files(pid: int, name: str) -> list[str]:
    """/proc/<pid>/<name> of a process and of its live children, the process's own first."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    found = []
    for each in (pid, *map(int, children)):
        with contextlib.suppress(FileNotFoundError):
            found.append(Path(f"/proc/{each}/{name}").read_text())
    return found


def stat_cpu_seconds(stat: str, *, with_reaped_children: bool = False) -> float:
    """The CPU time (user and system) a /proc/<pid>/stat text records; with
    `with_reaped_children`, also that of the children the process has waited for."""
    fields = stat.rsplit(")", 1)[1].split()
    ticks = sum(map(int, fields[11 : 15 if with_reaped_children else 13]))
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class ServerProcess:
    process: asyncio.subprocess.Process
    port: int

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(self.process.wait(), 30)

    def peak_rss_mib(self) -> float:
        """Peak resident set size so far (VmHWM) of the server and its child processes (the
        SQLite writer), summed."""
        return self._status_mib("VmHWM:")

    def rss_mib(self) -> float:
        """Resident set size now (VmRSS) of the server and its child processes, summed."""
        return self._status_mib("VmRSS:")

    def rss_mib_each(self) -> list[float]:
        """Resident set size now (VmRSS) of the server and of each child process, the
        server's own first."""
        return self._status_mib_each("VmRSS:")

    def writer_thread_seconds(self) -> tuple[float, float] | None:
        """How long the main thread of the SQLite writer process has run on a core so far,
        and how long it has waited, runnable, for one (the kernel's schedstat); None without
        a writer process or without schedstat."""
        pid = self.process.pid
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            try:
                # multiprocessing's resource tracker is a child too.
                if b"spawn_main" not in Path(f"/proc/{child}/cmdline").read_bytes():
                    continue
                schedstat = Path(f"/proc/{child}/task/{child}/schedstat").read_text()
            except FileNotFoundError:
                continue
            running, waiting, _ = schedstat.split()
            return int(running) / 1e9, int(waiting) / 1e9
        return None

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU time used so far by the server process, and by its live child processes (the
        SQLite writer) together."""
        server, *children = map(stat_cpu_seconds, proc_files(self.process.pid, "stat"))
        return server, sum(children)

    def _status_mib(self, field: str) -> float:
        return sum(self._status_mib_each(field))

    def _status_mib_each(self, field: str) -> list[float]:
        sizes = []
        for status in proc_files(self.process.pid, "status"):
            line = next(li for li in status.splitlines() if li.startswith(field))
            sizes.append(int(line.split()[1]) / 1024)
        return sizes


async def start_reckon(
    database_url: str, admin_key: str, port: int | None = None, **env: str
) -> ServerProcess:
    port = port or free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "reckon_server.cli",
        "--database-url",
        database_url,
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
        env={**os.environ, "RECKON_ADMIN_KEY": admin_key, **env},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    await wait_ready(port)
    return ServerProcess(process, port)


async def start_module(module: str, *args: str) -> ServerProcess:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        str(port),
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    await wait_ready(port)
    return ServerProcess(process, port)


async def wait_ready(port: int) -> None:
    for _ in range(300):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port}")


def percentile(samples: Sequence[float], pct: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


def summary(name: str, count: int, seconds: float, latencies: Sequence[float]) -> str:
    return (
        f"{name:<34} {count / seconds:>10,.0f}/s   p50 {percentile(latencies, 50) * 1e3:6.2f} ms"
        f"   p99 {percentile(latencies, 99) * 1e3:6.2f} ms   mean "
        f"{statistics.fmean(latencies) * 1e3:6.2f} ms"
    )
