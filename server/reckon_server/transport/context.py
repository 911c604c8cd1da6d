"""Per-call state set by the edge and read by servicers."""

from __future__ import annotations

from contextvars import ContextVar

from reckon_server.domain.principals import Principal
from reckon_server.errors import Reason, ReckonError

_principal: ContextVar[Principal] = ContextVar("reckon_principal")


def current_principal() -> Principal:
    """The authenticated caller of the RPC being handled."""
    return _principal.get()


def current_admin(rpc: str) -> Principal:
    """The caller, who must hold an admin key."""
    principal = _principal.get()
    if not principal.is_admin:
        raise ReckonError(Reason.ADMIN_REQUIRED, f"{rpc} needs an admin key", {"rpc": rpc})
    return principal
