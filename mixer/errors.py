"""The one exception type the CLI turns into a one-line message and an exit code, and how
its messages name a keyword."""

from __future__ import annotations


def as_written(name: str) -> str:
    """How an error names a keyword by default: as the caller wrote it (the command line
    passes its own speller, mixer.api.cli_flag: --seq-len)."""
    return name


class MixerError(Exception):
    """A problem with the user's input or data, reported as `mixer: error: <message>`.

    exit_code 1 is a data problem, 2 a usage problem (docs/design.md: errors).
    """

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class UsageError(MixerError):
    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=2)
