"""Host-side tools: they run in the tool runner's process (not in the sandbox) behind the SSRF guard.

The catalog names each by ``"module:function"`` and imports it only when the tool runs; their input and
settings models live in :mod:`tools_sandbox.host_tools.models`, which imports nothing heavy.
"""
