"""Making a thumbnail of an image with Pillow: blocking work, for a worker
thread (``trio.to_thread.run_sync``).

Pillow is imported when the first thumbnail is made, not with the server.
Only the formats users send as pictures are read (PNG, JPEG, GIF, WebP);
an image's size is checked from its header before any pixel is decoded,
so a small file that unpacks to gigabytes is refused, not decoded. An
animated image is thumbnailed from its first frame: thumbnails here are
always still, which the spec allows even when ``animated=true`` is asked.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ranvier.errors import MatrixError
from ranvier.protocol.media import ThumbnailSize

__all__ = ["THUMBNAILABLE_TYPES", "Thumbnail", "make_thumbnail"]

#: Content types thumbnailed, and the Pillow format each must turn out to be.
THUMBNAILABLE_TYPES: Final = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/gif": "GIF",
    "image/webp": "WEBP",
}


@dataclass(frozen=True, slots=True)
class Thumbnail:
    """An encoded thumbnail."""

    data: bytes
    content_type: str
    width: int
    height: int


def make_thumbnail(source: Path, size: ThumbnailSize, *, max_pixels: int) -> Thumbnail | None:
    """A thumbnail of the image at ``source`` fitted to ``size``, or None
    when the image is no larger than the box (the spec then wants the
    original served: thumbnails are never upscaled).

    ``scale`` keeps the aspect ratio and fits the image inside the box;
    ``crop`` scales it until it covers the box, then cuts the middle out.
    JPEG images give JPEG thumbnails, others PNG. Raises MatrixError: 400
    ``M_UNKNOWN`` for what cannot be read as one of the formats above, 413
    ``M_TOO_LARGE`` for an image of more than ``max_pixels``.
    """
    # Imported on first use: Pillow adds about 3 MiB to the resident memory
    # of every server, most of which never make a thumbnail.
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source, formats=list(THUMBNAILABLE_TYPES.values())) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise _too_large()
                if width <= size.width and height <= size.height:
                    return None
                jpeg = image.format == "JPEG"
                image.seek(0)
                frame = image.convert("RGB" if jpeg else "RGBA")
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise _too_large() from None
    except (UnidentifiedImageError, OSError, ValueError, EOFError) as exc:
        raise MatrixError(
            f"cannot generate a thumbnail: the image cannot be read ({exc})",
            errcode="M_UNKNOWN",
            http_status=400,
        ) from None
    if size.method == "scale":
        factor = min(size.width / width, size.height / height)
        out = frame.resize(_scaled(width, height, factor), Image.Resampling.LANCZOS)
    else:
        factor = min(1.0, max(size.width / width, size.height / height))
        scaled_width, scaled_height = _scaled(width, height, factor)
        resized = frame.resize((scaled_width, scaled_height), Image.Resampling.LANCZOS)
        crop_width, crop_height = min(size.width, scaled_width), min(size.height, scaled_height)
        left, top = (scaled_width - crop_width) // 2, (scaled_height - crop_height) // 2
        out = resized.crop((left, top, left + crop_width, top + crop_height))
    buffer = io.BytesIO()
    if jpeg:
        out.save(buffer, format="JPEG", quality=80)
    else:
        out.save(buffer, format="PNG")
    return Thumbnail(
        data=buffer.getvalue(),
        content_type="image/jpeg" if jpeg else "image/png",
        width=out.width,
        height=out.height,
    )


def _scaled(width: int, height: int, factor: float) -> tuple[int, int]:
    return max(1, round(width * factor)), max(1, round(height * factor))


def _too_large() -> MatrixError:
    return MatrixError(
        "the image is too large to thumbnail", errcode="M_TOO_LARGE", http_status=413
    )
