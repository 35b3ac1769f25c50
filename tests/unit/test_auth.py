"""API keys and the permission table (officeray.auth), against tables of hostile input."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from officeray.auth import (
    KEY_ID_CHARS,
    KEY_PREFIX,
    MAX_KEY_CHARS,
    Action,
    ApiKeyRecord,
    Principal,
    Role,
    allowed,
    mint_key,
    parse_key,
    verify_key,
)

NOW = datetime(2030, 1, 1, tzinfo=UTC)
KEY, RECORD = mint_key("acme", Role.USER, now=NOW)
"""One key for the whole module: minting hashes with argon2id, which is slow on purpose."""
KEY_ID = RECORD.key_id
SECRET = KEY.split("_", 2)[2]


# -- minting ------------------------------------------------------------------------------------------


def test_a_minted_key_has_the_agreed_form_and_its_record_holds_no_key() -> None:
    assert re.fullmatch(r"ofr_[0-9a-f]{12}_[A-Za-z0-9_-]{32,}", KEY)
    assert KEY.startswith(f"{KEY_PREFIX}{KEY_ID}_")
    assert (RECORD.tenant, RECORD.role, RECORD.created_at, RECORD.revoked_at) == (
        "acme",
        Role.USER,
        NOW,
        None,
    )
    assert RECORD.key_hash.startswith("$argon2id$")
    assert KEY not in RECORD.model_dump_json() and SECRET not in RECORD.model_dump_json()
    assert len(RECORD.webhook_secret) >= 32 and RECORD.webhook_secret not in KEY
    assert RECORD.principal() == Principal(KEY_ID, "acme", Role.USER)


def test_two_keys_share_nothing_secret() -> None:
    key, record = mint_key("acme", Role.USER)
    assert key != KEY and record.key_id != KEY_ID
    assert record.key_hash != RECORD.key_hash and record.webhook_secret != RECORD.webhook_secret
    assert not verify_key(key, RECORD) and not verify_key(KEY, record)


def test_the_public_view_shows_neither_the_hash_nor_the_webhook_secret() -> None:
    view = RECORD.public_view()
    assert set(view) == {"key_id", "tenant", "role", "created_at", "revoked_at", "name"}
    assert view["role"] == "user"


@pytest.mark.parametrize("tenant", ["", "a b", "ünïcode", "x" * 101, "a/b", "a\x00"])
def test_a_key_for_a_tenant_name_that_requests_refuse_is_not_minted(tenant: str) -> None:
    with pytest.raises(ValidationError):
        mint_key(tenant, Role.USER)


# -- parsing and verifying ----------------------------------------------------------------------------

HOSTILE_KEYS = {
    "empty": "",
    "prefix only": KEY_PREFIX,
    "no secret": f"{KEY_PREFIX}{KEY_ID}_",
    # (a secret may start with "_": one in 64 keys; without it there is no separator at all)
    "no separator": f"{KEY_PREFIX}{KEY_ID}{SECRET.lstrip('_')}",
    "wrong prefix": f"ofx_{KEY_ID}_{SECRET}",
    "uppercase prefix": f"OFR_{KEY_ID}_{SECRET}",
    "no prefix": f"{KEY_ID}_{SECRET}",
    "uppercase id": f"{KEY_PREFIX}{KEY_ID.upper()}_{SECRET}" if KEY_ID.upper() != KEY_ID else "OFR_X",
    "short id": f"{KEY_PREFIX}{KEY_ID[:-1]}_{SECRET}",
    "long id": f"{KEY_PREFIX}{KEY_ID}0_{SECRET}",
    "non-hex id": f"{KEY_PREFIX}{'g' * KEY_ID_CHARS}_{SECRET}",
    "extra underscore before the id": f"{KEY_PREFIX}_{KEY_ID}_{SECRET}",
    "extra underscore after the prefix": f"ofr__{KEY_ID}_{SECRET}",
    "short secret": f"{KEY_PREFIX}{KEY_ID}_{'a' * 31}",
    "huge": f"{KEY_PREFIX}{KEY_ID}_{'a' * 10_000}",
    "one over the longest": f"{KEY_PREFIX}{KEY_ID}_".ljust(MAX_KEY_CHARS + 1, "a"),
    "NUL inside": f"{KEY_PREFIX}{KEY_ID}_{SECRET[:10]}\x00{SECRET[10:]}",
    "NUL at the end": f"{KEY}\x00",
    "trailing newline": f"{KEY}\n",
    "leading space": f" {KEY}",
    "trailing space": f"{KEY} ",
    "Bearer left in": f"Bearer {KEY}",
    "unicode digits in the id": f"{KEY_PREFIX}{'١' * KEY_ID_CHARS}_{SECRET}",
    "unicode letters in the secret": f"{KEY_PREFIX}{KEY_ID}_{'é' * 40}",
    "fullwidth prefix": f"ｏｆｒ_{KEY_ID}_{SECRET}",
    "base64 padding": f"{KEY}==",
    "slash and plus": f"{KEY_PREFIX}{KEY_ID}_{'a+b/' * 10}",
    "two keys": f"{KEY},{KEY}",
    "SQL": f"{KEY_PREFIX}{KEY_ID}_' OR '1'='1' --aaaaaaaaaaaaaaaaaaaaaa",
}


@pytest.mark.parametrize("presented", HOSTILE_KEYS.values(), ids=HOSTILE_KEYS.keys())
def test_a_malformed_key_has_no_id_and_never_verifies(presented: str) -> None:
    assert parse_key(presented) is None
    assert not verify_key(presented, RECORD)


@pytest.mark.parametrize("presented", [None, 42, b"ofr_", ["ofr_"], {"key": KEY}, KEY.encode()])
def test_what_is_not_a_string_has_no_id(presented: object) -> None:
    assert parse_key(presented) is None
    assert not verify_key(presented, RECORD)


def test_a_well_formed_key_names_its_id_and_underscores_and_dashes_in_the_secret_are_fine() -> None:
    assert parse_key(KEY) == KEY_ID
    assert parse_key(f"{KEY_PREFIX}{KEY_ID}_{'_-' * 20}") == KEY_ID  # urlsafe secrets hold both
    assert parse_key(f"{KEY_PREFIX}{KEY_ID}_".ljust(MAX_KEY_CHARS, "a")) == KEY_ID  # the longest


def test_only_the_genuine_key_verifies() -> None:
    assert verify_key(KEY, RECORD)
    tampered = f"{KEY_PREFIX}{KEY_ID}_{SECRET[:-1]}{'b' if SECRET[-1] != 'b' else 'c'}"
    assert parse_key(tampered) == KEY_ID and not verify_key(tampered, RECORD)
    assert not verify_key(f"{KEY_PREFIX}{KEY_ID}_{'a' * 43}", RECORD)


def test_the_same_secret_under_another_id_does_not_verify() -> None:
    other_id = "0" * KEY_ID_CHARS if KEY_ID != "0" * KEY_ID_CHARS else "1" * KEY_ID_CHARS
    assert not verify_key(f"{KEY_PREFIX}{other_id}_{SECRET}", RECORD)


def test_a_revoked_key_does_not_verify() -> None:
    revoked = RECORD.model_copy(update={"revoked_at": NOW})
    assert not revoked.active and not verify_key(KEY, revoked)


@pytest.mark.parametrize("key_hash", ["", "not a hash", "$argon2id$v=19$m=1,t=1,p=1$AAAA$AAAA", "$2b$12$x"])
def test_a_damaged_stored_hash_verifies_nothing(key_hash: str) -> None:
    assert not verify_key(KEY, RECORD.model_copy(update={"key_hash": key_hash}))


@pytest.mark.parametrize(
    "fields",
    [
        {"key_id": KEY_ID.upper() + "A"},
        {"key_id": "short"},
        {"tenant": ""},
        {"role": "root"},
        {"name": "n" * 201},
    ],
)
def test_a_record_with_bad_fields_is_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ApiKeyRecord.model_validate({**RECORD.model_dump(), **fields})


# -- the permission table -----------------------------------------------------------------------------

USER_ACTIONS = {
    Action.SUBMIT,
    Action.READ,
    Action.CANCEL,
    Action.FEEDBACK,
    Action.CHAT,
    Action.USAGE_READ,
    Action.DLQ_READ,
}
EXPECTED = {
    Role.USER: USER_ACTIONS,
    Role.APPROVER: USER_ACTIONS | {Action.DECIDE_APPROVAL, Action.DECIDE_REVIEW},
    Role.ADMIN: set(Action),
}


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("action", list(Action))
def test_every_role_and_action_in_its_own_tenant(role: Role, action: Action) -> None:
    assert allowed(Principal("k", "acme", role), action, "acme") == (action in EXPECTED[role])


OTHER_TENANTS = ["globex", "", "ACME", "acme ", " acme", "acme\x00", "*", "acme,globex", "default"]


@pytest.mark.parametrize("role", [Role.USER, Role.APPROVER])
@pytest.mark.parametrize("action", list(Action))
@pytest.mark.parametrize("tenant", OTHER_TENANTS)
def test_a_user_or_approver_may_do_nothing_in_another_tenant(role: Role, action: Action, tenant: str) -> None:
    assert not allowed(Principal("k", "acme", role), action, tenant)


@pytest.mark.parametrize("action", list(Action))
@pytest.mark.parametrize("tenant", OTHER_TENANTS)
def test_an_admin_may_do_everything_in_every_tenant(action: Action, tenant: str) -> None:
    assert allowed(Principal("k", "acme", Role.ADMIN), action, tenant)


@pytest.mark.parametrize("role", ["root", "", "ADMIN", "Admin", None])
def test_a_principal_with_an_unknown_role_may_do_nothing(role: object) -> None:
    principal = Principal("k", "acme", role)  # type: ignore[arg-type]
    assert not any(allowed(principal, action, "acme") for action in Action)


def test_an_unknown_action_is_refused_even_for_an_admin() -> None:
    assert not allowed(Principal("k", "acme", Role.ADMIN), "delete_everything", "acme")  # type: ignore[arg-type]
