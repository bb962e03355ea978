"""One WebSocket session: its identity, encoding, limits and send buffer."""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any

from ..wire.codec import (
    Encoding,
    encode,
    error_frame,
    event_frame,
    result_frame,
    ws_frame,
)
from ..wire.errors import CloseCode, NextstarError

if TYPE_CHECKING:
    from websockets.asyncio.server import ServerConnection

__all__ = ["Session", "TokenBucket"]

logger = logging.getLogger(__name__)

# Session ids travel between nodes (a publish names its origin session so that
# the sender's own connection is skipped), so they must not repeat across
# processes: each process counts from its own random 30-bit prefix.
_session_ids = itertools.count((secrets.randbits(30) << 32) + 1)


class TokenBucket:
    """Allow ``rate`` requests per second with bursts up to ``burst``."""

    __slots__ = ("rate", "burst", "tokens", "updated")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.updated = time.monotonic()

    def take(self, now: float) -> float:
        """Take one token at monotonic time ``now``; return 0 on success, else
        seconds until one is free."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class Session:
    """State of one connection; writes go straight to its transport.

    Frames are written as prepared bytes rather than through
    ``connection.send()``: fan-out builds one frame and writes it to many
    transports with no per-recipient encoding or awaiting. This is valid only
    because no extension (compression) is negotiated and frames are never
    fragmented, so each write is one whole frame.

    The send buffer is bounded: past ``buffer_limit`` bytes queued in the
    transport, further pushes are dropped and the session has ``grace``
    seconds to drain. If it does, it is told to resync (it missed pushes); if
    not, it is closed with 4004.
    """

    __slots__ = (
        "id",
        "connection",
        "transport",
        "encoding",
        "address",
        "user_id",
        "session_id",
        "groups",
        "bucket",
        "bad_frames",
        "last_received",
        "buffer_limit",
        "grace",
        "overflowed",
        "is_open",
        "deadline",
        "metrics",
        "pending",
        "loop",
        "__weakref__",
    )

    def __init__(
        self,
        connection: ServerConnection,
        encoding: Encoding,
        *,
        rate: float,
        burst: int,
        buffer_limit: int,
        grace: float,
        metrics: Any,
    ) -> None:
        self.id = next(_session_ids)
        self.connection = connection
        self.transport = connection.transport
        self.encoding = encoding
        address = connection.remote_address
        self.address = str(address[0]) if address else "unknown"
        self.user_id = 0
        self.session_id = 0
        self.groups: set[int] = set()
        self.bucket = TokenBucket(rate, burst)
        self.bad_frames = 0
        self.last_received = time.monotonic()
        self.buffer_limit = buffer_limit
        self.grace = grace
        self.overflowed = False
        self.is_open = True
        self.deadline: asyncio.TimerHandle | None = None
        self.metrics = metrics
        self.pending: list[bytes] = []
        self.loop = asyncio.get_running_loop()

    @property
    def is_signed_in(self) -> bool:
        return self.user_id != 0

    def reply(self, request_id: int, result: Any) -> None:
        self.send_obj(result_frame(request_id, result))

    def reply_error(self, request_id: int | None, error: NextstarError) -> None:
        self.send_obj(error_frame(request_id, error))

    def send_event(self, name: str, data: Any) -> None:
        self.send_obj(event_frame(name, data))

    def send_obj(self, frame: dict[str, Any]) -> None:
        encoding = self.encoding
        self.write(ws_frame(encode(frame, encoding), encoding.is_binary), force=True)

    def write(self, frame: bytes, force: bool = False) -> bool:
        """Queue one prepared WebSocket frame; return False if it was dropped.

        Frames queued in one turn of the event loop leave in one write at the
        end of it: a group commit acks many sends at once and a burst pushes
        many events, and one system call for all of them costs far less than
        one each.

        Replies (``force``) are queued even past the limit, because a request
        must get its one answer; pushes are dropped instead.
        """
        if not self.is_open:
            return False
        if self.overflowed and not force:
            return False
        # Only what the kernel would not take counts against the limit: what
        # this turn queued mostly leaves at once when it is flushed.
        if not force and self.transport.get_write_buffer_size() > self.buffer_limit:
            self._overflow()
            return False
        pending = self.pending
        if not pending:
            self.loop.call_soon(self.flush)
        pending.append(frame)
        return True

    def flush(self) -> None:
        """Write every queued frame to the transport."""
        pending = self.pending
        if not pending:
            return
        if not self.transport.is_closing():
            self.transport.write(pending[0] if len(pending) == 1 else b"".join(pending))
        pending.clear()

    def _overflow(self) -> None:
        self.overflowed = True
        self.metrics.slow_consumers.inc()
        logger.info("slow consumer: session=%d user=%d", self.id, self.user_id)
        self.loop.call_later(self.grace, self._check_drained)

    def _check_drained(self) -> None:
        if not self.is_open:
            return
        if self.transport.get_write_buffer_size() <= self.buffer_limit // 2:
            self.overflowed = False
            self.metrics.resyncs.inc()
            self.send_event("session.resync", {"reason": "slow_consumer"})
            return
        self.close(CloseCode.SLOW_CONSUMER, "send buffer full; reconnect and sync")

    def close(self, code: int, reason: str) -> None:
        """Start a close handshake; pushes stop at once."""
        if not self.is_open:
            return
        self.flush()  # what was queued goes out before the close frame
        self.is_open = False
        if self.deadline is not None:
            self.deadline.cancel()
        self.loop.create_task(self.connection.close(code, reason))
