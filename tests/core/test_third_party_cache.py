"""The cache of protocols' metadata in third-party lookups, on Trio's mock
clock: how long an answer and a failure are kept, how many, one ask shared
by every request that waits for it, and the networks a service reports."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from ranvier.core.appservices import AppService, AppServices, load_app_services
from ranvier.core.appservices import AppServiceUnavailableError as Unavailable
from ranvier.core.third_party import (
    FAILURE_CACHE_S,
    PROTOCOL_CACHE_S,
    ThirdPartyLookups,
)
from ranvier.errors import MatrixError


def _registration(service_id: str, protocols: list[str]) -> str:
    return (
        f"id: {service_id}\nurl: http://127.0.0.1:9\nas_token: as-{service_id}\n"
        f"hs_token: hs-{service_id}\nsender_localpart: _{service_id}\nnamespaces: {{}}\n"
        f"protocols: {protocols}\n"
    )


def _services(tmp_path: Path, **protocols: list[str]) -> AppServices:
    paths = []
    for service_id, declared in protocols.items():
        path = tmp_path / f"{service_id}.yaml"
        path.write_text(_registration(service_id, declared), encoding="utf-8")
        paths.append(path)
    return load_app_services(paths, "example.org")


def _metadata(*network_ids: str) -> dict[str, Any]:
    return {
        "instances": [{"desc": n, "network_id": n, "fields": {}} for n in network_ids],
        "user_fields": [],
        "location_fields": [],
    }


class _Services:
    """Answers each ``(service ID, path)`` from :attr:`answers`: a dict is
    a good answer, None a failure. While :attr:`held` is set, every ask
    waits for it."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, str], dict[str, Any] | None] = {}
        self.asked: list[tuple[str, str]] = []
        self.held: trio.Event | None = None

    async def query_third_party(
        self, service: AppService, path: str, params: Sequence[tuple[str, str]]
    ) -> Any:
        self.asked.append((service.id, path))
        if self.held is not None:
            await self.held.wait()
        answer = self.answers.get((service.id, path))
        if answer is None:
            raise Unavailable(f"{service.id} answered {path} with 500")
        return answer


async def test_an_answer_is_kept_for_its_time(tmp_path: Path, autojump_clock: Any) -> None:
    client = _Services()
    client.answers["a", "protocol/irc"] = _metadata("libera")
    lookups = ThirdPartyLookups(_services(tmp_path, a=["irc"]), client)  # type: ignore[arg-type]
    first = await lookups.protocol("irc")
    assert first["instances"][0]["instance_id"] == "a|libera"
    await trio.sleep(PROTOCOL_CACHE_S - 1)
    assert await lookups.protocols() == {"irc": first}
    assert await lookups.protocol("irc") == first
    assert client.asked == [("a", "protocol/irc")]
    # Past its time the service is asked again, and its new answer shown.
    client.answers["a", "protocol/irc"] = _metadata("libera", "oftc")
    await trio.sleep(2)
    again = await lookups.protocol("irc")
    assert [i["network_id"] for i in again["instances"]] == ["libera", "oftc"]
    assert client.asked == [("a", "protocol/irc")] * 2


async def test_a_failure_is_kept_only_briefly(tmp_path: Path, autojump_clock: Any) -> None:
    client = _Services()
    lookups = ThirdPartyLookups(_services(tmp_path, a=["irc"]), client)  # type: ignore[arg-type]
    for _ in range(3):
        with pytest.raises(MatrixError) as raised:
            await lookups.protocol("irc")
        assert raised.value.errcode == "M_NOT_FOUND"
    assert await lookups.protocols() == {}
    assert len(client.asked) == 1
    client.answers["a", "protocol/irc"] = _metadata("libera")
    await trio.sleep(FAILURE_CACHE_S - 1)
    with pytest.raises(MatrixError):
        await lookups.protocol("irc")
    assert len(client.asked) == 1
    await trio.sleep(2)
    assert (await lookups.protocol("irc"))["instances"][0]["network_id"] == "libera"
    assert len(client.asked) == 2
    assert FAILURE_CACHE_S < PROTOCOL_CACHE_S


async def test_a_service_that_does_not_answer_is_asked_once_per_burst(
    tmp_path: Path, autojump_clock: Any
) -> None:
    client = _Services()
    client.held = trio.Event()  # never set: the service never answers
    lookups = ThirdPartyLookups(_services(tmp_path, a=["irc"]), client)  # type: ignore[arg-type]
    started = trio.current_time()
    refusals: list[str] = []

    async def ask() -> None:
        with pytest.raises(MatrixError) as raised:
            await lookups.protocol("irc")
        refusals.append(raised.value.errcode)

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(ask)
    # All five waited out the one ask's timeout together.
    assert refusals == ["M_NOT_FOUND"] * 5
    assert trio.current_time() - started == pytest.approx(lookups.timeout_s)
    assert len(client.asked) == 1


async def test_waiters_share_one_ask_and_outlive_its_cancellation(
    tmp_path: Path, autojump_clock: Any
) -> None:
    client = _Services()
    client.answers["a", "protocol/irc"] = _metadata("libera")
    client.held = trio.Event()
    lookups = ThirdPartyLookups(_services(tmp_path, a=["irc"]), client)  # type: ignore[arg-type]
    shown: list[dict[str, Any]] = []

    async def ask() -> None:
        shown.append(await lookups.protocol("irc"))

    first = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_cancellable, first, lookups)
        await trio.testing.wait_all_tasks_blocked()
        for _ in range(3):
            nursery.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked()
        assert len(client.asked) == 1
        # The one asking gives up: one of those waiting asks in its place.
        first.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert len(client.asked) == 2
        client.held.set()
    assert len(shown) == 3
    assert all(answer == shown[0] for answer in shown)
    assert len(client.asked) == 2


async def _cancellable(scope: trio.CancelScope, lookups: ThirdPartyLookups) -> None:
    with scope:
        await lookups.protocol("irc")


async def test_the_cache_is_bounded_least_recently_used_first(
    tmp_path: Path, autojump_clock: Any
) -> None:
    client = _Services()
    protocols = ["irc", "xmpp", "gitter"]
    for protocol in protocols:
        client.answers["a", f"protocol/{protocol}"] = _metadata(protocol)
    lookups = ThirdPartyLookups(
        _services(tmp_path, a=protocols),
        client,  # type: ignore[arg-type]
        cache_entries=2,
    )
    await lookups.protocol("irc")
    await lookups.protocol("xmpp")
    await lookups.protocol("irc")  # irc used last: xmpp goes first
    await lookups.protocol("gitter")
    assert len(client.asked) == 3
    await lookups.protocol("irc")
    assert len(client.asked) == 3
    await lookups.protocol("xmpp")
    assert client.asked[-1] == ("a", "protocol/xmpp")
    assert len(client.asked) == 4
