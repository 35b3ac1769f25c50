"""Identities: API keys, their tenants and roles, and what each role may do.

A key is bound to one tenant and one :class:`Role`. The gateway turns ``Authorization: Bearer KEY``
into a :class:`Principal`; everything a route may do is decided by the pure functions here.

A key reads ``ofr_<key_id>_<secret>``: :data:`KEY_PREFIX`, a :data:`KEY_ID_CHARS`-character lowercase
hex id (not secret: it names the key in the store, in logs and as ``decided_by``), and a random
urlsafe secret. :func:`mint_key` makes one and the :class:`ApiKeyRecord` to store, which holds an
argon2id hash of the whole key, never the key; :func:`parse_key` finds the id in what a client
presents (pure, safe on any input) and :func:`verify_key` checks it against the stored record.

Verifying is deliberately slow (argon2id, :data:`ARGON2_TIME_COST` x :data:`ARGON2_MEMORY_KIB`,
tens of milliseconds): a caller that verifies on every request caches the keys it verified
(the gateway, for ``auth.cache_ttl_s``).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError
from pydantic import BaseModel, ConfigDict, Field

from officeray.contracts import utcnow


class Role(StrEnum):
    USER = "user"
    """Submits and reads its tenant's tasks."""
    APPROVER = "approver"
    """A user who also decides its tenant's approvals and reviews."""
    ADMIN = "admin"
    """Everything, every tenant: DLQ retries, key management."""


@dataclass(frozen=True)
class Principal:
    """Who a request comes from: the authenticated key's id, its tenant and its role."""

    key_id: str
    tenant: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN

    def sees_tenant(self, tenant: str) -> bool:
        """Whether this principal may see ``tenant``'s tasks (its own; an admin: every tenant)."""
        return self.is_admin or tenant == self.tenant


# -- keys -------------------------------------------------------------------------------------------

KEY_PREFIX = "ofr_"
"""What every key starts with (so a leaked key is recognisable, e.g. by secret scanners)."""
KEY_ID_CHARS = 12
"""Length of a key's id: lowercase hex, 48 random bits (unique among any realistic number of keys)."""
SECRET_BYTES = 32
"""Random bytes of a key's secret (``secrets.token_urlsafe``: 43 characters)."""
MIN_SECRET_CHARS = 32
"""Shortest secret :func:`parse_key` accepts."""
MAX_SECRET_CHARS = 128
"""Longest secret :func:`parse_key` accepts."""
MAX_KEY_CHARS = len(KEY_PREFIX) + KEY_ID_CHARS + 1 + MAX_SECRET_CHARS
"""Longest key :func:`parse_key` looks at; anything longer is refused before any other work."""
WEBHOOK_SECRET_BYTES = 32
"""Random bytes of the secret a key's webhooks are signed with (HMAC-SHA256)."""
TENANT_PATTERN = r"^[A-Za-z0-9_.-]{1,100}$"
"""A tenant name, as :attr:`~officeray.contracts.TaskRequest.tenant`."""
MAX_KEY_NAME_CHARS = 200
"""Longest free-text name of a key."""

_KEY_RE = re.compile(
    rf"{re.escape(KEY_PREFIX)}(?P<key_id>[0-9a-f]{{{KEY_ID_CHARS}}})_[A-Za-z0-9_-]{{{MIN_SECRET_CHARS},{MAX_SECRET_CHARS}}}",
    re.ASCII,
)

ARGON2_TIME_COST = 2
ARGON2_MEMORY_KIB = 19 * 1024
ARGON2_PARALLELISM = 1
"""argon2id parameters (OWASP's minimum: 2 passes over 19 MiB, one lane), about 30 ms a hash on one
core. A key's secret is 256 random bits, so no guessing attack needs more; stored hashes carry their
parameters, so changing these keeps old keys working."""

_HASHER = PasswordHasher(
    time_cost=ARGON2_TIME_COST,
    memory_cost=ARGON2_MEMORY_KIB,
    parallelism=ARGON2_PARALLELISM,
    type=Type.ID,
)


class ApiKeyRecord(BaseModel):
    """A key as the store keeps it: never the key itself, only an argon2id hash of it."""

    model_config = ConfigDict(frozen=True)

    key_id: str = Field(pattern=rf"^[0-9a-f]{{{KEY_ID_CHARS}}}$")
    tenant: str = Field(pattern=TENANT_PATTERN)
    role: Role
    key_hash: str
    """argon2id hash (PHC string, with its parameters) of the whole key."""
    webhook_secret: str
    """Signs the webhooks of this key's tasks (``X-Officeray-Signature``); stored as is, since signing
    needs it. Shown once, when the key is created."""
    created_at: datetime
    revoked_at: datetime | None = None
    """When the key was revoked; a revoked key authenticates nothing."""
    name: str | None = Field(default=None, max_length=MAX_KEY_NAME_CHARS)
    """What the key is for (free text, optional)."""

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def principal(self) -> Principal:
        """Who a request made with this key comes from."""
        return Principal(key_id=self.key_id, tenant=self.tenant, role=self.role)

    def public_view(self) -> dict[str, Any]:
        """What may be shown of the key: everything but its hash and its webhook secret."""
        return self.model_dump(mode="json", exclude={"key_hash", "webhook_secret"})


def mint_key(
    tenant: str, role: Role = Role.USER, *, name: str | None = None, now: datetime | None = None
) -> tuple[str, ApiKeyRecord]:
    """A new key: the key itself (shown once, never stored) and the record to store, with a fresh
    webhook secret. ValueError (pydantic's) for a tenant name :data:`TENANT_PATTERN` refuses."""
    key_id = secrets.token_hex(KEY_ID_CHARS // 2)
    key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(SECRET_BYTES)}"
    record = ApiKeyRecord(
        key_id=key_id,
        tenant=tenant,
        role=Role(role),
        key_hash=_HASHER.hash(key),
        webhook_secret=secrets.token_urlsafe(WEBHOOK_SECRET_BYTES),
        created_at=now or utcnow(),
        name=name,
    )
    return key, record


def parse_key(presented: object) -> str | None:
    """The key id of a well-formed key, None for anything else (any type, any length, any characters).

    Checks only the form: whether the key is genuine is :func:`verify_key`'s question."""
    if not isinstance(presented, str) or len(presented) > MAX_KEY_CHARS:
        return None
    match = _KEY_RE.fullmatch(presented)
    return match.group("key_id") if match else None


def verify_key(presented: object, record: ApiKeyRecord) -> bool:
    """Whether ``presented`` is the key ``record`` was minted for, and the key is not revoked.

    Slow on purpose for a well-formed key (one argon2id verification); at once False otherwise."""
    if not record.active or parse_key(presented) != record.key_id:
        return False
    assert isinstance(presented, str)  # parse_key answered an id: a str
    try:
        return _HASHER.verify(record.key_hash, presented)
    except (VerificationError, InvalidHashError):
        return False


# -- what each role may do --------------------------------------------------------------------------


class Action(StrEnum):
    """What a request asks to do, as the permission table :func:`allowed` knows it."""

    SUBMIT = "submit"
    """Submit a task (or a ready plan)."""
    READ = "read"
    """Read a task: its record, events, trace, logs, webhook deliveries; list tasks."""
    CANCEL = "cancel"
    FEEDBACK = "feedback"
    DECIDE_APPROVAL = "decide_approval"
    """Approve or reject a step that waits for a person."""
    DECIDE_REVIEW = "decide_review"
    """Accept, reject or send back results a task escalated to a person (``waiting_review``)."""
    DLQ_READ = "dlq_read"
    DLQ_RETRY = "dlq_retry"
    USAGE_READ = "usage_read"
    """Read a tenant's token and cost totals."""
    MANAGE_KEYS = "manage_keys"
    CHAT = "chat"
    """Call the chat-completions route (billed to the key's tenant)."""


_USER_ACTIONS = frozenset(
    {
        Action.SUBMIT,
        Action.READ,
        Action.CANCEL,
        Action.FEEDBACK,
        Action.CHAT,
        Action.USAGE_READ,
        Action.DLQ_READ,
    }
)

ROLE_ACTIONS: dict[Role, frozenset[Action]] = {
    Role.USER: _USER_ACTIONS,
    Role.APPROVER: _USER_ACTIONS | {Action.DECIDE_APPROVAL, Action.DECIDE_REVIEW},
    Role.ADMIN: frozenset(Action),
}
"""What each role may do. A user and an approver only within their own tenant; an admin in every
tenant (:meth:`Principal.sees_tenant`)."""


def allowed(principal: Principal, action: Action, tenant: str) -> bool:
    """Whether ``principal`` may do ``action`` on ``tenant``'s tasks (or data)."""
    try:
        actions = ROLE_ACTIONS[Role(principal.role)]
    except ValueError:  # not a role at all
        return False
    return action in actions and principal.sees_tenant(tenant)
