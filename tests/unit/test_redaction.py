"""The PII scrubber and the redaction modes against tables of bad input (and hypothesis).

The scrubber is a security function: the tables say what it must catch, what ordinary text it must
leave alone, what it documents it does not catch, and that hostile input costs linear time.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from officeray import redaction
from officeray.redaction import (
    CARD,
    EMAIL,
    HASH_PREFIX,
    IBAN,
    IBAN_LENGTHS,
    IP,
    MAX_DEPTH,
    MAX_SCRUB_CHARS,
    PHONE,
    SCRUB_CUT_MARK,
    SECRET,
    TOO_DEEP,
    TRUNCATION_MARK,
    iban_valid,
    luhn_valid,
    redact,
    scrub_pii,
    scrub_prompt,
)

# --------------------------------------------------------------------------------------------------
# What the scrubber catches
# --------------------------------------------------------------------------------------------------

CAUGHT = [
    # e-mail
    ("mail bob.smith+tag@mail.example.co.uk.", f"mail {EMAIL}."),
    ("<alice@example.org>", f"<{EMAIL}>"),
    ('{"to": "x_y%z@sub.domain-1.io"}', f'{{"to": "{EMAIL}"}}'),
    ("user@xn--80ak6aa92e.xn--p1ai", EMAIL),
    # IBAN
    ("IBAN DE89 3704 0044 0532 0130 00 please", f"IBAN {IBAN} please"),
    ("DE89370400440532013000", IBAN),
    ("GB82 WEST 1234 5698 7654 32 AND MORE", f"{IBAN} AND MORE"),
    ("NL91ABNA0417164300;", f"{IBAN};"),
    ("FR1420041010050500013M02606", IBAN),
    # cards
    ("card 4111 1111 1111 1111 exp 12/26", f"card {CARD} exp 12/26"),
    ("4111-1111-1111-1111", CARD),
    ("4111111111111111.", f"{CARD}."),
    ("amex 3782 822463 10005", f"amex {CARD}"),
    ("mc 5555 5555 5555 4444 and 2223 0031 2200 3222", f"mc {CARD} and {CARD}"),
    ("on 2024 01 15 4111 1111 1111 1111", f"on 2024 01 15 {CARD}"),
    # phones
    ("+1 555 123 4567", PHONE),
    ("call (555) 123-4567 now", f"call {PHONE} now"),
    ("555.123.4567 or 555-123-4567", f"{PHONE} or {PHONE}"),
    ("+44 20 7946 0958", PHONE),
    ("+4930123456", PHONE),
    ("01 23 45 67 89", PHONE),
    ("uk 07700 900123, de 030 1234 5678", f"uk {PHONE}, de {PHONE}"),
    # IP addresses
    ("from 192.168.0.1:8080 and 10.0.0.255.", f"from {IP}:8080 and {IP}."),
    ("http://127.0.0.1/x", f"http://{IP}/x"),
    ("v6 2001:db8::1 and fe80::1%eth0", f"v6 {IP} and {IP}%eth0"),
    ("[2001:0db8:0000:0000:0000:ff00:0042:8329]:443", f"[{IP}]:443"),
    ("listen on ::1", f"listen on {IP}"),
    ("::ffff:192.0.2.1", IP),
    # keys and tokens
    (
        "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abcdefghijk",
        f"Authorization: Bearer {SECRET}",
    ),
    ("authorization: bearer abc123def456", f"authorization: bearer {SECRET}"),
    ("Authorization: Basic dXNlcjpwYXNzd29yZA==", f"Authorization: Basic {SECRET}"),
    ("key sk-proj-AbC123dEf456GhI789jKl0", f"key {SECRET}"),
    ("sk-ant-api03-AbCdEf0123456789xyz", SECRET),
    ("ofr_0123456789ab_Zx9-abcdefghijklmnopqrstuvwxyz0123456789AB", SECRET),
    ("AKIAIOSFODNN7EXAMPLE", SECRET),
    ("ghp_abcdefghijklmnopqrstuvwxyz0123456789", SECRET),
    ("xoxb-123456789012-abcdefghij", SECRET),
    ("sk_live_abcdefghij0123456789", SECRET),
    ("AIzaSyA1234567890abcdefghijklmnopqrstuv", SECRET),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig_nature-x", f"jwt {SECRET}"),
    ("api_key=abcd1234&x=1", f"api_key={SECRET}&x=1"),
    ("API-KEY: 0123456789abcdef", f"API-KEY: {SECRET}"),
    ('{"password": "hunter22", "user": "bob"}', f'{{"password": "{SECRET}", "user": "bob"}}'),
    ("client_secret='s3cr3t-value'", f"client_secret='{SECRET}'"),
    ("https://user:p4ss@example.com/x", f"https://user:{SECRET}@example.com/x"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY----- after", f"{SECRET} after"),
    ("-----BEGIN PRIVATE KEY-----\nMIIEow... (cut)", SECRET),
]


@pytest.mark.parametrize(("text", "expected"), CAUGHT)
def test_the_scrubber_replaces_pii_and_secrets(text: str, expected: str) -> None:
    assert scrub_pii(text) == expected


ORDINARY = [
    "Released v1.2.3 on 2024-01-15 at 10:30:45; RFC 3339 2024-01-15T10:30:45Z, ISO week 2024-W03.",
    "Build 2024.01.15, Python 3.11.7, numpy 1.26.4, Windows 10.0.19041.1",
    "step-12 depends on s1, step_3 and iteration 2; plan task-1-plan-1 key task-1:1:s1",
    "pi is 3.14159265358979 and 0.1 + 0.2 = 0.30000000000000004; 12.34567890 and 98.7654321",
    "Total: 1,234,567.89 EUR; 1 234 567 890; 12 345 678 901; 1.234.567.890",
    "epoch ms 1718000000000 and s 1718000000, order 123456789012, id 9876543210",
    "x[1::2], a[::-1], std::vector<int>, Foo::bar, ratio 16:9, 12:30:45",
    "MAC 00:1a:2b:3c:4d:5e, sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "uuid 123e4567-e89b-12d3-a456-426614174000",
    "max_tokens=100, prompt_tokens: 1234, token_budget = 5000, 42 tokens, tokens_in: 7",
    "the bearer bonds; Bearer Instruments Ltd; a token of thanks; the secret sauce",
    "The password policy requires 12 characters.",
    "scikit-learn, sk-learn-style names, risk-assessment-framework-v2",
    "meeting 2024-01-15 1030-1130 in room 4, floor 12",
    "@decorator, user@ and @mention; email.utils.parseaddr",
    "4111 1111 1111 1112 fails Luhn; DE00 3704 0044 0532 0130 00 fails mod-97",
    "1.2.3 and 10.1 and 300.1.1.1 and 1.2.3.4.5",
    "Ünïcödé text, emoji 🎉, CJK 漢字 and 1234",
    "",
]


@pytest.mark.parametrize("text", ORDINARY)
def test_the_scrubber_leaves_ordinary_text_alone(text: str) -> None:
    assert scrub_pii(text) == text


NOT_CAUGHT = [
    ("a local number 555-1234", "documented: no area code"),
    ("contiguous 0612345678", "documented: a bare digit string may be an id"),
    ("lowercase de89370400440532013000", "documented: IBANs are upper case"),
    ("a bare random string Zx9aQ27bLmN3", "documented: no prefix, no name"),
    ("John Smith, 221B Baker Street, London", "documented: names and postal addresses"),
]


@pytest.mark.parametrize(("text", "why"), NOT_CAUGHT)
def test_what_the_scrubber_documents_it_does_not_catch(text: str, why: str) -> None:
    assert scrub_pii(text) == text, why


def test_scrubbing_is_idempotent_on_the_tables() -> None:
    for text, _ in CAUGHT:
        once = scrub_pii(text)
        assert scrub_pii(once) == once


# --------------------------------------------------------------------------------------------------
# Hostile input: linear time, bounded size
# --------------------------------------------------------------------------------------------------

HOSTILE_CHARS = 100_000
HOSTILE_BUDGET_S = 3.0
"""A linear scrub of HOSTILE_CHARS takes well under a second; a quadratic one takes minutes."""

HOSTILE_UNITS = [
    "a",
    "1",
    "1 ",
    "1-",
    "1.",
    "1:",
    "a@",
    "a.",
    "@a.",
    "+",
    "+1 ",
    "(",
    "(1)",
    "(123) ",
    "1(",
    "::",
    "1::",
    "abcd:",
    "1.1.1.1.",
    "Bearer ",
    "bearer a",
    "sk-",
    "api_key=",
    "password ",
    '"password":"',
    "://",
    "://a:",
    "DE89 ",
    "DE89",
    "eyJ",
    "ofr_",
    "AKIA",
    "-----BEGIN PRIVATE KEY-----",
    "4111 ",
    "555 123 ",
    "é1",
    " ",
    "\n",
    "1-1 1.1:1(1)+",
]

HOSTILE = [unit * (HOSTILE_CHARS // len(unit)) for unit in HOSTILE_UNITS] + [
    "a" * 63 + "@" + "b-" * (HOSTILE_CHARS // 2),
    "x@" + "a." * (HOSTILE_CHARS // 2) + "1",
    "Bearer " + "a" * HOSTILE_CHARS,
    "sk-" + "a" * HOSTILE_CHARS,
    "api_key=" + "x" * HOSTILE_CHARS,
    "://a:" + "b" * HOSTILE_CHARS,
    "DE89" + " A" * (HOSTILE_CHARS // 2),
    "eyJ" + "a." * (HOSTILE_CHARS // 2),
    "-----BEGIN PRIVATE KEY-----" + "A" * HOSTILE_CHARS,
]


@pytest.mark.parametrize("text", HOSTILE, ids=[repr(t[:12]) for t in HOSTILE])
def test_hostile_input_is_scrubbed_in_linear_time(text: str) -> None:
    started = time.perf_counter()
    scrub_pii(text)
    assert time.perf_counter() - started < HOSTILE_BUDGET_S


def test_text_past_the_bound_is_dropped_not_passed_through() -> None:
    text = "x" * MAX_SCRUB_CHARS + " bob@example.com"
    scrubbed = scrub_pii(text)
    assert "bob@example.com" not in scrubbed
    assert scrubbed == "x" * MAX_SCRUB_CHARS + SCRUB_CUT_MARK.format(omitted=16)


# --------------------------------------------------------------------------------------------------
# Checksums
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("digits", "valid"),
    [("4111111111111111", True), ("4111111111111112", False), ("378282246310005", True), ("0", True)],
)
def test_luhn(digits: str, valid: bool) -> None:
    assert luhn_valid(digits) is valid


@pytest.mark.parametrize(
    ("iban", "valid"),
    [
        ("DE89370400440532013000", True),
        ("DE88370400440532013000", False),  # check digits
        ("DE8937040044053201300", False),  # length
        ("XX89370400440532013000", False),  # no such country
        ("GB82WEST12345698765432", True),
        ("NO9386011117947", True),
        ("GB82WEST1234569876543!", False),
    ],
)
def test_iban_check(iban: str, valid: bool) -> None:
    assert iban_valid(iban) is valid


# --------------------------------------------------------------------------------------------------
# Properties (hypothesis): generated PII embedded in text never survives
# --------------------------------------------------------------------------------------------------

CONTEXT = st.text(alphabet="abcdefghijklmnopqrstuvwxyz ,;!?", max_size=30)


def _luhn_complete(prefix_and_body: str) -> str:
    for check in "0123456789":
        if luhn_valid(prefix_and_body + check):
            return prefix_and_body + check
    raise AssertionError("unreachable")


@st.composite
def card_numbers(draw: st.DrawFn) -> str:
    prefix, length = draw(
        st.sampled_from(
            [
                ("4", 16),
                ("4", 13),
                ("51", 16),
                ("55", 16),
                ("34", 15),
                ("37", 15),
                ("6011", 16),
                ("2221", 16),
                ("2720", 16),
                ("62", 19),
            ]
        )
    )
    body = draw(
        st.text(alphabet="0123456789", min_size=length - len(prefix) - 1, max_size=length - len(prefix) - 1)
    )
    number = _luhn_complete(prefix + body)
    sep = draw(st.sampled_from(["", " ", "-"]))
    if not sep or length not in (16,):
        return number
    return sep.join(number[i : i + 4] for i in range(0, 16, 4))


def _iban_from(country: str, bban: str) -> str:
    digits = "".join(str(int(c, 36)) for c in bban + country + "00")
    return f"{country}{98 - int(digits) % 97:02d}{bban}"


@st.composite
def ibans(draw: st.DrawFn) -> str:
    country = draw(st.sampled_from(sorted(IBAN_LENGTHS)))
    bban = draw(
        st.text(
            alphabet="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ",
            min_size=IBAN_LENGTHS[country] - 4,
            max_size=IBAN_LENGTHS[country] - 4,
        )
    )
    iban = _iban_from(country, bban)
    assert iban_valid(iban)
    if draw(st.booleans()):
        return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))
    return iban


@st.composite
def phones(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        cc = draw(st.integers(1, 999))
        rest = draw(st.lists(st.text(alphabet="0123456789", min_size=2, max_size=4), min_size=2, max_size=4))
        assume(8 <= len(str(cc)) + sum(map(len, rest)) <= 15)
        return f"+{cc} " + " ".join(rest)
    area, exchange, line = (draw(st.text(alphabet="0123456789", min_size=n, max_size=n)) for n in (3, 3, 4))
    return draw(
        st.sampled_from(
            [
                f"({area}) {exchange}-{line}",
                f"{area}-{exchange}-{line}",
                f"{area}.{exchange}.{line}",
                f"{area} {exchange} {line}",
            ]
        )
    )


def _ipv6_text(address: Any) -> str:
    text = str(address)
    return text if len([g for g in text.split(":") if g]) >= 3 else address.exploded


EMAILS = st.emails().filter(lambda e: e.rsplit("@", 1)[0][-1] not in "'`=/{}|")
"""Addresses whose local part does not end in a character the scrubber documents it cuts at."""

PII = st.one_of(
    EMAILS,
    card_numbers(),
    ibans(),
    phones(),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(_ipv6_text),
)


@pytest.mark.slow
@given(before=CONTEXT, pii=PII, after=CONTEXT)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_generated_pii_in_text_never_survives(before: str, pii: str, after: str) -> None:
    scrubbed = scrub_pii(f"{before} {pii} {after}")
    assert pii not in scrubbed
    assert "@" not in scrubbed  # not even a part of an e-mail address


SCRUBBABLE_TEXT = st.text(alphabet="ab1234567890 .-+:()@/=_\nDEsk[]", max_size=60)


@pytest.mark.slow
@given(text=SCRUBBABLE_TEXT)
@settings(max_examples=300, deadline=None)
def test_scrubbing_is_idempotent(text: str) -> None:
    once = scrub_pii(text)
    assert scrub_pii(once) == once


def _json_values(strings: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    return st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | strings,
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
        ),
        max_leaves=12,
    )


def _documents(strings: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    values = _json_values(strings)
    return st.dictionaries(st.text(max_size=8), values, max_size=4) | st.lists(values, max_size=4)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


@pytest.mark.slow
@given(document=_documents(st.text() | PII))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_json_prompt_stays_valid_json(document: Any) -> None:
    json.loads(scrub_prompt(json.dumps(document)))


@pytest.mark.slow
@given(document=_documents(PII))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_pii_in_a_json_prompt_never_survives(document: Any) -> None:
    scrubbed = scrub_prompt(json.dumps(document))
    for leaf in _strings(document):
        assert leaf not in scrubbed


def test_a_json_prompt_is_scrubbed_value_by_value() -> None:
    text = json.dumps(
        {"description": "mail bob@example.com\nthen call +1 555 123 4567", "n": 4111111111111111}
    )
    scrubbed = json.loads(scrub_prompt(text))
    assert scrubbed == {"description": f"mail {EMAIL}\nthen call {PHONE}", "n": CARD}
    assert scrub_prompt("plain bob@example.com") == f"plain {EMAIL}"
    assert scrub_prompt("[not json bob@example.com") == f"[not json {EMAIL}"
    untouched = json.dumps({"a": "nothing here"})
    assert scrub_prompt(untouched) is untouched


# --------------------------------------------------------------------------------------------------
# redact(): the four modes
# --------------------------------------------------------------------------------------------------


class Inputs(BaseModel):
    to: str
    amount: int


@pytest.mark.parametrize("mode", ["full", "truncate", "hash", "drop"])
def test_none_is_none_in_every_mode(mode: Any) -> None:
    assert redact(None, mode, 100, True) == (None, False)


def test_drop_records_nothing() -> None:
    assert redact({"a": 1}, "drop", 100, True) == (None, True)


def test_hash_is_stable_and_of_the_scrubbed_canonical_text() -> None:
    digest, redacted = redact({"b": 1, "a": "x"}, "hash", 100, False)
    assert redacted and digest.startswith(HASH_PREFIX) and len(digest) == len(HASH_PREFIX) + 64
    assert redact({"a": "x", "b": 1}, "hash", 100, False)[0] == digest  # key order does not matter
    assert redact({"a": "y", "b": 1}, "hash", 100, False)[0] != digest
    # scrubbed first: two prompts that differ only in a card number hash the same
    assert redact("card 4111111111111111", "hash", 100, True) == redact(
        "card 5555555555554444", "hash", 100, True
    )
    assert redact("card 4111111111111111", "hash", 100, False) != redact(
        "card 5555555555554444", "hash", 100, False
    )


def test_full_walks_the_value_and_replaces_secret_named_keys() -> None:
    value = {
        "headers": {"Authorization": "Basic dXNlcjpwYXNz", "X-Api-Key": "k" * 20, "Accept": "*/*"},
        "db_password": 12345678,
        "password": None,
        "max_tokens": 100,
        "to": ["bob@example.com", ("alice@example.org", 1.5)],
        "card": 4111111111111111,
        "ratio": math.inf,
        "model": Inputs(to="carol@example.net", amount=3),
        7: "seven",
    }
    recorded, redacted = redact(value, "full", 16, True)
    assert redacted
    assert recorded == {
        "headers": {"Authorization": SECRET, "X-Api-Key": SECRET, "Accept": "*/*"},
        "db_password": SECRET,
        "password": None,
        "max_tokens": 100,
        "to": [EMAIL, [EMAIL, 1.5]],
        "card": CARD,
        "ratio": "inf",
        "model": {"to": EMAIL, "amount": 3},
        "7": "seven",
    }
    json.dumps(recorded, allow_nan=False)  # JSON, strictly


def test_full_without_scrub_keeps_the_content() -> None:
    value = {"to": "bob@example.com", "password": "hunter22"}
    assert redact(value, "full", 16, False) == (value, False)
    assert redact("bob@example.com", "full", 4, False) == ("bob@example.com", False)


def test_scrubbed_keys_that_collide_are_kept_apart() -> None:
    recorded, _ = redact({"bob@example.com": 1, "alice@example.org": 2}, "full", 100, True)
    assert recorded == {EMAIL: 1, f"{EMAIL}#2": 2}


def test_deep_values_are_cut_at_the_depth_limit() -> None:
    deep: Any = "bottom"
    for _ in range(MAX_DEPTH + 50):
        deep = [deep]
    recorded, redacted = redact(deep, "full", 100, True)
    assert redacted
    depth = 0
    while isinstance(recorded, list):
        recorded = recorded[0]
        depth += 1
    assert recorded == TOO_DEEP and depth == MAX_DEPTH


def test_very_deep_values_are_truncated_and_hashed_without_a_recursion_error() -> None:
    deep: Any = "bottom"
    for _ in range(5_000):
        deep = {"d": deep}
    text, redacted = redact(deep, "truncate", 64, True)
    assert redacted and isinstance(text, str) and len(text) < 64 + 40
    digest, _ = redact(deep, "hash", 64, True)
    assert digest.startswith(HASH_PREFIX)


@pytest.mark.parametrize(
    ("value", "max_chars", "expected", "redacted"),
    [
        ("short text", 16, "short text", False),
        ("mail bob@example.com", 64, f"mail {EMAIL}", True),
        ("x" * 20, 16, "x" * 16 + TRUNCATION_MARK.format(omitted=4), True),
        ({"a": 1, "b": [1, 2]}, 64, {"a": 1, "b": [1, 2]}, False),
        ({"b": "y" * 30, "a": 1}, 16, '{"a":1,"b":"yyyy' + TRUNCATION_MARK.format(omitted=28), True),
        ([1, 2, 3], 16, [1, 2, 3], False),
    ],
)
def test_truncate(value: Any, max_chars: int, expected: Any, redacted: bool) -> None:
    assert redact(value, "truncate", max_chars, True) == (expected, redacted)


def test_truncate_never_leaves_half_a_secret_at_the_cut() -> None:
    card = "4111 1111 1111 1111"
    text = "a" * 19 + " " + card + " rest"
    recorded, redacted = redact(text, "truncate", 30, True)  # the cut falls inside the card number
    assert redacted and "1111" not in recorded and recorded.startswith("a" * 19 + " " + CARD)
    long_jwt = "Bearer eyJhbGciOiJIUzI1NiJ9." + "x1" * 300
    recorded, _ = redact("auth " + long_jwt, "truncate", 100, True)
    assert "eyJ" not in recorded


@given(text=st.text(max_size=300), max_chars=st.integers(16, 200))
@settings(max_examples=200, deadline=None)
def test_truncate_bounds_what_is_recorded(text: str, max_chars: int) -> None:
    recorded, redacted = redact(text, "truncate", max_chars, True)
    assert isinstance(recorded, str)
    if len(text) > max_chars:
        assert redacted
        assert len(recorded) <= max_chars + len(TRUNCATION_MARK.format(omitted=len(text)))


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown redaction mode"):
        redact("x", "shred", 16, True)  # type: ignore[arg-type]


# -- the scrubber's shortcuts: a pass is skipped only where it cannot match --------------------------

_NEAR_MISSES = (
    "Bearer ",
    "BEARER\t",
    "bearer:",
    "api_key=",
    "API-KEY: ",
    "passwd: ",
    "Passphrase=",
    "authorization: ",
    "cookie=",
    "token: ",
    "x_secret=",
    "sk-",
    "SK-",
    "ſk-",
    "://",
    "https://u:p@h",
    "user@",
    "@example.org",
    "authorızation=",
    "\u212aey=",
    "paſſword: ",
    "ı",
    "İ",
    "K",
    "ſ",
    "KEY=",
    "to\u212aen=",
    "ſecret=",
    "pasſ=",
    "AUTHORIZATION=",
    '"password": "',
    "abcd1234EFGH5678ijkl",
    "0123456789",
    " ",
    "\n",
    '"',
    "'",
    "=",
    ":",
)
_SCRUB_TEXT = st.lists(
    st.one_of(st.sampled_from(_NEAR_MISSES), st.text(alphabet=st.characters(codec="utf-8"), max_size=8)),
    max_size=12,
).map("".join)


def _scrub_every_pass(text: str) -> str:
    """The scrubber without its shortcuts: every pass over the text."""
    for pattern, replacement in redaction._PASSES:
        text = pattern.sub(replacement, text)
    return text


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(_SCRUB_TEXT)
def test_a_skipped_pass_could_not_have_matched(text: str) -> None:
    folded = text.casefold()
    for pattern, _ in redaction._PASSES:
        if not redaction.pass_may_match(pattern, text, folded):
            assert pattern.search(text) is None, pattern.pattern


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(_SCRUB_TEXT)
def test_the_shortcuts_change_nothing_the_scrubber_writes(text: str) -> None:
    assert scrub_pii(text) == _scrub_every_pass(text)
