"""Each kind of bad input, and the one answer it gets."""

from __future__ import annotations

import asyncio
import json

import msgpack
import pytest
from nextstar_client import ClientError

from .support import TIMEOUT, new_phone


async def _raw_answer(client, data):
    await client.send_raw(data)
    frame = await client.next_event(timeout=TIMEOUT)
    return frame


async def test_bytes_that_are_not_messagepack_get_bad_frame(sqlite_server):
    client = await sqlite_server.connect()
    # 0xc1 is the one byte MessagePack never uses.
    frame = await _raw_answer(client, b"\xc1\x00\x01")
    assert frame["type"] == "err" and frame["id"] is None
    assert frame["error"]["code"] == "bad_frame"
    assert "time" in await client.call("ping")  # the session lives on


async def test_text_that_is_not_json_gets_bad_frame(sqlite_server):
    client = await sqlite_server.connect("json")
    frame = await _raw_answer(client, "{not json")
    assert (frame["id"], frame["error"]["code"]) == (None, "bad_frame")


async def test_a_frame_that_is_not_a_map_gets_bad_request(sqlite_server):
    client = await sqlite_server.connect()
    frame = await _raw_answer(client, msgpack.packb([1, 2, 3]))
    assert (frame["id"], frame["error"]["code"]) == (None, "bad_request")


async def test_an_invalid_request_id_gets_bad_request_without_id(sqlite_server):
    client = await sqlite_server.connect("json")
    frame = await _raw_answer(
        client, json.dumps({"type": "req", "id": "seven", "method": "ping"})
    )
    assert (frame["id"], frame["error"]["code"]) == (None, "bad_request")
    frame = await _raw_answer(
        client, json.dumps({"type": "req", "id": -1, "method": "ping"})
    )
    assert frame["error"]["code"] == "bad_request"


async def test_params_that_are_not_a_map_get_bad_request_with_the_id(sqlite_server):
    client = await sqlite_server.connect("json")
    frame = await _raw_answer(
        client, json.dumps({"type": "req", "id": 5, "method": "ping", "params": [1]})
    )
    assert (frame["id"], frame["error"]["code"]) == (5, "bad_request")


async def test_wrong_field_types_get_invalid_params_naming_the_field(sqlite_server):
    client = await sqlite_server.sign_in()
    with pytest.raises(ClientError) as error:
        await client.call(
            "message.send", conversation_id="1", client_msg_id="x", text="hi"
        )
    assert error.value.code == "invalid_params"
    fields = [e["field"] for e in error.value.details["errors"]]
    assert fields == ["conversation_id"]


async def test_missing_fields_get_invalid_params(sqlite_server):
    client = await sqlite_server.sign_in()
    with pytest.raises(ClientError) as error:
        await client.call("message.send", conversation_id=1)
    assert error.value.code == "invalid_params"
    problems = {e["field"]: e["problem"] for e in error.value.details["errors"]}
    assert problems["client_msg_id"] == "field required"


async def test_unknown_fields_get_invalid_params(sqlite_server):
    client = await sqlite_server.sign_in()
    with pytest.raises(ClientError) as error:
        await client.call("ping", surprise=True)
    assert error.value.code == "invalid_params"


async def test_text_and_data_together_get_invalid_params(sqlite_server):
    client = await sqlite_server.sign_in()
    with pytest.raises(ClientError) as error:
        await client.call(
            "message.send",
            conversation_id=1,
            client_msg_id="x",
            text="a",
            data={"type": "card", "body": {}},
        )
    assert error.value.code == "invalid_params"


async def test_an_unknown_method_gets_unknown_method(sqlite_server):
    client = await sqlite_server.sign_in()
    with pytest.raises(ClientError) as error:
        await client.call("message.teleport")
    assert error.value.code == "unknown_method"


async def test_an_oversized_frame_closes_with_1009(servers):
    server = await servers.start(gateway={"max_frame_bytes": 4096})
    client = await server.connect()
    await client.send_raw(
        msgpack.packb(
            {"type": "req", "id": 1, "method": "ping", "params": {"pad": "x" * 5000}}
        )
    )
    closed = await client.wait_closed()
    assert closed.code == 1009


async def test_a_request_before_sign_in_gets_unauthenticated(sqlite_server):
    client = await sqlite_server.connect()
    with pytest.raises(ClientError) as error:
        await client.call("conv.list")
    assert error.value.code == "unauthenticated"


async def test_no_sign_in_within_the_deadline_closes_with_4001(servers):
    server = await servers.start(gateway={"sign_in_deadline": 0.3})
    client = await server.connect()
    assert "time" in await client.call("ping")  # allowed before sign-in
    closed = await client.wait_closed()
    assert (closed.code, closed.reason) == (4001, "sign-in deadline passed")


async def test_signing_in_within_the_deadline_keeps_the_session(servers):
    server = await servers.start(gateway={"sign_in_deadline": 0.5})
    client = await server.sign_in()
    await asyncio.sleep(0.8)
    assert "time" in await client.call("ping")


async def test_an_invalid_phone_number_gets_invalid_phone(sqlite_server):
    client = await sqlite_server.connect()
    for phone in ("12", "+1 415 555", "not a number"):
        with pytest.raises(ClientError) as error:
            await client.call("auth.request_code", phone=phone)
        assert error.value.code == "invalid_phone"


async def test_a_wrong_code_six_times_locks_the_code(sqlite_server):
    client = await sqlite_server.connect()
    phone = new_phone()
    await client.call("auth.request_code", phone=phone)
    right = sqlite_server.sender.last_code(phone)
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"

    codes = []
    for _ in range(6):
        with pytest.raises(ClientError) as error:
            await client.call("auth.sign_in", phone=phone, code=wrong)
        codes.append(error.value.code)
    assert codes == ["code_invalid"] * 5 + ["code_attempts_exceeded"]
    with pytest.raises(ClientError) as error:
        await client.call("auth.sign_in", phone=phone, code=right)
    assert error.value.code == "code_attempts_exceeded"


async def test_an_expired_code_gets_code_expired(servers):
    server = await servers.start(accounts={"code_ttl": 0.2})
    client = await server.connect()
    phone = new_phone()
    await client.call("auth.request_code", phone=phone)
    await asyncio.sleep(0.4)
    with pytest.raises(ClientError) as error:
        await client.call(
            "auth.sign_in", phone=phone, code=server.sender.last_code(phone)
        )
    assert error.value.code == "code_expired"


async def test_a_revoked_token_gets_token_invalid_and_its_session_closes(sqlite_server):
    phone = new_phone()
    phone_device = await sqlite_server.sign_in(phone, device="phone")
    laptop = await sqlite_server.sign_in(phone, device="laptop")
    devices = (await phone_device.call("devices.list"))["devices"]
    laptop_entry = next(d for d in devices if d["device_name"] == "laptop")

    await phone_device.call("devices.revoke", session_id=laptop_entry["session_id"])

    closed = await laptop.wait_closed()
    assert closed.code == 4003
    retry = await sqlite_server.connect()
    with pytest.raises(ClientError) as error:
        await retry.resume(laptop.token)
    assert error.value.code == "token_invalid"
    assert "time" in await phone_device.call("ping")  # the other device stays


async def test_sending_to_a_conversation_one_is_not_in_gets_not_member(sqlite_server):
    alice = await sqlite_server.sign_in()
    bob = await sqlite_server.sign_in()
    mallory = await sqlite_server.sign_in()
    cid = (await alice.call("conv.direct", user_id=bob.user_id))["conversation_id"]

    with pytest.raises(ClientError) as error:
        await mallory.send_text(cid, "let me in")
    assert error.value.code == "not_member"
    with pytest.raises(ClientError) as error:
        await mallory.call("message.history", conversation_id=cid)
    assert error.value.code == "not_member"
    assert await alice.history_all(cid) == []
    with pytest.raises(ClientError) as error:
        await mallory.send_text(424242, "nowhere")
    assert error.value.code == "not_found"


async def test_recalling_someone_elses_message_gets_not_sender(sqlite_server):
    alice = await sqlite_server.sign_in()
    bob = await sqlite_server.sign_in()
    cid = (await alice.call("conv.direct", user_id=bob.user_id))["conversation_id"]
    ack = await alice.send_text(cid, "mine")
    with pytest.raises(ClientError) as error:
        await bob.call("message.recall", conversation_id=cid, seq=ack["seq"])
    assert error.value.code == "not_sender"
    [message] = await alice.history_all(cid)
    assert message["text"] == "mine"


async def test_recalling_after_the_window_gets_recall_window_passed(servers):
    server = await servers.start(chat={"recall_window": 0.2})
    alice = await server.sign_in()
    bob = await server.sign_in()
    cid = (await alice.call("conv.direct", user_id=bob.user_id))["conversation_id"]
    ack = await alice.send_text(cid, "too late")
    await asyncio.sleep(0.4)
    with pytest.raises(ClientError) as error:
        await alice.call("message.recall", conversation_id=cid, seq=ack["seq"])
    assert error.value.code == "recall_window_passed"
    assert [m["text"] for m in await alice.history_all(cid)] == ["too late"]


async def test_a_blocked_word_rejects_the_message_and_stores_nothing(servers):
    server = await servers.start(hooks={"blocked_words": ["Forbidden Fruit"]})
    alice = await server.sign_in()
    bob = await server.sign_in()
    cid = (await alice.call("conv.direct", user_id=bob.user_id))["conversation_id"]

    with pytest.raises(ClientError) as error:
        await alice.send_text(cid, "try the FORBIDDEN fruit today")
    assert error.value.code == "message_rejected"
    assert error.value.details == {"hook": "blocked_words"}
    with pytest.raises(ClientError):
        await alice.call(
            "message.send",
            conversation_id=cid,
            client_msg_id="d1",
            data={"type": "card", "body": {"t": ["forbidden fruit"]}},
        )
    ack = await alice.send_text(cid, "an apple")

    assert ack["seq"] == 1  # the rejected messages took no seq
    assert [m["text"] for m in await bob.history_all(cid)] == ["an apple"]
    events = [f["data"] for f in bob.pending_events() if f["event"] == "message.new"]
    assert all(e.get("text") != "try the FORBIDDEN fruit today" for e in events)


async def test_an_oversized_data_payload_gets_payload_too_large(servers):
    server = await servers.start(chat={"max_data_bytes": 100})
    alice = await server.sign_in()
    bob = await server.sign_in()
    cid = (await alice.call("conv.direct", user_id=bob.user_id))["conversation_id"]
    with pytest.raises(ClientError) as error:
        await alice.call(
            "message.send",
            conversation_id=cid,
            client_msg_id="big",
            data={"type": "blob", "body": {"x": "y" * 200}},
        )
    assert error.value.code == "payload_too_large"
    assert await alice.history_all(cid) == []


async def test_too_many_requests_get_rate_limited_with_retry_after(servers):
    server = await servers.start(gateway={"rate_per_second": 1, "rate_burst": 3})
    client = await server.connect()
    results = await asyncio.gather(
        *(client.request("ping", {}) for _ in range(6)), return_exceptions=True
    )
    limited = [r for r in results if isinstance(r, ClientError)]
    assert len(limited) == 3
    assert all(
        r.code == "rate_limited" and r.details["retry_after"] > 0 for r in limited
    )


async def test_many_bad_frames_close_with_1008(servers):
    server = await servers.start(gateway={"max_bad_frames": 3})
    client = await server.connect()
    for _ in range(3):
        await client.send_raw(b"\xc1")
    closed = await client.wait_closed()
    assert closed.code == 1008


async def test_signing_in_twice_on_one_session_gets_already_authenticated(
    sqlite_server,
):
    client = await sqlite_server.sign_in()
    with pytest.raises(ClientError) as error:
        await client.resume(client.token)
    assert error.value.code == "already_authenticated"


async def test_json_nan_and_infinity_get_bad_frame(sqlite_server):
    client = await sqlite_server.connect("json")
    for literal in ("NaN", "Infinity", "-Infinity"):
        frame = await _raw_answer(
            client,
            f'{{"type":"req","id":1,"method":"ping","params":{{"x":{literal}}}}}',
        )
        assert (frame["id"], frame["error"]["code"]) == (None, "bad_frame")


@pytest.mark.parametrize(
    "encoding, body",
    [
        ("msgpack", {"blob": b"\x00\x01"}),  # bin: no JSON client could read it
        ("json", {"big": 2**64}),  # beyond 64 bits: no MessagePack client could
        ("msgpack", {"nan": float("nan")}),  # JSON has no NaN
    ],
)
async def test_a_data_body_only_one_encoding_carries_gets_invalid_params(
    sqlite_server, encoding, body
):
    alice = await sqlite_server.sign_in(encoding=encoding)
    bob = await sqlite_server.sign_in(encoding="json")
    cid = (await alice.call("conv.direct", user_id=bob.user_id))["conversation_id"]
    with pytest.raises(ClientError) as error:
        await alice.call(
            "message.send",
            conversation_id=cid,
            client_msg_id="odd",
            data={"type": "odd", "body": body},
        )
    assert error.value.code == "invalid_params"
    assert await bob.history_all(cid) == []
