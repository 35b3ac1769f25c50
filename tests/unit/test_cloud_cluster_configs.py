"""The cloud cluster files: cluster/aws.yaml, cluster/gcp.yaml, cluster/kuberay-rayservice.yaml, offline.

What is checked, and with what:

* Launcher files: Ray's own JSON schema shipped in the wheel (``ray/autoscaler/ray-schema.json``), then
  Ray's own preparation and validation (``prepare_config`` fills defaults from the provider's
  ``defaults.yaml``, ``validate_config`` checks head type and min/max workers): what ``ray up`` does
  before it talks to the cloud. Nothing may come from Ray's defaults but an empty ``docker`` section.
* References: every ``python -m X`` in a command is a module of this repository that runs as a
  script; project paths and extras named in commands exist; every file mount exists and every
  package of pyproject.toml is mounted; the secrets file lives outside the repository and every
  ``ray start`` reads it; one pinned Ray (this environment's) and the sandbox image's Python on
  every node; every ``OFFICERAY_*`` variable a file sets names a setting; no secret is written in
  a file.
* Node types and groups against what officeray asks of them: the head advertises no ``docker``;
  tool-runner types advertise what ``runners.resources`` asks for, with CPUs for their runners,
  Docker and the sandbox image; GPU types advertise a known ``accelerator_type``; the runner pool
  and the LLM app of cluster/serve_config.yaml (its ``runners.autoscaling``, its accelerator type,
  GPUs and replicas) fit the cluster.
* RayService: ``serveConfigV2`` against ``ray.serve.schema.ServeDeploySchema`` and against
  cluster/serve_config.yaml (the same Serve config: applications, names, import paths, args); the
  RayService fields used, through a strict pydantic model below (``extra="forbid"``); each pod
  template against the Kubernetes OpenAPI models of the ``kubernetes`` client, read and written back
  so that an unknown or misspelt key fails; the tool-runner pods' Docker engine (a sidecar whose
  socket the Ray container shares) and their sandbox-image build.

Every check is also shown to reject a broken copy (a misspelt key, a missing resource, ...).

Not checked offline, and why:

* The cloud side of ``ray up`` (IAM roles, security groups, AMI/image resolution, instance types,
  quotas, EC2 resource autodetection): it needs credentials and the network. ``node_config`` bodies
  (EC2 RunInstances, GCE instances.insert) are left open by Ray's schema; only the cloud APIs check them.
* The setup commands themselves (apt, uv, Docker, the image build): they run on the nodes.
* The RayService against KubeRay's CRD: the CRD is not available offline, and KubeRay's files are
  not copied into this repository; the pydantic model covers only the fields this file uses.
  Neither are admission-time rules (native sidecars need Kubernetes 1.29+, quotas, node selectors).
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError, model_validator
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.serve.schema import ServeDeploySchema
from ray.util import accelerators

from officeray.config import RunnerSettings, Settings, load_settings
from tools_sandbox.image import IMAGE_PYTHON_TAG

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
LAUNCHER_FILES = ("aws.yaml", "gcp.yaml")
RAYSERVICE_FILE = "kuberay-rayservice.yaml"
RAY_SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"

COMMAND_KEYS = (
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
)
SECRET_NAME = re.compile(r"^(?:[A-Z][A-Z0-9_]*(?:KEY|TOKEN|PASSWORD|SECRET)|OFFICERAY_STORE__URL)$")
ASSIGNMENT = re.compile(r"\b([A-Z][A-Z0-9_]*)=")
PYTHON_MODULE = re.compile(r"\bpython3?(?:\.\d+)? -m ([\w.]+)")
PROJECT_PATH = re.compile(r"(?:~|\$HOME)/officeray(?![\w.-])(\[[\w,]+\])?(?:/([\w./-]+))?")
RAY_PIN = re.compile(r"'ray\[[\w,]+\]==([\w.]+)'")
K8S_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def _python_of(cache_tag: str) -> str:
    """``cpython-311`` -> ``3.11``."""
    digits = cache_tag.rpartition("-")[2]
    return f"{digits[0]}.{digits[1:]}"


SANDBOX_PYTHON = _python_of(IMAGE_PYTHON_TAG)
"""The Python the sandbox image is built for (its vendored pydantic-core must match the host's)."""
KNOWN_ACCELERATORS = {getattr(accelerators, n) for n in dir(accelerators) if n.isupper() and "_" in n}


def _documents(name: str) -> list[dict[str, Any]]:
    """Every YAML document of the file, aliases unshared (through JSON) so a test may change one place
    only."""
    documents = list(yaml.safe_load_all((CLUSTER / name).read_text()))
    data: list[dict[str, Any]] = json.loads(json.dumps(documents))
    return data


def _load(name: str) -> dict[str, Any]:
    """The file's (first) document: the launcher config, or the RayService."""
    return _documents(name)[0]


def _parent(data: Any, path: str) -> tuple[Any, Any]:
    """The container holding ``path`` ("a/0/b": keys and list indices) and the last key."""
    *parents, leaf = path.split("/")
    for key in parents:
        data = data[int(key)] if isinstance(data, list) else data[key]
    return data, int(leaf) if isinstance(data, list) else leaf


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        parent, key = _parent(data, path)
        parent[key] = value

    return mutate


def _rename(path: str, new: str) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        parent, key = _parent(data, path)
        parent[new] = parent.pop(key)

    return mutate


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        parent, key = _parent(data, path)
        del parent[key]

    return mutate


# -- what cluster/serve_config.yaml deploys ------------------------------------------------------------


def _serve_apps() -> dict[str, dict[str, Any]]:
    return {app["name"]: app for app in _load("serve_config.yaml")["applications"]}


@pytest.fixture
def deployed_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings the officeray app builds with: serve_config.yaml's ``args.settings`` over the defaults."""
    for name in list(os.environ):
        if name.startswith("OFFICERAY_"):
            monkeypatch.delenv(name)
    return load_settings(None, **_serve_apps()["officeray"]["args"].get("settings", {}))


def _llm_needs() -> list[tuple[str, float, int]]:
    """(accelerator type, GPUs per replica, most replicas) of each model the Serve config serves."""
    needs = []
    for app in _serve_apps().values():
        for llm in app.get("args", {}).get("llm_configs", []):
            gpus = llm.get("placement_group_config", {}).get("bundle_per_worker", {}).get("GPU", 1)
            replicas = llm.get("deployment_config", {}).get("autoscaling_config", {}).get("max_replicas", 1)
            needs.append((llm["accelerator_type"], gpus, replicas))
    return needs


def _gpu_fit_problems(offers: list[tuple[str, dict[str, float], int]]) -> list[str]:
    """``offers``: (node type or group, its resources, most nodes); each served model must fit."""
    problems = []
    for accelerator, gpus, replicas in _llm_needs():
        fits = [(name, res, most) for name, res, most in offers if f"accelerator_type:{accelerator}" in res]
        if not any(res.get("GPU", 0) >= gpus for _, res, _ in fits):
            problems.append(f"no GPU type offers accelerator_type:{accelerator} with {gpus:g} GPUs")
        elif sum(int(res.get("GPU", 0) // gpus) * most for _, res, most in fits) < replicas:
            problems.append(f"the {accelerator} types cannot hold {replicas} replicas of {gpus:g} GPUs")
    return problems


def _runner_fit_problems(docker_slots_min: float, docker_slots_max: float, settings: Settings) -> list[str]:
    runners, problems = settings.runners, []
    if runners.max_runners > docker_slots_max:
        problems.append(f"max_runners {runners.max_runners} > {docker_slots_max:g} docker slots at most")
    if runners.initial_runners > docker_slots_min:
        problems.append(
            f"{runners.initial_runners} warm runners > {docker_slots_min:g} docker slots at least"
        )
    return problems


# -- checks shared by all three files ------------------------------------------------------------------


def _model_of(annotation: Any) -> Any:
    """The pydantic model an annotation holds (``X | None`` -> ``X``), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        models = [m for m in map(_model_of, typing.get_args(annotation)) if m is not None]
        return models[0] if models else None
    return None


def _variable_problems(names: list[str]) -> list[str]:
    """Every ``OFFICERAY_*`` name must be a settings key; no secret may be written in the file."""
    problems = []
    for name in names:
        if SECRET_NAME.match(name):
            problems.append(f"{name} is given a value in the file: secrets come from the environment")
        if not name.startswith("OFFICERAY_"):
            continue
        model: Any = Settings
        for key in name.removeprefix("OFFICERAY_").lower().split("__"):
            if model is None:  # inside a free-form mapping
                break
            if key not in model.model_fields:
                problems.append(f"{name}: no setting {key!r} there (officeray/config.py)")
                break
            model = _model_of(model.model_fields[key].annotation)
    return problems


def _in_repository(origin: str) -> bool:
    """A module file of this repository, not of an installed distribution (a .venv may live inside it)."""
    path = Path(origin).resolve()
    return path.is_relative_to(ROOT) and "site-packages" not in path.parts


def _module_problems(command: str) -> list[str]:
    """``python -m X`` must name a module of this repository that runs as a script."""
    problems = []
    for module in PYTHON_MODULE.findall(command):
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            problems.append(f"python -m {module}: no such module")
        elif not _in_repository(spec.origin):
            problems.append(f"python -m {module}: not a module of this repository")
        elif spec.submodule_search_locations is not None:
            if importlib.util.find_spec(f"{module}.__main__") is None:
                problems.append(f"python -m {module}: a package without __main__")
        elif '__name__ == "__main__"' not in Path(spec.origin).read_text():
            problems.append(f"python -m {module}: does nothing when run as a script")
    return problems


# -- launcher files ------------------------------------------------------------------------------------


def _ray_validate(config: dict[str, Any]) -> dict[str, Any]:
    """Ray's schema, then Ray's preparation and validation, as ``ray up`` runs them; the prepared config."""
    jsonschema.validate(config, json.loads(RAY_SCHEMA.read_text()))
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def _all_commands(config: dict[str, Any]) -> list[str]:
    commands = [c for key in COMMAND_KEYS for c in config.get(key, [])]
    for spec in config["available_node_types"].values():
        commands += spec.get("initialization_commands", []) + spec.get("worker_setup_commands", [])
    return commands


def _setup_of(config: dict[str, Any], node_type: str) -> list[str]:
    """The setup commands a node of ``node_type`` runs (a type's own list replaces the common ones)."""
    if node_type == config["head_node_type"]:
        return [*config["setup_commands"], *config["head_setup_commands"]]
    common = [*config["setup_commands"], *config["worker_setup_commands"]]
    commands: list[str] = config["available_node_types"][node_type].get("worker_setup_commands", common)
    return commands


def _node_type_problems(config: dict[str, Any]) -> list[str]:
    problems = []
    wanted, runner_cpus = dict(RunnerSettings().resources), RunnerSettings().num_cpus
    for name, spec in config["available_node_types"].items():
        res, setup = spec["resources"], " ".join(_setup_of(config, name))
        docker, gpus = res.get("docker", 0), res.get("GPU", 0)
        if name == config["head_node_type"]:
            if docker:
                problems.append(f"{name}: the head advertises docker (tool runners would land on it)")
            continue
        if bool(docker) == bool(gpus):
            problems.append(f"{name}: a worker type is either a tool-runner (docker) or a GPU type")
        if docker:
            if not set(wanted) <= set(res):
                problems.append(f"{name}: lacks {sorted(set(wanted) - set(res))}, asked for by runners")
            if res.get("CPU", 0) < docker * runner_cpus:
                problems.append(f"{name}: not enough CPU for {docker} runners")
            if "docker.io" not in setup or "python -m tools_sandbox.image ensure" not in setup:
                problems.append(f"{name}: does not install Docker and build the sandbox image")
        if gpus:
            kinds = [k.partition(":")[2] for k in res if k.startswith("accelerator_type:")]
            if len(kinds) != 1 or kinds[0] not in KNOWN_ACCELERATORS:
                problems.append(f"{name}: needs one known accelerator_type resource, has {kinds}")
            if '/officeray[gpu]"' not in setup:
                problems.append(f"{name}: does not install officeray[gpu]")
    offers = [(n, s["resources"], s.get("max_workers", 0)) for n, s in config["available_node_types"].items()]
    return problems + _gpu_fit_problems(offers)


def _install_problems(config: dict[str, Any]) -> list[str]:
    problems = []
    for name in config["available_node_types"]:
        setup = " ".join(_setup_of(config, name))
        pins = set(RAY_PIN.findall(setup))
        if pins != {ray.__version__}:
            problems.append(f"{name}: Ray pinned to {sorted(pins)}, this environment has {ray.__version__}")
        if '-e "$HOME/officeray' not in setup:
            problems.append(f"{name}: does not install the project")
        if f"--python {SANDBOX_PYTHON} " not in setup:
            problems.append(f"{name}: Python is not {SANDBOX_PYTHON}, the sandbox image's")
    return problems


def _command_problems(config: dict[str, Any]) -> list[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = set(pyproject["project"]["optional-dependencies"])
    problems = []
    for command in _all_commands(config):
        problems += _module_problems(command) + _variable_problems(ASSIGNMENT.findall(command))
        for extra, rel in PROJECT_PATH.findall(command):
            unknown = set(filter(None, extra.strip("[]").split(","))) - extras
            problems += [f"no extra [{name}] in pyproject.toml" for name in sorted(unknown)]
            if rel and not (ROOT / rel).exists():
                problems.append(f"{rel} does not exist in the repository")
    return problems


def _mount_problems(config: dict[str, Any]) -> list[str]:
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    needed = {"pyproject.toml", "README.md"} | {pattern.rstrip("*") for pattern in packages["include"]}
    problems, mounted = [], set()
    for remote, local in config["file_mounts"].items():
        if local.startswith("~"):  # the user's secrets file, read by every `ray start`
            if Path(local).expanduser().resolve().is_relative_to(ROOT):
                problems.append(f"file_mounts: {local}: the secrets file must live outside the repository")
            for key in ("head_start_ray_commands", "worker_start_ray_commands"):
                if f". {remote};" not in " ".join(config[key]):
                    problems.append(f"{key} does not read {remote}")
            continue
        rel = Path(local).as_posix().removeprefix("./")
        if not (ROOT / rel).exists():
            problems.append(f"file_mounts: {local} does not exist in the repository")
        if remote != f"~/officeray/{rel}":
            problems.append(f"file_mounts: {local} is mounted at {remote}, not ~/officeray/{rel}")
        mounted.add(rel)
    return problems + [f"file_mounts: {name} is not mounted" for name in sorted(needed - mounted)]


def _launcher_runner_problems(config: dict[str, Any], settings: Settings) -> list[str]:
    specs = config["available_node_types"].values()
    least = sum(t.get("min_workers", 0) * t["resources"].get("docker", 0) for t in specs)
    most = sum(t.get("max_workers", 0) * t["resources"].get("docker", 0) for t in specs)
    return _runner_fit_problems(least, most, settings)


@pytest.fixture(params=LAUNCHER_FILES)
def launcher(request: pytest.FixtureRequest) -> dict[str, Any]:
    return _load(request.param)


def test_launcher_config_passes_rays_schema_and_preparation(launcher: dict[str, Any]) -> None:
    prepared = _ray_validate(launcher)
    defaults_used = set(prepared) - set(launcher)
    assert defaults_used == {"docker"} and prepared["docker"] == {}, defaults_used
    for key in COMMAND_KEYS:
        assert key in launcher, f"{key} would come from Ray's defaults.yaml"


def test_launcher_node_types_do_what_officeray_expects(launcher: dict[str, Any]) -> None:
    assert _node_type_problems(launcher) == []
    kinds = [s["resources"] for s in launcher["available_node_types"].values()]
    assert any(r.get("docker") for r in kinds) and any(r.get("GPU") for r in kinds)


def test_launcher_commands_and_mounts_resolve(launcher: dict[str, Any]) -> None:
    assert _command_problems(launcher) == []
    assert _mount_problems(launcher) == []
    assert _install_problems(launcher) == []


def test_launcher_holds_the_runner_pool_of_the_serve_config(
    launcher: dict[str, Any], deployed_settings: Settings
) -> None:
    assert deployed_settings.runners.autoscaling is not None
    assert _launcher_runner_problems(launcher, deployed_settings) == []


@pytest.mark.parametrize(
    "mutate",
    [
        _rename("available_node_types/gpu_h100/min_workers", "min_worker"),
        _rename("idle_timeout_minutes", "idle_timeout_minute"),
        _set("available_node_types/tool_runner/resources/docker", 0.5),
        _set("head_node_type", "haed"),
        _set("available_node_types/tool_runner/min_workers", 20),
    ],
    ids=["node-type-key-typo", "top-level-key-typo", "fractional-resource", "unknown-head", "min-over-max"],
)
def test_ray_rejects_a_broken_launcher_config(mutate: Callable[[dict[str, Any]], None]) -> None:
    config = _load("aws.yaml")
    mutate(config)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        _ray_validate(config)


def _without_mount(remote: str) -> Callable[[dict[str, Any]], None]:
    def mutate(config: dict[str, Any]) -> None:
        del config["file_mounts"][remote]

    return mutate


def _with_mount(remote: str, local: str) -> Callable[[dict[str, Any]], None]:
    def mutate(config: dict[str, Any]) -> None:
        config["file_mounts"][remote] = local

    return mutate


@pytest.mark.parametrize(
    ("mutate", "check", "expected"),
    [
        (_set("available_node_types/head/resources/docker", 2), _node_type_problems, "head advertises"),
        (_set("available_node_types/tool_runner/resources", {"CPU": 16}), _node_type_problems, "either"),
        (_set("available_node_types/gpu_a10g/resources/accelerator_type:A10", 1), _node_type_problems, "one"),
        (_drop("available_node_types/tool_runner/worker_setup_commands/-1"), _node_type_problems, "image"),
        (_drop("available_node_types/gpu_h100"), _node_type_problems, "accelerator_type:H100"),
        (_set("available_node_types/gpu_h100/max_workers", 0), _node_type_problems, "cannot hold"),
        (_without_mount("~/officeray/tools_sandbox"), _mount_problems, "tools_sandbox is not mounted"),
        (_with_mount("~/officeray/nothing", "./nothing"), _mount_problems, "does not exist"),
        (_set("head_start_ray_commands/1", "ray start --head"), _mount_problems, "does not read"),
        (_set("setup_commands/0", "python -m tools_sandbox.imag ensure"), _command_problems, "no such"),
        (_set("setup_commands/0", "python -m officeray.config"), _command_problems, "does nothing"),
        (_set("setup_commands/0", 'pip install -e "$HOME/officeray[gpus]"'), _command_problems, "[gpus]"),
        (_set("setup_commands/0", "cat ~/officeray/scripts/boot.sh"), _command_problems, "scripts/boot.sh"),
        (_set("setup_commands/0", "export OPENAI_API_KEY=sk-x"), _command_problems, "OPENAI_API_KEY"),
        (_set("setup_commands/0", "export OFFICERAY_RUNERS__COUNT=2"), _command_problems, "'runers'"),
        (_set("head_setup_commands/0", "pip install 'ray[serve]==2.0.0'"), _install_problems, "pinned"),
    ],
    ids=[
        "head-docker",
        "worker-role",
        "accelerator",
        "no-image-build",
        "no-h100-type",
        "no-h100-room",
        "unmounted-package",
        "missing-mount",
        "env-file-unread",
        "module",
        "script",
        "extra",
        "project-file",
        "secret",
        "setting",
        "ray-pin",
    ],
)
def test_officeray_checks_reject_a_broken_launcher_config(
    mutate: Callable[[dict[str, Any]], None], check: Callable[[dict[str, Any]], list[str]], expected: str
) -> None:
    config = _load("aws.yaml")
    mutate(config)
    problems = check(config)
    assert any(expected in p for p in problems), problems


def test_a_runner_pool_larger_than_the_cluster_is_reported(deployed_settings: Settings) -> None:
    config = _load("aws.yaml")
    config["available_node_types"]["tool_runner"]["max_workers"] = 2
    assert any("max_runners" in p for p in _launcher_runner_problems(config, deployed_settings))


# -- KubeRay RayService ----------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Metadata(_Strict):
    name: str = Field(pattern=K8S_NAME)
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class _AutoscalerOptions(_Strict):
    upscalingMode: Literal["Default", "Aggressive", "Conservative"] = "Default"
    idleTimeoutSeconds: int = Field(ge=0)


class _HeadGroupSpec(_Strict):
    rayStartParams: dict[str, StrictStr]
    """KubeRay passes these to ``ray start`` as strings; its CRD refuses numbers."""
    serviceType: Literal["ClusterIP", "NodePort", "LoadBalancer"] | None = None
    template: dict[str, Any]


class _WorkerGroupSpec(_Strict):
    groupName: str = Field(pattern=K8S_NAME)
    replicas: int = Field(ge=0)
    minReplicas: int = Field(ge=0)
    maxReplicas: int = Field(ge=1)
    rayStartParams: dict[str, StrictStr]
    template: dict[str, Any]

    @model_validator(mode="after")
    def _replicas_within_bounds(self) -> _WorkerGroupSpec:
        if not self.minReplicas <= self.replicas <= self.maxReplicas:
            raise ValueError(f"{self.groupName}: minReplicas <= replicas <= maxReplicas does not hold")
        return self


class _AuthOptions(_Strict):
    mode: Literal["token", "disabled"]


class _RayClusterConfig(_Strict):
    rayVersion: str
    authOptions: _AuthOptions | None = None
    enableInTreeAutoscaling: bool
    autoscalerOptions: _AutoscalerOptions
    headGroupSpec: _HeadGroupSpec
    workerGroupSpecs: list[_WorkerGroupSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_group_names(self) -> _RayClusterConfig:
        names = [g.groupName for g in self.workerGroupSpecs]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate groupName in {names}")
        return self


class _RayServiceSpec(_Strict):
    serveConfigV2: str
    rayClusterConfig: _RayClusterConfig


class _RayService(_Strict):
    """The RayService fields cluster/kuberay-rayservice.yaml uses (KubeRay's CRD is not available offline)."""

    apiVersion: Literal["ray.io/v1"]
    kind: Literal["RayService"]
    metadata: _Metadata
    spec: _RayServiceSpec


def _groups(service: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(group name, group spec) for the head (``head``) and each worker group."""
    cluster = service["spec"]["rayClusterConfig"]
    yield "head", cluster["headGroupSpec"]
    for group in cluster["workerGroupSpecs"]:
        yield group["groupName"], group


def _ray_container(group: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = group["template"]["spec"]["containers"][0]  # KubeRay: the first one
    return container


def _group_resources(group: dict[str, Any]) -> dict[str, float]:
    """What the group's Ray node advertises: ``rayStartParams.resources`` (a JSON object quoted as
    a JSON string, KubeRay's format) and the Ray container's GPU limit."""
    raw = group["rayStartParams"].get("resources")
    resources = {} if raw is None else dict(json.loads(json.loads(raw)))
    gpus = _ray_container(group).get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
    return resources | ({"GPU": float(gpus)} if gpus else {})


def _cpus(quantity: str) -> float:
    """A Kubernetes CPU quantity (``"2"``, ``"500m"``) in CPUs."""
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def _serve_problems(service: dict[str, Any]) -> list[str]:
    ours = yaml.safe_load(service["spec"]["serveConfigV2"])
    try:
        schema = ServeDeploySchema.model_validate(ours)
    except ValidationError as exc:
        return [f"serveConfigV2: {exc}"]
    problems = []
    theirs = _load("serve_config.yaml")
    for key in ("proxy_location", "http_options", "applications"):
        if ours.get(key) != theirs.get(key):
            problems.append(f"serveConfigV2 {key} != serve_config.yaml's: keep serveConfigV2 a copy of it")
    for app in schema.applications:
        module, _, attr = app.import_path.partition(":")
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            problems.append(f"{app.import_path}: no module {module}")
        # Ray's own builders (ray.serve.llm) import only where vLLM is installed.
        elif _in_repository(spec.origin) and not callable(
            getattr(importlib.import_module(module), attr, None)
        ):
            problems.append(f"{app.import_path} is not a callable")
    return problems


def _container_problems(name: str, container: dict[str, Any]) -> list[str]:
    problems = _variable_problems([e["name"] for e in container.get("env", []) if "value" in e])
    if {"secretRef": {"name": "officeray-secrets"}} not in container.get("envFrom", []):
        problems.append(f"{name}: the Ray container does not read the officeray-secrets Secret")
    return problems


def _rayservice_group_problems(service: dict[str, Any]) -> list[str]:
    problems = []
    wanted, runner_cpus = dict(RunnerSettings().resources), RunnerSettings().num_cpus
    offers = []
    for name, group in _groups(service):
        res = _group_resources(group)
        problems += _container_problems(name, _ray_container(group))
        docker, gpus = res.get("docker", 0), res.get("GPU", 0)
        if name == "head":
            if docker:
                problems.append("head: advertises docker (tool runners would land on it)")
            continue
        offers.append((name, res, group["maxReplicas"]))
        if bool(docker) == bool(gpus):
            problems.append(f"{name}: a worker group is either a tool-runner (docker) or a GPU group")
        if docker:
            if not set(wanted) <= set(res):
                problems.append(f"{name}: lacks {sorted(set(wanted) - set(res))}, asked for by runners")
            if _cpus(_ray_container(group)["resources"]["limits"]["cpu"]) < docker * runner_cpus:
                problems.append(f"{name}: not enough CPU for {docker:g} runners")
            problems += _docker_engine_problems(name, group)
        if gpus:
            kinds = [k.partition(":")[2] for k in res if k.startswith("accelerator_type:")]
            if len(kinds) != 1 or kinds[0] not in KNOWN_ACCELERATORS:
                problems.append(f"{name}: needs one known accelerator_type resource, has {kinds}")
            if group["minReplicas"] != 0:
                problems.append(f"{name}: GPU pods should scale to zero (minReplicas 0)")
    return problems + _gpu_fit_problems(offers)


def _docker_engine_problems(name: str, group: dict[str, Any]) -> list[str]:
    """A tool-runner pod: an engine on the Ray container's DOCKER_HOST socket, in a shared volume,
    and the sandbox image built with the Ray container's own image (its tag depends on the packages)."""
    spec, ray_container = group["template"]["spec"], _ray_container(group)
    host = {e["name"]: e.get("value") for e in ray_container.get("env", [])}.get("DOCKER_HOST") or ""
    others = spec.get("initContainers", []) + spec["containers"][1:]
    engines = [c for c in others if f"--host={host}" in c.get("args", [])]
    if not host.startswith("unix://") or not engines:
        return [f"{name}: no Docker engine listens on DOCKER_HOST={host!r} in the pod"]
    problems = []
    socket_dir = str(Path(host.removeprefix("unix://")).parent)
    shared = [
        {m["name"] for m in c.get("volumeMounts", []) if m["mountPath"] == socket_dir}
        for c in (ray_container, engines[0])
    ]
    if not shared[0] & shared[1]:
        problems.append(f"{name}: the Ray container and the engine do not share {socket_dir}")
    builders = [c for c in others if c.get("command") == ["python", "-m", "tools_sandbox.image", "ensure"]]
    if not builders or builders[0]["image"] != ray_container["image"]:
        problems.append(f"{name}: the sandbox image is not built with the Ray container's image")
    return problems + (_module_problems(" ".join(builders[0]["command"])) if builders else [])


def _key_diff(original: Any, written: Any, where: str) -> list[str]:
    """Where ``written`` (the model written back) lost or changed a part of ``original``."""
    if isinstance(original, dict):
        if not isinstance(written, dict):
            return [f"{where}: not an object in the Kubernetes model"]
        problems = [
            f"{where}.{key}: not a field of the Kubernetes model" for key in original if key not in written
        ]
        return problems + [
            p for k in original if k in written for p in _key_diff(original[k], written[k], f"{where}.{k}")
        ]
    if isinstance(original, list):
        if not isinstance(written, list) or len(written) != len(original):
            return [f"{where}: not a list in the Kubernetes model"]
        return [
            p
            for i, (a, b) in enumerate(zip(original, written, strict=True))
            for p in _key_diff(a, b, f"{where}[{i}]")
        ]
    return [] if original == written else [f"{where}: {original!r} reads back as {written!r}"]


def _pod_template_problems(template: dict[str, Any], where: str) -> list[str]:
    """``template`` as a Kubernetes ``V1PodTemplateSpec``: read into the model, written back, compared."""
    from kubernetes.client import ApiClient

    client = ApiClient()
    try:
        # The client's own reader of API responses; its public wrapper's signature varies by version.
        model = client._ApiClient__deserialize(template, "V1PodTemplateSpec")  # type: ignore[attr-defined]
    except (ValueError, TypeError, AttributeError) as exc:
        return [f"{where}: does not read as a V1PodTemplateSpec ({type(exc).__name__}: {exc})"]
    return _key_diff(template, client.sanitize_for_serialization(model), where)


@pytest.fixture
def rayservice() -> dict[str, Any]:
    return _load(RAYSERVICE_FILE)


def test_rayservice_fields_are_known_and_consistent(rayservice: dict[str, Any]) -> None:
    cluster = _RayService.model_validate(rayservice).spec.rayClusterConfig
    assert cluster.enableInTreeAutoscaling
    assert cluster.rayVersion == ray.__version__, (
        "the images' Ray must be the Ray this project is tested with"
    )
    base = f"rayproject/ray:{cluster.rayVersion}-py{SANDBOX_PYTHON.replace('.', '')}"
    assert base in (CLUSTER / RAYSERVICE_FILE).read_text(), f"the image recipe should start FROM {base}"
    assert {g.groupName for g in cluster.workerGroupSpecs} >= {"tool-runners", "gpu"}


def test_rayservice_serve_config_is_valid_and_is_serve_config_yaml(rayservice: dict[str, Any]) -> None:
    assert _serve_problems(rayservice) == []


def test_rayservice_groups_do_what_officeray_expects(rayservice: dict[str, Any]) -> None:
    assert _rayservice_group_problems(rayservice) == []


def test_rayservice_holds_the_runner_pool_of_the_serve_config(
    rayservice: dict[str, Any], deployed_settings: Settings
) -> None:
    groups = [g for _, g in _groups(rayservice)][1:]
    least = sum(g["minReplicas"] * _group_resources(g).get("docker", 0) for g in groups)
    most = sum(g["maxReplicas"] * _group_resources(g).get("docker", 0) for g in groups)
    assert _runner_fit_problems(least, most, deployed_settings) == []


def test_rayservice_pod_templates_are_kubernetes_pod_templates(rayservice: dict[str, Any]) -> None:
    pytest.importorskip(
        "kubernetes", reason="the Kubernetes OpenAPI models come with `pip install kubernetes`"
    )
    for name, group in _groups(rayservice):
        assert _pod_template_problems(group["template"], name) == []


WORKERS = "spec/rayClusterConfig/workerGroupSpecs"


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (f"{WORKERS}/0/minReplica", 1),
        (f"{WORKERS}/0/replicas", 9),
        (f"{WORKERS}/1/rayStartParams/num-gpus", 1),
        ("spec/rayClusterConfig/enableInTreeAutoscaler", True),
        ("spec/serveConfig", "applications: []"),
        ("apiVersion", "ray.io/v1alpha1"),
    ],
    ids=[
        "group-key-typo",
        "replicas-above-max",
        "non-string-param",
        "cluster-key-typo",
        "spec-typo",
        "old-api",
    ],
)
def test_the_rayservice_model_rejects_a_broken_copy(
    rayservice: dict[str, Any], path: str, value: Any
) -> None:
    _set(path, value)(rayservice)
    with pytest.raises(ValidationError):
        _RayService.model_validate(rayservice)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("import_path: serving.app:app_builder", "import_pth: serving.app:app_builder", "serveConfigV2:"),
        ("- name: Reviewer", "- name: Reviewr", "applications != serve_config.yaml"),
        ("max_runners: 64", "max_runners: 32", "applications != serve_config.yaml"),
        ("proxy_location: EveryNode", "proxy_location: HeadOnly", "proxy_location != serve_config.yaml"),
    ],
    ids=["serve-key-typo", "deployment-name", "app-args", "proxy"],
)
def test_the_serve_config_checks_reject_a_broken_copy(
    rayservice: dict[str, Any], old: str, new: str, expected: str
) -> None:
    spec = rayservice["spec"]
    assert old in spec["serveConfigV2"]
    spec["serveConfigV2"] = spec["serveConfigV2"].replace(old, new)
    assert any(expected in p for p in _serve_problems(rayservice))


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("spec/rayClusterConfig/headGroupSpec/rayStartParams/resources", '"{\\"docker\\": 1}"', "head"),
        (f"{WORKERS}/0/rayStartParams/resources", '"{}"', "either"),
        (f"{WORKERS}/0/template/spec/containers/0/resources/limits/cpu", "1", "not enough CPU"),
        (f"{WORKERS}/0/template/spec/containers/0/env/0/value", "tcp://x:2375", "no Docker engine"),
        (f"{WORKERS}/0/template/spec/containers/0/volumeMounts/0/mountPath", "/run/x", "do not share"),
        (f"{WORKERS}/0/template/spec/initContainers/1/image", "other:1", "sandbox image"),
        (f"{WORKERS}/1/minReplicas", 1, "scale to zero"),
        (f"{WORKERS}/1/maxReplicas", 1, "cannot hold"),
        (
            f"{WORKERS}/1/rayStartParams/resources",
            '"{\\"accelerator_type:L4\\": 1}"',
            "accelerator_type:H100",
        ),
        (f"{WORKERS}/1/template/spec/containers/0/envFrom", [], "officeray-secrets"),
        (
            f"{WORKERS}/1/template/spec/containers/0/env",
            [{"name": "OPENAI_API_KEY", "value": "x"}],
            "secrets",
        ),
    ],
    ids=[
        "head-docker",
        "worker-role",
        "runner-cpus",
        "docker-host",
        "socket-volume",
        "image-builder",
        "gpu-min",
        "gpu-room",
        "gpu-type",
        "secret-ref",
        "secret-value",
    ],
)
def test_the_group_checks_reject_a_broken_copy(
    rayservice: dict[str, Any], path: str, value: Any, expected: str
) -> None:
    _set(path, value)(rayservice)
    problems = _rayservice_group_problems(rayservice)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("spec/containers/0/volumeMount", [], "not a field"),
        ("spec/initContainers/0/securityContext/priviliged", True, "not a field"),
        ("spec/containers/0/resources/limits", "8", "V1PodTemplateSpec"),
        ("spec/initContainers/0/name", None, "V1PodTemplateSpec"),
    ],
    ids=["container-key-typo", "nested-key-typo", "wrong-type", "required-field"],
)
def test_the_kubernetes_model_rejects_a_broken_pod_template(
    rayservice: dict[str, Any], path: str, value: Any, expected: str
) -> None:
    pytest.importorskip(
        "kubernetes", reason="the Kubernetes OpenAPI models come with `pip install kubernetes`"
    )
    template = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]
    _set(path, value)(template)
    problems = _pod_template_problems(template, "tool-runners")
    assert any(expected in p for p in problems), problems


# -- who reaches the Ray ports: token authentication, the dashboard's address, the NetworkPolicy --

RAY_PORTS = (6379, 8265, 10001)
"""The GCS, the dashboard with the Jobs API, and the Ray client: remote code execution for whoever
reaches them without Ray's token."""
RAY_POD_LABELS = {"ray.io/is-ray-node": "yes"}
START_COMMANDS = ("head_start_ray_commands", "worker_start_ray_commands")


def _launcher_auth_problems(config: dict[str, Any]) -> list[str]:
    """Every ``ray start`` runs with token authentication and a token; the dashboard binds loopback."""
    problems = []
    for key in START_COMMANDS:
        starts = [c for c in config[key] if "ray start" in c]
        if not starts:
            problems.append(f"{key}: no `ray start`")
        for command in starts:
            before = command[: command.index("ray start")]
            if not re.search(r"\bexport RAY_AUTH_MODE=token\s*;", before):
                problems.append(f"{key}: `ray start` runs without RAY_AUTH_MODE=token")
            if 'test -n "$RAY_AUTH_TOKEN"' not in before:
                problems.append(f"{key}: `ray start` does not refuse to run without RAY_AUTH_TOKEN")
            if "RAY_AUTH_MODE=disabled" in command:
                problems.append(f"{key}: token authentication is turned off")
    for command in _all_commands(config):
        hosts = re.findall(r"--dashboard-host[= ](\S+)", command)
        if any(host != "127.0.0.1" for host in hosts):
            problems.append(f"the dashboard listens on {hosts}, not the head's loopback")
        if "ray start --head" in command and hosts != ["127.0.0.1"]:
            problems.append("the head's `ray start` does not bind the dashboard to 127.0.0.1")
    return problems


def test_launcher_files_start_ray_with_token_auth_and_a_loopback_dashboard(launcher: dict[str, Any]) -> None:
    assert _launcher_auth_problems(launcher) == []


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: c["head_start_ray_commands"].__setitem__(1, "ray start --head --dashboard-host=127.0.0.1"),
         "without RAY_AUTH_MODE=token"),
        (lambda c: c["worker_start_ray_commands"].__setitem__(
            1, c["worker_start_ray_commands"][1].replace('test -n "$RAY_AUTH_TOKEN"', "true")),
         "without RAY_AUTH_TOKEN"),
        (lambda c: c["head_start_ray_commands"].__setitem__(
            1, c["head_start_ray_commands"][1].replace("127.0.0.1", "0.0.0.0")),
         "not the head's loopback"),
        (lambda c: c["head_start_ray_commands"].__setitem__(
            1, c["head_start_ray_commands"][1].replace(" --dashboard-host=127.0.0.1", "")),
         "does not bind the dashboard"),
        (lambda c: c["worker_start_ray_commands"].append("RAY_AUTH_MODE=disabled ray start --address=x"),
         "without RAY_AUTH_MODE=token"),
    ],
    ids=["no-token-mode", "no-token", "dashboard-everywhere", "dashboard-default", "auth-off"],
)  # fmt: skip
def test_the_auth_checks_reject_an_open_launcher_config(
    mutate: Callable[[dict[str, Any]], None], expected: str
) -> None:
    config = _load("aws.yaml")
    mutate(config)
    assert any(expected in p for p in _launcher_auth_problems(config)), _launcher_auth_problems(config)


def _admitted(policy: dict[str, Any], port: int) -> list[list[dict[str, Any]]]:
    """The ``from`` peers of every ingress rule of ``policy`` that admits ``port`` ([] in a list: anyone)."""
    rules = []
    for rule in policy["spec"].get("ingress") or []:
        ports = rule.get("ports")
        if ports and not any(p.get("port") == port for p in ports):
            continue
        rules.append(rule.get("from") or [])
    return rules


def _network_policy_problems(documents: list[dict[str, Any]]) -> list[str]:
    """A NetworkPolicy that covers the Ray pods and admits the Ray ports only from Ray pods (and the
    dashboard from the KubeRay operator)."""
    policies = [d for d in documents if d.get("kind") == "NetworkPolicy"]
    if len(policies) != 1:
        return [f"{len(policies)} NetworkPolicy documents, expected one"]
    (policy,) = policies
    spec = policy["spec"]
    problems = []
    if spec.get("podSelector", {}).get("matchLabels") != RAY_POD_LABELS:
        problems.append(f"the policy does not select the Ray pods ({RAY_POD_LABELS})")
    if "Ingress" not in spec.get("policyTypes", []):
        problems.append("the policy does not limit ingress")
    ray_pods = {"podSelector": {"matchLabels": RAY_POD_LABELS}}
    for port in RAY_PORTS:
        for peers in _admitted(policy, port):
            if not peers:
                problems.append(f"port {port}: open to anyone")
            for peer in peers:
                operator = peer.get("podSelector", {}).get("matchLabels") == {
                    "app.kubernetes.io/name": "kuberay-operator"
                }
                if peer != ray_pods and not (port == 8265 and operator and "namespaceSelector" in peer):
                    problems.append(f"port {port}: admitted from {peer}")
                if "ipBlock" in peer:
                    problems.append(f"port {port}: admitted from an address block")
    if not any(ray_pods in peers for peers in _admitted(policy, 6379)):
        problems.append("the Ray pods cannot reach each other's GCS")
    return problems


def test_rayservice_has_token_auth_and_a_network_policy_on_the_ray_ports() -> None:
    documents = _documents(RAYSERVICE_FILE)
    cluster = _RayService.model_validate(documents[0]).spec.rayClusterConfig
    assert cluster.authOptions is not None and cluster.authOptions.mode == "token"
    # the dashboard listens beyond loopback (the operator deploys through it): behind the token and the policy
    assert _network_policy_problems(documents) == []


def _policy_rules(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = documents[1]["spec"]["ingress"]
    return rules


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d.pop(1), "0 NetworkPolicy"),
        (lambda d: _policy_rules(d).append({"ports": [{"port": 6379}]}), "port 6379: open to anyone"),
        (lambda d: _policy_rules(d).append({}), "port 10001: open to anyone"),
        (lambda d: _policy_rules(d).append({"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}), "address block"),
        (lambda d: _policy_rules(d)[1]["ports"].append({"port": 10001}), "port 10001: admitted from"),
        (lambda d: d[1]["spec"].update(podSelector={}), "does not select the Ray pods"),
        (lambda d: d[1]["spec"].update(policyTypes=["Egress"]), "does not limit ingress"),
    ],
    ids=["no-policy", "gcs-open", "all-open", "cidr", "client-to-operator", "selector", "egress-only"],
)
def test_the_network_policy_checks_reject_an_open_policy(
    mutate: Callable[[list[dict[str, Any]]], None], expected: str
) -> None:
    documents = _documents(RAYSERVICE_FILE)
    mutate(documents)
    problems = _network_policy_problems(documents)
    assert any(expected in p for p in problems), problems
