"""Failures of concurrent work, told as what they are."""

from __future__ import annotations

__all__ = ["sole_failure"]


def sole_failure(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """A nursery's failure as itself when it is one exception, so that, say,
    storage being unavailable reaches a request handler as the
    :class:`~ranvier.errors.MatrixError` it is; the group otherwise.
    """
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 else group
