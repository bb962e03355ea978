"""An async client for NextStar RT protocol v1."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgpack
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

__all__ = ["Client", "ClientError", "Disconnected"]

SUBPROTOCOL = {"msgpack": "nextstar.v1.msgpack", "json": "nextstar.v1.json"}


class ClientError(Exception):
    """An error answer from the server."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details or {}


class Disconnected(Exception):
    """The connection closed; ``code`` and ``reason`` are the close frame's."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"connection closed: {code} {reason}".strip())
        self.code = code
        self.reason = reason


class Client:
    """One WebSocket session.

    Use :meth:`connect`, then :meth:`call` for requests; server events queue
    up and are read with :meth:`next_event` or ``async for`` over
    :meth:`events`.
    """

    def __init__(self, connection: ClientConnection, encoding: str) -> None:
        self.connection = connection
        self.encoding = encoding
        self.user_id: int | None = None
        self.token: str | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._reader = asyncio.get_running_loop().create_task(self._read())
        self.closed: Disconnected | None = None
        self._keepalive: asyncio.Task[None] | None = None

    @classmethod
    async def connect(
        cls, url: str, encoding: str = "msgpack", **options: Any
    ) -> Client:
        connection = await connect(
            url,
            subprotocols=[SUBPROTOCOL[encoding]],
            compression=None,
            max_size=None,
            **options,
        )
        return cls(connection, encoding)

    def keep_alive(self, interval: float = 60.0) -> None:
        """Send ``ping`` every ``interval`` seconds while the connection is open.

        The server closes a connection that sends no frame for its idle
        timeout (600 s by default, close code 4002); WebSocket pings do not
        count, so a client that only listens needs this.
        """
        if self._keepalive is None:
            self._keepalive = asyncio.get_running_loop().create_task(
                self._ping_every(interval)
            )

    async def _ping_every(self, interval: float) -> None:
        while self.closed is None:
            await asyncio.sleep(interval)
            try:
                await self.call("ping")
            except (ClientError, Disconnected):
                return

    async def close(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
        await self.connection.close()
        await asyncio.gather(self._reader, return_exceptions=True)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    def _encode(self, frame: dict[str, Any]) -> bytes | str:
        if self.encoding == "msgpack":
            return msgpack.packb(frame, use_bin_type=True)
        return json.dumps(frame, separators=(",", ":"))

    def request(self, method: str, params: dict[str, Any]) -> asyncio.Future[Any]:
        """Send a request now; the future resolves with its result."""
        if self.closed is not None:
            raise self.closed
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        frame = {"type": "req", "id": request_id, "method": method, "params": params}
        asyncio.ensure_future(self._send(self._encode(frame), future))
        return future

    async def _send(self, data: bytes | str, future: asyncio.Future[Any]) -> None:
        try:
            await self.connection.send(data)
        except ConnectionClosed as exc:
            if not future.done():
                future.set_exception(self._disconnected(exc))

    async def call(self, method: str, **params: Any) -> Any:
        """Send a request and return its result; raise :class:`ClientError`."""
        return await self.request(method, params)

    async def send_raw(self, data: bytes | str) -> None:
        await self.connection.send(data)

    async def _read(self) -> None:
        try:
            async for data in self.connection:
                frame = (
                    json.loads(data) if isinstance(data, str) else msgpack.unpackb(data)
                )
                kind = frame.get("type")
                if kind == "evt":
                    self._events.put_nowait(frame)
                    continue
                future = self._pending.pop(frame.get("id"), None)
                if kind == "res" and future is not None and not future.done():
                    future.set_result(frame["result"])
                elif kind == "err":
                    error = frame["error"]
                    exc = ClientError(
                        error["code"], error["message"], error.get("details")
                    )
                    if future is not None and not future.done():
                        future.set_exception(exc)
                    elif future is None:
                        self._events.put_nowait(frame)
        except ConnectionClosed as exc:
            self.closed = self._disconnected(exc)
        finally:
            if self.closed is None:
                self.closed = self._disconnected(None)
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(self.closed)
            self._pending.clear()
            self._events.put_nowait(None)

    def _disconnected(self, exc: ConnectionClosed | None) -> Disconnected:
        close = self.connection.protocol.close_rcvd
        if close is None:
            return Disconnected(None, "connection lost")
        return Disconnected(close.code, close.reason)

    async def next_event(
        self, name: str | None = None, timeout: float = 10.0
    ) -> dict[str, Any]:
        """Return the next event (named ``name`` if given), skipping others.

        Raises:
            Disconnected: the connection closed first.
            TimeoutError: nothing came within ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            while True:
                frame = await self._events.get()
                if frame is None:
                    self._events.put_nowait(None)
                    raise self.closed or Disconnected(None, "closed")
                if name is None or frame.get("event") == name:
                    return frame

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            frame = await self._events.get()
            if frame is None:
                self._events.put_nowait(None)
                return
            yield frame

    def pending_events(self) -> list[dict[str, Any]]:
        """Return and drop every event queued so far."""
        frames = []
        while not self._events.empty():
            frame = self._events.get_nowait()
            if frame is None:
                self._events.put_nowait(None)
                break
            frames.append(frame)
        return frames

    async def wait_closed(self, timeout: float = 10.0) -> Disconnected:
        async with asyncio.timeout(timeout):
            await asyncio.gather(self._reader, return_exceptions=True)
        assert self.closed is not None
        return self.closed

    # -- conveniences ----------------------------------------------------------

    async def sign_in(self, phone: str, code: str, device_name: str = "python") -> Any:
        result = await self.call(
            "auth.sign_in", phone=phone, code=code, device_name=device_name
        )
        self.user_id = result["user"]["user_id"]
        self.token = result["token"]
        return result

    async def resume(self, token: str) -> Any:
        result = await self.call("auth.resume", token=token)
        self.user_id = result["user"]["user_id"]
        self.token = token
        return result

    async def send_text(
        self, conversation_id: int, text: str, client_msg_id: str | None = None
    ) -> Any:
        return await self.call(
            "message.send",
            conversation_id=conversation_id,
            client_msg_id=client_msg_id or _new_client_id(),
            text=text,
        )

    async def history_all(self, conversation_id: int) -> list[dict[str, Any]]:
        """Return the whole visible history, oldest first."""
        messages: list[dict[str, Any]] = []
        before = None
        while True:
            params: dict[str, Any] = {"conversation_id": conversation_id, "limit": 200}
            if before is not None:
                params["before_seq"] = before
            page = await self.call("message.history", **params)
            messages[:0] = page["messages"]
            if not page["has_more"] or not page["messages"]:
                return messages
            before = page["messages"][0]["seq"]

    async def history_latest(
        self, conversation_id: int, count: int
    ) -> list[dict[str, Any]]:
        """Return the newest ``count`` visible messages, oldest first.

        Pages backwards, since the server gives at most 200 messages a call.
        """
        messages: list[dict[str, Any]] = []
        before = None
        while len(messages) < count:
            params: dict[str, Any] = {
                "conversation_id": conversation_id,
                "limit": min(200, count - len(messages)),
            }
            if before is not None:
                params["before_seq"] = before
            page = await self.call("message.history", **params)
            messages[:0] = page["messages"]
            if not page["has_more"] or not page["messages"]:
                break
            before = page["messages"][0]["seq"]
        return messages

    async def sync(self, cursors: dict[int, int]) -> dict[int, list[dict[str, Any]]]:
        """Fetch everything after ``cursors``; return new messages by
        conversation and advance ``cursors`` in place."""
        caught_up: dict[int, list[dict[str, Any]]] = {}
        while True:
            result = await self.call(
                "sync",
                cursors=[{"conversation_id": c, "seq": s} for c, s in cursors.items()],
            )
            more = False
            for entry in result["conversations"]:
                conversation_id = entry["conversation_id"]
                batch = entry["messages"]
                caught_up.setdefault(conversation_id, []).extend(batch)
                if batch:
                    cursors[conversation_id] = batch[-1]["seq"]
                else:
                    cursors.setdefault(conversation_id, entry["last_seq"])
                more = more or entry["has_more"]
            for conversation_id in result["removed"]:
                cursors.pop(conversation_id, None)
            if not more:
                return caught_up


def _new_client_id() -> str:
    return uuid.uuid4().hex
