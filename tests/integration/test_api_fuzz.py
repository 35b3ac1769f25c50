"""Schema-driven fuzzing of the task, dead-letter-queue and health routes over loopback: whatever
schemathesis sends (valid and invalid bodies, headers, path and query values) with a valid admin key,
no answer is a 5xx; and the OpenAPI document declares the one error shape and the key.

Bounded: at most ``MAX_EXAMPLES`` generated cases per operation (valid and invalid ones mixed), no
per-case deadline. The operations are driven with plain Hypothesis ``@given`` over each operation's
strategy rather than ``schemathesis.pytest.from_fixture``, whose per-operation subtests rely on a
pytest internal that pytest 9.2 no longer has.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from cluster.runtime import LocalStack
from tests.integration.conftest import bearer

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 30
CALL_TIMEOUT_S = 30
FUZZED_PATHS = r"^/(v1/tasks|v1/dlq|healthz)"
"""Operations under test: the task routes (create, read, events, trace, approvals), the dead-letter
queue and the health check; the chat routes call models and have their own tests."""


def _strategy(operation: Any) -> Any:
    """Valid and (where the operation has inputs to break) invalid cases of one operation."""
    strategies = [operation.as_strategy(GenerationMode.POSITIVE)]
    if operation.body or any(True for _ in operation.iter_parameters()):
        strategies.append(operation.as_strategy(GenerationMode.NEGATIVE))
    return st.one_of(*strategies)


def test_the_schema_declares_the_error_shape_and_the_key(stack: LocalStack) -> None:
    import httpx

    document = httpx.get(f"http://127.0.0.1:{stack.settings.serve.port}/openapi.json", timeout=30).json()
    assert {"detail", "code"} <= set(document["components"]["schemas"]["ErrorBody"]["required"])
    assert document["components"]["securitySchemes"]["apiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key (ofr_...), as 'Authorization: Bearer <key>'.",
    }
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            if path == "/healthz":
                assert "security" not in operation
            else:
                assert operation["security"] == [{"apiKey": []}], (method, path)
            if path.startswith(("/v1/chat/", "/v1/models")):
                continue  # OpenAI's error shape
            assert responses["4XX"]["content"]["application/json"]["schema"] == error_ref, (method, path)
            assert responses["5XX"]["content"]["application/json"]["schema"] == error_ref
            if "422" in responses:
                assert responses["422"]["content"]["application/json"]["schema"] == error_ref


def test_no_operation_answers_a_server_error(stack: LocalStack, admin_key: str) -> None:
    base = f"http://127.0.0.1:{stack.settings.serve.port}"
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json", timeout=CALL_TIMEOUT_S)
    schema = schema.include(path_regex=FUZZED_PATHS)
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert {
        "POST /v1/tasks",
        "GET /v1/tasks",
        "POST /v1/tasks/{task_id}/feedback",
        "GET /v1/dlq",
        "POST /v1/dlq/{task_id}/retry",
        "GET /healthz",
    } <= labels, labels

    failures: dict[str, str] = {}
    for operation in operations:

        @given(case=_strategy(operation))
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def fuzz(case: schemathesis.Case) -> None:
            case.call_and_validate(
                base_url=base, headers=bearer(admin_key), checks=[not_a_server_error], timeout=CALL_TIMEOUT_S
            )

        try:
            fuzz()
        except Exception as exc:  # report every operation's failure, not only the first
            failures[operation.label] = f"{type(exc).__name__}: {exc}"[:2000]
    assert not failures, "\n\n".join(f"{label}:\n{why}" for label, why in failures.items())
