"""What a step's output must satisfy: the meaning of a plan step's ``outputs_expectation``.

``outputs_expectation`` is a JSON Schema (draft 2020-12) that the step's output must satisfy, for
example ``{"type": "object", "required": ["value"], "properties": {"value": {"type": "number"}}}``.
One shorthand is understood: ``{"keys": ["a", "b"]}`` means an object with (at least) the keys ``a``
and ``b``; it may be combined with other schema keywords. ``null`` (or no field) means no expectation.

:func:`expectation_error` is the validator's check that an expectation is a usable schema (a plan
with a broken one is refused with that message); :func:`unmet_expectation` is the reviewer's check of
an output. Both are pure functions.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import jsonschema
from jsonschema.exceptions import SchemaError

from officeray.contracts import OutputsExpectation

MAX_EXPECTATION_PROBLEMS = 5
"""Most schema violations of one output quoted in the reviewer's feedback."""

KEYS_SHORTHAND = "keys"

EXPECTATION_CACHE_SIZE = 1024
"""Expectations (by their canonical JSON) whose schema check and validator are kept per process."""


def expectation_schema(expectation: OutputsExpectation) -> dict[str, Any]:
    """The JSON Schema an expectation stands for (the ``keys`` shorthand expanded)."""
    schema = dict(expectation)
    keys = schema.pop(KEYS_SHORTHAND, None)
    if keys is None:
        return schema
    required = list(schema.get("required", [])) + [k for k in keys if k not in schema.get("required", [])]
    return {**schema, "type": schema.get("type", "object"), "required": required}


def expectation_error(expectation: OutputsExpectation | None) -> str | None:
    """Why ``expectation`` cannot be checked (not a JSON Schema, bad ``keys``); None when it can."""
    if expectation is None:
        return None
    keys = expectation.get(KEYS_SHORTHAND)
    if keys is not None and not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        return "keys must be a list of output key names"
    text = _canonical(expectation)
    return None if text is None else _schema_problem(text)


def _canonical(expectation: OutputsExpectation) -> str | None:
    """The expectation as canonical JSON (the key of the caches below); None when it is not JSON."""
    try:
        return json.dumps(expectation, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):
        return None


@functools.lru_cache(maxsize=EXPECTATION_CACHE_SIZE)
def _schema_problem(text: str) -> str | None:
    """:func:`expectation_error` of one expectation (checking a schema costs far more than a look-up:
    a plan's steps repeat the same few expectations)."""
    try:
        jsonschema.Draft202012Validator.check_schema(expectation_schema(json.loads(text)))
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        return f"not a valid JSON Schema ({where + ': ' if where else ''}{exc.message})"
    return None


@functools.lru_cache(maxsize=EXPECTATION_CACHE_SIZE)
def _validator(text: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(expectation_schema(json.loads(text)))


def missing_keys(expectation: OutputsExpectation | None, output: Any) -> list[str]:
    """The keys the expectation requires (at the top level) that ``output`` lacks."""
    if expectation is None:
        return []
    required = expectation_schema(expectation).get("required", [])
    if not isinstance(output, dict):
        return list(required)
    return [key for key in required if key not in output]


def unmet_expectation(expectation: OutputsExpectation | None, output: Any) -> list[str]:
    """How ``output`` falls short of ``expectation``: short messages, empty when it is met.

    Missing required keys come first as one ``missing expected keys: a, b`` message."""
    if expectation is None or expectation_error(expectation) is not None:
        return []
    problems: list[str] = []
    missing = missing_keys(expectation, output)
    if missing:
        problems.append(f"missing expected keys: {', '.join(missing)}")
    text = _canonical(expectation)
    validator = (
        _validator(text)
        if text is not None
        else jsonschema.Draft202012Validator(expectation_schema(expectation))
    )
    for error in sorted(validator.iter_errors(output), key=lambda e: list(e.absolute_path)):
        if error.validator == "required" and not error.absolute_path:
            continue  # reported above
        where = "/".join(str(p) for p in error.absolute_path) or "(output)"
        problems.append(f"{where}: {error.message}")
        if len(problems) >= MAX_EXPECTATION_PROBLEMS:
            break
    return problems
