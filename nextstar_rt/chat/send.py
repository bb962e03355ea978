"""The send path: hooks, group commit, ack, publish, post-send hooks."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, Protocol

from ..admin.hooks import Action, Draft, HookPipeline
from ..config import ChatSettings
from ..store.writer import Append, BatchWriter, Stored
from ..wire.codec import Encoding, encode
from ..wire.errors import ErrorCode, InvalidParams, NextstarError, Rejected
from ..wire.params import MessageSend
from .fanout import Fanout

__all__ = ["SendPath"]

logger = logging.getLogger(__name__)


class Sender(Protocol):
    """What the send path needs of a session: who it is and how to answer."""

    id: int
    user_id: int

    def reply(self, request_id: int, result: Any) -> None: ...


ErrorFn = Callable[[Sender, int, NextstarError], None]


class SendPath:
    """Store a message once and fan it out, without per-recipient work.

    Nothing here awaits: the append is queued on the batch writer and the rest
    runs in the commit's callback, so a session can have many sends in flight
    and their ``seq`` order follows their arrival order.
    """

    def __init__(
        self,
        writer: BatchWriter,
        fanout: Fanout,
        hooks: HookPipeline,
        settings: ChatSettings,
        metrics: Any,
        on_error: ErrorFn,
    ) -> None:
        self._on_error = on_error
        self._writer = writer
        self._fanout = fanout
        self._hooks = hooks
        self._max_data = settings.max_data_bytes
        self._metrics = metrics

    def send(self, params: MessageSend, session: Sender, request_id: int) -> None:
        """Queue the message; ``session`` hears the ack or the error later."""
        user_id = session.user_id
        data = None
        if params.data is not None:
            data = {"type": params.data.type, "body": params.data.body}
            error = self._check_data(data)
            if error is not None:
                self._on_error(session, request_id, error)
                return
        draft = Draft("message", user_id, params.conversation_id, params.text, data)

        verdict = self._hooks.check(draft)
        if verdict.action is Action.REJECT:
            self._on_error(
                session, request_id, Rejected(verdict.reason, {"hook": verdict.hook})
            )
            return

        append = Append(
            params.conversation_id,
            user_id,
            "data" if data else "text",
            params.text,
            data,
            params.client_msg_id,
        )
        future = self._writer.submit(append)
        future.add_done_callback(
            functools.partial(self._stored, append, draft, session, request_id)
        )

    def _check_data(self, data: dict[str, Any]) -> NextstarError | None:
        """Return why ``data`` cannot be stored and sent on, or None."""
        try:
            # Both encodings must carry it: no bytes, no NaN, no integers
            # beyond 64 bits, since every member may use either.
            encode(data, Encoding.JSON)
            size = len(encode(data, Encoding.MSGPACK))
        except (TypeError, ValueError, OverflowError):
            return InvalidParams(
                "data.body: only maps, lists, strings, booleans, null, "
                "64-bit integers and finite floats are allowed"
            )
        if size > self._max_data:
            return NextstarError.with_code(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"data is larger than {self._max_data} bytes",
            )
        return None

    def _stored(
        self,
        append: Append,
        draft: Draft,
        session: Sender,
        request_id: int,
        future: Any,
    ) -> None:
        error = future.exception()
        if error is not None:
            if not isinstance(error, NextstarError):
                logger.error("send failed", exc_info=error)
                error = NextstarError("message could not be stored")
            self._on_error(session, request_id, error)
            return
        stored: Stored = future.result()

        # The ack goes first: it promises durability, which holds already.
        session.reply(
            request_id,
            {
                "conversation_id": stored.conversation_id,
                "seq": stored.seq,
                "created_at": stored.created_at,
                "duplicate": stored.duplicate,
            },
        )
        if stored.duplicate:
            return  # the original was published when it was stored

        self._metrics.messages_stored += 1
        event: dict[str, Any] = {
            "conversation_id": stored.conversation_id,
            "seq": stored.seq,
            "sender_id": append.sender_id,
            "kind": append.kind,
            "created_at": stored.created_at,
            "client_msg_id": append.client_msg_id,
        }
        if append.text is not None:
            event["text"] = append.text
        if append.data is not None:
            event["data"] = append.data
        self._fanout.to_conversation(
            "message.new",
            event,
            stored.conversation_kind,
            stored.conversation_id,
            stored.direct_members,
            origin_session=session.id,
        )
        draft.path = stored.conversation_kind
        self._hooks.stored(draft, stored.seq)
