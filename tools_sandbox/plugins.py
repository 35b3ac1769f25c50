"""The plugin API's earlier home, kept so plugins written against it keep working.

New plugins import it from the core: ``from officeray.tools import tool``. This module re-exports
the same objects (host side and inside the sandbox, where it is shipped too), so
``from tools_sandbox.plugins import tool`` still works.
"""

from officeray.tools.plugins import PluginError, RiskLevel, tool

__all__ = ["PluginError", "RiskLevel", "tool"]
