"""Tools: what a plan step may call. The catalog, the built-in tools' specs and models, plugins.

* :mod:`officeray.tools.plugins`: the plugin API, ``@tool`` (exported here: ``from officeray.tools
  import tool``);
* :mod:`officeray.tools.spec`: a tool's metadata (:class:`~officeray.tools.spec.ToolSpec`: name,
  description, input model, outputs, risk, runtime, staged folder input, settings model);
* :mod:`officeray.tools.builtin` and :mod:`officeray.tools.host_inputs`: the built-in tools' specs
  and their input and settings models;
* :mod:`officeray.tools.catalog`: :class:`~officeray.tools.catalog.ToolCatalog` and
  :func:`~officeray.tools.catalog.build_catalog`, the one catalog a process builds at start from its
  settings (built-ins + the config's plugins) and hands to everything that needs tools.

What *runs* a tool (executor, sandboxes, the in-container agent, the host tools' code) is
:mod:`tools_sandbox`; a spec names a host tool's function as a ``"module:function"`` string, so
nothing here imports it.

IMPORT RULE: plugin modules import this package inside the sandbox, where only the standard
library, pydantic and the plugin API are shipped; so this file imports nothing but
:mod:`officeray.tools.plugins`.
"""

from officeray.tools.plugins import PluginError, RiskLevel, tool

__all__ = ["PluginError", "RiskLevel", "tool"]
