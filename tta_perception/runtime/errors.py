"""The one error a configuration is refused with: a single line for the user that names the
parameter (or option) and what it allows. Commands print it, nodes log it and refuse the transition."""
from __future__ import annotations


class ConfigError(ValueError):
    """A configuration that is refused; the message is one line meant for the user."""


def one_line(err: BaseException, limit: int = 300) -> str:
    """An error's message on one line (its type when it has none). A first line that only announces
    what follows (PyTorch's "Error(s) in loading state_dict for DriveSeg:") is joined with the rest,
    which says what is wrong, shortened to ``limit`` characters."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    if not lines[0].endswith(":") or len(lines) == 1:
        return lines[0]
    text = " ".join(lines)
    return text if len(text) <= limit else text[:limit - 3].rstrip() + "..."
