"""Running a plugin tool in the sandbox: what the agent's worker process does for a plugin call.

The agent (stdlib only) imports this module at the first plugin call (:func:`tools_sandbox.agent.
server.load_plugin_runner`), with pydantic and the plugin API (:mod:`officeray.tools.plugins`),
which the sandbox image ships; for each call, its forked worker runs :func:`call_in_sandbox` on the
source the host sent (see :mod:`officeray.tools.plugins` for the whole story). ``@tool`` only marks
functions, so importing a plugin here registers nothing anywhere.

IMPORT RULE: this module runs inside the sandbox, so it imports only the standard library,
pydantic, :mod:`officeray.tools.plugins` and the agent's stdlib modules.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from types import ModuleType
from typing import Any

from pydantic import BaseModel, ValidationError

from officeray.tools.plugins import declared_tool
from tools_sandbox.agent.errors import ToolFailure, ToolInputError


def call_in_sandbox(module_name: str, function: str, source_path: str, inputs: dict[str, Any]) -> Any:
    """Import the plugin module from ``source_path`` (fresh), validate ``inputs``, call the function.

    Runs in the agent's forked worker, so the module object and whatever it does to the interpreter
    die with the call. Raises the agent's ``ToolInputError`` (``bad_input``) or ``ToolFailure``
    (``tool_error``); returns the JSON-able result dict.
    """
    where = f"{module_name}.{function}"
    module = _import_from_path(module_name, source_path, ToolInputError)
    fn = getattr(module, function, None)
    info = declared_tool(fn)
    if info is None:
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
            "(a plugin may import only the standard library, pydantic and officeray.tools)"
        ) from None
    return module


def _error_lines(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(inputs)"
        lines.append(f"{where}: {err['msg']}")
    return lines
