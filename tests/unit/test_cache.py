"""Response cache: keys ignore who asked, entries expire after the TTL, the least recently used go first."""

from __future__ import annotations

from officeray.config import ResponseCacheSettings
from officeray.contracts import PlanRequest
from serving.cache import ResponseCache
from serving.testing import FakeClock
from serving.tiers.base import ModelAnswer, ModelCall


def _call(**changes: object) -> ModelCall:
    fields: dict[str, object] = {
        "role": "planner",
        "messages": [{"role": "user", "content": "compute 1+1"}],
        "json_schema": {"type": "object"},
        "payload": PlanRequest(task_id="t1", description="compute 1+1", allowed_tools=["math_calculator"]),
        "task_id": "t1",
        "tenant": "acme",
        "trace_context": {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"},
    }
    fields.update(changes)
    return ModelCall.model_validate(fields)


def _cache(clock: FakeClock, **settings: object) -> ResponseCache:
    return ResponseCache(ResponseCacheSettings.model_validate({"enabled": True, **settings}), clock=clock)


def test_key_ignores_who_asked() -> None:
    other_task = _call(
        payload=PlanRequest(task_id="t2", description="compute 1+1", allowed_tools=["math_calculator"]),
        task_id="t2",
        tenant="other",
        trace_context={},
    )
    assert ResponseCache.key_for(_call()) == ResponseCache.key_for(other_task)
    assert len(ResponseCache.key_for(_call())) == 64  # sha256 hex


def test_key_covers_the_question() -> None:
    base = ResponseCache.key_for(_call())
    different = [
        _call(role="reviewer"),
        _call(messages=[{"role": "user", "content": "compute 1+2"}]),
        _call(json_schema={"type": "array"}),
        _call(
            payload=PlanRequest(task_id="t1", description="compute 1+2", allowed_tools=["math_calculator"])
        ),
        _call(payload=PlanRequest(task_id="t1", description="compute 1+1", allowed_tools=[])),
        _call(payload="a prompt"),
        _call(temperature=0.7),
    ]
    keys = {ResponseCache.key_for(c) for c in different}
    assert base not in keys
    assert len(keys) == len(different)


def test_key_of_plain_payloads_is_stable() -> None:
    a = _call(payload={"b": 1, "a": [1, 2]})
    b = _call(payload={"a": [1, 2], "b": 1})
    assert ResponseCache.key_for(a) == ResponseCache.key_for(b)


def test_miss_then_hit_returns_a_copy() -> None:
    clock = FakeClock()
    cache = _cache(clock)
    key = cache.key_for(_call())
    assert cache.get(key) is None
    answer = ModelAnswer(content="x", data={"n": 1}, tier="openai", model="gpt")
    cache.put(key, answer)
    hit = cache.get(key)
    assert hit == answer
    assert hit is not answer
    hit.data["n"] = 2  # mutating what was handed out leaves the entry alone
    assert cache.get(key) == answer


def test_ttl_expiry() -> None:
    clock = FakeClock()
    cache = _cache(clock, ttl_s=10)
    cache.put("k", ModelAnswer(content="x"))
    clock.advance(9.99)
    assert cache.get("k") is not None
    clock.advance(0.01)
    assert cache.get("k") is None
    assert len(cache) == 0


def test_lru_eviction() -> None:
    cache = _cache(FakeClock(), max_entries=2)
    cache.put("a", ModelAnswer(content="a"))
    cache.put("b", ModelAnswer(content="b"))
    assert cache.get("a") is not None  # "a" is now the most recently used
    cache.put("c", ModelAnswer(content="c"))
    assert cache.get("b") is None
    assert cache.get("a") is not None
    assert cache.get("c") is not None
    assert len(cache) == 2


def test_put_again_refreshes_ttl() -> None:
    clock = FakeClock()
    cache = _cache(clock, ttl_s=10)
    cache.put("k", ModelAnswer(content="old"))
    clock.advance(8)
    cache.put("k", ModelAnswer(content="new"))
    clock.advance(8)
    hit = cache.get("k")
    assert hit is not None and hit.content == "new"


def test_disabled_never_stores() -> None:
    cache = ResponseCache(ResponseCacheSettings(enabled=False), clock=FakeClock())
    cache.put("k", ModelAnswer(content="x"))
    assert cache.get("k") is None
    assert len(cache) == 0
