"""The writer process's engine (SQLAlchemy over apsw) behaves as the `sqlite3` one does:
rows and types round-trip, counts and keys are reported, and SQLite's errors become the
exceptions the rest of the server classifies.

The test process opens each file through apsw alone: two SQLite libraries holding the same
file in one process can drop each other's locks.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import exc

from reckon_server.storage import apsw_dbapi
from reckon_server.storage.database import sqlite_batch_engine
from reckon_server.storage.types import JsonDocument, UtcTimestamp

_METADATA = sa.MetaData()
_NOTES = sa.Table(
    "notes",
    _METADATA,
    sa.Column("note_id", sa.Integer, primary_key=True),
    sa.Column("title", sa.String(64), unique=True, nullable=False),
    sa.Column("body", JsonDocument, nullable=True),
    sa.Column("at", UtcTimestamp, nullable=False),
    sa.Column("pinned", sa.Boolean, nullable=False),
    sa.Column("weight", sa.Float, nullable=True),
    sa.Column("blob", sa.LargeBinary, nullable=True),
)
_AT = datetime(2026, 3, 15, 12, 30, 45, 123456, tzinfo=UTC)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = sqlite_batch_engine(f"sqlite+aiosqlite:///{tmp_path / 'writer.db'}")
    with engine.begin() as conn:
        _METADATA.create_all(conn)
    yield engine
    engine.dispose()


def _note(title: str, **values: object) -> dict[str, object]:
    return {"title": title, "body": None, "at": _AT, "pinned": False, "weight": None} | values


def test_rows_round_trip_with_their_types_keys_and_counts(engine: sa.Engine) -> None:
    body = {"text": "naïve café ☕ 𝄞", "nested": {"list": [1, 2.5, None, True]}}
    with engine.begin() as conn:
        first = conn.execute(
            sa.insert(_NOTES),
            _note("first", body=body, pinned=True, weight=0.25, blob=b"\x00\xff"),
        )
        assert first.inserted_primary_key == (1,)
        many = conn.execute(sa.insert(_NOTES), [_note(f"n{i}") for i in range(5)])
        assert many.rowcount == 5
        returned = conn.execute(
            sa.insert(_NOTES).returning(_NOTES.c.note_id, _NOTES.c.title), _note("returned")
        )
        assert returned.all() == [(7, "returned")]
        updated = conn.execute(
            sa.update(_NOTES).where(_NOTES.c.title.like("n%")).values(weight=1.5)
        )
        assert updated.rowcount == 5
        unmatched = conn.execute(sa.update(_NOTES).where(_NOTES.c.title == "none").values(weight=2))
        assert unmatched.rowcount == 0

    with engine.connect() as conn:
        row = conn.execute(sa.select(_NOTES).where(_NOTES.c.title == "first")).one()
        assert row._mapping == {
            "note_id": 1,
            "title": "first",
            "body": body,
            "at": _AT,
            "pinned": True,
            "weight": 0.25,
            "blob": b"\x00\xff",
        }
        # A query that finds nothing still describes its columns.
        nothing = conn.execute(sa.select(_NOTES.c.title).where(_NOTES.c.note_id < 0))
        assert list(nothing.keys()) == ["title"]
        assert nothing.first() is None
        assert conn.execute(sa.select(sa.func.count()).select_from(_NOTES)).scalar_one() == 7
        chunks = conn.execute(sa.select(_NOTES.c.title).order_by(_NOTES.c.note_id)).partitions(3)
        assert [len(chunk) for chunk in chunks] == [3, 3, 1]
        # The functions the dialect registers on connect.
        assert conn.execute(sa.select(sa.literal("abc").regexp_match("b"))).scalar_one() == 1
        assert conn.execute(sa.select(sa.func.floor(2.5))).scalar_one() == 2


def test_a_transaction_that_raises_leaves_nothing(engine: sa.Engine) -> None:
    def insert_and_abandon() -> None:
        with engine.begin() as conn:
            conn.execute(sa.insert(_NOTES), _note("rolled back"))
            raise RuntimeError("abandon")

    with pytest.raises(RuntimeError):
        insert_and_abandon()
    with engine.connect() as conn:
        assert conn.execute(sa.select(_NOTES.c.title)).all() == []


def test_sqlite_errors_become_the_exceptions_sqlite3_raises(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.insert(_NOTES), _note("taken"))
    with pytest.raises(exc.IntegrityError) as duplicate, engine.begin() as conn:
        conn.execute(sa.insert(_NOTES), _note("taken"))
    assert isinstance(duplicate.value.orig, apsw_dbapi.IntegrityError)
    assert "UNIQUE constraint failed: notes.title" in str(duplicate.value.orig)
    # As the writer process sends it back to the server.
    sent_back = pickle.loads(pickle.dumps(duplicate.value))
    assert isinstance(sent_back, exc.IntegrityError)
    assert isinstance(sent_back.orig, apsw_dbapi.IntegrityError)
    assert str(sent_back.orig) == str(duplicate.value.orig)

    with pytest.raises(exc.OperationalError, match="no such table"), engine.begin() as conn:
        conn.exec_driver_sql("SELECT * FROM missing")
    with pytest.raises(exc.ProgrammingError, match="object"), engine.begin() as conn:
        conn.exec_driver_sql("SELECT ?", (object(),))
    with pytest.raises(exc.ProgrammingError, match="bindings"), engine.begin() as conn:
        conn.exec_driver_sql("SELECT ?, ?", (1,))


def test_a_locked_database_is_an_operational_error(engine: sa.Engine) -> None:
    """What the server reports as storage unavailable: the write lock held elsewhere for
    longer than the connection's `timeout`."""
    path = engine.url.database
    assert path is not None
    holder, waiter = engine.raw_connection(), apsw_dbapi.connect(path, timeout=0.05)
    try:
        holder.cursor().execute("BEGIN IMMEDIATE")
        cursor = waiter.cursor()
        with pytest.raises(apsw_dbapi.OperationalError, match="database is locked"):
            cursor.execute("BEGIN IMMEDIATE")
        holder.rollback()
        cursor.execute("BEGIN IMMEDIATE")
        waiter.rollback()
    finally:
        holder.close()
        waiter.close()


def test_a_uri_opens_the_database_as_it_says(engine: sa.Engine) -> None:
    read_only = apsw_dbapi.connect(f"file:{engine.url.database}?mode=ro", uri=True)
    try:
        cursor = read_only.cursor()
        assert cursor.execute("SELECT count(*) FROM notes").fetchall() == [(0,)]
        with pytest.raises(apsw_dbapi.OperationalError, match="readonly"):
            cursor.execute("DELETE FROM notes")
    finally:
        read_only.close()


def test_a_closed_connection_is_a_disconnect(engine: sa.Engine) -> None:
    raw = engine.raw_connection()
    cursor = raw.driver_connection.cursor()  # type: ignore[union-attr]
    raw.driver_connection.close()  # type: ignore[union-attr]
    with pytest.raises(apsw_dbapi.ProgrammingError) as closed:
        cursor.execute("SELECT 1")
    assert engine.dialect.is_disconnect(closed.value, None, None)
    raw.invalidate()


def test_a_statement_run_once_a_transaction_stays_prepared_for_the_next(
    engine: sa.Engine,
) -> None:
    """A delivery transaction runs its statements a couple of hundred times between two runs
    of the statements it runs once (each set of values of an executemany counts): those must
    still be prepared when the next transaction comes, not parsed again."""

    def transaction(conn: sa.Connection, number: int) -> None:
        conn.exec_driver_sql("SELECT count(*) FROM notes WHERE pinned = ?", (True,)).all()
        conn.exec_driver_sql(
            "INSERT INTO notes (title, at, pinned) VALUES (?, ?, ?)",
            [(f"note {number}.{n}", 0, False) for n in range(200)],
        )

    with engine.connect() as conn:
        dbapi_connection = conn.connection.dbapi_connection
        assert isinstance(dbapi_connection, apsw_dbapi.Connection)
        with conn.begin():
            transaction(conn, 1)
        parsed = dbapi_connection.apsw_connection.cache_stats()["misses"]
        with conn.begin():
            transaction(conn, 2)
        assert dbapi_connection.apsw_connection.cache_stats()["misses"] == parsed
