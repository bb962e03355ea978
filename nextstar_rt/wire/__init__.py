"""Wire format of protocol v1: envelope, codecs, params, errors. No I/O."""

from .codec import (
    SUBPROTOCOLS,
    Encoding,
    Request,
    decode,
    encode,
    error_frame,
    event_frame,
    parse_request,
    result_frame,
    ws_frame,
)
from .errors import CloseCode, ErrorCode, NextstarError

__all__ = [
    "SUBPROTOCOLS",
    "CloseCode",
    "Encoding",
    "ErrorCode",
    "NextstarError",
    "Request",
    "decode",
    "encode",
    "error_frame",
    "event_frame",
    "parse_request",
    "result_frame",
    "ws_frame",
]
