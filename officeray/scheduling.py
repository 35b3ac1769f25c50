"""Fair task slots: which waiting task runs next when a slot frees.

An orchestrator runs at most ``workflow.max_concurrent_tasks`` tasks at once (the *slots*), and at
most ``tenants.<name>.max_concurrent_tasks`` of one tenant. A task beyond either cap waits in its
tenant's queue (it stays ``queued``). When a slot frees, the tenants with a task that may start take
turns: the tenant served longest ago goes first, so one tenant's backlog delays another tenant's task
by one freed slot at most. Within a tenant, a higher ``priority`` goes first, then the earlier task.

Pure asyncio, no clock: order follows the order of ``await``\\ s, so tests need no sleeps.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from officeray.metrics import NO_METRICS, Metrics


@dataclass(order=True)
class _Waiter:
    rank: tuple[int, int]
    """``(-priority, arrival)``: the heap's order (higher priority, then earlier)."""
    granted: asyncio.Future[None] = field(compare=False)


class FairScheduler:
    """``slots`` task slots shared fairly by tenants, each capped by ``tenant_cap(tenant)`` (read
    whenever it matters, so a changed config applies to the next decision).

    ``async with scheduler.slot(tenant, priority):`` holds a slot for the block. A waiter that is
    cancelled leaves its queue (and hands on a slot granted to it meanwhile). ``metrics`` hears each
    tenant's queue depth whenever it may have changed (:meth:`Metrics.tasks_queued`)."""

    def __init__(self, slots: int, tenant_cap: Callable[[str], int], metrics: Metrics = NO_METRICS) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, not {slots}")
        self.slots = slots
        self._metrics = metrics
        self._tenant_cap = tenant_cap
        self._running: dict[str, int] = {}
        self._total = 0
        self._queues: dict[str, list[_Waiter]] = {}
        self._served: dict[str, int] = {}
        """When each tenant with running or waiting tasks last got a slot (a turn number)."""
        self._turns = itertools.count()
        self._arrivals = itertools.count()

    # -- what it holds ---------------------------------------------------------------------------

    @property
    def running(self) -> int:
        """Slots held now."""
        return self._total

    def running_by_tenant(self) -> dict[str, int]:
        return dict(self._running)

    def queued_by_tenant(self) -> dict[str, int]:
        """Tasks waiting for a slot, per tenant that has any."""
        return {tenant: len(queue) for tenant, queue in self._queues.items()}

    def stats(self) -> dict[str, object]:
        """Slots, running and queued tasks (totals and per tenant)."""
        queued = self.queued_by_tenant()
        return {
            "slots": self.slots,
            "running": self.running,
            "queued": sum(queued.values()),
            "running_by_tenant": self.running_by_tenant(),
            "queued_by_tenant": queued,
        }

    # -- slots -----------------------------------------------------------------------------------

    @asynccontextmanager
    async def slot(self, tenant: str, priority: int = 0) -> AsyncIterator[None]:
        """Hold one slot of ``tenant`` for the block (waiting in the tenant's queue for it first)."""
        await self.acquire(tenant, priority)
        try:
            yield
        finally:
            self.release(tenant)

    @asynccontextmanager
    async def released(self, tenant: str, priority: int = 0) -> AsyncIterator[None]:
        """Inside a :meth:`slot` block of ``tenant``: give its slot back for this block (a parent task
        that only waits for its subtasks) and take one again after it, waiting in the queue like a
        new task. When the block raises, or the wait is cancelled, the slot is taken back at once
        (past the caps for that moment), so that the enclosing :meth:`slot` block ends balanced."""
        self.release(tenant)
        try:
            yield
        except BaseException:
            self._grant(tenant)
            raise
        try:
            await self.acquire(tenant, priority)
        except asyncio.CancelledError:
            self._grant(tenant)
            raise

    async def acquire(self, tenant: str, priority: int = 0) -> None:
        """Take a slot for ``tenant``, waiting in its queue while the caps are reached. Pair with
        :meth:`release`; cancelled while waiting, it holds nothing."""
        if not self._queues.get(tenant) and self._may_start(tenant):
            self._grant(tenant)
            self._report(tenant)  # 0: the tenant's series exists from its first task on
            return
        waiter = _Waiter((-priority, next(self._arrivals)), asyncio.get_running_loop().create_future())
        heapq.heappush(self._queues.setdefault(tenant, []), waiter)
        self._served.setdefault(tenant, -1)
        self._report(tenant)
        try:
            await waiter.granted
        except asyncio.CancelledError:
            if waiter.granted.done() and not waiter.granted.cancelled():
                self.release(tenant)  # granted just as we were cancelled: hand it on
            else:
                self._leave(tenant, waiter)
            raise

    def release(self, tenant: str) -> None:
        """Give back a slot of ``tenant``; the next waiting task (if any may start) takes it."""
        left = self._running.get(tenant, 0) - 1
        if left < 0:
            raise RuntimeError(f"tenant {tenant!r} released a slot it did not hold")
        self._total -= 1
        if left:
            self._running[tenant] = left
        else:
            del self._running[tenant]
            self._forget_if_idle(tenant)
        self._dispatch()

    def _may_start(self, tenant: str) -> bool:
        return self._total < self.slots and self._running.get(tenant, 0) < self._tenant_cap(tenant)

    def _grant(self, tenant: str) -> None:
        self._running[tenant] = self._running.get(tenant, 0) + 1
        self._total += 1
        self._served[tenant] = next(self._turns)

    def _dispatch(self) -> None:
        """Start waiting tasks while slots are free: each time, the tenant served longest ago among
        those under their cap, and its first task."""
        while self._total < self.slots:
            ready = [t for t in self._queues if self._running.get(t, 0) < self._tenant_cap(t)]
            if not ready:
                return
            tenant = min(ready, key=self._served.__getitem__)
            queue = self._queues[tenant]
            waiter = heapq.heappop(queue)
            if not queue:
                del self._queues[tenant]
            self._grant(tenant)
            self._report(tenant)
            waiter.granted.set_result(None)

    def _leave(self, tenant: str, waiter: _Waiter) -> None:
        """Take a cancelled waiter out of its queue."""
        queue = self._queues.get(tenant, [])
        if waiter in queue:
            queue.remove(waiter)
            heapq.heapify(queue)
        if not queue:
            self._queues.pop(tenant, None)
            self._forget_if_idle(tenant)
        self._report(tenant)

    def _report(self, tenant: str) -> None:
        self._metrics.tasks_queued(tenant, len(self._queues.get(tenant, ())))

    def _forget_if_idle(self, tenant: str) -> None:
        """Keep no state of a tenant with nothing running or waiting (tenants come and go)."""
        if tenant not in self._running and tenant not in self._queues:
            self._served.pop(tenant, None)
