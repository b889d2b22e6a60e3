"""SentMembers: what a device holds, remembered by the token it holds it at."""

from __future__ import annotations

from ranvier.core.lazy_members import SentMembers


def test_a_chain_of_tokens_holds_what_each_answer_added() -> None:
    sent = SentMembers()
    assert sent.held("@a:x", "D", "t1") == frozenset()
    sent.record("@a:x", "D", "t1", {"$bob"})
    sent.record("@a:x", "D", "t2", sent.held("@a:x", "D", "t1") | {"$carol"})
    assert sent.held("@a:x", "D", "t1") == {"$bob"}
    assert sent.held("@a:x", "D", "t2") == {"$bob", "$carol"}
    # Another device, or another user with the same device ID, holds nothing.
    assert sent.held("@a:x", "E", "t2") == frozenset()
    assert sent.held("@b:x", "D", "t2") == frozenset()


def test_two_answers_under_one_token_keep_what_both_carried() -> None:
    sent = SentMembers()
    sent.record("@a:x", "D", "t1", {"$bob", "$carol"})
    sent.record("@a:x", "D", "t1", {"$bob", "$dave"})
    assert sent.held("@a:x", "D", "t1") == {"$bob"}


def test_bounds_forget_the_oldest_and_never_hold_too_much() -> None:
    sent = SentMembers(devices=2, tokens_per_device=2, events_per_token=3)
    for token in ("t1", "t2", "t3"):
        sent.record("@a:x", "D", token, {f"${token}"})
    assert sent.held("@a:x", "D", "t1") == frozenset()
    assert sent.held("@a:x", "D", "t3") == {"$t3"}
    sent.record("@a:x", "E", "t1", {"$e"})
    sent.record("@a:x", "D", "t4", {"$d"})  # D syncs again: E is now the older
    sent.record("@a:x", "F", "t1", {"$f"})
    assert sent.held("@a:x", "E", "t1") == frozenset()
    assert sent.held("@a:x", "D", "t4") == {"$d"}
    sent.record("@a:x", "F", "t2", {"$1", "$2", "$3", "$4"})
    assert sent.held("@a:x", "F", "t2") == frozenset()
