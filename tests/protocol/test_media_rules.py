"""The content repository's rules without I/O: media IDs, dispositions,
the federation's multipart answers, thumbnail sizes."""

from __future__ import annotations

import email.policy
from email.parser import BytesParser

import pytest

from ranvier.protocol.media import (
    MultipartReader,
    ThumbnailSize,
    content_disposition,
    disposition_filename,
    is_media_id,
    multipart_head,
    multipart_tail,
    parse_multipart,
    thumbnail_size,
)


def test_media_ids_are_of_the_spec_characters_only() -> None:
    assert is_media_id("AQwafuaFswefuhsfAFAgsw_-09")
    for bad in ("", "a.b", "../etc", "a/b", "a%2Fb", "é", "a b"):
        assert not is_media_id(bad)


def test_inline_only_for_safe_types() -> None:
    assert content_disposition("image/png", None) == "inline"
    assert content_disposition("text/plain; charset=utf-8", "a.txt") == 'inline; filename="a.txt"'
    assert content_disposition("IMAGE/JPEG", None) == "inline"
    assert content_disposition("text/html", "page.html") == 'attachment; filename="page.html"'
    assert content_disposition("image/svg+xml", None) == "attachment"
    assert content_disposition(None, None) == "attachment"


def test_file_names_are_quoted_or_encoded() -> None:
    assert content_disposition("text/plain", 'say "hi"\\.txt') == (
        'inline; filename="say \\"hi\\"\\\\.txt"'
    )
    assert content_disposition("text/plain", "résumé.txt") == (
        "inline; filename*=utf-8''r%C3%A9sum%C3%A9.txt"
    )


@pytest.mark.parametrize(
    "name", ["plain.txt", 'say "hi"\\.txt', "résumé.txt", "日本語.png", "a; b=c.txt"]
)
def test_a_file_name_comes_back_from_its_disposition(name: str) -> None:
    assert disposition_filename(content_disposition("image/png", name)) == name


def test_dispositions_read_from_other_servers() -> None:
    assert disposition_filename(None) is None
    assert disposition_filename("inline") is None
    assert disposition_filename("attachment; filename=bare.bin") == "bare.bin"
    assert (
        disposition_filename("attachment; filename=\"fallback\"; filename*=UTF-8''%E2%82%AC.txt")
        == "€.txt"
    )
    # Undecodable: the plain name is kept.
    assert disposition_filename("inline; filename=x; filename*=utf-8''%FF") == "x"


def _answer(boundary: str, media: bytes) -> bytes:
    return (
        multipart_head(boundary, "image/png", 'inline; filename="a.png"')
        + media
        + multipart_tail(boundary)
    )


def test_the_answer_made_parses_back_and_by_the_standard_library() -> None:
    media = b"\x89PNG\r\n--not-the-boundary\r\n\r\n" + bytes(range(256))
    body = _answer("b0und4ry", media)
    answer = parse_multipart("multipart/mixed; boundary=b0und4ry", body)
    assert answer.body == media
    assert answer.content_type == "image/png"
    assert answer.filename == "a.png"
    assert answer.location is None
    # An independent parser reads the same two parts.
    message = BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: multipart/mixed; boundary=b0und4ry\r\n\r\n" + body
    )
    parts = list(message.iter_parts())
    assert [part.get_content_type() for part in parts] == ["application/json", "image/png"]
    assert parts[0].get_payload(decode=True) == b"{}"
    assert parts[1].get_payload(decode=True) == media


def test_a_location_part_and_quoted_boundaries() -> None:
    body = (
        b"preamble\r\n--a b\r\nContent-Type: application/json\r\n\r\n{}\r\n"
        b"--a b\r\nLocation: https://cdn.example/x\r\n\r\n\r\n--a b--\r\nepilogue"
    )
    answer = parse_multipart('multipart/mixed; boundary="a b"', body)
    assert answer.location == "https://cdn.example/x"
    assert answer.body == b""


@pytest.mark.parametrize("piece", [1, 2, 7, 64, 1000])
def test_an_answer_read_in_pieces_gives_the_same_media(piece: int) -> None:
    media = b"\r\n--b0und4r" + bytes(range(256)) * 3 + b"\r\n--b0und4"
    body = _answer("b0und4ry", media) + b"epilogue"
    reader = MultipartReader("multipart/mixed; boundary=b0und4ry")
    given = [reader.feed(body[i : i + piece]) for i in range(0, len(body), piece)]
    reader.finish()
    assert b"".join(given) == media
    assert reader.headers == {
        "content-type": "image/png",
        "content-disposition": 'inline; filename="a.png"',
    }
    # Nothing is held back longer than a delimiter's length.
    assert max(len(part) for part in given) <= max(piece, len(b"\r\n--b0und4ry"))


def test_headers_with_the_delimiter_right_after() -> None:
    body = b"--x\r\n\r\n{}\r\n--x\r\nLocation: https://a.example/m\r\n\r\n--x--"
    answer = parse_multipart("multipart/mixed; boundary=x", body)
    assert (answer.location, answer.body) == ("https://a.example/m", b"")


def test_a_head_too_long_is_refused() -> None:
    reader = MultipartReader("multipart/mixed; boundary=x")
    reader.feed(b"--x\r\n\r\n" + b"{" * 60_000)
    with pytest.raises(ValueError, match="over 64 KiB"):
        reader.feed(b" " * 10_000)


def test_a_media_part_without_headers() -> None:
    body = b"--x\r\nContent-Type: application/json\r\n\r\n{}\r\n--x\r\n\r\nraw\r\n--x--\r\n"
    answer = parse_multipart("multipart/mixed; boundary=x", body)
    assert (answer.headers, answer.body, answer.content_type) == ({}, b"raw", None)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b"{}"),
        ("multipart/mixed", b"--x\r\n\r\n{}\r\n--x--"),
        ("multipart/mixed; boundary=x", b"no delimiter at all"),
        ("multipart/mixed; boundary=x", b"--x\r\n\r\n{}\r\n--x\r\n\r\nunfinished"),
        ("multipart/mixed; boundary=x", b"--x\r\n\r\n{}\r\n--x--\r\n"),
        ("multipart/mixed; boundary=x", b"--x\r\n\r\n{}\r\n--x\r\n\r\na\r\n--x\r\n\r\nb\r\n--x--"),
        ("multipart/mixed; boundary=x", b"--x\r\n\r\n{}\r\n--x\r\nno colon\r\n\r\nb\r\n--x--"),
    ],
)
def test_unusable_answers_are_refused(content_type: str, body: bytes) -> None:
    with pytest.raises(ValueError, match=r"multipart|part"):
        parse_multipart(content_type, body)


def test_thumbnail_sizes() -> None:
    assert thumbnail_size(10, 10, "crop") == ThumbnailSize(32, 32, "crop")
    assert thumbnail_size(33, 10, "crop") == ThumbnailSize(96, 96, "crop")
    assert thumbnail_size(100, 10, "crop") == ThumbnailSize(100, 10, "crop")
    assert thumbnail_size(10, 10, "scale") == ThumbnailSize(320, 240, "scale")
    assert thumbnail_size(321, 100, "scale") == ThumbnailSize(640, 480, "scale")
    assert thumbnail_size(800, 600, "scale") == ThumbnailSize(800, 600, "scale")
    assert thumbnail_size(801, 600, "scale") == ThumbnailSize(801, 600, "scale")
