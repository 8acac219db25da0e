"""The one error a configuration is refused with: a single line for the user that names the
parameter (or option) and what it allows. Commands print it, nodes log it and refuse the transition."""
from __future__ import annotations


class ConfigError(ValueError):
    """A configuration that is refused; the message is one line meant for the user."""


def one_line(err: BaseException) -> str:
    """The first line of an error's message (its type when it has none)."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
