"""The interactive ``nextstar chat``: one conversation, live, from a terminal.

Pushes are the fast path and the store is the truth (ARCHITECTURE.md,
delivery guarantee 4): the chat shows pushed messages while their ``seq``
follows on, and catches up with ``sync`` when a push skips a ``seq``, when
the server says ``session.resync``, and after every reconnect.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import random
import sys
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TextIO

from ._render import Names, message_line, message_users
from .client import Client, ClientError, Disconnected

__all__ = ["ChatRoom", "Push", "Timeline", "read_lines"]

logger = logging.getLogger(__name__)

QUIT = "/quit"

# Close codes after which reconnecting cannot help (see wire/errors.py).
SESSION_REVOKED = 4003
ACCOUNT_SUSPENDED = 4005
FINAL_CLOSE_CODES = {
    SESSION_REVOKED: "this session was revoked; log in again",
    ACCOUNT_SUSPENDED: "this account is suspended",
}

RECONNECT_ATTEMPTS = 8
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 8.0

# An own message acked ahead of the shown seq means another member's message
# is in flight; if its push has not come after this long, sync instead.
GAP_GRACE = 1.0


class Push(enum.Enum):
    """What to do with a pushed message."""

    SHOW = "show"
    SKIP = "skip"
    GAP = "gap"


class Timeline:
    """Which messages of one conversation have been shown; no I/O.

    Every ``seq`` up to :attr:`seq` has been shown (or was the user's own,
    typed here). Own messages acked beyond that wait in a set until the
    messages before them arrive.

    Args:
        seq: The last ``seq`` shown already.
    """

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self._own: set[int] = set()

    @property
    def has_gap(self) -> bool:
        """Whether some message before an own acked one is still missing."""
        return bool(self._own)

    def sent(self, seq: int) -> None:
        """Record that the user's own message got ``seq``; it needs no showing."""
        if seq > self.seq:
            self._own.add(seq)
            self._absorb()

    def push(self, message: dict[str, Any]) -> Push:
        """Classify a pushed message; SHOW advances the timeline past it."""
        seq = message["seq"]
        if seq <= self.seq or seq in self._own:
            return Push.SKIP
        if seq > self.seq + 1:
            return Push.GAP
        self.seq = seq
        self._absorb()
        return Push.SHOW

    def catch_up(self, messages: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Take a synced batch (consecutive from :attr:`seq` on); return the
        messages not shown yet, in order."""
        fresh = []
        for message in sorted(messages, key=lambda m: m["seq"]):
            seq = message["seq"]
            if seq <= self.seq:
                continue
            if seq not in self._own:
                fresh.append(message)
            self.seq = seq
        self._own = {seq for seq in self._own if seq > self.seq}
        self._absorb()
        return fresh

    def _absorb(self) -> None:
        while self.seq + 1 in self._own:
            self.seq += 1
            self._own.discard(self.seq)


def read_lines(
    loop: asyncio.AbstractEventLoop, stream: TextIO
) -> asyncio.Queue[str | None]:
    """Feed the lines of ``stream`` into a queue; None marks the end.

    A daemon thread reads, because blocking reads of a terminal, a pipe or a
    file all work from a thread, while the event loop's pipe readers refuse
    regular files; the thread never keeps the process alive at exit.
    """
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def feed(line: str | None) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, line)
        except RuntimeError:
            pass  # the loop closed: the chat is over

    def read() -> None:
        try:
            for line in iter(stream.readline, ""):
                feed(line.rstrip("\r\n"))
        except (OSError, ValueError):
            logger.debug("stdin reader stopped", exc_info=True)
        feed(None)

    threading.Thread(target=read, name="nextstar-stdin", daemon=True).start()
    return queue


class ChatRoom:
    """Show one conversation live and send what the user types.

    Args:
        connect: Opens a new signed-in client, for reconnecting; raises
            OSError, TimeoutError or Disconnected when worth retrying.
        conversation_id: The conversation.
        timeline: What has been shown already.
        cursors: Last ``seq`` known of every conversation, for ``sync``.
        names: User labels.
        lines: Typed lines; None is the end of input.
        as_json: Print each message as one JSON line instead of text.
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[Client]],
        conversation_id: int,
        timeline: Timeline,
        cursors: dict[int, int],
        names: Names,
        lines: asyncio.Queue[str | None],
        *,
        as_json: bool = False,
        out: TextIO = sys.stdout,
        notes: TextIO = sys.stderr,
    ) -> None:
        self._connect = connect
        self.conversation_id = conversation_id
        self.timeline = timeline
        self.cursors = cursors
        self.names = names
        self._lines = lines
        self._as_json = as_json
        self._out = out
        self._notes = notes
        self._line_task: asyncio.Future[str | None] | None = None
        # Typed but not acked when the connection dropped; resent with the
        # same client message id, so a message the server did store before
        # the drop is not stored twice (delivery guarantee 3).
        self._unsent: list[tuple[str, str]] = []
        self._quit = False

    async def run(self, client: Client) -> int:
        """Chat until ``/quit`` or end of input; return the exit status."""
        self._line_task = asyncio.ensure_future(self._lines.get())
        try:
            caught_up = True
            while True:
                try:
                    await self._converse(client, caught_up)
                    return 0
                except Disconnected as exc:
                    if exc.code in FINAL_CLOSE_CODES:
                        self.note(f"error: {FINAL_CLOSE_CODES[exc.code]}")
                        return 1
                    self.note(f"connection lost ({exc}); reconnecting")
                finally:
                    await client.close()
                reconnected = await self._reconnect()
                if reconnected is None:
                    return 0 if self._quit else 2
                client = reconnected
                caught_up = False
        finally:
            self._line_task.cancel()

    async def _converse(self, client: Client, caught_up: bool) -> None:
        """Serve one connection until the user quits; raise Disconnected."""
        client.keep_alive()  # a chat may listen for longer than the idle timeout
        if not caught_up:
            await self._catch_up(client)
        await self._send_unsent(client)

        event = asyncio.ensure_future(client.next_event(timeout=None))
        gap_timer: asyncio.Future[None] | None = None
        try:
            while True:
                waiting: set[asyncio.Future[Any]] = {event, self._line_task}
                if gap_timer is not None:
                    waiting.add(gap_timer)
                done, _ = await asyncio.wait(
                    waiting, return_when=asyncio.FIRST_COMPLETED
                )

                if event in done:
                    await self._on_event(client, event.result())
                    event = asyncio.ensure_future(client.next_event(timeout=None))

                if self._line_task in done:
                    line = self._line_task.result()
                    if line is None or line.strip() == QUIT:
                        self._quit = True
                        return
                    self._line_task = asyncio.ensure_future(self._lines.get())
                    await self._send(client, line)
                    if self.timeline.has_gap and gap_timer is None:
                        gap_timer = asyncio.ensure_future(asyncio.sleep(GAP_GRACE))

                if gap_timer is not None and gap_timer in done:
                    gap_timer = None
                    if self.timeline.has_gap:
                        await self._catch_up(client)
        finally:
            event.cancel()
            if gap_timer is not None:
                gap_timer.cancel()

    async def _on_event(self, client: Client, frame: dict[str, Any]) -> None:
        if frame.get("type") == "err":
            error = frame["error"]
            self.note(f"error: {error['code']}: {error['message']}")
            return
        name = frame.get("event")
        if name == "session.resync":
            await self._catch_up(client)
            return
        if name != "message.new":
            logger.debug("event ignored: %s", name)
            return

        message = frame["data"]
        conversation_id = message["conversation_id"]
        if conversation_id != self.conversation_id:
            # Other conversations are not shown; keeping their cursors
            # current keeps each catch-up down to this conversation.
            known = self.cursors.get(conversation_id, 0)
            self.cursors[conversation_id] = max(known, message["seq"])
            return
        verdict = self.timeline.push(message)
        if verdict is Push.SHOW:
            await self._show(client, [message])
        elif verdict is Push.GAP:
            logger.debug(
                "seq gap: shown=%d pushed=%d", self.timeline.seq, message["seq"]
            )
            await self._catch_up(client)

    async def _catch_up(self, client: Client) -> None:
        """Fetch what this conversation has after the shown ``seq``."""
        self.cursors[self.conversation_id] = self.timeline.seq
        caught = await client.sync(self.cursors)
        fresh = self.timeline.catch_up(caught.get(self.conversation_id, ()))
        self.cursors[self.conversation_id] = self.timeline.seq
        if fresh:
            await self._show(client, fresh)

    async def _show(self, client: Client, messages: list[dict[str, Any]]) -> None:
        users = set().union(*(message_users(m) for m in messages))
        await self.names.resolve(client, users)
        for message in messages:
            self.print_message(message)
        await self.mark_read(client)

    async def mark_read(self, client: Client) -> None:
        """Move the read cursor to what is shown, as any chat client does."""
        if self.timeline.seq == 0:
            return
        try:
            await client.call(
                "message.read",
                conversation_id=self.conversation_id,
                seq=self.timeline.seq,
            )
        except ClientError as exc:
            # A receipt is a courtesy; after removal from a group it fails,
            # and the chat should still show the removal.
            logger.debug("read receipt refused: %s", exc)

    async def _send(self, client: Client, text: str) -> None:
        if not text.strip():
            return
        await self._send_one(client, text, uuid.uuid4().hex)

    async def _send_unsent(self, client: Client) -> None:
        unsent, self._unsent = self._unsent, []
        for index, (text, client_msg_id) in enumerate(unsent):
            try:
                await self._send_one(client, text, client_msg_id)
            except Disconnected:
                self._unsent[:0] = unsent[index + 1 :]
                raise

    async def _send_one(self, client: Client, text: str, client_msg_id: str) -> None:
        try:
            ack = await client.send_text(self.conversation_id, text, client_msg_id)
        except Disconnected:
            self._unsent.append((text, client_msg_id))
            raise
        except ClientError as exc:
            self.note(f"error: {exc.code}: {exc.message} (not sent: {text[:40]!r})")
            return
        self.timeline.sent(ack["seq"])

    async def _reconnect(self) -> Client | None:
        """Reconnect with growing pauses; None when the user quit or it
        failed every time."""
        for attempt in range(RECONNECT_ATTEMPTS):
            delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2**attempt)
            # Jitter, so that clients dropped together do not return together.
            if not await self._pause(delay * random.uniform(0.5, 1.0)):
                return None
            try:
                client = await self._connect()
            except (OSError, TimeoutError, Disconnected) as exc:
                # Anything else, a revoked token above all, is not cured by
                # trying again, and ends the chat.
                logger.debug("reconnect failed", exc_info=True)
                self.note(f"reconnect {attempt + 1}/{RECONNECT_ATTEMPTS} failed: {exc}")
                continue
            self.note("reconnected")
            return client
        self.note(f"error: gave up after {RECONNECT_ATTEMPTS} attempts")
        return None

    async def _pause(self, delay: float) -> bool:
        """Wait ``delay`` seconds, queueing typed lines; False if the user quit."""
        assert self._line_task is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        while (left := deadline - loop.time()) > 0:
            done, _ = await asyncio.wait({self._line_task}, timeout=left)
            if not done:
                break
            line = self._line_task.result()
            if line is None or line.strip() == QUIT:
                self._quit = True
                return False
            self._line_task = asyncio.ensure_future(self._lines.get())
            if line.strip():
                self._unsent.append((line, uuid.uuid4().hex))
        return True

    def print_message(self, message: dict[str, Any]) -> None:
        if self._as_json:
            text = json.dumps(message, ensure_ascii=False)
        else:
            text = message_line(message, self.names)
        print(text, file=self._out, flush=True)

    def note(self, text: str) -> None:
        print(text, file=self._notes, flush=True)
