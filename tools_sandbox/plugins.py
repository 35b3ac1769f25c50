"""The plugin API: register your own module-level functions as tools that run in the sandbox.

A plugin is a module-level function taking one pydantic model and returning a JSON-able dict::

    from pydantic import BaseModel, Field
    from tools_sandbox.plugins import tool

    class WordCountInput(BaseModel):
        text: str = Field(max_length=100_000)

    @tool(description="Count words in a text", risk="low", outputs=("words",))
    def word_count(inputs: WordCountInput) -> dict:
        return {"words": len(inputs.text.split())}

List its module in the config (``plugins: ["examples.plugins.text_tools"]``); :func:`load_plugins`
imports it (module names are looked up on ``sys.path``, with the current directory added at the
end) and every ``@tool`` joins the catalog. The function stays an ordinary function: call it
directly in your tests.

How a plugin runs
-----------------
The *module* is imported **host side** (by :func:`load_plugins`, in the orchestrator, the tool
runners, the serving app and the CLI): its top-level code runs there, as trusted code. The
*function* runs like the built-in tools, **in the sandbox**, never in a host process. At registration
the decorator reads the module's source file; for each call the executor sends that source with
the step (protocol field ``plugin``: module, function, source). The in-sandbox agent writes it into
a fresh staged folder of the workspace, imports it *from there* under its module name (a new module
object for every call, in the call's own worker process: no state survives between calls, let alone
between tasks), validates the inputs with the input model, calls the function and returns its
result. Inputs are validated twice: on the host before anything runs (``bad_input``), and in the
sandbox with the same model.

What a plugin module may import
-------------------------------
The standard library, :mod:`pydantic` (the sandbox image ships the host's pydantic and its runtime
dependencies) and :mod:`tools_sandbox.plugins`. Nothing else exists in the sandbox: no officeray
modules, no third-party packages, no other module of yours. **A plugin is one self-contained
module** (multi-module plugins, relative imports and data files are not supported). The sandbox has
no network; the function sees the workspace of the current task only.

Errors
------
* the module cannot be imported in the sandbox (syntax error, missing import, exception at import)
  → ``bad_input`` naming the module;
* the inputs fail the input model (host or sandbox) → ``bad_input`` naming the fields;
* the function raises → ``tool_error`` with the exception's type and message;
* the function returns something that is not a JSON-able dict (or a pydantic model), or lacks a
  declared output key → ``tool_error``; timeouts and limits are those of any sandbox tool.

Rules checked by :func:`tool`
-----------------------------
The function must be a plain ``def`` at module level of an importable module (not ``__main__``, not
a lambda, closure, method, coroutine or generator) with exactly one parameter, whose annotation
(or ``input_model=``) is a pydantic model; the tool name (default: the function name) must be an
identifier not registered yet (re-importing the same module replaces its own tools). Input models
are made strict: unknown input keys are refused, as for the built-in tools.

IMPORT RULE: this module runs inside the sandbox too, so it imports only the standard library,
pydantic and :mod:`tools_sandbox.agent.limits` (stdlib-only, shipped in the image) at module level;
:mod:`tools_sandbox.catalog` (officeray) is imported inside :func:`tool`, and not at all when the
agent imports a plugin.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
import re
import sys
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from tools_sandbox.agent.limits import MAX_PLUGIN_SOURCE_BYTES

PLUGIN_EXTRA_KEY = "plugin"
"""Key of :attr:`tools_sandbox.catalog.ToolSpec.extra` holding a plugin tool's :class:`PluginRef`."""

RISK_LEVELS = ("low", "medium", "high")
"""The values of :class:`tools_sandbox.catalog.RiskLevel` (not imported here: see the module docstring)."""

TOOL_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MODULE_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

_TOOL_ATTR = "__officeray_tool__"
"""Attribute the decorator sets on the function: its :class:`PluginInfo` (read by the agent)."""

_in_sandbox = False
"""True in the agent's worker process while it imports a plugin: ``@tool`` then registers nothing."""

F = TypeVar("F", bound=Callable[..., Any])


class PluginError(ValueError):
    """``@tool`` refused a function (the message says which rule it breaks)."""


@dataclass(frozen=True)
class PluginInfo:
    """What ``@tool`` recorded on a function (same in the host and in the sandbox)."""

    name: str
    input_model: type[BaseModel]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class PluginRef:
    """Where a plugin tool's code is: what the executor sends to the agent with each call."""

    module: str
    function: str
    path: str
    """The module's source file on the host (for messages; the source itself is in :attr:`source`)."""
    source: str
    """The module's source as read when the tool was registered: the code the sandbox runs."""

    def protocol_field(self) -> dict[str, str]:
        """The ``plugin`` field of an agent ``call`` request."""
        return {"module": self.module, "function": self.function, "source": self.source}


# --------------------------------------------------------------------------------------------------
# The decorator
# --------------------------------------------------------------------------------------------------


def tool(
    name: str | None = None,
    *,
    description: str,
    risk: str = "low",
    outputs: Iterable[str] = (),
    input_model: type[BaseModel] | None = None,
) -> Callable[[F], F]:
    """Register the decorated module-level function as a sandbox tool; returns it unchanged.

    Args:
        name: the tool's name in plans (default: the function's name).
        description: what the tool does and returns, for planners and ``officeray tools``.
        risk: ``"low"``, ``"medium"`` or ``"high"``.
        outputs: the keys the returned dict always has (the reviewer checks them).
        input_model: the inputs' pydantic model (default: the first parameter's annotation).

    Raises :class:`PluginError` (a ``ValueError``) when a rule of the module docstring is broken.
    """
    if not isinstance(description, str) or not description.strip():
        raise PluginError("@tool: description must be a non-empty string")
    if risk not in RISK_LEVELS:
        raise PluginError(f"@tool: risk must be one of {', '.join(RISK_LEVELS)}, not {risk!r}")
    if isinstance(outputs, str):
        raise PluginError(f"@tool: outputs must be a tuple of key names, e.g. ({outputs!r},)")
    declared = tuple(outputs)
    for key in declared:
        if not isinstance(key, str) or not key:
            raise PluginError(f"@tool: outputs must be non-empty strings, not {key!r}")

    def decorate(fn: F) -> F:
        where = _check_function(fn)
        tool_name = fn.__name__ if name is None else name
        if not isinstance(tool_name, str) or not TOOL_NAME_RE.match(tool_name):
            raise PluginError(f"@tool {where}: name must be an identifier of at most 64 characters")
        model = _strict(_input_model(fn, input_model, where))
        try:
            model.model_json_schema()
        except Exception as exc:
            raise PluginError(f"@tool {where}: the input model has no JSON schema: {exc}") from None
        setattr(fn, _TOOL_ATTR, PluginInfo(tool_name, model, declared))
        if not _in_sandbox:
            _register(fn, tool_name, description.strip(), risk, declared, model, where)
        return fn

    return decorate


def _check_function(fn: Any) -> str:
    """``module.function`` of a valid plugin function; PluginError otherwise."""
    if not inspect.isfunction(fn):
        kind = "a method" if inspect.ismethod(fn) else type(fn).__name__
        raise PluginError(f"@tool must decorate a module-level function, not {kind}")
    where = f"{fn.__module__}.{fn.__qualname__}"
    if fn.__name__ == "<lambda>":
        raise PluginError(f"@tool {where}: lambdas cannot be tools; use a module-level def")
    if "<locals>" in fn.__qualname__:
        raise PluginError(
            f"@tool {where}: nested functions and closures cannot be tools (the sandbox imports the "
            "function by name from its module); define it at module level"
        )
    if fn.__qualname__ != fn.__name__:
        raise PluginError(f"@tool {where}: methods cannot be tools; define a module-level function")
    if fn.__module__ in (None, "__main__", "builtins"):
        raise PluginError(
            f"@tool {where}: the function must live in an importable module (listed under plugins:), "
            "not in a script run as __main__"
        )
    if inspect.iscoroutinefunction(fn) or inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise PluginError(f"@tool {where}: coroutines and generators cannot be tools; use a plain def")
    params = list(inspect.signature(fn).parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if len(params) != 1 or params[0].kind not in positional:
        raise PluginError(
            f"@tool {where}: the function must take exactly one positional parameter (its inputs model)"
        )
    return where


def _input_model(fn: Callable[..., Any], given: type[BaseModel] | None, where: str) -> type[BaseModel]:
    model: Any = given
    if model is None:
        param = next(iter(inspect.signature(fn).parameters))
        try:
            hints = typing.get_type_hints(fn)
        except Exception as exc:
            raise PluginError(f"@tool {where}: cannot resolve the annotation of {param!r}: {exc}") from None
        model = hints.get(param)
        if model is None:
            raise PluginError(
                f"@tool {where}: annotate {param!r} with a pydantic model or pass input_model=..."
            )
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise PluginError(
            f"@tool {where}: the input model must be a pydantic BaseModel subclass, not {model!r}"
        )
    return model


def _strict(model: type[BaseModel]) -> type[BaseModel]:
    """``model``, or a subclass of it of the same name that refuses unknown keys."""
    if model.model_config.get("extra") == "forbid":
        return model
    strict: type[BaseModel] = type(
        model.__name__,
        (model,),
        {
            "model_config": ConfigDict(extra="forbid"),
            "__module__": model.__module__,
            "__qualname__": model.__qualname__,
            "__doc__": model.__doc__,
        },
    )
    return strict


def _read_source(module_name: str, where: str) -> tuple[str, str]:
    """(path, text) of the plugin module's source file."""
    module = sys.modules.get(module_name)
    path = getattr(module, "__file__", None)
    if not isinstance(path, str) or not path.endswith(".py"):
        raise PluginError(
            f"@tool {where}: module {module_name!r} has no .py source file to send to the sandbox"
        )
    try:
        data = open(path, "rb").read(MAX_PLUGIN_SOURCE_BYTES + 1)  # noqa: SIM115 - closed at once below
    except OSError as exc:
        raise PluginError(f"@tool {where}: cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_PLUGIN_SOURCE_BYTES:
        raise PluginError(f"@tool {where}: {path} is larger than {MAX_PLUGIN_SOURCE_BYTES} bytes")
    try:
        return path, data.decode("utf-8")
    except UnicodeDecodeError:
        raise PluginError(f"@tool {where}: {path} is not UTF-8 text") from None


def _register(
    fn: Callable[..., Any],
    tool_name: str,
    description: str,
    risk: str,
    outputs: tuple[str, ...],
    model: type[BaseModel],
    where: str,
) -> None:
    from tools_sandbox import catalog

    path, source = _read_source(fn.__module__, where)
    ref = PluginRef(module=fn.__module__, function=fn.__name__, path=path, source=source)
    existing = catalog.all_tools().get(tool_name)
    replace = False
    if existing is not None:
        other = existing.extra.get(PLUGIN_EXTRA_KEY)
        if isinstance(other, PluginRef) and (other.module, other.function) == (ref.module, ref.function):
            replace = True  # the same module imported again (reload): its new code wins
        else:
            origin = (
                f"by plugin {other.module}.{other.function}" if isinstance(other, PluginRef) else "built in"
            )
            raise PluginError(
                f"@tool {where}: a tool named {tool_name!r} is already registered ({origin}); "
                "pass name=... to register it under another name"
            )
    spec = catalog.ToolSpec(
        name=tool_name,
        description=description,
        input_model=model,
        outputs=outputs,
        risk=catalog.RiskLevel(risk),
        runtime=catalog.ToolRuntime.SANDBOX,
        extra={PLUGIN_EXTRA_KEY: ref},
    )
    catalog.register(spec, replace=replace)


def plugin_ref(spec: Any) -> PluginRef | None:
    """The :class:`PluginRef` of a catalog ``ToolSpec``, None for a built-in tool."""
    ref = getattr(spec, "extra", {}).get(PLUGIN_EXTRA_KEY)
    return ref if isinstance(ref, PluginRef) else None


# --------------------------------------------------------------------------------------------------
# Loading (host)
# --------------------------------------------------------------------------------------------------


def load_plugins(modules: Iterable[str]) -> None:
    """Import each module so that its ``@tool`` functions register themselves.

    Module names are resolved on ``sys.path``; the current working directory is appended to it
    when missing (so ``examples.plugins.text_tools`` works from the repository root whatever
    started the process). Raises ``ImportError`` naming the module, or ``ValueError`` when a
    ``@tool`` breaks a rule.
    """
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    for name in modules:
        try:
            importlib.import_module(name)
        except PluginError as exc:
            raise PluginError(f"plugins: {name!r}: {exc}") from None
        except ImportError as exc:
            raise ImportError(f"plugins: cannot import {name!r}: {exc}") from None
        except Exception as exc:  # a syntax error or an exception while the module runs
            raise ImportError(f"plugins: cannot import {name!r}: {type(exc).__name__}: {exc}") from None


# --------------------------------------------------------------------------------------------------
# Running (in the sandbox: called by the agent's worker process)
# --------------------------------------------------------------------------------------------------


def call_in_sandbox(module_name: str, function: str, source_path: str, inputs: dict[str, Any]) -> Any:
    """Import the plugin module from ``source_path`` (fresh), validate ``inputs``, call the function.

    Runs in the agent's forked worker, so the module object and whatever it does to the interpreter
    die with the call. Raises the agent's ``ToolInputError`` (``bad_input``) or ``ToolFailure``
    (``tool_error``); returns the JSON-able result dict.
    """
    from tools_sandbox.agent.errors import ToolFailure, ToolInputError

    global _in_sandbox
    where = f"{module_name}.{function}"
    previous, _in_sandbox = _in_sandbox, True
    try:
        module = _import_from_path(module_name, source_path, ToolInputError)
    finally:
        _in_sandbox = previous
    fn = getattr(module, function, None)
    info = getattr(fn, _TOOL_ATTR, None)
    if not isinstance(info, PluginInfo):
        raise ToolInputError(f"plugin module {module_name!r} has no @tool function named {function!r}")
    try:
        checked = info.input_model.model_validate(inputs)
    except ValidationError as exc:
        raise ToolInputError(f"{info.name} inputs: " + "; ".join(_error_lines(exc))) from None
    except Exception as exc:  # a validator of the plugin's model failed in another way
        raise ToolFailure(f"{info.name} inputs: validation raised {type(exc).__name__}: {exc}") from None
    try:
        result = fn(checked)  # type: ignore[misc]
    except (Exception, SystemExit) as exc:
        raise ToolFailure(f"{info.name} ({where}) raised {type(exc).__name__}: {exc}") from None
    if isinstance(result, BaseModel):
        result = result.model_dump(mode="json")
    if not isinstance(result, dict):
        raise ToolFailure(f"{info.name} returned {type(result).__name__}; a plugin must return a dict")
    try:
        result = json.loads(json.dumps(result))
    except (TypeError, ValueError) as exc:
        raise ToolFailure(f"{info.name} returned a value that is not JSON: {exc}") from None
    missing = [key for key in info.outputs if key not in result]
    if missing:
        raise ToolFailure(f"{info.name} did not return its declared outputs: {', '.join(missing)}")
    return result


def _import_from_path(module_name: str, path: str, error: type[Exception]) -> ModuleType:
    if module_name in sys.modules:
        raise error(f"plugin module name {module_name!r} clashes with a module of the sandbox; rename it")
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise error(f"cannot import plugin module {module_name!r}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        sys.modules.pop(module_name, None)
        raise error(
            f"cannot import plugin module {module_name!r} in the sandbox: {type(exc).__name__}: {exc} "
            "(a plugin may import only the standard library, pydantic and tools_sandbox.plugins)"
        ) from None
    return module


def _error_lines(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(inputs)"
        lines.append(f"{where}: {err['msg']}")
    return lines
