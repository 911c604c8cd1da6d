"""The SQLite writer process's checkpointer: the write-ahead log is copied back off the
writer's thread, starts over even under writes that never pause, and a reader holding an old
snapshot delays that, never a commit.

The test process opens each file through apsw alone: two SQLite libraries holding the same
file in one process can drop each other's locks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import apsw
import pytest

from reckon_server.storage.sqlite_writer import WalCheckpointer

_PAGES, _RESTART_PAGES = 20, 200
_ROW = b"x" * 3000
"""Most of a page: each row of a transaction dirties a page of its own."""


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[apsw.Connection]:
    db = apsw.Connection(str(tmp_path / "wal.db"))
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE notes (n INTEGER PRIMARY KEY, body BLOB NOT NULL)")
    yield db
    db.close()


def _write(db: apsw.Connection, first: int, count: int, rows: int = 5) -> None:
    for n in range(first, first + count):
        with db:
            db.executemany(
                "INSERT INTO notes VALUES (?, ?)", [(n * rows + i, _ROW) for i in range(rows)]
            )


def _log_frames(db: apsw.Connection) -> int:
    """How many frames the log holds now (a passive checkpoint also copies what it can)."""
    return db.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)[0]


def _until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_the_log_is_copied_off_the_writer_and_starts_over(
    writer: apsw.Connection, tmp_path: Path
) -> None:
    database = tmp_path / "wal.db"
    checkpointer = WalCheckpointer(writer, pages=_PAGES, restart_pages=_RESTART_PAGES)
    try:
        stored = database.stat().st_size
        # Past `pages` but short of `restart_pages`: only the checkpointer's thread copies.
        _write(writer, 0, 8)
        _until(lambda: database.stat().st_size > stored)
        # Ten times `restart_pages` in all, without a pause.
        _write(writer, 8, 400)
    finally:
        checkpointer.close()
    page_size = writer.execute("PRAGMA page_size").get
    frame = page_size + 24
    most = _RESTART_PAGES + 10
    assert (tmp_path / "wal.db-wal").stat().st_size <= 32 + most * frame
    assert writer.execute("SELECT count(*), sum(length(body)) FROM notes").get == (
        408 * 5,
        408 * 5 * len(_ROW),
    )
    assert writer.execute("PRAGMA integrity_check").get == "ok"


def test_a_reader_holding_an_old_snapshot_delays_the_restart_never_a_commit(
    writer: apsw.Connection, tmp_path: Path
) -> None:
    reader = apsw.Connection(str(tmp_path / "wal.db"))
    checkpointer = WalCheckpointer(writer, pages=_PAGES, restart_pages=_RESTART_PAGES)
    try:
        _write(writer, 0, 4)
        with reader:
            assert reader.execute("SELECT count(*) FROM notes").get == 20
            _write(writer, 4, 100)
            # Nothing the reader may still read can be copied over: the log grows.
            assert _log_frames(writer) > 2 * _RESTART_PAGES
            assert reader.execute("SELECT count(*) FROM notes").get == 20
        _write(writer, 104, 2)
        assert _log_frames(writer) < _RESTART_PAGES
    finally:
        checkpointer.close()
        reader.close()
    assert writer.execute("SELECT count(*) FROM notes").get == 106 * 5
