"""Errors that reach the user as one line.

Exit codes follow the convention users of batch tools expect: 0 = all done,
1 = some files failed (the batch went on), 2 = usage or configuration error
(nothing was done).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2


class IraeError(Exception):
    """A problem the user can fix; the message is printed as one line."""

    exit_code = EXIT_USAGE


class WeightsError(IraeError):
    """A weights file is missing, malformed, or not what was asked for."""


class ImageError(IraeError):
    """One input image cannot be used; batch commands report it and go on."""

    exit_code = EXIT_SOME_FAILED
