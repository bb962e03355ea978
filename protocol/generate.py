"""Write ``protocol/schema.json`` and ``protocol/vectors.json`` from the code.

Run it as ``python protocol/generate.py`` after changing the wire format.
``tests/test_protocol.py`` checks that both files equal what this script
writes now, so neither can drift from the code unnoticed.

The schema comes from the pydantic models in ``nextstar_rt.wire.params`` and
the enums in ``nextstar_rt.wire.errors``. The vectors are the example frames
of ``PROTOCOL.md``, each encoded by the real codec, plus invalid payloads with
the error code that ``decode`` or ``parse_request`` gives them. Output is
deterministic: the same code always writes the same bytes.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nextstar_rt.wire import codec
from nextstar_rt.wire.codec import (
    MAX_REQUEST_ID,
    SUBPROTOCOLS,
    Encoding,
    decode,
    encode,
    parse_request,
)
from nextstar_rt.wire.errors import CloseCode, ErrorCode, NextstarError
from nextstar_rt.wire.params import (
    METHOD_PARAMS,
    SIGN_IN_METHODS,
    validate_params,
)

__all__ = [
    "EVENTS",
    "MESSAGE_KINDS",
    "RESYNC_REASONS",
    "SCHEMA_PATH",
    "VECTORS_PATH",
    "build_schema",
    "build_vectors",
    "main",
    "render",
]

SCHEMA_PATH = HERE / "schema.json"
VECTORS_PATH = HERE / "vectors.json"

#: Every event the server pushes; the test checks this against the source.
EVENTS = ("message.new", "conversation.read", "session.resync")

#: Every ``kind`` a message can have: two that users send, six system kinds.
MESSAGE_KINDS = (
    "text",
    "data",
    "recall",
    "group.created",
    "member.added",
    "member.removed",
    "member.left",
    "group.renamed",
)

#: Values of ``reason`` in ``session.resync``.
RESYNC_REASONS = ("slow_consumer", "broker")

# -- the example world ---------------------------------------------------------
#
# Alice (user 1), Bob (2), Carol (3) and Dan (4). Conversation 1 is Alice and
# Bob's direct conversation, conversation 2 the group "Weekend trip". Times are
# milliseconds since the Unix epoch, from 2026-01-01T09:00:00Z onwards.

T = 1767258000000
ALICE_PHONE = "+14155550101"
TOKEN = "Vq3nB8xK2mR7pL0sT5wY9cF4hJ6dE1gAzUoNiXbWkQe"
CLIENT_MSG_TEXT = "3f2b9c1e8a4d4f6b9e0a7c5d1b2e4f60"
CLIENT_MSG_DATA = "b7e1d2c3a4f5061728394a5b6c7d8e9f"
LOCATION = {
    "type": "location",
    "body": {"lat": 37.7955, "lon": -122.3937, "label": "Ferry Building"},
}


def _profile(
    user_id: int, created_at: int, *, phone: str | None = None, **fields: Any
) -> dict[str, Any]:
    profile: dict[str, Any] = {
        "user_id": user_id,
        "deleted": False,
        "handle": None,
        "nickname": None,
        "avatar_url": None,
        "gender": "unspecified",
        "birthday": None,
        "region": None,
        "verification": "unverified",
        "created_at": created_at,
    }
    profile.update(fields)
    if phone is not None:
        profile["phone"] = phone
    return profile


ALICE_NEW = _profile(1, T, phone=ALICE_PHONE)
ALICE_UPDATED = _profile(1, T, phone=ALICE_PHONE, handle="alice_1", nickname="Alice")
BOB_SEEN_BY_OTHERS = _profile(
    2,
    T + 60_000,
    handle="bob_rivers",
    nickname="Bob",
    avatar_url="https://cdn.example.com/a/2.jpg",
)

# Messages as stored (history, sync, last_message) and as pushed (message.new).
TEXT_PUSHED = {
    "conversation_id": 1,
    "seq": 7,
    "sender_id": 1,
    "kind": "text",
    "created_at": T + 3_600_000,
    "client_msg_id": CLIENT_MSG_TEXT,
    "text": "See you at 10 \u2615",
}
TEXT_STORED = {
    "conversation_id": 1,
    "seq": 7,
    "sender_id": 1,
    "kind": "text",
    "created_at": T + 3_600_000,
    "text": "See you at 10 \u2615",
    "client_msg_id": CLIENT_MSG_TEXT,
}
TEXT_RECALLED = {
    "conversation_id": 1,
    "seq": 7,
    "sender_id": 1,
    "kind": "text",
    "created_at": T + 3_600_000,
    "recalled": True,
    "client_msg_id": CLIENT_MSG_TEXT,
}
DATA_PUSHED = {
    "conversation_id": 1,
    "seq": 6,
    "sender_id": 2,
    "kind": "data",
    "created_at": T + 3_540_000,
    "client_msg_id": CLIENT_MSG_DATA,
    "data": LOCATION,
}
DATA_STORED = {
    "conversation_id": 1,
    "seq": 6,
    "sender_id": 2,
    "kind": "data",
    "created_at": T + 3_540_000,
    "data": LOCATION,
    "client_msg_id": CLIENT_MSG_DATA,
}
RECALL = {
    "conversation_id": 1,
    "seq": 8,
    "sender_id": 1,
    "kind": "recall",
    "created_at": T + 3_630_000,
    "target_seq": 7,
}
GROUP_CREATED = {
    "conversation_id": 2,
    "seq": 1,
    "sender_id": 1,
    "kind": "group.created",
    "created_at": T + 7_200_000,
    "data": {"title": "Weekend trip", "member_ids": [1, 2, 3]},
}
GROUP_TEXT = {
    "conversation_id": 2,
    "seq": 4,
    "sender_id": 3,
    "kind": "text",
    "created_at": T + 7_380_000,
    "text": "I'll bring snacks",
    "client_msg_id": "9d8c7b6a5f4e3d2c1b0a998877665544",
}
GROUP_RENAMED = {
    "conversation_id": 2,
    "seq": 5,
    "sender_id": 2,
    "kind": "group.renamed",
    "created_at": T + 7_440_000,
    "data": {"title": "Weekend trip \U0001f3d5"},
}
MEMBER_ADDED = {
    "conversation_id": 2,
    "seq": 6,
    "sender_id": 1,
    "kind": "member.added",
    "created_at": T + 7_500_000,
    "data": {"user_ids": [4]},
}
MEMBER_REMOVED = {
    "conversation_id": 2,
    "seq": 7,
    "sender_id": 1,
    "kind": "member.removed",
    "created_at": T + 7_560_000,
    "data": {"user_id": 4},
}
MEMBER_LEFT = {
    "conversation_id": 2,
    "seq": 8,
    "sender_id": 1,
    "kind": "member.left",
    "created_at": T + 7_620_000,
    "data": {"user_id": 1, "new_owner_id": 2},
}


def _conversation(
    conversation_id: int,
    kind: str,
    title: str | None,
    last_seq: int,
    read_seq: int,
    unread: int,
    member_count: int,
    updated_at: int,
    last_message: dict[str, Any] | None,
    **tail: Any,
) -> dict[str, Any]:
    view: dict[str, Any] = {
        "conversation_id": conversation_id,
        "kind": kind,
        "title": title,
        "last_seq": last_seq,
        "read_seq": read_seq,
        "unread": unread,
        "member_count": member_count,
        "updated_at": updated_at,
        "last_message": last_message,
    }
    view.update(tail)
    return view


DIRECT_NEW = _conversation(
    1, "direct", None, 0, 0, 0, 2, T + 120_000, None, peer_id=2, peer_read_seq=0
)
DIRECT_NOW = _conversation(
    1, "direct", None, 8, 8, 0, 2, T + 3_630_000, RECALL, peer_id=2, peer_read_seq=6
)
GROUP_NEW = _conversation(
    2, "group", "Weekend trip", 1, 1, 0, 3, T + 7_200_000, GROUP_CREATED, owner_id=1
)
GROUP_NOW = _conversation(
    2, "group", "Weekend trip", 4, 4, 0, 3, T + 7_380_000, GROUP_TEXT, owner_id=1
)
DIRECT_FOR_BOB = _conversation(
    1, "direct", None, 8, 6, 2, 2, T + 3_630_000, RECALL, peer_id=1, peer_read_seq=8
)

# -- frames --------------------------------------------------------------------


def request(
    request_id: int,
    method: str,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "req", "id": request_id, "method": method}
    if params is not None:
        frame["params"] = params
    return frame


def result(request_id: int, value: Any) -> dict[str, Any]:
    return codec.result_frame(request_id, value)


def error(request_id: int | None, exc: NextstarError) -> dict[str, Any]:
    return codec.error_frame(request_id, exc)


def event(name: str, data: Any) -> dict[str, Any]:
    return codec.event_frame(name, data)


def _coded(
    code: ErrorCode,
    message: str,
    details: dict[str, Any] | None = None,
) -> NextstarError:
    return NextstarError.with_code(code, message, details)


def _invalid_params(method: str, params: dict[str, Any]) -> NextstarError:
    """Return the error that the real validator gives ``params``."""
    try:
        validate_params(METHOD_PARAMS[method], params)
    except NextstarError as exc:
        return exc
    raise AssertionError(f"{method} accepted {params!r}")


# One example request and its answer per method, in the order of PROTOCOL.md.
EXAMPLES: list[tuple[str, dict[str, Any] | None, Any]] = [
    (
        "auth.request_code",
        {"phone": ALICE_PHONE},
        {"phone": ALICE_PHONE, "expires_in": 300, "resend_after": 60},
    ),
    (
        "auth.sign_in",
        {"phone": ALICE_PHONE, "code": "482913", "device_name": "Alice's phone"},
        {"token": TOKEN, "session_id": 1, "created": True, "user": ALICE_NEW},
    ),
    ("auth.resume", {"token": TOKEN}, {"session_id": 1, "user": ALICE_UPDATED}),
    ("auth.sign_out", {}, {}),
    (
        "devices.list",
        {},
        {
            "devices": [
                {
                    "session_id": 1,
                    "device_name": "Alice's phone",
                    "created_at": T,
                    "last_seen_at": T + 86_400_000,
                    "current": True,
                },
                {
                    "session_id": 5,
                    "device_name": "laptop",
                    "created_at": T + 600_000,
                    "last_seen_at": T + 600_000,
                    "current": False,
                },
            ]
        },
    ),
    ("devices.revoke", {"session_id": 5}, {}),
    ("profile.get", {"user_id": 2}, BOB_SEEN_BY_OTHERS),
    ("profile.update", {"nickname": "Alice", "handle": "alice_1"}, ALICE_UPDATED),
    ("account.delete", {}, {}),
    ("presence.get", {"user_id": 2}, {"user_id": 2, "online": True, "devices": 2}),
    ("conv.direct", {"user_id": 2}, DIRECT_NEW),
    ("conv.list", {}, {"conversations": [DIRECT_NOW]}),
    ("conv.get", {"conversation_id": 2}, GROUP_NOW),
    ("group.create", {"title": "Weekend trip", "member_ids": [2, 3]}, GROUP_NEW),
    (
        "group.rename",
        {"conversation_id": 2, "title": "Weekend trip \U0001f3d5"},
        {"seq": 5},
    ),
    ("group.add", {"conversation_id": 2, "user_ids": [4]}, {"seq": 6}),
    ("group.remove", {"conversation_id": 2, "user_id": 4}, {"seq": 7}),
    ("group.leave", {"conversation_id": 2}, {"seq": 8}),
    (
        "group.members",
        {"conversation_id": 2},
        {
            "members": [
                {"user_id": 1, "role": "owner", "read_seq": 4},
                {"user_id": 2, "role": "member", "read_seq": 3},
                {"user_id": 3, "role": "member", "read_seq": 4},
            ]
        },
    ),
    (
        "message.send",
        {
            "conversation_id": 1,
            "client_msg_id": CLIENT_MSG_TEXT,
            "text": "See you at 10 \u2615",
        },
        {
            "conversation_id": 1,
            "seq": 7,
            "created_at": T + 3_600_000,
            "duplicate": False,
        },
    ),
    (
        "message.history",
        {"conversation_id": 1, "before_seq": 8, "limit": 2},
        {"messages": [DATA_STORED, TEXT_STORED], "has_more": True},
    ),
    ("message.recall", {"conversation_id": 1, "seq": 7}, {"seq": 8}),
    ("message.read", {"conversation_id": 1, "seq": 8}, {"read_seq": 8}),
    (
        "sync",
        {
            "cursors": [
                {"conversation_id": 1, "seq": 6},
                {"conversation_id": 2, "seq": 8},
                {"conversation_id": 3, "seq": 12},
            ]
        },
        {
            "conversations": [
                {
                    **DIRECT_FOR_BOB,
                    "messages": [TEXT_RECALLED, RECALL],
                    "has_more": False,
                },
            ],
            "removed": [3],
        },
    ),
    ("ping", {}, {"time": 1767261600.125, "node": "3f9a2c4d1e7b"}),
]

# Further positive vectors: a second way to call a method, or a second answer.
EXTRA_REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("request/ping/without_params", request(40, "ping")),
    (
        "request/message.send/data",
        request(
            41,
            "message.send",
            {
                "conversation_id": 1,
                "client_msg_id": CLIENT_MSG_DATA,
                "data": LOCATION,
            },
        ),
    ),
    (
        "result/message.send/duplicate",
        result(
            41,
            {
                "conversation_id": 1,
                "seq": 6,
                "created_at": T + 3_540_000,
                "duplicate": True,
            },
        ),
    ),
]

EVENT_EXAMPLES: list[tuple[str, str, dict[str, Any]]] = [
    ("event/message.new/text", "message.new", TEXT_PUSHED),
    ("event/message.new/data", "message.new", DATA_PUSHED),
    ("event/message.new/recall", "message.new", RECALL),
    ("event/message.new/group.created", "message.new", GROUP_CREATED),
    ("event/message.new/member.added", "message.new", MEMBER_ADDED),
    ("event/message.new/member.removed", "message.new", MEMBER_REMOVED),
    ("event/message.new/member.left", "message.new", MEMBER_LEFT),
    ("event/message.new/group.renamed", "message.new", GROUP_RENAMED),
    (
        "event/conversation.read",
        "conversation.read",
        {"conversation_id": 1, "user_id": 2, "read_seq": 8},
    ),
    (
        "event/session.resync/slow_consumer",
        "session.resync",
        {"reason": "slow_consumer"},
    ),
    ("event/session.resync/broker", "session.resync", {"reason": "broker"}),
]


def _error_examples() -> list[tuple[str, dict[str, Any]]]:
    return [
        ("error/bad_frame", error(None, _decode_error("{not json"))),
        (
            "error/unauthenticated",
            error(50, _coded(ErrorCode.UNAUTHENTICATED, "sign in first")),
        ),
        (
            "error/invalid_params",
            error(
                51,
                _invalid_params(
                    "message.send", {"conversation_id": 1, "client_msg_id": "x1"}
                ),
            ),
        ),
        (
            "error/rate_limited",
            error(
                52,
                _coded(
                    ErrorCode.RATE_LIMITED, "too many requests", {"retry_after": 0.005}
                ),
            ),
        ),
        (
            "error/code_cooldown",
            error(
                53,
                _coded(
                    ErrorCode.CODE_COOLDOWN,
                    "a code was sent recently; wait before asking again",
                    {"retry_after": 42},
                ),
            ),
        ),
        (
            "error/not_member",
            error(
                54, _coded(ErrorCode.NOT_MEMBER, "not a member of this conversation")
            ),
        ),
        (
            "error/not_found",
            error(
                55, _coded(ErrorCode.NOT_FOUND, "no such user: 9", {"user_ids": [9]})
            ),
        ),
        (
            "error/message_rejected",
            error(
                56,
                _coded(
                    ErrorCode.MESSAGE_REJECTED,
                    "contains a blocked word",
                    {"hook": "blocked_words"},
                ),
            ),
        ),
    ]


def _decode_error(payload: bytes | str) -> NextstarError:
    try:
        decode(payload)
    except NextstarError as exc:
        return exc
    raise AssertionError(f"{payload!r} decoded")


def _positive(name: str, frame: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "frame": frame,
        "msgpack": encode(frame, Encoding.MSGPACK).hex(),
        "json": encode(frame, Encoding.JSON).decode(),
    }


# -- invalid payloads ------------------------------------------------------------

_GOOD = {"type": "req", "id": 7, "method": "ping"}

# (name, payload as a frame to encode both ways, or raw bytes / text)
_INVALID: list[tuple[str, Any]] = [
    ("bytes/0xc1_is_never_used", bytes.fromhex("c1")),
    ("bytes/empty", b""),
    ("bytes/truncated_map", bytes.fromhex("84a474797065")),
    ("bytes/trailing_byte", encode(_GOOD, Encoding.MSGPACK) + b"\x00"),
    ("bytes/string_not_utf8", bytes.fromhex("a2fffe")),
    # {"type": "req", 1: 1}: map keys must be strings.
    ("bytes/integer_map_key", bytes.fromhex("82a474797065a37265710101")),
    ("text/not_json", "{not json"),
    ("text/empty", ""),
    ("text/truncated", '{"type":"req","id":7'),
    ("text/trailing_data", '{"type":"req","id":7,"method":"ping"} x'),
    ("frame/not_a_map", [1, 2, 3]),
    ("frame/string", "req"),
    ("frame/type_missing", {"id": 7, "method": "ping"}),
    ("frame/type_not_req", {"type": "res", "id": 7, "method": "ping"}),
    ("frame/id_missing", {"type": "req", "method": "ping"}),
    ("frame/id_null", {"type": "req", "id": None, "method": "ping"}),
    ("frame/id_string", {"type": "req", "id": "7", "method": "ping"}),
    ("frame/id_float", {"type": "req", "id": 7.0, "method": "ping"}),
    ("frame/id_bool", {"type": "req", "id": True, "method": "ping"}),
    ("frame/id_negative", {"type": "req", "id": -1, "method": "ping"}),
    ("frame/id_too_large", {"type": "req", "id": MAX_REQUEST_ID + 1, "method": "ping"}),
    ("frame/method_missing", {"type": "req", "id": 7}),
    ("frame/method_empty", {"type": "req", "id": 7, "method": ""}),
    ("frame/method_not_string", {"type": "req", "id": 7, "method": 5}),
    ("frame/method_too_long", {"type": "req", "id": 7, "method": "m" * 65}),
    ("frame/params_list", {"type": "req", "id": 7, "method": "ping", "params": [1]}),
    ("frame/params_null", {"type": "req", "id": 7, "method": "ping", "params": None}),
    ("frame/params_string", {"type": "req", "id": 7, "method": "ping", "params": "{}"}),
]


def _invalid(name: str, payload: Any) -> dict[str, Any]:
    vector: dict[str, Any] = {"name": "invalid/" + name}
    if isinstance(payload, bytes):
        payloads: list[bytes | str] = [payload]
        vector["msgpack"] = payload.hex()
    elif isinstance(payload, str) and name.startswith("text/"):
        payloads = [payload]
        vector["json"] = payload
    else:
        vector["frame"] = payload
        packed = encode(payload, Encoding.MSGPACK)
        text = encode(payload, Encoding.JSON).decode()
        vector["msgpack"] = packed.hex()
        vector["json"] = text
        payloads = [packed, text]

    outcomes = set()
    for data in payloads:
        try:
            parse_request(decode(data))
        except NextstarError as exc:
            outcomes.add((str(exc.code), getattr(exc, "request_id", None)))
        else:
            raise AssertionError(f"invalid vector {name} was accepted")
    if len(outcomes) != 1:
        raise AssertionError(f"{name}: encodings disagree: {outcomes}")
    code, request_id = outcomes.pop()
    vector["error"] = code
    vector["request_id"] = request_id
    return vector


# -- builders --------------------------------------------------------------------


def build_vectors() -> list[dict[str, Any]]:
    """Return every test vector, positive then invalid."""
    vectors = []
    for request_id, (method, params, answer) in enumerate(EXAMPLES, start=1):
        vectors.append(
            _positive(f"request/{method}", request(request_id, method, params))
        )
        vectors.append(_positive(f"result/{method}", result(request_id, answer)))
    for name, frame in EXTRA_REQUESTS:
        vectors.append(_positive(name, frame))
    for name, frame in _error_examples():
        vectors.append(_positive(name, frame))
    for name, event_name, data in EVENT_EXAMPLES:
        vectors.append(_positive(name, event(event_name, data)))
    for name, payload in _INVALID:
        vectors.append(_invalid(name, payload))
    return vectors


def _envelopes() -> dict[str, Any]:
    request_id = {"type": "integer", "minimum": 0, "maximum": MAX_REQUEST_ID}
    return {
        "request": {
            "type": "object",
            "required": ["type", "id", "method"],
            "properties": {
                "type": {"const": "req"},
                "id": request_id,
                "method": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": codec._METHOD_MAX,
                },
                "params": {"type": "object", "default": {}},
            },
        },
        "result": {
            "type": "object",
            "required": ["type", "id", "result"],
            "properties": {"type": {"const": "res"}, "id": request_id, "result": {}},
        },
        "error": {
            "type": "object",
            "required": ["type", "id", "error"],
            "properties": {
                "type": {"const": "err"},
                "id": {"anyOf": [request_id, {"type": "null"}]},
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "details": {"type": "object"},
                    },
                },
            },
        },
        "event": {
            "type": "object",
            "required": ["type", "event", "data"],
            "properties": {
                "type": {"const": "evt"},
                "event": {"type": "string"},
                "data": {"type": "object"},
            },
        },
    }


def build_schema() -> dict[str, Any]:
    """Return the machine-readable description of protocol v1."""
    return {
        "$comment": (
            "Generated by protocol/generate.py; PROTOCOL.md is normative. "
            "Where these schemas say integer, the server also requires the "
            "encoding of an integer: 7.0 and true are refused (PROTOCOL.md 4.4)."
        ),
        "protocol": "nextstar.v1",
        "subprotocols": {
            name: {
                "encoding": Encoding(name).name.lower(),
                "frames": "binary" if Encoding(name).is_binary else "text",
            }
            for name in SUBPROTOCOLS
        },
        "envelopes": _envelopes(),
        "methods": {
            method: {
                "before_sign_in": method in SIGN_IN_METHODS,
                "params": model.model_json_schema(),
                **(
                    {"rules": ["exactly one of text and data"]}
                    if method == "message.send"
                    else {}
                ),
            }
            for method, model in METHOD_PARAMS.items()
        },
        "events": list(EVENTS),
        "message_kinds": list(MESSAGE_KINDS),
        "resync_reasons": list(RESYNC_REASONS),
        "error_codes": [str(code) for code in ErrorCode],
        "close_codes": [
            {"code": int(code), "name": code.name.lower()} for code in CloseCode
        ],
    }


def dumps(value: Any) -> str:
    """Serialise a generated file: stable, readable, one trailing newline."""
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def render(vector: dict[str, Any], width: int = 32) -> str:
    """Return the two Markdown code blocks that show ``vector`` in PROTOCOL.md."""
    data = bytes.fromhex(vector["msgpack"])
    lines = [
        " ".join(f"{byte:02x}" for byte in data[start : start + width])
        for start in range(0, len(data), width)
    ]
    return (
        "```json\n" + vector["json"] + "\n```\n\n"
        "```msgpack\n" + "\n".join(lines) + "\n```\n"
    )


_EXAMPLE = re.compile(
    r"(<!-- vector: (\S+) -->\n\n?)```json\n.*?\n```\n\n```msgpack\n.*?\n```\n", re.S
)


def render_doc(doc: str, vectors: list[dict[str, Any]]) -> str:
    """Return ``doc`` with every example block re-rendered from ``vectors``."""
    by_name = {vector["name"]: vector for vector in vectors if "frame" in vector}
    return _EXAMPLE.sub(
        lambda match: match.group(1) + render(by_name[match.group(2)]), doc
    )


def main() -> None:
    vectors = build_vectors()
    SCHEMA_PATH.write_text(dumps(build_schema()), encoding="utf-8")
    VECTORS_PATH.write_text(dumps(vectors), encoding="utf-8")
    doc_path = ROOT / "protocol" / "PROTOCOL.md"
    doc = render_doc(doc_path.read_text(encoding="utf-8"), vectors)
    doc_path.write_text(doc, encoding="utf-8")
    print(
        f"wrote {SCHEMA_PATH.relative_to(ROOT)}, {VECTORS_PATH.relative_to(ROOT)} "
        "and the examples in protocol/PROTOCOL.md"
    )


if __name__ == "__main__":
    main()
