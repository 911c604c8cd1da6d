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
`apsw_dbapi`: it binds and steps rows for much less CPU) configured like the
server's own connections. It ends when the pipe closes, including when the server is killed.
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
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

import sqlalchemy as sa

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
    engine = engine_factory(url)
    # One connection for the life of the process: a pool checkout and reset per batch cost
    # as much as a small batch's statements.
    with (
        contextlib.suppress(EOFError, BrokenPipeError, ConnectionResetError),
        engine.connect() as conn,
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


def _failure(err: Exception) -> bytes:
    try:
        return pickle.dumps((False, err), pickle.HIGHEST_PROTOCOL)
    except Exception:
        log.exception("a writer failure could not be sent back as it is")
        return pickle.dumps((False, RuntimeError(f"{type(err).__name__}: {err}")))
