"""Metrics in Prometheus' text format: rendered, configured, and scraped
over real HTTP from a running homeserver whose room is being resynced.

The scraped text is read by a parser written here from the format's rules,
line by line, so a rendering that only looks right to its own code fails.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from ranvier.config import (
    Config,
    ConfigError,
    DatabaseConfig,
    ListenerConfig,
)
from ranvier.federation.transport.server import Request, RouteMatch, Router
from ranvier.metrics import (
    CONTENT_TYPE,
    FAMILIES,
    MetricFamily,
    escape_label_value,
    render_metrics,
    sample_name,
)
from ranvier.server import HomeServer, open_homeserver
from ranvier.testing import Pki
from ranvier.testing.homeserver import federating_config

# --- The text format, read independently ------------------------------------------------

_SAMPLE = re.compile(r"(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)")
_LABEL = re.compile(r'(?P<name>[a-zA-Z_][a-zA-Z0-9_]*)="(?P<value>(?:[^"\\\n]|\\[\\"n])*)"')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}

Key = tuple[str, tuple[tuple[str, str], ...]]


@dataclasses.dataclass
class Exposition:
    """What a scrape said: each family's help and type, and every sample."""

    helps: dict[str, str]
    types: dict[str, str]
    samples: dict[Key, float]

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, tuple(sorted(labels.items())))]

    def of(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        return {labels: value for (family, labels), value in self.samples.items() if family == name}


def _labels(text: str) -> tuple[tuple[str, str], ...]:
    found: list[tuple[str, str]] = []
    position = 0
    while position < len(text):
        match = _LABEL.match(text, position)
        assert match is not None, f"bad labels at {text[position:]!r}"
        value = re.sub(r"\\[\\\"n]", lambda m: _UNESCAPE[m[0]], match["value"])
        found.append((match["name"], value))
        position = match.end()
        if position < len(text):
            assert text[position] == ",", text
            position += 1
    names = [name for name, _ in found]
    assert len(set(names)) == len(names), f"a label given twice in {text!r}"
    return tuple(sorted(found))


def parse_exposition(text: str) -> Exposition:
    """Read text format 0.0.4, asserting its rules on every line: HELP and
    TYPE at most once per family and before its samples, a family's samples
    together, each sample once, values that are numbers.
    """
    assert text.endswith("\n"), "the last line must end with a line feed"
    parsed = Exposition({}, {}, {})
    current: str | None = None
    done: set[str] = set()
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name, _, help_text = line.removeprefix("# HELP ").partition(" ")
            assert name not in parsed.helps, f"HELP of {name} twice"
            assert name not in done, f"HELP of {name} after its samples"
            parsed.helps[name] = help_text
            continue
        if line.startswith("# TYPE "):
            name, kind = line.removeprefix("# TYPE ").split(" ")
            assert kind in {"counter", "gauge", "histogram", "untyped"}, line
            assert name not in parsed.types, f"TYPE of {name} twice"
            if current is not None:
                done.add(current)
            parsed.types[name] = kind
            current = name
            continue
        assert not line.startswith("#"), line
        match = _SAMPLE.fullmatch(line)
        assert match is not None, f"not a sample line: {line!r}"
        name = match["name"]
        assert current is not None, f"{name} before any TYPE line"
        family = name
        if parsed.types[current] == "histogram":
            suffixes = ("_bucket", "_sum", "_count")
            assert name in {current + suffix for suffix in suffixes}, f"{name} in {current}"
            family = current
        assert family == current, f"{name} outside its family's block"
        key = (name, _labels(match["labels"] or ""))
        assert key not in parsed.samples, f"{line!r} repeats a sample"
        value = match["value"]
        assert re.fullmatch(r"[+-]?(\d+(\.\d*)?([eE][+-]?\d+)?|Inf)|NaN", value), line
        parsed.samples[key] = float(value)
    return parsed


# --- Rendering ------------------------------------------------------------------------


def test_a_rendering_line_by_line() -> None:
    families = (
        MetricFamily("a_rooms", "gauge", "Rooms.\nTwo lines, a \\ too."),
        MetricFamily("a_done_total", "counter", "Done."),
        MetricFamily("a_per_room", "gauge", "Per room."),
    )
    samples = {
        "a_done_total": 3,
        sample_name("a_per_room", room_id="!b:x"): 2.5,
        "a_rooms": True,
        sample_name("a_per_room", room_id="!a:x"): 7,
        "b_other": float("nan"),
        sample_name("b_other", kind="up"): float("inf"),
        sample_name("b_other", kind="down"): float("-inf"),
    }
    assert render_metrics(samples, families).decode().split("\n") == [
        "# HELP a_rooms Rooms.\\nTwo lines, a \\\\ too.",
        "# TYPE a_rooms gauge",
        "a_rooms 1",
        "# HELP a_done_total Done.",
        "# TYPE a_done_total counter",
        "a_done_total 3",
        "# HELP a_per_room Per room.",
        "# TYPE a_per_room gauge",
        'a_per_room{room_id="!b:x"} 2.5',
        'a_per_room{room_id="!a:x"} 7',
        "# TYPE b_other untyped",
        "b_other NaN",
        'b_other{kind="up"} +Inf',
        'b_other{kind="down"} -Inf',
        "",
    ]
    parsed = parse_exposition(render_metrics(samples, families).decode())
    assert parsed.types == {
        "a_rooms": "gauge",
        "a_done_total": "counter",
        "a_per_room": "gauge",
        "b_other": "untyped",
    }
    assert parsed.value("a_per_room", room_id="!a:x") == 7
    assert math.isnan(parsed.value("b_other"))


def test_a_family_without_samples_still_says_its_type() -> None:
    parsed = parse_exposition(render_metrics({}).decode())
    assert parsed.samples == {}
    assert parsed.types == {family.name: family.kind for family in FAMILIES}
    assert set(parsed.helps) == set(parsed.types)


@pytest.mark.parametrize(
    "room_id", ['!quote"d:x', "!back\\slash:x", "!new\nline:x", '!all\\"\n\\n:x', "!é:x"]
)
def test_label_values_are_escaped_and_read_back(room_id: str) -> None:
    name = sample_name("ranvier_resync_attempts", room_id=room_id)
    assert "\n" not in name
    parsed = parse_exposition(render_metrics({name: 4}).decode())
    assert parsed.value("ranvier_resync_attempts", room_id=room_id) == 4


def test_escaping_follows_the_format() -> None:
    assert escape_label_value('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    assert sample_name("x", room_id="!r", phase="walking") == 'x{room_id="!r",phase="walking"}'
    assert sample_name("x") == "x"


@pytest.mark.parametrize(
    ("family", "labels", "complaint"),
    [
        ("9lives", {}, "not a metric name"),
        ("a-b", {}, "not a metric name"),
        ("ok", {"bad-label": "v"}, "not a label name"),
        ("ok", {"__reserved": "v"}, "not a label name"),
    ],
)
def test_bad_names_are_refused(family: str, labels: dict[str, str], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        sample_name(family, **labels)


# --- Configuration --------------------------------------------------------------------


def test_a_metrics_listener_is_plain_http_on_loopback_by_default() -> None:
    config = Config.from_toml('[[listeners]]\ntype = "metrics"\nport = 9090\n')
    (listener,) = config.listeners
    assert listener == ListenerConfig(type="metrics", host="127.0.0.1", port=9090)
    assert listener.uses_tls is False


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        (
            '[[listeners]]\ntype = "metric"\nport = 9090',
            "listeners[0].type",
            "listeners[0].type: invalid value 'metric', expected one of 'client',"
            " 'federation', 'metrics', 'replication'",
        ),
        (
            '[[listeners]]\ntype = "metrics"',
            "listeners[0].port",
            "listeners[0].port: required key is missing",
        ),
        (
            '[[listeners]]\ntype = "metrics"\nport = 9090\npath = "/stats"',
            "listeners[0].path",
            "listeners[0].path: unknown key",
        ),
        (
            '[[listeners]]\ntype = "metrics"\nport = 9090\nhost = "localhost"',
            "listeners[0].host",
            "listeners[0].host: expected an IP address, got 'localhost'",
        ),
        (
            '[[listeners]]\ntype = "federation"\nport = 9090\n'
            '[[listeners]]\ntype = "metrics"\nport = 9090',
            "listeners[1]",
            "listeners[1]: 127.0.0.1 port 9090 is already used by listeners[0]",
        ),
    ],
)
def test_a_bad_metrics_listener_is_named(text: str, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_toml(text, source="ranvier.toml")
    assert info.value.key == key
    assert str(info.value) == f"ranvier.toml: {message}"


# --- Scraped from a running homeserver ------------------------------------------------------

_STATE_IDS = ("GET", "/_matrix/federation/v1/state_ids/{room_id}")


class _HeldStateIds(Router):
    """A resident's router that holds every ``/state_ids`` until released."""

    def __init__(self, inner: Router) -> None:
        super().__init__()
        self._inner = inner
        self.asked = trio.Event()
        self.release = trio.Event()

    def match(self, method: str, path: str) -> RouteMatch:
        found = self._inner.match(method, path)
        if (found.route.method, found.route.pattern) != _STATE_IDS:
            return found
        handler = found.route.handler

        async def held(request: Request) -> Any:
            self.asked.set()
            await self.release.wait()
            return await handler(request)

        return RouteMatch(dataclasses.replace(found.route, handler=held), found.params)


def _metrics_url(hs: HomeServer, path: str = "/metrics") -> str:
    (bound,) = [bound for bound in hs.listeners if bound.config.type == "metrics"]
    assert bound.scheme == "http"
    assert bound.port > 0
    return bound.url + path


async def _until(check: Callable[[], Any], what: str) -> None:
    with trio.move_on_after(20):
        while True:
            result = check()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await trio.sleep(0.01)
    raise AssertionError(f"gave up waiting for {what}")


async def _scrape(client: httpx.AsyncClient, hs: HomeServer) -> Exposition:
    response = await client.get(_metrics_url(hs))
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE
    return parse_exposition(response.text)


def _per_room(parsed: Exposition, names: Sequence[str]) -> dict[str, dict[Any, float]]:
    return {name: parsed.of(name) for name in names}


async def test_metrics_are_scraped_from_a_homeserver_while_a_room_resyncs(
    tmp_path: Path,
) -> None:
    pki = Pki.create(tmp_path)
    metrics = ListenerConfig(type="metrics", host="127.0.0.1", port=0)
    async with (
        open_homeserver(federating_config(tmp_path, pki, "a")) as a,
        open_homeserver(federating_config(tmp_path, pki, "b", metrics)) as b,
        httpx.AsyncClient(timeout=10) as client,
    ):
        held = _HeldStateIds(a.federation_app.router)
        a.federation_app.router = held
        alice, bob = f"@alice:{a.server_name}", f"@bob:{b.server_name}"
        room_id = await a.create_room(alice, preset="public_chat", name="resyncing")

        idle = await _scrape(client, b)
        assert idle.value("ranvier_resync_rooms") == 0
        assert idle.value("ranvier_resync_completed_total") == 0
        assert idle.of("ranvier_resync_attempts") == {}

        await b.join_room(bob, room_id, [a.server_name])
        assert await b.storage.is_partial_state_room(room_id)
        with trio.fail_after(20):
            await held.asked.wait()
        await _until(lambda: b.resync_status()[room_id].phase == "fetching", "the fetch")
        pending = len(await b.storage.get_partial_state_events(room_id))
        assert pending >= 1

        during = await _scrape(client, b)
        room = (("room_id", room_id),)
        assert {family.name: family.kind for family in FAMILIES}.items() <= during.types.items()
        assert during.value("ranvier_resync_rooms") == 1
        assert during.value("ranvier_resync_rooms_waiting") == 0
        assert during.value("ranvier_resync_completed_total") == 0
        assert during.value("ranvier_resync_stopped_total") == 0
        assert _per_room(during, ["ranvier_resync_phase"]) == {
            "ranvier_resync_phase": {(("phase", "fetching"), *room): 1}
        }
        assert _per_room(
            during,
            [
                "ranvier_resync_events_resynced",
                "ranvier_resync_events_remaining",
                "ranvier_resync_attempts",
            ],
        ) == {
            "ranvier_resync_events_resynced": {room: 0},
            "ranvier_resync_events_remaining": {room: pending},
            "ranvier_resync_attempts": {room: 1},
        }
        # The same progress is recorded for ranvier status.
        await _until(lambda: _recorded_phase(b, room_id, "fetching"), "the progress to be recorded")

        held.release.set()
        with trio.fail_after(20):
            await b.wait_for_full_state(room_id)
        await _until(lambda: room_id not in b.resync_status(), "the task to end")
        after = await _scrape(client, b)
        assert after.value("ranvier_resync_rooms") == 0
        assert after.value("ranvier_resync_completed_total") == 1
        assert after.of("ranvier_resync_attempts") == {}
        assert after.of("ranvier_resync_phase") == {}
        assert await b.storage.get_resync_progress() == {}

        # Only GET (and HEAD) /metrics.
        head = await client.head(_metrics_url(b))
        assert (head.status_code, head.content) == (200, b"")
        assert int(head.headers["content-length"]) > 0
        missing = await client.get(_metrics_url(b, "/_matrix/federation/v1/version"))
        assert missing.status_code == 404
        assert "/metrics" in missing.text
        posted = await client.post(_metrics_url(b), content=b"x")
        assert posted.status_code == 405
        assert posted.headers["allow"] == "GET, HEAD"


async def _recorded_phase(hs: HomeServer, room_id: str, phase: str) -> bool:
    row = (await hs.storage.get_resync_progress()).get(room_id)
    return row is not None and row.phase == phase


async def test_metrics_and_federation_keep_to_their_own_listeners(tmp_path: Path) -> None:
    # The federation API is not on the metrics port, nor metrics on the
    # federation port.
    config = Config(
        server_name="hs.test",
        data_dir=tmp_path,
        listeners=(
            ListenerConfig(type="federation", host="127.0.0.1", port=0, tls=False),
            ListenerConfig(type="metrics", host="127.0.0.1", port=0),
        ),
        database=DatabaseConfig(synchronous="OFF"),
    )
    async with open_homeserver(config) as hs, httpx.AsyncClient(timeout=10) as client:
        federation = f"http://127.0.0.1:{hs.federation_port}"
        on_federation = await client.get(federation + "/metrics")
        assert on_federation.status_code == 404
        assert on_federation.json()["errcode"] == "M_UNRECOGNIZED"
        version = await client.get(_metrics_url(hs, "/_matrix/federation/v1/version"))
        assert version.status_code == 404
        scraped = await _scrape(client, hs)
        assert scraped.value("ranvier_resync_rooms") == 0
