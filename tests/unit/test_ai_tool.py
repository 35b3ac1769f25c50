"""ai_tool: the deterministic answerer (tools_sandbox.host_tools.ai_answers, also the embedded tier's)
and the host tool around the router."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from officeray.contracts import ErrorType, PlanStep
from officeray.errors import ModelUnavailableError, PlanningError
from officeray.tools.catalog import builtin_catalog
from officeray.tools.host_inputs import MAX_PROMPT_CHARS, AiToolInput
from officeray.tools.spec import HostContext, ToolRuntime
from serving.tiers.embedded import EmbeddedAiTool
from tools_sandbox.executor import run_step
from tools_sandbox.host_tools.ai_answers import AI_TOOL_FORMS, AiToolUnsupportedPrompt, answer_prompt
from tools_sandbox.host_tools.ai_tool import run

CATALOG = builtin_catalog()
"""The built-in tools (these tests need no plugins)."""

# --- the embedded answerer -----------------------------------------------------------------------


def test_summarize_keeps_the_first_sentences() -> None:
    text = 'Ray runs actors. They hold state! Do they scale? Yes, "widely." The end.'
    assert (
        answer_prompt(f"summarize: {text}", 100)["answer"]
        == "Ray runs actors. They hold state! Do they scale?"
    )
    assert answer_prompt(f"Summarise 1:  {text}", 100)["answer"] == "Ray runs actors."
    assert (
        answer_prompt(f"summarize 4: {text}", 100)["answer"]
        == 'Ray runs actors. They hold state! Do they scale? Yes, "widely."'
    )
    assert answer_prompt("summarize: no full stop at all", 100)["answer"] == "no full stop at all"


def test_keywords_are_frequent_terms_without_stopwords() -> None:
    text = "The sandbox runs tools. The sandbox is warm; tools run fast and the runner reuses the sandbox."
    assert (
        answer_prompt(f"keywords: {text}", 100)["answer"]
        == "sandbox, tools, runs, warm, run, fast, runner, reuses"
    )
    assert answer_prompt(f"KEYWORDS 2: {text}", 100)["answer"] == "sandbox, tools"


def test_count_words_counts_whitespace_tokens() -> None:
    assert answer_prompt("count words: one two  three\nfour", 10)["answer"] == "4"


@pytest.mark.parametrize(
    ("text", "label", "decided"),
    [
        ("I love it, the docs are great.", "positive", "(positive: love, great; negative: none)"),
        ("Terrible setup and slow builds.", "negative", "(positive: none; negative: terrible, slow)"),
        ("It is not good and it isn't fast.", "negative", "(positive: none; negative: not good, not fast)"),
        ("It was not bad at all.", "positive", "(positive: not bad; negative: none)"),
        ("The meeting is on Tuesday.", "neutral", "(positive: none; negative: none)"),
        ("Great idea, awful execution.", "neutral", "(positive: great; negative: awful)"),
    ],
)
def test_sentiment_names_the_deciding_words(text: str, label: str, decided: str) -> None:
    assert answer_prompt(f"classify sentiment: {text}", 100)["answer"] == f"{label} {decided}"


def test_usage_counts_whitespace_tokens_and_max_tokens_cuts_the_answer() -> None:
    reply = answer_prompt("summarize: one two three. four five six.", 4)
    assert reply == {
        "answer": "one two three. four",
        "tier": "embedded",
        "usage": {"prompt_tokens": 7, "completion_tokens": 4},
    }


@pytest.mark.parametrize(
    ("prompt", "why"),
    [
        ("Write a poem about Ray", "'Write a poem about Ray' starts with none of the known forms"),
        ("summarize:   ", "'summarize:' is followed by no text"),
        ("count words 3: a b c", "'count words' takes no number"),
        ("keywords 0: a b c", "between 1 and 100"),
    ],
)
def test_other_prompts_are_refused_with_the_forms_and_the_config_key(prompt: str, why: str) -> None:
    with pytest.raises(AiToolUnsupportedPrompt) as info:
        answer_prompt(prompt, 10)
    message = str(info.value)
    assert why in message
    for form, _ in AI_TOOL_FORMS:
        assert form in message
    assert "models.ai_tool" in message
    assert isinstance(info.value, PlanningError)  # the router's "understood, cannot do it"


def test_embedded_tier_class_is_async_like_the_other_roles() -> None:
    reply = asyncio.run(EmbeddedAiTool().answer("count words: a b", 5))
    assert reply["answer"] == "2" and reply["tier"] == "embedded"


# --- the host tool -------------------------------------------------------------------------------


def test_catalog_entry() -> None:
    spec = CATALOG.get_tool("ai_tool")
    assert spec.runtime == ToolRuntime.HOST and spec.outputs == ("answer",)
    assert spec.host_function == "tools_sandbox.host_tools.ai_tool:run"
    assert spec.input_model is AiToolInput and spec.load_host_function() is run
    schema = AiToolInput.model_json_schema()
    assert (
        schema["additionalProperties"] is False
        and schema["properties"]["prompt"]["maxLength"] == MAX_PROMPT_CHARS
    )


def test_catalog_does_not_import_serving() -> None:
    import subprocess
    import sys

    code = (
        "import sys, officeray.tools.catalog; print(any(m.split('.')[0] == 'serving' for m in sys.modules))"
    )
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=False)
    assert proc.stdout.strip() == "False", proc.stderr


def step() -> PlanStep:
    return PlanStep(step_id="s1", action="ai_tool", inputs={}, idempotency_key="k")


def test_without_a_service_the_embedded_answerer_runs() -> None:
    outcome = run_step(None, step(), {"prompt": "count words: a b c"}, Path("."))  # type: ignore[arg-type]
    assert outcome.error is None
    assert outcome.output == {
        "answer": "3",
        "tier": "embedded",
        "usage": {"prompt_tokens": 5, "completion_tokens": 1},
    }


def test_refusal_and_bad_inputs_are_bad_input() -> None:
    outcome = run_step(None, step(), {"prompt": "tell me a joke"}, Path("."))  # type: ignore[arg-type]
    assert outcome.error is not None and outcome.error.type == ErrorType.BAD_INPUT
    assert "models.ai_tool" in outcome.error.message
    for inputs in (
        {"prompt": ""},
        {"prompt": "x" * (MAX_PROMPT_CHARS + 1)},
        {"prompt": "x", "max_tokens": 0},
    ):
        outcome = run_step(None, step(), inputs, Path("."))  # type: ignore[arg-type]
        assert outcome.error is not None and outcome.error.type == ErrorType.BAD_INPUT


class FakeRouter:
    def __init__(self, reply: Any = None, error: Exception | None = None) -> None:
        self.reply = reply
        self.error = error
        self.calls: list[tuple[str, int]] = []

    def answer(self, prompt: str, max_tokens: int) -> Any:
        self.calls.append((prompt, max_tokens))
        if self.error is not None:
            raise self.error
        return self.reply


def call_with(service: Any, prompt: str = "anything at all", max_tokens: int = 50) -> Any:
    context = HostContext(services={"ai_tool": service})
    return run_step(None, step(), {"prompt": prompt, "max_tokens": max_tokens}, Path("."), context)  # type: ignore[arg-type]


def test_a_service_answers_when_present() -> None:
    router = FakeRouter(
        {"answer": "42", "tier": "vllm", "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
    )
    outcome = call_with(router)
    assert outcome.error is None and outcome.output["tier"] == "vllm" and outcome.output["answer"] == "42"
    assert router.calls == [("anything at all", 50)]
    outcome = call_with(FakeRouter("plain text answer"))
    assert outcome.output == {
        "answer": "plain text answer",
        "tier": "ai_tool",
        "usage": {"prompt_tokens": 3, "completion_tokens": 3},
    }


@pytest.mark.parametrize(
    ("error", "error_type"),
    [
        (PlanningError("refused"), ErrorType.BAD_INPUT),
        (ModelUnavailableError("down"), ErrorType.INTERNAL),
        (TimeoutError("slow"), ErrorType.TIMEOUT),
        (RuntimeError("bug"), ErrorType.TOOL_ERROR),
    ],
)
def test_service_failures_are_typed(error: Exception, error_type: ErrorType) -> None:
    outcome = call_with(FakeRouter(error=error))
    assert outcome.error is not None and outcome.error.type == error_type


def test_bad_service_replies_and_async_services_are_tool_errors() -> None:
    outcome = call_with(FakeRouter({"no_answer": 1}))
    assert outcome.error is not None and outcome.error.type == ErrorType.TOOL_ERROR

    class AsyncRouter:
        async def answer(self, prompt: str, max_tokens: int) -> dict[str, Any]:
            return {"answer": "x"}

    outcome = call_with(AsyncRouter())
    assert outcome.error is not None and outcome.error.type == ErrorType.TOOL_ERROR
    assert "synchronous" in outcome.error.message


def test_run_accepts_the_validated_model_directly() -> None:
    assert run(AiToolInput(prompt="count words: x y"), HostContext())["answer"] == "2"
