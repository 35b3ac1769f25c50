"""Errors raised by in-sandbox tools. stdlib only: this module runs inside the container."""

from __future__ import annotations


class ToolFailure(Exception):
    """A tool refused its inputs or failed; ``error_type`` is one of officeray's ErrorType values."""

    error_type = "tool_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ToolInputError(ToolFailure):
    """The inputs are not acceptable (bad syntax, unknown or ambiguous name, over a limit)."""

    error_type = "bad_input"
