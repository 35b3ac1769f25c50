"""The local admin key (cluster.keyfile): which hosts are loopback, the first start of ``serve``, the
key file's mode, and how local commands find a key."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cluster import cli
from cluster.cli_output import UsageError
from cluster.keyfile import (
    API_KEY_ENV,
    FIRST_KEY_TENANT,
    FirstStart,
    address_is_loopback,
    first_start_action,
    is_loopback_host,
    local_api_key,
    prepare_first_key,
    read_key_file,
    server_api_key,
    write_key_file,
)
from officeray.auth import Role, mint_key, parse_key, verify_key
from officeray.config import AuthSettings, Settings, StoreSettings, load_settings
from officeray.store import SqlStore

LOOPBACK = ["localhost", "LocalHost", "127.0.0.1", "127.0.0.2", "127.255.255.254", "::1", "[::1]"]
LOOPBACK += ["0:0:0:0:0:0:0:1", "::ffff:127.0.0.1"]
NOT_LOOPBACK = [
    "",
    "0.0.0.0",
    "::",
    "[::]",
    "0",
    "192.168.1.10",
    "10.0.0.1",
    "172.17.0.1",
    "8.8.8.8",
    "169.254.169.254",
    "fe80::1",
    "::1%lo",
    "[::1%lo]",
    "::ffff:0.0.0.0",
    "::ffff:10.0.0.1",
    "[127.0.0.1]",
    "127.0.0.1.evil.com",
    "localhost.evil.com",
    "evil-localhost",
    "localhost.",
    " 127.0.0.1",
    "127.0.0.1 ",
    "127.0.0.1:8000",
    "127.1",
    "0127.0.0.1",
    "2130706433",
    "0x7f000001",
    "127.0.0.1\x00",
    "loca\u200blhost",
    "ｌｏｃａｌｈｏｓｔ",
    "１２７.０.０.１",
    "example.com",
]


@pytest.mark.parametrize("host", LOOPBACK)
def test_loopback_hosts(host: str) -> None:
    assert is_loopback_host(host)


@pytest.mark.parametrize("host", NOT_LOOPBACK)
def test_hosts_reachable_from_elsewhere_or_unclear_are_not_loopback(host: str) -> None:
    assert not is_loopback_host(host)


def test_what_is_not_a_string_is_not_loopback() -> None:
    assert not is_loopback_host(None)  # type: ignore[arg-type]
    assert not is_loopback_host(b"127.0.0.1")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("active_keys", "host", "action"),
    [
        (0, "127.0.0.1", FirstStart.CREATE),
        (0, "0.0.0.0", FirstStart.REFUSE),
        (0, "::", FirstStart.REFUSE),
        (0, "192.168.1.10", FirstStart.REFUSE),
        (1, "0.0.0.0", FirstStart.READY),
        (3, "127.0.0.1", FirstStart.READY),
    ],
)
def test_first_start_action(active_keys: int, host: str, action: FirstStart) -> None:
    assert first_start_action(active_keys, host) == action


# -- the key file ---------------------------------------------------------------------------------------


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that hides nothing: the file's mode must come from the code, not from the umask."""
    previous = os.umask(0)
    yield
    os.umask(previous)


@pytest.mark.usefixtures("open_umask")
def test_the_key_file_is_written_0600_in_a_0700_folder_and_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "state" / "admin.key"
    write_key_file(path, "ofr_first")
    assert path.read_text() == "ofr_first\n"
    assert mode_of(path) == 0o600 and mode_of(path.parent) == 0o700

    path.chmod(0o644)  # someone loosened it: the new file is 0600 again
    write_key_file(path, "ofr_second")
    assert path.read_text() == "ofr_second\n" and mode_of(path) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["admin.key"]  # no temporary file left


def test_a_readable_key_file_is_used_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "admin.key"
    write_key_file(path, "ofr_k")
    warnings: list[str] = []
    assert read_key_file(path, warnings.append) == "ofr_k" and warnings == []
    path.chmod(0o644)
    assert read_key_file(path, warnings.append) == "ofr_k"
    assert len(warnings) == 1 and "readable by other users" in warnings[0] and "chmod 600" in warnings[0]


def test_a_missing_or_empty_key_file_holds_no_key(tmp_path: Path) -> None:
    assert read_key_file(tmp_path / "none.key") is None
    assert read_key_file(tmp_path / "not-a-dir" / "x") is None
    write_key_file(tmp_path / "empty.key", "  ")
    assert read_key_file(tmp_path / "empty.key") is None


def settings_in(tmp_path: Path) -> Settings:
    return Settings(
        store=StoreSettings(url=f"sqlite:///{tmp_path / 'officeray.db'}"),
        auth=AuthSettings(admin_key_file=tmp_path / "state" / "admin.key"),
    )


HERE = "http://127.0.0.1:8000"
ELSEWHERE = "http://gateway.example.com:8000"


def test_local_api_key_prefers_the_flag_then_the_environment_then_the_file(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    assert local_api_key(settings, None, environ={}, address=HERE) is None
    write_key_file(settings.auth.admin_key_file, "ofr_file")
    assert local_api_key(settings, None, environ={}, address=HERE) == "ofr_file"
    assert local_api_key(settings, None, environ={API_KEY_ENV: "ofr_env"}, address=HERE) == "ofr_env"
    assert local_api_key(settings, None, environ={API_KEY_ENV: "  "}, address=HERE) == "ofr_file"
    assert local_api_key(settings, "ofr_flag", environ={API_KEY_ENV: "ofr_env"}, address=HERE) == "ofr_flag"
    assert local_api_key(settings, "", environ={API_KEY_ENV: "ofr_env"}, address=HERE) == "ofr_env"


LOOPBACK_ADDRESSES = [
    "http://127.0.0.1:8000",
    "http://localhost:8000/",
    "https://LOCALHOST",
    "http://[::1]:8000",
    "http://127.0.0.2",
    "http://user@127.0.0.1:8000",
    "http://127.0.0.1#@evil.com",  # a fragment: the host is still 127.0.0.1 (for httpx too)
]
REMOTE_ADDRESSES = [
    "http://gateway.example.com:8000",
    "http://0.0.0.0:8000",
    "http://[::]:8000",
    "http://10.0.0.5:8000",
    "http://127.0.0.1@evil.com",  # user info: the host is evil.com
    "http://127.0.0.1:8000@evil.com/",
    "http://[::1]@evil.com",
    "http://localhost.evil.com",
    "http://127.0.0.1.evil.com",
    "http://127.1",
    "http://0x7f000001",
    "http://evil.com\\@127.0.0.1",
    "http://evil.com\\.127.0.0.1",
    "http://evil.com\t@127.0.0.1",
    "http://127.0.0.1 @evil.com",
    "http://[::1%25lo]:8000",
    "http://[::1",
    "127.0.0.1:8000",  # no scheme
    "//127.0.0.1:8000",
    "ftp://127.0.0.1",
    "file:///tmp/x",
    "http://",
    "http://ｌｏｃａｌｈｏｓｔ",
    "",
]


@pytest.mark.parametrize("address", LOOPBACK_ADDRESSES)
def test_addresses_on_this_machine(address: str) -> None:
    assert address_is_loopback(address)
    assert is_loopback_host(httpx.URL(address).host)  # where the client really connects


@pytest.mark.parametrize("address", REMOTE_ADDRESSES)
def test_addresses_elsewhere_or_unclear_never_get_the_admin_key(tmp_path: Path, address: str) -> None:
    assert not address_is_loopback(address)
    settings = settings_in(tmp_path)
    write_key_file(settings.auth.admin_key_file, "ofr_file")
    assert local_api_key(settings, None, environ={}, address=address) is None
    with pytest.raises(UsageError, match=f"pass --key KEY or set \\${API_KEY_ENV}"):
        server_api_key(settings, None, address, environ={})
    # a key given explicitly goes to any address
    assert server_api_key(settings, "ofr_flag", address, environ={}) == "ofr_flag"
    assert server_api_key(settings, None, address, environ={API_KEY_ENV: "ofr_env"}) == "ofr_env"


def test_a_loopback_server_without_any_key_is_left_to_answer_401(tmp_path: Path) -> None:
    assert server_api_key(settings_in(tmp_path), None, HERE, environ={}) is None


# -- first start of `officeray serve` --------------------------------------------------------------------


def stored_keys(settings: Settings) -> list[tuple[str, Role, bool]]:
    store = SqlStore(settings.store.url)
    try:
        return [(r.tenant, r.role, r.active) for r in asyncio.run(store.list_api_keys())]
    finally:
        store.close()


def file_key_verifies(settings: Settings) -> bool:
    key = read_key_file(settings.auth.admin_key_file)
    store = SqlStore(settings.store.url)
    try:
        record = asyncio.run(store.get_api_key(parse_key(key) or ""))
    finally:
        store.close()
    return record is not None and verify_key(key, record)


def test_first_start_on_loopback_makes_one_admin_key_and_says_where_it_is(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    notice = prepare_first_key(settings)
    path = settings.auth.admin_key_file
    assert notice is not None and str(path) in notice
    key = read_key_file(path)
    assert key is not None and key not in notice  # where it is, never the key itself
    assert mode_of(path) == 0o600
    assert stored_keys(settings) == [(FIRST_KEY_TENANT, Role.ADMIN, True)]
    assert file_key_verifies(settings)

    assert prepare_first_key(settings) is None  # a key exists: nothing more
    assert read_key_file(path) == key and len(stored_keys(settings)) == 1


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10"])
def test_first_start_elsewhere_than_loopback_is_refused_until_a_key_exists(tmp_path: Path, host: str) -> None:
    settings = settings_in(tmp_path)
    with pytest.raises(UsageError, match="officeray keys create") as refused:
        prepare_first_key(settings, host)
    assert "not a loopback address" in str(refused.value)
    assert not settings.auth.admin_key_file.exists() and stored_keys(settings) == []

    store = SqlStore(settings.store.url)
    asyncio.run(store.create_api_key(mint_key("acme", Role.ADMIN)[1]))
    store.close()
    assert prepare_first_key(settings, host) is None


def test_a_key_file_from_another_store_is_replaced_by_a_key_of_this_one(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    write_key_file(settings.auth.admin_key_file, mint_key("default", Role.ADMIN)[0])  # not in this store
    assert not file_key_verifies(settings)
    assert prepare_first_key(settings) is not None
    assert file_key_verifies(settings)


def test_serve_on_a_wildcard_address_without_a_key_exits_2_before_starting_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OFFICERAY_STORE__URL", f"sqlite:///{tmp_path / 'officeray.db'}")
    monkeypatch.setenv("OFFICERAY_AUTH__ADMIN_KEY_FILE", str(tmp_path / "admin.key"))
    assert cli.main(["serve", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "no API key yet" in err and "officeray keys create" in err and "Traceback" not in err
    assert not (tmp_path / "admin.key").exists()
    assert load_settings().auth.admin_key_file == tmp_path / "admin.key"
