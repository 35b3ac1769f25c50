"""The "embedded" model tier: a deterministic planner and reviewer that need no model weights.

It understands a small set of phrasings (see :data:`UNDERSTOOD_PHRASINGS`) and refuses anything
else with a :class:`~officeray.errors.PlanningError` that says what it understands and how to
configure a real model. It never guesses: one clause it cannot read fails the whole task.

Phrasings (case-insensitive; quotes and backticks around names, paths and expressions are dropped)::

    Trace the call sequence from A to B in FOLDER      -> code_analyzer
    Compute EXPR / Calculate EXPR / What is EXPR        -> math_calculator
    Run python: <code on the next lines>  or  ```python ... ```   -> python_exec
    Wait N seconds / Sleep N ms / Pause for N s         -> sleep

Clauses joined by ``then`` run in sequence (each stage depends on every step of the stage before),
clauses joined by ``and also`` run in parallel. In a math clause after the first stage, ``ans``
(or ``previous`` / ``result``) is the value of the previous stage's math step.

The decision logic is in the pure functions :func:`plan_task` and :func:`review_results`; the
classes are thin async wrappers with the interface the other tiers share.

Why one file of this length: the planner's phrasing grammar and the reviewer share the tool
constants and the wording of feedback both sides must agree on (timeouts, bad input, names).
"""

from __future__ import annotations

import ast
import math
import re
import textwrap
from dataclasses import dataclass, field
from typing import Any

from officeray.contracts import (
    MAX_STEP_TIMEOUT_SECONDS,
    MAX_STEPS_PER_PLAN,
    TRANSIENT_ERROR_TYPES,
    ErrorType,
    Plan,
    PlanMetadata,
    PlanRequest,
    PlanStep,
    Review,
    ReviewRequest,
    ReviewVerdict,
    StepResult,
    StepStatus,
)
from officeray.errors import PlanningError
from officeray.expectations import unmet_expectation
from officeray.limits import MAX_EXPRESSION_CHARS, MAX_PYTHON_CODE_CHARS
from officeray.review import asks_for_sign_off
from officeray.tools.builtin import BUILTIN_TOOLS
from officeray.tools.host_inputs import MAX_SLEEP_S
from tools_sandbox.host_tools.ai_answers import answer_prompt

# --------------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------------

PYTHON_EXEC = "python_exec"
CODE_ANALYZER = "code_analyzer"
MATH_CALCULATOR = "math_calculator"
SLEEP = "sleep"
FILE_OPERATIONS = "file_operations"
HTTP_CLIENT = "http_client"
WEB_SEARCH = "web_search"
AI_TOOL = "ai_tool"

MATH_TIMEOUT_SECONDS = 60
CODE_ANALYZER_TIMEOUT_SECONDS = 120
PYTHON_EXEC_TIMEOUT_SECONDS = 120
SLEEP_TIMEOUT_SECONDS = 60
FILE_OPERATIONS_TIMEOUT_SECONDS = 60
HTTP_CLIENT_TIMEOUT_SECONDS = 60
WEB_SEARCH_TIMEOUT_SECONDS = 60
AI_TOOL_TIMEOUT_SECONDS = 120
SLEEP_TIMEOUT_MARGIN_SECONDS = 10
"""A sleep step's timeout is at least its wait plus this margin."""

STEP_TIMEOUT_SECONDS: dict[str, int] = {
    MATH_CALCULATOR: MATH_TIMEOUT_SECONDS,
    CODE_ANALYZER: CODE_ANALYZER_TIMEOUT_SECONDS,
    PYTHON_EXEC: PYTHON_EXEC_TIMEOUT_SECONDS,
    SLEEP: SLEEP_TIMEOUT_SECONDS,
    FILE_OPERATIONS: FILE_OPERATIONS_TIMEOUT_SECONDS,
    HTTP_CLIENT: HTTP_CLIENT_TIMEOUT_SECONDS,
    WEB_SEARCH: WEB_SEARCH_TIMEOUT_SECONDS,
    AI_TOOL: AI_TOOL_TIMEOUT_SECONDS,
}
"""The timeout each tool's step gets in a first plan."""

ESTIMATED_STEP_SECONDS: dict[str, float] = {
    MATH_CALCULATOR: 0.5,
    CODE_ANALYZER: 5.0,
    PYTHON_EXEC: 3.0,
    SLEEP: 0.0,  # plus the wait itself (see _Clause.seconds)
    FILE_OPERATIONS: 0.5,
    HTTP_CLIENT: 2.0,
    WEB_SEARCH: 1.0,
    AI_TOOL: 2.0,
}
"""Rough run time of one step, summed along the critical path for ``estimated_duration_seconds``."""

PLAN_CONFIDENCE = 1.0

ANS_ALIASES = frozenset({"ans", "previous", "result"})
"""Identifiers that, in a later math clause, mean the previous stage's math value."""

TIMEOUT_FEEDBACK_MARKER = "step {step_id} timed out"
"""What the planner looks for in feedback to double a step's timeout."""

TIMEOUT_FEEDBACK = TIMEOUT_FEEDBACK_MARKER + " after {timeout_seconds}s"
"""The reviewer's wording for a timed-out step (starts with :data:`TIMEOUT_FEEDBACK_MARKER`)."""

BAD_INPUT_FEEDBACK_MARKER = f"failed ({ErrorType.BAD_INPUT.value})"
"""How the reviewer words a step refused for bad input (the planner must change something)."""

NAME_FEEDBACK_RE = re.compile(
    r"(?P<role>start_func|end_func) '(?P<name>[^']+)' (?:is ambiguous: it matches \d+ functions: "
    r"(?P<candidates>.+?)(?:, and \d+ more)?(?:\.\s|\.?$)"
    r"|not found among [^;]*; did you mean: (?P<suggestions>[^?]+)\?)"
)
"""The code analyzer's wording of an ambiguous or unknown function name, with the names it lists."""

_CANDIDATE_NAME_RE = re.compile(r"([^\s,()]+) \([^()]*\)")
"""One ``qualified.name (file.py:LINE)`` of an ambiguous-name message."""

TIMEOUT_FEEDBACK_RE = re.compile(
    r"\b"
    + re.escape(TIMEOUT_FEEDBACK_MARKER).replace(re.escape("{step_id}"), r"(?P<step_id>[A-Za-z0-9_.-]+)")
    + r"\b",
    re.IGNORECASE,
)
"""Finds :data:`TIMEOUT_FEEDBACK_MARKER` in a feedback string; group ``step_id``."""

MAX_FEEDBACK_MESSAGE_CHARS = 600
"""Longest tool error message quoted in review feedback (head and tail are kept)."""

CONFIGURE_MODEL_HINT = (
    "To plan other tasks, set models.planner in the config file (--config FILE or OFFICERAY_CONFIG) "
    "to an openai-compatible or vllm tier."
)

UNDERSTOOD_PHRASINGS: tuple[tuple[str, str], ...] = (
    (
        "Trace the call sequence from A to B in FOLDER (also: call path, call chain)",
        "Trace the call sequence from main to save_report in examples/sample_project",
    ),
    (
        "Analyze the Python files in FOLDER and create a call sequence where the start function is A "
        "and the end function is B",
        "Analyze the Python files in the ./src folder and create a call sequence where the start "
        "function is main and the end function is process_data",
    ),
    (
        "Read the file PATH / List the files in FOLDER / Write 'TEXT' to the file PATH / "
        "Delete the file PATH",
        "List the files in .",
    ),
    ("Fetch URL / Download URL", "Fetch https://example.com/"),
    ("Search for WORDS / Search the docs for WORDS", "Search the docs for retry policy"),
    (
        "Summarize: TEXT / Keywords: TEXT / Count words: TEXT / Classify sentiment: TEXT / "
        "Ask the model: PROMPT",
        "Summarize: Ray runs tasks. Serve serves models.",
    ),
    ("Compute EXPR / Calculate EXPR / What is EXPR", "What is 2.5 * 4?"),
    (
        "Run python: followed by code on the next lines, or a ```python fenced block",
        "Run python:\nprint(6 * 7)",
    ),
    ("Wait N seconds / Sleep N ms / Pause for N s", "Wait 0.5 seconds and also wait 500 ms"),
    ("A then B (in sequence; a later math step may use ans)", "Compute 6*7 then calculate ans / 2"),
    ("A and also B (in parallel)", "Compute 1+1 and also compute 2+2"),
)
"""The phrasings listed in the planner's refusal, each with one short example."""

_PYTHON_FENCE_LANGS = frozenset({"", "python", "python3", "py", "py3"})
_FENCE = "```"
_PLACEHOLDER_RE = re.compile(r"\x00(\d+)\x00")

_UNFENCED_RUN_PYTHON_RE = re.compile(
    r"\b(?:run|execute)\s+python(?:\s+(?:code|program|script))?\s*:", re.IGNORECASE
)
# Possessive quantifiers (``*+``): a long run of spaces must not make these backtrack (ReDoS).
_THEN_SPLIT_RE = re.compile(r"\s*+[;,.]?\s*+\b(?:and\s++)?then\b[\s,:]*+", re.IGNORECASE)
_AND_ALSO_SPLIT_RE = re.compile(r"\s*+[;,]?\s*+\band\s++also\b[\s,:]*+", re.IGNORECASE)
_LEADING_FILLER_RE = re.compile(r"^(?:(?:please|first|next|finally)\b[\s,:]*)+", re.IGNORECASE)

_PYTHON_CLAUSE_RE = re.compile(
    r"^(?:(?:run|execute)(?:\s+(?:this|the\s+following))?(?:\s+python)?(?:\s+(?:code|program|script))?\s*:?\s*)?"
    r"\x00(?P<index>\d+)\x00[\s.]*$",
    re.IGNORECASE,
)
_TRACE_CLAUSE_RE = re.compile(
    r"^(?:trace|find|show|get|give|create|build|generate|produce|make|what\s+is|what's)\s+(?:me\s+)?"
    r"(?:the\s+|a\s+)?"
    r"call\s+(?:sequence|path|chain)\s+from\s+(?P<start>\S.*?)\s+to\s+(?P<end>\S.*?)\s+"
    r"in(?:side)?\s+(?:the\s+(?:folder|directory)\s+)?(?P<folder>\S.*)$",
    re.IGNORECASE | re.DOTALL,
)
_ANALYZE_CLAUSE_RE = re.compile(
    r"^(?:analy[sz]e|scan|read|parse|look\s+at)\s+(?:all\s+)?(?:of\s+)?(?:the\s+)?(?:python\s+)?"
    r"(?:files|code|sources?|modules)\s+(?:in|under|of)\s+(?:the\s+(?:folder\s+|directory\s+)?)?"
    r"(?P<folder>\S.*?)(?:\s+(?:folder|directory))?\s*,?\s+and\s+(?:then\s+)?"
    r"(?:create|build|generate|produce|make|find|trace|show|give)\s+(?:me\s+)?(?:a|the)\s+"
    r"call\s+(?:sequence|path|chain)\s+"
    r"(?:where\s+the\s+start(?:ing)?\s+function\s+is\s+(?P<start>\S.*?)\s*,?\s+and\s+the\s+"
    r"end(?:ing)?\s+function\s+is\s+(?P<end>\S.*?)"
    r"|from\s+(?P<start_from>\S.*?)\s+to\s+(?P<end_to>\S.*?))$",
    re.IGNORECASE | re.DOTALL,
)
"""The issue tracker's wording of a call-sequence task: the folder first, then the two functions."""
_FILE_READ_RE = re.compile(
    r"^(?:read|show|open|cat|print)\s+(?:me\s+)?(?:the\s+)?(?:contents\s+of\s+(?:the\s+)?)?file\s+(?P<path>\S.*)$",
    re.IGNORECASE | re.DOTALL,
)
_FILE_LIST_RE = re.compile(
    r"^list\s+(?P<all>all\s+)?(?:the\s+)?(?:files|entries|contents)\s+(?:in|of|under)\s+(?:the\s+)?"
    r"(?:(?:folder|directory)\s+)?(?P<path>\S.*?)(?:\s+(?:folder|directory))?"
    r"(?P<recursive>\s+recursively)?$",
    re.IGNORECASE | re.DOTALL,
)
_FILE_WRITE_RE = re.compile(
    r"^(?:write|save|store)\s+(?P<quote>['\"`])(?P<content>.*?)(?P=quote)\s+(?:to|into|in)\s+(?:the\s+)?"
    r"(?:file\s+)?(?P<path>\S.*)$",
    re.IGNORECASE | re.DOTALL,
)
_FILE_DELETE_RE = re.compile(
    r"^(?:delete|remove)\s+(?:the\s+)?(?P<kind>file|folder|directory)\s+(?P<path>\S.*)$",
    re.IGNORECASE | re.DOTALL,
)
_FETCH_CLAUSE_RE = re.compile(
    r"^(?:fetch|download|get|retrieve)\s+(?:the\s+)?(?:(?:page|url|document)\s+(?:at\s+)?)?"
    r"(?P<url>https?://\S+)$",
    re.IGNORECASE,
)
_SEARCH_CLAUSE_RE = re.compile(
    r"^(?:search|look\s+up)\s+(?:(?:the\s+)?(?:web|docs|documents|documentation|internet)\s+)?"
    r"(?:for\s+)?(?P<query>\S.*)$",
    re.IGNORECASE | re.DOTALL,
)
_AI_CLAUSE_RE = re.compile(
    r"^(?:(?:ask\s+the\s+(?:model|ai)|prompt)\s*:\s*(?P<prompt>\S.*)"
    r"|(?P<form>(?:summari[sz]e|keywords|count\s+words|classify\s+sentiment)(?:\s+\d+)?\s*:\s*\S.*))$",
    re.IGNORECASE | re.DOTALL,
)
_MATH_CLAUSE_RE = re.compile(
    r"^(?:compute|calculate|evaluate|what\s+is|what's)\s+(?:the\s+value\s+of\s+)?(?P<expr>\S.*)$",
    re.IGNORECASE | re.DOTALL,
)
_SLEEP_CLAUSE_RE = re.compile(
    r"^(?:wait|sleep|pause)\s+(?:for\s+)?(?P<amount>\d{1,6}(?:\.\d{1,6})?)\s*"
    r"(?P<unit>ms|milliseconds?|s|secs?|seconds?)[\s.]*$",
    re.IGNORECASE,
)
_FUNC_NAME_RE = re.compile(r"^[^\s'\"`\x00]+$")
_QUOTES = "'\"`"
_TRAILING_PUNCT = "?!;,:"

# --------------------------------------------------------------------------------------------------
# Planner
# --------------------------------------------------------------------------------------------------


@dataclass
class _Clause:
    """One understood clause: the tool, its inputs, and (math only) the ans-like names it uses."""

    action: str
    inputs: dict[str, Any]
    text: str
    previous_names: list[str] = field(default_factory=list)
    seconds: float = 0.0
    """How long the step waits by itself (sleep only): its duration estimate and timeout floor."""


def _not_understood(detail: str) -> PlanningError:
    lines = [f"The embedded planner could not understand the task: {detail}", "It understands:"]
    for phrasing, example in UNDERSTOOD_PHRASINGS:
        lines.append(f"  - {phrasing}; e.g. {example!r}")
    lines.append(CONFIGURE_MODEL_HINT)
    return PlanningError("\n".join(lines))


def _shorten(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _normalize_code(raw: str) -> str:
    lines = raw.splitlines()
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    return textwrap.dedent("\n".join(lines)).rstrip() + ("\n" if lines else "")


def _fence_body(raw: str) -> str:
    """The code of a fenced block (``raw`` is what lies between the fences)."""
    first, newline, rest = raw.partition("\n")
    tag = first.strip()
    if newline and re.fullmatch(r"[A-Za-z0-9_+.-]*", tag):
        if tag.lower() not in _PYTHON_FENCE_LANGS:
            raise _not_understood(f"a fenced code block in {tag!r} cannot be run; only python code can")
        return _normalize_code(rest)
    return _normalize_code(raw)  # inline fence: ```print(1)```


def _extract_code(text: str) -> tuple[str, list[str]]:
    """Replace code blocks with ``\\x00N\\x00`` placeholders so that splitting never cuts code.

    A fenced block ends at its closing fence (or the end of the text); an unfenced
    ``Run python:`` block runs to the end of the text.
    """
    codes: list[str] = []
    parts: list[str] = []
    pos = 0
    while pos < len(text):
        fence = text.find(_FENCE, pos)
        marker = _UNFENCED_RUN_PYTHON_RE.search(text, pos)
        if (
            marker is not None
            and (fence == -1 or marker.start() < fence)
            and not text[marker.end() :].lstrip().startswith(_FENCE)
        ):
            parts.append(text[pos : marker.end()] + f" \x00{len(codes)}\x00")
            codes.append(_normalize_code(text[marker.end() :]))
            pos = len(text)
            break
        if fence == -1:
            break
        close = text.find(_FENCE, fence + len(_FENCE))
        end = len(text) if close == -1 else close
        parts.append(text[pos:fence] + f"\x00{len(codes)}\x00")
        codes.append(_fence_body(text[fence + len(_FENCE) : end]))
        pos = len(text) if close == -1 else close + len(_FENCE)
    parts.append(text[pos:])
    return "".join(parts), codes


def _display(clause: str, codes: list[str]) -> str:
    def code(match: re.Match[str]) -> str:
        body = codes[int(match.group(1))]
        return f"```{body}```" if body else ""

    return _shorten(_PLACEHOLDER_RE.sub(code, clause))


def _strip_trailing_punct(value: str, *, periods: bool = True) -> str:
    """Drop sentence punctuation at the end; periods too unless the value is a path of dots (".", "../")."""
    previous = None
    while value != previous:
        previous = value
        value = value.strip().rstrip(_TRAILING_PUNCT).rstrip()
        if periods and value.rstrip(".") and not re.fullmatch(r"[./\\]+", _unquote(value)):
            value = value.rstrip(".")
    return value


def _unquote(value: str) -> str:
    value = value.strip()
    while len(value) >= 2 and value[0] in _QUOTES and value[-1] == value[0]:
        value = value[1:-1].strip()
    return value


def _clean_value(value: str) -> str:
    return _unquote(_strip_trailing_punct(value))


def _clean_func_name(value: str) -> str:
    name = _clean_value(value)
    if name.endswith("()"):
        name = name[:-2]
    return _unquote(name)


_FOLDER_WORDS_RE = re.compile(
    r"^(?:the\s+)?(?:(?:folder|directory)\s+)?(?P<folder>.+?)(?:\s+(?:folder|directory))?$"
)


def _clean_folder(value: str) -> str:
    """``the ./src folder`` -> ``./src``."""
    cleaned = _clean_value(value)
    match = _FOLDER_WORDS_RE.match(cleaned)
    return _unquote(match.group("folder")) if match else cleaned


def _parse_trace(match: re.Match[str], shown: str) -> _Clause:
    groups = match.groupdict()
    start = _clean_func_name(groups.get("start") or groups.get("start_from") or "")
    end = _clean_func_name(groups.get("end") or groups.get("end_to") or "")
    folder = _clean_folder(match.group("folder"))
    for what, name in (("start function", start), ("end function", end)):
        if not _FUNC_NAME_RE.match(name):
            raise _not_understood(f"in {shown!r}, the {what} {name!r} is not a function name")
    if not folder or "\x00" in folder:
        raise _not_understood(f"in {shown!r}, the folder is missing")
    return _Clause(CODE_ANALYZER, {"folder": folder, "start_func": start, "end_func": end}, shown)


def _parse_math(match: re.Match[str], shown: str) -> _Clause:
    expr = _clean_value(match.group("expr")).rstrip("= ").strip()
    if not expr or "\x00" in expr:
        raise _not_understood(f"{shown!r} does not contain an arithmetic expression")
    if len(expr) > MAX_EXPRESSION_CHARS:
        raise _not_understood(f"the expression in {shown!r} is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:
        raise _not_understood(f"{expr!r} (in {shown!r}) is not an arithmetic expression") from None
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    previous = sorted(name for name in names if name.lower() in ANS_ALIASES)
    return _Clause(MATH_CALCULATOR, {"expression": expr}, shown, previous_names=previous)


def _parse_sleep(match: re.Match[str], shown: str) -> _Clause:
    amount = float(match.group("amount"))
    seconds = amount / 1000 if match.group("unit").lower().startswith("m") else amount
    if seconds > MAX_SLEEP_S:
        raise _not_understood(f"{shown!r} waits longer than the sleep tool's {MAX_SLEEP_S:g} s")
    return _Clause(SLEEP, {"seconds": seconds}, shown, seconds=seconds)


def _parse_file_clause(text: str, shown: str) -> _Clause | None:
    """``file_operations``: read, list, write or delete a path of the task workspace."""
    if (read := _FILE_READ_RE.match(text)) is not None:
        return _Clause(
            FILE_OPERATIONS, {"operation": "read", "path": _clean_value(read.group("path"))}, shown
        )
    if (listing := _FILE_LIST_RE.match(text)) is not None:
        inputs: dict[str, Any] = {"operation": "list", "path": _clean_folder(listing.group("path"))}
        if listing.group("recursive") or listing.group("all"):
            inputs["recursive"] = True
        return _Clause(FILE_OPERATIONS, inputs, shown)
    if (write := _FILE_WRITE_RE.match(text)) is not None:
        inputs = {
            "operation": "write",
            "path": _clean_value(write.group("path")),
            "content": write.group("content"),
        }
        return _Clause(FILE_OPERATIONS, inputs, shown)
    if (delete := _FILE_DELETE_RE.match(text)) is not None:
        inputs = {"operation": "delete", "path": _clean_value(delete.group("path"))}
        if delete.group("kind").lower() != "file":
            inputs["recursive"] = True
        return _Clause(FILE_OPERATIONS, inputs, shown)
    return None


def _parse_fetch(text: str, shown: str) -> _Clause | None:
    """``http_client``: GET one http(s) URL (the SSRF guard and allowlist decide whether it may)."""
    fetch = _FETCH_CLAUSE_RE.match(text)
    if fetch is None:
        return None
    url = _strip_trailing_punct(fetch.group("url"))
    return _Clause(HTTP_CLIENT, {"url": url, "method": "GET"}, shown)


def _parse_ai(text: str, shown: str) -> _Clause | None:
    """``ai_tool``: the ai_tool role's prompt forms, or ``Ask the model: PROMPT``."""
    ai = _AI_CLAUSE_RE.match(text)
    if ai is None:
        return None
    prompt = (ai.group("prompt") or ai.group("form") or "").strip()
    if "\x00" in prompt:
        raise _not_understood(f"{shown!r} mixes a code block into a prompt")
    return _Clause(AI_TOOL, {"prompt": prompt}, shown)


def _parse_clause(clause: str, codes: list[str]) -> _Clause:
    shown = _display(clause, codes)
    # Periods stay for now: "in ." names a folder. Each field drops its own below.
    text = _strip_trailing_punct(_LEADING_FILLER_RE.sub("", clause.strip()), periods=False)
    if not text:
        raise _not_understood(f"the task has an empty part (around 'then' or 'and also'): {shown!r}")
    python = _PYTHON_CLAUSE_RE.match(text)
    if python is not None:
        code = codes[int(python.group("index"))]
        if not code.strip():
            raise _not_understood(f"{shown!r} has no python code to run")
        if len(code) > MAX_PYTHON_CODE_CHARS:
            raise _not_understood(f"the python code is longer than {MAX_PYTHON_CODE_CHARS} characters")
        return _Clause(PYTHON_EXEC, {"code": code}, shown)
    trace = _TRACE_CLAUSE_RE.match(text) or _ANALYZE_CLAUSE_RE.match(text)
    if trace is not None:
        return _parse_trace(trace, shown)
    for parse in (_parse_file_clause, _parse_fetch, _parse_ai):
        understood = parse(text, shown)
        if understood is not None:
            return understood
    math_match = _MATH_CLAUSE_RE.match(text)
    if math_match is not None:
        return _parse_math(math_match, shown)
    sleep = _SLEEP_CLAUSE_RE.match(text)
    if sleep is not None:
        return _parse_sleep(sleep, shown)
    search = _SEARCH_CLAUSE_RE.match(text)
    if search is not None:
        query = _clean_value(search.group("query"))
        if query and "\x00" not in query:
            return _Clause(WEB_SEARCH, {"query": query}, shown)
    raise _not_understood(f"{shown!r} matches none of the phrasings it knows")


def _parse_stages(description: str) -> list[list[_Clause]]:
    text, codes = _extract_code(description)
    stages = []
    for stage_text in _THEN_SPLIT_RE.split(text):
        stages.append([_parse_clause(part, codes) for part in _AND_ALSO_SPLIT_RE.split(stage_text)])
    return stages


def _timed_out_step_ids(feedback: list[str]) -> set[str]:
    return {m.group("step_id") for item in feedback for m in TIMEOUT_FEEDBACK_RE.finditer(item)}


def _timeout_for(step_id: str, action: str, request: PlanRequest, timed_out: set[str]) -> int:
    """The tool's default, kept at least as high as last plan's, doubled when the step timed out."""
    default = STEP_TIMEOUT_SECONDS[action]
    previous = None
    if request.previous_plan is not None:
        previous = next(
            (s for s in request.previous_plan.steps if s.step_id == step_id and s.action == action), None
        )
    base = default if previous is None else max(default, previous.timeout_seconds)
    if step_id in timed_out:
        base = min(base * 2, MAX_STEP_TIMEOUT_SECONDS)
    return base


def _math_inputs(clause: _Clause, previous_stage: list[tuple[str, _Clause]] | None) -> dict[str, Any]:
    if not clause.previous_names:
        return clause.inputs
    name = clause.previous_names[0]
    if previous_stage is None:
        raise PlanningError(
            f"the math step {clause.text!r} uses {name!r} (the previous result), but no step comes "
            "before it; use 'then' to run it after a math step"
        )
    math_ids = [sid for sid, c in previous_stage if c.action == MATH_CALCULATOR]
    if len(math_ids) != 1:
        raise PlanningError(
            f"the math step {clause.text!r} uses {name!r} (the previous result), but the stage "
            f"before it has {len(math_ids)} math steps; {name!r} needs exactly one"
        )
    variables = {n: {"from_step": math_ids[0], "path": "value"} for n in clause.previous_names}
    return {**clause.inputs, "variables": variables}


def _check_allowed(stages: list[list[_Clause]], allowed: list[str]) -> None:
    for clause in (c for stage in stages for c in stage):
        if clause.action not in allowed:
            shown = ", ".join(sorted(allowed)) or "none"
            raise PlanningError(
                f"this task needs the tool {clause.action!r} (for {clause.text!r}), which is not "
                f"allowed for this task (allowed tools: {shown})"
            )


def _previous_step(step_id: str, action: str, request: PlanRequest) -> PlanStep | None:
    if request.previous_plan is None:
        return None
    return next((s for s in request.previous_plan.steps if s.step_id == step_id and s.action == action), None)


def _listed_names(match: re.Match[str]) -> list[str]:
    if match.group("candidates"):
        return _CANDIDATE_NAME_RE.findall(match.group("candidates"))
    return [name.strip() for name in match.group("suggestions").split(",") if name.strip()]


def _qualified_names(step_id: str, inputs: dict[str, Any], request: PlanRequest) -> dict[str, Any]:
    """The code analyzer's inputs, with each function name the feedback called ambiguous or unknown
    replaced by the first candidate it listed that was not tried yet. A name revised in an earlier
    round stays revised (the previous plan carries it)."""
    previous = _previous_step(step_id, CODE_ANALYZER, request)
    revised = dict(inputs)
    for role in ("start_func", "end_func"):
        tried = {str(inputs[role])}
        if previous is not None and isinstance(previous.inputs.get(role), str):
            revised[role] = previous.inputs[role]
            tried.add(previous.inputs[role])
        for item in request.feedback:
            for match in NAME_FEEDBACK_RE.finditer(item):
                if match.group("role") != role or match.group("name") != revised[role]:
                    continue
                fresh = [name for name in _listed_names(match) if name not in tried]
                if fresh:
                    revised[role] = fresh[0]
    return revised


def _check_revisable(steps: list[PlanStep], request: PlanRequest) -> None:
    """Refuse to answer the same plan to feedback on bad input: it would fail the same way."""
    if request.previous_plan is None or not any(
        BAD_INPUT_FEEDBACK_MARKER in item for item in request.feedback
    ):
        return
    before = [(s.action, s.inputs) for s in request.previous_plan.steps]
    if before == [(s.action, s.inputs) for s in steps]:
        raise PlanningError(
            "the embedded planner cannot revise the plan: the same plan would fail again; feedback: "
            + "; ".join(request.feedback)
        )


def plan_task(request: PlanRequest) -> Plan:
    """The plan for ``request`` (pure and deterministic apart from ``generated_at``).

    On a revision, feedback on a function name the code analyzer found ambiguous or unknown is acted
    on: the name becomes the first listed candidate not tried yet (:func:`_qualified_names`).

    Raises :class:`PlanningError` when the description is not understood, a tool it needs is not
    allowed, ``ans`` cannot be resolved, or the feedback reports bad input the planner cannot fix
    (the same plan would fail the same way).
    """
    stages = _parse_stages(request.description)
    count = sum(len(stage) for stage in stages)
    if count > MAX_STEPS_PER_PLAN:
        raise PlanningError(f"the task has {count} steps; a plan may have at most {MAX_STEPS_PER_PLAN}")
    _check_allowed(stages, request.allowed_tools)
    timed_out = _timed_out_step_ids(request.feedback)
    steps: list[PlanStep] = []
    previous_stage: list[tuple[str, _Clause]] | None = None
    duration = 0.0
    for stage in stages:
        current: list[tuple[str, _Clause]] = []
        for clause in stage:
            step_id = f"s{len(steps) + 1}"
            inputs = (
                _math_inputs(clause, previous_stage) if clause.action == MATH_CALCULATOR else clause.inputs
            )
            if clause.action == CODE_ANALYZER:
                inputs = _qualified_names(step_id, inputs, request)
            steps.append(
                PlanStep(
                    step_id=step_id,
                    action=clause.action,
                    inputs=inputs,
                    outputs_expectation={"keys": list(BUILTIN_TOOLS[clause.action].outputs)},
                    timeout_seconds=max(
                        _timeout_for(step_id, clause.action, request, timed_out),
                        math.ceil(clause.seconds) + SLEEP_TIMEOUT_MARGIN_SECONDS if clause.seconds else 0,
                    ),
                    parallelizable=len(stage) > 1 or len(stages) == 1,
                    idempotency_key=f"{request.task_id}:{request.iteration}:{step_id}",
                    dependencies=[sid for sid, _ in previous_stage or []],
                )
            )
            current.append((step_id, clause))
        duration += max(ESTIMATED_STEP_SECONDS[c.action] + c.seconds for c in stage)
        previous_stage = current
    _check_revisable(steps, request)
    return Plan(
        plan_id=f"{request.task_id}-plan-{request.iteration}",
        task_id=request.task_id,
        confidence=PLAN_CONFIDENCE,
        metadata=PlanMetadata(
            required_tools=sorted({s.action for s in steps}), estimated_duration_seconds=duration
        ),
        steps=steps,
    )


# --------------------------------------------------------------------------------------------------
# Reviewer
# --------------------------------------------------------------------------------------------------


@dataclass
class _Findings:
    transient: list[str] = field(default_factory=list)
    deterministic: list[str] = field(default_factory=list)
    consequences: list[str] = field(default_factory=list)


def _clip(message: str) -> str:
    message = message.strip()
    if len(message) <= MAX_FEEDBACK_MESSAGE_CHARS:
        return message
    head = MAX_FEEDBACK_MESSAGE_CHARS // 3
    tail = MAX_FEEDBACK_MESSAGE_CHARS - head
    return f"{message[:head]} … {message[-tail:]}"


def _not_found_message(step: PlanStep, output: dict[str, Any]) -> str:
    message = output.get("message")
    if isinstance(message, str) and message.strip():
        return message.strip()
    inputs = step.inputs
    return (
        f"no call path from {inputs.get('start_func')} to {inputs.get('end_func')} in {inputs.get('folder')}"
    )


def _review_succeeded(step: PlanStep, result: StepResult, findings: _Findings) -> None:
    unmet = unmet_expectation(step.outputs_expectation, result.output)
    if unmet:
        how = "is " if unmet[0].startswith("missing") else "does not meet its outputs_expectation: "
        findings.transient.append(f"step {step.step_id} ({step.action}) output {how}{'; '.join(unmet)}")
    elif step.action == CODE_ANALYZER and isinstance(result.output, dict) and not result.output.get("found"):
        findings.deterministic.append(_not_found_message(step, result.output))


def _review_failed(step: PlanStep, result: StepResult, findings: _Findings) -> None:
    error = result.error
    if error is None:
        findings.transient.append(f"step {step.step_id} ({step.action}) failed without an error report")
    elif error.type == ErrorType.DEPENDENCY_FAILED:
        findings.consequences.append(
            f"step {step.step_id} ({step.action}) did not run: {_clip(error.message)}"
        )
    elif error.type == ErrorType.TIMEOUT:
        findings.transient.append(
            TIMEOUT_FEEDBACK.format(step_id=step.step_id, timeout_seconds=step.timeout_seconds)
        )
    else:
        reason = f"step {step.step_id} ({step.action}) failed ({error.type.value}): {_clip(error.message)}"
        revisable = error.type in TRANSIENT_ERROR_TYPES or error.type == ErrorType.BAD_INPUT
        (findings.transient if revisable else findings.deterministic).append(reason)


def _review_step(step: PlanStep, result: StepResult | None, findings: _Findings) -> None:
    if result is None:
        findings.transient.append(f"step {step.step_id} ({step.action}) has no result")
    elif result.status == StepStatus.SUCCEEDED:
        _review_succeeded(step, result, findings)
    elif result.status == StepStatus.FAILED:
        _review_failed(step, result, findings)
    elif result.status == StepStatus.SKIPPED:
        findings.consequences.append(f"step {step.step_id} ({step.action}) was skipped")
    else:
        findings.transient.append(
            f"step {step.step_id} ({step.action}) did not finish (status {result.status.value})"
        )


def _format_path_entry(entry: Any) -> str:
    if not isinstance(entry, dict):
        return str(entry)
    name = entry.get("qualified_name") or entry.get("name") or "?"
    file = entry.get("file")
    if not file:
        return str(name)
    line = entry.get("line")
    return f"{name} ({file}:{line})" if line is not None else f"{name} ({file})"


def summarize_output(action: str, output: Any) -> Any:
    """A step's output as the task's result shows it."""
    if not isinstance(output, dict):
        return output
    if action == MATH_CALCULATOR and "value" in output:
        return output["value"]
    if action == PYTHON_EXEC and "stdout" in output:
        return str(output["stdout"]).strip()
    if action == CODE_ANALYZER and "path" in output:
        path = output["path"] if isinstance(output["path"], list) else []
        return {"path": [_format_path_entry(e) for e in path], "message": output.get("message", "")}
    return output


def _final_output(request: ReviewRequest, results: dict[str, StepResult]) -> Any:
    depended_on = {dep for step in request.plan.steps for dep in step.dependencies}
    terminal = [step for step in request.plan.steps if step.step_id not in depended_on]
    summaries = {s.step_id: summarize_output(s.action, results[s.step_id].output) for s in terminal}
    if len(summaries) == 1:
        return next(iter(summaries.values()))
    return summaries


def _approval_feedback(count: int, final_output: Any) -> str:
    plural = "step" if count == 1 else "steps"
    return _shorten(f"all {count} {plural} succeeded; result: {final_output!r}", 200)


def review_results(request: ReviewRequest) -> Review:
    """The verdict on a plan's results (pure and deterministic).

    APPROVED when every step succeeded and met its ``outputs_expectation`` (ESCALATE instead, with
    the same final output as the proposal, when the task asks for a person's sign-off:
    ``require_sign_off``, or a phrase of :data:`officeray.review.SIGN_OFF_PHRASES`); REVISE when a failure may
    pass with a new attempt or a new plan (timeouts, sandbox or internal errors, unmet expectations,
    bad input: the error goes to the planner as feedback); FAILED when the failures would repeat
    (tool errors, output limits, no call path).
    """
    results = {r.step_id: r for r in request.results}
    findings = _Findings()
    for step in request.plan.steps:
        _review_step(step, results.get(step.step_id), findings)
    if not findings.transient and not findings.deterministic and findings.consequences:
        findings.transient.extend(findings.consequences)  # nothing explains them: try again
    if findings.transient:
        return Review(
            verdict=ReviewVerdict.REVISE, feedback="; ".join(findings.transient + findings.deterministic)
        )
    if findings.deterministic:
        return Review(verdict=ReviewVerdict.FAILED, feedback="; ".join(findings.deterministic))
    final_output = _final_output(request, results)
    feedback = _approval_feedback(len(request.plan.steps), final_output)
    if request.require_sign_off or asks_for_sign_off(request.description):
        # the results would pass: a person signs them off (officeray.review)
        return Review(
            verdict=ReviewVerdict.ESCALATE,
            feedback=f"the task asks for a person's sign-off; {feedback}",
            final_output=final_output,
        )
    return Review(verdict=ReviewVerdict.APPROVED, feedback=feedback, final_output=final_output)


# --------------------------------------------------------------------------------------------------
# The tier
# --------------------------------------------------------------------------------------------------


class EmbeddedPlanner:
    """The planner of the embedded tier (see the module docstring for what it understands)."""

    def __init__(self) -> None:
        pass

    async def plan(self, request: PlanRequest) -> Plan:
        return plan_task(request)


class EmbeddedReviewer:
    """The reviewer of the embedded tier."""

    def __init__(self) -> None:
        pass

    async def review(self, request: ReviewRequest) -> Review:
        return review_results(request)


class EmbeddedAiTool:
    """The ai_tool role of the embedded tier: the tool's deterministic answerer
    (:func:`tools_sandbox.host_tools.ai_answers.answer_prompt`) behind the tiers' async interface."""

    def __init__(self) -> None:
        pass

    async def answer(self, prompt: str, max_tokens: int) -> dict[str, Any]:
        return answer_prompt(prompt, max_tokens)
