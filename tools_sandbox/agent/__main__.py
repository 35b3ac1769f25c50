"""``python3 -m tools_sandbox.agent``: the in-sandbox agent (see :mod:`tools_sandbox.agent.server`)."""

from tools_sandbox.agent.server import main

raise SystemExit(main())
