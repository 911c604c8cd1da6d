"""Builds of the compiled modules are never older than their sources."""

from __future__ import annotations

import os
from pathlib import Path

from reckon_server import native


def test_a_build_older_than_its_source_is_stale(tmp_path: Path) -> None:
    sources = [tmp_path.joinpath(*name.split(".")).with_suffix(".py") for name in native.COMPILED]
    builds = [source.with_suffix(".cpython-311-x86_64-linux-gnu.so") for source in sources]
    for source, build in zip(sources, builds, strict=True):
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text("")
        build.write_bytes(b"")
        os.utime(source, (1_000, 1_000))
        os.utime(build, (2_000, 2_000))
    assert native.stale_builds(tmp_path) == []

    os.utime(sources[0], (3_000, 3_000))
    assert native.stale_builds(tmp_path) == [builds[0]]


def test_a_source_without_a_build_runs_as_it_is(tmp_path: Path) -> None:
    source = tmp_path.joinpath(*native.COMPILED[0].split(".")).with_suffix(".py")
    source.parent.mkdir(parents=True)
    source.write_text("")
    assert native.stale_builds(tmp_path) == []
