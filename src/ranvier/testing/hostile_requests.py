"""Hostile requests to every route of a server, and the judging of its answers.

A test of a whole API reads the routes from the router a real server
builds, so a route added later is covered without a change to the test.
A probe first learns which body keys and query parameters each handler
reads (by handing it a body and query that note each key looked up, see
:func:`noting_requests`); :func:`hostile_calls` then sends each of those
with values of every JSON kind and size, the body itself as not-JSON, an
array and ``{}``, and the path with odd IDs. Every answer must be a Matrix
error or a success (:func:`judge`), and nothing may be logged as an error
(:func:`logged_errors`).

The client and federation API tests differ only in how they reach the
server and what their paths name; what is sent and how an answer is
judged is here, once. :class:`ServedInThread` runs their servers for a
whole module, since a Trio test cannot share a server across tests
otherwise.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import queue
import threading
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, Generic, TypeVar

import httpx
import trio

from ranvier.web import Request, RequestHead

__all__ = [
    "BAD_BODIES",
    "GATEWAY_STATUSES",
    "HOSTILE_QUERY_VALUES",
    "HOSTILE_VALUES",
    "Call",
    "ServedInThread",
    "encode",
    "fill",
    "hostile_calls",
    "judge",
    "logged_errors",
    "noting_requests",
    "path_names",
    "quote",
    "send_all",
]

T = TypeVar("T")
W = TypeVar("W")

#: What each body key the handler reads is replaced by, one at a time.
HOSTILE_VALUES: Final[tuple[Any, ...]] = (
    None,
    True,
    -1,
    2**63,
    2**64,
    1.5,
    "",
    "x" * 70_000,
    [],
    {},
    [[[]]],
)
#: What each query parameter is set to, one at a time: among them digits
#: that ``str.isdigit`` takes and ``int`` refuses (superscript two) or reads
#: as a number no client writes (an Arabic-Indic three).
HOSTILE_QUERY_VALUES: Final = (
    "-1",
    str(2**63),
    "99999999999999999999",
    "1e400",
    "abc",
    "",
    "\u00b2",
    "\u0663",
)
#: What a request that had to ask another server gets when that server
#: cannot be reached or answers nonsense: the homeserver's own deliberate
#: answer, with an errcode, where a 500 is a request that reached code
#: that never checked it. (A name is often a hostile request's remote:
#: ``?server=abc`` names a server that does not exist, yet is a valid name.)
GATEWAY_STATUSES: Final = frozenset({502, 504})
#: Bodies that are not a JSON object.
BAD_BODIES: Final = (b"{not json", b"[1, 2, 3]", b"{}")

_txn_ids = itertools.count()


@dataclass(frozen=True)
class Call:
    """One request: what it tries (for a failure to name), method, path
    (percent-encoded), query and body bytes."""

    what: str
    method: str
    path: str
    query: Mapping[str, str]
    body: bytes | None


def encode(body: Any) -> bytes | None:
    """``body`` as JSON bytes; ``None`` (no body) stays ``None``."""
    return None if body is None else json.dumps(body).encode()


def quote(segment: str) -> str:
    """``segment`` percent-encoded as one path segment."""
    return urllib.parse.quote(segment, safe="")


def path_names(pattern: str) -> list[str]:
    """The names of a route pattern's ``{parameters}``, in order."""
    return [part[1:-1] for part in pattern.split("/") if part.startswith("{")]


def fill(pattern: str, values: Mapping[str, str], encoded: Mapping[str, str] = {}) -> str:
    """``pattern`` with each parameter replaced by its quoted value, or by
    its ``encoded`` segment as it is. A ``txn_id`` not given encoded is new
    on every call, so that no request is taken for a retry of another."""
    path = pattern
    for name, value in values.items():
        segment = encoded[name] if name in encoded else quote(value)
        if name == "txn_id" and name not in encoded:
            segment = f"txn{next(_txn_ids)}"
        path = path.replace("{" + name + "}", segment)
    return path


def _odd_values(value: str) -> list[str]:
    """Odd path segments in place of ``value``, already percent-encoded."""
    sigils = "!@#$+"
    wrong = (
        (sigils[(sigils.index(value[0]) + 1) % len(sigils)] + value[1:])
        if value[:1] in sigils
        else "!" + value
    )
    return [
        quote(value + "x" * 5_000),
        quote(wrong),
        quote("\u2603\u00fc" + value),
        "%00",
        quote(value) + "%00",
    ]


def _shown(value: Any) -> Any:
    return value if not isinstance(value, str) or len(value) < 10 else f"'x'*{len(value)}"


def hostile_calls(
    method: str,
    pattern: str,
    values: Mapping[str, str],
    plausible_body: Any,
    plausible_query: Mapping[str, str],
    body_keys: set[str],
    query_names: set[str],
    *,
    query_throughout: bool,
) -> Iterator[Call]:
    """Every hostile request to one route.

    ``values`` fill its path; ``plausible_body`` and ``plausible_query``
    are what it would accept, and each hostile value replaces one part of
    them at a time. With ``query_throughout`` the plausible query goes with
    the hostile bodies and paths too (for routes that need it to get as far
    as reading the body); otherwise only with the hostile queries.
    """
    good_body = encode(plausible_body)
    other_query = plausible_query if query_throughout else {}
    if method != "GET":
        for raw in BAD_BODIES:
            yield Call(f"body {raw!r}", method, fill(pattern, values), other_query, raw)
        base = plausible_body if isinstance(plausible_body, dict) else {}
        for key in sorted(body_keys):
            for value in HOSTILE_VALUES:
                yield Call(
                    f"body {key}={_shown(value)!r}",
                    method,
                    fill(pattern, values),
                    other_query,
                    encode({**base, key: value}),
                )
    for name in values:
        for odd in _odd_values(values[name]):
            yield Call(
                f"path {name}={odd[:40]!r}",
                method,
                fill(pattern, values, {name: odd}),
                other_query,
                good_body,
            )
    for name in sorted(query_names | set(plausible_query)):
        for value in HOSTILE_QUERY_VALUES:
            yield Call(
                f"query {name}={value!r}",
                method,
                fill(pattern, values),
                {**plausible_query, name: value},
                good_body,
            )


# --- Learning what a handler reads ----------------------------------------------------------


class _Noting(dict[str, Any]):
    """A dict that notes each key looked up in it."""

    def __init__(self, data: Mapping[str, Any], noted: set[str]) -> None:
        super().__init__(data)
        self.noted = noted

    def __getitem__(self, key: str) -> Any:
        self.noted.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.noted.add(key)
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.noted.add(key)
        return super().__contains__(key)

    def pop(self, key: str, *default: Any) -> Any:
        self.noted.add(key)
        return super().pop(key, *default)


def noting_requests(body_keys: set[str], query_names: set[str]) -> Callable[..., Request]:
    """A stand-in for :meth:`RequestHead.request` (to be patched in) whose
    requests note each body key in ``body_keys`` and each query parameter
    in ``query_names`` as the handler looks it up."""
    original = RequestHead.request

    def request(self: RequestHead, **kw: Any) -> Request:
        made = original(self, **kw)
        content = made.content
        if isinstance(content, dict):
            content = _Noting(content, body_keys)
        return replace(made, query=_Noting(made.query, query_names), content=content)

    return request


# --- Judging the answers ----------------------------------------------------------------------


async def send_all(
    calls: Iterable[Call],
    send: Callable[[Call], Awaitable[httpx.Response]],
    *,
    interactive_auth: bool = False,
) -> list[str]:
    """What went wrong with each of ``calls`` sent by ``send``, named by
    the call: no answer, or an answer :func:`judge` finds wrong."""
    failures: list[str] = []
    for call in calls:
        try:
            response = await send(call)
        except httpx.HTTPError as exc:
            failures.append(f"{call.what}: no answer ({exc!r})")
            continue
        failure = judge(response, interactive_auth=interactive_auth)
        if failure is not None:
            failures.append(f"{call.what}: {failure}")
    return failures


def judge(response: httpx.Response, *, interactive_auth: bool = False) -> str | None:
    """What is wrong with an answer to a hostile request, if anything.

    With ``interactive_auth`` (the client API), a 401 that offers the
    flows of user-interactive authentication is a right answer too."""
    if response.status_code >= 500 and response.status_code not in GATEWAY_STATUSES:
        return f"{response.status_code} {response.text[:200]}"
    if response.status_code < 400:
        return None
    try:
        answer = response.json()
    except ValueError:
        return f"{response.status_code} without JSON: {response.text[:200]!r}"
    if not isinstance(answer, dict):
        return f"{response.status_code} without an object: {response.text[:200]}"
    if (
        interactive_auth
        and response.status_code == 401
        and "flows" in answer
        and "errcode" not in answer
    ):
        # User-interactive authentication's first answer: the flows to
        # follow, which carries an errcode only once a stage has failed.
        return None
    if not isinstance(answer.get("errcode"), str):
        return f"{response.status_code} without an errcode: {response.text[:200]}"
    return None


def logged_errors(records: Iterable[logging.LogRecord]) -> list[str]:
    """The ERROR (and worse) records of ranvier's own loggers, as lines."""
    return [
        f"{record.name}: {record.getMessage()}"
        for record in records
        if record.name.startswith("ranvier") and record.levelno >= logging.ERROR
    ]


# --- A server for a whole module --------------------------------------------------------------


class ServedInThread(Generic[W]):
    """What ``serve`` yields, served by a Trio loop in a thread of its own
    until :meth:`close`; an error while starting is raised here."""

    def __init__(
        self, serve: Callable[[], contextlib.AbstractAsyncContextManager[W]], *, timeout: float
    ) -> None:
        self._serve_cm = serve
        self._ready: queue.Queue[tuple[W, trio.lowlevel.TrioToken] | BaseException] = queue.Queue()
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._serve,), daemon=True)
        self._thread.start()
        ready = self._ready.get(timeout=timeout)
        if isinstance(ready, BaseException):
            raise ready
        self.value, self._token = ready

    async def _serve(self) -> None:
        self._stop = trio.Event()
        try:
            async with self._serve_cm() as value:
                self._ready.put((value, trio.lowlevel.current_trio_token()))
                await self._stop.wait()
        except BaseException as exc:
            self._ready.put(exc)
            raise

    def close(self) -> None:
        assert self._stop is not None
        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(timeout=60)

    async def run(self, fn: Callable[[], Awaitable[T]]) -> T:
        """``fn()`` run on the server's event loop, awaited from the test's."""
        call = functools.partial(trio.from_thread.run, fn, trio_token=self._token)
        return await trio.to_thread.run_sync(call)
