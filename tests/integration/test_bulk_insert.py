"""BulkInsert and DriverQuery, how group commit writes its rows and reads what each
transaction needs, on both backends."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from reckon_server.storage.database import Database
from reckon_server.storage.sql import BulkInsert, DriverQuery
from tests.support.postgres import PostgresServer

_METADATA = sa.MetaData()
_ITEMS = sa.Table(
    "bulk_items",
    _METADATA,
    sa.Column("item_id", sa.String(16), primary_key=True),
    sa.Column("low", sa.BigInteger, nullable=False),
    sa.Column("high", sa.BigInteger, nullable=False),
    sa.Column("note", sa.Text, nullable=True),
)


async def _write(database: Database, bulk: BulkInsert, rows: list[tuple[Any, ...]]) -> None:
    async with database.write() as conn:
        await conn.run_sync(lambda sync: bulk.write(sync, rows))


async def _stored(database: Database) -> list[tuple[Any, ...]]:
    async with database.read() as conn:
        result = await conn.execute(sa.select(_ITEMS).order_by(_ITEMS.c.item_id))
        return [tuple(row) for row in result]


async def test_an_upsert_keeps_the_last_row_of_each_key(database_url: str) -> None:
    database = Database(database_url)
    try:
        async with database.write() as conn:
            await conn.run_sync(_METADATA.create_all)
        upsert = BulkInsert(_ITEMS, conflict_key=("item_id",))
        await _write(database, upsert, [("a", 1, 2, None), ("b", 3, 4, "é"), ("a", 5, 6, "x")])
        assert await _stored(database) == [("a", 5, 6, "x"), ("b", 3, 4, "é")]
        await _write(database, upsert, [("b", 7, 8, None), ("c", -(2**63), 2**63 - 1, "")])
        assert await _stored(database) == [
            ("a", 5, 6, "x"),
            ("b", 7, 8, None),
            ("c", -(2**63), 2**63 - 1, ""),
        ]
        with pytest.raises(sa.exc.IntegrityError):
            await _write(database, BulkInsert(_ITEMS), [("d", 1, 1, None), ("a", 0, 0, None)])
        assert [row[0] for row in await _stored(database)] == ["a", "b", "c"]
    finally:
        await database.dispose()


async def test_many_rows_apply_in_order_across_the_statements_that_carry_them(
    database_url: str,
) -> None:
    """SQLite inserts rows many to a statement, and the rest one at a time: a row refused
    in either leaves none of the others, and the rows all arrive. Upserts of many rows keep
    the last row of each key."""
    database = Database(database_url)
    try:
        async with database.write() as conn:
            await conn.run_sync(_METADATA.create_all)
        upsert = BulkInsert(_ITEMS, conflict_key=("item_id",))
        rows = [(f"k{n % 150:03d}", n, -n, f"row {n} ☕") for n in range(1000)]
        await _write(database, upsert, rows)
        last = {row[0]: row for row in rows}
        assert await _stored(database) == sorted(last.values())
        fresh = [(f"n{n:03d}", n, n, None) for n in range(400)]
        with pytest.raises(sa.exc.IntegrityError):
            await _write(database, BulkInsert(_ITEMS), [*fresh, ("k007", 0, 0, None)])
        with pytest.raises(sa.exc.IntegrityError):
            await _write(database, BulkInsert(_ITEMS), [*fresh[:100], fresh[1], *fresh[100:]])
        assert await _stored(database) == sorted(last.values())
        await _write(database, BulkInsert(_ITEMS), fresh)
        assert await _stored(database) == sorted([*last.values(), *fresh])
    finally:
        await database.dispose()


async def test_postgresql_refuses_rows_for_a_table_stored_in_another_column_order(
    postgres: PostgresServer,
) -> None:
    """Rows travel to PostgreSQL as records of the table's row type, matched to columns by
    position: a table whose stored order differs from its model (a migration appended a
    column the model declares elsewhere) would swap `low` and `high` without a word."""
    database = Database(await postgres.create_database())
    try:
        async with database.write() as conn:
            await conn.execute(
                sa.text(
                    "CREATE TABLE bulk_items (item_id varchar(16) PRIMARY KEY,"
                    " high bigint NOT NULL, low bigint NOT NULL, note text)"
                )
            )
        with pytest.raises(RuntimeError, match="stores columns"):
            await _write(database, BulkInsert(_ITEMS), [("a", 1, 2, None)])
        async with database.read() as conn:
            assert await conn.scalar(sa.text("SELECT count(*) FROM bulk_items")) == 0
    finally:
        await database.dispose()


async def test_postgresql_refuses_a_value_longer_than_its_column(
    postgres: PostgresServer,
) -> None:
    """The rows' record type carries the column's length, so a value past it is refused, as
    a plain INSERT refuses it, rather than cut short as a cast would."""
    database = Database(await postgres.create_database())
    try:
        async with database.write() as conn:
            await conn.run_sync(_METADATA.create_all)
        with pytest.raises(sa.exc.DBAPIError, match="too long"):
            await _write(database, BulkInsert(_ITEMS), [("a" * 17, 1, 2, None)])
        assert await _stored(database) == []
    finally:
        await database.dispose()


_LOW_OF = DriverQuery(
    sa.select(_ITEMS.c.item_id, sa.func.coalesce(_ITEMS.c.note, "none"), _ITEMS.c.low)
    .where(_ITEMS.c.item_id.in_(sa.bindparam("ids", expanding=True)))
    .where(_ITEMS.c.low >= sa.bindparam("at_least"))
    .order_by(_ITEMS.c.item_id)
)
_SET_LOW = DriverQuery(
    sa.update(_ITEMS).where(_ITEMS.c.item_id == sa.bindparam("id")).values(low=sa.bindparam("low"))
)
_BY_KEY = DriverQuery(
    sa.select(_ITEMS.c.item_id)
    .where(sa.tuple_(_ITEMS.c.low, _ITEMS.c.item_id).in_(sa.bindparam("keys", expanding=True)))
    .order_by(_ITEMS.c.item_id)
)


async def test_a_driver_query_takes_lists_of_any_length_and_keeps_its_literals(
    database_url: str,
) -> None:
    """Each length of a list is its own statement; the statement's literals (the "none" of
    its coalesce) are bound with it, and the caller's values in the order the SQL wants."""
    database = Database(database_url)
    try:
        async with database.write() as conn:
            await conn.run_sync(_METADATA.create_all)
        await _write(
            database, BulkInsert(_ITEMS), [("a", 1, 0, None), ("b", 2, 0, "é"), ("c", 3, 0, "")]
        )

        def read(sync: sa.Connection) -> list[list[tuple[Any, ...]]]:
            assert _SET_LOW.rows(sync, low=-(2**63), id="c") == []
            return [
                [tuple(row) for row in _LOW_OF.rows(sync, ids=ids, at_least=at_least)]
                for ids, at_least in ((["a", "b", "c"], -(2**63)), (["b"], 0), (["c", "x"], 0))
            ]

        async with database.write() as conn:
            found = await conn.run_sync(read)
        assert found == [
            [("a", "none", 1), ("b", "é", 2), ("c", "", -(2**63))],
            [("b", "é", 2)],
            [],
        ]
        with pytest.raises(KeyError, match="at_least"):
            async with database.read() as conn:
                await conn.run_sync(lambda sync: _LOW_OF.rows(sync, ids=["a"], at_leas=0))
        with pytest.raises(sa.exc.IntegrityError):  # the driver's error, as SQLAlchemy's
            async with database.write() as conn:
                await conn.run_sync(lambda sync: _SET_LOW.rows(sync, low=None, id="a"))
        assert (await _stored(database))[0] == ("a", 1, 0, None)
    finally:
        await database.dispose()


async def test_a_driver_query_takes_lists_of_tuples_as_row_values(database_url: str) -> None:
    """Each tuple binds its members, in order, as one row value of the IN list."""
    database = Database(database_url)
    try:
        async with database.write() as conn:
            await conn.run_sync(_METADATA.create_all)
        await _write(database, BulkInsert(_ITEMS), [("a", 1, 0, None), ("b", 2, 0, None)])

        def read(sync: sa.Connection) -> list[list[str]]:
            return [
                [row[0] for row in _BY_KEY.rows(sync, keys=keys)]
                for keys in (
                    [(1, "a"), (2, "b"), (2, "b")],
                    [(2, "a"), (1, "b")],
                    [(2, "b")],
                    [(1, "é")] * 300,
                )
            ]

        async with database.read() as conn:
            assert await conn.run_sync(read) == [["a", "b"], [], ["b"], []]
    finally:
        await database.dispose()


async def test_a_driver_query_runs_lists_of_any_length_as_a_few_statements(
    database_url: str,
) -> None:
    """Lists are padded to a power of two long: 1 to 40 items take 7 statements, not 40."""
    database = Database(database_url)
    statements: set[str] = set()

    def executed(_conn: object, _cursor: object, sql: str, *_: object) -> None:
        if sql.startswith("SELECT"):
            statements.add(sql)

    try:
        async with database.write() as conn:
            await conn.run_sync(_METADATA.create_all)
        rows = [(f"i{n:02d}", n, 0, None) for n in range(40)]
        await _write(database, BulkInsert(_ITEMS), rows)
        sa.event.listen(database.engine.sync_engine, "before_cursor_execute", executed)

        def read(sync: sa.Connection) -> list[int]:
            return [
                len(_LOW_OF.rows(sync, ids=[row[0] for row in rows[:count]], at_least=0))
                for count in range(1, 41)
            ]

        async with database.write() as conn:
            assert await conn.run_sync(read) == list(range(1, 41))
        assert len(statements) == 7
    finally:
        await database.dispose()
