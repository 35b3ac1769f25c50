"""Locust users for officeray: :class:`TaskUser` (tasks end to end), and the recording of every run.

Run through ``officeray loadtest`` (which starts the system when no ``--host`` is given, runs locust
headless, shows progress and writes the report), or with locust itself::

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 --out-dir runs/1 TaskUser
    locust -f loadtests/locustfile.py,loadtests/model_user.py --out-dir runs/2 ModelUser  # a model

Add ``loadtests/shape_locustfile.py`` to ``-f`` (with ``--shape-file``) for a staged shape.

:class:`TaskUser` sends ``Authorization: Bearer $OFFICERAY_API_KEY`` (:data:`API_KEY_ENV`) with every
request; ``officeray loadtest`` sets it (a key it creates in the store of the system it starts, or
the key local commands find for a ``--host``). An admin key may submit for every tenant of the task
mix; another key only for its own tenant (the gateway answers 403 otherwise).

:class:`TaskUser` submits a task drawn from the weighted task mix (``--task-mix``), follows it to its
final state and reports, besides the HTTP requests (``POST /v1/tasks``, ``GET /v1/tasks/[id]``), the
**task completion** as its own request type ``TASK`` named after the task kind: the time from the
start of the submission to the moment the final state was seen, failed unless the task completed.
Following is a long poll (``GET /v1/tasks/{id}?wait_s=``, ``--follow wait``, the default) or plain
polling with exponential backoff (``--follow poll``); errors while following back off too.

Closed loop (default): each user runs one task at a time, then thinks for an exponentially
distributed time of mean ``--think-time``. Open loop (``--arrival-rate R``): tasks arrive as a
Poisson process of ``R`` per second over all users and workers, whether earlier ones finished or
not; each is followed in its own greenlet (at most :data:`MAX_OPEN_IN_FLIGHT` per process).

With ``--out-dir`` every request outcome becomes a :class:`~loadtests.records.Sample` (workers send
theirs to the master in batches), and the master (or the only process) writes the timeline and
``run.json`` (see :mod:`loadtests.records`).
"""

# isort: off
import locust  # noqa: F401  (first: gevent's monkey-patching must precede socket/ssl imports)

# isort: on

import json
import logging
import os
import random
import time
import uuid
from pathlib import Path
from typing import Any

import gevent
from gevent.pool import Group
from locust import FastHttpUser, events, task
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from loadtests.records import (
    COMPLETION_TYPE,
    DEFAULT_STAGE,
    POLL_NAME,
    RUN_FILE,
    SAMPLES_FILE,
    SUBMIT_NAME,
    SUBMIT_TYPE,
    TICK_S,
    TIMELINE_FILE,
    RunInfo,
    Sample,
    StageInfo,
    Tick,
)
from loadtests.shapes import Stage, read_stages, stage_at
from loadtests.taskmix import DEFAULT_TASK_MIX, TaskMixError, TaskPicker, load_task_mix

logger = logging.getLogger(__name__)

FINAL_STATUSES = frozenset({"completed", "failed"})
LONG_POLL_S = 10.0
"""``wait_s`` of one long poll (the gateway answers at once when the task ends)."""
BACKOFF_START_S = 0.05
BACKOFF_MAX_S = 2.0
"""Polling (``--follow poll``) and retries after a failed read wait this long, doubling."""
DEFAULT_TASK_TIMEOUT_S = 300.0
"""A task not final this long after its submission is reported as a failed completion."""
MAX_OPEN_IN_FLIGHT = 5_000
"""Open loop: most tasks one locust process follows at once; past it an arrival is a failure."""
FLUSH_S = 0.5
"""How often a worker sends its samples to the master."""
SAMPLES_MESSAGE = "officeray_samples"
ERROR_BODY_CHARS = 200
"""How much of an error answer's body goes into a failure message."""
MAX_ERROR_CHARS = 500
"""Longest error text kept in a sample."""
WORKERS_ENV = "OFFICERAY_LOADTEST_WORKERS"
"""Set by ``officeray loadtest``: worker processes sharing the open-loop arrival rate."""
STAND_IN_ENV = "OFFICERAY_LOADTEST_STAND_IN"
"""Set by ``officeray loadtest``: ``1`` when the system's models are the latency-model stand-in."""
API_KEY_ENV = "OFFICERAY_API_KEY"
"""The officeray API key :class:`TaskUser` sends (``Authorization: Bearer``); none when unset."""


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("officeray task users")
    group.add_argument(
        "--task-mix", default=str(DEFAULT_TASK_MIX), help="JSONL task mix (kind, description, weight)"
    )
    group.add_argument("--out-dir", default="", help="write samples, timeline and run.json here")
    group.add_argument(
        "--follow", choices=("wait", "poll"), default="wait", help="long poll or poll with backoff"
    )
    group.add_argument(
        "--task-timeout", type=float, default=DEFAULT_TASK_TIMEOUT_S, help="seconds a task may take"
    )
    group.add_argument(
        "--think-time", type=float, default=0.0, help="closed loop: mean seconds between tasks"
    )
    group.add_argument(
        "--arrival-rate", type=float, default=0.0, help="open loop: tasks per second (Poisson)"
    )
    group.add_argument("--shape-file", default="", help="stages as JSON (written by officeray loadtest)")
    group.add_argument("--tenant", default="loadtest", help="tenant of the submitted tasks")


# --------------------------------------------------------------------------------------------------
# Recording samples and the timeline
# --------------------------------------------------------------------------------------------------


class Recorder:
    """Turns locust request events into samples: written here (master/local) or sent (worker)."""

    def __init__(self, environment: Environment, out_dir: Path | None) -> None:
        self.environment = environment
        self.out_dir = out_dir
        self.pending: list[Sample] = []
        self.submitted = 0
        self.completed = 0
        self.failures = 0
        self.started_at = 0.0
        self._samples_fh: Any = None
        self._timeline_fh: Any = None

    @property
    def is_worker(self) -> bool:
        return isinstance(self.environment.runner, WorkerRunner)

    def on_request(
        self, request_type: str, name: str, response_time: float, exception: Any, **kw: Any
    ) -> None:
        sample: Sample = {
            "t": time.time(),
            "type": request_type,
            "name": name,
            "ms": float(response_time or 0.0),
            "ok": exception is None,
        }
        if exception is not None:
            sample["error"] = str(exception)[:MAX_ERROR_CHARS]
        context = kw.get("context") or {}
        if "task_id" in context:
            sample["task_id"] = str(context["task_id"])
        if "status" in context:
            sample["status"] = str(context["status"])
        if "tokens" in context:
            sample["tokens"] = int(context["tokens"])
        if "tokens_per_s" in context:
            sample["tokens_per_s"] = float(context["tokens_per_s"])
        self.pending.append(sample)  # written (or sent) in batches: every TICK_S / FLUSH_S, and at the end

    def add(self, samples: list[Sample]) -> None:
        """Samples from a worker (master only); written with the master's own at the next tick."""
        self.pending.extend(samples)

    def flush(self) -> None:
        batch, self.pending = self.pending, []
        if not batch:
            return
        if self.is_worker:
            self.environment.runner.send_message(SAMPLES_MESSAGE, batch)  # type: ignore[union-attr]
            return
        for sample in batch:
            if not sample["ok"]:
                self.failures += 1
            if sample["type"] == SUBMIT_TYPE and sample["name"] == SUBMIT_NAME and sample["ok"]:
                self.submitted += 1
            elif sample["type"] == COMPLETION_TYPE:
                self.completed += 1
        if self._samples_fh is not None:
            self._samples_fh.write("".join(json.dumps(s) + "\n" for s in batch))
            self._samples_fh.flush()

    def open_files(self) -> None:
        if self.out_dir is None or self.is_worker:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._samples_fh = open(self.out_dir / SAMPLES_FILE, "a", encoding="utf-8")  # noqa: SIM115
        self._timeline_fh = open(self.out_dir / TIMELINE_FILE, "a", encoding="utf-8")  # noqa: SIM115

    def tick(self, stage: str) -> None:
        runner = self.environment.runner
        tick: Tick = {
            "t": time.time(),
            "users": int(runner.user_count) if runner is not None else 0,
            "in_flight": max(0, self.submitted - self.completed),
            "submitted": self.submitted,
            "completed": self.completed,
            "failures": self.failures,
            "stage": stage,
        }
        if self._timeline_fh is not None:
            self._timeline_fh.write(json.dumps(tick) + "\n")
            self._timeline_fh.flush()

    def close(self) -> None:
        self.flush()
        for fh in (self._samples_fh, self._timeline_fh):
            if fh is not None:
                fh.close()
        self._samples_fh = self._timeline_fh = None


_recorder: Recorder | None = None
_stages: list[Stage] = []


def _current_stage(environment: Environment, started_at: float) -> str:
    if not _stages:
        return DEFAULT_STAGE
    stage = stage_at(_stages, time.time() - started_at)
    return (stage or _stages[-1]).name  # past the last stage: draining, counted in the last


def _ticker(environment: Environment) -> None:
    assert _recorder is not None
    while True:
        _recorder.flush()
        _recorder.tick(_current_stage(environment, _recorder.started_at))
        gevent.sleep(TICK_S)


def _worker_flusher() -> None:
    assert _recorder is not None
    while True:
        gevent.sleep(FLUSH_S)
        _recorder.flush()


@events.init.add_listener
def _on_init(environment: Environment, **_kw: Any) -> None:
    global _recorder, _stages
    options = environment.parsed_options
    if options is None:
        return
    if options.shape_file:
        _stages = read_stages(options.shape_file)
    out_dir = Path(options.out_dir) if options.out_dir else None
    _recorder = Recorder(environment, out_dir)
    environment.events.request.add_listener(_recorder.on_request)
    if isinstance(environment.runner, MasterRunner):
        recorder = _recorder
        environment.runner.register_message(SAMPLES_MESSAGE, lambda msg, **_: recorder.add(msg.data))
    if not isinstance(environment.runner, WorkerRunner):
        load_task_mix(options.task_mix)  # a bad mix fails here, before any user starts


_background: list[Any] = []


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_kw: Any) -> None:
    if _recorder is None:
        return
    _recorder.started_at = time.time()
    if _recorder.is_worker:
        _background.append(gevent.spawn(_worker_flusher))
        return
    _recorder.open_files()
    _background.append(gevent.spawn(_ticker, environment))


@events.test_stop.add_listener
def _on_test_stop(environment: Environment, **_kw: Any) -> None:
    if _recorder is not None:
        _recorder.flush()


@events.quitting.add_listener
def _on_quitting(environment: Environment, **_kw: Any) -> None:
    for greenlet in _background:
        greenlet.kill(block=False)
    if _recorder is None:
        return
    _recorder.flush()
    if not _recorder.is_worker and _recorder.out_dir is not None and _recorder.started_at:
        _recorder.tick(_current_stage(environment, _recorder.started_at))
        _write_run_file(environment, _recorder)
    _recorder.close()


def _stage_infos(options: Any, duration_s: float) -> list[StageInfo]:
    stages = _stages or [
        Stage(
            name=DEFAULT_STAGE,
            duration_s=max(duration_s, 1e-3),
            users=options.num_users or 0,
            spawn_rate=options.spawn_rate or 1,
        )
    ]
    infos: list[StageInfo] = []
    start = 0.0
    for stage in stages:
        info: StageInfo = {
            "name": stage.name,
            "start_s": start,
            "end_s": start + stage.duration_s,
            "users": stage.users,
            "spawn_rate": stage.spawn_rate,
        }
        rate = stage.arrival_rate if stage.arrival_rate is not None else options.arrival_rate
        if rate:
            info["arrival_rate"] = rate
        infos.append(info)
        start += stage.duration_s
    return infos


def _write_run_file(environment: Environment, recorder: Recorder) -> None:
    options = environment.parsed_options
    assert options is not None and recorder.out_dir is not None
    ended = time.time()
    info: RunInfo = {
        "started_at": recorder.started_at,
        "ended_at": ended,
        "host": environment.host or options.host or "",
        "mode": "open" if options.arrival_rate > 0 else "closed",
        "scenario": "model" if any(u.__name__ == "ModelUser" for u in environment.user_classes) else "tasks",
        "stand_in_model": os.environ.get(STAND_IN_ENV) == "1",
        "stages": _stage_infos(options, ended - recorder.started_at),
        "settings": {
            "users": options.num_users,
            "spawn_rate": options.spawn_rate,
            "run_time": options.run_time,
            "task_mix": options.task_mix,
            "follow": options.follow,
            "think_time": options.think_time,
            "arrival_rate": options.arrival_rate,
            "task_timeout": options.task_timeout,
            "workers": int(os.environ.get(WORKERS_ENV, "0")),
        },
    }
    (recorder.out_dir / RUN_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")


# --------------------------------------------------------------------------------------------------
# The task user
# --------------------------------------------------------------------------------------------------


_picker: TaskPicker | None = None


def _task_picker(environment: Environment) -> TaskPicker:
    global _picker
    if _picker is None:
        options = environment.parsed_options
        try:
            _picker = TaskPicker(load_task_mix(options.task_mix if options else DEFAULT_TASK_MIX))
        except TaskMixError as exc:
            logger.error("%s", exc)
            environment.process_exit_code = 2
            if environment.runner is not None:
                environment.runner.quit()
            raise
    return _picker


class TaskUser(FastHttpUser):
    """Submits tasks from the task mix and follows each to its final state (see the module doc)."""

    concurrency = 64
    """Connections of one user's client (open loop follows many tasks at once)."""
    network_timeout = LONG_POLL_S + 20.0
    connection_timeout = 10.0

    def on_start(self) -> None:
        self.options = self.environment.parsed_options
        self.picker = _task_picker(self.environment)
        self.followers = Group()
        key = os.environ.get(API_KEY_ENV, "").strip()
        self.auth = {"Authorization": f"Bearer {key}"} if key else {}

    def wait_time(self) -> float:
        options = self.options
        if options.arrival_rate > 0:
            users = max(1, self.environment.runner.user_count if self.environment.runner else 1)
            workers = max(1, int(os.environ.get(WORKERS_ENV, "1") or 1))
            rate = options.arrival_rate / workers / users
            return random.expovariate(rate)
        if options.think_time > 0:
            return random.expovariate(1.0 / options.think_time)
        return 0.0

    @task
    def run_task(self) -> None:
        kind = self.picker.pick()
        started = time.perf_counter()
        task_id = self._submit(kind.description, kind.tenant or self.options.tenant)
        if task_id is None:
            return
        if self.options.arrival_rate <= 0:
            self._follow(kind.kind, task_id, started)
        elif len(self.followers) >= MAX_OPEN_IN_FLIGHT:
            self._complete(kind.kind, task_id, started, None, f"over {MAX_OPEN_IN_FLIGHT} tasks in flight")
        else:
            self.followers.spawn(self._follow, kind.kind, task_id, started)

    def on_stop(self) -> None:
        # open loop: tasks already submitted get the graceful stop time (--stop-timeout) to finish
        drain = float(getattr(self.options, "stop_timeout", 0) or 0)
        self.followers.join(timeout=drain)
        self.followers.kill(block=False)

    def _submit(self, description: str, tenant: str) -> str | None:
        body = {"description": description, "tenant": tenant}
        headers = {"Idempotency-Key": uuid.uuid4().hex, **self.auth}
        with self.client.post(
            SUBMIT_NAME, json=body, headers=headers, name=SUBMIT_NAME, catch_response=True
        ) as response:
            if response.status_code in (200, 202):
                try:
                    return str(response.json()["task_id"])
                except (ValueError, KeyError, TypeError):
                    response.failure(f"no task_id in the answer: {(response.text or '')[:ERROR_BODY_CHARS]}")
                    return None
            response.failure(f"HTTP {response.status_code}: {(response.text or '')[:ERROR_BODY_CHARS]}")
            return None

    def _follow(self, kind: str, task_id: str, started: float) -> None:
        deadline = started + self.options.task_timeout
        delay = BACKOFF_START_S
        long_poll = self.options.follow == "wait"
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                self._complete(
                    kind, task_id, started, None, f"not final after {self.options.task_timeout:g} s"
                )
                return
            path = f"/v1/tasks/{task_id}"
            if long_poll:
                path += f"?wait_s={min(LONG_POLL_S, max(0.1, remaining)):.1f}"
            status, error = self._read(path)
            if status in FINAL_STATUSES:
                self._complete(kind, task_id, started, status, error)
                return
            if status is not None and long_poll:
                delay = BACKOFF_START_S
                continue  # the long poll itself waited
            gevent.sleep(min(delay, max(0.0, deadline - time.perf_counter())))
            delay = min(delay * 2, BACKOFF_MAX_S)

    def _read(self, path: str) -> tuple[str | None, str | None]:
        """The task's status (None when the read failed) and its error text."""
        with self.client.get(path, name=POLL_NAME, headers=self.auth, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:ERROR_BODY_CHARS]}")
                return None, None
            try:
                body = response.json()
                return str(body["status"]), body.get("error")
            except (ValueError, KeyError, TypeError):
                response.failure(f"not a task record: {(response.text or '')[:ERROR_BODY_CHARS]}")
                return None, None

    def _complete(
        self, kind: str, task_id: str, started: float, status: str | None, error: str | None
    ) -> None:
        exception: Exception | None = None
        if status != "completed":
            exception = RuntimeError(
                f"task {status or 'unfinished'}: {(error or '')[:ERROR_BODY_CHARS]}".rstrip(": ")
            )
        self.environment.events.request.fire(
            request_type=COMPLETION_TYPE,
            name=kind,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=0,
            exception=exception,
            context={"task_id": task_id, "status": status or "unfinished"},
        )
