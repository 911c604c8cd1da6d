"""The `reckon` command line: serve, migrate, and manage keys."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TextIO

from sqlalchemy import make_url

from reckon_server.domain.principals import Role, validate_name
from reckon_server.errors import ReckonError
from reckon_server.export import DECISIONS, OUTCOMES, CsvWriter, JsonlWriter, as_document
from reckon_server.native import running_compiled
from reckon_server.services.audit import verify_chain
from reckon_server.settings import Settings
from reckon_server.storage import audit as audit_store
from reckon_server.storage import migrate
from reckon_server.storage import principals as principal_store
from reckon_server.storage.audit import EventFilter
from reckon_server.storage.database import Database
from reckon_server.transport.server import create_server

log = logging.getLogger("reckon")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    command: Callable[[argparse.Namespace, Settings], Coroutine[None, None, int]] = args.run
    try:
        settings = Settings.from_env().with_overrides(
            {
                "listen": getattr(args, "listen", None),
                "database_url": args.database_url,
                "policy_file": getattr(args, "policy_file", None),
            }
        )
        return asyncio.run(command(args, settings))
    except (ReckonError, ValueError) as err:
        print(f"reckon: {err}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reckon", description=__doc__)
    parser.add_argument("--database-url", help="SQLAlchemy URL (env RECKON_DATABASE_URL)")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gRPC server")
    serve.add_argument("--listen", help="HOST:PORT (env RECKON_LISTEN; default 127.0.0.1:50051)")
    serve.add_argument("--policy-file", help="policy TOML file (env RECKON_POLICY_FILE)")
    serve.set_defaults(run=_serve)

    db = commands.add_parser("db", help="database maintenance").add_subparsers(required=True)
    db.add_parser("upgrade", help="apply schema migrations").set_defaults(
        run=_db_migrate, migration=lambda database, _: migrate.upgrade(database)
    )
    downgrade = db.add_parser(
        "downgrade",
        help="undo the migrations after REVISION, for an earlier server version",
        description="Undo the schema migrations after REVISION (e.g. 0008), so that the server "
        "version of that revision runs again. What those migrations added is dropped.",
    )
    downgrade.add_argument("revision", help="the revision to go back to, or 'base'")
    downgrade.set_defaults(
        run=_db_migrate, migration=lambda database, args: migrate.downgrade(database, args.revision)
    )

    keys = commands.add_parser("keys", help="API keys").add_subparsers(required=True)
    create = keys.add_parser("create", help="create a key and print it once")
    who = create.add_mutually_exclusive_group(required=True)
    who.add_argument("--agent", metavar="NAME", help="an agent key for NAME")
    who.add_argument("--admin", metavar="NAME", nargs="?", const="admin", help="an admin key")
    create.add_argument("--org", default=None, help="org name (default: RECKON_ORG or 'default')")
    create.set_defaults(run=_keys_create)
    revoke = keys.add_parser("revoke", help="revoke a key by its key_id")
    revoke.add_argument("key_id")
    revoke.add_argument("--org", default=None, help="org name (default: RECKON_ORG or 'default')")
    revoke.set_defaults(run=_keys_revoke)

    agents = commands.add_parser("agents", help="principals").add_subparsers(required=True)
    list_agents = agents.add_parser("list", help="list an org's agents and admins with their keys")
    list_agents.add_argument("--org", default=None, help="org name")
    list_agents.set_defaults(run=_agents_list)

    audit = commands.add_parser("audit", help="the audit trail").add_subparsers(required=True)
    verify = audit.add_parser("verify", help="check the org's audit hash chain")
    verify.add_argument("--org", default=None, help="org name")
    verify.set_defaults(run=_audit_verify)

    export = commands.add_parser("export", help="write the audit trail to a file")
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument("--output", "-o", default="-", help="file path, or - for stdout")
    export.add_argument("--org", default=None, help="org name")
    export.add_argument("--agent", help="only this agent's events")
    export.add_argument("--action", help="action_type glob, e.g. 'db.*'")
    export.add_argument("--since", type=_timestamp, help="created at or after (ISO 8601)")
    export.add_argument("--until", type=_timestamp, help="created before (ISO 8601)")
    export.add_argument("--decision", action="append", choices=sorted(DECISIONS), default=[])
    export.add_argument("--outcome", action="append", choices=sorted(OUTCOMES), default=[])
    export.add_argument("--unreported", action="store_true", help="events without an outcome")
    export.set_defaults(run=_export)
    return parser


def _timestamp(value: str) -> datetime:
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@asynccontextmanager
async def _org_database(settings: Settings, org: str | None) -> AsyncIterator[tuple[Database, str]]:
    """The migrated database and the id of the named org (which must exist)."""
    database = Database(settings.database_url)
    try:
        await migrate.upgrade(database)
        async with database.read() as conn:
            org_id = await principal_store.find_org(conn, org or settings.org)
        if org_id is None:
            raise ValueError(f"no org named {org or settings.org!r}")
        yield database, org_id
    finally:
        await database.dispose()


async def _agents_list(args: argparse.Namespace, settings: Settings) -> int:
    async with _org_database(settings, args.org) as (database, org_id), database.read() as conn:
        records = await principal_store.list_principals(
            conn, org_id, after_name="", limit=1_000_000
        )
    for record in records:
        keys = ", ".join(
            f"{k.key_id} ({k.prefix}…{' revoked' if k.revoked_at else ''})" for k in record.keys
        )
        print(f"{record.principal.name}\t{record.principal.role.name.lower()}\t{keys}")
    return 0


async def _audit_verify(args: argparse.Namespace, settings: Settings) -> int:
    async with _org_database(settings, args.org) as (database, org_id):
        verdict = await verify_chain(database, org_id)
    if verdict.intact:
        print(f"audit chain intact: {verdict.events_checked} events verified")
        return 0
    print(
        f"audit chain BROKEN at event {verdict.first_broken_event_id} "
        f"(position {verdict.events_checked}): {verdict.detail}",
        file=sys.stderr,
    )
    return 1


async def _export(args: argparse.Namespace, settings: Settings) -> int:
    where = EventFilter(
        agent_name=args.agent,
        action_glob=args.action,
        created_after=args.since,
        created_before=args.until,
        statuses=tuple(DECISIONS[d] for d in args.decision),
        outcome_statuses=tuple(OUTCOMES[o] for o in args.outcome),
        unreported=args.unreported,
    )
    async with _org_database(settings, args.org) as (database, org_id):
        async with database.read() as conn:
            total = await audit_store.count_records(conn, org_id, where)
        with contextlib.ExitStack() as stack:
            out = sys.stdout
            if args.output != "-":
                # The export is the only task of this process: blocking writes stall nothing.
                out = stack.enter_context(
                    open(args.output, "w", newline="", encoding="utf-8")  # noqa: ASYNC230
                )
            writer = JsonlWriter(out) if args.format == "jsonl" else CsvWriter(out)
            progress = Progress(total, sys.stderr)
            async for record in audit_store.stream_records(database.read, org_id, where):
                writer.write(as_document(record))
                progress.advance()
        progress.done()
    return 0


class Progress:
    """A progress bar on a terminal; a single summary line otherwise."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total, self.count, self._stream = total, 0, stream
        self._live = stream.isatty()

    def advance(self) -> None:
        self.count += 1
        if self._live and (self.count % 500 == 0 or self.count == self.total):
            done = self.count / self.total if self.total else 1.0
            bar = "#" * int(done * 30)
            self._stream.write(f"\rexporting [{bar:<30}] {self.count}/{self.total}")
            self._stream.flush()

    def done(self) -> None:
        if self._live:
            self._stream.write("\n")
        self._stream.write(f"exported {self.count} events\n")


async def _serve(_args: argparse.Namespace, settings: Settings) -> int:
    server, port = await create_server(settings)
    if server.bootstrap_admin_key:
        print(
            "Created the first admin key (shown once, store it now):\n"
            f"  {server.bootstrap_admin_key}",
            file=sys.stderr,
            flush=True,
        )
    await server.start()
    _settle_heap()
    host = settings.listen.rsplit(":", 1)[0]
    log.info("reckon listening on %s:%d (%s)", host, port, _redacted(settings.database_url))
    compiled = running_compiled()
    log.info("compiled modules: %s", ", ".join(compiled) if compiled else "none (`make native`)")

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, server.policies.reload)
    await stopping.wait()
    log.info("draining for up to %.0fs", settings.grace_seconds)
    await server.stop(settings.grace_seconds)
    return 0


def _settle_heap() -> None:
    """Keep the cyclic garbage collector off the long-lived heap.

    Everything loaded at start (modules, SQLAlchemy metadata, protobuf descriptors) lives as
    long as the process; frozen, it is no longer rescanned by every full collection, and a
    higher first threshold lets the many short-lived per-call objects die by reference count
    before a collection runs.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


async def _db_migrate(args: argparse.Namespace, settings: Settings) -> int:
    """`db upgrade` or `db downgrade`, as `args.migration(database, args)`."""
    database = Database(settings.database_url)
    try:
        print(f"schema at revision {await args.migration(database, args)}")
    finally:
        await database.dispose()
    return 0


async def _keys_create(args: argparse.Namespace, settings: Settings) -> int:
    role, name = (Role.AGENT, args.agent) if args.agent else (Role.ADMIN, args.admin)
    validate_name(name)
    database = Database(settings.database_url)
    try:
        await migrate.upgrade(database)
        async with database.write() as conn:
            org_id = await principal_store.ensure_org(conn, args.org or settings.org)
            principal = await principal_store.ensure_principal(conn, org_id, name, role)
            if principal.role is not role:
                raise ValueError(f"{name!r} already exists with role {principal.role.name}")
            key = await principal_store.add_key(conn, principal)
    finally:
        await database.dispose()
    print(key.secret)
    print(f"key_id {key.key_id} for {role.name.lower()} {name!r}", file=sys.stderr)
    return 0


async def _keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    database = Database(settings.database_url)
    try:
        async with database.write() as conn:
            org_id = await principal_store.ensure_org(conn, args.org or settings.org)
            record = await principal_store.revoke_key(conn, org_id, args.key_id)
    finally:
        await database.dispose()
    if record is None:
        print(f"reckon: no key {args.key_id!r} in that org", file=sys.stderr)
        return 1
    print(f"revoked {record.key_id} at {record.revoked_at:%Y-%m-%dT%H:%M:%SZ}")
    return 0


def _redacted(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


if __name__ == "__main__":
    raise SystemExit(main())
