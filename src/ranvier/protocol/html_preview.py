"""What a web page says about itself, for a URL preview: its OpenGraph
``og:*`` tags, or failing those its ``<title>``, meta description and
first image large enough to mean something.

No I/O here: the page's bytes come in, a dictionary of strings goes out.
The caller fetches the page and any image it names.

Invariants
----------

* **Every URL given back is absolute and http or https**, resolved against
  the page's ``<base href>`` or its own URL; anything else (``data:``,
  ``javascript:``) is dropped rather than fetched or shown.
* **Values are bounded**: whitespace runs are collapsed, and a value or a
  key too long to be a title or a URL is dropped, so a hostile page cannot
  make the stored preview large.
"""

from __future__ import annotations

import codecs
import re
import urllib.parse
from html.parser import HTMLParser
from typing import Final

from .numbers import is_decimal_number

__all__ = ["MAX_KEY_CHARS", "MAX_VALUE_CHARS", "decode_html", "html_preview"]

#: Longer keys are dropped: no OpenGraph property is anywhere near this.
MAX_KEY_CHARS: Final = 64
#: Longer values are dropped: a description is a few sentences.
MAX_VALUE_CHARS: Final = 2000
#: Declared widths or heights below this are icons, spacers and trackers.
_MIN_IMAGE_SIDE: Final = 32
#: The HTML standard looks for a ``<meta charset>`` in the first 1024 bytes.
_PRESCAN_BYTES: Final = 1024
# The page is handed to the parser in pieces, so that parsing stops once
# everything a preview shows has been found.
_FEED_CHARS: Final = 64 * 1024
_META_CHARSET: Final = re.compile(rb"<meta[^>]*?charset\s*=\s*[\"']?\s*([A-Za-z0-9_.:-]+)", re.I)
_HEADER_CHARSET: Final = re.compile(r"charset\s*=\s*[\"']?([A-Za-z0-9_.:-]+)", re.I)
# Where an image's address may be given, in order of preference.
_IMAGE_KEYS: Final = ("og:image", "og:image:url", "og:image:secure_url")


def decode_html(body: bytes, content_type: str | None) -> str:
    """The page as text: in the charset its byte order mark, its
    ``Content-Type`` header or its ``<meta>`` names, else UTF-8 if it is
    valid UTF-8, else Windows-1252 (what browsers assume)."""
    for bom, encoding in (
        (codecs.BOM_UTF8, "utf-8"),
        (codecs.BOM_UTF16_LE, "utf-16-le"),
        (codecs.BOM_UTF16_BE, "utf-16-be"),
    ):
        if body.startswith(bom):
            return body[len(bom) :].decode(encoding, errors="replace")
    declared: list[str] = []
    header = _HEADER_CHARSET.search(content_type or "")
    if header is not None:
        declared.append(header[1])
    meta = _META_CHARSET.search(body[:_PRESCAN_BYTES])
    if meta is not None:
        # A page that could be read to find this is not UTF-16, whatever it says.
        name = meta[1].decode("ascii").lower()
        declared.append("utf-8" if name.startswith("utf-16") else name)
    for name in declared:
        try:
            return body.decode(name, errors="replace")
        except (LookupError, ValueError):
            continue  # an unknown or non-text codec name
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return body.decode("windows-1252", errors="replace")


def html_preview(body: bytes, *, content_type: str | None, page_url: str) -> dict[str, str]:
    """The preview of the HTML page ``body`` fetched from ``page_url``
    (after redirects): its ``og:*`` properties, with ``og:title``,
    ``og:description`` and ``og:image`` filled from the page's other
    content where it has no tag for them. ``og:image`` is an absolute URL
    still to be fetched."""
    text = decode_html(body, content_type)
    parser = _PreviewParser()
    for start in range(0, len(text), _FEED_CHARS):
        parser.feed(text[start : start + _FEED_CHARS])
        if parser.has_everything():
            break
    parser.close()
    return parser.preview(page_url)


class _PreviewParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.properties: dict[str, str] = {}
        self.description: str | None = None
        self.title: str | None = None
        self.first_image: str | None = None
        self.base: str | None = None
        self._title_parts: list[str] | None = None
        # Titles inside inline SVG name drawings, not the page.
        self._svg_depth = 0

    def has_everything(self) -> bool:
        props = self.properties
        return (
            "og:title" in props
            and "og:description" in props
            and any(key in props for key in _IMAGE_KEYS)
        )

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value for name, value in attrs if value is not None}
        if tag == "svg":
            self._svg_depth += 1
        elif tag == "meta":
            self._meta(values)
        elif tag == "title" and self.title is None and self._svg_depth == 0:
            self._title_parts = []
        elif tag == "base" and self.base is None and "href" in values:
            self.base = values["href"]
        elif tag == "img" and self.first_image is None and _large_enough(values):
            source = values.get("src", "").strip()
            if source:
                self.first_image = source

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg" and self._svg_depth:
            self._svg_depth -= 1
        elif tag == "title" and self._title_parts is not None:
            self.title = "".join(self._title_parts)
            self._title_parts = None

    def handle_data(self, data: str) -> None:
        if self._title_parts is not None:
            self._title_parts.append(data)

    def _meta(self, values: dict[str, str]) -> None:
        content = values.get("content")
        if content is None:
            return
        key = (values.get("property") or values.get("name") or "").strip().lower()
        if key.startswith("og:"):
            # The first of a repeated property is the page's main one.
            self.properties.setdefault(key, content)
        elif key == "description" and self.description is None:
            self.description = content

    def preview(self, page_url: str) -> dict[str, str]:
        found: dict[str, str] = {}
        for key, value in self.properties.items():
            if key not in _IMAGE_KEYS:
                found[key] = _clean(value)
        if "og:title" not in found and self.title is not None:
            found["og:title"] = _clean(self.title)
        if "og:description" not in found and self.description is not None:
            found["og:description"] = _clean(self.description)
        base = urllib.parse.urljoin(page_url, self.base) if self.base else page_url
        candidates = [self.properties.get(key) for key in _IMAGE_KEYS]
        for candidate in [*candidates, self.first_image]:
            image = _absolute_url(base, candidate)
            if image is not None:
                found["og:image"] = image
                break
        return {
            key: value
            for key, value in found.items()
            if value and len(key) <= MAX_KEY_CHARS and len(value) <= MAX_VALUE_CHARS
        }


def _large_enough(values: dict[str, str]) -> bool:
    for side in ("width", "height"):
        declared = values.get(side, "").strip().removesuffix("px")
        if is_decimal_number(declared) and int(declared) < _MIN_IMAGE_SIDE:
            return False
    return True


def _clean(value: str) -> str:
    return " ".join(value.split())


def _absolute_url(base: str, reference: str | None) -> str | None:
    if reference is None or not reference.strip():
        return None
    try:
        url = urllib.parse.urljoin(base, reference.strip())
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return urllib.parse.urlunsplit(parts._replace(fragment=""))
