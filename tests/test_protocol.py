"""The contract in ``protocol/`` checked against the code.

The golden vectors must round-trip through the real codec byte for byte, the
generated files must be fresh, ``PROTOCOL.md`` must name everything the code
can send and show only examples the codec produces, and a live server must
answer in the shapes the examples show.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest

from nextstar_rt.config import AccountsSettings, ChatSettings, GatewaySettings
from nextstar_rt.wire.codec import Encoding, decode, encode, parse_request
from nextstar_rt.wire.errors import CloseCode, ErrorCode, NextstarError
from nextstar_rt.wire.params import METHOD_PARAMS, validate_params

from .support import TIMEOUT

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = ROOT / "protocol"
SOURCE = ROOT / "nextstar_rt"


def _load_generator() -> Any:
    spec = importlib.util.spec_from_file_location(
        "nextstar_protocol_generate", PROTOCOL / "generate.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate = _load_generator()
VECTORS: list[dict[str, Any]] = json.loads(
    (PROTOCOL / "vectors.json").read_text(encoding="utf-8")
)
POSITIVE = [v for v in VECTORS if not v["name"].startswith("invalid/")]
INVALID = [v for v in VECTORS if v["name"].startswith("invalid/")]
BY_NAME = {v["name"]: v for v in VECTORS}
DOC = (PROTOCOL / "PROTOCOL.md").read_text(encoding="utf-8")

_MARKER = re.compile(r"<!-- vector: (\S+) -->\n\n")
_JSON_BLOCK = re.compile(r"```json\n(.*?)\n```", re.DOTALL)


def _typed(value: Any) -> Any:
    """Tag every scalar with its type, so that 1, 1.0 and True differ."""
    if isinstance(value, dict):
        return {key: _typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_typed(item) for item in value]
    return (type(value).__name__, value)


def _section(title: str) -> str:
    """Return the text of the ``## `` section whose heading starts with title."""
    pattern = rf"^## {re.escape(title)}.*?(?=^## |\Z)"
    match = re.search(pattern, DOC, re.DOTALL | re.MULTILINE)
    assert match, f"PROTOCOL.md has no section {title!r}"
    return match.group(0)


# -- vectors against the codec ---------------------------------------------------


@pytest.mark.parametrize("vector", POSITIVE, ids=lambda v: v["name"])
def test_vector_encodes_to_the_recorded_bytes(vector):
    frame = vector["frame"]
    assert encode(frame, Encoding.MSGPACK).hex() == vector["msgpack"]
    assert encode(frame, Encoding.JSON).decode() == vector["json"]


@pytest.mark.parametrize("vector", POSITIVE, ids=lambda v: v["name"])
def test_vector_decodes_back_to_its_frame(vector):
    expected = _typed(vector["frame"])
    assert _typed(decode(bytes.fromhex(vector["msgpack"]))) == expected
    assert _typed(decode(vector["json"])) == expected


@pytest.mark.parametrize(
    "vector",
    [v for v in POSITIVE if v["name"].startswith("request/")],
    ids=lambda v: v["name"],
)
def test_request_vector_is_a_valid_request_with_valid_params(vector):
    for payload in (bytes.fromhex(vector["msgpack"]), vector["json"]):
        request = parse_request(decode(payload))
        assert vector["name"].split("/")[1] == request.method
        validate_params(METHOD_PARAMS[request.method], request.params)


@pytest.mark.parametrize("vector", INVALID, ids=lambda v: v["name"])
def test_invalid_vector_raises_the_recorded_error(vector):
    payloads: list[bytes | str] = []
    if "msgpack" in vector:
        payloads.append(bytes.fromhex(vector["msgpack"]))
    if "json" in vector:
        payloads.append(vector["json"])
    assert payloads
    for payload in payloads:
        with pytest.raises(NextstarError) as caught:
            parse_request(decode(payload))
        assert str(caught.value.code) == vector["error"]
        assert getattr(caught.value, "request_id", None) == vector["request_id"]


def test_invalid_vectors_cover_each_kind_of_bad_input():
    codes = {v["name"].split("/")[1]: set() for v in INVALID}
    for vector in INVALID:
        codes[vector["name"].split("/")[1]].add(vector["error"])
    assert codes == {
        "bytes": {"bad_frame"},
        "text": {"bad_frame"},
        "frame": {"bad_request"},
    }
    names = {v["name"] for v in INVALID}
    for needed in (
        "invalid/frame/not_a_map",
        "invalid/frame/id_missing",
        "invalid/frame/id_string",
        "invalid/frame/method_missing",
        "invalid/frame/params_list",
    ):
        assert needed in names
    # Once the id is valid, the error carries it.
    assert BY_NAME["invalid/frame/method_missing"]["request_id"] == 7
    assert BY_NAME["invalid/frame/id_string"]["request_id"] is None


def test_vectors_cover_every_method_event_and_message_kind():
    names = set(BY_NAME)
    for method in METHOD_PARAMS:
        assert f"request/{method}" in names
        assert f"result/{method}" in names
    for kind in generate.MESSAGE_KINDS:
        assert f"event/message.new/{kind}" in names
    events = {v["frame"]["event"] for v in POSITIVE if v["frame"]["type"] == "evt"}
    assert events == set(generate.EVENTS)
    kinds = {
        v["frame"]["data"]["kind"]
        for v in POSITIVE
        if v["frame"].get("event") == "message.new"
    }
    assert kinds == set(generate.MESSAGE_KINDS)


def test_result_vectors_answer_their_request_by_id():
    for method in METHOD_PARAMS:
        request = BY_NAME[f"request/{method}"]["frame"]
        answer = BY_NAME[f"result/{method}"]["frame"]
        assert (answer["type"], answer["id"]) == ("res", request["id"])


# -- generated files -------------------------------------------------------------


def test_schema_json_is_what_generate_py_writes_now():
    written = (PROTOCOL / "schema.json").read_text(encoding="utf-8")
    assert written == generate.dumps(generate.build_schema()), (
        "protocol/schema.json is stale: run python protocol/generate.py"
    )


def test_vectors_json_is_what_generate_py_writes_now():
    written = (PROTOCOL / "vectors.json").read_text(encoding="utf-8")
    assert written == generate.dumps(generate.build_vectors()), (
        "protocol/vectors.json is stale: run python protocol/generate.py"
    )


def test_schema_lists_every_method_code_and_close_code():
    schema = json.loads((PROTOCOL / "schema.json").read_text(encoding="utf-8"))
    assert set(schema["methods"]) == set(METHOD_PARAMS)
    for method, model in METHOD_PARAMS.items():
        assert schema["methods"][method]["params"] == model.model_json_schema()
    assert schema["error_codes"] == [str(code) for code in ErrorCode]
    assert [c["code"] for c in schema["close_codes"]] == [int(c) for c in CloseCode]
    assert schema["events"] == list(generate.EVENTS)


def test_vectors_validate_against_schema_json():
    import jsonschema
    schema = json.loads((PROTOCOL / "schema.json").read_text(encoding="utf-8"))
    envelopes = schema["envelopes"]
    kinds = {"req": "request", "res": "result", "err": "error", "evt": "event"}
    for vector in POSITIVE:
        frame = vector["frame"]
        jsonschema.validate(frame, envelopes[kinds[frame["type"]]])
        if frame["type"] == "req":
            params_schema = schema["methods"][frame["method"]]["params"]
            jsonschema.validate(frame.get("params", {}), params_schema)
        if frame["type"] == "err":
            assert frame["error"]["code"] in schema["error_codes"]
        if frame["type"] == "evt":
            assert frame["event"] in schema["events"]
    request_schema = jsonschema.Draft202012Validator(envelopes["request"])
    for vector in INVALID:
        # JSON Schema counts 7.0 as an integer; the server does not (§4.4).
        if vector["name"] == "invalid/frame/id_float":
            continue
        if "frame" in vector and vector["error"] == "bad_request":
            assert not request_schema.is_valid(vector["frame"]), vector["name"]


# -- PROTOCOL.md against the vectors and the code ------------------------------------


def test_doc_examples_are_the_exact_codec_output():
    markers = list(_MARKER.finditer(DOC))
    assert markers
    for marker in markers:
        name = marker.group(1)
        assert name in BY_NAME, f"PROTOCOL.md shows unknown vector {name}"
        shown = DOC[marker.end() : marker.end() + 20000]
        assert shown.startswith(generate.render(BY_NAME[name])), (
            f"example {name} in PROTOCOL.md differs from vectors.json"
        )


def test_doc_shows_every_positive_vector():
    shown = {m.group(1) for m in _MARKER.finditer(DOC)}
    assert {v["name"] for v in POSITIVE} - shown == set()


def test_doc_request_examples_have_valid_params():
    requests = 0
    for block in _JSON_BLOCK.findall(DOC):
        frame = json.loads(block)
        if frame.get("type") != "req":
            continue
        requests += 1
        request = parse_request(frame)
        validate_params(METHOD_PARAMS[request.method], request.params)
    assert requests >= len(METHOD_PARAMS)


def test_doc_has_a_section_for_every_method():
    methods = _section("10. Methods")
    for method in METHOD_PARAMS:
        assert f"\n### `{method}`\n" in methods, method


def test_doc_error_table_lists_every_error_code():
    errors = _section("6. Error codes")
    for code in ErrorCode:
        assert f"\n| `{code}` |" in errors, code


def test_doc_close_table_lists_every_close_code():
    table = _section("7. Close codes")
    rows = re.findall(r"^\| (\d{4}) \| ([a-z -]+) \|", table, re.MULTILINE)
    documented = {int(code): name.replace("-", " ") for code, name in rows}
    assert documented == {
        int(code): code.name.lower().replace("_", " ") for code in CloseCode
    }


def test_doc_limits_table_states_the_configured_defaults():
    limits = _section("5. Limits")
    settings = {
        "gateway": GatewaySettings(),
        "chat": ChatSettings(),
        "accounts": AccountsSettings(),
    }
    keys = re.findall(r"`((?:gateway|chat|accounts)\.[a-z_]+)`", limits)
    assert len(keys) >= 15
    for key in keys:
        section, _, name = key.partition(".")
        default = getattr(settings[section], name)
        row = next(line for line in limits.splitlines() if f"`{key}`" in line)
        shown = f"{default:g}" if isinstance(default, float) else str(default)
        assert re.search(rf"\b{re.escape(shown)}\b", row), (key, default)


def _calls(tree: ast.AST, names: set[str]) -> list[ast.Call]:
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = (
                func.attr
                if isinstance(func, ast.Attribute)
                else getattr(func, "id", None)
            )
            if name in names:
                calls.append(node)
    return calls


def _source_trees() -> list[ast.AST]:
    return [
        ast.parse(path.read_text(encoding="utf-8"))
        for path in sorted(SOURCE.rglob("*.py"))
    ]


def _strings(node: ast.AST) -> set[str]:
    return {
        n.value
        for n in ast.walk(node)
        if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }


def test_events_the_server_emits_are_the_documented_ones():
    emitted = set()
    for tree in _source_trees():
        for call in _calls(
            tree, {"send_event", "event_frame", "to_conversation", "event"}
        ):
            if call.args and isinstance(call.args[0], ast.Constant):
                emitted.add(call.args[0].value)
    assert emitted == set(generate.EVENTS)
    events = _section("11. Events")
    for name in generate.EVENTS:
        assert f"\n### `{name}`\n" in events, name


def test_message_kinds_the_server_stores_are_the_documented_ones():
    kinds = set()
    for tree in _source_trees():
        for call in _calls(tree, {"_append_system"}):
            kinds |= _strings(call.args[3])
        for call in _calls(tree, {"Append"}):
            kinds |= _strings(call.args[2])
    assert kinds == set(generate.MESSAGE_KINDS)
    objects = _section("9. Objects")
    for kind in generate.MESSAGE_KINDS:
        assert f"\n| `{kind}` |" in objects, kind


def test_resync_reasons_the_server_sends_are_the_documented_ones():
    reasons = set()
    for tree in _source_trees():
        for call in _calls(tree, {"send_event", "event_frame"}):
            if (
                call.args
                and isinstance(call.args[0], ast.Constant)
                and call.args[0].value == "session.resync"
            ):
                data = call.args[1]
                assert isinstance(data, ast.Dict)
                for key, value in zip(data.keys, data.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value == "reason":
                        reasons |= _strings(value)
    assert reasons == set(generate.RESYNC_REASONS)
    for reason in reasons:
        assert f"`{reason}`" in _section("11. Events")


# -- a live server answers in the documented shapes -----------------------------------


def _differences(expected: Any, real: Any, path: str = "") -> list[str]:
    """List where ``real`` departs from the shape of ``expected``.

    Null on either side matches anything, since nullable fields hold null in
    one example and a value in another; lists compare item by item.
    """
    if expected is None or real is None:
        return []
    if isinstance(expected, dict):
        if not isinstance(real, dict):
            return [f"{path or '.'}: a map was expected"]
        problems = []
        if set(expected) != set(real):
            problems.append(f"{path or '.'}: keys {sorted(real)} != {sorted(expected)}")
        for key in set(expected) & set(real):
            problems += _differences(expected[key], real[key], f"{path}.{key}")
        return problems
    if isinstance(expected, list):
        if not isinstance(real, list):
            return [f"{path}: a list was expected"]
        problems = []
        for index, (one, other) in enumerate(zip(expected, real)):
            problems += _differences(one, other, f"{path}.{index}")
        return problems
    if type(expected) is not type(real):
        return [f"{path}: {type(real).__name__} != {type(expected).__name__}"]
    return []


async def _next(client: Any, name: str, kind: str | None = None) -> dict[str, Any]:
    """Return the data of the next event ``name`` (of message ``kind``)."""
    while True:
        frame = await client.next_event(name, timeout=TIMEOUT)
        if kind is None or frame["data"].get("kind") == kind:
            return frame["data"]


async def test_a_live_server_answers_in_the_documented_shapes(sqlite_server):
    server = sqlite_server
    problems: list[str] = []
    seen: set[str] = set()

    def got(name: str, real: Any) -> Any:
        frame = BY_NAME[name]["frame"]
        expected = frame["result"] if frame["type"] == "res" else frame["data"]
        problems.extend(f"{name}: {p}" for p in _differences(expected, real))
        seen.add(name)
        return real

    # Sign-in, sessions, profiles.
    alice = await server.connect("json")
    phone = got(
        "result/auth.request_code",
        await alice.call("auth.request_code", phone="+14155550101"),
    )["phone"]
    got(
        "result/auth.sign_in",
        await alice.sign_in(phone, server.sender.last_code(phone), "Alice's phone"),
    )
    other = await server.connect()
    got("result/auth.resume", await other.resume(alice.token))
    laptop = await server.sign_in(phone, device="laptop")
    bob = await server.sign_in()
    carol = await server.sign_in(encoding="json")
    dan = await server.sign_in()
    devices = got("result/devices.list", await alice.call("devices.list"))
    got(
        "result/profile.update",
        await alice.call("profile.update", nickname="Alice", handle="alice_1"),
    )
    await bob.call(
        "profile.update",
        nickname="Bob",
        handle="bob_rivers",
        avatar_url="https://cdn.example.com/a/2.jpg",
    )
    got("result/profile.get", await alice.call("profile.get", user_id=bob.user_id))
    got("result/presence.get", await alice.call("presence.get", user_id=alice.user_id))

    # A direct conversation: send, retry, history, recall, read.
    direct = got(
        "result/conv.direct", await alice.call("conv.direct", user_id=bob.user_id)
    )
    cid = direct["conversation_id"]
    first = await bob.call(
        "message.send", conversation_id=cid, client_msg_id="d1", data=generate.LOCATION
    )
    got("event/message.new/data", await _next(alice, "message.new", "data"))
    sent = got(
        "result/message.send",
        await alice.call(
            "message.send", conversation_id=cid, client_msg_id="t1", text="See you"
        ),
    )
    got(
        "result/message.send/duplicate",
        await alice.call(
            "message.send", conversation_id=cid, client_msg_id="t1", text="See you"
        ),
    )
    got("event/message.new/text", await _next(bob, "message.new", "text"))
    got("event/message.new/text", await _next(other, "message.new", "text"))
    got(
        "result/message.history",
        await alice.call(
            "message.history", conversation_id=cid, before_seq=sent["seq"] + 1, limit=2
        ),
    )
    recall = got(
        "result/message.recall",
        await alice.call("message.recall", conversation_id=cid, seq=sent["seq"]),
    )
    got("event/message.new/recall", await _next(bob, "message.new", "recall"))
    got(
        "result/message.read",
        await bob.call("message.read", conversation_id=cid, seq=recall["seq"]),
    )
    got("event/conversation.read", await _next(alice, "conversation.read"))
    got("result/conv.list", await alice.call("conv.list"))

    # A group, through every membership change.
    group = got(
        "result/group.create",
        await alice.call(
            "group.create",
            title="Weekend trip",
            member_ids=[bob.user_id, carol.user_id],
        ),
    )
    gid = group["conversation_id"]
    got(
        "event/message.new/group.created",
        await _next(bob, "message.new", "group.created"),
    )
    await carol.call(
        "message.send",
        conversation_id=gid,
        client_msg_id="g1",
        text="I'll bring snacks",
    )
    got("result/conv.get", await alice.call("conv.get", conversation_id=gid))
    got("result/group.members", await alice.call("group.members", conversation_id=gid))
    got(
        "result/group.rename",
        await bob.call("group.rename", conversation_id=gid, title="Weekend trip 2"),
    )
    got(
        "event/message.new/group.renamed",
        await _next(carol, "message.new", "group.renamed"),
    )
    got(
        "result/group.add",
        await alice.call("group.add", conversation_id=gid, user_ids=[dan.user_id]),
    )
    got(
        "event/message.new/member.added",
        await _next(dan, "message.new", "member.added"),
    )
    got(
        "result/group.remove",
        await alice.call("group.remove", conversation_id=gid, user_id=dan.user_id),
    )
    got(
        "event/message.new/member.removed",
        await _next(bob, "message.new", "member.removed"),
    )
    left = got(
        "result/group.leave", await alice.call("group.leave", conversation_id=gid)
    )
    got("event/message.new/member.left", await _next(bob, "message.new", "member.left"))

    # Catching up, keepalive, resync.
    synced = got(
        "result/sync",
        await bob.call(
            "sync",
            cursors=[
                {"conversation_id": cid, "seq": first["seq"]},
                {"conversation_id": gid, "seq": left["seq"]},
                {"conversation_id": 999, "seq": 0},
            ],
        ),
    )
    assert [c["conversation_id"] for c in synced["conversations"]] == [cid]
    assert synced["removed"] == [999]
    got("result/ping", await alice.call("ping"))
    server.app.hub.resync([f"u:{bob.user_id}"])
    got("event/session.resync/broker", await _next(bob, "session.resync"))

    # Ending sessions.
    laptop_session = next(
        d["session_id"] for d in devices["devices"] if not d["current"]
    )
    got(
        "result/devices.revoke",
        await alice.call("devices.revoke", session_id=laptop_session),
    )
    assert (await laptop.wait_closed(TIMEOUT)).code == CloseCode.SESSION_REVOKED
    got("result/auth.sign_out", await carol.call("auth.sign_out"))
    assert (await carol.wait_closed(TIMEOUT)).code == CloseCode.SESSION_REVOKED
    got("result/account.delete", await dan.call("account.delete"))
    assert (await dan.wait_closed(TIMEOUT)).code == CloseCode.SESSION_REVOKED

    assert problems == []
    unchecked = {f"result/{m}" for m in METHOD_PARAMS} - seen
    assert unchecked == set()
