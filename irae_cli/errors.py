"""Errors and warnings that reach the user as one line.

Exit codes follow the convention users of batch tools expect: 0 = all done,
1 = some files failed (the batch went on), 2 = usage or configuration error
(nothing was done).
"""

from __future__ import annotations

import sys
import threading

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


class SaveError(IraeError):
    """The work was done but a result could not be saved (disk full, ...); what could be saved was."""

    exit_code = EXIT_SOME_FAILED


class QuietError(IraeError):
    """Already said on one line by process 0 of a torchrun job: the others exit with its code, silently."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def one_line(text: object) -> str:
    """``text`` with control characters escaped, so a message naming any file stays one printable line.

    A newline, carriage return, escape sequence or other control character in a
    file name would split or garble the line; undecodable bytes of a file name
    (lone surrogates from ``os.fsdecode``) would make printing itself fail.
    """
    out = []
    for ch in str(text):
        code = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif code < 0x20 or 0x7F <= code < 0xA0 or code in (0x2028, 0x2029):
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        elif 0xDC80 <= code <= 0xDCFF:  # an undecodable byte of a file name, as os.fsdecode keeps it
            out.append(f"\\x{code - 0xDC00:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def io_reason(e: BaseException) -> str:
    """The operating system's words for a failed read or write ('No space left on device'), else the first line."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    import re

    text = str(e)
    # safetensors wraps Rust's io::Error: "... I/O error: No space left on device (os error 28)"
    m = re.search(r'I/O error: (.+?) \(os error \d+\)|message: "([^"]+)"', text)
    if m:
        return m.group(1) or m.group(2)
    return text.splitlines()[0] if text else type(e).__name__


# --- warnings ------------------------------------------------------------------------------------

_warned: set[str] = set()
_warn_lock = threading.Lock()
_warning_handler = None  # callable(line) set by a command that prints around a progress bar


def set_warning_handler(handler) -> object:
    """Route ``warn`` lines through ``handler(line)`` (None = stderr); returns the previous handler."""
    global _warning_handler
    previous, _warning_handler = _warning_handler, handler
    return previous


def warn(message: str) -> None:
    """One line ``irae: warning: MESSAGE`` on stderr, once per message per process (thread-safe)."""
    line = one_line(f"irae: warning: {message}")
    with _warn_lock:
        if line in _warned:
            return
        _warned.add(line)
    handler = _warning_handler
    if handler is not None:
        handler(line)
    else:
        print(line, file=sys.stderr, flush=True)
