"""``officeray keys create|list|revoke``: API keys in the configured store (``store.url`` of
``--config`` / ``$OFFICERAY_STORE__URL``), written directly, so they work before any server runs.

* ``create --tenant T [--role user|approver|admin] [--name TEXT] [--json]`` prints the new key and its
  webhook secret, once: the store keeps only a hash of the key;
* ``list [--tenant T] [--json]`` prints the keys without any secret (id, tenant, role, name, when
  created and revoked);
* ``revoke ID`` (the key id, or the key itself) stops the key; a server that cached it stops taking
  it within ``auth.cache_ttl_s``.

Exit 0 on success, 2 (:class:`~cluster.cli_output.UsageError`) for bad usage or an unknown key,
1 (:class:`~cluster.cli_output.ServerError`) when the store fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from cluster.cli_output import EXIT_OK, ServerError, UsageError
from cluster.keyfile import open_store, store_name
from officeray.auth import (
    KEY_ID_CHARS,
    KEY_PREFIX,
    MAX_KEY_NAME_CHARS,
    TENANT_PATTERN,
    ApiKeyRecord,
    Role,
    mint_key,
    parse_key,
)
from officeray.config import Settings
from officeray.store import SqlStore, StoreError

T = TypeVar("T")

KEY_ID_PATTERN = re.compile(rf"[0-9a-f]{{{KEY_ID_CHARS}}}")
"""A key id as ``revoke`` takes it (:data:`officeray.auth.KEY_ID_CHARS` lowercase hex characters)."""

_KEY_START = re.compile(rf"{re.escape(KEY_PREFIX)}[0-9a-f]{{{KEY_ID_CHARS}}}", re.ASCII)


def shown_revoke_argument(given: object) -> str:
    """What a refusal of ``keys revoke GIVEN`` may show of it: never a part of what may be a secret,
    only its ``ofr_<id>`` start when it has one, else nothing."""
    if isinstance(given, str):
        start = _KEY_START.match(given.strip())
        if start is not None:
            return f"{start.group()}_... "
    return ""


def add_keys_parser(sub: Any) -> None:
    """The ``keys`` command and its ``create``, ``list`` and ``revoke`` subcommands."""
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("--config", metavar="FILE", help="YAML config file (default: $OFFICERAY_CONFIG)")
    keys = sub.add_parser("keys", help="API keys in the configured store: create, list, revoke")
    keys_sub = keys.add_subparsers(dest="keys", required=True)
    kc = keys_sub.add_parser(
        "create", parents=[config], help="a new key for a tenant: prints the key and its webhook secret once"
    )
    kc.add_argument("--tenant", required=True, help="the tenant the key acts for")
    kc.add_argument(
        "--role",
        choices=[role.value for role in Role],
        default=Role.USER.value,
        help="user: submit and read; approver: also decide approvals; admin: everything (default user)",
    )
    kc.add_argument("--name", default=None, help="what the key is for (shown by `keys list`)")
    kc.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object: {key_id, key, tenant, role, webhook_secret, created_at}",
    )
    kl = keys_sub.add_parser("list", parents=[config], help="the keys, oldest first, without their secrets")
    kl.add_argument("--tenant", default=None, help="only this tenant's keys")
    kl.add_argument("--json", action="store_true", help='print one JSON object: {"keys": [...]}')
    kr = keys_sub.add_parser("revoke", parents=[config], help="stop a key from authenticating anything")
    kr.add_argument("key_id", metavar="ID", help="the key's id (see `officeray keys list`), or the key")


def _with_store(settings: Settings, work: Callable[[SqlStore], Awaitable[T]]) -> T:
    """``work(store)`` on the configured store, closed after; a store failure is a ServerError."""

    async def run() -> T:
        store = open_store(settings)
        try:
            return await work(store)
        finally:
            store.close()

    try:
        return asyncio.run(run())
    except StoreError as exc:
        raise ServerError(f"the store {store_name(settings)} failed: {exc}") from None


def _check_tenant(tenant: str) -> str:
    if not re.fullmatch(TENANT_PATTERN, tenant):
        raise UsageError(f"invalid --tenant {tenant!r}: 1 to 100 letters, digits, '_', '.' or '-'")
    return tenant


def _create(args: argparse.Namespace, settings: Settings) -> int:
    tenant = _check_tenant(args.tenant)
    if args.name is not None and len(args.name) > MAX_KEY_NAME_CHARS:
        raise UsageError(f"--name is longer than {MAX_KEY_NAME_CHARS} characters")
    key, record = mint_key(tenant, Role(args.role), name=args.name)
    if not _with_store(settings, lambda store: store.create_api_key(record)):
        raise ServerError(f"a key with id {record.key_id} exists already; run the command again")
    if args.json:
        shown = {
            "key_id": record.key_id,
            "key": key,
            "tenant": record.tenant,
            "role": record.role.value,
            "webhook_secret": record.webhook_secret,
            "created_at": record.created_at.isoformat(),
        }
        print(json.dumps(shown))
        return EXIT_OK
    print(f"key_id:         {record.key_id}")
    print(f"tenant:         {record.tenant}")
    print(f"role:           {record.role.value}")
    print(f"key:            {key}")
    print(f"webhook_secret: {record.webhook_secret}")
    print(
        "Store the key and the webhook secret now: they are not shown again. Clients send "
        "`Authorization: Bearer <key>`; webhooks are signed with the secret (X-Officeray-Signature)."
    )
    return EXIT_OK


def _row(record: ApiKeyRecord) -> list[str]:
    revoked = "" if record.revoked_at is None else record.revoked_at.isoformat(timespec="seconds")
    return [
        record.key_id,
        record.tenant,
        record.role.value,
        record.created_at.isoformat(timespec="seconds"),
        revoked,
        record.name or "",
    ]


def _list(args: argparse.Namespace, settings: Settings) -> int:
    tenant = None if args.tenant is None else _check_tenant(args.tenant)
    records = _with_store(settings, lambda store: store.list_api_keys(tenant))
    if args.json:
        print(json.dumps({"keys": [record.public_view() for record in records]}))
        return EXIT_OK
    if not records:
        print("no keys" + ("" if tenant is None else f" of tenant {tenant}"))
        return EXIT_OK
    rows = [["key_id", "tenant", "role", "created_at", "revoked_at", "name"], *map(_row, records)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


def _revoke(args: argparse.Namespace, settings: Settings) -> int:
    given: str = args.key_id.strip()
    key_id = given if KEY_ID_PATTERN.fullmatch(given) else parse_key(given)
    if key_id is None:
        raise UsageError(
            f"the argument {shown_revoke_argument(given)}is neither a key id ({KEY_ID_CHARS} lowercase hex "
            f"characters) nor a key ({KEY_PREFIX}<id>_<secret>)"
        )

    async def revoke(store: SqlStore) -> tuple[bool, ApiKeyRecord | None]:
        return await store.revoke_api_key(key_id), await store.get_api_key(key_id)

    revoked, record = _with_store(settings, revoke)
    if record is None:
        raise UsageError(f"no key {key_id} in the store {store_name(settings)} (see `officeray keys list`)")
    if not revoked:
        assert record.revoked_at is not None
        print(f"key {key_id} was revoked already, at {record.revoked_at.isoformat(timespec='seconds')}")
        return EXIT_OK
    print(f"revoked key {key_id} (tenant {record.tenant}, role {record.role.value})")
    return EXIT_OK


def cmd_keys(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``officeray keys create|list|revoke``."""
    commands = {"create": _create, "list": _list, "revoke": _revoke}
    return commands[args.keys](args, settings)
