"""Publish protocol events to broker channels, encoded once."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ..broker.base import Broker, conversation_channel, user_channel
from ..wire.codec import Encoding, encode, event_frame
from ..wire.relay import pack_control, pack_event

__all__ = ["Fanout"]


class Fanout:
    """Turn an event into one MessagePack frame and publish it."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker

    def event(
        self,
        name: str,
        data: Any,
        channels: Iterable[str],
        *,
        origin_session: int = 0,
        skip_users: Sequence[int] = (),
    ) -> None:
        frame = encode(event_frame(name, data), Encoding.MSGPACK)
        payload = pack_event(frame, origin_session, skip_users)
        publish = self._broker.publish
        for channel in channels:
            publish(channel, payload)

    def to_conversation(
        self,
        name: str,
        data: Any,
        kind: str,
        conversation_id: int,
        direct_members: Iterable[int] = (),
        *,
        origin_session: int = 0,
        skip_users: Sequence[int] = (),
    ) -> None:
        """Publish to a conversation: ``c:`` for a group, ``u:`` of both peers
        for a direct conversation."""
        if kind == "group":
            channels: Iterable[str] = (conversation_channel(conversation_id),)
        else:
            channels = [user_channel(user) for user in direct_members]
        self.event(
            name, data, channels, origin_session=origin_session, skip_users=skip_users
        )

    def control(self, user_id: int, action: str, **args: Any) -> None:
        self._broker.publish(user_channel(user_id), pack_control(action, args))
