"""The ``ai_tool`` host tool: one prompt to the model router's ai_tool role.

It runs in the tool runner's process (a model is a service of the host, not of the sandbox). The
answerer is ``context.services["ai_tool"]`` when the runner provides one: an object with a
**synchronous** ``answer(prompt, max_tokens)`` (or ``answer(prompt, max_tokens, timeout_s=...)``,
then given the step's timeout) returning ``{"answer", "tier", "usage"}`` (or just
the answer text) and raising :class:`~officeray.errors.PlanningError` for a prompt it refuses and
:class:`~officeray.errors.ModelUnavailableError` when it cannot answer now. Host functions are
synchronous (the runner is a synchronous actor), so an ``async def answer`` is refused rather than
run on a private event loop. Without a service, the deterministic answerer
(:func:`tools_sandbox.host_tools.ai_answers.answer_prompt`, also the embedded tier's) answers: a
few explicit prompt forms (``summarize:``, ``keywords:``, ``count words:``, ``classify
sentiment:``), and a clear refusal, naming ``models.ai_tool``, for anything else.

The output is ``{"answer", "tier", "usage": {"prompt_tokens", "completion_tokens"}}``. The embedded
tier counts whitespace-separated tokens, not a model tokenizer's.

Its input model is :class:`officeray.tools.host_inputs.AiToolInput`.
"""

from __future__ import annotations

import inspect
from typing import Any

from pydantic import BaseModel

from officeray.contracts import ErrorType
from officeray.errors import ModelUnavailableError, PlanningError
from officeray.tools.host_inputs import AiToolInput
from officeray.tools.spec import HostContext, HostToolError
from tools_sandbox.host_tools import within_step

SERVICE_NAME = "ai_tool"
"""Key of the answerer in :attr:`officeray.tools.spec.HostContext.services`."""


def _tokens(text: str) -> int:
    return len(text.split())


def _normalise(reply: Any, prompt: str) -> dict[str, Any]:
    """A service's reply as ``{"answer", "tier", "usage"}``."""
    if isinstance(reply, str):
        reply = {"answer": reply}
    if not isinstance(reply, dict) or "answer" not in reply:
        raise TypeError(f"the ai_tool service returned {type(reply).__name__}, not a dict with 'answer'")
    answer = reply["answer"]
    usage = reply.get("usage")
    if not isinstance(usage, dict):
        text = answer if isinstance(answer, str) else str(answer)
        usage = {"prompt_tokens": _tokens(prompt), "completion_tokens": _tokens(text)}
    return {"answer": answer, "tier": str(reply.get("tier", SERVICE_NAME)), "usage": usage}


def _takes_timeout(service: Any) -> bool:
    """Whether a service's ``answer`` takes ``timeout_s`` (the runner's does: the step's timeout)."""
    try:
        return "timeout_s" in inspect.signature(service.answer).parameters
    except (TypeError, ValueError):
        return False


def run(inputs: BaseModel, context: HostContext) -> dict[str, Any]:
    """The :data:`~officeray.tools.spec.HostFunction` of ``ai_tool``."""
    checked = inputs if isinstance(inputs, AiToolInput) else AiToolInput.model_validate(inputs.model_dump())
    service = context.services.get(SERVICE_NAME)
    try:
        if service is None:
            from tools_sandbox.host_tools.ai_answers import answer_prompt

            return answer_prompt(checked.prompt, checked.max_tokens)
        timeout_s = within_step(None, context.services)
        if timeout_s is not None and _takes_timeout(service):
            reply = service.answer(checked.prompt, checked.max_tokens, timeout_s=timeout_s)
        else:
            reply = service.answer(checked.prompt, checked.max_tokens)
        if inspect.isawaitable(reply):
            if inspect.iscoroutine(reply):
                reply.close()  # never awaited: close it so Python does not warn
            raise HostToolError(
                ErrorType.TOOL_ERROR,
                f"services[{SERVICE_NAME!r}].answer is asynchronous; host tools need a synchronous answer()",
            )
        return _normalise(reply, checked.prompt)
    except PlanningError as exc:  # the answerer refuses this prompt: the same prompt fails again
        raise HostToolError(ErrorType.BAD_INPUT, str(exc)) from None
    except ModelUnavailableError as exc:  # may work on a retry
        raise HostToolError(ErrorType.INTERNAL, f"the ai_tool model is unavailable: {exc}") from None
    except TimeoutError as exc:
        raise HostToolError(ErrorType.TIMEOUT, f"the ai_tool model did not answer in time: {exc}") from None
