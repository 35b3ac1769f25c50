"""The ``ai_tool``'s deterministic answerer: a few explicit prompt forms, answered without a model.

``ai_tool`` (:mod:`tools_sandbox.host_tools.ai_tool`) falls back to :func:`answer_prompt` when its
runner provides no model service, and the embedded model tier (:mod:`serving.tiers.embedded_tier`)
answers its ``ai_tool`` role with it. It lives with the tool, not with the tier, so the tool needs
nothing from ``serving`` (the layers: ``docs/decisions.md``).

The forms (case-insensitive): ``summarize: TEXT`` (extractive, first sentences), ``keywords: TEXT``
(most frequent words), ``count words: TEXT`` and ``classify sentiment: TEXT`` (a small word list);
anything else is refused with :class:`AiToolUnsupportedPrompt`, naming ``models.ai_tool``.
"""

from __future__ import annotations

import re
from typing import Any

from officeray.errors import PlanningError

AI_TOOL_SUMMARY_SENTENCES = 3
"""Sentences ``summarize: TEXT`` keeps (``summarize N: TEXT`` asks for N)."""

AI_TOOL_KEYWORDS = 10
"""Terms ``keywords: TEXT`` lists (``keywords N: TEXT`` asks for N)."""

AI_TOOL_MAX_COUNT = 100
"""Largest N accepted in ``summarize N:`` / ``keywords N:``."""

AI_TOOL_FORMS: tuple[tuple[str, str], ...] = (
    ("summarize: TEXT", "the first 3 sentences of TEXT, unchanged (extractive); 'summarize N: TEXT' for N"),
    ("keywords: TEXT", "the 10 most frequent words of TEXT, stopwords left out; 'keywords N: TEXT' for N"),
    ("count words: TEXT", "the number of whitespace-separated words of TEXT"),
    (
        "classify sentiment: TEXT",
        "positive, negative or neutral from a small word list (a preceding 'not'/'no'/'never' flips a "
        "word), with the words that decided",
    ),
)
"""The prompt forms the embedded ai_tool answers (case-insensitive), as listed in its refusal."""

AI_TOOL_CONFIGURE_HINT = (
    "To answer other prompts, configure a real model: set models.ai_tool in the config file "
    "(--config FILE or OFFICERAY_CONFIG) to an openai-compatible or vllm tier."
)

_AI_FORM_RE = re.compile(
    r"^\s*(?P<form>summari[sz]e|keywords|count\s+words|classify\s+sentiment)"
    r"(?:\s+(?P<count>\d+))?\s*:(?P<text>.*)$",
    re.IGNORECASE | re.DOTALL,
)
_AI_SENTENCE_SPLIT_RE = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+")
"""A sentence ends at ``.``, ``!`` or ``?`` (maybe followed by a closing quote or bracket) and a space."""
_AI_WORD_RE = re.compile(r"[a-z][a-z'-]*[a-z]|[a-z]")


def _word_set(words: str) -> frozenset[str]:
    return frozenset(words.split())


AI_TOOL_STOPWORDS = _word_set(
    """a about above after again against all also am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further had has
    have having he her here hers herself him himself his how i if in into is it its itself just me more
    most my myself no nor not now of off on once only or other our ours ourselves out over own same she
    should so some such than that the their theirs them themselves then there these they this those
    through to too under until up very was we were what when where which while who whom why will with
    would you your yours yourself yourselves it's i'm don't doesn't didn't isn't wasn't can't won't"""
)

AI_TOOL_POSITIVE_WORDS = _word_set(
    """good great excellent amazing awesome wonderful fantastic love loved loves like liked enjoy enjoyed
    happy glad pleased delighted best better nice perfect brilliant superb outstanding positive success
    successful helpful recommend recommended easy fast reliable beautiful impressive satisfied fine
    improved improvement win wins"""
)

AI_TOOL_NEGATIVE_WORDS = _word_set(
    """bad terrible awful horrible poor worst worse hate hated hates dislike disliked sad angry annoyed
    disappointed disappointing disappointment broken bug buggy slow fail failed failure fails problem
    problems useless wrong difficult hard ugly negative unhappy unreliable crash crashed crashes error
    errors expensive boring lose loses lost"""
)

_AI_NEGATIONS = frozenset({"not", "no", "never", "n't", "hardly", "without"})


class AiToolUnsupportedPrompt(PlanningError):
    """The embedded ai_tool does not understand the prompt: a final answer (trying again gives the same)."""


def _ai_tokens(text: str) -> int:
    """Token count as the embedded tier measures it: whitespace-separated tokens."""
    return len(text.split())


def _ai_words(text: str) -> list[str]:
    return _AI_WORD_RE.findall(text.lower())


def _ai_refusal(why: str) -> AiToolUnsupportedPrompt:
    forms = "; ".join(f"'{form}' → {what}" for form, what in AI_TOOL_FORMS)
    return AiToolUnsupportedPrompt(
        f"the embedded ai_tool cannot answer this prompt: {why}. It understands only these forms: "
        f"{forms}. {AI_TOOL_CONFIGURE_HINT}"
    )


def _ai_summarize(text: str, count: int) -> str:
    sentences = [s.strip() for s in _AI_SENTENCE_SPLIT_RE.split(" ".join(text.split())) if s.strip()]
    return " ".join(sentences[:count])


def _ai_keywords(text: str, count: int) -> str:
    counts: dict[str, int] = {}
    for word in _ai_words(text):
        if len(word) > 1 and word not in AI_TOOL_STOPWORDS:
            counts[word] = counts.get(word, 0) + 1
    # Most frequent first; ties keep the order of first appearance (dicts keep insertion order).
    ranked = sorted(counts, key=lambda w: -counts[w])
    return ", ".join(ranked[:count])


def _ai_sentiment(text: str) -> str:
    positive: list[str] = []
    negative: list[str] = []
    words = _ai_words(text.replace("n't", " n't"))
    for index, word in enumerate(words):
        polarity = 1 if word in AI_TOOL_POSITIVE_WORDS else -1 if word in AI_TOOL_NEGATIVE_WORDS else 0
        if polarity == 0:
            continue
        if index > 0 and words[index - 1] in _AI_NEGATIONS:
            polarity, word = -polarity, f"not {word}"
        (positive if polarity > 0 else negative).append(word)
    score = len(positive) - len(negative)
    label = "positive" if score > 0 else "negative" if score < 0 else "neutral"
    return f"{label} (positive: {', '.join(positive) or 'none'}; negative: {', '.join(negative) or 'none'})"


def answer_prompt(prompt: str, max_tokens: int) -> dict[str, Any]:
    """The embedded answer to ``prompt``: ``{"answer", "tier": "embedded", "usage"}``.

    Pure and deterministic. The answer is cut to ``max_tokens`` tokens; ``usage`` counts
    whitespace-separated tokens (not a model tokenizer's). Raises :class:`AiToolUnsupportedPrompt`
    (a :class:`PlanningError`) for a prompt outside :data:`AI_TOOL_FORMS`.
    """
    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    match = _AI_FORM_RE.match(prompt)
    if match is None:
        head = " ".join(prompt.split())[:60]
        raise _ai_refusal(f"{head!r} starts with none of the known forms")
    form = " ".join(match.group("form").lower().split()).replace("summarise", "summarize")
    text = match.group("text").strip()
    if not text:
        raise _ai_refusal(f"'{form}:' is followed by no text")
    count_text = match.group("count")
    if count_text is not None and form not in ("summarize", "keywords"):
        raise _ai_refusal(f"'{form}' takes no number")
    count = int(count_text) if count_text is not None else None
    if count is not None and not 1 <= count <= AI_TOOL_MAX_COUNT:
        raise _ai_refusal(f"the number after '{form}' must be between 1 and {AI_TOOL_MAX_COUNT}")
    if form == "summarize":
        answer = _ai_summarize(text, count or AI_TOOL_SUMMARY_SENTENCES)
    elif form == "keywords":
        answer = _ai_keywords(text, count or AI_TOOL_KEYWORDS)
    elif form == "count words":
        answer = str(_ai_tokens(text))
    else:
        answer = _ai_sentiment(text)
    tokens = answer.split()
    if len(tokens) > max_tokens:
        answer = " ".join(tokens[:max_tokens])
    return {
        "answer": answer,
        "tier": "embedded",
        "usage": {"prompt_tokens": _ai_tokens(prompt), "completion_tokens": _ai_tokens(answer)},
    }
