"""Build (once) and name the sandbox image.

The image is ``officeray-sandbox:<version>-<12 hex>``, the hex being a SHA-256 over the Dockerfile,
every source file of the agent package and every vendored file, so any change to the agent (or an
upgrade of the host's pydantic) gives a new tag and :func:`ensure_image` reuses an existing tag at
once. The build context is a temporary folder holding only the Dockerfile, the files of
:func:`agent_sources` (``tools_sandbox/__init__.py``, ``tools_sandbox/plugin_call.py``,
``tools_sandbox/agent/**`` and the slice of the core they import: ``officeray/__init__.py``,
``officeray/limits.py``, ``officeray/tools/__init__.py``, ``officeray/tools/plugins.py``) and
``vendor/``.

``vendor/`` is pydantic and its runtime dependencies (today pydantic-core, typing-extensions,
annotated-types, typing-inspection: the closure of pydantic's ``Requires-Dist`` without extras, see
:func:`vendored_sources`) copied file by file from the host's site-packages; plugin tools need
pydantic in the sandbox. No registry or network is involved. The compiled ``pydantic_core`` must
match the image's Python, CPython 3.11 on Linux (both bases), so building needs a CPython 3.11 host
of the same architecture.

The base image is, in order of preference:

1. ``$OFFICERAY_SANDBOX_BASE`` when set (must exist locally);
2. ``python:3.11-slim`` when it exists locally, or when ``docker pull`` gets it within
   :data:`PULL_TIMEOUT_S`;
3. otherwise an offline base, ``officeray-sandbox-base:bookworm-1``: a Debian bookworm ``minbase``
   root file system with ``python3-minimal`` and the full standard library (``libpython3.11-stdlib``:
   ``python3-minimal`` alone lacks ``json``, ``shutil``, ...), made with ``debootstrap`` from the
   host's Debian mirror and ``docker import``-ed. It is built once and reused. Needs root (and
   ``apt-get`` when debootstrap is missing).

Command line::

    python -m tools_sandbox.image ensure   # print the tag, building the image if needed (exit 0)
    python -m tools_sandbox.image build    # rebuild the image even if the tag exists
    python -m tools_sandbox.image tag      # print the tag without talking to Docker

Exit status 2 when the Docker engine is not reachable, 1 when the build fails.
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import officeray

IMAGE_REPOSITORY = "officeray-sandbox"
DEFAULT_BASE = "python:3.11-slim"
OFFLINE_BASE = "officeray-sandbox-base:bookworm-1"
"""Tag of the debootstrap-built base (bump the suffix when :data:`OFFLINE_PACKAGES` change)."""

OFFLINE_SUITE = "bookworm"
OFFLINE_PACKAGES = ("python3-minimal", "libpython3.11-stdlib")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
PULL_TIMEOUT_S = 10.0
VENDORED_ROOTS = ("pydantic",)
"""Distributions installed into the image's ``vendor/`` folder, with their runtime dependencies."""

IMAGE_PYTHON_TAG = "cpython-311"
"""``sys.implementation.cache_tag`` of the image's Python (compiled vendored files must match it)."""

_SKIPPED_VENDOR_SUFFIXES = (".pyc", ".pyo")
"""How long :func:`ensure_base` waits for ``docker pull python:3.11-slim`` before building offline."""

CORE_FILES = ("__init__.py", "limits.py", "tools/__init__.py", "tools/plugins.py")
"""The core's files shipped in the image (under ``officeray/``): the limits the agent shares with the
core's models (stdlib only) and the plugin API that plugin modules import (stdlib and pydantic)."""

_PACKAGE_DIR = Path(__file__).resolve().parent
DOCKERFILE = _PACKAGE_DIR / "image" / "Dockerfile"

Log = Callable[[str], None]


class DockerUnavailable(RuntimeError):
    """The Docker engine cannot be reached."""


class ImageBuildError(RuntimeError):
    """The base or the sandbox image could not be built."""


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("officeray")
    except Exception:
        return "0"


def _requirement_name(requirement: str) -> str | None:
    """The normalised distribution name of a ``Requires-Dist`` line, None for an extra's requirement."""
    name, _, marker = requirement.partition(";")
    if "extra" in marker:
        return None
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", name)
    return re.sub(r"[-_.]+", "-", match.group(1)).lower() if match else None


def vendored_sources() -> list[tuple[str, Path]]:
    """(``vendor/<path in site-packages>``, file) of :data:`VENDORED_ROOTS` and their dependencies.

    The dependencies are the closure of each distribution's ``Requires-Dist`` (extras left out; a
    requirement with an environment marker that is not installed on the host is skipped). Bytecode
    and files outside site-packages (scripts) are not copied.
    """
    from importlib import metadata

    todo = list(VENDORED_ROOTS)
    seen: set[str] = set()
    files: dict[str, Path] = {}
    while todo:
        requirement = todo.pop()
        name = _requirement_name(requirement)
        if name is None or name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            if ";" in requirement:
                continue  # its marker did not hold on this host
            raise ImageBuildError(
                f"the sandbox image needs {name!r} (for pydantic), which is not installed"
            ) from None
        if dist.files is None:
            raise ImageBuildError(
                f"{name} {dist.version} has no RECORD: cannot vendor it into the sandbox image"
            )
        for entry in dist.files:
            parts = entry.parts
            if (
                not parts
                or parts[0] == ".."
                or "__pycache__" in parts
                or entry.suffix in _SKIPPED_VENDOR_SUFFIXES
            ):
                continue
            path = Path(str(dist.locate_file(entry)))
            if path.is_file():
                files["vendor/" + "/".join(parts)] = path
        todo.extend(dist.requires or ())
    return sorted(files.items())


def _check_vendored_python(sources: list[tuple[str, Path]]) -> None:
    compiled = [name for name, _ in sources if name.endswith(".so")]
    if compiled and sys.implementation.cache_tag != IMAGE_PYTHON_TAG:
        raise ImageBuildError(
            f"the sandbox image runs {IMAGE_PYTHON_TAG} but this host runs {sys.implementation.cache_tag}: "
            f"its compiled {compiled[0].split('/')[1]} would not load there. Build the image from a "
            "CPython 3.11 environment (the vendored pydantic is copied from the host's site-packages)"
        )


def agent_sources() -> list[tuple[str, Path]]:
    """(path in the build context, file) of every officeray file the image needs, sorted."""
    core = Path(officeray.__file__).resolve().parent
    files = [(f"officeray/{name}", core / name) for name in CORE_FILES]
    files += [
        ("tools_sandbox/__init__.py", _PACKAGE_DIR / "__init__.py"),
        ("tools_sandbox/plugin_call.py", _PACKAGE_DIR / "plugin_call.py"),
        ("tools_sandbox/plugins.py", _PACKAGE_DIR / "plugins.py"),  # the plugin API's earlier import path
    ]
    agent = _PACKAGE_DIR / "agent"
    for path in sorted(agent.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo"):
            files.append((f"tools_sandbox/agent/{path.relative_to(agent).as_posix()}", path))
    return files


@functools.cache
def image_tag() -> str:
    """``officeray-sandbox:<version>-<12 hex of sha256 over the Dockerfile and the image's files>``."""
    digest = hashlib.sha256()
    digest.update(b"Dockerfile\0" + DOCKERFILE.read_bytes() + b"\0")
    for name, path in agent_sources() + vendored_sources():
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    version = re.sub(r"[^A-Za-z0-9_.-]", "_", _version())
    return f"{IMAGE_REPOSITORY}:{version}-{digest.hexdigest()[:12]}"


def docker_client() -> Any:
    """``docker.from_env()``, raising :class:`DockerUnavailable` with a clear message."""
    try:
        import docker

        client = docker.from_env()
        client.ping()
    except Exception as exc:
        raise DockerUnavailable(
            f"the Docker engine is not reachable ({type(exc).__name__}: {exc}); "
            "start dockerd or set DOCKER_HOST"
        ) from exc
    return client


def image_exists(client: Any, ref: str) -> bool:
    import docker.errors

    try:
        client.images.get(ref)
        return True
    except docker.errors.ImageNotFound:
        return False


def _try_pull(client: Any, ref: str, timeout_s: float, log: Log) -> bool:
    """``docker pull ref`` bounded by ``timeout_s`` (the pull runs in a daemon thread)."""
    repository, _, tag = ref.partition(":")
    outcome: dict[str, Any] = {}

    def pull() -> None:
        try:
            client.images.pull(repository, tag=tag or "latest")
            outcome["ok"] = True
        except Exception as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=pull, name="officeray-pull", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if outcome.get("ok"):
        return True
    reason = outcome.get("error") or f"no answer within {timeout_s:g}s"
    log(f"cannot pull {ref}: {str(reason).splitlines()[0][:300]}")
    return False


def apt_mirror(sources: tuple[str, ...] = ("/etc/apt/sources.list", "/etc/apt/sources.list.d")) -> str:
    """The first Debian mirror named in the host's apt sources (deb822 ``URIs:`` or ``deb`` lines)."""
    files: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix in (".list", ".sources")))
        elif path.is_file():
            files.append(path)
    for path in files:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            line = line.strip()
            match = re.match(r"^URIs:\s*(\S+)", line) or re.match(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)", line)
            if match and "security" not in match.group(1):
                return match.group(1).rstrip("/")
    return DEFAULT_MIRROR


def _run(cmd: list[str], log: Log, **kwargs: Any) -> None:
    log("$ " + " ".join(cmd))
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-20:])
        raise ImageBuildError(f"{cmd[0]} failed with status {proc.returncode}:\n{tail}")


def build_offline_base(client: Any, log: Log = _stderr, *, tag: str = OFFLINE_BASE) -> str:
    """debootstrap a bookworm rootfs with Python 3 and ``docker import`` it as ``tag``."""
    if os.geteuid() != 0:
        raise ImageBuildError("building the offline base image needs root (debootstrap); run as root")
    if shutil.which("debootstrap") is None:
        log("debootstrap is missing; installing it with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        _run(["apt-get", "update", "-q"], log, env=env)
        _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "debootstrap"], log, env=env)
    mirror = apt_mirror()
    work = Path(
        tempfile.mkdtemp(prefix="officeray-rootfs-", dir="/var/tmp" if os.path.isdir("/var/tmp") else None)
    )
    rootfs = work / "rootfs"
    try:
        include = ",".join(OFFLINE_PACKAGES)
        _run(
            ["debootstrap", "--variant=minbase", f"--include={include}", OFFLINE_SUITE, str(rootfs), mirror],
            log,
        )
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man"):
            target = rootfs / junk
            if target.is_dir():
                for child in target.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child, ignore_errors=True)
                    elif child.name != "lock":
                        child.unlink(missing_ok=True)
        tarball = work / "rootfs.tar"
        _run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(tarball), "."], log)
        repository, _, version = tag.partition(":")
        log(f"importing the root file system as {tag}")
        client.api.import_image(
            src=str(tarball),
            repository=repository,
            tag=version,
            changes=[
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "ENV LANG=C.UTF-8",
                'CMD ["python3"]',
            ],
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tag


def ensure_base(client: Any, log: Log = _stderr) -> str:
    """The base image reference to build on (see the module docstring for the order)."""
    override = os.environ.get("OFFICERAY_SANDBOX_BASE")
    if override:
        if not image_exists(client, override):
            raise ImageBuildError(f"OFFICERAY_SANDBOX_BASE={override} does not exist locally")
        return override
    if image_exists(client, DEFAULT_BASE):
        return DEFAULT_BASE
    if image_exists(client, OFFLINE_BASE):
        return OFFLINE_BASE
    if _try_pull(client, DEFAULT_BASE, PULL_TIMEOUT_S, log):
        return DEFAULT_BASE
    log(f"building the offline base image {OFFLINE_BASE} with debootstrap (once; a few minutes)")
    return build_offline_base(client, log)


def build_image(client: Any, tag: str | None = None, log: Log = _stderr) -> str:
    """Build the sandbox image (even if the tag exists) and return its tag."""
    import docker.errors

    tag = tag or image_tag()
    vendored = vendored_sources()
    _check_vendored_python(vendored)
    base = ensure_base(client, log)
    with tempfile.TemporaryDirectory(prefix="officeray-image-") as ctx:
        shutil.copyfile(DOCKERFILE, Path(ctx) / "Dockerfile")
        for name, path in agent_sources() + vendored:
            target = Path(ctx) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        log(f"building {tag} on {base}")
        try:
            client.images.build(
                path=ctx,
                tag=tag,
                buildargs={"BASE": base},
                pull=False,
                rm=True,
                forcerm=True,
                network_mode="none",
                labels={"officeray.sandbox.image": "1"},
            )
        except docker.errors.BuildError as exc:
            lines = [str(chunk.get("stream") or chunk.get("error") or "").rstrip() for chunk in exc.build_log]
            tail = "\n".join(line for line in lines if line)[-3000:]
            raise ImageBuildError(f"building {tag} failed: {exc.msg}\n{tail}") from exc
    return tag


BUILD_LOCK_FILE = Path(tempfile.gettempdir()) / "officeray-sandbox-image.lock"
"""Held while the image is built, so processes of one machine (the tool runners of a new node)
build it once: the others wait, then find it built."""


def ensure_image(client: Any | None = None, log: Log = _stderr) -> str:
    """The sandbox image's tag, building the image first when it does not exist (once per machine)."""
    client = client or docker_client()
    tag = image_tag()
    if image_exists(client, tag):
        return tag
    with BUILD_LOCK_FILE.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if image_exists(client, tag):  # another process built it while this one waited
            return tag
        return build_image(client, tag, log)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools_sandbox.image", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("ensure", "build", "tag"))
    args = parser.parse_args(argv)
    if args.command == "tag":
        print(image_tag())
        return 0
    try:
        client = docker_client()
        tag = ensure_image(client) if args.command == "ensure" else build_image(client)
    except DockerUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ImageBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(tag)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
