"""A build beside a source is of a compiled module and never older than its source."""

from __future__ import annotations

import os
from pathlib import Path

from reckon_server import native


def build(root: Path, module: str, *, built_at: int, edited_at: int) -> Path:
    source = native.source_of(module, root)
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text("")
    os.utime(source, (edited_at, edited_at))
    built = source.with_suffix(".cpython-311-x86_64-linux-gnu.so")
    built.write_bytes(b"")
    os.utime(built, (built_at, built_at))
    return built


def test_a_build_older_than_its_source_is_stale(tmp_path: Path) -> None:
    builds = [build(tmp_path, name, built_at=2_000, edited_at=1_000) for name in native.COMPILED]
    assert native.stale_builds(tmp_path) == []

    os.utime(native.source_of(native.COMPILED[0], tmp_path), (3_000, 3_000))
    assert native.stale_builds(tmp_path) == [builds[0]]


def test_a_build_of_a_module_no_longer_compiled_is_stale(tmp_path: Path) -> None:
    leftover = build(tmp_path, "reckon_server.storage.sql", built_at=2_000, edited_at=1_000)
    assert native.stale_builds(tmp_path) == [leftover]


def test_a_source_without_a_build_runs_as_it_is(tmp_path: Path) -> None:
    source = native.source_of(native.COMPILED[0], tmp_path)
    source.parent.mkdir(parents=True)
    source.write_text("")
    assert native.stale_builds(tmp_path) == []
