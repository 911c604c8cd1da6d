"""A throwaway PostgreSQL server for tests and benchmarks.

`RECKON_TEST_POSTGRES_URL` (an asyncpg URL to a server where we may create databases) wins;
otherwise a private cluster is initialised in a temporary directory and started on a free
port. When neither is possible this raises: a PostgreSQL tier is never skipped silently.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from tests.support.processes import free_port, proc_files, stat_cpu_seconds


@dataclass
class PostgresServer:
    admin_url: str
    """asyncpg DSN to the `postgres` database, for creating test databases."""
    _data_dir: Path | None = None
    _bin_dir: Path | None = None
    _run_as: str | None = None
    _options: str = ""

    def sqlalchemy_url(self, database: str) -> str:
        base = self.admin_url.rsplit("/", 1)[0]
        return base.replace("postgresql://", "postgresql+asyncpg://", 1) + f"/{database}"

    async def create_database(self) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        name = "t_" + uuid.uuid4().hex[:16]
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.sqlalchemy_url(name)

    def stop_server(self) -> None:
        """Stop the server, keeping its data (outage tests start it again)."""
        assert self._data_dir is not None, "not a private server"
        assert self._bin_dir is not None
        _run(
            [str(self._bin_dir / "pg_ctl"), "-D", str(self._data_dir), "-m", "immediate", "stop"],
            self._run_as,
        )

    def start_server(self) -> None:
        assert self._data_dir is not None, "not a private server"
        assert self._bin_dir is not None
        _run(
            [
                str(self._bin_dir / "pg_ctl"),
                "-D",
                str(self._data_dir),
                "-o",
                self._options,
                "-w",
                "-t",
                "60",
                "-l",
                str(self._data_dir.parent / "server.log"),
                "start",
            ],
            self._run_as,
        )

    def cpu_seconds(self) -> float:
        """CPU time used so far by the private server: its postmaster, the processes it runs
        (one backend per connection, background workers) and those that have exited."""
        assert self._data_dir is not None, "not a private server"
        pid = int((self._data_dir / "postmaster.pid").read_text().split()[0])
        postmaster, *children = proc_files(pid, "stat")
        return stat_cpu_seconds(postmaster, with_reaped_children=True) + sum(
            map(stat_cpu_seconds, children)
        )

    def stop(self) -> None:
        if self._data_dir is None or self._bin_dir is None:
            return
        self.stop_server()
        shutil.rmtree(self._data_dir.parent, ignore_errors=True)


def start_postgres(*, private: bool = False) -> PostgresServer:
    """The test PostgreSQL; `private` always starts a new cluster this caller may stop."""
    external = os.environ.get("RECKON_TEST_POSTGRES_URL")
    if external and not private:
        return PostgresServer(external.replace("postgresql+asyncpg://", "postgresql://", 1))
    bin_dir = _find_bin_dir()
    run_as = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="reckon-pg-"))
    data_dir, socket_dir = root / "data", root / "sock"
    socket_dir.mkdir()
    if run_as:
        entry = pwd.getpwnam(run_as)
        for path in (root, socket_dir):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    _run(
        [
            str(bin_dir / "initdb"),
            "-D",
            str(data_dir),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-instructions",
        ],
        run_as,
    )
    options = f"-p {free_port()} -k {socket_dir} -c listen_addresses=127.0.0.1 "
    options += "-c max_connections=300"
    if not private:
        # The shared server needs isolation, not crash safety; a private one is stopped
        # abruptly by outage tests and must keep what it acknowledged.
        options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    port = int(options.split()[1])
    server = PostgresServer(
        f"postgresql://postgres@127.0.0.1:{port}/postgres", data_dir, bin_dir, run_as, options
    )
    server.start_server()
    return server


def _find_bin_dir() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise RuntimeError(
        "PostgreSQL server binaries not found: install the postgresql package "
        "(apt-get install postgresql) or set RECKON_TEST_POSTGRES_URL"
    )


def _run(command: list[str], run_as: str | None) -> None:
    if run_as:
        command = ["runuser", "-u", run_as, "--", *command]
    result = subprocess.run(command, capture_output=True, text=True, check=False, cwd="/")
    if result.returncode != 0:
        raise RuntimeError(f"{command[0]} failed: {result.stdout}\n{result.stderr}")
