"""SQLite's group-commit transactions, run in a child process.

A batch's transaction is mostly Python (checks, row building, SQLAlchemy, the sqlite3
module). On a thread of the server it competes with the event loop for the GIL, and the
sqlite3 module gives the GIL up around every step: on a busy server each step then waits for
the loop to hand it back, and a batch took several times its CPU time while the callers in
it waited. A child process has an interpreter of its own. The server sends it the batch
(pickled: ops and their items) and receives the results, one round trip per batch, from the
single thread that owns the pipe.

The child runs nothing but these transactions, on a synchronous engine configured like the
server's own connections. It ends when the pipe closes, including when the server is killed.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import pickle
import signal
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import TypeVar

import sqlalchemy as sa

log = logging.getLogger(__name__)
T = TypeVar("T")

Work = Callable[[sa.Connection], T]
EngineFactory = Callable[[str], sa.Engine]


class SqliteWriter:
    """The server side of the writer process. `run` is called from one thread only."""

    def __init__(self, url: str, engine_factory: EngineFactory) -> None:
        self._url = url
        self._engine_factory = engine_factory
        self._pipe: Connection | None = None
        self._process: BaseProcess | None = None

    def run(self, work: Work[T]) -> T:
        """Run `work(conn)` in one transaction in the child; its return value or exception.

        If the child dies, this batch fails as a storage outage (it may or may not have
        committed, as with a lost connection) and the next batch starts a new child.
        """
        pipe = self._pipe or self.start()
        try:
            pipe.send(work)
            succeeded, value = pipe.recv()
        except (EOFError, OSError) as err:
            self.close()
            raise ConnectionResetError("the SQLite writer process exited") from err
        if succeeded:
            return value  # type: ignore[no-any-return]
        raise value

    def close(self) -> None:
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None
        if self._process is not None:
            self._process.join(10)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
            self._process = None

    def start(self) -> Connection:
        """Start the child now (it imports for a second or so) rather than on the first batch."""
        if self._pipe is not None:
            return self._pipe
        # spawn, not fork: the server has grpc and database threads that a fork would copy
        # in whatever state they were in.
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        process = context.Process(
            target=_serve,
            args=(self._url, self._engine_factory, theirs),
            name="reckon-sqlite-writer",
            daemon=True,
        )
        process.start()
        theirs.close()
        self._pipe, self._process = ours, process
        return ours


def _serve(url: str, engine_factory: EngineFactory, pipe: Connection) -> None:
    # Ctrl-C reaches the whole process group; the server decides when its writer stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    engine = engine_factory(url)
    # One connection for the life of the process: a pool checkout and reset per batch cost
    # as much as a small batch's statements.
    with (
        contextlib.suppress(EOFError, BrokenPipeError, ConnectionResetError),
        engine.connect() as conn,
    ):
        while True:
            payload = pipe.recv_bytes()
            try:
                work = pickle.loads(payload)
                with conn.begin():
                    # Pickled before the commit: a result that cannot travel back rolls the
                    # transaction back, so the server is told "committed" only when it is.
                    reply = pickle.dumps((True, work(conn)), pickle.HIGHEST_PROTOCOL)
            except Exception as err:
                reply = _failure(err)
            pipe.send_bytes(reply)
    engine.dispose()


def _failure(err: Exception) -> bytes:
    try:
        return pickle.dumps((False, err), pickle.HIGHEST_PROTOCOL)
    except Exception:
        log.exception("a writer failure could not be sent back as it is")
        return pickle.dumps((False, RuntimeError(f"{type(err).__name__}: {err}")))
