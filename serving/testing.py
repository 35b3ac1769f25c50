"""Fakes for the model layer, shipped with the package: a scripted tier and a fake clock.

:class:`ScriptedTier` answers :meth:`generate` calls from a script, one item per call, in order:

* a :class:`~serving.tiers.base.ModelAnswer`: returned (an empty ``tier``/``model`` is filled in
  with the tier's ``name``/``model``);
* a ``str``: an answer with that ``content``; a ``dict``: an answer with that ``data`` (and the
  dict as JSON in ``content``);
* an exception instance (``RateLimitedError("429", retry_after_s=2)``): raised;
* a callable ``f(call) -> item``: called with the :class:`ModelCall`; what it returns is handled as
  above (it may also raise, or be ``async``);
* a ``float``: **hang** for that many real seconds, then answer with the *next* item in the same
  call. If the router's timeout cancels the hang, the next item is left in the script for the next
  call, so ``[5.0, answer]`` on a tier with one retry means "the first try times out, the retry
  gets ``answer``". Use seconds far above the tier's ``timeout_s``.

Every call is recorded in :attr:`ScriptedTier.calls` (hung ones too); :meth:`assert_consumed` fails
a test that ended with items left over, and a call past the end of the script fails loudly.

:class:`FakeClock` stands in for ``time.monotonic`` and ``asyncio.sleep``: pass ``clock=fake`` (or
``fake.now``) and ``sleep=fake.sleep``; every sleep advances the clock at once and is recorded in
:attr:`FakeClock.sleeps`.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Iterable
from typing import Any

from officeray.config import EmbeddedTierConfig, OpenAITierConfig, TierConfig, VllmTierConfig
from serving.tiers.base import ModelAnswer, ModelCall, ModelTier

SCRIPTED_TIER_NO_TIMEOUT_S = 3600.0
"""``timeout_s`` of a scripted non-embedded tier built with ``timeout_s=None`` (the config's maximum)."""


class ScriptedTier:
    """A :class:`~serving.tiers.base.ModelTier` that answers from a script (see the module doc).

    ``name`` is the tier kind it poses as in attempts and answers. ``timeout_s`` and ``max_retries``
    only shape :meth:`config`, the chain entry the router reads them from.
    """

    def __init__(
        self,
        name: str = "fake",
        model: str = "fake-model",
        answers: Iterable[Any] = (),
        timeout_s: float | None = None,
        max_retries: int = 0,
    ) -> None:
        self.name = name
        self.model = model
        self.answers: list[Any] = list(answers)
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.calls: list[ModelCall] = []

    @property
    def call_count(self) -> int:
        return len(self.calls)

    def config(self) -> TierConfig:
        """The tier config for this fake: embedded (no timeout, no retries) for ``name="embedded"``,
        vLLM for ``name="vllm"``, else an OpenAI-compatible config with this model."""
        timeout = self.timeout_s if self.timeout_s is not None else SCRIPTED_TIER_NO_TIMEOUT_S
        if self.name == "embedded":
            if self.timeout_s is not None or self.max_retries:
                raise ValueError("an embedded tier has no timeout_s and no retries")
            return EmbeddedTierConfig()
        if self.name == "vllm":
            return VllmTierConfig(
                tier="vllm", model=self.model, timeout_s=timeout, max_retries=self.max_retries
            )
        return OpenAITierConfig(
            tier="openai", model=self.model, timeout_s=timeout, max_retries=self.max_retries
        )

    def entry(self) -> tuple[TierConfig, ModelTier]:
        """``(config, tier)``: one element of the ``tiers`` a :class:`~serving.router.Router` takes."""
        return self.config(), self

    async def generate(self, call: ModelCall) -> ModelAnswer:
        self.calls.append(call)
        item = self._pop()
        while isinstance(item, float):
            await asyncio.sleep(item)
            item = self._pop()
        return await self._answer(item, call)

    def assert_consumed(self) -> None:
        if self.answers:
            raise AssertionError(
                f"scripted tier {self.name}({self.model}) ended with {len(self.answers)} unused item(s)"
            )

    def _pop(self) -> Any:
        if not self.answers:
            raise AssertionError(
                f"scripted tier {self.name}({self.model}) called {len(self.calls)} time(s) "
                "but the script has no more items"
            )
        return self.answers.pop(0)

    async def _answer(self, item: Any, call: ModelCall) -> ModelAnswer:
        if isinstance(item, BaseException):
            raise item
        if callable(item):
            item = item(call)
            if inspect.isawaitable(item):
                item = await item
            return await self._answer(item, call)
        if isinstance(item, str):
            item = ModelAnswer(content=item)
        elif isinstance(item, dict):
            item = ModelAnswer(content=json.dumps(item), data=item)
        if not isinstance(item, ModelAnswer):
            raise TypeError(f"scripted tier item of unsupported type {type(item).__name__}: {item!r}")
        return item.model_copy(update={"tier": item.tier or self.name, "model": item.model or self.model})

    def __repr__(self) -> str:
        return f"ScriptedTier({self.name!r}, {self.model!r}, {len(self.answers)} item(s) left)"


def chain(*tiers: ScriptedTier) -> list[tuple[TierConfig, ModelTier]]:
    """The ``tiers`` argument of a :class:`~serving.router.Router` made of scripted tiers."""
    return [tier.entry() for tier in tiers]


class FakeClock:
    """A monotonic clock that only moves when told to; ``sleep`` moves it instead of waiting."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self._now

    __call__ = now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        """Record the wait, advance the clock by it, and yield to the event loop once."""
        self.sleeps.append(seconds)
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)

    @property
    def waits(self) -> list[float]:
        """The same list as :attr:`sleeps`."""
        return self.sleeps
