"""The sending side of the federation benchmark, in a process of its own.

A remote server is never in the receiver's process: run here, the remotes'
side of TLS and HTTP takes a CPU of the machine as a real sender's would,
but not the receiving server's event loop or GIL.

``python -m bench._federation_sender HOST PORT CA_FILE REQUESTS`` reads
``REQUESTS``, a pickled list with one list of prepared requests (whole
``PUT /send`` requests as bytes) per sender, and opens one kept-alive TLS
connection per sender. It prints ``{"ready": true}``, waits for a line on standard
input, then has every sender send its requests in turn, each once the last
is answered, all senders at once; a request refused or cut off is sent
again under the same transaction ID. It prints ``{"errors": [...]}``: how many
PDUs each sender had answered with an error (``PDUS_PER_TRANSACTION`` for
a transaction never accepted).
"""

from __future__ import annotations

import json
import pickle
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

PDUS_PER_TRANSACTION = 50
_ATTEMPTS = 20


class Connection:
    """One kept-alive HTTPS connection that sends prepared requests and
    reads each answer's status and body (the server always sends a
    content-length).
    """

    def __init__(self, host: str, port: int, ssl_context: ssl.SSLContext) -> None:
        self._address = (host, port)
        self._ssl_context = ssl_context
        self._stream: trio.SSLStream[trio.SocketStream] | None = None
        self._buffer = b""

    async def reconnect(self) -> None:
        if self._stream is not None:
            await trio.aclose_forcefully(self._stream)
        host, port = self._address
        tcp = await trio.open_tcp_stream(host, port)
        self._stream = trio.SSLStream(tcp, self._ssl_context, server_hostname=host)
        await self._stream.do_handshake()
        self._buffer = b""

    async def aclose(self) -> None:
        if self._stream is not None:
            await trio.aclose_forcefully(self._stream)

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        if self._stream is None:
            await self.reconnect()
        stream = self._stream
        assert stream is not None
        await stream.send_all(request)
        while b"\r\n\r\n" not in self._buffer:
            await self._receive(stream)
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(self._buffer) < length:
            await self._receive(stream)
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return status, body

    async def _receive(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        data = await stream.receive_some(65536)
        if not data:
            raise ValueError("the server closed the connection")
        self._buffer += data


async def push(connection: Connection, requests: Sequence[bytes]) -> int:
    """Send ``requests`` in turn, each once the last is answered; returns
    the PDUs answered with an error.
    """
    errors = 0
    for request in requests:
        for _ in range(_ATTEMPTS):
            try:
                status, body = await connection.exchange(request)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, ValueError):
                await connection.reconnect()
                continue
            if status != 200:
                await trio.sleep(0.2)
                continue
            answer = json.loads(body)
            errors += sum(1 for result in answer["pdus"].values() if result.get("error"))
            break
        else:
            errors += PDUS_PER_TRANSACTION
    return errors


async def _main(host: str, port: int, ca_file: str, senders: Sequence[Sequence[bytes]]) -> None:
    context = ssl.create_default_context(cafile=ca_file)
    connections = [Connection(host, port, context) for _ in senders]
    for connection in connections:
        await connection.reconnect()
    print(json.dumps({"ready": True}), flush=True)
    await trio.to_thread.run_sync(sys.stdin.readline)
    errors = [0] * len(senders)

    async def send(index: int) -> None:
        errors[index] = await push(connections[index], senders[index])

    async with trio.open_nursery() as nursery:
        for index in range(len(senders)):
            nursery.start_soon(send, index)
    for connection in connections:
        await connection.aclose()
    print(json.dumps({"errors": errors}), flush=True)


if __name__ == "__main__":
    host, port, ca_file, requests_file = sys.argv[1:5]
    prepared: list[list[bytes]] = pickle.loads(Path(requests_file).read_bytes())
    trio.run(_main, host, int(port), ca_file, prepared)
