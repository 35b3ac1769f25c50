"""Per-risk sandbox policies as pure logic: which :class:`~officeray.config.RiskPolicy` a step gets.

The tool-runner pool computes a step's effective risk (:func:`officeray.gatekeeper.step_risk`), picks
its policy here (:func:`policy_for`) and applies it: the step's timeout is cut to ``max_timeout_s``,
the agent puts ``memory_mb`` (``RLIMIT_AS``), ``cpu_s`` (``RLIMIT_CPU``) and ``output_bytes`` on the
call's process, ``workspace_write=False`` drops the step's workspace changes, and
``network_tools=False`` refuses the network-facing host tools (:func:`policy_refusal`).
"""

from __future__ import annotations

from typing import Any

from officeray.config import RiskPolicy, SandboxPolicies

NETWORK_TOOLS = frozenset({"http_client", "web_search"})
"""Host tools that reach the network; refused for a risk whose policy has ``network_tools=False``."""


def policy_for(risk: Any, policies: SandboxPolicies) -> RiskPolicy:
    """The policy of risk level ``risk`` (a :class:`~officeray.tools.plugins.RiskLevel` or its
    value). A level this build does not know (or ``critical``) gets the ``critical`` policy: an
    unknown risk is never treated as a low one."""
    name = str(getattr(risk, "value", risk)).lower()
    if name in ("low", "medium", "high"):
        policy: RiskPolicy = getattr(policies, name)
        return policy
    return policies.critical


def policy_refusal(action: str, risk: Any, policy: RiskPolicy) -> str | None:
    """Why a step of tool ``action`` at ``risk`` may not run under ``policy``, or None."""
    if action in NETWORK_TOOLS and not policy.network_tools:
        level = str(getattr(risk, "value", risk))
        return (
            f"{action} reaches the network, which the sandbox policy of {level}-risk steps does not "
            f"allow (sandbox.policies.{level}.network_tools)"
        )
    return None


def capped_timeout(timeout_s: float, policy: RiskPolicy) -> float:
    """The step's timeout under ``policy``: at most ``max_timeout_s``."""
    return min(float(timeout_s), policy.max_timeout_s)


def call_limits(policy: RiskPolicy) -> dict[str, int]:
    """What the agent applies to the call's process (the protocol's ``limits`` field)."""
    return {"memory_mb": policy.memory_mb, "cpu_s": policy.cpu_s, "output_bytes": policy.output_bytes}
