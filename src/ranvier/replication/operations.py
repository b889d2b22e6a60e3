"""Write operations as data: a registered name and msgspec-encoded arguments.

A worker cannot hand the main process a Python callable, so a write is sent
as the name :func:`~ranvier.storage.write_backend.registered_write` gave its
function (or class) and its keyword arguments, encoded with msgspec's
MessagePack (records are msgspec Structs and dataclasses; bytes such as an
event's JSON travel as they are). The main process looks the name up among
the registered writes of the storage modules and decodes the arguments
against the function's own type hints, so a value of the wrong shape is
refused before anything runs. Nothing is ever unpickled or evaluated: a name
that is not registered is refused, whatever the body says.

The result travels back the same way, decoded against the function's return
type.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import msgspec

# Imported for their registrations: every storage module that defines a
# registered write is imported by ranvier.storage.
import ranvier.storage  # noqa: F401
from ranvier.errors import BadJsonError, MatrixError
from ranvier.protocol.untrusted_json import DECODE_ERRORS
from ranvier.storage.actor import WriteOperation
from ranvier.storage.write_backend import registered_writes
from ranvier.storage.writes import PersistEvents

__all__ = [
    "PERSIST_EVENTS",
    "UnsendableWriteError",
    "decode_operation",
    "decode_persist_events",
    "decode_result",
    "encode_operation",
    "encode_result",
    "operation_name",
    "operation_names",
]

#: The registered name of :class:`~ranvier.storage.writes.PersistEvents`.
PERSIST_EVENTS: Final = "writes.PersistEvents"

_encoder: Final = msgspec.msgpack.Encoder()


class UnsendableWriteError(TypeError):
    """A write that cannot be described as data: a closure, a lambda, a
    function nobody registered, or a partial with positional arguments.

    It is a programming error on the worker's side, found before anything
    is sent.
    """


@dataclass(frozen=True, slots=True)
class _Spec:
    """How one registered write travels."""

    name: str
    target: Callable[..., Any]
    #: A Struct with one field per keyword argument.
    arguments: type[msgspec.Struct]
    result: Any
    #: The target is a class whose instances are the operation.
    is_class: bool
    fields: tuple[str, ...]
    decoder: msgspec.msgpack.Decoder[Any]
    result_decoder: msgspec.msgpack.Decoder[Any]


def _function_spec(name: str, function: Callable[..., Any]) -> _Spec:
    hints = typing.get_type_hints(function)
    parameters = list(inspect.signature(function).parameters.values())[1:]  # after the connection
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for parameter in parameters:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise TypeError(f"the write {name} takes *args or **kwargs, which cannot be sent")
        hint = hints[parameter.name]
        if parameter.default is parameter.empty:
            fields.append((parameter.name, hint))
        else:
            # Left unset when not sent, so the function's own default applies.
            fields.append((parameter.name, hint | msgspec.UnsetType, msgspec.UNSET))
    return _make_spec(name, function, fields, hints.get("return", Any), is_class=False)


def _class_spec(name: str, cls: type[Any]) -> _Spec:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"the write {name} is a class but not a dataclass")
    hints = typing.get_type_hints(cls)
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for field in dataclasses.fields(cls):
        if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            fields.append((field.name, hints[field.name]))
        else:
            fields.append((field.name, hints[field.name] | msgspec.UnsetType, msgspec.UNSET))
    result = typing.get_type_hints(cls.__call__).get("return", Any)
    return _make_spec(name, cls, fields, result, is_class=True)


def _make_spec(
    name: str,
    target: Callable[..., Any],
    fields: list[tuple[str, Any] | tuple[str, Any, Any]],
    result: Any,
    *,
    is_class: bool,
) -> _Spec:
    arguments = msgspec.defstruct(
        f"{name.replace('.', '_')}_arguments",
        fields,
        kw_only=True,
        forbid_unknown_fields=True,
    )
    return _Spec(
        name=name,
        target=target,
        arguments=arguments,
        result=result,
        is_class=is_class,
        fields=tuple(field[0] for field in fields),
        decoder=msgspec.msgpack.Decoder(arguments),
        result_decoder=msgspec.msgpack.Decoder(result),
    )


_Specs = tuple[dict[str, _Spec], dict[Callable[..., Any], _Spec]]
_cache: list[_Specs] = []


def _specs() -> _Specs:
    """The registered writes' specs, made again when more were registered
    since (a module with writes imported late)."""
    registered = registered_writes()
    if _cache and len(_cache[0][0]) == len(registered):
        return _cache[0]
    by_name: dict[str, _Spec] = {}
    for name, target in registered.items():
        if isinstance(target, type):
            by_name[name] = _class_spec(name, target)
        else:
            by_name[name] = _function_spec(name, target)
    _cache[:] = [(by_name, {spec.target: spec for spec in by_name.values()})]
    return _cache[0]


def operation_names() -> frozenset[str]:
    """Every write the main process runs when a worker asks: the allow-list."""
    return frozenset(_specs()[0])


def _spec_of(operation: WriteOperation[Any]) -> tuple[_Spec, dict[str, Any]]:
    by_target = _specs()[1]
    if isinstance(operation, functools.partial):
        spec = by_target.get(operation.func)
        if spec is None or spec.is_class:
            raise UnsendableWriteError(
                f"{operation.func!r} is not a registered write: it cannot be sent to the"
                " main process (register it with ranvier.storage.write_backend.registered_write)"
            )
        if operation.args:
            raise UnsendableWriteError(
                f"the write {spec.name} was given positional arguments: only keyword"
                " arguments can be sent"
            )
        unknown = sorted(set(operation.keywords) - set(spec.fields))
        if unknown:
            raise UnsendableWriteError(f"the write {spec.name} takes no {', '.join(unknown)}")
        return spec, dict(operation.keywords)
    bare = by_target.get(operation) if inspect.isfunction(operation) else None
    if bare is not None and not bare.is_class:
        # A registered write that takes nothing but the connection.
        return bare, {}
    spec = by_target.get(type(operation))
    if spec is None or not spec.is_class:
        raise UnsendableWriteError(
            f"{operation!r} is not a registered write: it cannot be sent to the main process"
            " (a closure or lambda has no name there; use functools.partial of a function"
            " registered with ranvier.storage.write_backend.registered_write)"
        )
    return spec, {name: getattr(operation, name) for name in spec.fields}


def operation_name(operation: WriteOperation[Any]) -> str:
    """The registered name of ``operation``; raises :class:`UnsendableWriteError`."""
    return _spec_of(operation)[0].name


def encode_operation(operation: WriteOperation[Any]) -> tuple[str, bytes]:
    """``(name, arguments)`` of a registered write; raises :class:`UnsendableWriteError`."""
    spec, arguments = _spec_of(operation)
    return spec.name, _encoder.encode(arguments)


def _spec_named(name: str) -> _Spec:
    spec = _specs()[0].get(name)
    if spec is None:
        raise MatrixError(
            f"there is no write operation named {name!r}",
            errcode="M_UNRECOGNIZED",
            http_status=400,
        )
    return spec


def decode_operation(name: str, body: bytes) -> WriteOperation[Any]:
    """The operation a worker sent: the registered write ``name`` with the
    arguments in ``body``.

    Raises MatrixError ``M_UNRECOGNIZED`` (400) for a name not registered,
    and :class:`~ranvier.errors.BadJsonError` (400) for arguments that do
    not decode to the write's parameters.
    """
    spec = _spec_named(name)
    try:
        decoded = spec.decoder.decode(body)
    except (*DECODE_ERRORS, msgspec.ValidationError) as exc:
        raise BadJsonError(f"the arguments of {name} do not fit its parameters: {exc}") from None
    arguments = {
        field: value
        for field in spec.fields
        if (value := getattr(decoded, field)) is not msgspec.UNSET
    }
    if spec.is_class:
        operation: WriteOperation[Any] = spec.target(**arguments)
        return operation
    return functools.partial(spec.target, **arguments)


def decode_persist_events(body: bytes) -> PersistEvents:
    """The events of a ``fed_send_events`` or ``send_event`` request."""
    operation = decode_operation(PERSIST_EVENTS, body)
    assert isinstance(operation, PersistEvents)
    return operation


def encode_result(name: str, value: object) -> bytes:
    """A write's result, to answer the worker with."""
    del name  # every result is encoded the same way; decoding needs the type
    return _encoder.encode(value)


def decode_result(name: str, body: bytes) -> Any:
    """The result of the write ``name`` as the main process answered it.

    Raises :class:`~ranvier.errors.BadJsonError` if it does not decode to
    the write's return type.
    """
    try:
        return _spec_named(name).result_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BadJsonError(f"the result of {name} does not fit its type: {exc}") from None
