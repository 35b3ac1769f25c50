"""An in-process response cache for identical model calls: TTL plus a bound on entries (LRU).

The key covers what decides the answer (role, messages, JSON Schema, sampling settings and the
structured payload) and leaves out who asked (``task_id``, ``tenant``, ``trace_context`` of the
call, and the ``task_id`` at the top of the payload), so the same question from two tasks hits.

A cached answer still carries whatever the tier put in it for the first asker (an embedded plan
holds that task's ids): the caller's ``accept`` step is where such ids are stamped for the new task.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from officeray.config import ResponseCacheSettings
from serving.tiers.base import ModelAnswer, ModelCall

PER_ASKER_PAYLOAD_KEYS = frozenset({"task_id", "tenant", "trace_context"})
"""Top-level payload keys that name the asker, not the question: left out of the key."""


def _payload_json(payload: Any) -> Any:
    if isinstance(payload, BaseModel):
        data: Any = json.loads(payload.model_dump_json())
    else:
        # Round-trip so sets, dates and the like become plain JSON the same way every time.
        data = json.loads(json.dumps(payload, default=str, sort_keys=True))
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k not in PER_ASKER_PAYLOAD_KEYS}
    return data


class ResponseCache:
    """Answers by :meth:`key_for`; entries live ``ttl_s`` and the least recently used go first."""

    def __init__(self, settings: ResponseCacheSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, ModelAnswer]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key_for(call: ModelCall) -> str:
        """sha256 of the question; the same for identical requests from different tasks."""
        question = {
            "role": call.role,
            "messages": call.messages,
            "json_schema": call.json_schema,
            "schema_name": call.schema_name,
            "max_tokens": call.max_tokens,
            "temperature": call.temperature,
            "payload": _payload_json(call.payload),
        }
        text = json.dumps(question, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def get(self, key: str) -> ModelAnswer | None:
        """A copy of the live entry for ``key``, or ``None`` (missing, expired, or cache disabled)."""
        if not self.enabled:
            return None
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, answer = entry
        if self._clock() >= expires_at:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return answer.model_copy(deep=True)

    def put(self, key: str, answer: ModelAnswer) -> None:
        """Store a copy of ``answer``; past ``max_entries`` the least recently used entry goes."""
        if not self.enabled:
            return
        self._entries[key] = (self._clock() + self.settings.ttl_s, answer.model_copy(deep=True))
        self._entries.move_to_end(key)
        while len(self._entries) > self.settings.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
