"""The one way to the orchestrators: :class:`OrchestratorClient`.

The gateway, the CLI (:class:`cluster.runtime.LocalStack`) and the batch job talk to orchestrator
shards only through it. It owns:

* **routing**: a task id goes to shard :func:`~actors.orchestrator.shard_of` ``(task_id)``; a
  submission with an idempotency key goes to the shard of ``tenant/key``, where the key's claim is
  written and the task is created in the same actor call (one round trip, one shard: every claim of
  a key meets on one store writer); a submission with neither goes to the next shard in turn. The
  orchestrator gives a new task an id that routes back to itself
  (:func:`~actors.orchestrator.task_id_on_shard`), so ``wait``, ``retry`` and approvals of a task
  reach the shard that started it. (A task whose id was chosen elsewhere, by its submitter or by
  an earlier claim of its key, may run on another shard than its id routes to: every call still
  works there, through the shared store; only the wake-up of an approval then takes an extra hop.)
* **restarts**: a shard that died (:class:`~ray.exceptions.RayActorError`) is looked up again once
  (its restarted incarnation) and the call retried; a second failure raises
  :class:`~officeray.errors.OrchestratorUnavailableError`;
* **timeouts**: a call that does not answer within :data:`CALL_TIMEOUT_S` (``wait``: its own time
  plus :data:`WAIT_GRACE_S`) raises :class:`~officeray.errors.OrchestratorUnavailableError` (the
  gateway answers 503 with ``Retry-After``), never hangs;
* **errors**: what an orchestrator method raises comes back as raised there (officeray's typed
  errors and a ``wait`` timeout unwrapped from Ray's :class:`~ray.exceptions.RayTaskError`).

Without Ray, :mod:`actors.testing` gives the client in-process fake shards.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

from ray.exceptions import RayActorError, RayTaskError

from actors.orchestrator import ModelPorts, get_or_create_orchestrator, orchestrator_name, shard_of
from officeray.config import Settings
from officeray.contracts import ApprovalDecision, ReviewDecision, ReviewDecisionKind, TaskRecord, TaskRequest
from officeray.errors import OfficerayError, OrchestratorUnavailableError

logger = logging.getLogger(__name__)

CALL_TIMEOUT_S = 30.0
"""Longest wait for an orchestrator call (a restarting or overloaded shard raises
:class:`OrchestratorUnavailableError` after it)."""

WAIT_GRACE_S = 5.0
"""How much longer than its own ``timeout_s`` a ``wait`` call may take to answer."""

FIND_POLL_S = 0.2
"""How often :func:`find_client` looks for the first shard while the app starts."""

Connect = Callable[[int], Any]
"""``shard -> actor handle`` (the shard's current incarnation; created or looked up by name)."""


class OrchestratorClient:
    """Calls to orchestrator shards ``0 .. shards - 1``, each reached through ``connect(shard)``.

    Every method is a coroutine; ``connect`` runs at construction for each shard, and again after
    a shard died. ``call_timeout_s`` bounds each call except ``wait`` and ``run``.
    """

    def __init__(self, connect: Connect, shards: int, *, call_timeout_s: float = CALL_TIMEOUT_S) -> None:
        if shards < 1:
            raise ValueError(f"shards must be at least 1, not {shards}")
        self._connect = connect
        self.shards = shards
        self.call_timeout_s = call_timeout_s
        self._handles = [connect(shard) for shard in range(shards)]
        self._turn = itertools.count()
        self._background: set[asyncio.Future[None]] = set()

    # -- routing -----------------------------------------------------------------------------------

    def shard_of_task(self, task_id: str) -> int:
        """The shard that calls about ``task_id`` go to."""
        return shard_of(task_id, self.shards)

    def shard_of_request(self, request: TaskRequest) -> int:
        """The shard a submission goes to: ``tenant/key`` with an idempotency key, else its task id,
        else the next shard in turn."""
        if request.idempotency_key is not None:
            return shard_of(f"{request.tenant}/{request.idempotency_key}", self.shards)
        if request.task_id is not None:
            return shard_of(request.task_id, self.shards)
        return next(self._turn) % self.shards

    def handle(self, shard: int) -> Any:
        """Shard ``shard``'s actor handle, for what the client does not do (fault injection, benchmarks:
        ``pid``, ``busy_runner_pids``)."""
        return self._handles[shard]

    # -- tasks -------------------------------------------------------------------------------------

    async def submit(self, request: TaskRequest) -> tuple[TaskRecord, bool]:
        """Create and start the task (one actor call): ``(record, created)``; ``created`` is False
        when the task existed (its id, or its idempotency key with the same request).

        Raises :class:`~officeray.errors.IdempotencyConflictError` (the key names a task of another
        request), :class:`~officeray.errors.StoreUnavailableError`, :class:`OrchestratorUnavailableError`.
        """
        # with a task id or an idempotency key a repeated submit finds the first one's task
        repeatable = request.task_id is not None or request.idempotency_key is not None
        answer: tuple[TaskRecord, bool] = await self._call(
            self.shard_of_request(request),
            "submit",
            request,
            timeout_s=self.call_timeout_s,
            idempotent=repeatable,
        )
        return answer

    async def wait(self, task_id: str, timeout_s: float | None = None) -> TaskRecord:
        """The final record of ``task_id``; :class:`TimeoutError` when it is not final after
        ``timeout_s`` (None: wait as long as it runs)."""
        limit = None if timeout_s is None else timeout_s + WAIT_GRACE_S
        record: TaskRecord = await self._call(
            self.shard_of_task(task_id), "wait", task_id, timeout_s, timeout_s=limit
        )
        return record

    async def run(self, request: TaskRequest, timeout_s: float | None = None) -> TaskRecord:
        """Submit ``request`` and wait for its final record."""
        record, _created = await self.submit(request)
        return await self.wait(record.task_id, timeout_s)

    async def retry(self, task_id: str) -> TaskRecord:
        """Re-run a dead-lettered task from its last good checkpoint; its record as re-queued.
        :class:`~officeray.errors.TaskNotFoundError` when it is not in the dead-letter queue."""
        record: TaskRecord = await self._call(
            self.shard_of_task(task_id), "retry", task_id, timeout_s=self.call_timeout_s, idempotent=False
        )
        return record

    async def cancel(self, task_id: str, by: str = "cli") -> TaskRecord:
        """Cancel ``task_id`` through its shard (which keeps the request in the store and stops the
        task's run there); the record as it was before. When the task does not run on that shard,
        the other shards are told to stop it too; a task that runs nowhere now is ended ``cancelled``
        by the orchestrator that resumes it. ``by``: who cancels (an API key id, ``cli``).

        Raises :class:`~officeray.errors.TaskNotFoundError`, :class:`~officeray.errors.TaskFinalError`
        (it already ended), :class:`OrchestratorUnavailableError`."""
        shard = self.shard_of_task(task_id)
        record: TaskRecord
        stopped: bool
        record, stopped = await self._call(shard, "cancel", task_id, by, timeout_s=self.call_timeout_s)
        if not stopped and self.shards > 1:
            others = [s for s in range(self.shards) if s != shard]
            results = await self._each(others, "stop_run", task_id, by, timeout_s=self.call_timeout_s)
            for other, result in zip(others, results, strict=True):
                if isinstance(result, BaseException):
                    logger.warning("task %s: stop_run on shard %d failed: %s", task_id, other, result)
        return record

    async def decide_approval(
        self, task_id: str, step_id: str, decision: Literal["approved", "rejected"], by: str, reason: str = ""
    ) -> ApprovalDecision:
        """Decide a step that waits for approval, through the task's shard (which stores the
        decision and wakes the step); the stored decision (its ``step_id`` is the step's
        idempotency key).

        When the step does not wait on that shard (the task moved to another after a restart), the
        other shards are told in the background; the step's poll of the store finds it anyway.
        Raises :class:`~officeray.errors.TaskNotFoundError`,
        :class:`~officeray.errors.ApprovalConflictError` (not waiting, or decided already).
        """
        shard = self.shard_of_task(task_id)
        stored: ApprovalDecision
        woken: bool
        stored, woken = await self._call(
            shard,
            "decide_approval",
            *(task_id, step_id, decision, by, reason),
            timeout_s=self.call_timeout_s,
            idempotent=False,  # repeated after a death, a stored decision would answer "decided already"
        )
        if not woken and self.shards > 1:
            others = [s for s in range(self.shards) if s != shard]
            self._spawn(self._notify(others, task_id, stored.step_id))
        return stored

    async def decide_review(
        self, task_id: str, decision: ReviewDecisionKind, by: str, feedback: str = ""
    ) -> ReviewDecision:
        """Decide the escalated results ``task_id`` waits with, through the task's shard (which stores
        the decision and wakes the task); the stored decision. When the task does not wait on that
        shard, the other shards are told in the background (its poll of the store finds it anyway).

        Raises :class:`~officeray.errors.TaskNotFoundError`,
        :class:`~officeray.errors.ReviewConflictError` (not waiting, or decided already), ValueError.
        """
        shard = self.shard_of_task(task_id)
        stored: ReviewDecision
        woken: bool
        stored, woken = await self._call(
            shard,
            "decide_review",
            *(task_id, decision, by, feedback),
            timeout_s=self.call_timeout_s,
            idempotent=False,  # repeated after a death, a stored decision would answer "decided already"
        )
        if not woken and self.shards > 1:
            others = [s for s in range(self.shards) if s != shard]
            self._spawn(self._notify_review(others, task_id, stored.iteration))
        return stored

    async def _notify_review(self, shards: list[int], task_id: str, iteration: int) -> None:
        results = await self._each(shards, "notify_review", task_id, iteration, timeout_s=self.call_timeout_s)
        for shard, result in zip(shards, results, strict=True):
            if isinstance(result, BaseException):
                logger.warning("task %s: notify_review on shard %d failed: %s", task_id, shard, result)

    async def _notify(self, shards: list[int], task_id: str, key: str) -> None:
        results = await self._each(shards, "notify_approval", task_id, key, timeout_s=self.call_timeout_s)
        for shard, result in zip(shards, results, strict=True):
            if isinstance(result, BaseException):
                logger.warning("task %s: notify_approval on shard %d failed: %s", task_id, shard, result)

    # -- the shards --------------------------------------------------------------------------------

    async def ready(self, timeout_s: float) -> None:
        """Return once every shard answers ``ready`` (its tool runners are warm); else
        :class:`OrchestratorUnavailableError`, naming the first shard that was not ready."""
        results = await self._each(range(self.shards), "ready", timeout_s=timeout_s)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def in_flight(self, timeout_s: float | None = None) -> int:
        """Tasks running on all shards now; :class:`OrchestratorUnavailableError` when a shard
        does not answer (within ``timeout_s``, default the call timeout)."""
        limit = self.call_timeout_s if timeout_s is None else timeout_s
        counts = await asyncio.gather(
            *(self._call(s, "in_flight", timeout_s=limit) for s in range(self.shards))
        )
        return sum(counts)

    async def pool_stats(self, timeout_s: float | None = None) -> list[dict[str, Any]]:
        """Each answering shard's tool-runner pool figures (``RunnerPool.stats``); a shard that does
        not answer is left out (and logged)."""
        limit = self.call_timeout_s if timeout_s is None else timeout_s
        results = await self._each(range(self.shards), "pool_stats", timeout_s=limit)
        stats = []
        for shard, result in enumerate(results):
            if isinstance(result, BaseException):
                logger.warning("orchestrator %d: no pool figures: %s", shard, result)
            else:
                stats.append(result)
        return stats

    async def shard_stats(self, timeout_s: float | None = None) -> list[dict[str, Any] | BaseException]:
        """Each shard's answer to ``pool_stats`` in shard order (its runner pool and task slots), or
        the exception of a shard that did not answer (the console's System view shows both)."""
        limit = self.call_timeout_s if timeout_s is None else timeout_s
        return await self._each(range(self.shards), "pool_stats", timeout_s=limit)

    async def probe(self, timeout_s: float | None = None) -> dict[int, BaseException]:
        """Call every shard (after a restart, the first call starts its loops, which resume its
        tasks); the shards that did not answer, with why."""
        limit = self.call_timeout_s if timeout_s is None else timeout_s
        results = await self._each(range(self.shards), "in_flight", timeout_s=limit)
        return {shard: r for shard, r in enumerate(results) if isinstance(r, BaseException)}

    # -- calls -------------------------------------------------------------------------------------

    async def _each(self, shards: Any, method: str, *args: Any, timeout_s: float | None) -> list[Any]:
        """``method`` on every shard of ``shards`` at once; each result or the exception it raised."""
        return list(
            await asyncio.gather(
                *(self._call(shard, method, *args, timeout_s=timeout_s) for shard in shards),
                return_exceptions=True,
            )
        )

    async def _call(
        self, shard: int, method: str, *args: Any, timeout_s: float | None, idempotent: bool = True
    ) -> Any:
        """``method(*args)`` on ``shard``; once more on its restarted incarnation after it died, when
        the call is ``idempotent`` (a call that may have taken effect before the shard died, such as
        a submit that mints its task id there, is not repeated: the caller gets
        :class:`OrchestratorUnavailableError` and decides, e.g. by its idempotency key)."""
        for attempt in (1, 2):
            try:
                return await asyncio.wait_for(getattr(self._handles[shard], method).remote(*args), timeout_s)
            except RayTaskError as exc:  # the method raised: hand on what it raised
                raise _raised(exc) from None
            except TimeoutError:
                raise OrchestratorUnavailableError(
                    f"the orchestrator (shard {shard}) did not answer within {timeout_s:g}s"
                ) from None
            except RayActorError as exc:
                if attempt == 2 or not idempotent:
                    if not idempotent:
                        self._handles[shard] = self._reconnect(shard)
                    raise OrchestratorUnavailableError(
                        f"the orchestrator (shard {shard}) is unavailable: {_first_line(exc)}"
                    ) from None
                logger.warning("orchestrator %d died (%s); looking up its restarted incarnation", shard, exc)
                self._handles[shard] = self._reconnect(shard)
        raise AssertionError("unreachable")

    def _reconnect(self, shard: int) -> Any:
        try:
            return self._connect(shard)
        except Exception as exc:
            raise OrchestratorUnavailableError(
                f"the orchestrator (shard {shard}) is unavailable: {_first_line(exc)}"
            ) from None

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _raised(exc: RayTaskError) -> BaseException:
    """What the orchestrator method raised: officeray's typed errors and ``TimeoutError`` as they
    were raised (no Ray traceback in their message); anything else stays Ray's error (it is also
    an instance of the original type, and carries the remote traceback)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, OfficerayError | TimeoutError):
        return cause
    return exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- clients of a cluster ------------------------------------------------------------------------------


def create_client(
    settings: Settings, ports: ModelPorts, *, call_timeout_s: float = CALL_TIMEOUT_S
) -> OrchestratorClient:
    """A client of every orchestrator shard of ``settings`` (``workflow.orchestrators``), each
    created (detached, restarted by Ray when it crashes) unless it exists: what the gateway uses,
    with the model ports the composition root built."""
    return OrchestratorClient(
        lambda shard: get_or_create_orchestrator(settings, ports, shard),
        settings.workflow.orchestrators,
        call_timeout_s=call_timeout_s,
    )


def find_client(
    settings: Settings, timeout_s: float, *, call_timeout_s: float = CALL_TIMEOUT_S
) -> OrchestratorClient:
    """A client of the orchestrator shards the Serve app created, found by name: what the CLI and
    the batch job use. Waits up to ``timeout_s`` for shard 0 (the app starts them); then takes the
    shards after it that exist (an app deployed with fewer shards than ``settings`` says: the ones
    found take every task). Raises :class:`TimeoutError` when shard 0 does not appear."""
    import ray

    def lookup(shard: int) -> Any:
        return ray.get_actor(orchestrator_name(shard), namespace=settings.ray_namespace)

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            lookup(0)
            break
        except ValueError:
            if time.monotonic() > deadline:
                raise TimeoutError("the orchestrator did not start; see the Ray logs") from None
            time.sleep(FIND_POLL_S)
    shards = 1
    while shards < settings.workflow.orchestrators:
        try:
            lookup(shards)
        except ValueError:
            break
        shards += 1
    return OrchestratorClient(lookup, shards, call_timeout_s=call_timeout_s)
