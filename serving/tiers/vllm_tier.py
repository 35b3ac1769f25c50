"""The ``vllm`` tier: local inference on GPU nodes through ``ray.serve.llm`` (``pip install '.[gpu]'``).

Two halves:

* **Serving the models.** :func:`build_vllm_app` turns every configured ``vllm`` tier into a
  ``ray.serve.llm.LLMConfig`` (:func:`build_llm_config`) and builds one OpenAI-compatible Serve app
  with ``ray.serve.llm.build_openai_app``. It is deployed next to officeray's own app as the Serve
  application :data:`VLLM_APP_NAME` under the route prefix :data:`VLLM_ROUTE_PREFIX` (``/llm``), so
  the models answer at ``http://HOST:PORT/llm/v1/chat/completions`` (:func:`vllm_base_url`);
  :func:`deploy_vllm_app` does both steps. The same model used by several roles is deployed once.
* **Calling them.** :class:`VllmTier` is a :class:`~serving.tiers.base.ModelTier` that posts the
  call's messages to that OpenAI-compatible surface through the ``openai`` tier's client
  (:class:`~serving.tiers.openai_tier.OpenAITier`: same error mapping, :meth:`VllmTier.stream` too),
  asking for structured output (``response_format: {"type": "json_schema", ...}``, which vLLM
  enforces with guided decoding) when the call carries a JSON Schema. Without vLLM or a GPU it raises
  :class:`~serving.tiers.base.TierUnavailableError` at once, so the router moves on to the next tier.

``ray.serve.llm`` cannot even be imported without vLLM (its protocol models come from vLLM), so
:func:`build_llm_config` and :func:`build_vllm_app` raise :class:`TierUnavailableError` there;
:func:`llm_config_dict` gives the same configuration as a plain dict anywhere.

How :class:`~officeray.config.VllmTierConfig` maps onto ``LLMConfig``:

================  ==============================================================================
``model``         ``model_loading_config.model_source`` (a local path or a name already in the
                  node's Hugging Face cache: replicas run with ``HF_HUB_OFFLINE=1``, so nothing is
                  downloaded)
``model_id``      ``model_loading_config.model_id`` (default: the last part of ``model``)
``accelerator_type``  ``accelerator_type`` (``H100``, ``A10G``, ...)
``num_gpus``      GPUs per replica. Below 1: one engine worker with that GPU fraction
                  (``placement_group_config.bundle_per_worker = {"GPU": num_gpus}``). A whole
                  number N: N workers of one GPU each, ``tensor_parallel_size = N`` unless
                  ``engine_kwargs`` set ``tensor_parallel_size`` / ``pipeline_parallel_size``,
                  whose product must then be N.
``engine_kwargs`` ``engine_kwargs`` as given (vLLM's engine arguments). No other defaults are added:
                  a default ``max_model_len`` would break models whose context is shorter.
``min_replicas`` / ``max_replicas``  ``deployment_config.autoscaling_config``
================  ==============================================================================
"""

from __future__ import annotations

import glob
import importlib.util
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any

from officeray.config import ModelsSettings, OpenAITierConfig, TierConfig, VllmTierConfig
from officeray.errors import ConfigError
from serving.tiers.base import CannotAnswerError, ModelAnswer, ModelCall, TierUnavailableError
from serving.tiers.openai_tier import OpenAITier

if TYPE_CHECKING:
    from ray.serve import Application
    from ray.serve.llm import LLMConfig

VLLM_TIER = "vllm"

VLLM_APP_NAME = "officeray-llm"
"""Name of the Serve application that serves the ``vllm`` tiers' models."""

VLLM_ROUTE_PREFIX = "/llm"
"""Route prefix of that application: its OpenAI surface is ``/llm/v1/...``."""

INSTALL_HINT = "install with pip install '.[gpu]' on a GPU node"

AVAILABILITY_RECHECK_S = 30.0
"""How long a negative availability check is trusted (a GPU node may join the cluster)."""

OFFLINE_ENV_VARS = {"HF_HUB_OFFLINE": "1"}
"""Environment of the model replicas: models are read from disk or the cache, never downloaded."""

SERVE_LLM_KEY_ENV = "OFFICERAY_SERVE_LLM_API_KEY"
"""The (private) environment name the ``openai`` client reads its key from; it is given the
placeholder below, whatever the real environment holds: the ``ray.serve.llm`` app checks no key."""

SERVE_LLM_PLACEHOLDER_KEY = "not-needed"

_TP = "tensor_parallel_size"
_PP = "pipeline_parallel_size"


def vllm_base_url(host: str = "127.0.0.1", port: int = 8000) -> str:
    """The OpenAI base URL of the vLLM app on the Serve HTTP proxy at ``host:port``."""
    return f"http://{host}:{port}{VLLM_ROUTE_PREFIX}/v1"


DEFAULT_VLLM_BASE_URL = vllm_base_url()


# --------------------------------------------------------------------------------------------------
# Availability
# --------------------------------------------------------------------------------------------------


def _local_gpu_count() -> int:
    """GPUs this process can see, cheaply: CUDA_VISIBLE_DEVICES and the NVIDIA device files.

    Only when neither shows one and torch is installed (always the case with vLLM) is torch imported
    to ask it (covers ROCm); that costs seconds once, and only on machines that have vLLM.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "NoDevFiles"):
        return 0
    devices = len(glob.glob("/dev/nvidia[0-9]*"))
    if devices and visible is not None:
        devices = min(devices, len([d for d in visible.split(",") if d.strip()]))
    if devices:
        return devices
    if importlib.util.find_spec("torch") is None:
        return 0
    try:
        import torch

        return int(torch.cuda.device_count())
    except Exception:
        return 0


def _cluster_gpu_count() -> float | None:
    """GPUs in the Ray cluster when this process is connected to one, else ``None``."""
    try:
        import ray

        if not ray.is_initialized():
            return None
        return float(ray.cluster_resources().get("GPU", 0.0))
    except Exception:
        return None


def _vllm_installed() -> bool:
    """Whether the vllm package is installed (looked up, not imported)."""
    return importlib.util.find_spec("vllm") is not None


def vllm_available(
    *,
    installed: Callable[[], bool] = _vllm_installed,
    cluster_gpus: Callable[[], float | None] = _cluster_gpu_count,
    local_gpus: Callable[[], int] = _local_gpu_count,
) -> tuple[bool, str]:
    """Whether the vLLM tier can run: vLLM installed here and a GPU visible; and why not.

    vLLM is looked up without being imported. GPUs are those of the Ray cluster when this process
    is connected to one (``ray.cluster_resources()``), else those of this machine. A cluster whose
    GPU nodes are scaled to zero reports none until one joins. The three probes are injectable
    (tests pass fixed answers).
    """
    if not installed():
        return False, "the vllm package is not installed"
    cluster = cluster_gpus()
    if cluster is not None:
        if cluster <= 0:
            return False, "the Ray cluster has no GPU"
        return True, f"vllm installed, {cluster:g} GPU(s) in the Ray cluster"
    local = local_gpus()
    if local <= 0:
        return False, "no GPU is visible on this machine"
    return True, f"vllm installed, {local} GPU(s) visible"


# --------------------------------------------------------------------------------------------------
# Serving: VllmTierConfig -> ray.serve.llm
# --------------------------------------------------------------------------------------------------


def served_model_id(cfg: VllmTierConfig) -> str:
    """The name the model is served under: ``model_id``, else the last part of ``model``."""
    if cfg.model_id:
        return cfg.model_id
    return cfg.model.rstrip("/").rsplit("/", 1)[-1] or cfg.model


def _parallelism(cfg: VllmTierConfig, engine_kwargs: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """GPUs per engine worker, and the engine kwargs with ``tensor_parallel_size`` filled in."""
    where = f"vllm tier {served_model_id(cfg)!r}"
    tp = int(engine_kwargs.get(_TP, 1) or 1)
    pp = int(engine_kwargs.get(_PP, 1) or 1)
    if cfg.num_gpus < 1:
        if tp * pp != 1:
            raise ConfigError(
                f"{where}: num_gpus {cfg.num_gpus:g} (a GPU fraction) allows one engine worker, "
                f"but engine_kwargs ask for {_TP}={tp} x {_PP}={pp}"
            )
        return cfg.num_gpus, engine_kwargs
    if cfg.num_gpus != int(cfg.num_gpus):
        raise ConfigError(f"{where}: num_gpus must be below 1 or a whole number, not {cfg.num_gpus:g}")
    gpus = int(cfg.num_gpus)
    if _TP in engine_kwargs or _PP in engine_kwargs:
        if tp * pp != gpus:
            raise ConfigError(
                f"{where}: num_gpus is {gpus} but engine_kwargs ask for {_TP}={tp} x {_PP}={pp} = "
                f"{tp * pp} GPUs"
            )
    elif gpus > 1:
        engine_kwargs = {**engine_kwargs, _TP: gpus}
    return 1.0, engine_kwargs


def llm_config_dict(cfg: VllmTierConfig) -> dict[str, Any]:
    """The ``LLMConfig`` fields for one ``vllm`` tier, as a plain dict (no vLLM needed)."""
    engine_kwargs = dict(cfg.engine_kwargs)
    per_worker_gpus, engine_kwargs = _parallelism(cfg, engine_kwargs)
    if cfg.min_replicas > cfg.max_replicas:
        raise ConfigError(
            f"vllm tier {served_model_id(cfg)!r}: min_replicas {cfg.min_replicas} is above "
            f"max_replicas {cfg.max_replicas}"
        )
    config: dict[str, Any] = {
        "model_loading_config": {"model_id": served_model_id(cfg), "model_source": cfg.model},
        "engine_kwargs": engine_kwargs,
        "deployment_config": {
            "autoscaling_config": {"min_replicas": cfg.min_replicas, "max_replicas": cfg.max_replicas}
        },
        "placement_group_config": {"bundle_per_worker": {"GPU": per_worker_gpus}},
        "runtime_env": {"env_vars": dict(OFFLINE_ENV_VARS)},
    }
    if cfg.accelerator_type:
        config["accelerator_type"] = cfg.accelerator_type
    return config


def _import_serve_llm() -> Any:
    try:
        import ray.serve.llm as serve_llm
    except ImportError as exc:
        raise TierUnavailableError(
            f"vLLM tier unavailable: ray.serve.llm cannot be imported ({exc}); {INSTALL_HINT}"
        ) from exc
    return serve_llm


def build_llm_config(cfg: VllmTierConfig) -> LLMConfig:
    """The ``ray.serve.llm.LLMConfig`` of one ``vllm`` tier (see the module docstring's table).

    Raises :class:`TierUnavailableError` where ``ray.serve.llm`` cannot be imported (no vLLM), and
    :class:`~officeray.errors.ConfigError` for settings ``LLMConfig`` refuses.
    """
    data = llm_config_dict(cfg)
    serve_llm = _import_serve_llm()
    try:
        llm_config: LLMConfig = serve_llm.LLMConfig(**data)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise ConfigError(
            f"vllm tier {served_model_id(cfg)!r}: invalid ray.serve.llm config: {exc}"
        ) from None
    return llm_config


def configured_vllm_tiers(models: ModelsSettings) -> list[VllmTierConfig]:
    """The ``vllm`` tiers of every role's chain, in order, each model once (see :func:`unique_vllm_tiers`)."""
    return unique_vllm_tiers([*models.planner, *models.reviewer, *models.ai_tool])


_CLIENT_SIDE_FIELDS = {"timeout_s", "max_retries"}


def unique_vllm_tiers(cfgs: Iterable[TierConfig]) -> list[VllmTierConfig]:
    """The ``vllm`` configs among ``cfgs``, one per served model id.

    Two tiers naming the same model id must agree on how it is served (they may differ in
    ``timeout_s`` and ``max_retries``, which only concern the caller).
    """
    by_id: dict[str, VllmTierConfig] = {}
    for cfg in cfgs:
        if not isinstance(cfg, VllmTierConfig):
            continue
        model_id = served_model_id(cfg)
        seen = by_id.get(model_id)
        if seen is None:
            by_id[model_id] = cfg
        elif seen.model_dump(exclude=_CLIENT_SIDE_FIELDS) != cfg.model_dump(exclude=_CLIENT_SIDE_FIELDS):
            raise ConfigError(
                f"two vllm tiers serve the model id {model_id!r} with different settings; give one "
                "of them another model_id or make them equal"
            )
    return list(by_id.values())


def build_vllm_app(cfgs: Iterable[TierConfig]) -> Application | None:
    """One OpenAI-compatible ``ray.serve.llm`` app serving every ``vllm`` tier's model.

    ``None`` when no tier is a ``vllm`` tier. Deploy it as :data:`VLLM_APP_NAME` under
    :data:`VLLM_ROUTE_PREFIX` (see :func:`deploy_vllm_app`).
    """
    tiers = unique_vllm_tiers(cfgs)
    if not tiers:
        return None
    llm_configs = [build_llm_config(cfg) for cfg in tiers]
    app: Application = _import_serve_llm().build_openai_app({"llm_configs": llm_configs})
    return app


def deploy_vllm_app(cfgs: Iterable[TierConfig], *, host: str = "127.0.0.1", port: int = 8000) -> str | None:
    """Build and ``serve.run`` the vLLM app (blocks until the models are loaded).

    Returns the OpenAI base URL to give :class:`VllmTier` (``None`` when there are no vllm tiers).
    ``host``/``port`` are those of the running Serve HTTP proxy.
    """
    app = build_vllm_app(cfgs)
    if app is None:
        return None
    from ray import serve

    serve.run(app, name=VLLM_APP_NAME, route_prefix=VLLM_ROUTE_PREFIX)
    return vllm_base_url(host, port)


# --------------------------------------------------------------------------------------------------
# Calling: the tier
# --------------------------------------------------------------------------------------------------


class _ServeLLMClient(OpenAITier):
    """The ``openai`` tier's client, speaking for the ``vllm`` tier (its name in answers and errors)."""

    name = VLLM_TIER

    def _who(self) -> str:
        return f"vllm tier (model {self.model!r} at {self.config.base_url})"


class VllmTier:
    """A :class:`~serving.tiers.base.ModelTier` answering through the ``ray.serve.llm`` app.

    The call goes to the app's OpenAI surface through :class:`~serving.tiers.openai_tier.OpenAITier`
    (same request shape, structured output as ``json_schema``, same error mapping and
    :meth:`stream`), with answers and errors named ``vllm``. The app checks no API key; a placeholder
    is sent. ``base_url`` is the app's OpenAI base URL (default :data:`DEFAULT_VLLM_BASE_URL`;
    :func:`vllm_base_url` builds it from the Serve host and port).

    ``availability`` decides whether the tier may run (default :func:`vllm_available`); when it says
    no, :meth:`generate` raises :class:`TierUnavailableError` at once. A caller that deployed the vLLM
    app itself (its GPU nodes may be elsewhere in the cluster) can pass ``lambda: (True, "deployed")``.
    """

    name: str = VLLM_TIER

    def __init__(
        self,
        cfg: VllmTierConfig,
        *,
        base_url: str | None = None,
        availability: Callable[[], tuple[bool, str]] = vllm_available,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.model: str = served_model_id(cfg)
        self.base_url = (base_url or DEFAULT_VLLM_BASE_URL).rstrip("/")
        self._availability = availability
        self._clock = clock
        self._checked: tuple[bool, str, float] | None = None
        self._client: OpenAITier | None = None

    def available(self) -> tuple[bool, str]:
        """The availability check, cached (a negative answer for :data:`AVAILABILITY_RECHECK_S`)."""
        now = self._clock()
        if self._checked is not None:
            ok, why, at = self._checked
            if ok or now - at < AVAILABILITY_RECHECK_S:
                return ok, why
        ok, why = self._availability()
        self._checked = (ok, why, now)
        return ok, why

    def openai_config(self) -> OpenAITierConfig:
        """How the ``openai`` tier reaches the served model."""
        return OpenAITierConfig(
            tier="openai",
            model=self.model,
            base_url=self.base_url,
            api_key_env=SERVE_LLM_KEY_ENV,
            timeout_s=self.cfg.timeout_s,
            max_retries=self.cfg.max_retries,
            structured_output="json_schema",
        )

    def client(self) -> OpenAITier:
        """The OpenAI-compatible client; raises :class:`TierUnavailableError` when the tier cannot run."""
        ok, why = self.available()
        if not ok:
            raise TierUnavailableError(f"vLLM tier unavailable: {why}; {INSTALL_HINT}")
        if self._client is None:
            self._client = _ServeLLMClient(
                self.openai_config(), environ={SERVE_LLM_KEY_ENV: SERVE_LLM_PLACEHOLDER_KEY}
            )
        return self._client

    async def generate(self, call: ModelCall) -> ModelAnswer:
        client = self.client()
        if not call.messages:
            raise CannotAnswerError("the vllm tier answers chat messages; the call has none")
        return await client.generate(call)

    async def stream(self, call: ModelCall) -> AsyncIterator[str]:
        """The answer's content as the model produces it."""
        client = self.client()
        if not call.messages:
            raise CannotAnswerError("the vllm tier answers chat messages; the call has none")
        async for piece in client.stream(call):
            yield piece

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
