"""``officeray keys create|list|revoke`` against a SQLite store in a temporary folder (no server)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from cluster import cli
from cluster.cli_keys import shown_revoke_argument
from officeray.auth import ApiKeyRecord, Role, parse_key, verify_key
from officeray.store import SqlStore


@pytest.fixture
def store_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The store the commands write to, through the environment as a deployment would set it."""
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    monkeypatch.delenv("OFFICERAY_CONFIG", raising=False)
    monkeypatch.setenv("OFFICERAY_STORE__URL", url)
    return url


def stored(url: str, key_id: str) -> ApiKeyRecord | None:
    store = SqlStore(url)
    try:
        return asyncio.run(store.get_api_key(key_id))
    finally:
        store.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def create(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code, out, err = run(capsys, "keys", "create", "--json", *argv)
    assert (code, err) == (0, "")
    created: dict[str, Any] = json.loads(out)
    return created


def test_create_prints_a_working_key_once_and_stores_only_its_hash(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    created = create(capsys, "--tenant", "acme", "--role", "approver")
    assert set(created) == {"key_id", "key", "tenant", "role", "webhook_secret", "created_at"}
    assert (created["tenant"], created["role"]) == ("acme", "approver")
    assert parse_key(created["key"]) == created["key_id"]
    record = stored(store_url, created["key_id"])
    assert record is not None and verify_key(created["key"], record)
    assert record.webhook_secret == created["webhook_secret"]
    assert created["key"] not in record.model_dump_json()


def test_create_without_json_shows_the_key_and_the_webhook_secret_and_defaults_to_user(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "keys", "create", "--tenant", "acme")
    assert code == 0
    fields = dict(
        line.split(":", 1) for line in out.splitlines() if line.startswith(("key", "role", "webhook"))
    )
    key, key_id = fields["key"].strip(), fields["key_id"].strip()
    assert fields["role"].strip() == "user" and fields["webhook_secret"].strip()
    record = stored(store_url, key_id)
    assert record is not None and record.role == Role.USER and verify_key(key, record)
    assert "not shown again" in out


def test_list_shows_every_key_and_no_secret(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    first = create(capsys, "--tenant", "acme", "--name", "ci runner")
    second = create(capsys, "--tenant", "globex", "--role", "admin")
    secrets = [first["key"], second["key"], first["webhook_secret"], second["webhook_secret"], "$argon2"]

    code, out, _ = run(capsys, "keys", "list", "--json")
    assert code == 0 and not any(secret in out for secret in secrets)
    listed = json.loads(out)["keys"]
    assert [(k["key_id"], k["tenant"], k["role"], k["name"]) for k in listed] == [
        (first["key_id"], "acme", "user", "ci runner"),
        (second["key_id"], "globex", "admin", None),
    ]

    code, out, _ = run(capsys, "keys", "list")
    assert code == 0 and not any(secret in out for secret in secrets)
    assert first["key_id"] in out and second["key_id"] in out and "ci runner" in out

    code, out, _ = run(capsys, "keys", "list", "--tenant", "globex", "--json")
    assert [k["key_id"] for k in json.loads(out)["keys"]] == [second["key_id"]]
    code, out, _ = run(capsys, "keys", "list", "--tenant", "nobody")
    assert (code, out.strip()) == (0, "no keys of tenant nobody")


def test_revoke_stops_a_key_by_its_id_or_by_the_key(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    by_id, by_key = create(capsys, "--tenant", "acme"), create(capsys, "--tenant", "acme")
    code, out, _ = run(capsys, "keys", "revoke", by_id["key_id"])
    assert code == 0 and f"revoked key {by_id['key_id']}" in out
    code, out, _ = run(capsys, "keys", "revoke", by_key["key"])
    assert code == 0 and f"revoked key {by_key['key_id']}" in out
    for created in (by_id, by_key):
        record = stored(store_url, created["key_id"])
        assert record is not None and not record.active and not verify_key(created["key"], record)

    code, out, _ = run(capsys, "keys", "revoke", by_id["key_id"])  # again: nothing to do, not an error
    assert code == 0 and "revoked already" in out
    listed = json.loads(run(capsys, "keys", "list", "--json")[1])["keys"]
    assert all(k["revoked_at"] for k in listed)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["keys", "revoke", "0123456789ab"], "no key 0123456789ab"),
        (["keys", "revoke", "not-a-key"], "neither a key id"),
        (["keys", "revoke", "ofr_0123456789ab_short"], "neither a key id"),
        (["keys", "create", "--tenant", "a b"], "invalid --tenant"),
        (["keys", "create", "--tenant", ""], "invalid --tenant"),
        (["keys", "create", "--tenant", "x" * 101], "invalid --tenant"),
        (["keys", "create", "--tenant", "acme", "--name", "n" * 201], "--name"),
        (["keys", "list", "--tenant", "a/b"], "invalid --tenant"),
    ],
)
def test_bad_usage_and_unknown_keys_exit_2_with_a_message(
    store_url: str, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and message in err and "Traceback" not in err
    assert json.loads(run(capsys, "keys", "list", "--json")[1]) == {"keys": []}  # nothing was created


SECRET = "S3cr3t-PART_of-a-key-xyzXYZ0123456789"


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        (f"ofr_0123456789ab_{SECRET[:10]}", "ofr_0123456789ab_... "),  # cut: too short a secret
        (f"ofr_0123456789ab_{SECRET}!", "ofr_0123456789ab_... "),  # a character keys never have
        (f"  ofr_0123456789ab{SECRET}", "ofr_0123456789ab_... "),
        (f"ofr_0123456789AB_{SECRET}", ""),  # no id: nothing of it is shown
        (f"ofr_{SECRET}", ""),
        (SECRET, ""),  # a secret without its prefix
        (f"Bearer ofr_0123456789ab_{SECRET}", ""),
        ("not-a-key", ""),
        ("", ""),
        (None, ""),
    ],
)
def test_a_refused_revoke_argument_shows_at_most_the_key_id(given: object, shown: str) -> None:
    assert shown_revoke_argument(given) == shown


@pytest.mark.parametrize(
    "given", [f"ofr_0123456789ab_{SECRET[:20]}", f"ofr_0123456789ab_{SECRET} x", SECRET, f"ofr_{SECRET}"]
)
def test_revoke_never_echoes_a_secret(store_url: str, capsys: pytest.CaptureFixture[str], given: str) -> None:
    code, out, err = run(capsys, "keys", "revoke", given)
    assert code == 2 and "neither a key id" in err
    assert SECRET[:8] not in out + err


@pytest.mark.parametrize(
    "argv",
    [
        ["keys"],
        ["keys", "create"],
        ["keys", "create", "--tenant", "acme", "--role", "root"],
        ["keys", "revoke"],
        ["keys", "rotate"],
    ],
)
def test_malformed_commands_exit_2(
    store_url: str, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2 and "usage:" in capsys.readouterr().err


def test_the_store_comes_from_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("OFFICERAY_STORE__URL", raising=False)
    url = f"sqlite:///{tmp_path / 'configured.db'}"
    config = tmp_path / "officeray.yaml"
    config.write_text(f"store:\n  url: {url}\n")
    created = create(capsys, "--tenant", "acme", "--config", str(config))
    assert stored(url, created["key_id"]) is not None
    code, out, _ = run(capsys, "keys", "list", "--json", "--config", str(config))
    assert [k["key_id"] for k in json.loads(out)["keys"]] == [created["key_id"]]


def test_a_store_that_cannot_be_opened_exits_1_with_a_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("OFFICERAY_STORE__URL", f"sqlite:///{blocker / 'sub' / 'x.db'}")
    code, _, err = run(capsys, "keys", "list")
    assert code == 1 and "store" in err and "Traceback" not in err


def test_a_store_url_that_is_not_one_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OFFICERAY_STORE__URL", "not a url")
    code, _, err = run(capsys, "keys", "list")
    assert code == 2 and "store.url" in err and "Traceback" not in err
