"""Reckon: a self-hosted governance ledger for AI agents, served over gRPC."""

from reckon_server.native import refuse_stale_builds

refuse_stale_builds()
