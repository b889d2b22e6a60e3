"""Connections of :class:`ranvier.address_backend.AddressBackend`, over
real loopback sockets."""

from __future__ import annotations

import ssl
from collections.abc import Sequence

import httpcore
import pytest
import trio

from ranvier.address_backend import AddressBackend
from ranvier.testing import silent_server


class _Here(AddressBackend):
    def __init__(self, port: int) -> None:
        super().__init__()
        self._port = port

    async def endpoints(self, host: str, port: int) -> Sequence[tuple[str, int]]:
        return [("127.0.0.1", self._port)]


@pytest.mark.parametrize("how", ["cancelled", "timed out"])
async def test_a_connection_whose_tls_handshake_does_not_end_is_closed_at_once(
    nursery: trio.Nursery, how: str
) -> None:
    port, closed = await silent_server(nursery)
    stream = await _Here(port).connect_tcp("peer.test", 443)
    context = ssl.create_default_context()
    if how == "cancelled":
        with trio.move_on_after(0.2):
            await stream.start_tls(context, server_hostname="peer.test")
    else:
        with pytest.raises(httpcore.ConnectTimeout):
            await stream.start_tls(context, server_hostname="peer.test", timeout=0.2)
    # The server sees the connection end though the stream is still held
    # here: its socket was closed, not left for the garbage collector.
    with trio.fail_after(5):
        await closed.wait()
    assert stream is not None
