"""Stable error codes, WebSocket close codes and the exception tree.

Every error a client can see has a code from :class:`ErrorCode`; the codes are
part of the protocol contract (``protocol/PROTOCOL.md``) and never change
meaning. Exceptions raised anywhere in the server carry one of these codes, so
the gateway turns any of them into exactly one error frame.
"""

from __future__ import annotations

import enum
from typing import Any

__all__ = [
    "CloseCode",
    "ErrorCode",
    "NextstarError",
    "ProtocolViolation",
    "InvalidParams",
    "Unauthenticated",
    "Forbidden",
    "NotFound",
    "Conflict",
    "LimitExceeded",
    "Rejected",
    "Unavailable",
]


class ErrorCode(enum.StrEnum):
    """Error codes sent in ``error.code``. Stable across protocol v1."""

    BAD_FRAME = "bad_frame"
    BAD_REQUEST = "bad_request"
    UNKNOWN_METHOD = "unknown_method"
    INVALID_PARAMS = "invalid_params"
    UNAUTHENTICATED = "unauthenticated"
    ALREADY_AUTHENTICATED = "already_authenticated"
    RATE_LIMITED = "rate_limited"
    INVALID_PHONE = "invalid_phone"
    CODE_COOLDOWN = "code_cooldown"
    SMS_QUOTA = "sms_quota"
    CODE_INVALID = "code_invalid"
    CODE_EXPIRED = "code_expired"
    CODE_ATTEMPTS_EXCEEDED = "code_attempts_exceeded"
    TOKEN_INVALID = "token_invalid"
    HANDLE_TAKEN = "handle_taken"
    NOT_FOUND = "not_found"
    NOT_MEMBER = "not_member"
    FORBIDDEN = "forbidden"
    NOT_SENDER = "not_sender"
    RECALL_WINDOW_PASSED = "recall_window_passed"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    MESSAGE_REJECTED = "message_rejected"
    CONFLICT = "conflict"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


class CloseCode(enum.IntEnum):
    """WebSocket close codes the server uses (RFC 6455 section 7.4)."""

    NORMAL = 1000
    GOING_AWAY = 1001  # server shutting down
    PROTOCOL_ERROR = 1002  # RFC 6455 framing violation (sent by websockets)
    INVALID_DATA = 1007  # text frame that is not UTF-8 (sent by websockets)
    POLICY_VIOLATION = 1008  # too many undecodable or malformed frames
    MESSAGE_TOO_BIG = 1009  # frame over the negotiated maximum size
    INTERNAL_ERROR = 1011  # unexpected server fault, or keepalive ping timeout
    TRY_AGAIN_LATER = 1013  # server not ready (store or broker unreachable)
    SIGN_IN_DEADLINE = 4001  # no successful sign-in within the deadline
    IDLE_TIMEOUT = 4002  # no frame from the client for the idle timeout
    SESSION_REVOKED = 4003  # device revoked, signed out or account deleted
    SLOW_CONSUMER = 4004  # send buffer stayed full; reconnect and sync
    ACCOUNT_SUSPENDED = 4005  # account suspended by an administrator


class NextstarError(Exception):
    """Root of every error the server reports to a client.

    Args:
        message: Short, specific, lower-case explanation for humans.
        details: Optional machine-readable extra fields.
    """

    code: ErrorCode = ErrorCode.INTERNAL
    #: The id of the request it answers, when it was raised before a handler
    #: had the request (an envelope error); None when the id is unusable.
    request_id: int | None = None

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_wire(self) -> dict[str, Any]:
        """Return the ``error`` object of an error frame."""
        error: dict[str, Any] = {"code": str(self.code), "message": self.message}
        if self.details:
            error["details"] = self.details
        return error

    @classmethod
    def with_code(
        cls, code: ErrorCode, message: str, details: dict[str, Any] | None = None
    ) -> NextstarError:
        """Build an error of this class carrying a more specific ``code``."""
        error = cls(message, details)
        error.code = code
        return error


class ProtocolViolation(NextstarError):
    """The frame or envelope breaks the protocol."""

    code = ErrorCode.BAD_REQUEST


class InvalidParams(NextstarError):
    """The method's parameters fail validation."""

    code = ErrorCode.INVALID_PARAMS


class Unauthenticated(NextstarError):
    """The session has not signed in, or its credentials are no good."""

    code = ErrorCode.UNAUTHENTICATED


class Forbidden(NextstarError):
    """The user may not do this."""

    code = ErrorCode.FORBIDDEN


class NotFound(NextstarError):
    """The object does not exist or is not visible to the user."""

    code = ErrorCode.NOT_FOUND


class Conflict(NextstarError):
    """The request conflicts with the current state."""

    code = ErrorCode.CONFLICT


class LimitExceeded(NextstarError):
    """A rate, quota or size limit was hit."""

    code = ErrorCode.RATE_LIMITED


class Rejected(NextstarError):
    """A pre-send hook rejected the message; it was stored nowhere."""

    code = ErrorCode.MESSAGE_REJECTED


class Unavailable(NextstarError):
    """A backend the request needs is unreachable; retry later."""

    code = ErrorCode.UNAVAILABLE
