"""The two encodings of protocol v1 and the envelope around every frame.

MessagePack travels in binary WebSocket frames, JSON in text frames; both carry
the same envelope (``protocol/PROTOCOL.md`` section "Envelope"). This module is
pure: bytes in, Python objects out, and back. It also prepares complete server
WebSocket frames, so that fan-out serialises a frame once and writes the same
bytes to every recipient.
"""

from __future__ import annotations

import enum
import json
import struct
from typing import Any

import msgpack

from .errors import ErrorCode, NextstarError, ProtocolViolation

__all__ = [
    "Encoding",
    "SUBPROTOCOLS",
    "MAX_REQUEST_ID",
    "Request",
    "decode",
    "encode",
    "parse_request",
    "result_frame",
    "error_frame",
    "event_frame",
    "ws_frame",
]

MAX_REQUEST_ID = 2**53 - 1  # largest integer JSON clients represent exactly
_METHOD_MAX = 64


class Encoding(enum.Enum):
    """Payload encoding, chosen by WebSocket subprotocol negotiation."""

    MSGPACK = "nextstar.v1.msgpack"
    JSON = "nextstar.v1.json"

    @property
    def is_binary(self) -> bool:
        return self is Encoding.MSGPACK


SUBPROTOCOLS = [Encoding.MSGPACK.value, Encoding.JSON.value]

_packb = msgpack.Packer(use_bin_type=True, autoreset=True).pack
_json_dumps = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False
).encode


def encode(obj: Any, encoding: Encoding) -> bytes:
    """Serialise ``obj`` in ``encoding``; JSON comes back as UTF-8 bytes."""
    if encoding is Encoding.MSGPACK:
        return _packb(obj)
    return _json_dumps(obj).encode()


def decode(data: bytes | str) -> Any:
    """Decode one frame's payload: ``str`` is JSON, ``bytes`` is MessagePack.

    Raises:
        NextstarError: with code ``bad_frame`` when the payload is not one
            complete value of its encoding.
    """
    try:
        if isinstance(data, str):
            return json.loads(data, parse_constant=_reject_constant)
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException, TypeError, RecursionError) as exc:
        kind = "json" if isinstance(data, str) else "messagepack"
        raise NextstarError.with_code(
            ErrorCode.BAD_FRAME, f"frame is not valid {kind}"
        ) from exc


def _reject_constant(name: str) -> Any:
    # JSON has no NaN or infinities; Python's decoder accepts them by default,
    # and they could not be sent on to any JSON client.
    raise ValueError(f"{name} is not valid JSON")


class Request:
    """A decoded request envelope."""

    __slots__ = ("id", "method", "params")

    def __init__(self, id: int, method: str, params: dict[str, Any]) -> None:
        self.id = id
        self.method = method
        self.params = params


def parse_request(obj: Any) -> Request:
    """Check the request envelope and return its parts.

    Raises:
        ProtocolViolation: code ``bad_request`` naming the faulty field. When
            ``id`` itself is unusable the error carries ``id: null``.
    """
    if not isinstance(obj, dict):
        raise ProtocolViolation("frame must be a map")
    if obj.get("type") != "req":
        raise ProtocolViolation("type must be 'req'")
    request_id = obj.get("id")
    if type(request_id) is not int or request_id < 0 or request_id > MAX_REQUEST_ID:
        raise ProtocolViolation("id must be an integer from 0 to 2^53-1")
    method = obj.get("method")
    if type(method) is not str or not method or len(method) > _METHOD_MAX:
        raise _with_id(ProtocolViolation("method must be a non-empty string"), obj)
    params = obj.get("params", {})
    if type(params) is not dict:
        raise _with_id(ProtocolViolation("params must be a map"), obj)
    return Request(request_id, method, params)


def _with_id(error: NextstarError, obj: dict[str, Any]) -> NextstarError:
    error.request_id = obj["id"]
    return error


def result_frame(request_id: int, result: Any) -> dict[str, Any]:
    return {"type": "res", "id": request_id, "result": result}


def error_frame(request_id: int | None, error: NextstarError) -> dict[str, Any]:
    return {"type": "err", "id": request_id, "error": error.to_wire()}


def event_frame(event: str, data: Any) -> dict[str, Any]:
    return {"type": "evt", "event": event, "data": data}


_OP_TEXT = 0x81  # FIN + text opcode
_OP_BINARY = 0x82  # FIN + binary opcode
_pack_u16 = struct.Struct("!BBH").pack
_pack_u64 = struct.Struct("!BBQ").pack


def ws_frame(payload: bytes, binary: bool) -> bytes:
    """Return one complete, unmasked server-to-client WebSocket frame.

    Server frames are never masked (RFC 6455 section 5.1), so with no extension
    negotiated the same bytes are valid on every connection.
    """
    first = _OP_BINARY if binary else _OP_TEXT
    length = len(payload)
    if length < 126:
        return bytes((first, length)) + payload
    if length < 65536:
        return _pack_u16(first, 126, length) + payload
    return _pack_u64(first, 127, length) + payload
