"""Typed errors of the core. Adapters translate their own failures into these."""

from __future__ import annotations


class OfficerayError(Exception):
    """Base class of officeray's errors."""


class ConfigError(OfficerayError):
    """The configuration is invalid; the message names the bad key."""


class PlanningError(OfficerayError):
    """The planner cannot produce a plan for this task. Not retried: the task fails with the message."""


class ModelUnavailableError(OfficerayError):
    """A model tier could not answer (down, overloaded, timed out). The workflow may retry."""


class TaskNotFoundError(OfficerayError):
    """No task with that id."""
