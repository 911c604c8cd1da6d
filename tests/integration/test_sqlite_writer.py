"""SQLite's writer process: results come back only for committed work, errors come back
whole, and a dead writer is replaced."""

from __future__ import annotations

import importlib
import os
import pickle
import signal
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw
import pytest
import sqlalchemy as sa

from reckon_server import native
from reckon_server.errors import Reason, ReckonError
from reckon_server.storage import apsw_dbapi
from reckon_server.storage.database import sqlite_batch_engine
from reckon_server.storage.sqlite_writer import SqliteWriter


@dataclass(frozen=True)
class Insert:
    value: str
    reply_unsendable: bool = False

    def __call__(self, conn: sa.Connection) -> Any:
        conn.exec_driver_sql("INSERT INTO notes VALUES (?)", (self.value,))
        return (lambda: None) if self.reply_unsendable else self.value


@dataclass(frozen=True)
class Refuse:
    def __call__(self, conn: sa.Connection) -> Any:
        conn.exec_driver_sql("INSERT INTO notes VALUES ('refused')")
        raise ReckonError(Reason.CAMPAIGN_SUSPENDED, "no", {"plan_id": "p"}, retry_after_seconds=2)


@dataclass(frozen=True)
class Unreadable:
    """A transaction that pickles but cannot be unpickled."""

    def __call__(self, conn: sa.Connection) -> Any:
        raise AssertionError("never run")

    def __reduce__(self) -> tuple[Any, ...]:
        return (refuse_to_load, ("this transaction cannot be read",))


def refuse_to_load(message: str) -> Any:
    raise ValueError(message)


def test_results_errors_and_a_replaced_writer(tmp_path: Path) -> None:
    path = tmp_path / "writer.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE notes (value TEXT)")
    writer = SqliteWriter(f"sqlite+aiosqlite:///{path}", sqlite_batch_engine)
    try:
        assert writer.submit(Insert("kept")).result() == "kept"
        with pytest.raises((pickle.PicklingError, AttributeError)):
            writer.submit(Insert("rolled back", reply_unsendable=True)).result()
        with pytest.raises(ReckonError) as refused:
            writer.submit(Refuse()).result()
        assert refused.value.reason is Reason.CAMPAIGN_SUSPENDED
        assert refused.value.metadata == {"plan_id": "p"}
        assert refused.value.retry_after_seconds == 2

        # A transaction the child cannot unpickle fails alone, and the replies to those
        # sent around it keep the order of the sends.
        sent = [
            writer.submit(work)
            for work in (Insert("first"), Unreadable(), Insert("second"), Insert("third"))
        ]
        assert [sent[i].result() for i in (0, 2, 3)] == ["first", "second", "third"]
        with pytest.raises(ValueError, match="cannot be read"):
            sent[1].result()

        # A writer that dies between transactions loses nothing: the next one gets a new one.
        kill(writer)
        assert writer.submit(Insert("after an idle death")).result() == "after an idle death"

        # One that dies holding transactions fails exactly those, pipelined ones included.
        with sqlite3.connect(path, isolation_level=None) as blocker:
            blocker.execute("BEGIN IMMEDIATE")  # the writer's transactions wait for the lock
            in_flight = [writer.submit(Insert("lost")), writer.submit(Insert("lost too"))]
            while len(writer._awaiting) < 2:  # both sent: later ones would go to a new child
                time.sleep(0.01)
            kill(writer)
            for lost in in_flight:
                with pytest.raises(ConnectionResetError):
                    lost.result(10)
            blocker.execute("ROLLBACK")
        assert writer.submit(Insert("after")).result() == "after"
    finally:
        writer.close()
    with sqlite3.connect(path) as db:
        assert [v for (v,) in db.execute("SELECT value FROM notes")] == [
            "kept",
            "first",
            "second",
            "third",
            "after an idle death",
            "after",
        ]


def kill(writer: SqliteWriter) -> None:
    assert writer._child is not None
    process = writer._child.process
    assert process.pid is not None
    os.kill(process.pid, signal.SIGKILL)
    process.join(10)


def test_a_writer_that_cannot_start_fails_what_it_was_sent_and_the_next_one_starts(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal.db"
    with sqlite3.connect(path) as db:  # a rollback journal, which the writer switches to WAL
        db.execute("CREATE TABLE notes (value TEXT)")
    writer = SqliteWriter(f"sqlite+aiosqlite:///{path}", sqlite_batch_engine)
    try:
        with sqlite3.connect(path, isolation_level=None) as blocker:
            # The switch needs an exclusive lock, which SQLite refuses at once under this one.
            blocker.execute("BEGIN IMMEDIATE")
            with pytest.raises(ConnectionResetError):
                writer.submit(Insert("sent to a writer that could not start")).result(30)
            blocker.execute("ROLLBACK")
        assert writer.submit(Insert("after")).result(30) == "after"
    finally:
        writer.close()
    with sqlite3.connect(path) as db:
        assert [v for (v,) in db.execute("SELECT value FROM notes")] == ["after"]
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


@dataclass(frozen=True)
class InsertManyAtOnce:
    """One statement of many rows with a text value each, as new periods and outcomes go in;
    returns how often its connection found SQLite's lookaside memory full."""

    rows: int

    def __call__(self, conn: sa.Connection) -> Any:
        values = ", ".join(["(?)"] * self.rows)
        conn.exec_driver_sql(
            f"INSERT INTO notes VALUES {values}", tuple(f"note {n}" for n in range(self.rows))
        )
        dbapi_connection = conn.connection.dbapi_connection
        assert isinstance(dbapi_connection, apsw_dbapi.Connection)
        _, full = dbapi_connection.apsw_connection.status(apsw.SQLITE_DBSTATUS_LOOKASIDE_MISS_FULL)
        return full


def test_the_writer_binds_a_statement_of_many_rows_without_going_to_malloc(
    tmp_path: Path,
) -> None:
    """Each text value bound is copied, and held until the statement runs again: with SQLite's
    few default lookaside slots, most of a many-row statement's copies went to malloc."""
    path = tmp_path / "writer.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE notes (value TEXT)")
    writer = SqliteWriter(f"sqlite+aiosqlite:///{path}", sqlite_batch_engine)
    try:
        assert writer.submit(InsertManyAtOnce(999)).result(timeout=30) == 0
    finally:
        writer.close()


@dataclass(frozen=True)
class CompiledModules:
    """Returns which of the modules that `make` compiles the writer process runs built."""

    def __call__(self, conn: sa.Connection) -> Any:
        for name in native.COMPILED:
            importlib.import_module(name)
        return native.running_compiled()


def test_the_writer_runs_the_compiled_transaction(tmp_path: Path) -> None:
    """The suite runs after `make native`: the writer process applies streamed reports with
    the build, not the interpreted source."""
    path = tmp_path / "writer.db"
    sqlite3.connect(path).close()
    writer = SqliteWriter(f"sqlite+aiosqlite:///{path}", sqlite_batch_engine)
    try:
        assert writer.submit(CompiledModules()).result(timeout=30) == list(native.COMPILED)
    finally:
        writer.close()
