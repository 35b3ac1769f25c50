"""The plugin API: ``@tool`` declares a module-level function a tool that runs in the sandbox.

A plugin is a module-level function taking one pydantic model and returning a JSON-able dict::

    from pydantic import BaseModel, Field
    from officeray.tools import tool

    class WordCountInput(BaseModel):
        text: str = Field(max_length=100_000)

    @tool(description="Count words in a text", risk="low", outputs=("words",))
    def word_count(inputs: WordCountInput) -> dict:
        return {"words": len(inputs.text.split())}

List its module in the config (``plugins: ["examples.plugins.text_tools"]``). ``@tool`` checks the
function and marks it (:func:`declared_tool` reads the mark); it registers nothing anywhere. The
catalog is built at start from the config (:func:`officeray.tools.catalog.build_catalog`): it
imports each listed module (names are looked up on ``sys.path``, with the current directory added
at the end), and every ``@tool`` function of the module joins that catalog. The function stays an
ordinary function: call it directly in your tests.

How a plugin runs
-----------------
The *module* is imported **host side** (by the catalog's build, in the orchestrator, the tool
runners, the serving app and the CLI): its top-level code runs there, as trusted code. The
*function* runs like the built-in tools, **in the sandbox**, never in a host process. The catalog
reads the module's source file when it is built; each call of the tool sends that source with the
step (protocol field ``plugin``: module, function, source). The in-sandbox agent writes it into a
fresh staged folder of the workspace, imports it *from there* under its module name (a new module
object for every call, in the call's own worker process: no state survives between calls, let
alone between tasks), validates the inputs with the input model, calls the function and returns
its result (:mod:`tools_sandbox.plugin_call`). Inputs are validated twice: on the host before
anything runs (``bad_input``), and in the sandbox with the same model.

What a plugin module may import
-------------------------------
The standard library, :mod:`pydantic` (the sandbox image ships the host's pydantic and its runtime
dependencies) and :mod:`officeray.tools` (only its plugin API: ``tool``, ``PluginError``,
``RiskLevel``). Nothing else exists in the sandbox: no other officeray module, no third-party
package, no other module of yours. **A plugin is one self-contained module** (multi-module plugins,
relative imports and data files are not supported). The sandbox has no network; the function sees
the workspace of the current task only.

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
identifier. Input models are made strict: unknown input keys are refused, as for the built-in
tools. When the catalog is built, a name already taken (by a built-in tool or another plugin)
is refused.

IMPORT RULE: this module is imported inside the sandbox too (it is shipped in the image with
``officeray/__init__.py`` and ``officeray/tools/__init__.py``), so it imports only the standard
library and pydantic.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict


class RiskLevel(StrEnum):
    """How risky a tool's steps are (a tool spec's ``risk``; ``@tool(risk=...)`` takes the value).
    Defined here, with the decorator, because this module is what the sandbox can import; the
    catalog's :class:`~officeray.tools.spec.ToolSpec` uses it from here."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


RISK_LEVELS = tuple(level.value for level in RiskLevel)
"""The values ``@tool(risk=...)`` accepts."""

TOOL_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")

_TOOL_ATTR = "__officeray_tool__"
"""Attribute the decorator sets on the function: its :class:`PluginInfo`."""

F = TypeVar("F", bound=Callable[..., Any])


class PluginError(ValueError):
    """``@tool`` refused a function, or the catalog refused a plugin (the message says why)."""


@dataclass(frozen=True)
class PluginInfo:
    """What ``@tool`` recorded on a function (the same in the host and in the sandbox)."""

    name: str
    description: str
    risk: RiskLevel
    input_model: type[BaseModel]
    outputs: tuple[str, ...]
    where: str
    """``module.function``, for messages."""


def declared_tool(obj: object) -> PluginInfo | None:
    """The :class:`PluginInfo` of a function decorated with :func:`tool`, else None."""
    info = getattr(obj, _TOOL_ATTR, None) if inspect.isfunction(obj) else None
    return info if isinstance(info, PluginInfo) else None


def tool(
    name: str | None = None,
    *,
    description: str,
    risk: str = "low",
    outputs: Iterable[str] = (),
    input_model: type[BaseModel] | None = None,
) -> Callable[[F], F]:
    """Declare the decorated module-level function a sandbox tool; returns it unchanged.

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
        info = PluginInfo(tool_name, description.strip(), RiskLevel(risk), model, declared, where)
        setattr(fn, _TOOL_ATTR, info)
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
