"""The modules that run compiled by mypyc once built (`make native`): the streamed-delivery
transaction and its rules, which are the SQLite writer process's Python. Compiled, the
writer does about a sixth fewer instructions per report; the same source runs interpreted
where no build is present.

A build sits beside its source and Python imports it in the source's place: one older than
its source would run code that is no longer there, so the package refuses to import then.
"""

from __future__ import annotations

import sys
from pathlib import Path

COMPILED = ("reckon_server.storage.delivery", "reckon_server.domain.pacing")
_PACKAGES_ROOT = Path(__file__).resolve().parent.parent


def stale_builds(root: Path = _PACKAGES_ROOT) -> list[Path]:
    """The builds under `root` of the modules of `COMPILED` that are older than their source."""
    stale = []
    for name in COMPILED:
        source = root.joinpath(*name.split(".")).with_suffix(".py")
        for build in source.parent.glob(f"{source.stem}.*.so"):
            if build.stat().st_mtime < source.stat().st_mtime:
                stale.append(build)
    return stale


def running_compiled() -> list[str]:
    """The modules of `COMPILED` imported from a build."""
    return [
        name
        for name in COMPILED
        if str(getattr(sys.modules.get(name), "__file__", "")).endswith(".so")
    ]


def refuse_stale_builds() -> None:
    stale = stale_builds()
    if stale:
        names = ", ".join(str(path) for path in stale)
        raise ImportError(f"{names}: older than its source; rebuild with `make native`")
