"""A page's preview from its HTML: OpenGraph tags, the fallbacks, URLs
made absolute, charsets."""

from __future__ import annotations

import pytest

from ranvier.protocol.html_preview import MAX_VALUE_CHARS, decode_html, html_preview

PAGE = "https://example.org/blog/post.html"


def preview(html: str | bytes, content_type: str = "text/html") -> dict[str, str]:
    body = html.encode() if isinstance(html, str) else html
    return html_preview(body, content_type=content_type, page_url=PAGE)


def test_opengraph_tags_are_the_preview() -> None:
    found = preview(
        """<!doctype html><html><head>
        <title>Window title</title>
        <meta name="description" content="plain description">
        <meta property="og:title" content="The  post&amp;title">
        <meta property="og:description" content="What it is about">
        <meta property="og:image" content="/images/card.png">
        <meta property="og:image:width" content="1200">
        <meta property="og:type" content="article">
        <meta property="og:site_name" content="Example">
        </head><body><img src="/other.png"></body></html>"""
    )
    assert found == {
        "og:title": "The post&title",
        "og:description": "What it is about",
        "og:image": "https://example.org/images/card.png",
        "og:image:width": "1200",
        "og:type": "article",
        "og:site_name": "Example",
    }


def test_without_opengraph_the_title_description_and_first_image_serve() -> None:
    found = preview(
        """<html><head><title>
             A plain
             page </title>
        <meta name="Description" content="  Nothing   special. ">
        </head><body>
        <img src="spacer.gif" width="1" height="1">
        <img src="icon.png" width="16px">
        <img src="photos/cat.jpg" width="640">
        <img src="photos/dog.jpg">
        </body></html>"""
    )
    assert found == {
        "og:title": "A plain page",
        "og:description": "Nothing special.",
        "og:image": "https://example.org/blog/photos/cat.jpg",
    }


def test_the_first_of_repeated_properties_wins_and_tags_beat_fallbacks() -> None:
    found = preview(
        """<title>fallback</title>
        <meta property="og:title" content="first">
        <meta property="og:title" content="second">
        <meta name="description" content="fallback description">
        <meta property="OG:Description" content="tagged">"""
    )
    assert found == {"og:title": "first", "og:description": "tagged"}


def test_a_base_href_resolves_relative_images() -> None:
    found = preview(
        '<base href="https://cdn.example.net/assets/"><meta property="og:image" content="a.png">'
    )
    assert found["og:image"] == "https://cdn.example.net/assets/a.png"


@pytest.mark.parametrize(
    "source",
    ["data:image/png;base64,AAAA", "javascript:alert(1)", "ftp://example.org/a.png", "   "],
)
def test_images_that_are_not_http_urls_are_dropped(source: str) -> None:
    found = preview(f'<meta property="og:image" content="{source}"><title>t</title>')
    assert found == {"og:title": "t"}


def test_a_secure_url_serves_when_og_image_is_missing() -> None:
    found = preview('<meta property="og:image:secure_url" content="https://img.example/x.png#y">')
    assert found == {"og:image": "https://img.example/x.png"}


def test_titles_of_inline_drawings_are_not_the_pages() -> None:
    found = preview("<svg><title>an icon</title></svg><title>The page</title>")
    assert found == {"og:title": "The page"}


def test_overlong_values_and_empty_ones_are_dropped() -> None:
    found = preview(
        f'<meta property="og:title" content="{"x" * (MAX_VALUE_CHARS + 1)}">'
        '<meta property="og:description" content="   ">'
        f'<meta property="og:{"k" * 80}" content="v">'
        '<meta property="og:locale" content="en_GB">'
    )
    assert found == {"og:locale": "en_GB"}


def test_a_page_without_anything_has_an_empty_preview() -> None:
    assert preview("<html><body><p>hello</p></body></html>") == {}
    assert preview(b"") == {}
    assert preview("<<<>>><meta content=>&&&<title") == {}


def test_the_header_charset_decodes_the_page() -> None:
    body = "<title>Café Zürich</title>".encode("iso-8859-1")
    assert preview(body, "text/html; charset=ISO-8859-1") == {"og:title": "Café Zürich"}


def test_a_meta_charset_decodes_the_page() -> None:
    body = '<meta charset="windows-1251"><title>Привет</title>'.encode("windows-1251")
    assert preview(body) == {"og:title": "Привет"}
    body = (
        '<meta http-equiv="Content-Type" content="text/html; charset=koi8-r"><title>Привет</title>'
    ).encode("koi8-r")
    assert preview(body) == {"og:title": "Привет"}


def test_without_a_charset_utf8_is_tried_then_windows_1252() -> None:
    assert decode_html("naïve €".encode(), None) == "naïve €"
    assert decode_html("naïve €".encode("windows-1252"), None) == "naïve €"


def test_a_byte_order_mark_wins_and_unknown_charsets_are_ignored() -> None:
    assert decode_html(b"\xef\xbb\xbfcaf\xc3\xa9", "text/html; charset=latin-1") == "café"
    assert decode_html("hé".encode("utf-16-le").join([b"\xff\xfe", b""]), None) == "hé"
    assert decode_html("café".encode(), "text/html; charset=no-such-codec") == "café"
    assert decode_html("café".encode(), "text/html; charset=base64") == "café"
    # A page that declares UTF-16 in ASCII bytes cannot be UTF-16.
    assert decode_html('<meta charset="utf-16">é'.encode(), None).endswith("é")


def test_parsing_stops_once_everything_is_found() -> None:
    head = (
        '<meta property="og:title" content="t"><meta property="og:description" content="d">'
        '<meta property="og:image" content="/i.png">'
    )
    # A property far into the page, after everything was found, is never reached.
    found = preview(head + "<p>filler</p>" * 20_000 + '<meta property="og:late" content="x">')
    assert found == {
        "og:title": "t",
        "og:description": "d",
        "og:image": "https://example.org/i.png",
    }
