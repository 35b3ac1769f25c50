"""Keeping tasks apart on a warm sandbox: recycle between tasks, with pre-warmed spares.

A tool runner serves steps of many tasks, one step at a time. :class:`TaskSandboxes` hands it the
sandbox for a step's task and guarantees that no task sees another task's files or processes:

* ``recycle="reset"`` (default): when a step of a different task arrives, the workspace (and the
  container's ``/tmp``) is emptied and leftover processes are killed before the step runs
  (about a millisecond);
* ``recycle="replace"``: the container itself is retired and a pre-warmed spare takes its place, so
  a new task always gets a fresh container without waiting for a cold start.

A sandbox that failed (crash, OOM kill, stuck agent) is retired the same way, whatever the mode.
Spares are started in a background thread; ``spares=0`` starts replacements on demand.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Literal

from tools_sandbox.sandbox import Sandbox

logger = logging.getLogger(__name__)

Recycle = Literal["reset", "replace"]

MAX_SPARES = 8
"""Most pre-warmed spare sandboxes one runner keeps."""


class TaskSandboxes:
    """The sandboxes of one tool runner (see the module). ``on_started`` hears each sandbox started
    (the first, spares, replacements), e.g. to count them."""

    def __init__(
        self,
        factory: Callable[[], Sandbox],
        *,
        recycle: Recycle = "reset",
        spares: int = 1,
        on_started: Callable[[], None] | None = None,
    ) -> None:
        if recycle not in ("reset", "replace"):
            raise ValueError(f"recycle must be 'reset' or 'replace', not {recycle!r}")
        if not 0 <= spares <= MAX_SPARES:
            raise ValueError(f"spares must be between 0 and {MAX_SPARES}, not {spares}")
        self._factory = factory
        self._on_started = on_started
        self.recycle: Recycle = recycle
        self.spares_wanted = spares
        self._spares: deque[Sandbox] = deque()
        self._lock = threading.Lock()
        self._warming = 0
        self._closed = False
        self.active: Sandbox = self._new_started()
        self.current_task: str | None = None
        self.recycled = 0
        """How many times the sandbox was recycled for a new task (reset or replaced)."""
        self.replaced = 0
        """How many sandboxes were retired (task change in ``replace`` mode, or failure)."""
        self._top_up()

    def _new_started(self) -> Sandbox:
        sandbox = self._factory()
        sandbox.start()
        if self._on_started is not None:
            self._on_started()
        return sandbox

    def _warm_one(self) -> None:
        try:
            sandbox = self._new_started()
        except Exception:
            logger.exception("could not start a spare sandbox")
            with self._lock:
                self._warming -= 1
            return
        with self._lock:
            self._warming -= 1
            if self._closed:
                sandbox.stop()
                return
            self._spares.append(sandbox)

    def _top_up(self) -> None:
        with self._lock:
            missing = self.spares_wanted - len(self._spares) - self._warming
            self._warming += max(0, missing)
        for _ in range(max(0, missing)):
            threading.Thread(target=self._warm_one, name="sandbox-spare", daemon=True).start()

    def _promote_spare(self) -> Sandbox:
        with self._lock:
            spare = self._spares.popleft() if self._spares else None
        if spare is None or not spare.alive:
            if spare is not None:
                spare.stop()
            spare = self._new_started()
        self._top_up()
        return spare

    def _retire_active(self) -> None:
        old = self.active
        self.active = self._promote_spare()
        self.replaced += 1
        threading.Thread(target=old.stop, name="sandbox-retire", daemon=True).start()

    def for_task(self, task_id: str) -> Sandbox:
        """The sandbox for a step of ``task_id``, recycled first when the previous step was another task's."""
        if task_id != self.current_task:
            if self.current_task is not None:
                self.recycled += 1
                if self.recycle == "replace":
                    self._retire_active()
                else:
                    try:
                        self.active.reset()
                    except Exception:
                        logger.warning("reset failed; replacing the sandbox", exc_info=True)
                        self._retire_active()
            self.current_task = task_id
        return self.active

    def retire_failed(self) -> None:
        """The active sandbox failed: swap in a spare now; the task keeps running on the spare."""
        self._retire_active()

    @property
    def spare_count(self) -> int:
        with self._lock:
            return len(self._spares)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            spares = list(self._spares)
            self._spares.clear()
        for sandbox in [self.active, *spares]:
            sandbox.stop()
