"""Parameter schemas of every protocol v1 method.

Each method's ``params`` map is checked against one pydantic model: strict
types (no string-to-number coercion), no unknown fields. The same models
generate the machine-readable schema in ``protocol/schema.json``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from .errors import InvalidParams

__all__ = ["METHOD_PARAMS", "validate_params", "Params"]

Id = Annotated[int, Field(ge=1, le=2**53 - 1)]
Seq = Annotated[int, Field(ge=0, le=2**53 - 1)]
ClientMsgId = Annotated[str, Field(min_length=1, max_length=64)]
Title = Annotated[str, Field(min_length=1, max_length=64)]


class Params(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Empty(Params):
    pass


class RequestCode(Params):
    phone: Annotated[str, Field(min_length=1, max_length=32)]
    region: Annotated[str, Field(min_length=2, max_length=2)] | None = None


class SignIn(Params):
    phone: Annotated[str, Field(min_length=1, max_length=32)]
    code: Annotated[str, Field(min_length=1, max_length=16)]
    device_name: Annotated[str, Field(min_length=1, max_length=64)] = "unnamed device"
    region: Annotated[str, Field(min_length=2, max_length=2)] | None = None


class Resume(Params):
    token: Annotated[str, Field(min_length=1, max_length=128)]


class SessionRef(Params):
    session_id: Id


class ProfileGet(Params):
    user_id: Id | None = None


class ProfileUpdate(Params):
    nickname: Annotated[str, Field(min_length=1, max_length=32)] | None = None
    avatar_url: Annotated[str, Field(max_length=512, pattern=r"^https?://")] | None = (
        None
    )
    gender: Literal["female", "male", "other", "unspecified"] | None = None
    birthday: Annotated[str, Field(pattern=r"^\d{4}-\d{2}-\d{2}$")] | None = None
    region: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    handle: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{5,19}$")] | None = None


class PresenceGet(Params):
    user_id: Id


class DirectConversation(Params):
    user_id: Id


class ConversationRef(Params):
    conversation_id: Id


class GroupCreate(Params):
    title: Title
    member_ids: Annotated[list[Id], Field(max_length=499)] = []


class GroupRename(Params):
    conversation_id: Id
    title: Title


class GroupAdd(Params):
    conversation_id: Id
    user_ids: Annotated[list[Id], Field(min_length=1, max_length=100)]


class GroupRemove(Params):
    conversation_id: Id
    user_id: Id


class DataPayload(Params):
    type: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_.-]+$")]
    body: dict[str, Any]


class MessageSend(Params):
    conversation_id: Id
    client_msg_id: ClientMsgId
    text: Annotated[str, Field(min_length=1, max_length=8000)] | None = None
    data: DataPayload | None = None

    @pydantic.model_validator(mode="after")
    def _one_body(self) -> MessageSend:
        if (self.text is None) == (self.data is None):
            raise ValueError("exactly one of text and data is required")
        return self


class MessageHistory(Params):
    conversation_id: Id
    before_seq: Seq | None = None
    limit: Annotated[int, Field(ge=1, le=200)] = 50


class MessageRef(Params):
    conversation_id: Id
    seq: Annotated[int, Field(ge=1, le=2**53 - 1)]


class Cursor(Params):
    conversation_id: Id
    seq: Seq


class Sync(Params):
    cursors: Annotated[list[Cursor], Field(max_length=10000)] = []
    limit: Annotated[int, Field(ge=1, le=500)] = 200


METHOD_PARAMS: dict[str, type[Params]] = {
    "auth.request_code": RequestCode,
    "auth.sign_in": SignIn,
    "auth.resume": Resume,
    "auth.sign_out": Empty,
    "devices.list": Empty,
    "devices.revoke": SessionRef,
    "profile.get": ProfileGet,
    "profile.update": ProfileUpdate,
    "account.delete": Empty,
    "presence.get": PresenceGet,
    "conv.direct": DirectConversation,
    "conv.list": Empty,
    "conv.get": ConversationRef,
    "group.create": GroupCreate,
    "group.rename": GroupRename,
    "group.add": GroupAdd,
    "group.remove": GroupRemove,
    "group.leave": ConversationRef,
    "group.members": ConversationRef,
    "message.send": MessageSend,
    "message.history": MessageHistory,
    "message.recall": MessageRef,
    "message.read": MessageRef,
    "sync": Sync,
    "ping": Empty,
}

# Methods an unauthenticated session may call.
SIGN_IN_METHODS = frozenset(
    {"auth.request_code", "auth.sign_in", "auth.resume", "ping"}
)


def validate_params(model: type[Params], params: dict[str, Any]) -> Any:
    """Validate ``params`` against ``model``.

    Raises:
        InvalidParams: code ``invalid_params``; ``details.errors`` lists each
            faulty field as ``{"field": "a.b", "problem": "..."}``.
    """
    try:
        return model.model_validate(params)
    except pydantic.ValidationError as exc:
        errors = [
            {
                "field": ".".join(str(part) for part in error["loc"]) or "params",
                "problem": error["msg"].lower(),
            }
            for error in exc.errors(include_url=False, include_context=False)
        ]
        first = errors[0]
        raise InvalidParams(
            f"{first['field']}: {first['problem']}", {"errors": errors}
        ) from None
