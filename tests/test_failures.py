"""A nursery's failure told as itself: the one exception of a group,
however deeply it is nested, or the group when it holds more than one."""

from __future__ import annotations

from ranvier.failures import sole_failure


def test_the_one_failure_of_a_group_is_given_as_itself() -> None:
    error = ValueError("the database is full")

    assert sole_failure(ExceptionGroup("one", [error])) is error
    assert sole_failure(ExceptionGroup("outer", [ExceptionGroup("inner", [error])])) is error


def test_a_group_of_several_failures_stays_a_group() -> None:
    group = ExceptionGroup("two", [ValueError("a"), ExceptionGroup("inner", [KeyError("b")])])

    assert sole_failure(group) is group
