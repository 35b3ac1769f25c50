"""Example plugin tools (see :mod:`tools_sandbox.plugins`); enable one with ``plugins: [MODULE]``."""
