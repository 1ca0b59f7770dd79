"""Errors that the CLI turns into one clear line (no traceback)."""

from __future__ import annotations


class GenpolicyError(Exception):
    """Base class: a user-facing problem with input, config or files."""


class DataError(GenpolicyError):
    """A dataset file is missing, malformed or does not fit the task."""


class ConfigError(GenpolicyError):
    """A config value is invalid."""


class CheckpointError(GenpolicyError):
    """A checkpoint is missing, incomplete, corrupt or does not match the code."""
