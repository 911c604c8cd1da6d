"""SQLite's group-commit transactions, run in a child process.

A batch's transaction is mostly Python (checks, row building, SQLAlchemy, the sqlite3
module). On a thread of the server it competes with the event loop for the GIL, and the
sqlite3 module gives the GIL up around every step: on a busy server each step then waits for
the loop to hand it back, and a batch took several times its CPU time while the callers in
it waited. A child process has an interpreter of its own. The server sends it the batch
(pickled: ops and their items) and receives the results. The child takes transactions in the
order they were sent; the server may send the next while the child applies the current one,
so the child does not idle while a reply travels back and the next batch is put together.
One thread sends and another reads the replies, which arrive in the order of the sends.

The child runs nothing but these transactions, on a synchronous engine over apsw (see
`apsw_dbapi`: it binds and steps rows for much less CPU) configured like the server's own
connections, with SQLite's process-wide options of its own (`apsw_dbapi.configure_process`),
and copies the write-ahead log back into the database on a thread of its own (see
`WalCheckpointer`). It ends when the pipe closes, including when the server is killed.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import pickle
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

import apsw
import sqlalchemy as sa

from reckon_server.storage import apsw_dbapi

log = logging.getLogger(__name__)
T = TypeVar("T")

_STOP = b""
"""Tells the child to exit; every pickled transaction is longer."""

Work = Callable[[sa.Connection], T]
EngineFactory = Callable[[str], sa.Engine]


class SqliteWriter:
    """The server side of the writer process."""

    def __init__(self, url: str, engine_factory: EngineFactory) -> None:
        self._url = url
        self._engine_factory = engine_factory
        self._lock = threading.Lock()
        self._child: _Child | None = None
        self._awaiting: deque[tuple[_Child, Future[Any]]] = deque()
        """Sent transactions without a reply yet, oldest first, with the child they went to."""
        # Sending blocks while the pipe is full, that is until the child takes the previous
        # transaction: that wait belongs on a thread of its own, never the event loop.
        self._sender = ThreadPoolExecutor(1, thread_name_prefix="reckon-sqlite-send")

    def submit(self, work: Work[T]) -> Future[T]:
        """Queue `work(conn)` to run in one transaction in the child, after every transaction
        submitted before it; the future holds its return value or exception.

        If the child dies, the transactions it had not answered fail as a storage outage
        (each may or may not have committed, as with a lost connection) and the next one
        starts a new child.
        """
        result: Future[T] = Future()
        # Running futures cannot be cancelled: a reply always finds its future waiting.
        result.set_running_or_notify_cancel()
        self._sender.submit(self._send, work, result)
        return result

    def start(self) -> None:
        """Start the child now (it imports for a second or so) rather than on the first batch."""
        with self._lock:
            self._started()

    def close(self) -> None:
        """Stop the child once it has answered everything sent."""
        self._sender.shutdown()
        with self._lock:
            child, self._child = self._child, None
        if child is not None:
            # Closing our end would not wake the thread blocked reading it, nor end the
            # child: the child is asked to stop, and its exit ends that read.
            child.send(_STOP)
            _stop(child.process)
            child.receiver.join(10)

    def _send(self, work: Work[T], result: Future[T]) -> None:
        child = self._child
        if child is not None and not child.process.is_alive():
            # Died since its last reply: this transaction goes to a new child instead.
            self._lost(child, ConnectionResetError("the SQLite writer process exited"))
        try:
            payload = pickle.dumps(work, pickle.HIGHEST_PROTOCOL)
            with self._lock:
                child = self._started()
                self._awaiting.append((child, result))
        except Exception as err:
            result.set_exception(err)
            return
        failure = child.send(payload)
        if failure is not None:
            self._lost(child, failure)

    def _started(self) -> _Child:
        """The running child, started if there is none (lock held)."""
        if self._child is not None:
            return self._child
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
        child = self._child = _Child(ours, process)
        child.receiver = threading.Thread(
            target=self._receive, args=(child,), name="reckon-sqlite-receive", daemon=True
        )
        child.receiver.start()
        return child

    def _receive(self, child: _Child) -> None:
        """Hand each reply to the oldest transaction awaiting one, until the child is gone."""
        while True:
            try:
                succeeded, value = child.pipe.recv()
            except (EOFError, OSError) as err:
                self._lost(child, err)
                child.close()
                return
            with self._lock:
                if not self._awaiting or self._awaiting[0][0] is not child:
                    continue  # its transaction was already given up as lost
                _, result = self._awaiting.popleft()
            if succeeded:
                result.set_result(value)
            else:
                result.set_exception(value)

    def _lost(self, child: _Child, cause: BaseException) -> None:
        """`child` is gone: fail what it had not answered, and let it go."""
        with self._lock:
            lost = [result for sent_to, result in self._awaiting if sent_to is child]
            self._awaiting = deque(entry for entry in self._awaiting if entry[0] is not child)
            current = self._child is child
            if current:
                self._child = None
        for result in lost:
            error = ConnectionResetError("the SQLite writer process exited")
            error.__cause__ = cause
            result.set_exception(error)
        if current:
            _stop(child.process)


@dataclass
class _Child:
    """A writer process and our end of its pipe. Only its receiver thread closes the pipe,
    once the child is gone, and never while a send is under way."""

    pipe: Connection
    process: BaseProcess
    receiver: threading.Thread = field(init=False)
    sending: threading.Lock = field(default_factory=threading.Lock)

    def send(self, payload: bytes) -> OSError | None:
        with self.sending:
            try:
                self.pipe.send_bytes(payload)
            except OSError as err:  # a closed pipe raises this too
                return err
        return None

    def close(self) -> None:
        with self.sending:
            self.pipe.close()


def _stop(process: BaseProcess) -> None:
    process.join(10)
    if process.is_alive():
        process.kill()
        process.join()


def _serve(url: str, engine_factory: EngineFactory, pipe: Connection) -> None:
    # Ctrl-C reaches the whole process group; the server decides when its writer stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    apsw_dbapi.configure_process()
    engine = engine_factory(url)
    # One connection for the life of the process: a pool checkout and reset per batch cost
    # as much as a small batch's statements.
    with (
        contextlib.suppress(EOFError, BrokenPipeError, ConnectionResetError),
        engine.connect() as conn,
        _checkpointing(conn),
    ):
        # A transaction makes and drops tens of thousands of tuples (reports, rows, results).
        # Collecting after every 700 of them, as by default, doubled the time unpickling a
        # batch takes and cost the writer about 3 % of its time per report; what was imported
        # and set up until now is left out of collections altogether.
        gc.freeze()
        gc.set_threshold(20_000, 10, 10)
        while True:
            payload = pipe.recv_bytes()
            if payload == _STOP:
                break
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


class WalCheckpointer:
    """Copies a writer connection's write-ahead log back into the database on a thread of
    its own, rather than in the commits of the writer, as SQLite would by default.

    Each time the log has grown by `pages` since it was last copied, the thread copies it,
    on a connection of its own, without waiting for readers (a passive checkpoint); SQLite
    releases the GIL all the while. The log starts over from its beginning only at a
    transaction that begins once all of it is copied, which a writer that never pauses
    rarely does: once the log holds `restart_pages`, the writer copies the rest itself after
    its commit, so that its next transaction starts it over. A checkpoint that fails leaves
    the log as it was, for the next to copy; a commit never fails for one.
    """

    def __init__(self, writer: apsw.Connection, *, pages: int, restart_pages: int) -> None:
        self._pages = pages
        self._restart_pages = restart_pages
        self._copied_at = 0
        """How many pages the log held when the thread was last asked to copy it."""
        # Used by the thread alone (opened and closed while it does not run), so without
        # SQLite's mutex, like the writer's (see `apsw_dbapi.connect`).
        self._db = apsw.Connection(
            writer.filename, flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_NOMUTEX
        )
        # A connection finds the log when it first reads; until then it checkpoints nothing.
        self._db.execute("SELECT 1 FROM sqlite_schema LIMIT 1").fetchall()
        self._copying = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="reckon-sqlite-checkpoint")
        self._thread.start()
        self._writer = writer
        writer.set_wal_hook(self._committed)

    def close(self) -> None:
        self._writer.set_wal_hook(None)
        self._closing = True
        self._wake.set()
        self._thread.join()
        self._db.close()

    def _committed(self, writer: apsw.Connection, _name: str, pages: int) -> int:
        try:
            if pages >= self._restart_pages:
                with self._copying:
                    _checkpoint(writer)
                self._copied_at = 0
            elif pages - self._copied_at >= self._pages or pages < self._copied_at:
                self._copied_at = pages
                self._wake.set()
        except Exception:
            log.exception("the SQLite write-ahead log hook failed")
        # Anything else would report the commit, which has taken place, as failed.
        return apsw.SQLITE_OK

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._closing:
                return
            with self._copying:
                _checkpoint(self._db)


def _checkpoint(db: apsw.Connection) -> None:
    try:
        db.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
    except apsw.BusyError:
        pass  # another connection is copying the log: the next checkpoint goes on from there
    except apsw.Error:
        log.warning("a checkpoint of the SQLite write-ahead log failed", exc_info=True)


@contextlib.contextmanager
def _checkpointing(conn: sa.Connection) -> Iterator[None]:
    """`conn`'s log copied by a `WalCheckpointer` while the block runs."""
    dbapi_connection = conn.connection.dbapi_connection
    assert isinstance(dbapi_connection, apsw_dbapi.Connection)
    checkpointer = WalCheckpointer(
        dbapi_connection.apsw_connection, pages=_CHECKPOINT_PAGES, restart_pages=_RESTART_PAGES
    )
    try:
        yield
    finally:
        checkpointer.close()


_CHECKPOINT_PAGES = 1000
"""SQLite's own default: about 4 MiB of log at its default page size."""
_RESTART_PAGES = 8000
"""About 32 MiB of log: past that the writer copies it itself, as SQLite would by default
past `_CHECKPOINT_PAGES`, but seldom and with most of it already copied."""


def _failure(err: Exception) -> bytes:
    try:
        return pickle.dumps((False, err), pickle.HIGHEST_PROTOCOL)
    except Exception:
        log.exception("a writer failure could not be sent back as it is")
        return pickle.dumps((False, RuntimeError(f"{type(err).__name__}: {err}")))
