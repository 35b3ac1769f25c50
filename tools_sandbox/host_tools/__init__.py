"""Host-side tools: they run in the tool runner's process (not in the sandbox) behind the SSRF guard.

The catalog (:mod:`officeray.tools`) names each by ``"module:function"`` and imports it only when the
tool runs; their input and settings models are in the core, :mod:`officeray.tools.host_inputs`.
"""

CANCELLED_SERVICE = "cancelled"
"""The key, in a host tool's ``context.services``, of a :class:`threading.Event` set when the step is
cancelled: a tool that waits (``sleep``) waits on it and stops early with error type ``cancelled``."""
