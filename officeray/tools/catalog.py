"""The tool catalog: every tool a plan may call, built once per process from the settings.

:func:`build_catalog` (``settings -> ToolCatalog``) is the one way a catalog is made at start: the
built-in tools (:data:`~officeray.tools.builtin.BUILTIN_TOOLS`), then the ``@tool`` functions of
each module in the config's ``plugins:``, with every ``tools:`` section checked against its tool's
settings model. The composition root and each Ray actor or Serve replica build it once, from the
settings they are given, and hand it to what needs tools: the validator and the workflow
(:meth:`ToolCatalog.input_models`), the planner roles (descriptions and input schemas), the gateway
(``allowed_tools`` and ready-plan checks), the runners and the executor (specs, plugin code, host
tools' settings). No module reads a process-wide registry: there is none.

Why a catalog is rebuilt from the settings in each process rather than sent across: a plugin's
input model is a class made at import (``@tool`` makes it strict), which does not pickle by
reference; the settings do, and the same settings give the same catalog.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from officeray.errors import ConfigError
from officeray.limits import MAX_PLUGIN_SOURCE_BYTES
from officeray.tools.builtin import BUILTIN_TOOLS
from officeray.tools.plugins import PluginError, PluginInfo, declared_tool
from officeray.tools.spec import PluginRef, ToolRuntime, ToolSpec, describe_input_errors

if TYPE_CHECKING:
    from officeray.config import Settings


class ToolCatalog(Mapping[str, ToolSpec]):
    """Tools by name, in the order they were added (built-ins first, then plugins); immutable.

    A read-only mapping (``name in catalog``, ``catalog[name]``, ``sorted(catalog)``) with
    :meth:`get_tool` (an error naming the registered tools), :meth:`input_models` (what the plan
    validator takes), :meth:`check_settings` (the ``tools:`` sections) and :meth:`with_tools` (a
    new catalog with more tools, e.g. in a test).
    """

    def __init__(self, specs: Iterable[ToolSpec] = ()) -> None:
        tools: dict[str, ToolSpec] = {}
        for spec in specs:
            if spec.name in tools:
                raise ValueError(f"a tool named {spec.name!r} is already in the catalog")
            tools[spec.name] = spec
        self._tools = tools

    def __getitem__(self, name: str) -> ToolSpec:
        return self._tools[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tools)

    def __len__(self) -> int:
        return len(self._tools)

    def __repr__(self) -> str:
        return f"ToolCatalog({', '.join(self._tools)})"

    def get_tool(self, name: str) -> ToolSpec:
        """The spec of ``name``; ``KeyError("unknown tool ...; registered tools: ...")`` otherwise."""
        try:
            return self._tools[name]
        except KeyError:
            known = ", ".join(sorted(self._tools))
            raise KeyError(f"unknown tool {name!r}; registered tools: {known}") from None

    def input_models(self) -> dict[str, type[BaseModel]]:
        """Tool name -> input model, what the plan validator (and the workflow) check inputs against."""
        return {name: spec.input_model for name, spec in self._tools.items()}

    def with_tools(self, *specs: ToolSpec, replace: bool = False) -> ToolCatalog:
        """This catalog plus ``specs`` (a name already here: ``ValueError``, unless ``replace``)."""
        tools = dict(self._tools)
        for spec in specs:
            if spec.name in tools and not replace:
                raise ValueError(f"a tool named {spec.name!r} is already in the catalog")
            tools[spec.name] = spec
        return ToolCatalog(tools.values())

    def check_settings(self, sections: Mapping[str, Any]) -> dict[str, BaseModel]:
        """The config's ``tools:`` mapping, each section checked against its tool's settings model
        (and the defaults of every tool that takes settings and has no section).

        Raises ``ValueError`` naming ``tools.<name>.<field>`` for a bad value or an unknown tool.
        """
        checked: dict[str, BaseModel] = {}
        for name, section in sections.items():
            spec = self._tools.get(name)
            if spec is None or spec.settings_model is None:
                raise ValueError(f"tools.{name}: no tool named {name!r} takes settings")
            try:
                checked[name] = spec.settings_model.model_validate(section or {})
            except ValidationError as exc:
                lines = [f"tools.{name}.{line}" for line in describe_input_errors(exc)]
                raise ValueError("; ".join(lines)) from None
        for name, spec in self._tools.items():
            if spec.settings_model is not None and name not in checked:
                checked[name] = spec.settings_model()
        return checked


def builtin_catalog() -> ToolCatalog:
    """The built-in tools only (what a process without ``plugins:`` builds)."""
    return ToolCatalog(BUILTIN_TOOLS.values())


def build_catalog(settings: Settings) -> ToolCatalog:
    """The process's catalog: built-ins + ``settings.plugins``, with ``settings.tools`` checked.

    Raises :class:`~officeray.errors.ConfigError` naming the plugin module (it cannot be imported,
    a ``@tool`` breaks a rule, a name is taken) or the ``tools.<name>.<field>`` key.
    """
    try:
        catalog = load_plugins(settings.plugins)
        catalog.check_settings(settings.tools)
    except (ImportError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    return catalog


def load_plugins(modules: Iterable[str], base: ToolCatalog | None = None) -> ToolCatalog:
    """``base`` (default: the built-ins) plus the ``@tool`` functions of each module, in order.

    A module's tools are the ``@tool`` functions among its top-level names, in definition order;
    importing the same module again (a reload) gives its new functions. Module names are resolved
    on ``sys.path``; the current working directory is appended to it when missing (so
    ``examples.plugins.text_tools`` works from the repository root whatever started the process).
    Raises ``ImportError`` naming the module, or :class:`~officeray.tools.plugins.PluginError` (a
    ``ValueError``) when a ``@tool`` breaks a rule or takes a name already in the catalog.
    """
    catalog = builtin_catalog() if base is None else base
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    for name in modules:
        module = _import_plugin_module(name)
        try:
            catalog = catalog.with_tools(*_module_tools(module, catalog))
        except PluginError as exc:
            raise PluginError(f"plugins: {name!r}: {exc}") from None
    return catalog


def _import_plugin_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except PluginError as exc:
        raise PluginError(f"plugins: {name!r}: {exc}") from None
    except ImportError as exc:
        raise ImportError(f"plugins: cannot import {name!r}: {exc}") from None
    except Exception as exc:  # a syntax error or an exception while the module runs
        raise ImportError(f"plugins: cannot import {name!r}: {type(exc).__name__}: {exc}") from None


def _module_tools(module: ModuleType, catalog: ToolCatalog) -> list[ToolSpec]:
    """The specs of the ``@tool`` functions among ``module``'s names; PluginError for a name clash."""
    specs: dict[str, ToolSpec] = {}
    for value in list(vars(module).values()):
        info = declared_tool(value)
        if info is None:
            continue
        taken = catalog.get(info.name) or specs.get(info.name)
        if taken is not None:
            other = taken.plugin
            if other is not None and (other.module, other.function) == (value.__module__, value.__name__):
                continue  # the same function again: under a second name, or imported by another plugin
            origin = f"by plugin {other.module}.{other.function}" if other is not None else "built in"
            raise PluginError(
                f"@tool {info.where}: a tool named {info.name!r} is already registered ({origin}); "
                "pass name=... to register it under another name"
            )
        specs[info.name] = _plugin_spec(value, info)
    return list(specs.values())


def _plugin_spec(fn: Any, info: PluginInfo) -> ToolSpec:
    path, source = _read_source(fn.__module__, info.where)
    return ToolSpec(
        name=info.name,
        description=info.description,
        input_model=info.input_model,
        outputs=info.outputs,
        risk=info.risk,
        runtime=ToolRuntime.SANDBOX,
        plugin=PluginRef(module=fn.__module__, function=fn.__name__, path=path, source=source),
    )


def _read_source(module_name: str, where: str) -> tuple[str, str]:
    """(path, text) of the plugin module's source file: the code the sandbox runs."""
    module = sys.modules.get(module_name)
    path = getattr(module, "__file__", None)
    if not isinstance(path, str) or not path.endswith(".py"):
        raise PluginError(
            f"@tool {where}: module {module_name!r} has no .py source file to send to the sandbox"
        )
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_PLUGIN_SOURCE_BYTES + 1)
    except OSError as exc:
        raise PluginError(f"@tool {where}: cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_PLUGIN_SOURCE_BYTES:
        raise PluginError(f"@tool {where}: {path} is larger than {MAX_PLUGIN_SOURCE_BYTES} bytes")
    try:
        return path, data.decode("utf-8")
    except UnicodeDecodeError:
        raise PluginError(f"@tool {where}: {path} is not UTF-8 text") from None
