"""Dot-separated property paths, the spec's way of naming a value inside an
event: push rule conditions' ``key`` and filters' ``event_fields`` both use
them (the appendix "Dot-separated property paths").

A path splits at each ``.``; ``\\.`` is a dot inside a name and ``\\\\`` a
backslash, and any other backslash stands for itself:
``content.m\\.relates_to.rel_type`` names ``rel_type`` inside
``m.relates_to`` inside ``content``.
"""

from __future__ import annotations

import functools

__all__ = ["property_path"]


@functools.lru_cache(maxsize=1024)
def property_path(key: str) -> tuple[str, ...]:
    """``key`` split at its unescaped dots."""
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for char in key:
        if escaped:
            if char not in ".\\":
                current.append("\\")
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ".":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if escaped:
        current.append("\\")
    parts.append("".join(current))
    return tuple(parts)
