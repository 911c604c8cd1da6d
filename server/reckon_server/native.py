"""The modules that run compiled by mypyc once built (`make native`): the streamed-delivery
transaction and its rules, which are the SQLite writer process's Python (compiled, it does
about a sixth fewer instructions per report), and the server's reading and checking of each
streamed report and filling of its result into the ack. The same sources run interpreted
where no build is present.

A build sits beside its source and Python imports it in the source's place: one older than
its source would run code that is no longer there, and one of a module no longer listed here
code that `make native` no longer builds, so the package refuses to import beside either.
Run as a script (it imports nothing of the package), it prints the sources to compile.
"""

from __future__ import annotations

import sys
from pathlib import Path

COMPILED = (
    "reckon_server.storage.delivery",
    "reckon_server.domain.pacing",
    "reckon_server.transport.stream_reports",
)
_PACKAGES_ROOT = Path(__file__).resolve().parent.parent


def source_of(module: str, root: Path = _PACKAGES_ROOT) -> Path:
    return root.joinpath(*module.split(".")).with_suffix(".py")


def stale_builds(root: Path = _PACKAGES_ROOT) -> list[Path]:
    """The builds under `root`'s package that are of no module of `COMPILED`, or older than
    their source."""
    compiled = {source_of(name, root) for name in COMPILED}
    stale = []
    for build in sorted((root / "reckon_server").rglob("*.so")):
        source = build.with_name(build.name.split(".")[0] + ".py")
        if source not in compiled or build.stat().st_mtime < source.stat().st_mtime:
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
        raise ImportError(f"stale builds: {names}; rebuild with `make native`")


if __name__ == "__main__":
    print(" ".join(str(source_of(name).relative_to(_PACKAGES_ROOT)) for name in COMPILED))
