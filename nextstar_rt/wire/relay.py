"""The node-to-node envelope carried by the broker.

A broker payload is a MessagePack array. Events hold a complete protocol
frame already encoded in MessagePack, so a frame is encoded once per message,
not once per node or recipient:

- ``[0, origin_session, skip_users, published_at, frame]``: deliver ``frame``
  to every local session on the channel, except the session it came from
  (``origin_session``, 0 for none) and the sessions of the users in
  ``skip_users`` (who hear the event on their own channel instead).
- ``[1, action, args]``: a control for the channel's local sessions, for
  example ``join`` or ``leave`` a conversation, or ``revoke`` sessions.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import msgpack

__all__ = ["EVENT", "CONTROL", "pack_event", "pack_control", "unpack"]

EVENT = 0
CONTROL = 1

_packb = msgpack.Packer(use_bin_type=True, autoreset=True).pack


def pack_event(
    frame: bytes, origin_session: int = 0, skip_users: Sequence[int] = ()
) -> bytes:
    return _packb([EVENT, origin_session, list(skip_users), time.time(), frame])


def pack_control(action: str, args: dict[str, Any]) -> bytes:
    return _packb([CONTROL, action, args])


def unpack(payload: bytes) -> list[Any]:
    return msgpack.unpackb(payload, raw=False)
