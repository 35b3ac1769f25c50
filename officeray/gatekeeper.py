"""The gatekeeper (tool broker): judges each plan step against its task before the step runs.

Every step gets a :class:`GateDecision`: ``allow`` (it runs), ``approval`` (it waits for a person,
holding no runner) or ``deny`` (it fails at once with error type ``denied``), with the step's
effective risk, a reason and the id of the rule that decided. The decision is an audit event of
the task (``gatekeeper``).

The rules (:func:`judge`, a pure function over a rule table, first match wins):

========================  ========  ===============================================================
rule                      verdict   when
========================  ========  ===============================================================
``python_network``        deny      ``python_exec`` code that opens sockets or network clients
                                    (``socket``, ``urllib``, ``http.client``, ``requests``,
                                    ``httpx``, ``asyncio.open_connection``, ``ctypes``...) or runs
                                    a network command (``curl``, ``wget``, ``nc``...) in a shell
``python_outside_workspace`` deny   ``python_exec`` code that writes, deletes or moves to a path
                                    outside the workspace (absolute, ``..``, ``~``), or ``chdir``\\s
                                    there
``python_dynamic_code``   deny      ``python_exec`` code that hides what it runs or imports:
                                    ``exec``/``eval``/``compile`` of a computed string,
                                    ``__import__``/``importlib`` of a computed name, the
                                    interpreter's internals (``__builtins__``, ``__subclasses__``,
                                    ``sys.modules``...)
``http_bad_url``          deny      an ``http_client`` request other than GET/HEAD whose URL cannot
                                    be read (or is computed by an earlier step)
``http_unnamed_host``     deny      an ``http_client`` request other than GET/HEAD to a host the
                                    task's description never names
``file_delete``           approval  a ``file_operations`` delete
``tool_policy``           approval  the caller's own ``needs_approval`` says so (older callers)
``risk_level``            approval  the step's risk (:func:`step_risk`) is one of the required
                                    levels (``workflow.approvals.required_risk_levels``, or the
                                    tenant's ``approval_risk_levels``)
``allowed``               allow     anything else
========================  ========  ===============================================================

Code is read by :mod:`officeray.code_scan` with :mod:`ast` (aliases, ``from`` imports, simple
assignments of strings, string concatenation and ``getattr`` with a constant name are followed; a
name bound to a path-building
expression, ``out = Path("/tmp/x")`` or ``p = os.path.join(os.sep, "etc")``, is judged as that
expression wherever it is written to; strings given to ``exec`` are parsed and judged too). Code
that does not parse is scanned as text for the same names. The sandbox stays the boundary (it has
no network and sees only the workspace): the gatekeeper refuses steps that *try*, so that a plan
that tries is stopped with a reason a person can read.

The optional model check (``models.gatekeeper`` tiers, see :class:`GateModelAnswer`) can only make
a decision stricter (:func:`stricter_decision`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from officeray.code_scan import (
    code_problems,
)
from officeray.contracts import PlanStep, utcnow
from officeray.tools.plugins import RiskLevel
from officeray.urls import UrlRefused, normalise_host, parse_url

# --------------------------------------------------------------------------------------------------
# Risk
# --------------------------------------------------------------------------------------------------

_RISK_ORDER: Mapping[RiskLevel, int] = {RiskLevel.LOW: 0, RiskLevel.MEDIUM: 1, RiskLevel.HIGH: 2}

SAFE_HTTP_METHODS = frozenset({"GET", "HEAD"})
"""``http_client`` methods that only read; any other method makes the step :attr:`RiskLevel.HIGH`."""

HIGH_RISK_ACTIONS = frozenset({"python_exec"})
"""Tools whose every step is high risk (model-written code), whatever their spec says."""


STEP_RISK_NOTES: Mapping[str, str] = {
    "python_exec": "every step is high (model-written code); code that opens network connections, "
    "writes outside the workspace or hides what it runs is denied",
    "http_client": "GET/HEAD steps: medium; POST: high, and denied to a host the task does not name",
    "file_operations": "delete steps: high, and they always need approval",
}
"""How the gatekeeper raises a tool's risk per step (``officeray tools`` prints these)."""


def stricter_risk(first: RiskLevel, second: RiskLevel) -> RiskLevel:
    """The higher of two risk levels."""
    return first if _RISK_ORDER[RiskLevel(first)] >= _RISK_ORDER[RiskLevel(second)] else second


def step_risk(tool_risk: RiskLevel, action: str, inputs: Mapping[str, Any]) -> RiskLevel:
    """The step's effective risk: the tool's, raised to HIGH by what this step does (model-written
    code, an ``http_client`` method other than GET/HEAD, a ``file_operations`` delete)."""
    risk = RiskLevel(tool_risk)
    if action in HIGH_RISK_ACTIONS:
        return stricter_risk(risk, RiskLevel.HIGH)
    if action == "http_client" and _http_method(inputs) not in SAFE_HTTP_METHODS:
        return stricter_risk(risk, RiskLevel.HIGH)
    if action == "file_operations" and inputs.get("operation") == "delete":
        return stricter_risk(risk, RiskLevel.HIGH)
    return risk


def _http_method(inputs: Mapping[str, Any]) -> str:
    method = inputs.get("method")
    return "GET" if method is None else str(method).strip().upper()


# --------------------------------------------------------------------------------------------------
# Decisions
# --------------------------------------------------------------------------------------------------


class Verdict(StrEnum):
    """What happens to a step."""

    ALLOW = "allow"
    APPROVAL = "approval"
    DENY = "deny"


_VERDICT_ORDER: Mapping[Verdict, int] = {Verdict.ALLOW: 0, Verdict.APPROVAL: 1, Verdict.DENY: 2}

RULE_HTTP_BAD_URL = "http_bad_url"
RULE_HTTP_UNNAMED_HOST = "http_unnamed_host"
RULE_FILE_DELETE = "file_delete"
RULE_TOOL_POLICY = "tool_policy"
RULE_RISK_LEVEL = "risk_level"
RULE_ALLOWED = "allowed"
RULE_MODEL = "model"
"""The model's verdict was stricter than the rules' (``models.gatekeeper`` tiers)."""
RULE_GATEKEEPER_ERROR = "gatekeeper_error"
"""The gatekeeper itself failed: the step waits for a person rather than running unjudged."""

MAX_REASON_CHARS = 500
"""Longest reason a decision keeps (a model's reason is cut)."""


class GateDecision(BaseModel):
    """The gatekeeper's answer for one step (recorded as the task event ``gatekeeper``)."""

    model_config = ConfigDict(extra="forbid")

    verdict: Verdict
    risk: RiskLevel
    """The step's effective risk (:func:`step_risk`)."""
    reason: str
    rule: str
    """The id of the rule (or ``model``) that decided; see the module docstring."""


class GateRequest(BaseModel):
    """What the workflow asks the gatekeeper port about one step."""

    model_config = ConfigDict(extra="forbid")

    task_id: str
    tenant: str = "default"
    description: str
    """The task as its submitter wrote it: hosts it names may receive non-GET requests."""
    step: PlanStep
    inputs: dict[str, Any] = Field(default_factory=dict)
    """The step's inputs with earlier steps' outputs filled in."""
    required_risk_levels: list[str] = Field(default_factory=list)
    """Risk levels whose steps need a person's approval (the tenant's or the global ones)."""


class GateModelAnswer(BaseModel):
    """The JSON contract of a ``models.gatekeeper`` tier: ``{"verdict", "reason"}``."""

    model_config = ConfigDict(extra="ignore")

    verdict: Verdict
    reason: str = Field(default="", max_length=MAX_REASON_CHARS * 4)


class Gatekeeper(Protocol):
    """The workflow's gatekeeper port. Never raises for a step it dislikes: it answers ``deny``."""

    async def gate(self, request: GateRequest) -> GateDecision: ...


def stricter_decision(rules: GateDecision, model: GateModelAnswer) -> GateDecision:
    """The stricter of the rules' decision and a model's answer (the rules' when they agree)."""
    if _VERDICT_ORDER[model.verdict] <= _VERDICT_ORDER[rules.verdict]:
        return rules
    reason = (model.reason.strip() or "the model gatekeeper asked for it")[:MAX_REASON_CHARS]
    return GateDecision(verdict=model.verdict, risk=rules.risk, reason=f"model: {reason}", rule=RULE_MODEL)


# --------------------------------------------------------------------------------------------------
# The rule table
# --------------------------------------------------------------------------------------------------


class _Finding(BaseModel):
    verdict: Verdict
    rule: str
    reason: str


def judge(
    step: PlanStep,
    inputs: Mapping[str, Any],
    *,
    task: str,
    tool_risk: RiskLevel,
    required: Collection[str],
    needs_approval: bool | None = None,
) -> GateDecision:
    """The rules' decision on ``step`` (with resolved ``inputs``) of a task described by ``task``.

    ``required``: the risk levels that need approval. ``needs_approval``: an older caller's own
    per-tool answer, used instead of ``required`` when given (the deny rules apply either way).
    """
    risk = step_risk(tool_risk, step.action, inputs)
    for check in _CHECKS.get(step.action, ()):
        finding = check(inputs, task)
        if finding is not None:
            return GateDecision(verdict=finding.verdict, risk=risk, reason=finding.reason, rule=finding.rule)
    if needs_approval is not None:
        if needs_approval:
            reason = f"steps of {step.action} need approval"
            return GateDecision(verdict=Verdict.APPROVAL, risk=risk, reason=reason, rule=RULE_TOOL_POLICY)
    elif risk.value in required:
        reason = f"{risk.value}-risk step ({step.action}): {risk.value} needs approval"
        return GateDecision(verdict=Verdict.APPROVAL, risk=risk, reason=reason, rule=RULE_RISK_LEVEL)
    return GateDecision(verdict=Verdict.ALLOW, risk=risk, reason=f"{risk.value}-risk step", rule=RULE_ALLOWED)


def _check_python(inputs: Mapping[str, Any], task: str) -> _Finding | None:
    code = inputs.get("code")
    if not isinstance(code, str):
        return None
    problems = code_problems(code)
    if not problems:
        return None
    rule, reason = problems[0]
    return _Finding(verdict=Verdict.DENY, rule=rule, reason=reason)


def _check_http(inputs: Mapping[str, Any], task: str) -> _Finding | None:
    method = _http_method(inputs)
    if method in SAFE_HTTP_METHODS:
        return None
    url = inputs.get("url")
    if not isinstance(url, str):
        return _Finding(
            verdict=Verdict.DENY,
            rule=RULE_HTTP_BAD_URL,
            reason=f"{method} to a URL that is not given in the plan: the host cannot be checked",
        )
    try:
        host = parse_url(url).host
    except UrlRefused as exc:
        return _Finding(
            verdict=Verdict.DENY, rule=RULE_HTTP_BAD_URL, reason=f"{method} to {url!r}: {exc.reason}"
        )
    if host not in named_hosts(task):
        return _Finding(
            verdict=Verdict.DENY,
            rule=RULE_HTTP_UNNAMED_HOST,
            reason=f"{method} to {host}, a host the task does not name (only GET and HEAD may go elsewhere)",
        )
    return None


def _check_file(inputs: Mapping[str, Any], task: str) -> _Finding | None:
    if inputs.get("operation") != "delete":
        return None
    return _Finding(
        verdict=Verdict.APPROVAL,
        rule=RULE_FILE_DELETE,
        reason=f"deletes {inputs.get('path')!r}: needs approval",
    )


_CHECKS: Mapping[str, tuple[Callable[[Mapping[str, Any], str], _Finding | None], ...]] = {
    "python_exec": (_check_python,),
    "http_client": (_check_http,),
    "file_operations": (_check_file,),
}
"""The tool-specific rows of the rule table (the risk-level rows apply to every tool)."""


# --------------------------------------------------------------------------------------------------
# Hosts a task names
# --------------------------------------------------------------------------------------------------

_URL_IN_TEXT_RE = re.compile(r"https?://[^\s<>\"'`]+", re.IGNORECASE)
_HOST_IN_TEXT_RE = re.compile(r"(?<![\w.@-])(?:[\w-]+\.)+[\w-]+(?![\w-])|\[[0-9a-fA-F:.]+\]", re.UNICODE)
MAX_TASK_CHARS_SCANNED = 20_000
"""How much of a task description is searched for host names."""


def named_hosts(task: str) -> set[str]:
    """The hosts a task description names (in URLs or as bare names), normalised as URLs' hosts are."""
    text = task[:MAX_TASK_CHARS_SCANNED]
    hosts: set[str] = set()
    for match in _URL_IN_TEXT_RE.finditer(text):
        try:
            hosts.add(parse_url(match.group(0).rstrip(".,;:!?)]}")).host)
        except UrlRefused:
            continue
    for match in _HOST_IN_TEXT_RE.finditer(text):
        try:
            hosts.add(normalise_host(match.group(0).strip("[]").rstrip("."))[0])
        except (UrlRefused, ValueError):
            continue
    return hosts


# --------------------------------------------------------------------------------------------------
# The in-process port
# --------------------------------------------------------------------------------------------------


class RuleGatekeeper:
    """The gatekeeper port that applies :func:`judge` in process (no model, no Serve hop).

    ``tool_risk``: a tool's declared risk by name (unknown tools: LOW). ``needs_approval``: an older
    caller's per-tool approval rule, used instead of the request's required risk levels. Picklable
    when its callables are (the orchestrator builds its own)."""

    def __init__(
        self,
        tool_risk: Mapping[str, RiskLevel] | Callable[[str], RiskLevel] | None = None,
        *,
        needs_approval: Callable[[str], bool] | None = None,
    ) -> None:
        self.tool_risk = tool_risk if tool_risk is not None else builtin_risks()
        self.needs_approval = needs_approval

    def risk_of(self, action: str) -> RiskLevel:
        """The declared risk of tool ``action``."""
        if callable(self.tool_risk):
            return self.tool_risk(action)
        return self.tool_risk.get(action, RiskLevel.LOW)

    def decide(self, request: GateRequest) -> GateDecision:
        """:func:`judge` for a request (synchronous)."""
        return judge(
            request.step,
            request.inputs,
            task=request.description,
            tool_risk=self.risk_of(request.step.action),
            required=set(request.required_risk_levels),
            needs_approval=None if self.needs_approval is None else self.needs_approval(request.step.action),
        )

    async def gate(self, request: GateRequest) -> GateDecision:
        return self.decide(request)


def builtin_risks() -> dict[str, RiskLevel]:
    """The declared risk of each built-in tool."""
    from officeray.tools.builtin import BUILTIN_TOOLS

    return {name: spec.risk for name, spec in BUILTIN_TOOLS.items()}


# --------------------------------------------------------------------------------------------------
# Unattended approvals (``officeray run``)
# --------------------------------------------------------------------------------------------------

RUN_APPROVER = "officeray run --approve"
"""Who approved, in the audit, a step approved by ``officeray run --approve``."""

RUN_REJECTER = "officeray run"


class UnattendedApprovals:
    """The Approvals port of a run with nobody to ask: every step that needs approval is approved
    (``approve=True``, ``officeray run --approve``) or rejected at once with a reason naming
    ``--approve``."""

    def __init__(self, approve: bool, now: Callable[[], datetime] = utcnow) -> None:
        self.approve = approve
        self._now = now

    async def wait(self, task_id: str, step_id: str, timeout_s: float) -> dict[str, Any] | None:
        if self.approve:
            return {
                "decision": "approved",
                "decided_by": RUN_APPROVER,
                "reason": "approved for the whole run with --approve",
                "decided_at": self._now().isoformat(),
            }
        return {
            "decision": "rejected",
            "decided_by": RUN_REJECTER,
            "reason": "this step needs approval and nobody can approve here: run again with --approve "
            "to approve such steps",
            "decided_at": self._now().isoformat(),
        }
