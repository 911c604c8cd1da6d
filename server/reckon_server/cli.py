"""The `reckon` command line: serve, migrate, and manage keys."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence

from sqlalchemy import make_url

from reckon_server.domain.principals import Role, validate_name
from reckon_server.errors import ReckonError
from reckon_server.settings import Settings
from reckon_server.storage import migrate
from reckon_server.storage import principals as principal_store
from reckon_server.storage.database import Database
from reckon_server.transport.server import create_server

log = logging.getLogger("reckon")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = Settings.from_env().with_overrides(
        {
            "listen": getattr(args, "listen", None),
            "database_url": args.database_url,
            "policy_file": getattr(args, "policy_file", None),
        }
    )
    command: Callable[[argparse.Namespace, Settings], Coroutine[None, None, int]] = args.run
    try:
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
    db.add_parser("upgrade", help="apply schema migrations").set_defaults(run=_db_upgrade)

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
    return parser


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
    host = settings.listen.rsplit(":", 1)[0]
    log.info("reckon listening on %s:%d (%s)", host, port, _redacted(settings.database_url))

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, server.policies.reload)
    await stopping.wait()
    log.info("draining for up to %.0fs", settings.grace_seconds)
    await server.stop(settings.grace_seconds)
    return 0


async def _db_upgrade(_args: argparse.Namespace, settings: Settings) -> int:
    database = Database(settings.database_url)
    try:
        print(f"schema at revision {await migrate.upgrade(database)}")
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
