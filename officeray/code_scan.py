"""Reading model-written Python (``python_exec``) for the gatekeeper: what the code reaches for.

:func:`code_problems` parses a program with :mod:`ast` and answers each problem as ``(rule, reason)``:
network access (:data:`RULE_PYTHON_NETWORK`), writes, deletes or moves outside the workspace
(:data:`RULE_PYTHON_OUTSIDE_WORKSPACE`), and code that hides what it runs or imports
(:data:`RULE_PYTHON_DYNAMIC_CODE`). Aliases, ``from`` imports, constant strings (concatenated,
joined, assigned to names), ``getattr`` with a constant name, names bound to path-building
expressions and strings given to ``exec`` are followed; code that does not parse is scanned as
text. Pure: no I/O. The rule table that turns these into decisions is :mod:`officeray.gatekeeper`.

The sandbox stays the boundary (no network, only the workspace writable): this reading lets the
gatekeeper stop, with a reason people read, a step that tries.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator, Mapping

RULE_PYTHON_NETWORK = "python_network"
RULE_PYTHON_OUTSIDE_WORKSPACE = "python_outside_workspace"
RULE_PYTHON_DYNAMIC_CODE = "python_dynamic_code"

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
