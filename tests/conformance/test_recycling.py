"""Tasks on one runner never see each other: recycling between tasks, pre-warmed spares."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import pytest

from tools_sandbox.recycling import TaskSandboxes
from tools_sandbox.sandbox import Sandbox
from tools_sandbox.testing import LocalProcessSandbox

BACKENDS = ["local", pytest.param("docker", marks=pytest.mark.integration)]
SPARE_WAIT_S = 30


@pytest.fixture(params=BACKENDS)
def factory(request: pytest.FixtureRequest) -> Callable[[], Sandbox]:
    if request.param == "local":
        return LocalProcessSandbox
    from tools_sandbox.docker_sandbox import DockerSandbox

    image = request.getfixturevalue("sandbox_image")
    return lambda: DockerSandbox(image=image)


@pytest.fixture
def pools() -> Iterator[list[TaskSandboxes]]:
    made: list[TaskSandboxes] = []
    yield made
    for pool in made:
        pool.close()


def _py(sandbox: Sandbox, code: str) -> str:
    result = sandbox.call("python_exec", {"code": code, "stdin": ""}, timeout_s=20)
    assert result["exit_code"] == 0, result
    return str(result["stdout"]).strip()


LIST_WORKSPACE = (
    "import os, json\nroot = os.environ['OFFICERAY_WORKSPACE']\n"
    "print(json.dumps(sorted(p for p in os.listdir(root) if not p.startswith('exec-'))))"
)


def _wait_for_spares(pool: TaskSandboxes, count: int) -> None:
    deadline = time.monotonic() + SPARE_WAIT_S
    while pool.spare_count < count:
        assert time.monotonic() < deadline, "spare sandbox never became ready"
        time.sleep(0.05)


@pytest.mark.parametrize("recycle", ["reset", "replace"])
def test_a_task_never_sees_the_files_of_the_previous_task(
    factory: Callable[[], Sandbox], pools: list[TaskSandboxes], recycle: str
) -> None:
    pool = TaskSandboxes(factory, recycle=recycle, spares=1)  # type: ignore[arg-type]
    pools.append(pool)
    first = pool.for_task("task-a")
    first.write_file("secret.txt", "task a's data")
    assert json.loads(_py(first, LIST_WORKSPACE)) == ["secret.txt"]
    # the same task keeps its files between its steps
    assert pool.for_task("task-a") is first
    assert first.read_file("secret.txt") == "task a's data"

    second = pool.for_task("task-b")
    assert json.loads(_py(second, LIST_WORKSPACE)) == []
    assert (second is first) == (recycle == "reset")
    assert pool.recycled == 1


def test_replace_mode_hands_over_a_prewarmed_container(
    factory: Callable[[], Sandbox], pools: list[TaskSandboxes]
) -> None:
    pool = TaskSandboxes(factory, recycle="replace", spares=1)
    pools.append(pool)
    first = pool.for_task("t1")
    _wait_for_spares(pool, 1)
    started = time.monotonic()
    sandbox = pool.for_task("t2")
    handover_s = time.monotonic() - started
    assert sandbox.alive and sandbox is not first
    assert pool.replaced == 1
    # the spare was already running: handing it over needs no cold start
    assert handover_s < 1.0, handover_s
    _wait_for_spares(pool, 1)  # and a new spare is warmed behind it


def test_a_failed_sandbox_is_replaced_by_a_spare(
    factory: Callable[[], Sandbox], pools: list[TaskSandboxes]
) -> None:
    pool = TaskSandboxes(factory, recycle="reset", spares=1)
    pools.append(pool)
    broken = pool.for_task("t1")
    _wait_for_spares(pool, 1)
    pool.retire_failed()
    assert pool.active is not broken and pool.active.alive
    assert _py(pool.for_task("t1"), "print(6 * 7)") == "42"


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="recycle"):
        TaskSandboxes(LocalProcessSandbox, recycle="never")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="spares"):
        TaskSandboxes(LocalProcessSandbox, spares=99)


# --- IPC objects outlive their processes: reset must remove them (Docker: the container's namespace) ---

IPC_PRELUDE = """
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.shmdt.argtypes = [ctypes.c_void_p]
KEY, SECRET, MQ = 0x0FF1CE, b"task-a-ipc-secret", b"/officeray-secret"
IPC_CREAT, IPC_NOWAIT, GETVAL, SETVAL = 0o1000, 0o4000, 12, 16

class Msg(ctypes.Structure):
    _fields_ = [("mtype", ctypes.c_long), ("mtext", ctypes.c_char * 64)]

def check(ret, what):
    if ret == -1:
        raise OSError(ctypes.get_errno(), what)
    return ret
"""

IPC_PLANT = (
    IPC_PRELUDE
    + """
shmid = check(libc.shmget(KEY, 4096, IPC_CREAT | 0o600), "shmget")
addr = libc.shmat(shmid, None, 0)
ctypes.memmove(addr, SECRET, len(SECRET))
libc.shmdt(addr)
msqid = check(libc.msgget(KEY, IPC_CREAT | 0o600), "msgget")
check(libc.msgsnd(msqid, ctypes.byref(Msg(1, SECRET)), len(SECRET), 0), "msgsnd")
semid = check(libc.semget(KEY, 1, IPC_CREAT | 0o600), "semget")
check(libc.semctl(semid, 0, SETVAL, ctypes.c_long(4242)), "semctl")
mqd = check(libc.mq_open(MQ, os.O_CREAT | os.O_WRONLY, 0o600, None), "mq_open")
check(libc.mq_send(mqd, SECRET, len(SECRET), 0), "mq_send")
libc.mq_close(mqd)
print("planted")
"""
)

IPC_PEEK = (
    IPC_PRELUDE
    + """
found = {}
for kind in ("shm", "msg", "sem"):
    with open(f"/proc/sysvipc/{kind}") as fh:
        found[kind] = [line.split()[1] for line in fh.read().splitlines()[1:] if line.strip()]
shmid = libc.shmget(KEY, 0, 0)
if shmid >= 0:
    addr = libc.shmat(shmid, None, 0)
    found["shm_data"] = ctypes.string_at(addr, len(SECRET)).decode()
    libc.shmdt(addr)
msqid = libc.msgget(KEY, 0)
if msqid >= 0:
    msg = Msg()
    size = libc.msgrcv(msqid, ctypes.byref(msg), 64, 0, IPC_NOWAIT)
    if size >= 0:
        libc.msgsnd(msqid, ctypes.byref(msg), size, 0)  # put it back
    found["msg_data"] = msg.mtext[: max(size, 0)].decode()
semid = libc.semget(KEY, 0, 0)
if semid >= 0:
    found["sem_value"] = libc.semctl(semid, 0, GETVAL)
mqd = libc.mq_open(MQ, os.O_RDONLY | os.O_NONBLOCK, 0, None)
if mqd >= 0:
    buf = ctypes.create_string_buffer(1 << 16)
    size = libc.mq_receive(mqd, buf, len(buf), None)
    found["mq_data"] = buf.raw[: max(size, 0)].decode()
    libc.mq_close(mqd)
found["mqueue"] = sorted(os.listdir("/dev/mqueue")) if os.path.isdir("/dev/mqueue") else []
print(json.dumps(found))
"""
)


@pytest.mark.integration
@pytest.mark.parametrize("recycle", ["reset", "replace"])
def test_a_task_never_sees_the_ipc_objects_of_the_previous_task(
    request: pytest.FixtureRequest, pools: list[TaskSandboxes], recycle: str
) -> None:
    """SysV shm/msg/sem and POSIX message queues outlive the program that made them: a task's
    secret left in one must be gone when the next task starts (``reset`` removes every object of the
    container's IPC namespace; ``replace`` brings a fresh namespace)."""
    from tools_sandbox.docker_sandbox import DockerSandbox

    image = request.getfixturevalue("sandbox_image")
    pool = TaskSandboxes(lambda: DockerSandbox(image=image), recycle=recycle, spares=1)  # type: ignore[arg-type]
    pools.append(pool)
    first = pool.for_task("task-a")
    assert _py(first, IPC_PLANT) == "planted"
    # within the task they persist between steps (this also shows the peek finds them)
    seen = json.loads(_py(pool.for_task("task-a"), IPC_PEEK))
    assert seen["shm_data"] == "task-a-ipc-secret" and seen["msg_data"] == "task-a-ipc-secret"
    assert seen["sem_value"] == 4242 and seen["mq_data"] == "task-a-ipc-secret"
    assert seen["mqueue"] == ["officeray-secret"] and seen["shm"] and seen["msg"] and seen["sem"]

    second = pool.for_task("task-b")
    assert (second is first) == (recycle == "reset")
    assert json.loads(_py(second, IPC_PEEK)) == {"shm": [], "msg": [], "sem": [], "mqueue": []}


def test_reset_never_touches_the_host_ipc_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside a container (the local backend, a developer's machine) the IPC objects are the host's."""
    from tools_sandbox.agent import server

    def forbidden(*_args: object) -> None:
        raise AssertionError("clear_ipc looked at IPC objects outside a container")

    monkeypatch.delenv("OFFICERAY_SANDBOX_CONTAINER", raising=False)
    # Tripwires, not seams: the agent decides "in a container" from its environment (the seam used
    # here); what must be shown is that outside one it never lists or removes IPC objects, and a
    # real call on this host would remove the host's own. Restored after the test.
    monkeypatch.setattr(server, "sysv_ipc_ids", forbidden)
    monkeypatch.setattr(server, "_libc", forbidden)
    monkeypatch.setattr(server, "clear_folder", forbidden)
    assert server.clear_ipc() == 0
    monkeypatch.setenv("OFFICERAY_SANDBOX_CONTAINER", "0")
    assert server.clear_ipc() == 0
