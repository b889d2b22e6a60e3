"""The few HTML pages the client API serves to a browser rather than to a
client: single sign-on's confirmation and errors, user-interactive
authentication's single sign-on fallback, and the page an e-mail's
confirmation link opens.

Each is a whole page built here, escaped here, and sent with headers that
keep it out of frames and caches and let it load nothing else: a page that
hands over or confirms credentials must not be framed by another site
(clickjacking), kept by a shared cache, or leak its URL as a referrer.
"""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import AsyncGenerator, Sequence
from typing import Final

from ranvier.web import StreamResponse

__all__ = ["NO_STORE", "html_page"]

#: Kept by no cache: what these pages and redirects carry is for one browser once.
NO_STORE: Final = ("cache-control", "no-store")

_PAGE_HEADERS: Final = (
    ("content-type", "text/html; charset=utf-8"),
    NO_STORE,
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
)
_POLICY: Final = "default-src 'none'; frame-ancestors 'none'"


def html_page(
    status: int,
    title: str,
    body_html: str,
    *,
    script: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
) -> StreamResponse:
    """A page titled ``title`` (escaped here) around ``body_html``, which
    the caller has escaped. ``script``, the page's one inline script, is
    allowed by its hash and nothing else is; ``headers`` are sent as well
    (a cookie)."""
    policy = _POLICY
    scripts = ""
    if script is not None:
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        policy += f"; script-src 'sha256-{digest}'"
        scripts = f"\n<script>{script}</script>"
    text = (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title></head>\n"
        f"<body><h1>{html.escape(title)}</h1>\n{body_html}{scripts}\n</body></html>\n"
    ).encode()

    async def body() -> AsyncGenerator[bytes, None]:
        yield text

    return StreamResponse(
        status,
        [
            *_PAGE_HEADERS,
            ("content-security-policy", policy),
            *headers,
            ("content-length", str(len(text))),
        ],
        body,
    )
