"""The local admin key: made by ``officeray serve`` on first start, found by local commands.

* :func:`is_loopback_host`: whether a listen address reaches only this machine (pure; the hostile
  cases are in ``tests/unit/test_keyfile.py``);
* :func:`first_start_action`: what ``serve`` does about keys before it binds (pure);
* :func:`prepare_first_key`: that decision carried out against the configured store: on loopback,
  with no active key, a new ``admin`` key of tenant :data:`FIRST_KEY_TENANT` written to
  ``auth.admin_key_file`` (mode 0600 from its first byte, replaced atomically); elsewhere a refusal;
* :func:`local_api_key`: the key a command sends to a server: ``--key``, else ``$OFFICERAY_API_KEY``,
  else, only for a server on this machine (a loopback host, :func:`address_is_loopback`), the admin
  key file (with a warning when others may read it); :func:`server_api_key` also refuses (exit 2) a
  server elsewhere without a key.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Mapping
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from cluster.cli_output import ServerError, UsageError
from officeray.auth import Role, mint_key
from officeray.config import Settings
from officeray.store import SqlStore, StoreError

API_KEY_ENV = "OFFICERAY_API_KEY"
"""The environment variable local commands read a key from when ``--key`` is not given."""
FIRST_KEY_TENANT = "default"
"""The tenant of the admin key ``officeray serve`` makes on first start."""
KEY_FILE_MODE = 0o600
"""The admin key file: its owner reads and writes it, nobody else."""
KEY_DIR_MODE = 0o700
"""The folder the admin key file is created in, when ``serve`` creates it."""
LOOPBACK_NAMES = frozenset({"localhost"})
"""Host names taken as loopback (compared case-insensitively); any other name is not."""
CREATE_KEY_HINT = "officeray keys create --tenant default --role admin"


def is_loopback_host(host: str) -> bool:
    """Whether listening on ``host`` reaches only this machine: ``localhost``, ``127.0.0.0/8``,
    ``::1`` (also ``[::1]``) and IPv4-mapped loopback. Wildcards (``0.0.0.0``, ``::``, ``""``), other
    addresses and other names are not, nor is anything with a scope, a port or stray characters."""
    if not isinstance(host, str):
        return False
    if host.lower() in LOOPBACK_NAMES:
        return True
    bracketed = host.startswith("[") and host.endswith("]")
    text = host[1:-1] if bracketed else host
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    if bracketed and address.version != 6:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            return False
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped.is_loopback
    return address.is_loopback


class FirstStart(StrEnum):
    """What ``officeray serve`` does about keys before it binds (:func:`first_start_action`)."""

    READY = "ready"
    """The store has an active key: nothing to do."""
    CREATE = "create"
    """No active key, loopback: make the first admin key and write it to the key file."""
    REFUSE = "refuse"
    """No active key, reachable from elsewhere: do not start (anyone could use the API)."""


def first_start_action(active_keys: int, host: str) -> FirstStart:
    """What ``serve`` on ``host`` does when the store has ``active_keys`` active keys."""
    if active_keys > 0:
        return FirstStart.READY
    return FirstStart.CREATE if is_loopback_host(host) else FirstStart.REFUSE


def write_key_file(path: Path, key: str) -> None:
    """Write ``key`` to ``path``, readable by its owner only from the first byte, atomically: the file
    is written under a temporary name in the same folder (created 0700 when missing) and renamed."""
    path.parent.mkdir(mode=KEY_DIR_MODE, parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, KEY_FILE_MODE)  # mkstemp makes it 0600 already; say so rather than rely on it
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(f"{key}\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def store_name(settings: Settings) -> str:
    """The configured store's URL without its password (what messages show)."""
    try:
        return make_url(settings.store.url).render_as_string(hide_password=True)
    except ArgumentError:
        return "the configured store"


def open_store(settings: Settings) -> SqlStore:
    """The configured store: :class:`~cluster.cli_output.UsageError` (exit 2) for a URL that is not
    one, :class:`~cluster.cli_output.ServerError` (exit 1) when it cannot be opened."""
    try:
        return SqlStore(settings.store.url)
    except ArgumentError as exc:
        raise UsageError(f"store.url is not a database URL: {exc}") from None
    except (StoreError, OSError) as exc:
        raise ServerError(f"cannot open the store {store_name(settings)}: {exc}") from None


def _warn(message: str) -> None:
    print(f"officeray: warning: {message}", file=sys.stderr)


def read_key_file(path: Path, warn: Callable[[str], None] = _warn) -> str | None:
    """The key in ``path`` (None when the file is missing or empty); warns when group or others may
    read it."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8").strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, UnicodeDecodeError) as exc:
        warn(f"cannot read the key file {path}: {exc}")
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        warn(f"the key file {path} is readable by other users (mode {stat.filemode(mode)}): chmod 600 {path}")
    return text or None


def address_is_loopback(address: str) -> bool:
    """Whether the server URL ``address`` (``http[s]://HOST[:PORT][/...]``) names a loopback host
    (:func:`is_loopback_host`); False for anything that does not parse, has another scheme or no
    host, or has a backslash, whitespace or control character (where URL parsers disagree about the
    host)."""
    if not isinstance(address, str) or any(c == "\\" or c.isspace() or not c.isprintable() for c in address):
        return False
    try:
        parts = urlsplit(address)
        host = parts.hostname
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not host:
        return False
    return is_loopback_host(host)


def local_api_key(
    settings: Settings,
    explicit: str | None,
    environ: Mapping[str, str] | None = None,
    warn: Callable[[str], None] = _warn,
    *,
    address: str,
) -> str | None:
    """The key a command sends to the server at ``address``: ``explicit`` (``--key``), else
    ``$OFFICERAY_API_KEY``, else, when ``address`` is on this machine (:func:`address_is_loopback`),
    the one in ``auth.admin_key_file``; None when there is none. The admin key never goes to a server
    elsewhere: that one gets a key it was given."""
    if explicit:
        return explicit.strip()
    from_env = (os.environ if environ is None else environ).get(API_KEY_ENV, "").strip()
    if from_env:
        return from_env
    if not address_is_loopback(address):
        return None
    return read_key_file(settings.auth.admin_key_file, warn)


def server_api_key(
    settings: Settings,
    explicit: str | None,
    address: str,
    environ: Mapping[str, str] | None = None,
    warn: Callable[[str], None] = _warn,
) -> str | None:
    """:func:`local_api_key`, and :class:`~cluster.cli_output.UsageError` (exit 2) for a server that
    is not on this machine when no key was given. None (no key: the server answers 401) only for a
    server on this machine without an admin key file."""
    key = local_api_key(settings, explicit, environ, warn, address=address)
    if key is None and not address_is_loopback(address):
        raise UsageError(
            f"no API key for the server at {address}: pass --key KEY or set ${API_KEY_ENV} (the local "
            "admin key file is sent only to a server on this machine)"
        )
    return key


async def _prepare(settings: Settings, host: str) -> str | None:
    store = open_store(settings)
    try:
        action = first_start_action(await store.count_api_keys(), host)
        if action == FirstStart.READY:
            return None
        if action == FirstStart.REFUSE:
            raise UsageError(
                f"the store ({store_name(settings)}) has no API key yet and {host!r} is not a loopback "
                "address: anyone who reaches it could use the API. Create a key first "
                f"(`{CREATE_KEY_HINT}` with the same config) and give it to your clients, or serve on "
                "127.0.0.1"
            )
        key, record = mint_key(FIRST_KEY_TENANT, Role.ADMIN, name="first start of officeray serve")
        path = settings.auth.admin_key_file
        write_key_file(path, key)  # before the store: a key in the store that nobody holds is useless
        await store.create_api_key(record)
        return (
            f"officeray: created the first admin key ({record.key_id}, tenant {FIRST_KEY_TENANT}) and "
            f"wrote it to {path.absolute()} (mode 600); local officeray commands use it, other clients send "
            "`Authorization: Bearer <key>`"
        )
    finally:
        store.close()


def prepare_first_key(settings: Settings, host: str | None = None) -> str | None:
    """Before ``serve`` binds ``host`` (default ``serve.host``): make the first admin key when the store
    has no active key and the host is loopback (the message to print says where it is), refuse
    (:class:`~cluster.cli_output.UsageError`) when it is not; None when keys exist."""
    try:
        return asyncio.run(_prepare(settings, settings.serve.host if host is None else host))
    except StoreError as exc:
        raise ServerError(f"the store {store_name(settings)} failed: {exc}") from None
