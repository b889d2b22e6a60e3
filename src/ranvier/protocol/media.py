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

from ranvier.errors import MatrixError

from .numbers import is_decimal_number

__all__ = [
    "DEFAULT_TIMEOUT_MS",
    "INLINE_CONTENT_TYPES",
    "SECURITY_HEADERS",
    "MultipartAnswer",
    "MultipartReader",
    "ThumbnailMethod",
    "ThumbnailSize",
    "content_disposition",
    "disposition_filename",
    "invalid_param",
    "is_media_id",
    "multipart_head",
    "multipart_tail",
    "parse_multipart",
    "thumbnail_dimension_param",
    "thumbnail_method_param",
    "thumbnail_size",
    "timeout_ms_param",
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


#: How much of an answer may come before the media's bytes: the JSON part
#: and the headers of both parts.
_MAX_HEAD_BYTES: Final = 64 * 1024


class MultipartReader:
    """Reads a ``multipart/mixed`` federation media answer (RFC 2046) as it
    arrives: a first part (the JSON metadata, which is not kept), then the
    media part, whose headers are :attr:`headers` once read and whose bytes
    :meth:`feed` and :meth:`finish` hand back as they come, without ever
    holding the whole body.

    Raises ValueError, from any method, saying what is wrong: an answer
    that is not ``multipart/mixed`` with a boundary, a head over 64 KiB,
    other than two parts, a missing closing delimiter.
    """

    def __init__(self, content_type: str | None) -> None:
        essence = (content_type or "").partition(";")[0].strip().lower()
        if essence != "multipart/mixed":
            raise ValueError(f"the answer is {content_type!r}, not multipart/mixed")
        boundary = next(
            (value for name, value in _parameters(content_type or "") if name == "boundary"), ""
        )
        if not boundary or len(boundary) > 70:
            raise ValueError("the multipart answer names no usable boundary")
        # Every delimiter follows a line break, except one that opens the
        # answer: that one is found as if the break were there.
        self._marker = b"\r\n--" + boundary.encode("latin-1")
        self._buffer = b""
        #: The media part's headers, names lower-cased; None until read.
        self.headers: dict[str, str] | None = None
        # Where the media ends in the buffer, once its delimiter was seen.
        self._ended = False

    @property
    def location(self) -> str | None:
        """The media part's ``Location``, if it points elsewhere."""
        return None if self.headers is None else self.headers.get("location")

    def feed(self, chunk: bytes) -> bytes:
        """Take the next piece of the answer; return the media bytes it
        completes (often all of it, less a few bytes held back in case a
        delimiter starts there)."""
        if self._ended:
            self._buffer = (self._buffer + chunk)[: len(self._marker) + 2]
            return b""
        self._buffer += chunk
        if self.headers is None and not self._read_head():
            if len(self._buffer) > _MAX_HEAD_BYTES:
                raise ValueError("the multipart answer's head is over 64 KiB")
            return b""
        end = self._buffer.find(self._marker)
        if end >= 0:
            media, self._buffer = self._buffer[:end], self._buffer[end:]
            self._ended = True
            return media
        keep = len(self._marker) - 1
        if len(self._buffer) <= keep:
            return b""
        media, self._buffer = self._buffer[:-keep], self._buffer[-keep:]
        return media

    def finish(self) -> bytes:
        """The answer has ended: check that it ended as it should; return
        nothing, as every media byte was given by :meth:`feed`."""
        if self.headers is None:
            raise ValueError("the multipart answer ends before its media part")
        if not self._ended:
            raise ValueError("the multipart answer has no closing delimiter")
        after = self._buffer[len(self._marker) : len(self._marker) + 2]
        if after != b"--":
            raise ValueError("the multipart answer has more than 2 parts")
        return b""

    def _read_head(self) -> bool:
        """Find the media part's headers in the buffer; keep only what
        follows them. False when more of the answer is needed."""
        buffer, marker = self._buffer, self._marker
        first = -2 if buffer.startswith(marker[2:]) else buffer.find(marker)
        if first == -1:
            return False
        second = buffer.find(marker, first + len(marker))
        if second < 0:
            return False
        closing = buffer[first + len(marker) : first + len(marker) + 2]
        if closing == b"--" or buffer[second + len(marker) : second + len(marker) + 2] == b"--":
            raise ValueError("the multipart answer has 1 part, not 2")
        line_end = buffer.find(b"\r\n", second + len(marker))
        if line_end < 0 or len(buffer) < line_end + 4:
            return False
        start = line_end + 2
        if buffer.startswith(b"\r\n", start):
            # No headers: the part's body follows the delimiter line's break.
            header_block, content_start = b"", start + 2
        else:
            split = buffer.find(b"\r\n\r\n", start)
            delimiter = buffer.find(marker, start)
            if 0 <= delimiter <= split + 2 or (split < 0 and delimiter >= 0):
                # Headers and no body, the delimiter right after them.
                header_block, content_start = buffer[start:delimiter], delimiter
            elif split < 0:
                return False
            else:
                header_block, content_start = buffer[start:split], split + 4
        headers: dict[str, str] = {}
        for line in header_block.decode("latin-1").split("\r\n") if header_block else ():
            if not line:
                continue
            name, colon, value = line.partition(":")
            if not colon:
                raise ValueError(f"the media part has a malformed header line {line!r}")
            headers[name.strip().lower()] = value.strip()
        self.headers = headers
        self._buffer = buffer[content_start:]
        return True


def parse_multipart(content_type: str | None, body: bytes) -> MultipartAnswer:
    """A whole federation media answer, read by :class:`MultipartReader`.

    Raises ValueError saying what is wrong.
    """
    reader = MultipartReader(content_type)
    media = reader.feed(body)
    reader.finish()
    assert reader.headers is not None  # finish checks it
    return MultipartAnswer(headers=reader.headers, body=media, location=reader.location)


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


# Query parameters, read alike by the client-server and federation routes.


#: How long a download waits for media created but not uploaded yet when
#: the request does not say (ms), as the spec's default.
DEFAULT_TIMEOUT_MS: Final = 20_000


def timeout_ms_param(value: str | None) -> int:
    """A download's ``timeout_ms``: how long it may wait for an upload."""
    if value is None:
        return DEFAULT_TIMEOUT_MS
    if not is_decimal_number(value):
        raise invalid_param(f"timeout_ms must be a non-negative integer, not {value!r}")
    return int(value)


def thumbnail_dimension_param(name: str, value: str | None) -> int:
    """A thumbnail's ``width`` or ``height``: required, and bounded so that
    no request asks for a huge image to be made."""
    if value is None:
        raise MatrixError(f"{name} is required", errcode="M_MISSING_PARAM", http_status=400)
    if not is_decimal_number(value) or not 0 < int(value) <= 10_000:
        raise invalid_param(f"{name} must be an integer from 1 to 10000, not {value!r}")
    return int(value)


def thumbnail_method_param(value: str | None) -> ThumbnailMethod:
    """A thumbnail's ``method``; ``scale`` when absent, as the spec says."""
    method = value or "scale"
    if method not in ("scale", "crop"):
        raise invalid_param(f"method must be 'scale' or 'crop', not {method!r}")
    return "crop" if method == "crop" else "scale"


def invalid_param(message: str) -> MatrixError:
    """400 ``M_INVALID_PARAM``, the answer to a query parameter out of its range."""
    return MatrixError(message, errcode="M_INVALID_PARAM", http_status=400)
