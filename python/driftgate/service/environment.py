"""The secrets a values file names: it holds the names of environment variables, never their
values, and a service reads each one here, once, at start (and at a reload that needs it)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from driftgate.settings import SettingsError

__all__ = ["from_environment"]


def from_environment(name: str, key: str, environ: Mapping[str, str] | None = None) -> str:
    """The value of the variable `name`, which the values key `key` names; a SettingsError
    naming both (never a value) while it is unset or empty."""
    value = (os.environ if environ is None else environ).get(name)
    if not value:
        state = "empty" if value is not None else "not set"
        raise SettingsError(f"{key} names {name}, which is {state}: export it")
    return value
