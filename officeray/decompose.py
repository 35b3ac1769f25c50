"""The embedded decomposer: deterministic rules that split an explicitly multi-part request into
subtasks (:class:`~officeray.contracts.Decomposition`), and the placeholders of their dependencies.

Only requests that *say* they have parts are split:

* numbered parts, inline or one per line: ``1) … 2) … 3) …``, ``1. …`` (numbered from 1, in order);
* bullet lines: ``- …``, ``* …``, ``• …`` (each line one part; a line without a marker continues
  the part before);
* labelled parts: ``Part A: … Part B: …`` (or ``Part 1: …``).

Text before the first part is kept only as an introduction ending with ``:`` (dropped); any other
text there, a request with code in it (a ``` fence or ``python:``), fewer than two parts, an empty
part or more than :data:`~officeray.contracts.MAX_SUBTASKS` parts: the request stays **one**
subtask, and the task runs as one plan (``A; then B`` and ``A and also B`` stay one: the planner
makes them DAG stages of one plan).

A part that refers to an earlier one ("the result of part 1", "the output of step 2", "(1)",
"part A") depends on it; the reference is written into the part's description as the placeholder
``{result:<subtask_id>}``, which :func:`substitute_results` replaces with that subtask's final result
before the child task starts.

Pure functions, no I/O: the orchestrator's process runs them (no Serve hop); the ``embedded`` tier of
the ``decomposer`` role answers with them too.
"""

from __future__ import annotations

import json
import re
from typing import Any

from officeray.contracts import (
    MAX_SUBTASKS,
    Decomposed,
    DecomposeRequest,
    Decomposition,
    Subtask,
)

MAX_SUBSTITUTED_RESULT_CHARS = 2_000
"""Longest dependency result written into a child's description (cut with a marker past it)."""

RESULT_PLACEHOLDER = "{{result:{subtask_id}}}"
"""What stands for a dependency's result in a subtask description."""

PLACEHOLDER_RE = re.compile(r"\{result:(?P<subtask_id>[A-Za-z0-9_-]{1,16})\}")

_CODE_RE = re.compile(r"```|\bpython\s*:", re.IGNORECASE)
_INLINE_NUMBER_RE = re.compile(r"(?:^|(?<=\s))(?P<label>\d{1,2})\)\s+")
_LINE_NUMBER_RE = re.compile(r"^[ \t]*(?P<label>\d{1,2})[.)][ \t]+", re.MULTILINE)
_BULLET_RE = re.compile(r"^[ \t]*[-*•][ \t]+", re.MULTILINE)
_PART_RE = re.compile(r"(?:^|(?<=\s))part[ \t]+(?P<label>[A-Za-z]|\d{1,2})[ \t]*:[ \t]*", re.IGNORECASE)
_TRAILING_JOINER_RE = re.compile(r"(?:[\s,;]+(?:and|then|and\s+then))?[\s,;]*$", re.IGNORECASE)

_REFERENCE_RE = re.compile(
    r"(?:(?:the\s+)?(?:result|output|answer|value)\s+(?:of|from)\s+(?:the\s+)?"
    r"(?:(?:part|step|item|subtask)\s+(?P<a>[A-Za-z]\b|\d{1,2}\b)|\((?P<b>\d{1,2})\)))"
    r"|\((?P<c>\d{1,2})\)"
    r"|\b(?:part|step)\s+(?P<d>\d{1,2}\b|[A-Z]\b)",
    re.IGNORECASE,
)
"""A reference to another part: "the result of part 1", "output of step 2", "(1)", "part A"."""

TOOL_HINTS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"\b(?:compute|calculate|evaluate|what\s+is|multiply|add|divide)\b", re.I),
        "math_calculator",
    ),
    (re.compile(r"\bcall\s+(?:sequence|path|chain)\b", re.I), "code_analyzer"),
    (re.compile(r"\b(?:file|files|folder|directory)\b", re.I), "file_operations"),
    (re.compile(r"\b(?:fetch|download)\b|https?://", re.I), "http_client"),
    (re.compile(r"\b(?:search|look\s+up)\b", re.I), "web_search"),
    (re.compile(r"\b(?:wait|sleep|pause)\b", re.I), "sleep"),
    (re.compile(r"\b(?:summari[sz]e|keywords|count\s+words|classify|ask\s+the\s+model)\b", re.I), "ai_tool"),
)
"""Words that suggest a tool (a part's ``tool_hints``; informational)."""


def decompose_rules(description: str, allowed_tools: list[str] | None = None) -> Decomposition:
    """The subtasks of ``description`` by the rules of this module (pure and deterministic); one
    subtask, the description itself, unless the request is explicitly multi-part."""
    one = Decomposition(subtasks=[Subtask(subtask_id="s1", description=description)])
    parts = _parts(description)
    if parts is None:
        return one
    labels, texts = parts
    ids = {label.lower(): f"s{i}" for i, label in enumerate(labels, start=1)}
    subtasks = []
    for index, text in enumerate(texts, start=1):
        subtask_id = f"s{index}"
        earlier = {label: sid for label, sid in ids.items() if int(sid[1:]) < index}
        rewritten, dependencies = _with_placeholders(text, earlier)
        subtasks.append(
            Subtask(
                subtask_id=subtask_id,
                description=rewritten,
                dependencies=dependencies,
                tool_hints=_tool_hints(text, allowed_tools),
            )
        )
    return Decomposition(subtasks=subtasks)


def _parts(description: str) -> tuple[list[str], list[str]] | None:
    """``(labels, texts)`` of an explicitly multi-part request; None when it is one part."""
    if _CODE_RE.search(description):
        return None
    for found in (_numbered_lines(description), _bullets(description), _labelled(description)):
        if found is not None:
            return found
    return None


def _accept(preamble: str, labels: list[str], texts: list[str]) -> tuple[list[str], list[str]] | None:
    """The parts when they are a clean enumeration: an introduction ending with ``:`` at most, at
    least two parts, none empty, not too many."""
    intro = preamble.strip()
    if intro and not intro.endswith(":"):
        return None
    cleaned = [_TRAILING_JOINER_RE.sub("", t.strip()).strip() for t in texts]
    if len(cleaned) < 2 or len(cleaned) > MAX_SUBTASKS or any(not t for t in cleaned):
        return None
    return labels, cleaned


def _split_at(description: str, matches: list[re.Match[str]]) -> tuple[str, list[str], list[str]]:
    preamble = description[: matches[0].start()]
    labels = [m.group("label") if "label" in m.groupdict() else str(i) for i, m in enumerate(matches, 1)]
    ends = [m.start() for m in matches[1:]] + [len(description)]
    texts = [description[m.end() : end] for m, end in zip(matches, ends, strict=True)]
    return preamble, labels, texts


def _numbered_lines(description: str) -> tuple[list[str], list[str]] | None:
    """``1. …`` / ``1) …`` lines, else ``1) … 2) …`` inline; numbered 1, 2, 3 … in order."""
    for pattern in (_LINE_NUMBER_RE, _INLINE_NUMBER_RE):
        matches = _in_sequence(
            [m for m in pattern.finditer(description) if _outside_parentheses(description, m.start())],
            numeric=True,
        )
        if matches:
            found = _accept(*_split_at(description, matches))
            if found is not None:
                return found
    return None


def _bullets(description: str) -> tuple[list[str], list[str]] | None:
    matches = list(_BULLET_RE.finditer(description))
    if len(matches) < 2:
        return None
    return _accept(*_split_at(description, matches))


def _labelled(description: str) -> tuple[list[str], list[str]] | None:
    matches = list(_PART_RE.finditer(description))
    numeric = bool(matches) and matches[0].group("label").isdigit()
    matches = _in_sequence(matches, numeric=numeric)
    if not matches:
        return None
    return _accept(*_split_at(description, matches))


def _in_sequence(matches: list[re.Match[str]], *, numeric: bool) -> list[re.Match[str]]:
    """The markers labelled 1, 2, 3 … (or A, B, C …) in order from the first; others are text."""
    picked: list[re.Match[str]] = []
    for match in matches:
        label = match.group("label")
        expected = str(len(picked) + 1) if numeric else chr(ord("a") + len(picked))
        if label.lower() == expected:
            picked.append(match)
    return picked if len(picked) >= 2 else []


def _outside_parentheses(text: str, at: int) -> bool:
    """Whether position ``at`` is outside any open parenthesis (``(3 + 2) * 4`` is no part 2)."""
    return text[:at].count("(") <= text[:at].count(")")


def _with_placeholders(text: str, earlier: dict[str, str]) -> tuple[str, list[str]]:
    """``text`` with each reference to an earlier part replaced by its placeholder, and the parts it
    depends on (in order)."""
    dependencies: list[str] = []

    def replace(match: re.Match[str]) -> str:
        label = next(g for g in match.groups() if g is not None).lower()
        subtask_id = earlier.get(label)
        if subtask_id is None:
            return match.group(0)  # not an earlier part: plain text
        if subtask_id not in dependencies:
            dependencies.append(subtask_id)
        return RESULT_PLACEHOLDER.format(subtask_id=subtask_id)

    rewritten = _REFERENCE_RE.sub(replace, text)
    return rewritten, sorted(dependencies, key=lambda s: int(s[1:]))


def _tool_hints(text: str, allowed_tools: list[str] | None) -> list[str]:
    hints = [tool for pattern, tool in TOOL_HINTS if pattern.search(text)]
    return [t for t in dict.fromkeys(hints) if allowed_tools is None or t in allowed_tools]


def result_text(value: Any) -> str:
    """A dependency's result as a child's description shows it: a scalar as text, anything else as
    compact JSON; cut at :data:`MAX_SUBSTITUTED_RESULT_CHARS`."""
    if isinstance(value, str):
        text = value
    elif value is None or isinstance(value, bool | int | float):
        text = json.dumps(value)
    else:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    if len(text) > MAX_SUBSTITUTED_RESULT_CHARS:
        text = text[:MAX_SUBSTITUTED_RESULT_CHARS] + "…[cut]"
    return text


def substitute_results(description: str, results: dict[str, Any]) -> str:
    """``description`` with each ``{result:<id>}`` of a subtask in ``results`` replaced by its result
    (:func:`result_text`); a placeholder of another id stays as it is."""

    def replace(match: re.Match[str]) -> str:
        subtask_id = match.group("subtask_id")
        return result_text(results[subtask_id]) if subtask_id in results else match.group(0)

    return PLACEHOLDER_RE.sub(replace, description)


class EmbeddedDecomposer:
    """The workflow's Decomposer port by the rules of this module, in process (what the
    orchestrator uses when ``models.decomposer`` is the embedded tier only). Picklable."""

    async def decompose(self, request: DecomposeRequest) -> Decomposed:
        return Decomposed(decomposition=decompose_rules(request.description, request.allowed_tools))
