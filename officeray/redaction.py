"""What telemetry records of prompts, answers and tool data: pure functions, safe on any input.

:func:`scrub_pii` replaces personal data and credentials in a text by placeholders:

=============  =====================================================================================
``[SECRET]``   API keys and tokens: ``Bearer <token>``, ``Authorization: Basic <creds>``, officeray
               keys (``ofr_<12 hex>_<secret>``), ``sk-...`` (OpenAI, Anthropic), Stripe ``sk_live_``,
               GitHub ``ghp_``/``github_pat_``, Slack ``xox?-``, Google ``AIza...``, AWS key ids
               (``AKIA...``), JWTs (``eyJ...``), PEM private-key blocks, the password of a URL
               (``https://user:pw@host``), and the value of an assignment whose name says secret
               (``api_key=...``, ``"password": "..."``, ``token: ...``).
``[EMAIL]``    e-mail addresses (a local part is cut at ``' ` = / { } |``: ``to=[EMAIL]``).
``[IBAN]``     IBANs of a registered country, with or without spaces, checked by length and mod-97.
``[CARD]``     payment card numbers: 13-19 digits, contiguous or in groups of 3-6 separated by a
               space or a hyphen, a card network's first digit (2-6) and a valid Luhn check digit.
``[IP]``       IPv4 and IPv6 addresses (loopback and private ones too).
``[PHONE]``    ``+`` and 8-15 digits in groups (``+44 20 7946 0958``, ``+4930123456``), or 10-11
               digits in at least two groups (``(555) 123-4567``, ``030 1234 5678``, ``01 23 45 67 89``).
=============  =====================================================================================

It leaves ordinary text alone: dates and times, version numbers, decimals, amounts with thousands
separators, ids such as ``step-12`` or a 13-digit millisecond timestamp. What it does *not* catch:
names and postal addresses, national id numbers, local phone numbers without an area code
(``555-1234``), e-mail local parts that end in ``' ` = / { } |``, contiguous digit strings that
could be phone numbers (``0612345678``), lowercase IBANs, card numbers written in other groupings,
secrets without a recognisable prefix or name (a bare random string), and anything in images or
encodings (base64 of a text containing an e-mail). docs/observability.md has the full list.

Every pattern runs in time linear in the text (possessive quantifiers and start positions that a
match cannot begin inside of: no catastrophic backtracking), and the scrubber reads at most
:data:`MAX_SCRUB_CHARS` characters; the rest is dropped, not passed through unread.

:func:`redact` applies a ``telemetry.redaction`` mode to a string or any JSON-able value
(:class:`~officeray.config.RedactionSettings`):

* ``full``: the value itself, walked (dicts, lists, strings, numbers), each string scrubbed, and the
  value of a key that names a secret (``api_key``, ``password``, ``token``, ``authorization``...)
  replaced by ``[SECRET]``; structure is kept.
* ``truncate``: as ``full`` when the value's canonical JSON (or the string) fits in ``max_chars``;
  otherwise a string: its first ``max_chars`` characters (scrubbed) and :data:`TRUNCATION_MARK`.
* ``hash``: ``sha256:<hex>`` of the canonical text (the string, or compact JSON with sorted keys) of
  the scrubbed value: equal inputs give equal digests, and a scrubbed card number cannot be found
  again by trying them all.
* ``drop``: nothing (``None``).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

from pydantic import BaseModel

from officeray.config import RedactionMode

MAX_SCRUB_CHARS: Final = 1_000_000
"""Longest text :func:`scrub_pii` reads. Past it the text is cut and :data:`SCRUB_CUT_MARK` says how
much was dropped (fail closed: what was not read is not recorded or sent)."""

SCRUB_CUT_MARK: Final = "[UNSCRUBBED {omitted} CHARS DROPPED]"

SCRUB_LOOKAHEAD_CHARS: Final = 256
"""Characters past ``max_chars`` that ``truncate`` scrubs with the text it keeps, so that a secret the
cut falls inside is still recognised (and not left half visible)."""

MAX_DEPTH: Final = 32
"""Nesting depth :func:`redact` walks in a dict/list value; deeper parts become :data:`TOO_DEEP`."""

TOO_DEEP: Final = "[TOO DEEP]"

TRUNCATION_MARK: Final = "…[{omitted} more chars]"
"""Appended to a value ``truncate`` cut: how many characters were left out."""

HASH_PREFIX: Final = "sha256:"

EMAIL: Final = "[EMAIL]"
PHONE: Final = "[PHONE]"
CARD: Final = "[CARD]"
IBAN: Final = "[IBAN]"
SECRET: Final = "[SECRET]"
IP: Final = "[IP]"

_MAX_KEY_NAME_CHARS = 100
"""Longest dict key that is checked for a secret's name."""

# --------------------------------------------------------------------------------------------------
# Secrets
# --------------------------------------------------------------------------------------------------

_PRIVATE_KEY = re.compile(
    r"-----BEGIN (?:[A-Z0-9]++ ){0,3}PRIVATE KEY-----"
    r"(?:(?!-----END)[\s\S])*+"
    r"(?:-----END (?:[A-Z0-9]++ ){0,3}PRIVATE KEY-----)?+"
)
"""A PEM private key block; without its END line, everything after BEGIN (the cut may have eaten it)."""

_URL_PASSWORD = re.compile(r"(?<=://)([^\s/?#@:\"'\\<>]++):[^\s/?#@\"'\\<>]++@")

_PREFIXED_KEY = re.compile(
    r"(?<![A-Za-z0-9_-])(?:"
    r"ofr_[0-9a-f]{12}_[A-Za-z0-9_-]{8,}+"
    r"|(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{10,}+"
    r"|gh[pousr]_[A-Za-z0-9]{20,}+"
    r"|github_pat_[A-Za-z0-9_]{20,}+"
    r"|xox[abposr]-[A-Za-z0-9-]{10,}+"
    r"|AIza[A-Za-z0-9_-]{30,}+"
    r"|(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}(?![A-Za-z0-9])"
    r"|eyJ[A-Za-z0-9_-]{10,}+(?:\.[A-Za-z0-9_-]*+){0,2}+"
    r")"
)

_SK_KEY = re.compile(r"(?<![A-Za-z0-9_-])sk-([A-Za-z0-9_-]{16,}+)")
"""``sk-...`` (OpenAI ``sk-proj-``, Anthropic ``sk-ant-``); kept only when the rest looks random."""

_BEARER = re.compile(r"(?i)(?<![A-Za-z0-9])(bearer[ \t]++)([A-Za-z0-9_\-.~+/]++=*+)")

_SECRET_NAMES = (
    r"api[_-]?key|apikey|access[_-]?key(?:[_-]?id)?|secret[_-]?(?:access[_-]?)?key|client[_-]?secret"
    r"|private[_-]?key|(?:access|auth|refresh|id|session|bearer)[_-]?token|token|secret"
    r"|password|passwd|passphrase|authorization|cookie"
)

_ASSIGNED_SECRET = re.compile(
    r"(?i)(?<![A-Za-z0-9])((?:" + _SECRET_NAMES + r")[\"']?+[ \t]*+[=:][ \t]*+[\"']?+"
    r"(?:(?:bearer|basic|token|digest)[ \t]++)?+)"
    r"([^\s\"'`,;&<>\\]{4,}+)"
)
"""``name=value``, ``name: value``, ``"name": "value"``: the value goes (the name stays)."""

_SECRET_KEY_NAME = re.compile(r"(?i)(?:^|[^a-z])(?:" + _SECRET_NAMES + r")$")
"""A dict key whose value is a secret (``api_key``, ``X-Api-Key``, ``db_password``; not ``tokens``)."""


def _random_enough(token: str) -> bool:
    """A credential rather than a word: has a digit, or is long and mixed-case."""
    if any(c.isdigit() for c in token):
        return True
    return len(token) >= 24 and any(c.isupper() for c in token) and any(c.islower() for c in token)


def _bearer(match: re.Match[str]) -> str:
    token = match.group(2)
    if len(token) < 8 or not _random_enough(token):
        return match.group(0)
    return match.group(1) + SECRET


def _sk_key(match: re.Match[str]) -> str:
    return SECRET if _random_enough(match.group(1)) else match.group(0)


def _assigned(match: re.Match[str]) -> str:
    return match.group(1) + SECRET


# --------------------------------------------------------------------------------------------------
# E-mail, IBAN, cards
# --------------------------------------------------------------------------------------------------

_LOCAL_PART = r"[A-Za-z0-9.!#$%&*+?^_~-]"
"""An e-mail local part's characters: RFC 5322's atext but for ``' ` = / { } |``, which mostly stand
around an address (``to=bob@x.org``, ``'bob@x.org'``) rather than in it."""

_EMAIL = re.compile(
    rf"(?<!{_LOCAL_PART}){_LOCAL_PART}{{1,64}}+@(?:[A-Za-z0-9-]{{1,63}}+\.)+[A-Za-z][A-Za-z0-9-]{{1,62}}+"
)

_IBAN_CANDIDATE = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}[0-9]{2}(?:[ ]?[A-Z0-9]){11,30}+")

IBAN_LENGTHS: Final[Mapping[str, int]] = {
    **dict.fromkeys(["NO"], 15),
    **dict.fromkeys(["BE"], 16),
    **dict.fromkeys(["DK", "FI", "FK", "FO", "GL", "NL", "SD"], 18),
    **dict.fromkeys(["MK", "SI"], 19),
    **dict.fromkeys(["AT", "BA", "EE", "KZ", "LT", "LU", "MN", "XK"], 20),
    **dict.fromkeys(["CH", "HR", "LI", "LV"], 21),
    **dict.fromkeys(["BG", "BH", "CR", "DE", "GB", "GE", "IE", "ME", "RS", "VA"], 22),
    **dict.fromkeys(["AE", "GI", "IL", "IQ", "OM", "SO", "TL"], 23),
    **dict.fromkeys(["AD", "CZ", "ES", "MD", "PK", "RO", "SA", "SE", "SK", "TN", "VG"], 24),
    **dict.fromkeys(["LY", "PT", "ST"], 25),
    **dict.fromkeys(["IS", "TR"], 26),
    **dict.fromkeys(["BI", "DJ", "FR", "GR", "IT", "MC", "MR", "SM"], 27),
    **dict.fromkeys(["AL", "AZ", "BY", "CY", "DO", "GT", "HU", "LB", "NI", "PL", "SV"], 28),
    **dict.fromkeys(["BR", "EG", "PS", "QA", "UA"], 29),
    **dict.fromkeys(["JO", "KW", "MU", "YE"], 30),
    **dict.fromkeys(["MT", "SC"], 31),
    **dict.fromkeys(["LC"], 32),
    **dict.fromkeys(["RU"], 33),
}
"""IBAN length by country (the SWIFT IBAN registry); a code not listed is not an IBAN."""


def iban_valid(compact: str) -> bool:
    """Whether ``compact`` (no spaces) is an IBAN: registered country, its length, mod-97 == 1."""
    if IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact.isalnum() or not compact.isascii():
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _iban(match: re.Match[str]) -> str:
    text = match.group(0)
    length = IBAN_LENGTHS.get(text[:2])
    if length is None:
        return text
    alnum_ends = [i + 1 for i, char in enumerate(text) if char != " "]  # where each character ends
    if len(alnum_ends) < length:
        return text
    end = alnum_ends[length - 1]
    after = text[end:] if end < len(text) else match.string[match.end() : match.end() + 1]
    if after[:1].isalnum() or not iban_valid(text[:end].replace(" ", "")):
        return text
    return IBAN + text[end:]


def luhn_valid(digits: str) -> bool:
    """Whether a digit string passes the Luhn check (the last digit is the check digit)."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        d = ord(char) - 48
        if position % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


_DIGIT_RUN = re.compile(r"(?<![A-Za-z0-9_.])[0-9]++(?:[ -][0-9]++)*+")
"""Digit groups separated by single spaces or hyphens (card candidates: windows of groups)."""

_CARD_MIN_DIGITS, _CARD_MAX_DIGITS = 13, 19
_CARD_GROUP_DIGITS = range(3, 7)


def _looks_like_card(digits: str) -> bool:
    if not _CARD_MIN_DIGITS <= len(digits) <= _CARD_MAX_DIGITS or digits[0] not in "23456":
        return False
    if digits[0] == "2" and not 2221 <= int(digits[:4]) <= 2720:  # Mastercard's 2-series
        return False
    return luhn_valid(digits)


def _cards(match: re.Match[str]) -> str:
    text = match.group(0)
    following = match.string[match.end() : match.end() + 1]
    if sum(c.isdigit() for c in text) < _CARD_MIN_DIGITS or following.isalpha():
        return text
    parts = re.split(r"([ -])", text)  # groups at even indexes, separators at odd ones
    groups = parts[0::2]
    out: list[str] = []
    i = 0
    while i < len(groups):
        end = _card_window(groups, i)
        if end is None:
            out.append(groups[i])
            i += 1
        else:
            out.append(CARD)
            i = end
        if i < len(groups):
            out.append(parts[2 * i - 1])
    return "".join(out)


def _card_window(groups: list[str], start: int) -> int | None:
    """The end (exclusive) of the longest run of groups from ``start`` that is a card number."""
    best = None
    total = 0
    for end in range(start + 1, len(groups) + 1):
        total += len(groups[end - 1])
        if total > _CARD_MAX_DIGITS:
            break
        window = groups[start:end]
        if len(window) > 1 and any(len(g) not in _CARD_GROUP_DIGITS for g in window):
            break
        if total >= _CARD_MIN_DIGITS and _looks_like_card("".join(window)):
            best = end
    return best


# --------------------------------------------------------------------------------------------------
# IP addresses
# --------------------------------------------------------------------------------------------------

_IPV6_CANDIDATE = re.compile(
    r"(?<![A-Za-z0-9:.])[0-9A-Fa-f]{0,4}+(?::[0-9A-Fa-f]{0,4}+){2,7}+(?:\.[0-9]{1,3}+){0,3}+"
)

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"(?<![A-Za-z0-9.])(?:{_OCTET}\.){{3}}{_OCTET}(?![A-Za-z0-9]|\.[0-9])")


def _ipv6(match: re.Match[str]) -> str:
    text = match.group(0)
    following = match.string[match.end() : match.end() + 1]
    if following.isalnum() or following == ":":
        return text
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return text
    groups = [g for g in text.split(":") if g]
    # a Python slice (x[1::2]) or a ratio is no address: ask for three groups, or two with a long first
    if len(groups) >= 3 or (len(groups) == 2 and len(groups[0]) >= 3) or text == "::1":
        return IP
    return text


# --------------------------------------------------------------------------------------------------
# Phone numbers
# --------------------------------------------------------------------------------------------------

_PHONE_RUN = re.compile(
    r"(?<![A-Za-z0-9_+.])(?:\+[ ]?+)?+(?:\([0-9]{1,6}+\)|[0-9]++)(?:[ .\-]?+(?:\([0-9]{1,6}+\)|[0-9]++))*+"
)
_PHONE_PIECE = re.compile(r"(\+[ ]?)|([ .\-]?)(\([0-9]+\)|[0-9]+)")
_PHONE_MAX_DIGITS = 15
_PHONE_PLUS_MIN_DIGITS = 8
"""Fewest digits of a number written with a leading ``+``."""
_PHONE_NATIONAL_DIGITS = range(10, 12)
"""Digits of a number written without ``+``."""
_PHONE_GROUP_DIGITS = range(2, 7)
"""Digits of each group of a number written without ``+``."""


def _phones(match: re.Match[str]) -> str:
    text = match.group(0)
    if sum(c.isdigit() for c in text) < _PHONE_PLUS_MIN_DIGITS:
        return text
    plus = ""
    seps: list[str] = []  # seps[k]: what stands before groups[k] ("" for the first)
    groups: list[str] = []
    for piece in _PHONE_PIECE.finditer(text):
        if piece.group(1) is not None:
            plus = piece.group(1)
        else:
            seps.append(piece.group(2))
            groups.append(piece.group(3))
    sizes = [len(g) - 2 if g.startswith("(") else len(g) for g in groups]
    out: list[str] = []
    i = 0
    while i < len(groups):
        end = _phone_window(sizes, groups, seps, i, plus=bool(plus) and i == 0)
        if i > 0:
            out.append(seps[i])
        if end is None:
            out.append((plus if i == 0 else "") + groups[i])
            i += 1
        else:
            out.append(PHONE)
            i = end
    return "".join(out)


def _phone_window(sizes: list[int], groups: list[str], seps: list[str], start: int, plus: bool) -> int | None:
    """The end (exclusive) of the longest run of groups from ``start`` that is a phone number."""
    best = None
    digits = 0
    for end in range(start + 1, len(sizes) + 1):
        size = sizes[end - 1]
        if not plus and size not in _PHONE_GROUP_DIGITS:
            break
        digits += size
        if digits > _PHONE_MAX_DIGITS:
            break
        if plus:
            if digits >= _PHONE_PLUS_MIN_DIGITS:
                best = end
        elif digits in _PHONE_NATIONAL_DIGITS and _national(
            sizes[start:end], groups[start], seps[start + 1 : end]
        ):
            best = end
    return best


def _national(sizes: list[int], first: str, seps: list[str]) -> bool:
    """Whether groups of 2-6 digits, 10 or 11 in all, are written like a national phone number."""
    if len(sizes) < 2:
        return False
    if sizes[-1] < 4 and any(size != 2 for size in sizes):  # 555 123 4567, or 01 23 45 67 89
        return False
    after_first = seps[1:] if first.startswith("(") else seps
    if len(set(after_first)) > 1:  # one separator throughout (after an area code in parentheses)
        return False
    return not (set(seps) == {"."} and len(sizes) < 3)  # 12.34567890 is a number


# --------------------------------------------------------------------------------------------------
# The scrubber
# --------------------------------------------------------------------------------------------------

_PASSES: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...] = (
    (_PRIVATE_KEY, SECRET),
    (_URL_PASSWORD, r"\1:" + SECRET + "@"),
    (_PREFIXED_KEY, SECRET),
    (_SK_KEY, _sk_key),
    (_BEARER, _bearer),
    (_ASSIGNED_SECRET, _assigned),
    (_EMAIL, EMAIL),
    (_IBAN_CANDIDATE, _iban),
    (_DIGIT_RUN, _cards),
    (_IPV6_CANDIDATE, _ipv6),
    (_IPV4, IP),
    (_PHONE_RUN, _phones),
)
"""In order: secrets first (a token may hold anything), phone numbers last (after cards and IPs)."""


_ASSIGNED_NAME_PARTS = ("key", "token", "secret", "pass", "author", "cook")
"""Every name of :data:`_SECRET_NAMES` holds one of these (case folded). None holds an ``i``: the
regular expressions' case-insensitive ``i`` also matches ``ı`` (dotless), which case folding keeps;
their ``k`` and ``s`` also match the Kelvin sign and the long s, which case folding turns into ``k``
and ``s``."""

_PASS_NEEDS: dict[re.Pattern[str], Callable[[str, str], bool]] = {
    _URL_PASSWORD: lambda text, _folded: "://" in text,
    _SK_KEY: lambda text, _folded: "sk-" in text,
    _BEARER: lambda _text, folded: "bearer" in folded,
    _ASSIGNED_SECRET: lambda _text, folded: any(part in folded for part in _ASSIGNED_NAME_PARTS),
    _EMAIL: lambda text, _folded: "@" in text,
}
"""What a text must contain for a pass to find anything in it: ``needs(text, text.casefold())``.
Each is a plain substring test, far cheaper than the pass; a text without it skips the pass (and
``tests/unit/test_redaction.py`` checks, on generated text, that a skipped pass finds nothing)."""


def pass_may_match(pattern: re.Pattern[str], text: str, folded: str) -> bool:
    """False only when ``pattern`` (one of the scrubber's passes) cannot match ``text``."""
    needs = _PASS_NEEDS.get(pattern)
    return needs is None or needs(text, folded)


def scrub_pii(text: str) -> str:
    """``text`` with e-mails, phone numbers, card numbers, IBANs, keys and tokens and IP addresses
    replaced by placeholders (see the module docstring); linear in ``len(text)``, which is read up to
    :data:`MAX_SCRUB_CHARS`."""
    cut = ""
    if len(text) > MAX_SCRUB_CHARS:
        cut = SCRUB_CUT_MARK.format(omitted=len(text) - MAX_SCRUB_CHARS)
        text = text[:MAX_SCRUB_CHARS]
    folded = text.casefold()
    for pattern, replacement in _PASSES:
        if pass_may_match(pattern, text, folded):
            scrubbed = pattern.sub(replacement, text)
            if scrubbed != text:  # the later passes look at what this one left
                text, folded = scrubbed, scrubbed.casefold()
    return text + cut


def scrub_prompt(text: str) -> str:
    """A prompt's text scrubbed (``telemetry.redaction.scrub_external_prompts``). A prompt that is a
    JSON object or array (the planner's and reviewer's requests) is scrubbed value by value and
    written again with :func:`json.dumps`' defaults, so it stays valid JSON."""
    stripped = text.lstrip()
    if stripped[:1] in ("{", "["):
        try:
            document = json.loads(text)
        except (ValueError, RecursionError):
            document = None
        if isinstance(document, dict | list):
            walked, changed = _walk(document, 0, True)
            return json.dumps(walked) if changed else text
    return scrub_pii(text)


# --------------------------------------------------------------------------------------------------
# Redaction of recorded values
# --------------------------------------------------------------------------------------------------


def redact(value: Any, mode: RedactionMode, max_chars: int, scrub: bool) -> tuple[Any, bool]:
    """``value`` as ``mode`` records it (module docstring), and whether anything was changed or left
    out. ``value`` is a string or JSON-able (pydantic models are dumped; other objects become their
    ``str``); ``None`` is recorded as ``None`` in every mode."""
    if value is None:
        return None, False
    if mode == "drop":
        return None, True
    if mode == "hash":
        walked, _ = _walk(value, 0, scrub)
        digest = hashlib.sha256(canonical_text(walked).encode("utf-8", "surrogatepass")).hexdigest()
        return HASH_PREFIX + digest, True
    if mode == "full":
        return _walk(value, 0, scrub)
    if mode == "truncate":
        return _truncate(value, max_chars, scrub)
    raise ValueError(f"unknown redaction mode {mode!r}")


def canonical_text(value: Any) -> str:
    """A string as is; anything else as compact JSON with sorted keys (non-JSON types as ``str``)."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default
        )
    except (TypeError, ValueError, RecursionError):  # mixed key types, NaN, too deep: walk it first
        walked, _ = _walk(value, 0, False)
        return json.dumps(walked, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _json_default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def _truncate(value: Any, max_chars: int, scrub: bool) -> tuple[Any, bool]:
    text = value if isinstance(value, str) else canonical_text(value)
    if len(text) <= max_chars:
        if isinstance(value, str):
            scrubbed = scrub_pii(value) if scrub else value
            return scrubbed, scrubbed != value
        return _walk(value, 0, scrub)
    window = text[: max_chars + SCRUB_LOOKAHEAD_CHARS]
    if scrub:
        window = scrub_pii(window)
    return window[:max_chars] + TRUNCATION_MARK.format(omitted=len(text) - max_chars), True


def _walk(value: Any, depth: int, scrub: bool) -> tuple[Any, bool]:
    """``value`` as JSON types, strings scrubbed and secret-named keys' values replaced."""
    if isinstance(value, str):
        if not scrub:
            return value, False
        scrubbed = scrub_pii(value)
        return scrubbed, scrubbed != value
    if value is None or isinstance(value, bool):
        return value, False
    if isinstance(value, int | float):
        return _number(value, scrub)
    if depth >= MAX_DEPTH:
        return TOO_DEEP, True
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, Mapping):
        return _walk_mapping(value, depth, scrub)
    if isinstance(value, list | tuple | set | frozenset):
        items = [_walk(item, depth + 1, scrub) for item in value]
        return [item for item, _ in items], any(changed for _, changed in items)
    return _walk(str(value), depth, scrub)


def _number(value: int | float, scrub: bool) -> tuple[Any, bool]:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value), True  # NaN and infinities are not JSON
    if scrub and isinstance(value, int) and abs(value) >= 10**12:  # could be a card or phone number
        text = str(value)
        scrubbed = scrub_pii(text)
        if scrubbed != text:
            return scrubbed, True
    return value, False


def _walk_mapping(value: Mapping[Any, Any], depth: int, scrub: bool) -> tuple[dict[str, Any], bool]:
    out: dict[str, Any] = {}
    changed = False
    for raw_key, item in value.items():
        key, key_changed = _walk(raw_key if isinstance(raw_key, str) else str(raw_key), depth, scrub)
        changed |= key_changed
        if scrub and _is_secret_value(key, item):
            new, item_changed = SECRET, True
        else:
            new, item_changed = _walk(item, depth + 1, scrub)
        changed |= item_changed
        unique = key
        n = 2
        while unique in out:  # two keys scrubbed to the same placeholder
            unique = f"{key}#{n}"
            n += 1
        out[unique] = new
    return out, changed


def _is_secret_value(key: str, item: Any) -> bool:
    if item is None or isinstance(item, bool) or item == "" or len(key) > _MAX_KEY_NAME_CHARS:
        return False
    return _SECRET_KEY_NAME.search(key) is not None
