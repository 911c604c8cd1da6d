"""The current policy, swapped atomically on reload so calls in flight are never dropped."""

from __future__ import annotations

import logging
from pathlib import Path

from reckon_server.domain import policy

log = logging.getLogger(__name__)


class PolicyStore:
    def __init__(self, path: Path | None) -> None:
        self._path = path
        self.current = policy.load(path) if path else policy.NO_POLICY

    def reload(self) -> bool:
        """Re-read the policy file; on any error keep serving the previous policy."""
        if self._path is None:
            return False
        try:
            loaded = policy.load(self._path)
        except policy.PolicyError as err:
            log.error(
                "policy reload failed, keeping %s %s: %s",
                self.current.name,
                self.current.version,
                err,
            )
            return False
        self.current = loaded
        log.info("policy %s %s loaded (%d rules)", loaded.name, loaded.version, len(loaded.rules))
        return True
