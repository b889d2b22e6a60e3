"""The content repository's rules that need no I/O: media IDs, how media is
served (``Content-Disposition``), the federation's ``multipart/mixed``
answer, and which thumbnail size a request gets.

The spec's "Content repository" module (client-server API) and the
server-server API's media endpoints are the authority for all of it.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from typing import Final, Literal

from ranvier.protocol.x_matrix import split_server_name

__all__ = [
    "INLINE_CONTENT_TYPES",
    "SECURITY_HEADERS",
    "MultipartAnswer",
    "ThumbnailMethod",
    "ThumbnailSize",
    "content_disposition",
    "disposition_filename",
    "is_media_id",
    "is_server_name",
    "multipart_head",
    "multipart_tail",
    "parse_multipart",
    "thumbnail_size",
]

ThumbnailMethod = Literal["crop", "scale"]

_MEDIA_ID: Final = re.compile(r"[A-Za-z0-9_-]+")

#: The types the spec allows to be served ``inline``: a browser renders
#: them as what they claim to be, never as a page that runs scripts.
INLINE_CONTENT_TYPES: Final = frozenset(
    {
        "text/css",
        "text/plain",
        "text/csv",
        "application/json",
        "application/ld+json",
        "image/jpeg",
        "image/gif",
        "image/png",
        "image/apng",
        "image/webp",
        "image/avif",
        "video/mp4",
        "video/webm",
        "video/ogg",
        "video/quicktime",
        "audio/mp4",
        "audio/webm",
        "audio/aac",
        "audio/mpeg",
        "audio/ogg",
        "audio/wave",
        "audio/wav",
        "audio/x-wav",
        "audio/x-pn-wav",
        "audio/flac",
        "audio/x-flac",
    }
)

#: Served with every piece of media, as the spec recommends: a page that
#: slips through still cannot run scripts or load anything.
SECURITY_HEADERS: Final = (
    (
        "content-security-policy",
        "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf;"
        " style-src 'unsafe-inline'; object-src 'self';",
    ),
    ("cross-origin-resource-policy", "cross-origin"),
)


def is_media_id(value: str) -> bool:
    """Whether ``value`` is a media ID the spec allows: letters, digits,
    ``_`` and ``-`` only, so that it can never walk out of a directory."""
    return _MEDIA_ID.fullmatch(value) is not None


def is_server_name(value: str) -> bool:
    """Whether ``value`` is a valid server name (the appendices' grammar)."""
    try:
        split_server_name(value)
    except ValueError:
        return False
    return True


def content_disposition(content_type: str | None, filename: str | None) -> str:
    """The ``Content-Disposition`` to serve media with: ``inline`` only for
    the types the spec lists as safe, ``attachment`` for the rest, and the
    file name when there is one (RFC 6266: quoted when it is plain ASCII,
    ``filename*`` with UTF-8 percent-encoding otherwise)."""
    essence = (content_type or "").partition(";")[0].strip().lower()
    disposition = "inline" if essence in INLINE_CONTENT_TYPES else "attachment"
    if not filename:
        return disposition
    if filename.isascii() and filename.isprintable():
        quoted = filename.replace("\\", "\\\\").replace('"', '\\"')
        return f'{disposition}; filename="{quoted}"'
    return f"{disposition}; filename*=utf-8''{urllib.parse.quote(filename, safe='')}"


def disposition_filename(header: str | None) -> str | None:
    """The file name a ``Content-Disposition`` header gives, or None.

    ``filename*`` (RFC 5987, UTF-8 or ISO-8859-1) wins over ``filename``;
    a value that cannot be decoded is left out rather than guessed at.
    """
    if not header:
        return None
    plain: str | None = None
    for name, value in _parameters(header):
        if name == "filename*":
            charset, _, rest = value.partition("'")
            _, _, encoded = rest.partition("'")
            if charset.lower() not in ("utf-8", "iso-8859-1"):
                continue
            try:
                return urllib.parse.unquote(encoded, encoding=charset.lower(), errors="strict")
            except UnicodeDecodeError:
                continue
        elif name == "filename":
            plain = value
    return plain or None


def _parameters(header: str) -> list[tuple[str, str]]:
    """A header's ``name=value`` parameters after its first ``;``, quoted
    strings unquoted."""
    found: list[tuple[str, str]] = []
    for match in re.finditer(r';\s*([^\s=;]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;]*))', header):
        quoted, bare = match[2], match[3]
        value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare.strip()
        found.append((match[1].lower(), value))
    return found


# The federation's multipart answer.


def multipart_head(boundary: str, content_type: str, disposition: str) -> bytes:
    """Everything of a federation media answer before the media's bytes: the
    JSON part (``{}``, as the spec has it for now) and the media part's
    headers."""
    return (
        f"--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n"
        f"--{boundary}\r\nContent-Type: {content_type}\r\n"
        f"Content-Disposition: {disposition}\r\n\r\n"
    ).encode("latin-1")


def multipart_tail(boundary: str) -> bytes:
    """Everything after the media's bytes: the closing delimiter."""
    return f"\r\n--{boundary}--\r\n".encode("latin-1")


@dataclass(frozen=True, slots=True)
class MultipartAnswer:
    """A federation media answer, parsed: the media's bytes with the part's
    headers, or where to fetch them (``location``)."""

    #: The second part's headers, names lower-cased.
    headers: dict[str, str]
    body: bytes
    location: str | None

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")

    @property
    def filename(self) -> str | None:
        return disposition_filename(self.headers.get("content-disposition"))


def parse_multipart(content_type: str | None, body: bytes) -> MultipartAnswer:
    """The media part of a ``multipart/mixed`` answer (RFC 2046) whose first
    part is the JSON metadata and whose second is the media or a
    ``Location`` header, as the server-server spec defines it.

    Raises ValueError saying what is wrong.
    """
    if not content_type or content_type.partition(";")[0].strip().lower() != "multipart/mixed":
        raise ValueError(f"the answer is {content_type!r}, not multipart/mixed")
    boundary = next((value for name, value in _parameters(content_type) if name == "boundary"), "")
    if not boundary or len(boundary) > 70:
        raise ValueError("the multipart answer names no usable boundary")
    # Every delimiter follows a line break, except one that opens the body:
    # that one is found as if the break were there, two bytes before it,
    # rather than by copying a body that may be tens of megabytes.
    marker = b"\r\n--" + boundary.encode("latin-1")
    # Where each part starts and ends: the media is sliced out once.
    parts: list[tuple[int, int]] = []
    position = -2 if body.startswith(marker[2:]) else body.find(marker)
    if position == -1:
        raise ValueError("the multipart answer has no delimiter")
    while True:
        after = position + len(marker)
        if body[after : after + 2] == b"--":
            break
        line_end = body.find(b"\r\n", after)
        following = body.find(marker, line_end) if line_end >= 0 else -1
        if following < 0:
            raise ValueError("the multipart answer has no closing delimiter")
        parts.append((line_end + 2, following))
        position = following
    if len(parts) != 2:
        raise ValueError(f"the multipart answer has {len(parts)} parts, not 2")
    start, end = parts[1]
    if body.startswith(b"\r\n", start):
        # No headers: the part's body follows the delimiter line's break.
        header_block, content_start = b"", start + 2
    else:
        split = body.find(b"\r\n\r\n", start, end)
        if split < 0:
            header_block, content_start = body[start:end], end
        else:
            header_block, content_start = body[start:split], split + 4
    headers: dict[str, str] = {}
    for line in header_block.decode("latin-1").split("\r\n") if header_block else ():
        name, colon, value = line.partition(":")
        if not colon:
            raise ValueError(f"the media part has a malformed header line {line!r}")
        headers[name.strip().lower()] = value.strip()
    content = body[content_start:end]
    return MultipartAnswer(headers=headers, body=content, location=headers.get("location"))


# Thumbnails.


@dataclass(frozen=True, slots=True)
class ThumbnailSize:
    """A thumbnail's box and how the image is fitted to it."""

    width: int
    height: int
    method: ThumbnailMethod


#: The sizes the spec asks servers to produce; a request is served the
#: smallest of its method that is at least as large as asked.
_STANDARD_SIZES: Final = (
    ThumbnailSize(32, 32, "crop"),
    ThumbnailSize(96, 96, "crop"),
    ThumbnailSize(320, 240, "scale"),
    ThumbnailSize(640, 480, "scale"),
    ThumbnailSize(800, 600, "scale"),
)


def thumbnail_size(width: int, height: int, method: ThumbnailMethod) -> ThumbnailSize:
    """The size a request for ``width`` x ``height`` is served: the smallest
    standard size of ``method`` that covers it (so a handful of thumbnails
    per image serve every request), or the size asked when none does: a
    thumbnail is never smaller than requested."""
    for size in _STANDARD_SIZES:
        if size.method == method and size.width >= width and size.height >= height:
            return size
    return ThumbnailSize(width, height, method)
