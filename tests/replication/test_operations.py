"""Write operations as data: every registered write round-trips, nothing
else is sent or run."""

from __future__ import annotations

import ast
import collections.abc
import dataclasses
import functools
import importlib
import inspect
import sqlite3
import types
import typing
from pathlib import Path
from typing import Any

import msgspec
import pytest

import ranvier.storage
from ranvier.errors import BadJsonError, MatrixError
from ranvier.replication import operations
from ranvier.storage import (
    DestinationRetry,
    EventToPersist,
    ReceivedTransaction,
    ServerKey,
    accounts,
    sso,
    writes,
)
from ranvier.storage.records import EventStateContext
from ranvier.storage.write_backend import registered_write, registered_writes
from ranvier.storage.write_marks import WriteMark

_EVENT = EventToPersist(
    event_id="$e",
    room_id="!r:x",
    room_version="10",
    type="m.room.member",
    state_key="@u:x",
    sender="@u:x",
    depth=3,
    origin_server_ts=1_700_000_000_000,
    json=b'{"bytes": "\x00\xff kept"}',
    prev_event_ids=("$p",),
    auth_event_ids=("$a", "$b"),
    context=EventStateContext(state_group_before=4, partial_state=True),
)
_OUTLIER = EventToPersist(
    event_id="$o",
    room_id="!r:x",
    room_version="10",
    type="m.room.create",
    state_key="",
    sender="@u:x",
    depth=1,
    origin_server_ts=1,
    json=b"{}",
    outlier=True,
    rejected_reason="auth",
)
#: A knock of ours on a room not joined here, made through another server.
_OUT_OF_BAND = EventToPersist(
    event_id="$i",
    room_id="!r:x",
    room_version="10",
    type="m.room.member",
    state_key="@u:x",
    sender="@u:x",
    depth=5,
    origin_server_ts=2,
    json=b"{}",
    outlier=True,
    out_of_band=True,
    sent_through="y.test",
)
_DEVICE = accounts.NewDevice(
    user_id="@u:x", device_id="D", display_name=None, token_hash=b"\x01" * 32, created_ts=5
)

#: Arguments of every registered write, as storage's callers give them.
SAMPLES: dict[str, Any] = {
    "writes.PersistEvents": writes.PersistEvents((_EVENT, _OUTLIER, _OUT_OF_BAND), {"!r:x": 7}),
    "writes.PersistRun": writes.PersistRun(
        "!r:x",
        (_EVENT,),
        {"!r:x": 7},
        answer=ReceivedTransaction(
            origin="a.test",
            transaction_id="t2",
            response_code=200,
            response_json=b'{"pdus": {"$e": {}}}',
            received_ts=9,
        ),
        since=WriteMark("e1", 3, 4),
    ),
    "writes.store_room": {"room_id": "!r:x", "room_version": "10"},
    "writes.set_current_state": {"room_id": "!r:x", "state_group": 3},
    "writes.store_partial_join": {
        "room_id": "!r:x",
        "room_version": "10",
        "join_event_id": "$j",
        "joined_via": "a.test",
        "servers_in_room": frozenset({"a.test", "b.test"}),
    },
    "writes.update_state_for_partial_event": {
        "event_id": "$e",
        "state_group_before": 1,
        "state_group_after": None,
        "rejected_reason": "auth",
    },
    "writes.clear_partial_state": {"room_id": "!r:x"},
    "writes.store_resync_progress": {
        "room_id": "!r:x",
        "phase": "state",
        "server": None,
        "events_resynced": 1,
        "events_total": 2,
        "attempts": 3,
        "last_error": "timeout",
        "updated_ts": 4,
    },
    "writes.record_transaction": {
        "transaction": ReceivedTransaction(
            origin="a.test",
            transaction_id="t1",
            response_code=200,
            response_json=b'{"pdus": {}}',
            received_ts=9,
        )
    },
    "writes.store_server_keys": {
        "keys": (
            ServerKey(
                server_name="a.test",
                key_id="ed25519:k",
                verify_key=bytes(range(32)),
                valid_until_ts=10,
                from_server="a.test",
                fetched_ts=2,
                key_json=b"{}",
            ),
        )
    },
    "writes.store_destination_retry": {
        "destination": "a.test",
        "retry": DestinationRetry(
            destination="a.test", failure_ts=None, retry_last_ts=1, retry_interval_ms=2
        ),
    },
    "writes.store_destination_rooms": {"destination": "a.test", "positions": {"!r:x": 4}},
    "writes.mark_destination_rooms_sent": {"destination": "a.test", "positions": {"!r:x": 4}},
    "state_groups.store_state_group": {
        "room_id": "!r:x",
        "prev_group": 2,
        "delta": {("m.room.member", "@u:x"): "$e", ("m.room.topic", ""): None},
    },
    "accounts.create_account": {
        "account": accounts.NewAccount(
            user_id="@u:x", password_hash="$argon2id$...", admin=False, created_ts=5
        ),
        "device": _DEVICE,
    },
    "accounts.add_device": {"device": _DEVICE},
    "accounts.delete_device_of_token": {"token_hash": b"\x02" * 32},
    "accounts.delete_devices": {"user_id": "@u:x"},
    "accounts.delete_user_devices": {"user_id": "@u:x", "device_ids": ("A", "B")},
    "accounts.set_password_hash": {"user_id": "@u:x", "password_hash": "$argon2id$..."},
    "aliases.insert_alias": {
        "alias": "#a:x",
        "room_id": "!r:x",
        "creator": "@u:x",
        "created_ts": 5,
        "write_id": "0123abcd",
    },
    "aliases.delete_alias": {"alias": "#a:x"},
    "client_transactions.insert_client_transaction": {
        "user_id": "@u:x",
        "device_id": "D",
        "token_hash": b"\x07" * 32,
        "txn_id": "t",
        "room_id": "!r:x",
        "event_id": "$e",
        "created_ts": 5,
    },
    "client_transactions.delete_client_transactions_before": {"created_ts": 5},
    "sync_reads.store_filter": {"user_id": "@u:x", "filter_json": b'{"room": {}}'},
    "profile_fields.set_profile_field": {
        "user_id": "@u:x",
        "key": "org.example.pets",
        "value_json": '["cat", 2, null]',
        "max_bytes": 65536,
    },
    "profile_fields.delete_profile_field": {"user_id": "@u:x", "key": "m.tz"},
    "profile_fields.erase_profile": {"user_id": "@u:x"},
    "sso.create_sso_session": {
        "state_hash": b"\x00\xff",
        "session": sso.SsoSession(
            idp_id="idp",
            nonce="n",
            code_verifier="v",
            redirect_url="https://c.x/?a=b",
            expires_ts=9,
        ),
        "now_ms": 5,
        "max_sessions": 10_000,
    },
    "sso.take_sso_session": {"state_hash": b"\x00\xff", "now_ms": 5},
}

#: A result of each write's type, to check results round-trip too.
RESULTS: dict[str, Any] = {
    "writes.PersistEvents": {"$e": 12, "$o": 11},
    "writes.PersistRun": writes.RunWritten({"$e": 12}, WriteMark("e1", 3, 5)),
    "writes.store_room": None,
    "writes.set_current_state": None,
    "writes.store_partial_join": None,
    "writes.update_state_for_partial_event": None,
    "writes.clear_partial_state": True,
    "writes.store_resync_progress": False,
    "writes.record_transaction": None,
    "writes.store_server_keys": None,
    "writes.store_destination_retry": None,
    "writes.store_destination_rooms": None,
    "writes.mark_destination_rooms_sent": None,
    "state_groups.store_state_group": 41,
    "accounts.create_account": None,
    "accounts.add_device": None,
    "accounts.delete_device_of_token": accounts.TokenOwner("@u:x", "D", admin=True),
    "accounts.delete_devices": 2,
    "accounts.delete_user_devices": 1,
    "accounts.set_password_hash": None,
    "aliases.insert_alias": True,
    "aliases.delete_alias": False,
    "client_transactions.insert_client_transaction": "$e",
    "client_transactions.delete_client_transactions_before": 3,
    "sync_reads.store_filter": 0,
    "profile_fields.set_profile_field": False,
    "sso.create_sso_session": True,
    "sso.take_sso_session": sso.SsoSession(
        idp_id="idp", nonce="n", code_verifier="v", redirect_url="https://c.x/", expires_ts=9
    ),
}


def _generated(hint: Any) -> Any:
    """A value of type ``hint``, for a write added after the samples above."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return None
    if origin in (typing.Union, types.UnionType):
        return None if type(None) in args else _generated(args[0])
    if origin is typing.Literal:
        return args[0]
    simple = {bool: True, int: 7, float: 1.5, str: "x", bytes: b"\x00\xff", Any: "x"}
    if hint in simple:
        return simple[hint]
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return (_generated(args[0]),)
        return tuple(_generated(arg) for arg in args)
    if origin in (dict, collections.abc.Mapping, collections.abc.MutableMapping):
        return {_generated(args[0]): _generated(args[1])}
    if origin in (frozenset, set, collections.abc.Set):
        return frozenset({_generated(args[0])})
    if origin in (list, collections.abc.Sequence, collections.abc.Collection):
        return [_generated(args[0])]
    if isinstance(hint, type) and (
        issubclass(hint, msgspec.Struct) or dataclasses.is_dataclass(hint)
    ):
        return hint(**_generated_arguments(hint, typing.get_type_hints(hint)))
    raise AssertionError(f"no sample for {hint!r}: add one to SAMPLES")


def _generated_arguments(target: Any, hints: dict[str, Any]) -> dict[str, Any]:
    parameters = inspect.signature(target).parameters.values()
    return {
        parameter.name: _generated(hints[parameter.name])
        for parameter in parameters
        if parameter.name in hints and parameter.name != "conn"
    }


def _sample(name: str) -> Any:
    if name in SAMPLES:
        return SAMPLES[name]
    target = registered_writes()[name]
    return _generated_arguments(target, typing.get_type_hints(target))


def _result(name: str) -> Any:
    if name in RESULTS:
        return RESULTS[name]
    target = registered_writes()[name]
    function = target.__call__ if isinstance(target, type) else target
    return _generated(typing.get_type_hints(function).get("return", type(None)))


def _operation(name: str) -> Any:
    sample = _sample(name)
    if isinstance(sample, dict):
        return functools.partial(registered_writes()[name], **sample)
    return sample


def _plain(value: Any) -> Any:
    """Containers and records as MessagePack gives them back, bytes kept."""
    return msgspec.msgpack.decode(msgspec.msgpack.encode(value))


def _arguments(operation: Any) -> Any:
    if isinstance(operation, functools.partial):
        return operation.func, _plain(operation.keywords)
    fields = {field.name: getattr(operation, field.name) for field in dataclasses.fields(operation)}
    return type(operation), _plain(fields)


def test_the_samples_are_of_registered_writes() -> None:
    # Writes registered later get generated samples (see _generated).
    assert set(SAMPLES) <= operations.operation_names()
    assert set(RESULTS) <= operations.operation_names()
    assert len(SAMPLES) >= 24


@pytest.mark.parametrize("name", sorted(operations.operation_names()))
def test_every_registered_write_round_trips(name: str) -> None:
    operation = _operation(name)
    sent_name, body = operations.encode_operation(operation)
    assert sent_name == name
    decoded: Any = operations.decode_operation(name, body)
    assert _arguments(decoded) == _arguments(operation)
    # The records arrive as themselves, not as dicts.
    if name == "writes.PersistRun":
        assert decoded == operation
    if name == "writes.PersistEvents":
        assert decoded.events == operation.events
        assert decoded.events[0].json == _EVENT.json
        assert [event.out_of_band for event in decoded.events] == [False, False, True]
        assert [event.sent_through for event in decoded.events] == [None, None, "y.test"]
    if name == "accounts.create_account":
        assert decoded.keywords["account"] == operation.keywords["account"]
        assert decoded.keywords["device"] == _DEVICE


@pytest.mark.parametrize("name", sorted(operations.operation_names()))
def test_every_result_round_trips(name: str) -> None:
    value = _result(name)
    assert operations.decode_result(name, operations.encode_result(name, value)) == value


def test_a_result_of_the_wrong_type_is_refused() -> None:
    body = operations.encode_result("state_groups.store_state_group", "forty-one")
    with pytest.raises(BadJsonError, match="store_state_group"):
        operations.decode_result("state_groups.store_state_group", body)


def test_a_write_of_the_connection_alone_is_sent_by_name() -> None:
    @registered_write
    def _vacuum_nothing(conn: sqlite3.Connection) -> int:
        return 3

    # Registered after the first write was encoded: found all the same.
    name, body = operations.encode_operation(_vacuum_nothing)
    assert name == "test_operations.vacuum_nothing"
    decoded = operations.decode_operation(name, body)
    assert decoded(sqlite3.connect(":memory:")) == 3


def test_closures_lambdas_and_unregistered_functions_are_not_sent() -> None:
    def closure(conn: sqlite3.Connection) -> None:
        pass

    def _unregistered(conn: sqlite3.Connection, *, room_id: str) -> None:
        pass

    with pytest.raises(operations.UnsendableWriteError, match="not a registered write"):
        operations.encode_operation(closure)
    with pytest.raises(operations.UnsendableWriteError, match="not a registered write"):
        operations.encode_operation(lambda conn: None)
    with pytest.raises(operations.UnsendableWriteError, match="not a registered write"):
        operations.encode_operation(functools.partial(_unregistered, room_id="!r:x"))


def test_positional_and_unknown_arguments_are_not_sent() -> None:
    with pytest.raises(operations.UnsendableWriteError, match="positional"):
        operations.encode_operation(
            functools.partial(writes.store_room, "!r:x", "10")  # type: ignore[arg-type]
        )
    with pytest.raises(operations.UnsendableWriteError, match="takes no colour"):
        operations.encode_operation(
            functools.partial(  # type: ignore[call-arg]
                writes.store_room, room_id="!r:x", room_version="10", colour="red"
            )
        )


def test_an_unregistered_name_is_refused_with_400() -> None:
    with pytest.raises(MatrixError) as raised:
        operations.decode_operation("builtins.exec", b"\x80")
    assert raised.value.http_status == 400
    assert raised.value.errcode == "M_UNRECOGNIZED"
    assert "builtins.exec" in raised.value.message


@pytest.mark.parametrize(
    "arguments",
    [
        {"room_id": "!r:x"},  # room_version missing
        {"room_id": "!r:x", "room_version": 10},  # of the wrong type
        {"room_id": "!r:x", "room_version": "10", "sql": "DROP TABLE events"},  # unknown
    ],
)
def test_arguments_that_do_not_fit_are_refused(arguments: dict[str, Any]) -> None:
    body = msgspec.msgpack.encode(arguments)
    with pytest.raises(BadJsonError, match=r"writes\.store_room"):
        operations.decode_operation("writes.store_room", body)


def test_a_record_is_checked_as_it_is_decoded() -> None:
    # An event in the DAG without a state context is refused by the record.
    event = _plain(_EVENT)
    event["context"] = None
    body = msgspec.msgpack.encode({"events": [event]})
    with pytest.raises(BadJsonError, match="state context"):
        operations.decode_operation(operations.PERSIST_EVENTS, body)


def test_body_that_is_not_msgpack_is_refused() -> None:
    with pytest.raises(BadJsonError):
        operations.decode_operation("writes.store_room", b"\xc1 not msgpack")


def _calls_named(tree: ast.AST, name: str) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and (
            (isinstance(node.func, ast.Attribute) and node.func.attr == name)
            or (isinstance(node.func, ast.Name) and node.func.id == name)
        )
        and node.args
    ]


def _submitted_writes(path: Path) -> list[tuple[int, ast.expr]]:
    """The first argument of every ``submit(...)`` in the module; where that
    is a parameter of a helper that passes it on, the arguments the helper
    is called with instead.
    """
    tree = ast.parse(path.read_text())
    helpers = {
        arg.arg: function.name
        for function in ast.walk(tree)
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
        for arg in function.args.args
    }
    found: list[tuple[int, ast.expr]] = []
    for call in _calls_named(tree, "submit"):
        argument = call.args[0]
        if isinstance(argument, ast.Name) and argument.id in helpers:
            found.extend(
                (outer.lineno, outer.args[0]) for outer in _calls_named(tree, helpers[argument.id])
            )
        else:
            found.append((call.lineno, argument))
    return found


def _resolve(module: Any, expr: ast.expr) -> Any:
    if isinstance(expr, ast.Name):
        return getattr(module, expr.id)
    assert isinstance(expr, ast.Attribute), ast.dump(expr)
    return getattr(_resolve(module, expr.value), expr.attr)


def test_every_write_storage_submits_is_a_registered_one() -> None:
    """Scans the storage package: each ``submit(...)`` hands over a partial
    of a registered function or a registered class's instance, so that a
    worker can send every write storage makes.
    """
    registered = set(registered_writes().values())
    package = Path(ranvier.storage.__file__).parent
    checked = 0
    problems = []
    for path in sorted(package.glob("*.py")):
        if path.name in ("actor.py", "write_backend.py"):
            continue  # the actor and the interface themselves
        module = importlib.import_module(f"ranvier.storage.{path.stem}")
        for line, argument in _submitted_writes(path):
            checked += 1
            if not isinstance(argument, ast.Call):
                # A registered write taking nothing but the connection.
                if _resolve(module, argument) not in registered:
                    problems.append(f"{path.name}:{line}: submits {ast.unparse(argument)}")
                continue
            callee = _resolve(module, argument.func)
            if callee is functools.partial:
                callee = _resolve(module, argument.args[0])
            if callee not in registered:
                problems.append(f"{path.name}:{line}: {ast.unparse(argument)[:60]}")
    assert problems == []
    assert checked >= 20
