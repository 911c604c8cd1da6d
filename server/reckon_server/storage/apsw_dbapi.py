"""The DB-API 2.0 surface SQLAlchemy's pysqlite dialect uses, over apsw, for the writer process.

apsw binds parameters and steps statements with far less overhead than the standard library's
`sqlite3` module, and ships a recent SQLite built with its lookaside allocator, which Debian's
build leaves out: a report's two rows, with their keys and indexes, go in about 40 % faster.
apsw is deliberately not a DB-API module, and no well-kept package makes it one, so this
module is the thin layer between: SQLAlchemy compiles, apsw executes.

Only the writer process uses it. Two copies of the SQLite library that open the same file in
one process can silently drop each other's POSIX locks
(https://sqlite.org/howtocorrupt.html#multiple_copies_of_sqlite_linked_into_the_same_application):
the writer process opens the database through apsw alone and the server process through
`sqlite3` alone, and between processes the locks work as SQLite means them to.

Connections run in autocommit mode, as `sqlite3` does with `isolation_level = None`: callers
open their transactions with BEGIN, and `commit()` and `rollback()` end whatever is open.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import apsw

paramstyle = "qmark"
apilevel = "2.0"
threadsafety = 1
sqlite_version = apsw.sqlite_lib_version()
sqlite_version_info = tuple(int(part) for part in sqlite_version.split("."))
Binary = bytes


class Warning(Exception):
    pass


class Error(Exception):
    pass


class InterfaceError(Error):
    pass


class DatabaseError(Error):
    pass


class DataError(DatabaseError):
    pass


class OperationalError(DatabaseError):
    pass


class IntegrityError(DatabaseError):
    pass


class InternalError(DatabaseError):
    pass


class ProgrammingError(DatabaseError):
    pass


class NotSupportedError(DatabaseError):
    pass


# The classes `sqlite3` raises for the same result codes; every other SQLite error (SQL
# errors, busy and locked databases, I/O, a full disk) is an OperationalError there too.
_CLASSES: dict[type[Exception], type[Error]] = {
    apsw.ConstraintError: IntegrityError,
    apsw.TooBigError: DataError,
    apsw.MismatchError: DataError,
    apsw.CorruptError: DatabaseError,
    apsw.NotADBError: DatabaseError,
    apsw.InternalError: InternalError,
    apsw.NotFoundError: InternalError,
    apsw.MisuseError: ProgrammingError,
    apsw.RangeError: ProgrammingError,
    apsw.BindingsError: ProgrammingError,
    apsw.ExecutionCompleteError: ProgrammingError,
    apsw.CursorClosedError: ProgrammingError,
    apsw.ConnectionClosedError: ProgrammingError,
}
_CLOSED = "Cannot operate on a closed database."
"""What SQLAlchemy's pysqlite dialect looks for to tell a connection is gone."""


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except apsw.Error as err:
        cls = next((c for t, c in _CLASSES.items() if isinstance(err, t)), OperationalError)
        closed = isinstance(err, apsw.ConnectionClosedError)
        raise cls(_CLOSED if closed else str(err)) from err
    except TypeError as err:
        # apsw's refusal of a parameter of a type SQLite cannot store.
        raise ProgrammingError(str(err)) from err


def configure_process() -> None:
    """SQLite's options for the whole of a process that opens connections through apsw alone,
    before it opens any: they apply to every connection it then opens.

    Each connection gets more of SQLite's lookaside memory, from which it takes its small
    allocations without going to malloc: 4,000 slots of up to 256 bytes (1 MiB) where SQLite
    keeps a few dozen. A statement of many rows holds a copy of each text value bound to
    it (apsw binds text for SQLite to copy), hundreds at once, and the default slots ran out
    at the start of every such statement: about two allocations in three then went to
    malloc, which cost the writer process 8 % more instructions per streamed report
    (`tests.perf.bench_writer`)."""
    apsw.shutdown()
    apsw.config(apsw.SQLITE_CONFIG_LOOKASIDE, _LOOKASIDE_SLOT_BYTES, _LOOKASIDE_SLOTS)
    apsw.initialize()


_LOOKASIDE_SLOT_BYTES = 256
_LOOKASIDE_SLOTS = 4000


STATEMENTS_KEPT = 256
"""Prepared statements a connection keeps. apsw puts a statement back in its cache each time
it runs (each set of values of an executemany counts), evicting the one put back longest
ago: with its default of 100, the hundred-odd runs of a delivery transaction evicted every
statement the transaction runs once, and the next transaction parsed them all again: 3 % of
the writer's instructions per report in transactions of 1,500 reports, more in smaller ones."""


def connect(
    database: str, *, timeout: float = 5.0, uri: bool = False, **_thread_options: Any
) -> Connection:
    """Open `database` as `sqlite3.connect` would: waiting up to `timeout` seconds for a lock,
    and taking `database` as a `file:` URI if `uri`. `check_same_thread` does not apply: a
    writer connection never leaves its thread. It therefore goes without the mutex SQLite
    would take around every call on it: neither SQLite nor apsw then stops two threads from
    using it at once, which nothing here does."""
    flags = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE | apsw.SQLITE_OPEN_NOMUTEX
    if uri:
        flags |= apsw.SQLITE_OPEN_URI
    with _translated():
        db = apsw.Connection(database, flags=flags, statementcachesize=STATEMENTS_KEPT)
        db.set_busy_timeout(int(timeout * 1000))
        return Connection(db)


class Connection:
    isolation_level: str | None = None
    """Accepted for the dialect's sake; transactions are always the caller's."""

    def __init__(self, db: apsw.Connection) -> None:
        self._db = db

    @property
    def apsw_connection(self) -> apsw.Connection:
        """The apsw connection underneath, for what DB-API has no word for."""
        return self._db

    def cursor(self) -> Cursor:
        with _translated():
            return Cursor(self._db)

    def commit(self) -> None:
        self._end("COMMIT")

    def rollback(self) -> None:
        self._end("ROLLBACK")

    def _end(self, statement: str) -> None:
        with _translated():
            if self._db.in_transaction:
                self._db.execute(statement)

    def close(self) -> None:
        self._db.close()

    def create_function(
        self, name: str, nargs: int, function: Callable[..., Any], *, deterministic: bool = False
    ) -> None:
        with _translated():
            self._db.create_scalar_function(name, function, nargs, deterministic=deterministic)


class Cursor:
    arraysize = 1

    def __init__(self, db: apsw.Connection) -> None:
        self._db = db
        self._cursor = db.cursor()
        self._rows: Iterator[Any] = iter(())
        self.description: Sequence[tuple[Any, ...]] | None = None
        self.rowcount = -1
        self.lastrowid: int | None = None

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Cursor:
        described: list[Sequence[tuple[Any, ...]]] = []

        def describe(cursor: apsw.Cursor, _sql: str, _bindings: Any) -> bool:
            # Read while the statement is prepared and not yet stepped: apsw describes no
            # statement once it is done, and a query that finds no rows is done at once.
            described.append(cursor.description)
            return True

        with _translated():
            changes = self._db.total_changes()
            self._cursor.exec_trace = describe
            try:
                self._rows = self._cursor.execute(sql, parameters)
            finally:
                self._cursor.exec_trace = None
            self.description = described[-1] if described and described[-1] else None
            self._counted(changes)
        return self

    def executemany(self, sql: str, seq_of_parameters: Iterable[Sequence[Any]]) -> Cursor:
        with _translated():
            changes = self._db.total_changes()
            self._cursor.executemany(sql, seq_of_parameters)
            self._rows = iter(())
            self.description = None
            self._counted(changes)
        return self

    def _counted(self, changes_before: int) -> None:
        self.rowcount = (
            self._db.total_changes() - changes_before if self.description is None else -1
        )
        self.lastrowid = self._db.last_insert_rowid()

    def fetchone(self) -> Any:
        with _translated():
            return next(self._rows, None)

    def fetchmany(self, size: int | None = None) -> list[Any]:
        with _translated():
            count = self.arraysize if size is None else size
            return [row for _, row in zip(range(count), self._rows, strict=False)]

    def fetchall(self) -> list[Any]:
        with _translated():
            return list(self._rows)

    def close(self) -> None:
        self._cursor.close(force=True)

    def setinputsizes(self, sizes: Any) -> None:
        pass

    def setoutputsize(self, size: Any, column: Any = None) -> None:
        pass
