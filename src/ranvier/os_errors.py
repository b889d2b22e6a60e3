"""Operating-system errors told to an operator."""

from __future__ import annotations

__all__ = ["describe_os_error"]


def describe_os_error(exc: OSError) -> str:
    """The file and the system's reason, without ``str()``'s "[Errno N]",
    which tells an operator nothing."""
    if exc.strerror is None:
        return str(exc)
    if exc.filename is not None:
        return f"{exc.filename}: {exc.strerror}"
    return exc.strerror
