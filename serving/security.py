"""Who a request comes from: ``Authorization: Bearer KEY`` turned into a :class:`~officeray.auth.Principal`.

Every route of the gateway but ``/healthz`` (and the OpenAPI documents) takes
``principal: Annotated[Principal, Depends(authenticated)]``. A request without a key, or with a key
that is malformed, unknown, revoked or wrong, answers 401 ``{"detail": "a valid API key is required
...", "code": "unauthorized"}`` with ``WWW-Authenticate: Bearer``: one message for every case, so
the answer tells nothing about which keys exist.

Verifying a key is slow on purpose (argon2id, :func:`officeray.auth.verify_key`), so each gateway
replica keeps a :class:`KeyVerifier` that remembers its answers, keyed by the sha256 of the presented
key (the key itself is never kept): a verified key for ``auth.cache_ttl_s`` (a revoked key stops
working within that time), a refused one for at most :data:`NEGATIVE_CACHE_TTL_S` (a key created a
moment later works at once), at most :data:`KEY_CACHE_MAX_ENTRIES` answers (the oldest go first).

A well-formed key whose id exists costs one argon2 verification, whatever its secret, so a replica
bounds that work: at most :data:`MAX_CONCURRENT_VERIFICATIONS` run at once (the others wait their
turn), and past :data:`MAX_FAILURES_PER_KEY_ID` failed verifications of one key id within
:data:`FAILURE_WINDOW_S` that id's keys are refused at once, without argon2, until the window passes
(:class:`FailureCounter`). The key this replica last verified for that id still works then: it is
recognised by its sha256, and its record's revocation is still looked up.

The replica installs its verifier with :func:`install_verifier` (the dependency is a module-level
function: Serve's ingress copies the app, not this module's globals).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from fastapi import HTTPException, Request

from officeray.auth import Action, ApiKeyRecord, Principal, allowed, parse_key, verify_key

BEARER_SCHEME = "bearer"
"""The ``Authorization`` scheme of an API key (compared without case, as RFC 9110 says)."""

MAX_AUTHORIZATION_CHARS = 1024
"""Longest ``Authorization`` header looked at; a longer one is refused before any other work."""

KEY_CACHE_MAX_ENTRIES = 10_000
"""Most verification answers a replica remembers; past it the oldest answer is forgotten."""

NEGATIVE_CACHE_TTL_S = 2.0
"""Longest time a refused key is refused without asking the store again (bounded by
``auth.cache_ttl_s``): repeated bad keys cost one argon2 verification, a new key works at once."""

MAX_CONCURRENT_VERIFICATIONS = 4
"""Most argon2 verifications one replica runs at once (each takes a core and 19 MiB for about 30 ms);
further requests wait for a turn rather than take every worker thread and the replica's memory."""

MAX_FAILURES_PER_KEY_ID = 10
"""Failed verifications of one key id a replica runs per :data:`FAILURE_WINDOW_S`; past them, keys
with that id are refused without argon2 until the window passes."""

FAILURE_WINDOW_S = 60.0
"""The window :data:`MAX_FAILURES_PER_KEY_ID` counts in, from the first failure of the id."""

MAX_TRACKED_KEY_IDS = 10_000
"""Most key ids a replica counts failures of; past it the id counted longest ago is forgotten."""

UNAUTHORIZED_DETAIL = "a valid API key is required: send 'Authorization: Bearer <key>'"
"""The one message of every 401: it does not say whether the key was missing, unknown or wrong."""

FORBIDDEN_CODE = "forbidden"


class KeyStore(Protocol):
    """The part of the store a :class:`KeyVerifier` reads."""

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None: ...


def bearer_token(header: object) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header; None for anything else (no header,
    another scheme, no token, spaces inside it, a header over :data:`MAX_AUTHORIZATION_CHARS`)."""
    if not isinstance(header, str) or len(header) > MAX_AUTHORIZATION_CHARS:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != BEARER_SCHEME or not token or any(c.isspace() for c in token):
        return None
    return token


def key_digest(presented: str) -> str:
    """What the cache keys an answer by: the sha256 of the presented key (never the key itself)."""
    return hashlib.sha256(presented.encode("utf-8", "surrogatepass")).hexdigest()


class FailureCounter:
    """Failed verifications per key id in a fixed window that opens at the id's first failure:
    :meth:`blocked` once ``max_failures`` failed within ``window_s``, until the window passes. At
    most ``max_ids`` ids are counted (the one counted longest ago is forgotten first)."""

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        max_failures: int = MAX_FAILURES_PER_KEY_ID,
        window_s: float = FAILURE_WINDOW_S,
        max_ids: int = MAX_TRACKED_KEY_IDS,
    ) -> None:
        self.clock = clock
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_ids = max_ids
        self._failures: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def _current(self, key_id: str) -> tuple[float, int] | None:
        entry = self._failures.get(key_id)
        if entry is not None and self.clock() - entry[0] >= self.window_s:
            del self._failures[key_id]
            return None
        return entry

    def blocked(self, key_id: str) -> bool:
        """Whether keys with this id are refused without a verification now."""
        entry = self._current(key_id)
        return entry is not None and entry[1] >= self.max_failures

    def record(self, key_id: str) -> None:
        """Count one failed verification of ``key_id``."""
        entry = self._current(key_id)
        started, failures = (self.clock(), 0) if entry is None else entry
        self._failures[key_id] = (started, failures + 1)
        self._failures.move_to_end(key_id)
        while len(self._failures) > self.max_ids:
            self._failures.popitem(last=False)


class KeyVerifier:
    """Keys to principals, with a bounded, expiring memory of the answers and bounded argon2 work
    (see the module docstring).

    ``clock`` is a monotonic clock in seconds (``time.monotonic``; tests pass a fake one). ``verify``
    checks a presented key against its stored record (:func:`officeray.auth.verify_key`; it runs in
    a worker thread, since it is slow, at most ``max_verifications`` at once)."""

    def __init__(
        self,
        store: KeyStore,
        ttl_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        verify: Callable[[str, ApiKeyRecord], bool] = verify_key,
        max_entries: int = KEY_CACHE_MAX_ENTRIES,
        max_verifications: int = MAX_CONCURRENT_VERIFICATIONS,
        failures: FailureCounter | None = None,
    ) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.clock = clock
        self.verify = verify
        self.max_entries = max_entries
        self.failures = FailureCounter(clock) if failures is None else failures
        self._answers: OrderedDict[str, tuple[float, Principal | None]] = OrderedDict()
        self._verified: OrderedDict[str, str] = OrderedDict()
        """Key id -> digest of the key verified for it last (how a verified key passes a lockout)."""
        self._verifications = asyncio.Semaphore(max_verifications)

    async def principal(self, presented: str | None) -> Principal | None:
        """The principal of a genuine, active key; None for anything else."""
        if presented is None or parse_key(presented) is None:
            return None  # malformed: refused without a lookup, and not remembered
        digest = key_digest(presented)
        now = self.clock()
        cached = self._answers.get(digest)
        if cached is not None:
            expires_at, answer = cached
            if now < expires_at:
                return answer
            del self._answers[digest]
        answer = await self._look_up(presented, digest)
        ttl = self.ttl_s if answer is not None else min(self.ttl_s, NEGATIVE_CACHE_TTL_S)
        if ttl > 0:
            self._remember(digest, now + ttl, answer)
        return answer

    async def _look_up(self, presented: str, digest: str) -> Principal | None:
        key_id = parse_key(presented)
        record = None if key_id is None else await self.store.get_api_key(key_id)
        if key_id is None or record is None or record.revoked_at is not None:
            return None
        if self.failures.blocked(key_id):
            return self._through_lockout(record, digest)
        async with self._verifications:
            if self.failures.blocked(key_id):  # failures counted while this request waited its turn
                return self._through_lockout(record, digest)
            genuine = await asyncio.to_thread(self.verify, presented, record)
        if not genuine:
            self.failures.record(key_id)
            return None
        self._verified[key_id] = digest
        self._verified.move_to_end(key_id)
        while len(self._verified) > self.max_entries:
            self._verified.popitem(last=False)
        return record.principal()

    def _through_lockout(self, record: ApiKeyRecord, digest: str) -> Principal | None:
        """During a lockout of the record's id: its principal for the key last verified here for it
        (recognised by its digest, no argon2), None for any other key."""
        return record.principal() if self._verified.get(record.key_id) == digest else None

    def _remember(self, digest: str, expires_at: float, answer: Principal | None) -> None:
        self._answers[digest] = (expires_at, answer)
        self._answers.move_to_end(digest)
        while len(self._answers) > self.max_entries:
            self._answers.popitem(last=False)

    def forget(self) -> None:
        """Forget every remembered answer (the next request of each key asks the store)."""
        self._answers.clear()
        self._verified.clear()


_verifier: KeyVerifier | None = None


def install_verifier(verifier: KeyVerifier | None) -> None:
    """Make ``verifier`` the one :func:`authenticated` uses in this process (None: refuse every key)."""
    global _verifier
    _verifier = verifier


class AccessError(HTTPException):
    """A 401 or 403 with its machine-readable ``code`` (what the gateway's error handler answers)."""

    def __init__(
        self, status_code: int, detail: str, code: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status_code=status_code, detail=detail, headers=headers)
        self.code = code


def unauthorized() -> AccessError:
    """The 401 of every missing or refused key (``code: unauthorized``, ``WWW-Authenticate: Bearer``)."""
    return AccessError(401, UNAUTHORIZED_DETAIL, "unauthorized", headers={"WWW-Authenticate": "Bearer"})


def forbidden(detail: str) -> AccessError:
    """A 403 (``code: forbidden``): the key is genuine but its role may not do this."""
    return AccessError(403, detail, FORBIDDEN_CODE)


async def authenticated(request: Request) -> Principal:
    """FastAPI dependency: the request's principal, or 401 (see the module docstring)."""
    token = bearer_token(request.headers.get("authorization"))
    principal = None if _verifier is None or token is None else await _verifier.principal(token)
    if principal is None:
        raise unauthorized()
    return principal


def require(principal: Principal, action: Action, tenant: str) -> None:
    """403 unless ``principal`` may do ``action`` on ``tenant``'s data (:func:`officeray.auth.allowed`).

    For one task, a caller first answers 404 when the task is not the principal's tenant's (no
    existence leak); this check is for what the role may do."""
    if not allowed(principal, action, tenant):
        raise forbidden(f"the key's role ({principal.role}) may not {action.value.replace('_', ' ')} here")
