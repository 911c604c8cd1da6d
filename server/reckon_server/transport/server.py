"""`create_server`: the one way the CLI and the tests build a Reckon server."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from reckon.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    audit_service_pb2,
    audit_service_pb2_grpc,
    delivery_service_pb2,
    delivery_service_pb2_grpc,
    governance_service_pb2,
    governance_service_pb2_grpc,
)
from reckon_server.domain.principals import Role
from reckon_server.services.audit import AuditLedger
from reckon_server.services.delivery import DeliveryLedger, StreamLimits
from reckon_server.services.governance import GovernanceLedger
from reckon_server.services.keys import Authenticator
from reckon_server.services.notify import Notifier
from reckon_server.services.policies import PolicyStore
from reckon_server.settings import Settings
from reckon_server.storage import migrate
from reckon_server.storage import principals as principal_store
from reckon_server.storage.bus import ChangeBus
from reckon_server.storage.database import Database
from reckon_server.storage.group_commit import GroupCommitter
from reckon_server.transport.edge import EdgeInterceptor
from reckon_server.transport.governance_codec import terms_from_document
from reckon_server.transport.servicers.admin import AdminServicer
from reckon_server.transport.servicers.audit import AuditServicer
from reckon_server.transport.servicers.delivery import DeliveryServicer
from reckon_server.transport.servicers.governance import GovernanceServicer

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    audit_service_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
    admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
    governance_service_pb2.DESCRIPTOR.services_by_name["GovernanceService"].full_name,
    delivery_service_pb2.DESCRIPTOR.services_by_name["DeliveryService"].full_name,
)


@dataclass
class ReckonServer:
    """A started-or-not gRPC server with the resources it owns."""

    grpc_server: aio.Server
    database: Database
    health: health.aio.HealthServicer
    committer: GroupCommitter
    authenticate: Authenticator
    delivery: DeliveryLedger
    bus: ChangeBus
    policies: PolicyStore
    bootstrap_admin_key: str | None = None
    """An admin key minted because the database had no principal; show it once, then forget."""
    _stopped: bool = field(default=False, init=False)

    async def start(self) -> None:
        await self.grpc_server.start()

    async def stop(self, grace: float | None) -> None:
        """Report NOT_SERVING, let calls finish for `grace` seconds, then release storage."""
        if self._stopped:
            return
        self._stopped = True
        await self.health.enter_graceful_shutdown()
        # Delivery streams ack what they committed and watchers end, UNAVAILABLE/DRAINING, so
        # producers resume and watchers reopen elsewhere instead of being cut off.
        self.delivery.drain()
        await self.grpc_server.stop(grace)
        await self.authenticate.close()
        await self.committer.close()
        await self.bus.close()
        await self.database.dispose()

    async def wait_for_termination(self) -> None:
        await self.grpc_server.wait_for_termination()


async def create_server(settings: Settings) -> tuple[ReckonServer, int]:
    """Migrate storage, provision keys, and build (not start) a server bound to
    `settings.listen`. Returns it with the bound port (useful with port 0)."""
    database = Database(settings.database_url, pool_size=settings.db_pool_size)
    try:
        policies = PolicyStore(settings.policy_file)
        await migrate.upgrade(database)
        bootstrap_key = await _bootstrap_keys(database, settings)
        database.start_batch_writer()
    except BaseException:
        await database.dispose()
        raise
    committer = GroupCommitter(
        database,
        linger_seconds=settings.group_commit_linger_ms / 1000,
        max_weight=settings.group_commit_max_rows,
    )
    bus = ChangeBus(database)
    await bus.start()
    notifier = Notifier(bus)
    authenticate = Authenticator(database, notifier, ttl=settings.auth_cache_seconds)
    audit = AuditLedger(database, committer, policies, notifier)
    governance = GovernanceLedger(
        database,
        notifier,
        check_ttl=timedelta(seconds=settings.check_ttl_seconds),
        pacing_threshold_pct=settings.pacing_threshold_pct,
        suspend_on_critical=settings.suspend_on_critical,
    )
    delivery = DeliveryLedger(
        database,
        committer,
        notifier,
        governance,
        terms_of=terms_from_document,
        pacing_threshold_pct=settings.pacing_threshold_pct,
        limits=StreamLimits(
            window=settings.stream_window,
            server_inflight=settings.stream_server_inflight,
            max_streams=settings.stream_max_open,
            idle_seconds=settings.stream_idle_seconds,
        ),
    )

    keepalive_ms = int(settings.keepalive_seconds * 1000)
    server = aio.server(
        interceptors=[
            EdgeInterceptor(authenticate, send_timeout_seconds=settings.send_timeout_seconds)
        ],
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.keepalive_time_ms", keepalive_ms),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.max_connection_age_grace_ms", int(settings.grace_seconds * 1000)),
        ],
    )
    audit_service_pb2_grpc.add_AuditServiceServicer_to_server(AuditServicer(audit), server)
    admin_service_pb2_grpc.add_AdminServiceServicer_to_server(
        AdminServicer(database, audit, governance, authenticate), server
    )
    governance_service_pb2_grpc.add_GovernanceServiceServicer_to_server(
        GovernanceServicer(governance), server
    )
    delivery_service_pb2_grpc.add_DeliveryServiceServicer_to_server(
        DeliveryServicer(
            delivery,
            heartbeat_seconds=settings.watch_heartbeat_seconds,
            watch_backlog=settings.watch_backlog,
            max_watchers=settings.watch_max_open,
        ),
        server,
    )

    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )

    port = server.add_insecure_port(settings.listen)
    if port == 0:
        await database.dispose()
        raise OSError(f"could not bind {settings.listen}")
    reckon = ReckonServer(
        grpc_server=server,
        database=database,
        health=health_servicer,
        committer=committer,
        authenticate=authenticate,
        delivery=delivery,
        bus=bus,
        policies=policies,
        bootstrap_admin_key=bootstrap_key,
    )
    return reckon, port


async def _bootstrap_keys(database: Database, settings: Settings) -> str | None:
    """Provision `settings.admin_key`, or mint a first admin key for an empty database."""
    async with database.write() as conn:
        if settings.admin_key:
            if len(settings.admin_key) < 32:
                raise ValueError("RECKON_ADMIN_KEY must be at least 32 characters")
            org_id = await principal_store.ensure_org(conn, settings.org)
            admin = await principal_store.ensure_principal(conn, org_id, "admin", Role.ADMIN)
            await principal_store.provision_key(conn, admin, settings.admin_key)
            return None
        if await principal_store.has_any_principal(conn):
            return None
        org_id = await principal_store.ensure_org(conn, settings.org)
        admin = await principal_store.ensure_principal(conn, org_id, "admin", Role.ADMIN)
        return (await principal_store.add_key(conn, admin)).secret
