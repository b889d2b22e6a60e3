"""Fetching users' URLs over real HTTP on loopback: the address checks (on
the first URL, on every redirect, and on the address actually connected
to), the redirect, size and time limits, and the errors clients see."""

from __future__ import annotations

import gzip
import ssl
import zlib
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio

from ranvier.core.url_previews import FetchedUrl
from ranvier.errors import MatrixError
from ranvier.protocol.ip_ranges import DEFAULT_URL_PREVIEW_DENYLIST, AddressPolicy
from ranvier.testing.network import Pki, free_port
from ranvier.testing.web_pages import Page, WebPages
from ranvier.url_fetcher import MAX_REDIRECTS, USER_AGENT, Resolver, UrlFetcher, resolve_host

HTML = b"<title>hello</title>"
LOOPBACK_ALLOWED = AddressPolicy.from_strings(DEFAULT_URL_PREVIEW_DENYLIST, ["127.0.0.1"])
DEFAULT = AddressPolicy.from_strings(DEFAULT_URL_PREVIEW_DENYLIST)


def fetcher(
    policy: AddressPolicy = LOOPBACK_ALLOWED,
    *,
    max_bytes: int = 1024 * 1024,
    timeout: float = 10.0,
    resolve: Resolver = resolve_host,
    ssl_context: ssl.SSLContext | None = None,
) -> UrlFetcher:
    return UrlFetcher(
        policy=policy,
        max_bytes=max_bytes,
        timeout_seconds=timeout,
        resolve=resolve,
        ssl_context=ssl_context,
    )


def anything(content_type: str | None) -> bool:
    return True


async def refused(fetch: UrlFetcher, url: str, status: int, errcode: str) -> str:
    with pytest.raises(MatrixError) as info:
        await fetch.fetch(url, wanted=anything)
    assert (info.value.http_status, info.value.errcode) == (status, errcode), info.value.message
    assert info.value.message
    return info.value.message


@pytest.fixture
async def site(nursery: trio.Nursery) -> WebPages:
    pages = WebPages()
    await pages.start(nursery)
    return pages


async def test_a_page_is_fetched_with_its_type_and_a_user_agent(site: WebPages) -> None:
    site.pages["/page"] = Page(body=HTML)
    fetched = await fetcher().fetch(site.url("/page"), wanted=anything)
    assert fetched == FetchedUrl(site.url("/page"), "text/html; charset=utf-8", HTML)
    assert fetched.body == HTML
    assert site.requests[-1][1] == USER_AGENT
    assert "ranvier" in USER_AGENT


async def test_an_unwanted_type_is_not_read(site: WebPages) -> None:
    site.pages["/file.pdf"] = Page(body=b"%PDF", content_type="application/pdf")
    seen: list[str | None] = []

    def only_html(content_type: str | None) -> bool:
        seen.append(content_type)
        return False

    fetched = await fetcher().fetch(site.url("/file.pdf"), wanted=only_html)
    assert (fetched.content_type, fetched.body) == ("application/pdf", None)
    assert seen == ["application/pdf"]


async def test_the_default_denylist_refuses_loopback_before_any_request(site: WebPages) -> None:
    site.pages["/page"] = Page(body=HTML)
    message = await refused(fetcher(DEFAULT), site.url("/page"), 403, "M_FORBIDDEN")
    assert "127.0.0.1" in message
    port = site.base_url.rpartition(":")[2]
    await refused(fetcher(DEFAULT), f"http://localhost:{port}/page", 403, "M_FORBIDDEN")
    await refused(fetcher(DEFAULT), f"http://[::ffff:127.0.0.1]:{port}/page", 403, "M_FORBIDDEN")
    assert site.hits["/page"] == 0


@pytest.mark.parametrize("host", ["2130706433", "0x7f000001", "127.1"])
async def test_loopback_spelt_otherwise_is_judged_by_the_address_it_reaches(
    site: WebPages, host: str
) -> None:
    site.pages["/page"] = Page(body=HTML)
    port = site.base_url.rpartition(":")[2]
    url = f"http://{host}:{port}/page"
    await refused(fetcher(DEFAULT), url, 403, "M_FORBIDDEN")
    assert site.hits["/page"] == 0
    # Allowed, the same spelling reaches the site on 127.0.0.1.
    assert (await fetcher().fetch(url, wanted=anything)).body == HTML


@pytest.mark.parametrize("address", ["10.0.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1"])
async def test_private_ranges_are_refused_without_connecting(address: str) -> None:
    # None of these is reachable here: a connection attempt would hang
    # until the timeout, not answer 403.
    message = await refused(fetcher(timeout=600), f"http://{address}/", 403, "M_FORBIDDEN")
    assert "may not fetch" in message


async def test_one_denied_address_among_those_of_a_host_refuses_it(site: WebPages) -> None:
    site.pages["/page"] = Page(body=HTML)
    port = site.base_url.rpartition(":")[2]

    async def resolve(host: str, port: int) -> Sequence[str]:
        return ["127.0.0.1", "10.1.2.3"]

    await refused(fetcher(resolve=resolve), f"http://mixed.test:{port}/page", 403, "M_FORBIDDEN")
    assert site.hits["/page"] == 0


async def test_the_address_checked_is_the_one_connected_to(site: WebPages) -> None:
    """DNS rebinding: a name the system cannot resolve is reached through
    the one answer the check saw, and asked for once per connection."""
    site.pages["/page"] = Page(body=HTML)
    port = int(site.base_url.rpartition(":")[2])
    asked: list[tuple[str, int]] = []

    async def resolve(host: str, port: int) -> Sequence[str]:
        asked.append((host, port))
        # A second answer would be a private address the check never saw.
        return ["127.0.0.1"] if len(asked) == 1 else ["10.9.9.9"]

    fetched = await fetcher(resolve=resolve).fetch(
        f"http://rebind.test:{port}/page", wanted=anything
    )
    assert fetched.body == HTML
    assert asked == [("rebind.test", port)]
    assert site.requests[-1][0] == f"rebind.test:{port}"


async def test_redirects_are_followed_each_checked(site: WebPages) -> None:
    site.pages["/a"] = Page(status=301, headers=(("location", "/b"),), content_type=None)
    site.pages["/b"] = Page(status=307, headers=(("location", site.url("/page")),))
    site.pages["/page"] = Page(body=HTML)
    fetched = await fetcher().fetch(site.url("/a"), wanted=anything)
    assert (fetched.url, fetched.body) == (site.url("/page"), HTML)
    assert (site.hits["/a"], site.hits["/b"], site.hits["/page"]) == (1, 1, 1)


@pytest.mark.parametrize(
    "target", ["http://10.0.0.1/admin", "http://169.254.169.254/latest/meta-data/", "http://[::1]/"]
)
async def test_a_redirect_to_a_denied_address_is_refused(site: WebPages, target: str) -> None:
    site.pages["/go"] = Page(status=302, headers=(("location", target),))
    await refused(fetcher(timeout=600), site.url("/go"), 403, "M_FORBIDDEN")
    assert site.hits["/go"] == 1


async def test_a_redirect_away_from_http_is_refused(site: WebPages) -> None:
    site.pages["/go"] = Page(status=302, headers=(("location", "file:///etc/passwd"),))
    message = await refused(fetcher(), site.url("/go"), 502, "M_UNKNOWN")
    assert "redirected" in message


async def test_redirects_stop_after_a_few(site: WebPages) -> None:
    site.pages["/loop"] = Page(status=302, headers=(("location", "/loop"),))
    message = await refused(fetcher(), site.url("/loop"), 502, "M_UNKNOWN")
    assert "redirects" in message
    assert site.hits["/loop"] == MAX_REDIRECTS + 1


async def test_an_error_status_is_a_bad_gateway(site: WebPages) -> None:
    message = await refused(fetcher(), site.url("/missing"), 502, "M_UNKNOWN")
    assert "404" in message


@pytest.mark.parametrize("declare_length", [True, False])
async def test_a_body_over_the_limit_is_cut_off(site: WebPages, declare_length: bool) -> None:
    # 64 MiB on offer, 1 MiB read at most.
    site.pages["/huge"] = Page(body=b"x" * 65536, repeat=1024, declare_length=declare_length)
    message = await refused(fetcher(), site.url("/huge"), 502, "M_TOO_LARGE")
    assert str(1024 * 1024) in message


async def test_a_body_at_the_limit_is_read_whole(site: WebPages) -> None:
    site.pages["/exact"] = Page(body=b"y" * 1024, repeat=4, declare_length=False)
    fetched = await fetcher(max_bytes=4096).fetch(site.url("/exact"), wanted=anything)
    assert fetched.body == b"y" * 4096


async def test_a_compressed_body_is_unpacked_within_the_limit(site: WebPages) -> None:
    site.pages["/gzip"] = Page(body=gzip.compress(HTML), headers=(("content-encoding", "gzip"),))
    site.pages["/deflate"] = Page(
        body=zlib.compress(HTML), headers=(("content-encoding", "deflate"),)
    )
    for path in ("/gzip", "/deflate"):
        assert (await fetcher().fetch(site.url(path), wanted=anything)).body == HTML
    # 64 MiB of zeros sent as some 64 KiB.
    bomb = gzip.compress(bytes(64 * 1024 * 1024))
    assert len(bomb) < 1024 * 1024
    site.pages["/bomb"] = Page(body=bomb, headers=(("content-encoding", "gzip"),))
    await refused(fetcher(), site.url("/bomb"), 502, "M_TOO_LARGE")
    site.pages["/cut"] = Page(body=bomb[:1000], headers=(("content-encoding", "gzip"),))
    assert "cut short" in await refused(fetcher(), site.url("/cut"), 502, "M_UNKNOWN")
    site.pages["/junk"] = Page(body=b"not gzip", headers=(("content-encoding", "gzip"),))
    assert "unpack" in await refused(fetcher(), site.url("/junk"), 502, "M_UNKNOWN")
    site.pages["/br"] = Page(body=b"\x0b", headers=(("content-encoding", "br"),))
    assert "'br'" in await refused(fetcher(), site.url("/br"), 502, "M_UNKNOWN")


async def test_a_page_too_slow_times_out(site: WebPages) -> None:
    site.pages["/slow"] = Page(stall=True)
    message = await refused(fetcher(timeout=0.5), site.url("/slow"), 502, "M_UNKNOWN")
    assert "longer than 0.5 s" in message
    assert site.hits["/slow"] == 1


async def test_nothing_listening_is_a_bad_gateway() -> None:
    message = await refused(fetcher(), f"http://127.0.0.1:{free_port()}/", 502, "M_UNKNOWN")
    assert "could not reach 127.0.0.1" in message


@pytest.mark.parametrize(
    "url", ["ftp://example.org/", "file:///etc/passwd", "http://", "not a url", "javascript:x"]
)
async def test_only_http_urls_are_fetched(url: str) -> None:
    await refused(fetcher(), url, 400, "M_INVALID_PARAM")


async def test_https_is_verified_against_the_name_while_connecting_to_the_address(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    pki = Pki.create(tmp_path, names=("site.test",))
    site = WebPages(pages={"/page": Page(body=HTML)})
    base = await site.start(nursery, ssl_context=pki.server_context())
    port = base.rpartition(":")[2]

    async def resolve(host: str, port: int) -> Sequence[str]:
        return ["127.0.0.1"]

    fetch = fetcher(resolve=resolve, ssl_context=pki.client_context())
    fetched = await fetch.fetch(f"https://site.test:{port}/page", wanted=anything)
    assert fetched.body == HTML
    # The certificate names site.test, not the address: asked by address,
    # the same server is refused.
    message = await refused(fetch, f"https://127.0.0.1:{port}/page", 502, "M_UNKNOWN")
    assert "127.0.0.1" in message


async def test_the_system_resolver_gives_each_address_once() -> None:
    assert await resolve_host("127.0.0.1", 80) == ["127.0.0.1"]
    assert "127.0.0.1" in await resolve_host("localhost", 80)
