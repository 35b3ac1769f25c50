"""Test-wide settings, set before anything imports Ray.

* Local Ray instances started by tests (and their subprocesses) listen on 127.0.0.1 only.
* One authentication mode for every cluster this process starts or joins: Ray reads
  ``RAY_AUTH_MODE`` once per process, and the tests' clusters are on loopback. Tests that drive
  ``ray job submit`` against a head of their own set ``token`` for both sides themselves.
"""

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.pop("RAY_ADDRESS", None)
