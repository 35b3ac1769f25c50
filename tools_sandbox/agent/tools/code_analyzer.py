"""``code_analyzer``: the shortest static call path between two functions in a folder of Python code.

:func:`analyze` parses every ``*.py`` file under a folder (with :mod:`ast`; nothing is imported or
run), indexes every function and method under a qualified name (``pkg.mod.func``,
``pkg.mod.Class.method``, ``pkg.mod.outer.inner``) and returns the shortest call path from one
function to another (breadth-first search over the call graph, so recursion and cycles are harmless).

A bare name often matches several functions (two ``process_data`` in two modules). Ambiguity is
resolved by reachability: the search runs from every candidate of ``start_func`` and keeps the
candidate pairs that a call path joins. The answer is the shortest such path (``paths`` lists the
others, ``unreachable_candidates`` the candidates on none, and ``message`` names them: "end_func
'process_data' also matches pkg.b.process_data (pkg/b.py:3), which main does not reach"). Only
when no pair is joined is an ambiguous name an error, listing the candidates.

Module names come from paths relative to the folder (``pkg/sub/mod.py`` -> ``pkg.sub.mod``,
``pkg/__init__.py`` -> ``pkg``); when the folder is itself a package (it has an ``__init__.py``)
its own package name is kept as a prefix. A module inside a package tree that does not start at the
folder (``src/app/x.py``) can also be imported under its package-relative name (``app.x``).

Calls are resolved the way Python would bind the names, statically:

* bare names: local definitions (nested functions), enclosing functions, module globals,
  ``from m import *``; parameters and loop variables shadow outer names;
* imports anywhere (module level or inside a function): ``import a.b``, ``import a.b as c``,
  ``from a import f``, ``from a import f as g``, relative imports (``from . import x``,
  ``from ..mod import f``), re-exports through ``__init__`` modules;
* attributes: ``module.func()``, ``a.b.func()``, ``Class.method()``, ``self.method()`` and
  ``cls.method()`` (through base classes defined in the folder; an override in a subclass is also
  a possible target of ``self.method()``), ``super().method()``;
* objects: ``Foo()`` is an edge to ``Foo.__init__`` (when the folder defines one); a local variable,
  ``self.attr`` or a parameter annotated with a class (``x = Foo()``, ``self.x = Foo()``,
  ``def f(x: Foo)``) has that type, so ``x.method()`` resolves; a function whose ``return`` gives an
  instance types the call result too.

Calls in a nested function belong to it; calls in a lambda belong to the function that defines it.
Dynamic calls (``getattr``, callbacks passed as values, dispatch dicts) are not followed, and calls
made at module or class level are not part of any function.

Limits: at most :data:`MAX_FILES` files and :data:`MAX_TOTAL_BYTES` of source (a larger folder is
refused with :class:`~tools_sandbox.agent.errors.ToolInputError`); files over :data:`MAX_FILE_BYTES`
or that do not parse are skipped and reported in ``skipped_files``; hidden folders, ``__pycache__``
and virtual environments are not searched. Calls are resolved lazily, only for the functions the
search reaches, and every lookup is memoised (searches from several start candidates share it), so
the cost is dominated by parsing; at most :data:`MAX_START_CANDIDATES` start candidates are
searched, each search visiting at most :data:`MAX_SEARCH_VISITS` functions.

stdlib only: this module runs inside the sandbox container.

Why one file of this length: it runs in the sandbox (standard library only) as one module: the
parser, the index, the resolver and the search share private data structures.
"""

from __future__ import annotations

import ast
import difflib
import keyword
import os
import re
import sys
import warnings
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from tools_sandbox.agent.errors import ToolFailure, ToolInputError

MAX_FILES = 5_000
"""Most ``*.py`` files in the folder; a larger folder is refused (point the tool at a subfolder)."""

MAX_FILE_BYTES = 2 * 1024 * 1024
"""Largest file parsed; larger files are skipped and listed in ``skipped_files``."""

MAX_TOTAL_BYTES = 64 * 1024 * 1024
"""Most bytes of Python source in the folder; a larger folder is refused. Parsing runs at roughly
1 MiB/s (the whole CPython standard library, 31 MB, takes about 30 s), so this keeps a call well
inside the default step timeout."""

MAX_RESOLVE_DEPTH = 100
"""Deepest chain of name / attribute / import lookups followed while resolving one expression."""

MAX_CANDIDATES_LISTED = 20
"""Most candidates listed in an "ambiguous name" error or a message, and in ``unreachable_candidates``."""

MAX_START_CANDIDATES = 20
"""Most functions an ambiguous ``start_func`` may match: one breadth-first search runs from each
(they share the memoised call resolution, so each costs one walk of the call graph). A name
matching more is refused as ambiguous, asking for a qualified name."""

MAX_SEARCH_VISITS = 100_000
"""Most functions one breadth-first search visits before it stops (and says so in ``message``).
Far above what a folder within the limits holds in practice (the ``ray`` package, 2,579 files and
27 MiB, has 27,715 functions): a guard, so that the work of a search with several start
candidates stays bounded by ``MAX_START_CANDIDATES * MAX_SEARCH_VISITS`` visits."""

MAX_PATHS_LISTED = 10
"""Most paths in ``paths`` (shortest first) when ambiguous names join in several ways."""

MAX_SUGGESTIONS = 5
"""Most close matches suggested for an unknown name."""


@dataclass(frozen=True)
class AnalyzerLimits:
    """The limits of one :func:`analyze` call; each default is the constant of the same name above.

    The agent always runs with the defaults (a plan's inputs cannot set them: ``limits`` is not a
    tool input); tests and benchmarks pass smaller ones (``analyze(..., limits=...)``)."""

    max_files: int = MAX_FILES
    max_file_bytes: int = MAX_FILE_BYTES
    max_total_bytes: int = MAX_TOTAL_BYTES
    max_resolve_depth: int = MAX_RESOLVE_DEPTH
    max_candidates_listed: int = MAX_CANDIDATES_LISTED
    max_start_candidates: int = MAX_START_CANDIDATES
    max_search_visits: int = MAX_SEARCH_VISITS
    max_paths_listed: int = MAX_PATHS_LISTED
    max_suggestions: int = MAX_SUGGESTIONS


_NO_CYCLE = 1 << 30
"""``_Index._low`` when no cycle was cut (deeper than any lookup can be)."""

SKIPPED_DIR_NAMES = frozenset({"__pycache__", "venv", "site-packages", "dist-packages", "node_modules"})
"""Folders never searched (besides hidden folders and any folder holding a ``pyvenv.cfg``)."""


# --- model -----------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Ref:
    """One binding of a name: what an assignment, import or definition put there."""

    kind: str  # def | class | module | from | expr | self | cls | annot | unknown
    target: str = ""  # qualified name (def, class, self, cls) or module name (module, from)
    attr: str = ""  # imported name (from)
    node: ast.expr | None = None  # value or annotation (expr, annot)
    scope: _Scope | None = None  # where ``node`` is evaluated


_UNKNOWN = _Ref("unknown")


@dataclass(eq=False)
class _Scope:
    kind: str  # module | class | function
    qualname: str
    module: str
    parent: _Scope | None
    method_class: str | None = None  # function scopes of methods: the class's qualified name
    bindings: dict[str, list[_Ref]] = field(default_factory=dict)
    star_imports: list[str] = field(default_factory=list)
    global_names: set[str] = field(default_factory=set)

    def bind(self, name: str, ref: _Ref) -> None:
        scope: _Scope = self
        if name in self.global_names:
            while scope.parent is not None:
                scope = scope.parent
        scope.bindings.setdefault(name, []).append(ref)


class _Value(NamedTuple):
    """What an expression may evaluate to."""

    kind: str  # module | func | class | instance | super
    name: str  # module name or qualified name
    exact: bool = True  # instance: False when a subclass instance is possible (``self``)


@dataclass(eq=False)
class _Module:
    name: str
    file: str
    is_package: bool
    scope: _Scope


@dataclass(eq=False)
class _Function:
    qualname: str
    module: str
    file: str
    line: int
    scope: _Scope
    calls: list[tuple[ast.expr, _Scope]] = field(default_factory=list)
    returns: list[tuple[ast.expr, _Scope]] = field(default_factory=list)

    @property
    def short_name(self) -> str:
        return self.qualname[len(self.module) + 1 :] if self.module else self.qualname


@dataclass(eq=False)
class _Class:
    qualname: str
    scope: _Scope  # the class body
    outer: _Scope  # where the bases are evaluated
    bases: list[ast.expr]
    instance_attrs: dict[str, list[tuple[ast.expr, _Scope]]] = field(default_factory=dict)


# --- discovery -------------------------------------------------------------------------------------


def _skip_dir(path: Path) -> bool:
    name = path.name
    return name.startswith(".") or name in SKIPPED_DIR_NAMES or (path / "pyvenv.cfg").exists()


def _find_sources(root: Path, limits: AnalyzerLimits) -> list[Path]:
    found: list[Path] = []
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not _skip_dir(here / d))
        for filename in sorted(filenames):
            if not filename.endswith(".py") or filename.startswith("."):
                continue
            found.append(here / filename)
            if len(found) > limits.max_files:
                raise ToolInputError(
                    f"folder {root} has more than {limits.max_files} Python files; "
                    "point the tool at a subfolder"
                )
            try:
                total += min((here / filename).stat().st_size, limits.max_file_bytes + 1)
            except OSError:
                continue
            if total > limits.max_total_bytes:
                raise ToolInputError(
                    f"folder {root} holds more than {limits.max_total_bytes // 2**20} MiB of Python sources; "
                    "point the tool at a subfolder"
                )
    return found


_IMPORT_LINE = re.compile(
    rb"^[ \t]*(?:from[ \t]+([A-Za-z_][\w.]*)[ \t]+import\b|import[ \t]+([A-Za-z_][\w.]*))", re.MULTILINE
)


def _is_identifier(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name)


def _package_prefix(root: Path, sources: list[Path], rels: list[Path], max_file_bytes: int) -> list[str]:
    """The dotted package name of ``root`` itself when it is a package (``[]`` otherwise).

    A folder staged into the sandbox lost its name (``staged-1a2b3c``): the package name is then
    inferred from the folder's own absolute imports (``from app.io import x`` in a folder holding
    ``io/``). Without a name the package's ``__init__`` is the module ``""``.
    """
    prefix: list[str] = []
    here = root.resolve()
    while (here / "__init__.py").is_file() and _is_identifier(here.name) and len(prefix) < 50:
        prefix.insert(0, here.name)
        here = here.parent
    if prefix or not (root / "__init__.py").is_file():
        return prefix
    modules = {".".join(_module_parts(rel)) for rel in rels}
    votes: Counter[str] = Counter()
    for path in sources:
        try:
            if path.stat().st_size > max_file_bytes:
                continue
            source = path.read_bytes()
        except OSError:
            continue
        for match in _IMPORT_LINE.finditer(source):
            first, _, rest = (match.group(1) or match.group(2)).decode("ascii").partition(".")
            if rest in modules and first not in modules and first not in sys.stdlib_module_names:
                votes[first] += 1
    return [min(votes, key=lambda name: (-votes[name], name))] if votes else []


def _module_parts(rel: Path) -> list[str]:
    parts = list(rel.parts)
    stem = parts[-1][: -len(".py")]
    return parts[:-1] if stem == "__init__" else [*parts[:-1], stem]


def _relative_import_base(module: str, is_package: bool, level: int, name: str | None) -> str | None:
    package = module if is_package else module.rpartition(".")[0]
    parts = package.split(".") if package else []
    if level - 1 > len(parts):
        return None
    base = parts[: len(parts) - (level - 1)]
    if name:
        base.append(name)
    return ".".join(base)


def _c3_merge(head: str, sequences: list[list[str]]) -> list[str] | None:
    order = [head]
    pending = [list(s) for s in sequences if s]
    while pending:
        for sequence in pending:
            candidate = sequence[0]
            if not any(candidate in other[1:] for other in pending):
                break
        else:
            return None
        if candidate in order:
            return None
        order.append(candidate)
        pending = [s[1:] if s[0] == candidate else s for s in pending]
        pending = [s for s in pending if s]
    return order


def _join(module: str, attr: str) -> str:
    return f"{module}.{attr}" if module else attr


_NOTED = frozenset(
    {
        ast.Call,
        ast.Import,
        ast.ImportFrom,
        ast.Assign,
        ast.AnnAssign,
        ast.NamedExpr,
        ast.For,
        ast.AsyncFor,
        ast.withitem,
        ast.ExceptHandler,
        ast.Global,
        ast.Return,
    }
)
"""Node types that bind a name, call or return (see ``_Index._note``)."""

_LEAVES = frozenset(
    {ast.Name, ast.Constant, ast.alias, ast.Pass, ast.Break, ast.Continue}
    | {
        cls
        for base in (ast.expr_context, ast.operator, ast.unaryop, ast.cmpop, ast.boolop)
        for cls in base.__subclasses__()
    }
)
"""Node types with nothing inside to record: not visited (a large share of every tree)."""


# --- indexing --------------------------------------------------------------------------------------


class _Index:
    """Every module, class and function of a folder, and the resolution of names between them."""

    def __init__(self, root: Path, limits: AnalyzerLimits) -> None:
        self.root = root
        self.limits = limits
        self.modules: dict[str, _Module] = {}
        self.aliases: dict[str, str | None] = {}  # alternative module name -> module (None: ambiguous)
        self.namespace_packages: set[str] = set()
        self.functions: dict[str, _Function] = {}  # first definition of each qualified name
        self.definitions: dict[str, list[_Function]] = {}  # every definition of each qualified name
        self.classes: dict[str, _Class] = {}
        self.properties: set[str] = set()  # methods decorated with @property or @cached_property
        self.skipped: list[dict[str, str]] = []
        self.files_indexed = 0
        self._active: dict[Any, int] = {}  # lookups in progress -> their depth
        self._low = _NO_CYCLE  # shallowest lookup in progress that a cycle cut back to
        self._cache: dict[Any, frozenset[_Value]] = {}
        self._provisional: dict[Any, frozenset[_Value]] = {}  # results inside a cycle, during one lookup
        self._mro_cache: dict[str, list[str]] = {}
        self._mro_active: set[str] = set()
        self._subclasses: dict[str, list[str]] | None = None
        self._callees: dict[str, list[str]] = {}

    # discovery and parsing

    def load(self) -> None:
        sources = _find_sources(self.root, self.limits)
        if not sources:
            raise ToolInputError(f"no Python (*.py) files found in folder {self.root}")
        rels = [path.relative_to(self.root) for path in sources]
        prefix = _package_prefix(self.root, sources, rels, self.limits.max_file_bytes)
        package_dirs = {rel.parent for rel in rels if rel.name == "__init__.py"}
        for path, rel in zip(sources, rels, strict=True):
            parts = [*prefix, *_module_parts(rel)]
            tree = self._parse(path, rel)
            if tree is None:
                continue
            name = ".".join(parts)
            if name in self.modules:
                self.skipped.append({"file": rel.as_posix(), "reason": f"module {name} is defined twice"})
                continue
            self.files_indexed += 1
            self._add_alias(name, rel, package_dirs, len(prefix))
            for i in range(1, len(parts)):
                self.namespace_packages.add(".".join(parts[:i]))
            self._collect(name, rel.as_posix(), tree, is_package=rel.name == "__init__.py")
        for alias in [a for a in self.aliases if a in self.modules]:
            del self.aliases[alias]

    def _parse(self, path: Path, rel: Path) -> ast.Module | None:
        def skip(reason: str) -> None:
            self.skipped.append({"file": rel.as_posix(), "reason": reason})

        try:
            if path.is_symlink():
                skip("symbolic link")
                return None
            size = path.stat().st_size
            if size > self.limits.max_file_bytes:
                skip(f"{size} bytes, over the limit of {self.limits.max_file_bytes}")
                return None
            source = path.read_bytes()
        except OSError as exc:
            skip(f"cannot read: {exc.strerror or exc}")
            return None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return ast.parse(source, filename=rel.as_posix())
        except SyntaxError as exc:
            skip(f"syntax error at line {exc.lineno}: {exc.msg}")
        except (ValueError, RecursionError, MemoryError) as exc:
            skip(f"cannot parse: {type(exc).__name__}: {exc}")
        return None

    def _add_alias(self, name: str, rel: Path, package_dirs: set[Path], prefix_len: int) -> None:
        """Also know ``src/app/x.py`` as ``app.x``: its name from the top of its package tree."""
        if prefix_len:
            return
        top = rel.parent
        while top != Path(".") and top in package_dirs:
            top = top.parent
        if top == Path("."):
            return
        alias = ".".join(_module_parts(rel.relative_to(top)))
        if alias and alias != name:
            self.aliases[alias] = None if alias in self.aliases else name

    # collection: one iterative pass over each module's tree

    def _collect(self, module: str, file: str, tree: ast.Module, *, is_package: bool) -> None:
        scope = _Scope("module", module, module, None)
        self.modules[module] = _Module(module, file, is_package, scope)
        stack: list[tuple[ast.AST, _Scope, _Function | None]] = [
            (s, scope, None) for s in reversed(tree.body)
        ]
        while stack:
            node, scope, func = stack.pop()
            children: list[tuple[ast.AST, _Scope, _Function | None]]
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                inner = self._add_function(node, scope, file)
                outer_exprs = [*node.decorator_list, *node.args.defaults]
                outer_exprs += [d for d in node.args.kw_defaults if d is not None]
                children = [(e, scope, func) for e in outer_exprs]
                children += [(s, inner.scope, inner) for s in node.body]
            elif isinstance(node, ast.ClassDef):
                body = self._add_class(node, scope)
                outer_exprs = [*node.decorator_list, *node.bases, *(k.value for k in node.keywords)]
                children = [(e, scope, func) for e in outer_exprs]
                children += [(s, body, func) for s in node.body]
            else:
                if type(node) in _NOTED:
                    self._note(node, scope, func)
                children = [
                    (child, scope, func) for child in ast.iter_child_nodes(node) if type(child) not in _LEAVES
                ]
            stack.extend(reversed(children))

    def _note(self, node: ast.AST, scope: _Scope, func: _Function | None) -> None:
        """Record what a non-scope node binds, calls or returns."""
        if isinstance(node, ast.Call) and func is not None:
            func.calls.append((node.func, scope))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            self._bind_import(node, scope)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.NamedExpr):
            self._bind_assignment(node, scope)
        elif isinstance(node, ast.For | ast.AsyncFor):
            self._bind_target(node.target, None, scope)
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            self._bind_target(node.optional_vars, node.context_expr, scope)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            scope.bind(node.name, _UNKNOWN)
        elif isinstance(node, ast.Global):
            scope.global_names.update(node.names)
        elif isinstance(node, ast.Return) and node.value is not None and func is not None:
            func.returns.append((node.value, scope))

    def _bind_assignment(self, node: ast.Assign | ast.AnnAssign | ast.NamedExpr, scope: _Scope) -> None:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                self._bind_target(target, node.value, scope)
        elif node.value is not None:
            self._bind_target(node.target, node.value, scope)
        elif isinstance(node.target, ast.Name):  # ``x: Foo`` without a value: typed by the annotation
            assert isinstance(node, ast.AnnAssign)
            scope.bind(node.target.id, _Ref("annot", node=node.annotation, scope=scope))

    def _add_function(
        self, node: ast.FunctionDef | ast.AsyncFunctionDef, scope: _Scope, file: str
    ) -> _Function:
        qualname = _join(scope.qualname, node.name)
        method_class = scope.qualname if scope.kind == "class" else None
        inner = _Scope("function", qualname, scope.module, scope, method_class=method_class)
        func = _Function(qualname, scope.module, file, node.lineno, inner)
        scope.bind(node.name, _Ref("def", qualname))
        self.functions.setdefault(qualname, func)
        self.definitions.setdefault(qualname, []).append(func)

        decorators = {
            d.id if isinstance(d, ast.Name) else d.attr
            for d in node.decorator_list
            if isinstance(d, ast.Name | ast.Attribute)
        }
        if method_class is not None and decorators & {"property", "cached_property"}:
            self.properties.add(qualname)
        args = node.args
        params = [*args.posonlyargs, *args.args]
        if method_class is not None and params and "staticmethod" not in decorators:
            first = params.pop(0)
            is_cls = "classmethod" in decorators or node.name in ("__new__", "__init_subclass__")
            inner.bind(first.arg, _Ref("cls" if is_cls else "self", method_class))
        params += [*args.kwonlyargs, *(a for a in (args.vararg, args.kwarg) if a is not None)]
        for param in params:
            if param.annotation is not None and param not in (args.vararg, args.kwarg):
                inner.bind(param.arg, _Ref("annot", node=param.annotation, scope=scope))
            else:
                inner.bind(param.arg, _UNKNOWN)
        return func

    def _add_class(self, node: ast.ClassDef, scope: _Scope) -> _Scope:
        qualname = _join(scope.qualname, node.name)
        body = _Scope("class", qualname, scope.module, scope)
        scope.bind(node.name, _Ref("class", qualname))
        self.classes.setdefault(qualname, _Class(qualname, body, scope, list(node.bases)))
        return body

    def _bind_import(self, node: ast.Import | ast.ImportFrom, scope: _Scope) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    scope.bind(alias.asname, _Ref("module", alias.name))
                else:
                    top = alias.name.partition(".")[0]
                    scope.bind(top, _Ref("module", top))
            return
        base: str | None = node.module or ""
        if node.level:
            module = self.modules[scope.module]
            base = _relative_import_base(module.name, module.is_package, node.level, node.module)
        for alias in node.names:
            if alias.name == "*":
                if base is not None:
                    scope.star_imports.append(base)
            elif base is None:
                scope.bind(alias.asname or alias.name, _UNKNOWN)
            else:
                scope.bind(alias.asname or alias.name, _Ref("from", base, alias.name))

    def _bind_target(self, target: ast.expr, value: ast.expr | None, scope: _Scope) -> None:
        if isinstance(target, ast.Name):
            scope.bind(target.id, _Ref("expr", node=value, scope=scope) if value is not None else _UNKNOWN)
        elif isinstance(target, ast.Tuple | ast.List):
            values: list[ast.expr | None] = [None] * len(target.elts)
            if isinstance(value, ast.Tuple | ast.List) and len(value.elts) == len(target.elts):
                values = list(value.elts)
            for element, element_value in zip(target.elts, values, strict=True):
                self._bind_target(element, element_value, scope)
        elif isinstance(target, ast.Starred):
            self._bind_target(target.value, None, scope)
        elif isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and value is not None:
            # self.attr = value inside a method: an attribute of the class's instances.
            for ref in self._lookup(target.value.id, scope):
                if ref.kind == "self" and ref.target in self.classes:
                    attrs = self.classes[ref.target].instance_attrs
                    attrs.setdefault(target.attr, []).append((value, scope))

    # resolution

    def _lookup(self, name: str, scope: _Scope) -> list[_Ref]:
        """The bindings a name refers to in ``scope`` (Python's rules; class bodies do not nest)."""
        current: _Scope | None = scope
        while current is not None:
            if current.kind != "class" or current is scope:
                refs = current.bindings.get(name)
                if refs:
                    return refs
            if current.kind == "module":
                return [_Ref("from", star, name) for star in current.star_imports]
            current = current.parent
        return []

    def _guarded(self, key: Any, compute: Any) -> frozenset[_Value]:
        """Memoised, cycle- and depth-safe evaluation of ``compute()``.

        A lookup that comes back to one in progress (a cycle: ``x = x.parent``, mutual imports,
        recursive returns) gets nothing from it. As in Tarjan's algorithm, results are cached for good
        only once the outermost lookup of their cycle is done; until then they are kept provisionally,
        so that every lookup is computed at most once per top-level resolution (no exponential blow-up).
        """
        if key in self._cache:
            return self._cache[key]
        if key in self._provisional:
            return self._provisional[key]
        depth = self._active.get(key)
        if depth is not None:
            self._low = min(self._low, depth)
            return frozenset()
        depth = len(self._active)
        if depth >= self.limits.max_resolve_depth:
            return frozenset()
        self._active[key] = depth
        outer_low, self._low = self._low, _NO_CYCLE
        try:
            result = frozenset(compute())
        finally:
            del self._active[key]
        if self._low >= depth:  # no cycle through a lookup outside this one
            self._cache[key] = result
            self._low = outer_low
        else:
            self._provisional[key] = result
            self._low = min(outer_low, self._low)
        if not self._active:
            self._provisional.clear()
        return result

    def _canonical_module(self, name: str) -> str | None:
        if name in self.modules:
            return name
        return self.aliases.get(name)

    def _is_module(self, name: str) -> bool:
        return self._canonical_module(name) is not None or name in self.namespace_packages

    def module_attr(self, module: str, attr: str) -> frozenset[_Value]:
        def compute() -> set[_Value]:
            values: set[_Value] = set()
            canonical = self._canonical_module(module)
            if canonical is not None:
                scope = self.modules[canonical].scope
                refs = scope.bindings.get(attr) or [_Ref("from", s, attr) for s in scope.star_imports]
                values |= self._ref_values(refs)
            submodule = _join(module, attr)
            if self._is_module(submodule):
                values.add(_Value("module", self._canonical_module(submodule) or submodule))
            return values

        return self._guarded(("attr", module, attr), compute)

    def _ref_values(self, refs: Iterable[_Ref]) -> set[_Value]:
        values: set[_Value] = set()
        for ref in refs:
            if ref.kind == "def":
                values.add(_Value("func", ref.target))
            elif ref.kind == "class":
                values.add(_Value("class", ref.target))
            elif ref.kind == "module":
                values.add(_Value("module", self._canonical_module(ref.target) or ref.target))
            elif ref.kind == "from":
                values |= self.module_attr(ref.target, ref.attr)
            elif ref.kind == "self":
                values.add(_Value("instance", ref.target, exact=False))
            elif ref.kind == "cls":
                values.add(_Value("class", ref.target))
            elif ref.kind == "expr" and ref.node is not None and ref.scope is not None:
                values |= self.resolve(ref.node, ref.scope)
            elif ref.kind == "annot" and ref.node is not None and ref.scope is not None:
                values |= self._annotation_values(ref.node, ref.scope)
        return values

    def _annotation_values(self, node: ast.expr, scope: _Scope) -> set[_Value]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            try:
                node = ast.parse(node.value.strip(), mode="eval").body
            except (SyntaxError, ValueError, RecursionError, MemoryError):
                return set()
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            return self._annotation_values(node.left, scope) | self._annotation_values(node.right, scope)
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name | ast.Attribute):
            wrapper = node.value.id if isinstance(node.value, ast.Name) else node.value.attr
            if wrapper == "Optional":
                return self._annotation_values(node.slice, scope)
            return set()
        return {
            _Value("instance", v.name, exact=False) for v in self.resolve(node, scope) if v.kind == "class"
        }

    def resolve(self, node: ast.expr, scope: _Scope) -> frozenset[_Value]:
        """What ``node`` may evaluate to when evaluated in ``scope``."""

        def compute() -> set[_Value]:
            if isinstance(node, ast.Name):
                return self._ref_values(self._lookup(node.id, scope))
            if isinstance(node, ast.Attribute):
                values: set[_Value] = set()
                for base in self.resolve(node.value, scope):
                    values |= self.attr_values(base, node.attr)
                return values
            if isinstance(node, ast.Call):
                return self._call_result(node, scope)
            if isinstance(node, ast.IfExp):
                return set(self.resolve(node.body, scope) | self.resolve(node.orelse, scope))
            if isinstance(node, ast.BoolOp):
                return {value for operand in node.values for value in self.resolve(operand, scope)}
            if isinstance(node, ast.NamedExpr):
                return set(self.resolve(node.value, scope))
            return set()

        return self._guarded(("expr", id(node), id(scope)), compute)

    def _call_result(self, node: ast.Call, scope: _Scope) -> set[_Value]:
        func = node.func
        if (
            isinstance(func, ast.Name)
            and func.id == "super"
            and not self._ref_values(self._lookup("super", scope))
        ):
            current: _Scope | None = scope
            while current is not None and current.kind != "module":
                if current.method_class is not None:
                    return {_Value("super", current.method_class)}
                current = current.parent
            return set()
        values: set[_Value] = set()
        for callee in self.resolve(node.func, scope):
            if callee.kind == "class":
                values.add(_Value("instance", callee.name))
            elif callee.kind == "func":
                values |= self._function_returns(callee.name)
        return values

    def _function_returns(self, qualname: str) -> frozenset[_Value]:
        def compute() -> set[_Value]:
            values: set[_Value] = set()
            for func in self.definitions.get(qualname, []):
                for expr, scope in func.returns:
                    values |= self.resolve(expr, scope)
            return values

        return self._guarded(("returns", qualname), compute)

    def attr_values(self, value: _Value, attr: str) -> set[_Value]:
        """What ``value.attr`` may be: a module's global, a class's or an instance's attribute."""
        if value.kind == "module":
            return set(self.module_attr(value.name, attr))
        if value.kind not in ("class", "instance", "super") or value.name not in self.classes:
            return set()
        values = self._class_attr(value, attr)
        getters = {v for v in values if v.kind == "func" and v.name in self.properties}
        if getters and value.kind != "class":
            values -= getters  # obj.prop is what the property's getter returns
            for getter in getters:
                values |= self._function_returns(getter.name)
        if value.kind == "instance" and not value.exact:
            # self.method() may run an override defined in a subclass.
            for sub in self.subclasses(value.name):
                refs = self.classes[sub].scope.bindings.get(attr, [])
                values |= {_Value("func", r.target) for r in refs if r.kind == "def"}
        return values

    def _class_attr(self, value: _Value, attr: str) -> set[_Value]:
        """The attribute from the first class in the method resolution order that defines it."""
        mro = self.mro(value.name)
        for cls in mro[1:] if value.kind == "super" else mro:
            info = self.classes[cls]
            values = self._ref_values(info.scope.bindings.get(attr, []))
            if value.kind != "class":  # instance attributes: self.attr = ... in a method
                for expr, scope in info.instance_attrs.get(attr, []):
                    values |= self.resolve(expr, scope)
            if values:
                return values
        return set()

    def bases(self, qualname: str) -> list[str]:
        info = self.classes[qualname]
        found: list[str] = []
        for base in info.bases:
            for value in sorted(self.resolve(base, info.outer)):
                if value.kind == "class" and value.name in self.classes and value.name not in found:
                    found.append(value.name)
        return found

    def mro(self, qualname: str) -> list[str]:
        """Method resolution order: C3 like Python, depth-first when C3 fails; cycle-safe."""
        if qualname in self._mro_cache:
            return self._mro_cache[qualname]
        if qualname in self._mro_active:
            return [qualname]
        self._mro_active.add(qualname)
        try:
            bases = [b for b in self.bases(qualname) if b != qualname]
            parents = [self.mro(b) for b in bases]
        finally:
            self._mro_active.discard(qualname)
        order = _c3_merge(qualname, [*parents, bases])
        if order is None:  # inconsistent hierarchy: Python would refuse it; fall back to depth-first
            order = [qualname]
            for parent in parents:
                order += [c for c in parent if c not in order]
        self._mro_cache[qualname] = order
        return order

    def subclasses(self, qualname: str) -> list[str]:
        if self._subclasses is None:
            self._subclasses = {}
            for cls in self.classes:
                for base in self.bases(cls):
                    self._subclasses.setdefault(base, []).append(cls)
        found: list[str] = []
        pending = list(self._subclasses.get(qualname, []))
        while pending:
            cls = pending.pop(0)
            if cls not in found and cls != qualname:
                found.append(cls)
                pending.extend(self._subclasses.get(cls, []))
        return found

    # the call graph

    def call_targets(self, callee: ast.expr, scope: _Scope) -> list[str]:
        targets: list[str] = []
        for value in sorted(self.resolve(callee, scope)):
            if value.kind == "func":
                names = [value.name]
            elif value.kind == "class":
                init = self.attr_values(_Value("instance", value.name), "__init__")
                post_init = self.attr_values(_Value("instance", value.name), "__post_init__")
                names = [v.name for v in sorted(init | post_init) if v.kind == "func"]
            elif value.kind == "instance":
                names = [v.name for v in sorted(self.attr_values(value, "__call__")) if v.kind == "func"]
            else:
                names = []
            targets += [name for name in names if name in self.functions and name not in targets]
        return targets

    def callees(self, qualname: str) -> list[str]:
        """The functions ``qualname`` calls, in the order of the calls (resolved on first use)."""
        found = self._callees.get(qualname)
        if found is None:
            targets: dict[str, None] = {}
            for func in self.definitions.get(qualname, []):
                for callee, scope in func.calls:
                    targets.update(dict.fromkeys(self.call_targets(callee, scope)))
            found = self._callees[qualname] = list(targets)
        return found


# --- name matching ---------------------------------------------------------------------------------


def _where(func: _Function) -> str:
    return f"{func.qualname} ({func.file}:{func.line})"


def _listing(index: _Index, candidates: list[str]) -> str:
    """``q1 (file:line), q2 (file:line)``, at most :data:`MAX_CANDIDATES_LISTED`, then ``, and N more``."""
    listed = [_where(index.functions[q]) for q in candidates[: index.limits.max_candidates_listed]]
    more = len(candidates) - len(listed)
    return ", ".join(listed) + (f", and {more} more" if more else "")


def _ambiguous_prefix(index: _Index, name: str, role: str, candidates: list[str]) -> str:
    """The start of every "ambiguous" error; the embedded planner parses it, so keep its format."""
    return (
        f"{role} {name!r} is ambiguous: it matches {len(candidates)} functions: "
        f"{_listing(index, candidates)}."
    )


def _candidates(index: _Index, name: Any, role: str) -> list[str]:
    """The functions ``name`` may mean, sorted: the exact qualified name alone, else every function
    whose qualified name ends with ``.name``. None raises :class:`ToolInputError` with close matches."""
    if not isinstance(name, str) or not name.strip():
        raise ToolInputError(f"{role} must be a non-empty function name")
    wanted = name.strip().removesuffix("()")
    if wanted in index.functions:
        return [wanted]
    candidates = sorted(q for q in index.functions if q.endswith("." + wanted))
    if candidates:
        return candidates
    raise ToolInputError(_not_found_message(index, name, wanted, role))


def _not_found_message(index: _Index, name: str, wanted: str, role: str) -> str:
    by_suffix: dict[str, list[str]] = {}
    for qualname in index.functions:
        parts = qualname.split(".")
        for i in range(len(parts)):
            by_suffix.setdefault(".".join(parts[i:]), []).append(qualname)
    suggestions: list[str] = []
    lowered = {key.lower(): key for key in by_suffix}
    most = index.limits.max_suggestions
    matches = difflib.get_close_matches(wanted.lower(), list(lowered), n=most, cutoff=0.6)
    for match in matches:
        for qualname in sorted(by_suffix[lowered[match]]):
            if qualname not in suggestions:
                suggestions.append(qualname)
    message = (
        f"{role} {name!r} not found among {len(index.functions)} functions in {index.files_indexed} files"
    )
    if index.skipped:
        message += f" ({len(index.skipped)} files skipped, see skipped_files)"
    if suggestions:
        message += "; did you mean: " + ", ".join(suggestions[:most]) + "?"
    return message


# --- entry point -----------------------------------------------------------------------------------


def _check_folder(folder: Any) -> Path:
    if not isinstance(folder, str) or not folder.strip():
        raise ToolInputError("folder must be a non-empty path")
    root = Path(folder)
    if not root.exists():
        raise ToolInputError(f"folder {folder!r} does not exist")
    if not root.is_dir():
        raise ToolInputError(f"{folder!r} is not a directory")
    return root


class _Search(NamedTuple):
    """What one breadth-first search from a start function found."""

    paths: dict[str, list[str]]  # end candidate -> the shortest path to it (start ... end)
    reached: int  # functions discovered, the start excluded
    stopped: bool  # True when it hit MAX_SEARCH_VISITS before it was done


def _search(index: _Index, start: str, ends: Iterable[str]) -> _Search:
    """BFS from ``start``: the shortest path to each of ``ends`` it reaches.

    Stops when every end is found, when nothing is left to visit, or after visiting
    :data:`MAX_SEARCH_VISITS` functions. Calls are resolved as the search reaches a function
    (memoised in the index, so later searches from other candidates reuse them).
    """
    wanted = set(ends)
    paths: dict[str, list[str]] = {}
    parents: dict[str, str | None] = {start: None}
    queue = deque([start])
    visits = 0
    while queue:
        if visits >= index.limits.max_search_visits:
            return _Search(paths, len(parents) - 1, True)
        current = queue.popleft()
        visits += 1
        if current in wanted:
            path: list[str] = []
            step: str | None = current
            while step is not None:
                path.append(step)
                step = parents[step]
            paths[current] = path[::-1]
            if len(paths) == len(wanted):
                break
        for callee in index.callees(current):
            if callee not in parents:
                parents[callee] = current
                queue.append(callee)
    return _Search(paths, len(parents) - 1, False)


def _path_key(path: list[str]) -> tuple[int, str, str]:
    """Shortest first; among equally short paths, by the qualified names of their start, then end
    (one path per pair of candidates, so the order is total and deterministic)."""
    return len(path), path[0], path[-1]


def _hops_text(index: _Index, path: list[str]) -> str:
    hops = len(path) - 1
    names = " → ".join(index.functions[name].short_name for name in path)
    return f"{names} ({hops} hop{'' if hops == 1 else 's'})"


def _entry(index: _Index, name: str) -> dict[str, Any]:
    func = index.functions[name]
    return {"name": func.qualname, "file": func.file, "line": func.line}


def _reached_text(index: _Index, start: str, search: _Search) -> str:
    short = index.functions[start].short_name
    if search.stopped:
        return (
            f"{short} reaches more than {search.reached} functions (the search stopped after "
            f"{index.limits.max_search_visits} of them)"
        )
    return f"{short} reaches {search.reached} function{'' if search.reached == 1 else 's'}"


def _unambiguous(index: _Index, start: str, end: str, counts: str) -> dict[str, Any]:
    search = _search(index, start, [end])
    path = search.paths.get(end, [])
    if path:
        message = _hops_text(index, path)
    else:
        message = (
            f"no call path from {start} to {end} ({counts}); {_reached_text(index, start, search)}. "
            "Calls made dynamically (getattr, callbacks, dispatch tables) cannot be followed"
        )
    return {
        "found": bool(path),
        "path": [_entry(index, name) for name in path],
        "hops": max(len(path) - 1, 0),
        "message": message,
        "paths": [[_entry(index, name) for name in path]] if path else [],
        "unreachable_candidates": [],
    }


def _ambiguous(
    index: _Index,
    names: tuple[str, str],
    starts: list[str],
    ends: list[str],
) -> dict[str, Any]:
    """Several candidates for start or end: search from each start candidate, keep what connects."""
    start_name, end_name = names
    limits = index.limits
    if len(starts) > limits.max_start_candidates:
        raise ToolInputError(
            _ambiguous_prefix(index, start_name, "start_func", starts)
            + f" Too many to search (the limit is {limits.max_start_candidates}); "
            f"Use a qualified name such as {starts[0]!r}"
        )
    searches = {start: _search(index, start, ends) for start in starts}
    found = sorted((p for s in searches.values() for p in s.paths.values()), key=_path_key)
    if not found:
        raise ToolInputError(_none_reachable(index, names, starts, ends, searches))
    lost_starts = [s for s in starts if not searches[s].paths]
    joined_ends = {path[-1] for path in found}
    lost_ends = [e for e in ends if e not in joined_ends]
    message = _hops_text(index, found[0])
    if len(found) > 1:
        message += f"; {len(found)} paths join the candidates, the shortest is shown (see paths)"
    stopped = [s for s in starts if searches[s].stopped]
    if lost_ends:
        who = (
            index.functions[starts[0]].short_name
            if len(starts) == 1
            else f"no candidate of start_func {start_name!r}"
        )
        verb = "does not reach" if len(starts) == 1 else "reaches"
        message += f"; end_func {end_name!r} also matches {_listing(index, lost_ends)}, which {who} {verb}"
    if lost_starts:
        what = (
            f"does not reach {index.functions[ends[0]].short_name}"
            if len(ends) == 1
            else f"reaches no candidate of end_func {end_name!r}"
        )
        message += f"; start_func {start_name!r} also matches {_listing(index, lost_starts)}, which {what}"
    if stopped:
        message += (
            f" (the search from {', '.join(stopped)} stopped after {limits.max_search_visits} functions)"
        )
    lost = [("start_func", s) for s in lost_starts] + [("end_func", e) for e in lost_ends]
    return {
        "found": True,
        "path": [_entry(index, name) for name in found[0]],
        "hops": len(found[0]) - 1,
        "message": message,
        "paths": [[_entry(index, name) for name in path] for path in found[: limits.max_paths_listed]],
        "unreachable_candidates": [
            {"role": role, **_entry(index, name)} for role, name in lost[: limits.max_candidates_listed]
        ],
    }


def _none_reachable(
    index: _Index,
    names: tuple[str, str],
    starts: list[str],
    ends: list[str],
    searches: dict[str, _Search],
) -> str:
    """The error for ambiguous names none of whose candidate pairs is joined by a call path."""
    start_name, end_name = names
    if len(starts) > 1:
        message = _ambiguous_prefix(index, start_name, "start_func", starts)
        if len(ends) > 1:
            message += (
                f" None of them reaches any of the {len(ends)} functions end_func {end_name!r} "
                f"matches ({_listing(index, ends)})"
            )
        else:
            message += f" None of them reaches {ends[0]}"
        suggestion = starts[0]
    else:
        start = starts[0]
        message = _ambiguous_prefix(index, end_name, "end_func", ends)
        message += f" None of them is reachable from {start} ({_reached_text(index, start, searches[start])})"
        suggestion = ends[0]
    stopped = [s for s in starts if searches[s].stopped]
    if stopped and len(starts) > 1:
        visits = index.limits.max_search_visits
        message += f" (the search from {', '.join(stopped)} stopped after {visits} functions)"
    return message + f"; Use a qualified name such as {suggestion!r}"


def analyze(
    folder: str, start_func: str, end_func: str, *, limits: AnalyzerLimits | None = None
) -> dict[str, Any]:
    """Find the shortest call path from ``start_func`` to ``end_func`` in the Python files of ``folder``.

    Names may be qualified (``pkg.mod.func``, ``mod.Class.method``), a dotted suffix
    (``Class.method``) or bare (``func``); an exact qualified name wins, otherwise every function
    whose name ends with it is a candidate. A name matching none raises :class:`ToolInputError`
    with close matches ("... not found among N functions in M files; did you mean: a, b?").

    Returns ``found``, ``path`` (a list of ``{"name", "file", "line"}``, file relative to the
    folder), ``hops``, ``message``, ``paths`` (every path found, each like ``path``, shortest
    first), ``unreachable_candidates`` (``{"role", "name", "file", "line"}``: candidates of an
    ambiguous name on no path), ``functions_indexed``, ``files_indexed`` and ``skipped_files``
    (``{"file", "reason"}``).

    When a name is ambiguous, the search runs from every start candidate (at most
    :data:`MAX_START_CANDIDATES`) and the answer is the shortest path joining any start candidate
    to any end candidate (ties: by the qualified names of start, then end); ``paths`` lists up to
    :data:`MAX_PATHS_LISTED` of the paths found, one per joined pair, and ``message`` names the
    candidates that take part in none. Only when no pair is joined is the name an error:
    ``"{role} {name!r} is ambiguous: it matches N functions: q1 (file:line), q2 (file:line). None
    of them ...; Use a qualified name such as 'q1'"``. With one candidate on each side, no path is
    not an error: ``found`` is False, ``paths`` and ``unreachable_candidates`` are empty and
    ``message`` says how far the start reaches.

    ``limits`` (default :class:`AnalyzerLimits()`, the constants above) bound the work and the answer.
    """
    root = _check_folder(folder)
    index = _Index(root, limits or AnalyzerLimits())
    index.load()
    if not index.files_indexed:
        raise ToolInputError(
            f"none of the {len(index.skipped)} Python files in {folder!r} could be parsed "
            f"(first: {index.skipped[0]['file']}: {index.skipped[0]['reason']})"
        )
    starts = _candidates(index, start_func, "start_func")
    ends = _candidates(index, end_func, "end_func")
    counts = f"{len(index.functions)} functions in {index.files_indexed} files indexed"
    try:
        if len(starts) == 1 and len(ends) == 1:
            result = _unambiguous(index, starts[0], ends[0], counts)
        else:
            result = _ambiguous(index, (str(start_func), str(end_func)), starts, ends)
    except RecursionError:
        raise ToolFailure("the code is nested too deeply to resolve its calls") from None
    return {
        **result,
        "functions_indexed": len(index.functions),
        "files_indexed": index.files_indexed,
        "skipped_files": index.skipped,
    }
