"""Examples. A package so that ``examples.plugins.*`` can be listed under ``plugins:`` in a config."""
