"""The WebSocket server: handshake, HTTP endpoints, the per-session loop."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from ..config import GatewaySettings
from ..wire.codec import SUBPROTOCOLS, Encoding, decode, parse_request
from ..wire.errors import CloseCode, ErrorCode, NextstarError
from .dispatch import Dispatcher
from .hub import Hub
from .session import Session

__all__ = ["Gateway"]

logger = logging.getLogger(__name__)

ReadyFn = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]


class Gateway:
    """Accept WebSocket sessions and serve ``/healthz``, ``/readyz``, ``/metrics``
    on the same port."""

    def __init__(
        self,
        settings: GatewaySettings,
        dispatcher: Dispatcher,
        hub: Hub,
        metrics: Any,
        readiness: ReadyFn,
    ) -> None:
        self._settings = settings
        self._dispatcher = dispatcher
        self._hub = hub
        self._metrics = metrics
        self._readiness = readiness
        self._server: Server | None = None
        self._sessions: set[Session] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self.draining = False

    @property
    def sessions(self) -> set[Session]:
        return self._sessions

    async def start(self, host: str, port: int, **server_options: Any) -> list[Any]:
        """Listen; return the bound socket addresses."""
        settings = self._settings
        self._server = await serve(
            self._handle,
            host,
            port,
            subprotocols=SUBPROTOCOLS,
            select_subprotocol=_select_subprotocol,
            process_request=self._process_request,
            # No extension may be negotiated: fan-out writes one prepared
            # frame to many connections, which compression would break.
            compression=None,
            max_size=settings.max_frame_bytes,
            ping_interval=settings.ping_interval,
            ping_timeout=settings.ping_timeout,
            server_header=None,
            # asyncio's default listen backlog of 100 overflows when thousands
            # of clients reconnect at once, and each overflow costs the client
            # a SYN retry of one to three seconds.
            backlog=server_options.pop("backlog", 4096),
            **server_options,
        )
        if settings.idle_timeout:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_idle())
        return [sock.getsockname() for sock in self._server.sockets]

    def stop_accepting(self) -> None:
        """Close the listening sockets; open sessions carry on."""
        self.draining = True
        if self._server is not None:
            self._server.close(close_connections=False)

    async def close_sessions(self, code: int, reason: str, timeout: float) -> None:
        """Close every session and wait, at most ``timeout``, for them to go."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        for session in list(self._sessions):
            session.close(code, reason)
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), timeout)
            except TimeoutError:
                logger.warning("sessions still open after %.0f s", timeout)

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        path = request.path.partition("?")[0]
        if path == self._settings.path:
            if self.draining:
                return connection.respond(503, "server shutting down\n")
            return None
        if path == "/healthz":
            return connection.respond(200, "ok\n")
        if path == "/readyz":
            ready, detail = await self._readiness()
            lines = "".join(f"{key}: {value}\n" for key, value in detail.items())
            status = 200 if ready and not self.draining else 503
            return connection.respond(
                status, ("ready\n" if status == 200 else "not ready\n") + lines
            )
        if path == "/metrics":
            body = self._metrics.render()
            return Response(
                200,
                "OK",
                Headers(
                    {
                        "Content-Type": "text/plain; version=0.0.4; charset=utf-8",
                        "Content-Length": str(len(body)),
                    }
                ),
                body,
            )
        return connection.respond(404, "not found\n")

    async def _handle(self, connection: ServerConnection) -> None:
        encoding = (
            Encoding(connection.subprotocol)
            if connection.subprotocol
            else Encoding.JSON
        )
        settings = self._settings
        session = Session(
            connection,
            encoding,
            rate=settings.rate_per_second,
            burst=settings.rate_burst,
            buffer_limit=settings.send_buffer_bytes,
            grace=settings.slow_consumer_grace,
            metrics=self._metrics,
        )
        session.deadline = asyncio.get_running_loop().call_later(
            settings.sign_in_deadline, _sign_in_deadline, session
        )
        self._sessions.add(session)
        self._metrics.connections.inc()
        try:
            async for data in connection:
                await self._received(session, data)
        except ConnectionClosed:
            pass
        finally:
            session.is_open = False
            if session.deadline is not None:
                session.deadline.cancel()
            self._sessions.discard(session)
            self._metrics.connections.dec()
            if session.is_signed_in:
                self._metrics.signed_in.dec()
                await self._hub.detach(session)

    async def _received(self, session: Session, data: str | bytes) -> None:
        session.last_received = time.monotonic()
        try:
            request = parse_request(decode(data))
        except NextstarError as error:
            session.reply_error(error.request_id, error)
            session.bad_frames += 1
            if session.bad_frames >= self._settings.max_bad_frames:
                session.close(CloseCode.POLICY_VIOLATION, "too many bad frames")
            return

        wait = session.bucket.take(session.last_received)
        if wait:
            session.reply_error(
                request.id,
                NextstarError.with_code(
                    ErrorCode.RATE_LIMITED,
                    "too many requests",
                    {"retry_after": round(wait, 3)},
                ),
            )
            return
        if self.draining:
            session.reply_error(
                request.id,
                NextstarError.with_code(
                    ErrorCode.UNAVAILABLE, "server shutting down; reconnect"
                ),
            )
            return
        await self._dispatcher.dispatch(session, request)

    async def _sweep_idle(self) -> None:
        timeout = self._settings.idle_timeout
        while True:
            await asyncio.sleep(max(1.0, timeout / 4))
            cutoff = time.monotonic() - timeout
            for session in list(self._sessions):
                if session.last_received < cutoff:
                    session.close(CloseCode.IDLE_TIMEOUT, "idle timeout")


def _select_subprotocol(
    connection: ServerConnection, offered: Sequence[str]
) -> str | None:
    # The client's order of preference wins; with none of ours offered the
    # session speaks JSON and no subprotocol is echoed.
    for subprotocol in offered:
        if subprotocol in SUBPROTOCOLS:
            return subprotocol
    return None


def _sign_in_deadline(session: Session) -> None:
    session.deadline = None
    if not session.is_signed_in:
        session.close(CloseCode.SIGN_IN_DEADLINE, "sign-in deadline passed")
