"""Media between ranvier and a real Synapse over federation: each server's
users' uploads fetched through the other, byte for byte, through the
authenticated federation media endpoints both servers speak."""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import AsyncIterator

import httpx

from ranvier.server import HomeServer

from ._synapse import SynapseProcess


async def _one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _read(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


async def test_media_is_fetched_each_way_between_ranvier_and_synapse(
    synapse: SynapseProcess, synapse_http: httpx.AsyncClient, ranvier: HomeServer
) -> None:
    zed = await synapse.register(synapse_http, f"zedmedia{os.getpid()}")
    theirs = os.urandom(70_000)
    answer = await synapse_http.post(
        synapse.base_url + "/_matrix/media/v3/upload",
        content=theirs,
        params={"filename": "their.bin"},
        headers={
            "Authorization": f"Bearer {zed.access_token}",
            "Content-Type": "application/octet-stream",
        },
    )
    assert answer.status_code == 200, answer.text
    origin, _, media_id = answer.json()["content_uri"].removeprefix("mxc://").partition("/")

    # ranvier fetches Synapse's media for its users, over federation.
    fetched = await ranvier.media.download(origin, media_id)
    assert fetched.size == len(theirs)
    assert await _read(fetched.chunks()) == theirs

    # Synapse fetches ranvier's media for its users, over federation.
    ours = os.urandom(50_000)
    uri = await ranvier.media.upload(
        f"@bob:{ranvier.server_name}",
        _one_chunk(ours),
        content_type="application/octet-stream",
        filename="our.bin",
        declared_length=len(ours),
    )
    server_name, _, our_id = uri.removeprefix("mxc://").partition("/")
    path = "/_matrix/client/v1/media/download/{}/{}".format(
        urllib.parse.quote(server_name, safe=""), urllib.parse.quote(our_id, safe="")
    )
    downloaded = await synapse_http.get(
        synapse.base_url + path, headers={"Authorization": f"Bearer {zed.access_token}"}
    )
    assert downloaded.status_code == 200, downloaded.text
    assert downloaded.content == ours
