"""Fakes for Ray actor handles, shipped with the package: code that talks to actors (the
:class:`~actors.client.OrchestratorClient`, anything else that takes a handle) is tested in process,
without a Ray cluster. (The tool-runner pool's own fakes are in :mod:`actors.fake_runners`.)

* :class:`LocalActorHandle`: ``handle.method.remote(*args)`` runs ``method`` of an in-process object
  and returns an awaitable, as a Ray actor handle does. Arguments and results cross a pickle round
  trip (what is not picklable fails here as it would on Ray); an exception the method raises comes
  back as Ray delivers it (a :class:`~ray.exceptions.RayTaskError` that is also an instance of the
  original type); a call keeps running when its caller stops waiting; a killed handle raises
  :class:`~ray.exceptions.ActorDiedError`.
* :class:`LocalActors`: named shards of such objects, each with incarnations: ``connect(shard)`` is
  what an ``OrchestratorClient`` takes; ``kill`` ends an incarnation (a restart makes a new one);
  ``stall`` makes a shard stop answering; ``calls`` records every call, in order.
* :class:`FakeOrchestrator`: an in-memory orchestrator shard with the actor's remote API (``submit``
  with idempotency keys, ``wait``, ``retry``, ``decide_approval``, ``notify_approval``, ``cancel``,
  ``stop_run``, ``in_flight``, ``pool_stats``, ``ready``), over a :class:`FakeTaskStore` its shards share.
"""

from __future__ import annotations

import asyncio
import pickle
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from ray.exceptions import ActorDiedError, RayTaskError

from actors.orchestrator import task_id_on_shard
from officeray.contracts import ApprovalDecision, StepStatus, TaskRecord, TaskRequest, TaskStatus, utcnow
from officeray.errors import (
    ApprovalConflictError,
    IdempotencyConflictError,
    TaskFinalError,
    TaskNotFoundError,
)


def _copy(value: Any) -> Any:
    """``value`` as the other side of a Ray call sees it (serialized, then read back)."""
    return pickle.loads(pickle.dumps(value))


@dataclass(frozen=True)
class Call:
    """One call made through a :class:`LocalActors` handle."""

    shard: int
    incarnation: int
    method: str
    args: tuple[Any, ...]


class LocalActorHandle:
    """A stand-in for a Ray actor handle over ``target``, an in-process object (see the module)."""

    def __init__(self, target: Any, *, on_call: Callable[[str, tuple[Any, ...]], None] | None = None) -> None:
        self._target = target
        self._on_call = on_call
        self.dead = False
        self.stalled = asyncio.Event()
        self.stalled.set()  # set: answering; cleared: calls wait (a stalled actor)

    def kill(self) -> None:
        """Every call from now on (and those waiting on a stall) raises ``ActorDiedError``."""
        self.dead = True
        self.stalled.set()

    def __getattr__(self, method: str) -> _LocalMethod:
        if method.startswith("_"):
            raise AttributeError(method)
        getattr(self._target, method)  # an unknown method fails here, as on a Ray handle
        return _LocalMethod(self, method)

    async def _invoke(self, method: str, args: tuple[Any, ...]) -> Any:
        if self._on_call is not None:
            self._on_call(method, args)
        await self.stalled.wait()
        if self.dead:
            raise ActorDiedError()
        try:
            result = await getattr(self._target, method)(*_copy(args))
        except Exception as exc:
            if self.dead:
                raise ActorDiedError() from None
            cause = _copy(exc)
            raise RayTaskError(method, traceback.format_exc(), cause).as_instanceof_cause() from None
        if self.dead:
            raise ActorDiedError()
        return _copy(result)


class _LocalMethod:
    def __init__(self, handle: LocalActorHandle, method: str) -> None:
        self._handle = handle
        self._method = method

    def remote(self, *args: Any) -> Awaitable[Any]:
        """Start the call now (as Ray does); the caller's giving up does not cancel it."""
        running = asyncio.ensure_future(self._handle._invoke(self._method, args))
        return asyncio.shield(running)


class LocalActors:
    """Shards ``0 .. shards - 1`` of in-process actors made by ``factory(shard)``.

    ``connect(shard)`` returns the handle of the shard's current incarnation (as looking an actor up
    by name does); ``kill(shard)`` ends it: its handle raises ``ActorDiedError`` from then on, and,
    with ``restart`` (Ray's ``max_restarts``), the next ``connect`` finds a new incarnation (a new
    object from ``factory``).
    """

    def __init__(self, factory: Callable[[int], Any], shards: int) -> None:
        self._factory = factory
        self.shards = shards
        self.calls: list[Call] = []
        """Every call, in the order made."""
        self.connects: list[int] = []
        """The shards ``connect`` was called for, in order."""
        self.incarnations = [0] * shards
        self.objects = [factory(shard) for shard in range(shards)]
        """Each shard's current object (what its handle calls)."""
        self._handles = [self._new_handle(shard) for shard in range(shards)]

    def _new_handle(self, shard: int) -> LocalActorHandle:
        incarnation = self.incarnations[shard]

        def record(method: str, args: tuple[Any, ...]) -> None:
            self.calls.append(Call(shard, incarnation, method, args))

        return LocalActorHandle(self.objects[shard], on_call=record)

    def connect(self, shard: int) -> LocalActorHandle:
        self.connects.append(shard)
        if self._handles[shard].dead:  # not restarted: gone, as ray.get_actor says
            raise ValueError(f"Failed to look up actor with name 'shard-{shard}'")
        return self._handles[shard]

    def kill(self, shard: int, *, restart: bool = True) -> None:
        self._handles[shard].kill()
        if restart:
            self.incarnations[shard] += 1
            self.objects[shard] = self._factory(shard)
            self._handles[shard] = self._new_handle(shard)

    def stall(self, shard: int, stalled: bool = True) -> None:
        """Make shard ``shard`` stop answering (its calls wait) or answer again."""
        if stalled:
            self._handles[shard].stalled.clear()
        else:
            self._handles[shard].stalled.set()

    def calls_of(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]


# -- an in-memory orchestrator --------------------------------------------------------------------------


@dataclass
class FakeTaskStore:
    """What the shards of a :class:`FakeOrchestrator` share: tasks, idempotency claims, the
    dead-letter queue, approvals."""

    tasks: dict[str, TaskRecord] = field(default_factory=dict)
    claims: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    """``(tenant, key) -> (task_id, fingerprint)``."""
    dlq: set[str] = field(default_factory=set)
    approvals: dict[tuple[str, str], ApprovalDecision] = field(default_factory=dict)
    created_on: dict[str, int] = field(default_factory=dict)
    """The shard that created each task."""
    cancel_requests: list[tuple[str, str]] = field(default_factory=list)
    """``(task_id, by)`` of every cancel request, in order."""


class FakeOrchestrator:
    """An orchestrator shard in memory, with the remote API of
    :class:`actors.orchestrator.Orchestrator`.

    A submitted task ends at once with ``outcome`` (``completed``, its result the description;
    ``failed``: into the dead-letter queue), or stays ``queued`` until :meth:`finish` when
    ``outcome`` is None. A new task's id routes to this shard, as the real one's does.
    """

    def __init__(
        self,
        shard: int,
        shards: int,
        store: FakeTaskStore,
        *,
        outcome: Literal["completed", "failed"] | None = "completed",
    ) -> None:
        self.shard = shard
        self.shards = shards
        self.store = store
        self.outcome = outcome
        self.woken: list[tuple[str, str]] = []
        """``(task_id, step idempotency key)`` of the steps woken here, in order."""
        self.waiting_steps: set[tuple[str, str]] = set()
        """``(task_id, step idempotency key)`` of steps that wait for a decision on this shard."""
        self._done: dict[str, asyncio.Event] = {}

    async def submit(self, request: TaskRequest) -> tuple[TaskRecord, bool]:
        if request.idempotency_key is not None:
            key = (request.tenant, request.idempotency_key)
            task_id = request.task_id or task_id_on_shard(self.shard, self.shards)
            claimed_id, fingerprint = self.store.claims.setdefault(key, (task_id, request.fingerprint()))
            if fingerprint != request.fingerprint():
                raise IdempotencyConflictError(
                    f"idempotency key {request.idempotency_key!r} was used with a different request "
                    f"(task {claimed_id}); use a new key for a new task"
                )
            request = request.model_copy(update={"task_id": claimed_id})
        task_id = request.task_id or task_id_on_shard(self.shard, self.shards)
        existing = self.store.tasks.get(task_id)
        if existing is not None:
            return existing, False
        record = TaskRecord(task_id=task_id, description=request.description, tenant=request.tenant)
        self.store.tasks[task_id] = record
        self.store.created_on[task_id] = self.shard
        if self.outcome is not None:
            self.finish(task_id, TaskStatus(self.outcome))
        return record, True

    def finish(self, task_id: str, status: TaskStatus = TaskStatus.COMPLETED) -> None:
        """End ``task_id`` with ``status`` (failed: into the dead-letter queue)."""
        record = self.store.tasks[task_id]
        record.status = status
        record.result = record.description if status == TaskStatus.COMPLETED else None
        record.error = "failed" if status == TaskStatus.FAILED else None
        record.finished_at = utcnow()
        if status == TaskStatus.FAILED:
            self.store.dlq.add(task_id)
        self._done.setdefault(task_id, asyncio.Event()).set()

    async def wait(self, task_id: str, timeout_s: float | None = None) -> TaskRecord:
        record = self.store.tasks.get(task_id)
        if record is None:
            raise TaskNotFoundError(task_id)
        if not record.status.is_final:
            try:
                await asyncio.wait_for(self._done.setdefault(task_id, asyncio.Event()).wait(), timeout_s)
            except TimeoutError:
                raise TimeoutError(f"task {task_id} did not finish in {timeout_s}s") from None
        return self.store.tasks[task_id]

    async def retry(self, task_id: str) -> TaskRecord:
        if task_id not in self.store.dlq:
            raise TaskNotFoundError(f"task {task_id!r} is not in the dead-letter queue")
        self.store.dlq.discard(task_id)
        record = self.store.tasks[task_id]
        record.status, record.error, record.finished_at = TaskStatus.QUEUED, None, None
        self._done.pop(task_id, None)
        return record

    async def cancel(self, task_id: str, by: str) -> tuple[TaskRecord, bool]:
        """Cancel a task: kept in :attr:`FakeTaskStore.cancel_requests`; a task created on this shard
        ends ``cancelled`` at once (True); one created elsewhere is left to :meth:`stop_run`."""
        record = self.store.tasks.get(task_id)
        if record is None:
            raise TaskNotFoundError(f"task {task_id!r} not found")
        if record.status.is_final:
            raise TaskFinalError(
                f"task {task_id!r} already ended: {record.status.value}", record.status.value
            )
        before = record.model_copy(deep=True)
        self.store.cancel_requests.append((task_id, by))
        return before, await self.stop_run(task_id, by)

    async def stop_run(self, task_id: str, by: str) -> bool:
        record = self.store.tasks.get(task_id)
        if record is None or record.status.is_final or self.store.created_on.get(task_id) != self.shard:
            return False
        self.finish(task_id, TaskStatus.CANCELLED)
        record.error = f"cancelled by {by}"
        return True

    async def decide_approval(
        self, task_id: str, step_id: str, decision: Literal["approved", "rejected"], by: str, reason: str = ""
    ) -> tuple[ApprovalDecision, bool]:
        record = self.store.tasks.get(task_id)
        if record is None:
            raise TaskNotFoundError(f"task {task_id!r} not found")
        step = next((s for s in record.steps if s.step_id == step_id), None)
        if step is None or step.status != StepStatus.WAITING_APPROVAL:
            raise ApprovalConflictError(f"step {step_id!r} of task {task_id!r} is not waiting for approval")
        key = (task_id, step.idempotency_key)
        if key in self.store.approvals:
            raise ApprovalConflictError(f"step {step_id!r} of task {task_id!r} was already decided")
        stored = ApprovalDecision(
            task_id=task_id,
            step_id=step.idempotency_key,
            decision=decision,
            decided_by=by,
            reason=reason,
            decided_at=utcnow(),
        )
        self.store.approvals[key] = stored
        return stored, await self.notify_approval(*key)

    async def notify_approval(self, task_id: str, step_id: str) -> bool:
        if (task_id, step_id) not in self.waiting_steps:
            return False
        self.woken.append((task_id, step_id))
        return True

    async def in_flight(self) -> int:
        return sum(
            1
            for task_id, record in self.store.tasks.items()
            if self.store.created_on.get(task_id) == self.shard and not record.status.is_final
        )

    async def pool_stats(self) -> dict[str, Any]:
        return {"runners": 1, "idle": 1, "starting": 0, "waiting_steps": 0, "placement_problem": None}

    async def ready(self) -> bool:
        return True
