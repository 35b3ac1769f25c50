"""Host-side tools: they run in the tool runner's process (not in the sandbox) behind the SSRF guard.

The catalog (:mod:`officeray.tools`) names each by ``"module:function"`` and imports it only when the
tool runs; their input and settings models are in the core, :mod:`officeray.tools.host_inputs`.
"""
