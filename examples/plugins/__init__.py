"""Example plugin tools (see :mod:`officeray.tools.plugins`); enable one with ``plugins: [MODULE]``."""
