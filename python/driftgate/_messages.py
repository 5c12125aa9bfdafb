"""Error messages of one line that show the bad value, whatever the value is."""

from __future__ import annotations

import os
import reprlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 40
_repr.maxlevel = 2
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 4


def shown(value: Any) -> str:
    """A value for an error message: short, one line and printable, even for a value nested a
    thousand deep or an integer of 5000 digits (which Python refuses to print)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        sign = "negative " if value < 0 else ""
        try:
            return f"a {sign}{len(str(abs(value)))}-digit integer"
        except ValueError:  # past sys.get_int_max_str_digits()
            article = "a negative" if value < 0 else "an"
            return f"{article} integer of more than {sys.get_int_max_str_digits()} digits"
    try:
        text = _repr.repr(value)
    except Exception:  # a repr that fails is no reason to lose the message
        text = f"a {type(value).__name__}"
    return printable(text)


def printable(text: str) -> str:
    """`text` with unpaired surrogates escaped, so that any stream can write it."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def one_line(text: str) -> str:
    """The first non-empty line of `text`, printable (a library's message may span several)."""
    for line in str(text).splitlines():
        if line.strip():
            return printable(line.strip())
    return ""


def read_capped(
    path: str | Path,
    limit: int,
    error: type[Exception],
    what: str = "",
    *,
    opened: Callable[[os.stat_result], None] | None = None,
) -> bytes:
    """The bytes of a small file, read whole only up to `limit`: an unreadable file or a larger
    one raises `error` naming the path (and `what` the file should have been), never an
    OSError with a traceback or a file read into memory whatever its size. `opened`, if given,
    sees the status of the file as opened (its mode, say) before it is read, and may raise."""
    try:
        with open(path, "rb") as file:
            if opened is not None:
                opened(os.fstat(file.fileno()))
            raw = file.read(limit + 1)
    except OSError as problem:
        raise error(f"{path}: cannot read ({problem.strerror})") from None
    if len(raw) > limit:
        raise error(f"{path}: larger than {limit} bytes{what}")
    return raw
