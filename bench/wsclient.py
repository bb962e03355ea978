"""A lean WebSocket client for load generation: one asyncio protocol object per
connection, no task, no queue.

The harness holds up to ~9,000 connections per process on a machine whose two
cores it shares with the server, so the per-connection cost matters more than
generality. This client speaks only what protocol v1 needs: the opening
handshake with one subprotocol, unfragmented binary frames, ping, pong and
close (RFC 6455). Server frames are never masked (section 5.1), so they are
parsed by hand from one buffer; client frames are masked with a fresh key
each, using websockets' C ``apply_mask``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import os
import struct
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import msgpack

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - the C extension ships in the wheels
    from websockets.utils import apply_mask

__all__ = ["SUBPROTOCOL", "ClientError", "WsClient", "open_client"]

SUBPROTOCOL = "nextstar.v1.msgpack"
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
_HEADER_LIMIT = 16384

_OP_CONT, _OP_TEXT, _OP_BINARY = 0x0, 0x1, 0x2
_OP_CLOSE, _OP_PING, _OP_PONG = 0x8, 0x9, 0xA

_pack_u16 = struct.Struct("!H").pack
_pack_u64 = struct.Struct("!Q").pack
_unpack_u16 = struct.Struct("!H").unpack_from
_unpack_u64 = struct.Struct("!Q").unpack_from
_packb = msgpack.Packer(use_bin_type=True, autoreset=True).pack
_unpackb = msgpack.unpackb

EventFn = Callable[["WsClient", dict[str, Any]], None]
ReplyFn = Callable[[Any, dict[str, Any] | None], None]


class ClientError(Exception):
    """The connection failed, or the server answered a request with an error."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


def _mask_frame(opcode: int, payload: bytes | bytearray) -> bytes:
    """Return one complete, masked client frame (FIN set)."""
    key = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    elif length < 65536:
        header = bytes((0x80 | opcode, 0x80 | 126)) + _pack_u16(length)
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + _pack_u64(length)
    return header + key + apply_mask(payload, key)


class WsClient(asyncio.Protocol):
    """One session of protocol v1 over MessagePack.

    Answers arrive through callbacks given to :meth:`request`, so the hot path
    creates no future; :meth:`call` wraps a request in a future for set-up
    steps. Events go to ``on_event``.

    Attributes:
        user_id: The user this session signs in as (set by the caller).
        tracks: Per-conversation state the caller keeps (the load process
            tracks which ``seq`` it has seen, to find duplicates and gaps).
    """

    __slots__ = (
        "_buffer",
        "_close_sent",
        "_fragments",
        "_handshaken",
        "_ids",
        "_is_open",
        "_key",
        "_pending",
        "close_code",
        "closed",
        "host",
        "on_event",
        "opened",
        "path",
        "tracks",
        "transport",
        "user_id",
    )

    def __init__(self, host: str, path: str, on_event: EventFn | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.host = host
        self.path = path
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.on_event = on_event
        self.user_id = 0
        self.tracks: dict[int, Any] = {}
        self._key = base64.b64encode(os.urandom(16))
        self._buffer = bytearray()
        self._is_open = False
        self._handshaken = False
        self._ids = itertools.count(1)
        self._pending: dict[int, ReplyFn] = {}
        self._fragments: list[bytes | bytearray] | None = None
        self._close_sent = False
        self.close_code: int | None = None

    @property
    def is_open(self) -> bool:
        return self._is_open

    @property
    def pending(self) -> int:
        """Requests sent and not yet answered."""
        return len(self._pending)

    # -- asyncio protocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; both work.
        self.transport = transport  # type: ignore[assignment]
        request = (
            f"GET {self.path} HTTP/1.1\r\n"
            f"Host: {self.host}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {self._key.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n"
            "\r\n"
        )
        transport.write(request.encode())

    def data_received(self, data: bytes) -> None:
        if self._buffer:
            self._buffer += data
            data = self._buffer
            self._buffer = bytearray()
        if not self._handshaken:
            data = self._handshake(data)
            if data is None:
                return
        rest = self._frames(data)
        if rest:
            self._buffer = bytearray(rest)

    def connection_lost(self, exc: Exception | None) -> None:
        self._is_open = False
        if not self.opened.done():
            self.opened.set_exception(ClientError(f"connection lost: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)
        pending, self._pending = self._pending, {}
        error = {"code": "disconnected", "message": "connection lost"}
        for reply in pending.values():
            reply(None, error)

    # -- handshake and frames ---------------------------------------------

    def _handshake(self, data: bytes | bytearray) -> bytes | bytearray | None:
        """Check the server's 101 answer; return the bytes after it, or None
        while it is incomplete or after it failed."""
        end = data.find(b"\r\n\r\n")
        if end < 0:
            if len(data) > _HEADER_LIMIT:
                self._fail("handshake response too large")
            else:
                self._buffer = bytearray(data)
            return None
        head = bytes(data[:end]).decode("latin-1").split("\r\n")
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        accept = base64.b64encode(hashlib.sha1(self._key + _GUID).digest()).decode()
        if not head[0].startswith("HTTP/1.1 101"):
            self._fail(f"handshake refused: {head[0]}")
            return None
        if headers.get("sec-websocket-accept") != accept:
            self._fail("handshake: wrong Sec-WebSocket-Accept")
            return None
        if headers.get("sec-websocket-protocol") != SUBPROTOCOL:
            self._fail("handshake: subprotocol not accepted")
            return None
        if headers.get("sec-websocket-extensions"):
            # A negotiated extension (compression) would change the framing.
            self._fail("handshake: unexpected extension")
            return None
        self._is_open = self._handshaken = True
        self.opened.set_result(None)
        return data[end + 4 :]

    def _frames(self, data: bytes | bytearray) -> bytes | bytearray:
        """Handle every complete frame in ``data``; return the incomplete rest."""
        start = 0
        size = len(data)
        while size - start >= 2:
            first = data[start]
            length = data[start + 1]
            if length & 0x80:
                self._fail("server frame is masked")
                return b""
            head = 2
            if length == 126:
                if size - start < 4:
                    break
                (length,) = _unpack_u16(data, start + 2)
                head = 4
            elif length == 127:
                if size - start < 10:
                    break
                (length,) = _unpack_u64(data, start + 2)
                head = 10
            end = start + head + length
            if end > size:
                break
            payload = data[start + head : end]
            start = end
            self._frame(first & 0x80, first & 0x0F, payload)
            if self.transport is None or self.transport.is_closing():
                return b""
        return data[start:]

    def _frame(self, fin: int, opcode: int, payload: bytes | bytearray) -> None:
        if opcode == _OP_BINARY or opcode == _OP_TEXT:
            if fin:
                self._message(payload)
            else:
                self._fragments = [payload]
        elif opcode == _OP_CONT and self._fragments is not None:
            self._fragments.append(payload)
            if fin:
                whole, self._fragments = b"".join(self._fragments), None
                self._message(whole)
        elif opcode == _OP_PING:
            self._write(_OP_PONG, payload)
        elif opcode == _OP_CLOSE:
            self._closed_by_server(payload)

    def _closed_by_server(self, payload: bytes | bytearray) -> None:
        self.close_code = _unpack_u16(payload)[0] if len(payload) >= 2 else 1005
        if not self._close_sent:
            self._close_sent = True
            self._write(_OP_CLOSE, payload[:2])
        self._is_open = False
        # The server closes TCP after the handshake (RFC 6455 section 7.1.1).

    def _message(self, payload: bytes | bytearray) -> None:
        frame = _unpackb(payload)
        kind = frame.get("type")
        if kind == "evt":
            if self.on_event is not None:
                self.on_event(self, frame)
            return
        reply = self._pending.pop(frame.get("id"), None)
        if reply is None:
            return
        if kind == "res":
            reply(frame.get("result"), None)
        else:
            reply(None, frame.get("error") or {"code": "unknown"})

    def _write(self, opcode: int, payload: bytes | bytearray) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_mask_frame(opcode, payload))

    def _fail(self, reason: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(ClientError(reason))
        self._is_open = False
        if self.transport is not None:
            self.transport.abort()

    # -- requests ---------------------------------------------------------

    def request(self, method: str, params: dict[str, Any], reply: ReplyFn) -> int:
        """Send one request; ``reply(result, error)`` runs on its answer."""
        request_id = next(self._ids)
        self._pending[request_id] = reply
        frame = {"type": "req", "id": request_id, "method": method, "params": params}
        self._write(_OP_BINARY, _packb(frame))
        return request_id

    def call(self, method: str, **params: Any) -> asyncio.Future[Any]:
        """Send one request; the future holds its result or a ClientError."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def reply(result: Any, error: dict[str, Any] | None) -> None:
            if future.done():
                return
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(
                    ClientError(
                        f"{method}: {error.get('code')}: {error.get('message', '')}",
                        str(error.get("code", "")),
                    )
                )

        if not self._is_open:
            future.set_exception(ClientError(f"{method}: connection is closed"))
            return future
        self.request(method, params, reply)
        return future

    def close(self) -> None:
        """Start the closing handshake, or drop the TCP connection if closed."""
        if self._is_open and not self._close_sent:
            self._close_sent = True
            self._write(_OP_CLOSE, _pack_u16(1000))
            self._is_open = False
        elif self.transport is not None and not self._is_open:
            self.transport.close()


async def open_client(
    url: str, on_event: EventFn | None = None, timeout: float = 30.0
) -> WsClient:
    """Connect to ``url`` (``ws://host:port/path``) and finish the handshake.

    Raises:
        ClientError: when the TCP connection or the handshake fails, or the
            whole takes longer than ``timeout``.
    """
    parts = urlsplit(url)
    if parts.scheme != "ws" or not parts.hostname:
        raise ClientError(f"only ws:// URLs are supported: {url}")
    host, port = parts.hostname, parts.port or 80
    path = parts.path or "/"
    loop = asyncio.get_running_loop()
    client: WsClient | None = None

    def factory() -> WsClient:
        nonlocal client
        client = WsClient(f"{host}:{port}", path, on_event)
        return client

    try:
        async with asyncio.timeout(timeout):
            await loop.create_connection(factory, host, port)
            assert client is not None
            await client.opened
    except (OSError, TimeoutError, ClientError) as exc:
        if client is not None and client.transport is not None:
            client.transport.abort()
        if isinstance(exc, ClientError):
            raise
        raise ClientError(f"cannot connect to {url}: {exc!r}") from exc
    return client
