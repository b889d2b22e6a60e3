"""The few HTML pages the client API serves to a browser rather than to a
client: single sign-on's confirmation and errors, and the page an e-mail's
confirmation link opens.

Each is a whole page built here, escaped here, and sent with headers that
keep it out of frames and caches and let it load nothing else: a page that
hands over or confirms credentials must not be framed by another site
(clickjacking), kept by a shared cache, or leak its URL as a referrer.
"""

from __future__ import annotations

import html
from collections.abc import AsyncGenerator
from typing import Final

from ranvier.web import StreamResponse

__all__ = ["NO_STORE", "html_page"]

#: Kept by no cache: what these pages and redirects carry is for one browser once.
NO_STORE: Final = ("cache-control", "no-store")

_PAGE_HEADERS: Final = (
    ("content-type", "text/html; charset=utf-8"),
    NO_STORE,
    ("x-frame-options", "DENY"),
    ("content-security-policy", "default-src 'none'; frame-ancestors 'none'"),
    ("referrer-policy", "no-referrer"),
)


def html_page(status: int, title: str, body_html: str) -> StreamResponse:
    """A page titled ``title`` (escaped here) around ``body_html``, which
    the caller has escaped."""
    text = (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title></head>\n"
        f"<body><h1>{html.escape(title)}</h1>\n{body_html}\n</body></html>\n"
    ).encode()

    async def body() -> AsyncGenerator[bytes, None]:
        yield text

    return StreamResponse(status, [*_PAGE_HEADERS, ("content-length", str(len(text)))], body)
