"""Local sessions by user and conversation, fed by the broker."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

from ..broker.base import Broker, conversation_channel, user_channel
from ..broker.registry import NodeRegistry
from ..wire.codec import Encoding, decode, encode, event_frame, ws_frame
from ..wire.errors import CloseCode
from ..wire.relay import CONTROL, unpack
from .session import Session

__all__ = ["Hub"]

logger = logging.getLogger(__name__)


class Hub:
    """Route broker payloads to this node's sessions.

    The node subscribes to ``u:<user>`` while any session of the user is here,
    and to ``c:<conversation>`` while any member of that group is here; both
    are reference-counted by the sets below.
    """

    def __init__(self, broker: Broker, registry: NodeRegistry, metrics: Any) -> None:
        self._broker = broker
        self._registry = registry
        self._metrics = metrics
        # Local sessions by the channel that feeds them: ``u:<user>`` for
        # every signed-in session, ``c:<conversation>`` for group members.
        self.by_channel: dict[str, set[Session]] = {}
        self._last_payload: bytes | None = None
        self._last_message: list[Any] = []
        self._last_frames: list[bytes | None] = []
        broker.bind(self.deliver, self.resync)

    async def attach(self, session: Session, group_ids: Iterable[int]) -> None:
        """Register a signed-in session and subscribe what it needs."""
        channel = user_channel(session.user_id)
        sessions = self.by_channel.setdefault(channel, set())
        sessions.add(session)
        if len(sessions) == 1:
            await self._broker.subscribe(channel)
        for conversation_id in group_ids:
            await self._join(session, conversation_id)
        await self._set_presence(session.user_id, len(sessions))

    async def detach(self, session: Session) -> None:
        channel = user_channel(session.user_id)
        sessions = self.by_channel.get(channel)
        if sessions is None or session not in sessions:
            return
        sessions.discard(session)
        if not sessions:
            del self.by_channel[channel]
            await self._broker.unsubscribe(channel)
        for conversation_id in list(session.groups):
            await self._leave(session, conversation_id)
        await self._set_presence(session.user_id, len(sessions))

    async def _set_presence(self, user_id: int, devices: int) -> None:
        # Presence is advisory: a registry outage must not fail a sign-in or
        # leave a closing session half torn down.
        try:
            await self._registry.set_presence(user_id, devices)
        except Exception as exc:  # noqa: BLE001 - any backend failure
            logger.warning("presence not updated for user=%d: %s", user_id, exc)

    async def presence(self, user_id: int) -> dict[str, int]:
        """Return node id to device count for ``user_id`` across live nodes."""
        return await self._registry.presence(user_id)

    async def _join(self, session: Session, conversation_id: int) -> None:
        if self._join_locally(session, conversation_id):
            await self._broker.subscribe(conversation_channel(conversation_id))

    async def _leave(self, session: Session, conversation_id: int) -> None:
        if self._leave_locally(session, conversation_id):
            await self._broker.unsubscribe(conversation_channel(conversation_id))

    def _join_locally(self, session: Session, conversation_id: int) -> bool:
        """Add the session to the group; True if the node must subscribe."""
        session.groups.add(conversation_id)
        members = self.by_channel.setdefault(
            conversation_channel(conversation_id), set()
        )
        members.add(session)
        return len(members) == 1

    def _leave_locally(self, session: Session, conversation_id: int) -> bool:
        """Drop the session from the group; True if the node must unsubscribe."""
        session.groups.discard(conversation_id)
        channel = conversation_channel(conversation_id)
        members = self.by_channel.get(channel)
        if members is None:
            return False
        members.discard(session)
        if members:
            return False
        del self.by_channel[channel]
        return True

    def _sessions(self, channel: str) -> set[Session] | None:
        return self.by_channel.get(channel)

    def deliver(self, channel: str, payload: bytes) -> None:
        """Write one published event to every local session on ``channel``."""
        if payload is self._last_payload:
            # The same publish on a second channel (a direct message goes to
            # both users' channels): reuse the decoding and the frames.
            message, frames = self._last_message, self._last_frames
        else:
            message = unpack(payload)
            if message[0] == CONTROL:
                self._control(channel, message[1], message[2])
                return
            frames = [None, None]
            self._last_payload, self._last_message = payload, message
            self._last_frames = frames
        _, origin, skip_users, published_at, frame = message
        sessions = self._sessions(channel)
        if not sessions:
            return
        delivered = 0
        for session in sessions:
            if session.id == origin or (skip_users and session.user_id in skip_users):
                continue
            if session.encoding is Encoding.MSGPACK:
                binary = frames[0]
                if binary is None:
                    binary = frames[0] = ws_frame(frame, True)
                delivered += session.write(binary)
            else:
                text = frames[1]
                if text is None:
                    text = frames[1] = ws_frame(
                        encode(decode(frame), Encoding.JSON), False
                    )
                delivered += session.write(text)
        if delivered:
            self._metrics.deliveries += delivered
            self._metrics.delivery_latency.observe(time.time() - published_at)

    def _control(self, channel: str, action: str, args: dict[str, Any]) -> None:
        sessions = list(self._sessions(channel) or ())
        if action == "revoke":
            revoked = args.get("session_ids")
            for session in sessions:
                if revoked is None or session.session_id in revoked:
                    session.close(
                        CloseCode.SESSION_REVOKED, args.get("reason", "revoked")
                    )
            return
        frames = _prepared(event_frame("message.new", args["event"]))
        conversation_id = args["conversation_id"]
        channel = conversation_channel(conversation_id)
        for session in sessions:
            if action == "join" and conversation_id not in session.groups:
                # Membership changes at once, so that no group message that
                # arrives after the join notice skips this session.
                if self._join_locally(session, conversation_id):
                    _spawn(self._broker.subscribe(channel))
                session.write(frames[session.encoding], force=True)
            elif action == "leave":
                session.write(frames[session.encoding], force=True)
                if self._leave_locally(session, conversation_id):
                    _spawn(self._broker.unsubscribe(channel))

    def resync(self, channels: Iterable[str]) -> None:
        """Tell sessions behind ``channels`` that pushes may have been lost."""
        frames = _prepared(event_frame("session.resync", {"reason": "broker"}))
        told: set[Session] = set()
        for channel in channels:
            for session in self._sessions(channel) or ():
                if session not in told and session.is_open:
                    told.add(session)
                    session.write(frames[session.encoding], force=True)
        if told:
            self._metrics.resyncs.inc(len(told))
            logger.info("resync sent to %d sessions", len(told))


def _prepared(frame: dict[str, Any]) -> dict[Encoding, bytes]:
    """Encode ``frame`` once per encoding, for writing to many sessions."""
    return {
        encoding: ws_frame(encode(frame, encoding), encoding.is_binary)
        for encoding in Encoding
    }


_background: set[Any] = set()


def _spawn(coroutine: Any) -> None:
    task = asyncio.get_running_loop().create_task(coroutine)
    _background.add(task)
    task.add_done_callback(_background.discard)
