"""Errors raised by the usage lake, free of any gateway dependency.

Callers (gateway, opsctl) map them: `LakeInputError` subclasses are bad input (exit 2 / HTTP 400).
"""

from __future__ import annotations


class LakeError(Exception):
    """A lake operation failed (storage unreachable, corrupt file, ...)."""


class LakeInputError(LakeError, ValueError):
    """The caller passed something invalid (bad URL, bad event, bad report argument)."""


class QueryRefused(LakeInputError):
    """Ad-hoc SQL that is not a single read-only query over the `usage` view."""


class SpoolLocked(LakeError):
    """Another live process owns this spool directory (it holds the directory's lock file)."""
