"""Method handlers: from validated params to a result, an error, or an ack
that follows later (``message.send``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..accounts.service import AccountService
from ..chat.fanout import Fanout
from ..chat.send import SendPath
from ..chat.service import ChatService
from ..wire.codec import Request
from ..wire.errors import (
    ErrorCode,
    NextstarError,
    Unauthenticated,
)
from ..wire.params import METHOD_PARAMS, SIGN_IN_METHODS, validate_params

if TYPE_CHECKING:
    from .hub import Hub
    from .session import Session

__all__ = ["Dispatcher"]

logger = logging.getLogger(__name__)

Handler = Callable[["Session", Any], Awaitable[Any]]


class Dispatcher:
    """Route each request to its handler and send its one answer."""

    def __init__(
        self,
        accounts: AccountService,
        chat: ChatService,
        send_path: SendPath,
        fanout: Fanout,
        hub: Hub,
        metrics: Any,
        node_id: str = "",
    ) -> None:
        self._node_id = node_id
        self._accounts = accounts
        self._chat = chat
        self._send_path = send_path
        self._fanout = fanout
        self._hub = hub
        self._metrics = metrics
        self._handlers: dict[str, Handler] = {
            "auth.request_code": self.request_code,
            "auth.sign_in": self.sign_in,
            "auth.resume": self.resume,
            "auth.sign_out": self.sign_out,
            "devices.list": self.devices_list,
            "devices.revoke": self.devices_revoke,
            "profile.get": self.profile_get,
            "profile.update": self.profile_update,
            "account.delete": self.account_delete,
            "presence.get": self.presence_get,
            "conv.direct": self.conv_direct,
            "conv.list": self.conv_list,
            "conv.get": self.conv_get,
            "group.create": self.group_create,
            "group.rename": self.group_rename,
            "group.add": self.group_add,
            "group.remove": self.group_remove,
            "group.leave": self.group_leave,
            "group.members": self.group_members,
            "message.history": self.message_history,
            "message.recall": self.message_recall,
            "message.read": self.message_read,
            "sync": self.sync,
            "ping": self.ping,
        }
        assert set(self._handlers) | {"message.send"} == set(METHOD_PARAMS)

    async def dispatch(self, session: Session, request: Request) -> None:
        """Answer ``request`` exactly once, with a result or an error."""
        method = request.method
        model = METHOD_PARAMS.get(method)
        try:
            if model is None:
                raise NextstarError.with_code(
                    ErrorCode.UNKNOWN_METHOD, f"unknown method: {method[:64]}"
                )
            self._metrics.request(method)
            if not session.is_signed_in and method not in SIGN_IN_METHODS:
                raise Unauthenticated("sign in first")
            params = validate_params(model, request.params)
            if method == "message.send":
                self._send_path.send(params, session, request.id)
                return
            result = await self._handlers[method](session, params)
        except NextstarError as error:
            self._error(session, method, request.id, error)
            return
        except Exception:
            logger.exception("handler failed: method=%s session=%d", method, session.id)
            self._error(session, method, request.id, NextstarError("internal error"))
            return
        try:
            session.reply(request.id, result)
        except (TypeError, ValueError, OverflowError):
            # A stored value the encoding cannot carry must not kill the
            # session: the request still gets its one answer.
            logger.exception("result not encodable: method=%s", method)
            self._error(
                session,
                method,
                request.id,
                NextstarError("result could not be encoded"),
            )

    def _error(
        self,
        session: Session,
        method: str,
        request_id: int | None,
        error: NextstarError,
    ) -> None:
        self._metrics.errors.labels(
            method if method in METHOD_PARAMS else "unknown", str(error.code)
        ).inc()
        session.reply_error(request_id, error)

    def send_failed(
        self, session: Session, request_id: int, error: NextstarError
    ) -> None:
        """Answer a ``message.send`` that failed after its dispatch."""
        self._error(session, "message.send", request_id, error)

    # -- accounts ------------------------------------------------------------

    async def request_code(self, session: Session, params: Any) -> Any:
        return await self._accounts.request_code(
            params.phone, params.region, session.address
        )

    async def sign_in(self, session: Session, params: Any) -> Any:
        _require_signed_out(session)
        signed_in, result = await self._accounts.sign_in(
            params.phone, params.region, params.code, params.device_name
        )
        await self._attach(session, signed_in.user_id, signed_in.session_id)
        return result

    async def resume(self, session: Session, params: Any) -> Any:
        _require_signed_out(session)
        signed_in, result = await self._accounts.resume(params.token)
        await self._attach(session, signed_in.user_id, signed_in.session_id)
        return result

    async def _attach(self, session: Session, user_id: int, session_id: int) -> None:
        session.user_id = user_id
        session.session_id = session_id
        if session.deadline is not None:
            session.deadline.cancel()
            session.deadline = None
        groups = await self._chat.group_ids(user_id)
        await self._hub.attach(session, groups)
        self._metrics.signed_in.inc()

    async def sign_out(self, session: Session, params: Any) -> Any:
        await self._accounts.revoke(session.user_id, session.session_id)
        self._revoke_after_reply(session.user_id, [session.session_id], "signed out")
        return {}

    async def devices_list(self, session: Session, params: Any) -> Any:
        devices = await self._accounts.list_devices(session.user_id, session.session_id)
        return {"devices": devices}

    async def devices_revoke(self, session: Session, params: Any) -> Any:
        await self._accounts.revoke(session.user_id, params.session_id)
        self._revoke_after_reply(session.user_id, [params.session_id], "device revoked")
        return {}

    async def profile_get(self, session: Session, params: Any) -> Any:
        return await self._accounts.get_profile(
            session.user_id, params.user_id or session.user_id
        )

    async def profile_update(self, session: Session, params: Any) -> Any:
        changes = params.model_dump(exclude_unset=True)
        if "gender" in changes and changes["gender"] is None:
            changes["gender"] = "unspecified"  # null clears, as for other fields
        return await self._accounts.update_profile(session.user_id, changes)

    async def account_delete(self, session: Session, params: Any) -> Any:
        await self._accounts.delete_account(session.user_id)
        self._revoke_after_reply(session.user_id, None, "account deleted")
        return {}

    def _revoke_after_reply(
        self, user_id: int, session_ids: list[int] | None, reason: str
    ) -> None:
        # The requesting session is among those closed; scheduling the revoke
        # for the next loop turn lets its reply go out before the close frame.
        args: dict[str, Any] = {"reason": reason}
        if session_ids is not None:
            args["session_ids"] = session_ids
        asyncio.get_running_loop().call_soon(
            lambda: self._fanout.control(user_id, "revoke", **args)
        )

    async def presence_get(self, session: Session, params: Any) -> Any:
        if (
            params.user_id != session.user_id
            and not await self._chat.share_conversation(session.user_id, params.user_id)
        ):
            raise NextstarError.with_code(
                ErrorCode.FORBIDDEN, "presence is shown to conversation partners only"
            )
        nodes = await self._hub.presence(params.user_id)
        return {
            "user_id": params.user_id,
            "online": bool(nodes),
            "devices": sum(nodes.values()),
        }

    # -- conversations ---------------------------------------------------------

    async def conv_direct(self, session: Session, params: Any) -> Any:
        return await self._chat.direct(session.user_id, params.user_id)

    async def conv_list(self, session: Session, params: Any) -> Any:
        return {"conversations": await self._chat.list(session.user_id)}

    async def conv_get(self, session: Session, params: Any) -> Any:
        return await self._chat.get(session.user_id, params.conversation_id)

    async def group_create(self, session: Session, params: Any) -> Any:
        return await self._chat.create_group(
            session.user_id, params.title, list(params.member_ids)
        )

    async def group_rename(self, session: Session, params: Any) -> Any:
        seq = await self._chat.rename(
            session.user_id, params.conversation_id, params.title
        )
        return {"seq": seq}

    async def group_add(self, session: Session, params: Any) -> Any:
        seq = await self._chat.add_members(
            session.user_id, params.conversation_id, list(params.user_ids)
        )
        return {"seq": seq}

    async def group_remove(self, session: Session, params: Any) -> Any:
        seq = await self._chat.remove_member(
            session.user_id, params.conversation_id, params.user_id
        )
        return {"seq": seq}

    async def group_leave(self, session: Session, params: Any) -> Any:
        return {"seq": await self._chat.leave(session.user_id, params.conversation_id)}

    async def group_members(self, session: Session, params: Any) -> Any:
        members = await self._chat.group_members(
            session.user_id, params.conversation_id
        )
        return {"members": members}

    # -- messages ----------------------------------------------------------------

    async def message_history(self, session: Session, params: Any) -> Any:
        return await self._chat.history(
            session.user_id, params.conversation_id, params.before_seq, params.limit
        )

    async def message_recall(self, session: Session, params: Any) -> Any:
        return await self._chat.recall(
            session.user_id, params.conversation_id, params.seq
        )

    async def message_read(self, session: Session, params: Any) -> Any:
        return await self._chat.mark_read(
            session.user_id, params.conversation_id, params.seq
        )

    async def sync(self, session: Session, params: Any) -> Any:
        cursors = {c.conversation_id: c.seq for c in params.cursors}
        return await self._chat.sync(session.user_id, cursors, params.limit)

    async def ping(self, session: Session, params: Any) -> Any:
        return {"time": time.time(), "node": self._node_id}


def _require_signed_out(session: Session) -> None:
    if session.is_signed_in:
        raise NextstarError.with_code(
            ErrorCode.ALREADY_AUTHENTICATED, "this session is signed in already"
        )
