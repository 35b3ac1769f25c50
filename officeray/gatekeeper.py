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

Code is read with :mod:`ast` (aliases, ``from`` imports, simple assignments of strings, string
concatenation and ``getattr`` with a constant name are followed; a name bound to a path-building
expression, ``out = Path("/tmp/x")`` or ``p = os.path.join(os.sep, "etc")``, is judged as that
expression wherever it is written to; strings given to ``exec`` are parsed and judged too). Code
that does not parse is scanned as text for the same names. The sandbox stays the boundary (it has
no network and sees only the workspace): the gatekeeper refuses steps that *try*, so that a plan
that tries is stopped with a reason a person can read.

The optional model check (``models.gatekeeper`` tiers, see :class:`GateModelAnswer`) can only make
a decision stricter (:func:`stricter_decision`).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Collection, Iterator, Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

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

RULE_PYTHON_NETWORK = "python_network"
RULE_PYTHON_OUTSIDE_WORKSPACE = "python_outside_workspace"
RULE_PYTHON_DYNAMIC_CODE = "python_dynamic_code"
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
# Code analysis (python_exec)
# --------------------------------------------------------------------------------------------------

NETWORK_MODULES = frozenset(
    {
        "socket",
        "_socket",
        "ssl",
        "_ssl",
        "urllib",
        "urllib2",
        "urllib3",
        "requests",
        "httpx",
        "aiohttp",
        "httplib",
        "httplib2",
        "ftplib",
        "smtplib",
        "poplib",
        "imaplib",
        "nntplib",
        "telnetlib",
        "socketserver",
        "asyncore",
        "asynchat",
        "xmlrpc",
        "websocket",
        "websockets",
        "paramiko",
        "pycurl",
        "webbrowser",
        "grpc",
        "zmq",
        "ctypes",
        "_ctypes",
        "cffi",
    }
)
"""Modules whose import alone denies the step (network clients, raw sockets, native calls)."""

NETWORK_DOTTED = frozenset(
    {"http.client", "http.server", "http.cookiejar", "multiprocessing.connection", "multiprocessing.managers"}
)
"""Submodules that open connections, in packages that are otherwise harmless."""

NETWORK_ATTRIBUTES = frozenset(
    {
        "open_connection",
        "open_unix_connection",
        "start_server",
        "start_unix_server",
        "create_connection",
        "create_datagram_endpoint",
        "create_server",
        "create_unix_connection",
        "sock_connect",
        "urlopen",
        "urlretrieve",
    }
)
"""Attributes (of any object: ``asyncio``, an event loop) that open connections."""

NETWORK_COMMANDS = frozenset(
    {
        "curl",
        "wget",
        "nc",
        "ncat",
        "netcat",
        "socat",
        "telnet",
        "ssh",
        "scp",
        "sftp",
        "ftp",
        "rsync",
        "nmap",
        "ping",
        "dig",
        "nslookup",
        "aria2c",
        "lynx",
        "w3m",
    }
)
"""Programs that reach the network, refused in commands run from code."""

DYNAMIC_NAMES = frozenset(
    {
        "__import__",
        "__builtins__",
        "__subclasses__",
        "__globals__",
        "__code__",
        "__closure__",
        "__bases__",
        "__mro__",
        "__loader__",
        "__spec__",
        "__getattribute__",
        "importlib",
        "imp",
        "runpy",
        "builtins",
        "pkgutil",
        "zipimport",
        "marshal",
    }
)
"""Names that reach the interpreter's internals or load code by a computed name."""

DUNDER_NAMES = frozenset(name for name in DYNAMIC_NAMES if name.startswith("__"))
"""The interpreter internals refused wherever they appear (as names, attributes or strings)."""

DYNAMIC_CALLS = frozenset({"exec", "eval", "compile"})
"""Builtins that run a string as code: allowed only with a constant string, which is judged too."""

SHELL_MODULES = frozenset({"subprocess", "pty", "commands"})
OS_SHELL_PREFIXES = ("system", "popen", "exec", "spawn", "posix_spawn", "fork")
"""``os`` functions that run programs (``os.system``, ``os.execvp``, ``os.spawnl``...)."""

WRITE_FUNCTIONS = frozenset(
    {
        "os.remove",
        "os.unlink",
        "os.rmdir",
        "os.removedirs",
        "os.mkdir",
        "os.makedirs",
        "os.rename",
        "os.renames",
        "os.replace",
        "os.symlink",
        "os.link",
        "os.chmod",
        "os.chown",
        "os.lchown",
        "os.truncate",
        "os.mkfifo",
        "os.mknod",
        "os.utime",
        "os.chdir",
        "os.chroot",
        "shutil.rmtree",
        "shutil.move",
        "shutil.copy",
        "shutil.copy2",
        "shutil.copyfile",
        "shutil.copytree",
        "shutil.copymode",
        "shutil.copystat",
        "shutil.chown",
        "shutil.make_archive",
        "shutil.unpack_archive",
    }
)
"""Functions that change the file system at every path they are given."""

DESTINATION_ARGUMENT: Mapping[str, int] = {
    "shutil.copy": 1,
    "shutil.copy2": 1,
    "shutil.copyfile": 1,
    "shutil.copytree": 1,
    "shutil.copymode": 1,
    "shutil.copystat": 1,
    "shutil.make_archive": 0,
    "shutil.unpack_archive": 1,
}
"""Functions of :data:`WRITE_FUNCTIONS` that only change one argument (the others are read)."""

PATH_TYPES = frozenset({"Path", "PurePath", "PosixPath", "WindowsPath", "PurePosixPath"})

WRITE_METHODS = frozenset(
    {
        "write_text",
        "write_bytes",
        "unlink",
        "rmdir",
        "mkdir",
        "touch",
        "rename",
        "replace",
        "symlink_to",
        "hardlink_to",
        "link_to",
        "chmod",
        "lchmod",
    }
)
"""``pathlib.Path`` methods that change the file system at the path they are called on."""

OPEN_FUNCTIONS = frozenset(
    {"open", "io.open", "codecs.open", "os.open", "os.fdopen", "gzip.open", "bz2.open"}
)
WRITE_MODE_CHARS = frozenset("wax+")
WRITE_FLAG_NAMES = frozenset({"O_WRONLY", "O_RDWR", "O_CREAT", "O_APPEND", "O_TRUNC"})
HARMLESS_ABSOLUTE_PATHS = frozenset({"/dev/null", "/dev/stdout", "/dev/stderr"})
HOME_MARKERS = frozenset({"expanduser", "home", "gettempdir", "mkdtemp"})
"""Calls whose value is a folder outside the workspace (``Path.home()``, ``os.path.expanduser``)."""

MAX_NESTED_CODE_DEPTH = 3
"""How deep strings given to ``exec`` are parsed and judged (deeper: refused as dynamic)."""

SEPARATOR_NAMES = frozenset({"os.sep", "os.path.sep", "posixpath.sep"})
"""Names whose value is ``"/"`` (``os.sep + "etc"`` is an absolute path)."""

PATH_MODULE_PREFIXES = ("os.path.", "posixpath.")
"""Functions whose value is a path (``os.path.join("/", "etc")``)."""

PATH_BUILDING_METHODS = frozenset({"join", "format", "format_map", "joinpath", "with_name", "with_suffix"})
"""Methods whose value is a path built from their receiver and arguments (``"/".join``, ``str.format``)."""

MAX_PATH_EXPANSIONS = 500
"""Most names followed back to the expressions bound to them while one path is checked (more: the
path is refused as too complex to check)."""

TOO_COMPLEX_PATH = "a path built from too many names to be checked"

_RULE_PRIORITY = (RULE_PYTHON_NETWORK, RULE_PYTHON_OUTSIDE_WORKSPACE, RULE_PYTHON_DYNAMIC_CODE)

_TEXT_NETWORK_RE = re.compile(
    r"\b(?:"
    + "|".join(sorted(re.escape(m) for m in NETWORK_MODULES | NETWORK_ATTRIBUTES))
    + r"|http\.client|/dev/tcp/)\b"
)
_TEXT_COMMAND_RE = re.compile(r"\b(?:" + "|".join(sorted(NETWORK_COMMANDS)) + r")\b")
_TEXT_DYNAMIC_RE = re.compile(r"\b(?:" + "|".join(sorted(re.escape(n) for n in DYNAMIC_NAMES)) + r")\b")
_TEXT_OUTSIDE_RE = re.compile(
    r"""(?:open|write_text|write_bytes|rmtree|remove|unlink|chdir)\s*\(\s*[rbfu]*['"](?:/|~|\.\.)"""
)


def code_problems(code: str) -> list[tuple[str, str]]:
    """``(rule, reason)`` for each reason to refuse ``code``, the most serious first; empty: none."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return _text_problems(code)
    visitor = _CodeVisitor(depth=0)
    try:
        visitor.visit(tree)
    except RecursionError:
        return [(RULE_PYTHON_DYNAMIC_CODE, "the code is nested too deeply to be checked")]
    return sorted(dict.fromkeys(visitor.problems), key=lambda p: _RULE_PRIORITY.index(p[0]))


def _text_problems(code: str) -> list[tuple[str, str]]:
    """The text scan of code that does not parse."""
    note = " (the code does not parse; found by a text scan)"
    problems = []
    if match := _TEXT_NETWORK_RE.search(code):
        problems.append((RULE_PYTHON_NETWORK, f"uses {match.group(0)}: network access is not allowed{note}"))
    if match := _TEXT_COMMAND_RE.search(code):
        problems.append((RULE_PYTHON_NETWORK, f"names the network command {match.group(0)}{note}"))
    if _TEXT_OUTSIDE_RE.search(code):
        problems.append((RULE_PYTHON_OUTSIDE_WORKSPACE, f"writes to a path outside the workspace{note}"))
    if match := _TEXT_DYNAMIC_RE.search(code):
        problems.append((RULE_PYTHON_DYNAMIC_CODE, f"uses {match.group(0)}{note}"))
    return problems


def outside_workspace(path: str) -> bool:
    """Whether a path written in code leaves the workspace: absolute, ``~``, a drive, or a ``..`` part."""
    text = path.strip()
    if not text or text in HARMLESS_ABSOLUTE_PATHS:
        return False
    if text.startswith(("/", "\\", "~")) or re.match(r"^[A-Za-z]:", text):
        return True
    return ".." in re.split(r"[/\\]", text)


def _last(name: str | None) -> str:
    """The last part of a dotted name (``pathlib.Path`` -> ``Path``); empty for None."""
    return (name or "").rsplit(".", 1)[-1]


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for a Name/Attribute chain; None for anything else."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


class _CodeVisitor(ast.NodeVisitor):
    """Collects ``(rule, reason)`` problems of one module (and of constant strings it executes)."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.problems: list[tuple[str, str]] = []
        self.aliases: dict[str, str] = {}
        """Local name -> the dotted name it stands for (``import os as o``, ``from os import system``)."""
        self.strings: dict[str, str] = {}
        """Name -> the constant string last assigned to it (``cmd = "curl " + url`` keeps "curl ")."""
        self.bindings: dict[str, list[ast.AST]] = {}
        """Name -> every path-building expression assigned to it (:meth:`builds_path`), followed when
        the name is used as a path (``out = Path("/tmp/x"); out.write_text(...)``)."""
        self._expansions = 0

    # -- helpers ---------------------------------------------------------------------------------

    def _add(self, rule: str, reason: str) -> None:
        self.problems.append((rule, reason))

    def resolve(self, node: ast.AST) -> str | None:
        """The dotted name ``node`` stands for, through aliases (``o.system`` -> ``os.system``)."""
        if isinstance(node, ast.Call) and _dotted(node.func) in ("getattr", "builtins.getattr"):
            if len(node.args) >= 2:
                base = self.resolve(node.args[0])
                name = self.fold(node.args[1])
                if base is not None and name is not None:
                    return f"{base}.{name}"
            return None
        if isinstance(node, ast.Attribute):
            base = self.resolve(node.value)
            return None if base is None else f"{base}.{node.attr}"
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id, node.id)
        return None

    def fold(self, node: ast.AST) -> str | None:
        """The string value of a constant expression (literals, ``+``, ``"".join([...])``, names bound
        to constants); None when it is not constant."""
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bytes):
                return node.value.decode("latin-1")
            return node.value if isinstance(node.value, str) else None
        if isinstance(node, ast.Name | ast.Attribute) and self.resolve(node) in SEPARATOR_NAMES:
            return "/"
        if isinstance(node, ast.Name):
            return self.strings.get(node.id)
        if isinstance(node, ast.FormattedValue) and node.conversion == -1 and node.format_spec is None:
            return self.fold(node.value)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left, right = self.fold(node.left), self.fold(node.right)
            return None if left is None or right is None else left + right
        if isinstance(node, ast.JoinedStr):
            parts = [self.fold(v) for v in node.values]
            return None if any(p is None for p in parts) else "".join(p or "" for p in parts)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "join"
            and len(node.args) == 1
            and isinstance(node.args[0], ast.List | ast.Tuple)
        ):
            sep = self.fold(node.func.value)
            items = [self.fold(e) for e in node.args[0].elts]
            if sep is not None and all(i is not None for i in items):
                return sep.join(i or "" for i in items)
        return None

    def strings_in(self, node: ast.AST, seen: frozenset[str] = frozenset()) -> Iterator[tuple[str, bool]]:
        """``(text, leading)`` for the constant strings of an expression; ``leading``: the text starts
        the value (so an absolute path there makes the value absolute). A name bound to path-building
        expressions (:attr:`bindings`) stands for each of them (``seen``: the names being followed)."""
        if isinstance(node, ast.Name) and node.id in self.bindings and node.id not in seen:
            self._expansions += 1
            if self._expansions > MAX_PATH_EXPANSIONS:
                yield TOO_COMPLEX_PATH, True
                return
            if node.id in self.strings:
                yield self.strings[node.id], True
            for bound in self.bindings[node.id]:
                yield from self.strings_in(bound, seen | {node.id})
            return
        folded = self.fold(node)
        if folded is not None:
            yield folded, True
            return
        if isinstance(node, ast.JoinedStr):
            for index, value in enumerate(node.values):
                inner = value.value if isinstance(value, ast.FormattedValue) else value
                for text, leading in self.strings_in(inner, seen):
                    yield text, leading and index == 0
            return
        if isinstance(node, ast.BinOp):
            yield from self.strings_in(node.left, seen)
            for text, leading in self.strings_in(node.right, seen):
                # ``Path(x) / "/etc"`` replaces x: an absolute right side of ``/`` leads
                yield text, leading and isinstance(node.op, ast.Div)
            return
        for child in ast.iter_child_nodes(node):
            yield from self.strings_in(child, seen)

    def expanded(self, node: ast.AST, seen: frozenset[str] = frozenset()) -> Iterator[ast.AST]:
        """``node`` and, for each bound name in it, the expressions bound to that name (recursively)."""
        yield node
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name) and sub.id in self.bindings and sub.id not in seen:
                self._expansions += 1
                if self._expansions > MAX_PATH_EXPANSIONS:
                    return
                for bound in self.bindings[sub.id]:
                    yield from self.expanded(bound, seen | {sub.id})

    def builds_path(self, value: ast.AST) -> bool:
        """Whether an assigned expression may build a path that a later write names: a ``pathlib``
        path, an ``os.path`` call, ``os.sep``, an f-string, ``+``/``/``/``%``, ``"/".join``/``format``,
        an outside-looking constant, or a name already bound to one of these."""
        for sub in ast.walk(value):
            if isinstance(sub, ast.JoinedStr | ast.BinOp):
                return True
            if isinstance(sub, ast.Name) and sub.id in self.bindings:
                return True
            if isinstance(sub, ast.Name | ast.Attribute) and self.resolve(sub) in SEPARATOR_NAMES:
                return True
            if (
                isinstance(sub, ast.Constant)
                and isinstance(sub.value, str)
                and sub.value.strip() not in ("/", "\\")
                and outside_workspace(sub.value)
            ):
                return True
            if isinstance(sub, ast.Call):
                name = self.resolve(sub.func) or ""
                short = name.rsplit(".", 1)[-1] if name else getattr(sub.func, "attr", "")
                if short in PATH_TYPES or short in HOME_MARKERS or name.startswith(PATH_MODULE_PREFIXES):
                    return True
                if isinstance(sub.func, ast.Attribute) and sub.func.attr in PATH_BUILDING_METHODS:
                    return True
        return False

    def bind(self, target: ast.AST, value: ast.AST) -> None:
        """Remember a path-building ``value`` assigned to ``target`` (names, and tuples of names
        assigned tuples of the same length)."""
        if isinstance(target, ast.Tuple | ast.List) and isinstance(value, ast.Tuple | ast.List):
            if len(target.elts) == len(value.elts):
                for sub_target, sub_value in zip(target.elts, value.elts, strict=True):
                    self.bind(sub_target, sub_value)
            return
        if isinstance(target, ast.Name) and self.builds_path(value):
            self.bindings.setdefault(target.id, []).append(value)

    def leaves_workspace(self, node: ast.AST) -> str | None:
        """The outside path an expression names, or a marker of one (``~``, ``Path.home()``), through
        the names bound to path-building expressions."""
        self._expansions = 0
        for text, leading in self.strings_in(node):
            if text == TOO_COMPLEX_PATH:
                return text
            if text in HARMLESS_ABSOLUTE_PATHS:
                continue
            if (leading and outside_workspace(text)) or ".." in re.split(r"[/\\]", text):
                return text
        self._expansions = 0
        for top in self.expanded(node):
            for sub in ast.walk(top):
                if isinstance(sub, ast.Call):
                    name = self.resolve(sub.func) or ""
                    if name.rsplit(".", 1)[-1] in HOME_MARKERS:
                        return f"{name}()"
        if self._expansions > MAX_PATH_EXPANSIONS:
            return TOO_COMPLEX_PATH
        return None

    # -- imports ---------------------------------------------------------------------------------

    def check_module(self, module: str, how: str) -> None:
        top = module.split(".")[0]
        if top in NETWORK_MODULES or any(module == d or module.startswith(d + ".") for d in NETWORK_DOTTED):
            self._add(RULE_PYTHON_NETWORK, f"{how} {module}: network access is not allowed")
        elif top in DYNAMIC_NAMES:
            self._add(RULE_PYTHON_DYNAMIC_CODE, f"{how} {module}, which loads code by a computed name")

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.check_module(alias.name, "imports")
            if alias.asname:
                self.aliases[alias.asname] = alias.name
            else:
                top = alias.name.split(".")[0]
                self.aliases[top] = top
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level:
            self._add(RULE_PYTHON_DYNAMIC_CODE, "a relative import: the code runs as one module")
        self.check_module(module, "imports from")
        for alias in node.names:
            full = f"{module}.{alias.name}" if module else alias.name
            if alias.name != "*":
                self.check_module(full, "imports")
                self.aliases[alias.asname or alias.name] = full
        self.generic_visit(node)

    # -- names and assignments -------------------------------------------------------------------

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in DUNDER_NAMES:
            self._add(RULE_PYTHON_DYNAMIC_CODE, f"uses {node.id}, which reaches the interpreter's internals")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        name = self.resolve(node) or node.attr
        root = _dotted(node)
        if node.attr in DUNDER_NAMES or name == "sys.modules":
            self._add(RULE_PYTHON_DYNAMIC_CODE, f"uses {name}, which reaches the interpreter's internals")
        elif node.attr in NETWORK_ATTRIBUTES:
            self._add(RULE_PYTHON_NETWORK, f"calls {name}: network access is not allowed")
        elif root is not None and root.split(".")[0] in self.aliases:  # a module this code imported
            self.check_module(name, "uses")
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        value = self.fold(node.value)
        target_name = self.resolve(node.value) if isinstance(node.value, ast.Attribute | ast.Name) else None
        for target in node.targets:
            if isinstance(target, ast.Name):
                if value is not None:
                    self.strings[target.id] = value
                if target_name is not None:
                    self.aliases[target.id] = target_name
            self.bind(target, node.value)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.bind(node.target, node.value)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        if isinstance(node.target, ast.Name):  # ``p /= "x"``: p is now ``p / "x"``
            name = ast.Name(id=node.target.id, ctx=ast.Load())
            self.bind(node.target, ast.BinOp(left=name, op=node.op, right=node.value))
        self.generic_visit(node)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.bind(node.target, node.value)
        self.generic_visit(node)

    def visit_For(self, node: ast.For) -> None:
        if isinstance(node.iter, ast.List | ast.Tuple | ast.Set):  # ``for p in [Path("/x"), ...]``
            for item in node.iter.elts:
                self.bind(node.target, item)
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str):
            self.check_string(node.value)

    def check_string(self, text: str) -> None:
        stripped = text.strip()
        if stripped in DUNDER_NAMES:
            self._add(
                RULE_PYTHON_DYNAMIC_CODE, f"names {stripped!r}, which reaches the interpreter's internals"
            )
        elif stripped in NETWORK_MODULES or stripped in NETWORK_DOTTED or stripped in NETWORK_ATTRIBUTES:
            self._add(RULE_PYTHON_NETWORK, f"names {stripped!r}: network access is not allowed")
        if "/dev/tcp/" in text or "/dev/udp/" in text:
            self._add(RULE_PYTHON_NETWORK, "opens a /dev/tcp connection: network access is not allowed")

    # -- calls -----------------------------------------------------------------------------------

    def visit_BinOp(self, node: ast.BinOp) -> None:
        folded = self.fold(node)
        if folded is not None:
            self.check_string(folded)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        name = self.resolve(node.func) or ""
        short = name.rsplit(".", 1)[-1] if name else getattr(node.func, "attr", "")
        folded = self.fold(node)  # "".join([...]) of constants
        if folded is not None:
            self.check_string(folded)
        self.check_call(node, name, short)
        self.generic_visit(node)

    def check_call(self, node: ast.Call, name: str, short: str) -> None:
        args: list[ast.AST] = [*node.args, *(k.value for k in node.keywords)]
        if name in DYNAMIC_CALLS or name in ("builtins.exec", "builtins.eval"):
            self.check_exec(name, node.args[0] if node.args else None)
        elif short in ("import_module", "__import__"):
            module = self.fold(node.args[0]) if node.args else None
            if module is None:
                self._add(RULE_PYTHON_DYNAMIC_CODE, f"{name}() of a computed name")
            else:
                self.check_module(module, f"imports (with {short})")
        elif name in ("getattr", "setattr", "delattr", "builtins.getattr") and len(node.args) >= 2:
            attr = self.fold(node.args[1])
            base = self.resolve(node.args[0]) or ""
            if attr is None and base.split(".")[0] in {"os", "sys", *SHELL_MODULES, "shutil"}:
                self._add(RULE_PYTHON_DYNAMIC_CODE, f"{name}() of a computed attribute of {base}")
            elif attr is not None and attr in NETWORK_ATTRIBUTES:
                self._add(RULE_PYTHON_NETWORK, f"{name}() of {attr}: network access is not allowed")
        top = name.split(".")[0]
        if top in SHELL_MODULES or (top == "os" and short.startswith(OS_SHELL_PREFIXES)):
            self.check_command(name, args)
        if name in OPEN_FUNCTIONS or (short == "open" and isinstance(node.func, ast.Attribute)):
            self.check_open(node, name)
        elif name in WRITE_FUNCTIONS or (short in WRITE_METHODS and isinstance(node.func, ast.Attribute)):
            for target in self.write_targets(node, name, short, args):
                outside = self.leaves_workspace(target)
                if outside is not None:
                    self._add(
                        RULE_PYTHON_OUTSIDE_WORKSPACE,
                        f"{name or short}() on {outside!r}, outside the workspace",
                    )
                    break

    def write_targets(self, node: ast.Call, name: str, short: str, args: list[ast.AST]) -> list[ast.AST]:
        """The expressions naming the paths a file-system call changes."""
        if name in WRITE_FUNCTIONS:
            index = DESTINATION_ARGUMENT.get(name)
            if index is None:
                return args
            keyword: list[ast.AST] = [
                k.value for k in node.keywords if k.arg in ("dst", "extract_dir", "base_name")
            ]
            return keyword or list(node.args[index : index + 1])
        assert isinstance(node.func, ast.Attribute)
        receiver = node.func.value
        targets: list[ast.AST] = [receiver]
        if short in ("rename", "replace", "symlink_to", "hardlink_to") and self.is_path(receiver):
            targets += args
        return targets

    def is_path(self, node: ast.AST) -> bool:
        """Whether an expression is visibly a ``pathlib`` path (``Path(...)``, ``p / "x"``, a name bound
        to one)."""
        self._expansions = 0
        for top in self.expanded(node):
            if isinstance(top, ast.BinOp) and isinstance(top.op, ast.Div):
                return True
            for sub in ast.walk(top):
                if isinstance(sub, ast.Call) and _last(self.resolve(sub.func)) in PATH_TYPES:
                    return True
        return False

    def check_exec(self, name: str, source: ast.AST | None) -> None:
        text = None if source is None else self.fold(source)
        if text is None:
            self._add(
                RULE_PYTHON_DYNAMIC_CODE, f"{name}() of a computed string: what it runs cannot be checked"
            )
            return
        if self.depth >= MAX_NESTED_CODE_DEPTH:
            self._add(RULE_PYTHON_DYNAMIC_CODE, f"{name}() nested too deeply to be checked")
            return
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):
            self.problems.extend(_text_problems(text))
            return
        inner = _CodeVisitor(self.depth + 1)
        inner.aliases, inner.strings = dict(self.aliases), dict(self.strings)
        inner.bindings = {name: list(bound) for name, bound in self.bindings.items()}
        inner.visit(tree)
        self.problems.extend(
            (rule, f"{reason} (in a string given to {name})") for rule, reason in inner.problems
        )

    def check_command(self, name: str, args: list[ast.AST]) -> None:
        self._expansions = 0
        for arg in args:
            for text, _leading in self.strings_in(arg):
                words = re.findall(r"[\w.+/-]+", text)
                for word in words:
                    program = word.rsplit("/", 1)[-1]
                    if program in NETWORK_COMMANDS or program in NETWORK_MODULES:
                        self._add(
                            RULE_PYTHON_NETWORK, f"{name}() runs {program}: network access is not allowed"
                        )
                        return
                if "://" in text:
                    self._add(RULE_PYTHON_NETWORK, f"{name}() is given a URL: network access is not allowed")
                    return

    def check_open(self, node: ast.Call, name: str) -> None:
        mode_node: ast.AST | None = None
        path_node: ast.AST | None = None
        if isinstance(node.func, ast.Attribute) and name not in OPEN_FUNCTIONS:  # Path(...).open(mode)
            path_node = node.func.value
            mode_node = node.args[0] if node.args else None
        else:
            path_node = node.args[0] if node.args else None
            mode_node = node.args[1] if len(node.args) > 1 else None
        for keyword in node.keywords:
            if keyword.arg in ("mode", "flags"):
                mode_node = keyword.value
            elif keyword.arg in ("file", "path"):
                path_node = keyword.value
        if not self.writes(name, mode_node) or path_node is None:
            return
        outside = self.leaves_workspace(path_node)
        if outside is not None:
            self._add(RULE_PYTHON_OUTSIDE_WORKSPACE, f"{name}() writes {outside!r}, outside the workspace")

    def writes(self, name: str, mode_node: ast.AST | None) -> bool:
        """Whether an open call writes: a mode with w/a/x/+, os flags naming a write, or a computed mode."""
        if mode_node is None:
            return False
        if name == "os.open":
            names = {n.attr for n in ast.walk(mode_node) if isinstance(n, ast.Attribute)}
            names |= {n.id for n in ast.walk(mode_node) if isinstance(n, ast.Name)}
            return bool(names & WRITE_FLAG_NAMES) or not names
        mode = self.fold(mode_node)
        return mode is None or bool(set(mode) & WRITE_MODE_CHARS)


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
