"""Test-wide settings. Local Ray instances started by tests (and their subprocesses) listen on
127.0.0.1 only: set before anything imports Ray."""

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.pop("RAY_ADDRESS", None)
