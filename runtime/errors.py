"""One exception family for everything a user can get wrong.

The CLI maps :class:`MixteraUserError` to exit code 1 and prints ``error: ...`` followed by
``hint: ...``; anything else is an internal failure (exit code 2).
"""

from __future__ import annotations


class MixteraError(Exception):
    """Base of every error mixtera raises on purpose."""


class MixteraUserError(MixteraError):
    """The user's input (files, config, arguments) is wrong; ``hint`` says how to fix it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n\nhint: {self.hint}"


class ConfigError(MixteraUserError):
    """A TOML config (index config, mixture spec) is invalid."""


class CorpusError(MixteraUserError):
    """A corpus file cannot be read or holds bad records."""


class PlanError(MixteraUserError):
    """A plan directory or rank file is missing, corrupt, or does not match the job."""


class StateError(MixteraUserError):
    """A saved runtime state does not belong to this plan, topology or tokenizer."""


class FileFormatError(PlanError):
    """A binary file (rank file, token file, frame cache, feedback log) fails its header check."""


class NotThisFormatError(FileFormatError):
    """Too short for the format's header, or the magic bytes of another kind of file."""


class FormatVersionError(FileFormatError):
    """A major version (or, for formats with one version number, a version) this code does not read."""


class ReservedFlagsError(FileFormatError):
    """Flag bits set that this version of the format does not define."""


class FileSizeError(FileFormatError):
    """The file's size differs from the size its header or seek table declares."""


class FeedbackError(MixteraUserError, ValueError):
    """A value reported to the feedback log (step, token count, loss sum) is invalid."""
