"""The gateway's key check (serving/security.py): parsing the Authorization header against hostile
input, the per-replica cache of verified keys (fake clock), the 401 every refused key gets, and the
pure tenant rules of the task routes."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Annotated

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from officeray.auth import ApiKeyRecord, Principal, Role, mint_key, verify_key
from officeray.contracts import TaskRequest
from officeray.testing import InMemoryStore
from serving.gateway import listed_tenant, submission_tenant
from serving.security import (
    FAILURE_WINDOW_S,
    MAX_AUTHORIZATION_CHARS,
    MAX_FAILURES_PER_KEY_ID,
    NEGATIVE_CACHE_TTL_S,
    UNAUTHORIZED_DETAIL,
    AccessError,
    FailureCounter,
    KeyVerifier,
    authenticated,
    bearer_token,
    install_verifier,
)
from serving.testing import FakeClock

TTL_S = 30.0

KEY = "ofr_0123456789ab_" + "A" * 43


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (f"Bearer {KEY}", KEY),
        (f"bearer {KEY}", KEY),  # the scheme is case-insensitive
        (f"  BEARER   {KEY}  ", KEY),
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer ", None),
        (f"Basic {KEY}", None),
        (f"Token {KEY}", None),
        (KEY, None),  # no scheme
        (f"Bearer {KEY} extra", None),  # two tokens
        (f"Bearer {KEY}\tx", None),
        (f"Bearer\t{KEY}", None),
        ("Bearer " + "a" * MAX_AUTHORIZATION_CHARS, None),  # too long: not even looked at
        (b"Bearer x", None),  # not a str
        (42, None),
    ],
)
def test_bearer_token_parses_only_a_well_formed_bearer_header(header: object, token: str | None) -> None:
    assert bearer_token(header) == token


class CountingVerify:
    """``verify_key`` that counts its (slow) calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, presented: str, record: ApiKeyRecord) -> bool:
        self.calls += 1
        return verify_key(presented, record)


class CountingStore(InMemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        self.lookups += 1
        return await super().get_api_key(key_id)


@pytest.fixture
def store() -> CountingStore:
    return CountingStore()


async def _key(
    store: InMemoryStore, tenant: str = "acme", role: Role = Role.USER
) -> tuple[str, ApiKeyRecord]:
    key, record = mint_key(tenant, role)
    assert await store.create_api_key(record)
    return key, record


async def test_a_verified_key_is_remembered_for_the_ttl(store: CountingStore) -> None:
    clock, verify = FakeClock(), CountingVerify()
    verifier = KeyVerifier(store, TTL_S, clock=clock, verify=verify)
    key, record = await _key(store, role=Role.APPROVER)

    principal = await verifier.principal(key)
    assert principal == Principal(key_id=record.key_id, tenant="acme", role=Role.APPROVER)
    clock.advance(TTL_S - 1)
    assert await verifier.principal(key) == principal
    assert verify.calls == 1  # argon2 once per TTL
    clock.advance(1)
    assert await verifier.principal(key) == principal
    assert verify.calls == 2


async def test_a_revoked_key_stops_working_within_the_ttl(store: CountingStore) -> None:
    clock = FakeClock()
    verifier = KeyVerifier(store, TTL_S, clock=clock)
    key, record = await _key(store)
    assert await verifier.principal(key) is not None
    assert await store.revoke_api_key(record.key_id)
    clock.advance(TTL_S)
    assert await verifier.principal(key) is None


async def test_a_refused_key_is_remembered_briefly(store: CountingStore) -> None:
    clock, verify = FakeClock(), CountingVerify()
    verifier = KeyVerifier(store, TTL_S, clock=clock, verify=verify)
    key, record = await _key(store)
    wrong = f"ofr_{record.key_id}_" + "B" * 43  # the id of a real key, another secret

    assert await verifier.principal(wrong) is None
    assert await verifier.principal(wrong) is None
    assert verify.calls == 1
    clock.advance(NEGATIVE_CACHE_TTL_S)
    assert await verifier.principal(wrong) is None
    assert verify.calls == 2


async def test_a_key_created_after_a_refusal_works_once_the_short_memory_passes(store: CountingStore) -> None:
    clock = FakeClock()
    verifier = KeyVerifier(store, TTL_S, clock=clock)
    key, record = mint_key("acme")
    assert await verifier.principal(key) is None  # not stored yet
    await store.create_api_key(record)
    clock.advance(NEGATIVE_CACHE_TTL_S)
    assert await verifier.principal(key) is not None


@pytest.mark.parametrize(
    "presented", [None, "", "x", "ofr_", "ofr_XYZ_" + "a" * 43, KEY + "\n", "ofr_" + "a" * 5000]
)
async def test_a_malformed_key_never_reaches_the_store(store: CountingStore, presented: str | None) -> None:
    verifier = KeyVerifier(store, TTL_S, clock=FakeClock())
    assert await verifier.principal(presented) is None
    assert store.lookups == 0


async def test_the_memory_is_bounded_oldest_first(store: CountingStore) -> None:
    clock, verify = FakeClock(), CountingVerify()
    verifier = KeyVerifier(store, TTL_S, clock=clock, verify=verify, max_entries=2)
    keys = [(await _key(store))[0] for _ in range(3)]
    for key in keys:
        assert await verifier.principal(key) is not None
    assert verify.calls == 3
    assert await verifier.principal(keys[2]) is not None  # still remembered
    assert verify.calls == 3
    assert await verifier.principal(keys[0]) is not None  # forgotten: verified again
    assert verify.calls == 4


async def test_a_zero_ttl_remembers_nothing(store: CountingStore) -> None:
    verify = CountingVerify()
    verifier = KeyVerifier(store, 0.0, clock=FakeClock(), verify=verify)
    key, _ = await _key(store)
    for _ in range(2):
        assert await verifier.principal(key) is not None
    assert verify.calls == 2


def _other_secret(record: ApiKeyRecord, n: int) -> str:
    """A well-formed key with the id of ``record`` and the ``n``-th made-up secret (never cached)."""
    return f"ofr_{record.key_id}_{n:043d}"


async def test_repeated_wrong_secrets_of_one_id_stop_costing_argon2_until_the_window_passes(
    store: CountingStore,
) -> None:
    clock, verify = FakeClock(), CountingVerify()
    verifier = KeyVerifier(store, TTL_S, clock=clock, verify=verify)
    key, record = await _key(store)
    other_key, _ = await _key(store)

    for n in range(MAX_FAILURES_PER_KEY_ID + 20):  # a new secret each time: the answer cache never hits
        assert await verifier.principal(_other_secret(record, n)) is None
    assert verify.calls == MAX_FAILURES_PER_KEY_ID  # the rest were refused without argon2
    assert await verifier.principal(key) is None  # the genuine key too: it was never verified here
    assert await verifier.principal(other_key) is not None  # other ids are not affected
    assert verify.calls == MAX_FAILURES_PER_KEY_ID + 1

    clock.advance(FAILURE_WINDOW_S)
    assert await verifier.principal(key) is not None  # the window passed: verified again
    assert verify.calls == MAX_FAILURES_PER_KEY_ID + 2


async def test_a_key_verified_before_a_lockout_keeps_working_through_it(store: CountingStore) -> None:
    clock, verify = FakeClock(), CountingVerify()
    verifier = KeyVerifier(store, TTL_S, clock=clock, verify=verify)
    key, record = await _key(store)
    assert await verifier.principal(key) is not None
    clock.advance(TTL_S)  # its cached answer expired
    for n in range(MAX_FAILURES_PER_KEY_ID + 5):
        assert await verifier.principal(_other_secret(record, n)) is None
    calls = verify.calls
    assert await verifier.principal(key) is not None
    assert verify.calls == calls  # recognised without argon2
    await store.revoke_api_key(record.key_id)
    clock.advance(TTL_S)
    assert await verifier.principal(key) is None  # revocation still counts


@pytest.mark.parametrize(
    ("failures_at", "blocked_at"),
    [
        ([], [(0.0, False)]),
        ([0.0] * (MAX_FAILURES_PER_KEY_ID - 1), [(0.0, False)]),
        (
            [0.0] * MAX_FAILURES_PER_KEY_ID,
            [(0.0, True), (FAILURE_WINDOW_S - 0.1, True), (FAILURE_WINDOW_S, False)],
        ),
        # the window opens at the first failure: failures spread over more than one window do not add up
        ([i * FAILURE_WINDOW_S / 5 for i in range(MAX_FAILURES_PER_KEY_ID)], [(FAILURE_WINDOW_S * 2, False)]),
    ],
)
def test_failure_counter_blocks_past_the_limit_within_the_window(
    failures_at: list[float], blocked_at: list[tuple[float, bool]]
) -> None:
    clock = FakeClock()
    counter = FailureCounter(clock)
    for at in failures_at:
        clock.advance(at - clock())
        counter.record("0123456789ab")
    for at, blocked in blocked_at:
        clock.advance(max(0.0, at - clock()))
        assert counter.blocked("0123456789ab") is blocked
    assert not counter.blocked("ba9876543210")


def test_failure_counter_forgets_the_oldest_id_past_its_bound() -> None:
    counter = FailureCounter(FakeClock(), max_failures=1, max_ids=2)
    for key_id in ("a" * 12, "b" * 12, "c" * 12):
        counter.record(key_id)
    assert [counter.blocked(k) for k in ("a" * 12, "b" * 12, "c" * 12)] == [False, True, True]


async def test_argon2_verifications_run_in_threads_at_most_max_at_once(store: CountingStore) -> None:
    running, most, lock, loop_thread = 0, 0, threading.Lock(), threading.get_ident()

    def slow_verify(presented: str, record: ApiKeyRecord) -> bool:
        nonlocal running, most
        assert threading.get_ident() != loop_thread  # not on the event loop
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return True

    verifier = KeyVerifier(store, TTL_S, clock=FakeClock(), verify=slow_verify, max_verifications=2)
    keys = [(await _key(store))[0] for _ in range(6)]
    answers = await asyncio.gather(*(verifier.principal(key) for key in keys))
    assert all(answer is not None for answer in answers)
    assert most == 2


# -- the dependency ---------------------------------------------------------------------------------


@pytest.fixture
def app_client(store: CountingStore) -> Iterator[TestClient]:
    app = FastAPI()

    @app.get("/who")
    async def who(principal: Annotated[Principal, Depends(authenticated)]) -> dict[str, str]:
        return {"key_id": principal.key_id, "tenant": principal.tenant, "role": principal.role.value}

    install_verifier(KeyVerifier(store, TTL_S))
    try:
        yield TestClient(app)
    finally:
        install_verifier(None)


async def test_every_refused_key_gets_the_same_401(store: CountingStore, app_client: TestClient) -> None:
    key, record = await _key(store, "acme", Role.ADMIN)
    revoked_key, revoked = await _key(store)
    await store.revoke_api_key(revoked.key_id)
    ok = app_client.get("/who", headers={"Authorization": f"Bearer {key}"})
    assert ok.status_code == 200
    assert ok.json() == {"key_id": record.key_id, "tenant": "acme", "role": "admin"}

    refused = [
        {},
        {"Authorization": ""},
        {"Authorization": f"Basic {key}"},
        {"Authorization": "Bearer nonsense"},
        {"Authorization": f"Bearer ofr_{'f' * 12}_{'C' * 43}"},  # unknown id
        {"Authorization": f"Bearer ofr_{record.key_id}_{'C' * 43}"},  # wrong secret
        {"Authorization": f"Bearer {revoked_key}"},
    ]
    for headers in refused:
        answer = app_client.get("/who", headers=headers)
        assert answer.status_code == 401, headers
        assert answer.headers["www-authenticate"] == "Bearer"
        assert answer.json() == {"detail": UNAUTHORIZED_DETAIL}  # plain FastAPI: no code handler here


# -- tenant rules of the task routes ----------------------------------------------------------------

USER = Principal(key_id="u" * 12, tenant="acme", role=Role.USER)
ADMIN = Principal(key_id="a" * 12, tenant="ops", role=Role.ADMIN)


def test_a_submission_is_for_the_key_tenant_and_only_an_admin_names_another() -> None:
    assert submission_tenant(TaskRequest(description="d"), USER) == "acme"
    assert submission_tenant(TaskRequest(description="d", tenant="acme"), USER) == "acme"
    with pytest.raises(AccessError) as refused:
        submission_tenant(TaskRequest(description="d", tenant="beta"), USER)
    assert (refused.value.status_code, refused.value.code) == (403, "forbidden")
    # "default" written out is another tenant too: only a body without "tenant" means the key's
    with pytest.raises(AccessError):
        submission_tenant(TaskRequest(description="d", tenant="default"), USER)
    assert submission_tenant(TaskRequest(description="d"), ADMIN) == "ops"
    assert submission_tenant(TaskRequest(description="d", tenant="beta"), ADMIN) == "beta"


def test_lists_show_the_key_tenant_and_an_admin_chooses() -> None:
    assert listed_tenant(None, USER, "tasks") == "acme"
    assert listed_tenant("acme", USER, "tasks") == "acme"
    with pytest.raises(AccessError) as refused:
        listed_tenant("beta", USER, "tasks")
    assert refused.value.status_code == 403
    assert listed_tenant(None, ADMIN, "tasks") is None  # every tenant
    assert listed_tenant("beta", ADMIN, "tasks") == "beta"
