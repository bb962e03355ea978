"""Sign-in codes, sessions and devices, profiles, account deletion."""

from __future__ import annotations

import asyncio

import pytest
from nextstar_client import ClientError

from .support import new_phone


async def test_first_sign_in_creates_the_user_and_later_ones_find_it(sqlite_server):
    phone = new_phone()
    first = await sqlite_server.sign_in(phone)
    second = await sqlite_server.sign_in(phone)
    assert first.user_id == second.user_id
    profile = await first.call("profile.get")
    assert profile["phone"] == phone and profile["verification"] == "unverified"


async def test_national_numbers_are_normalised_to_e164(sqlite_server):
    client = await sqlite_server.connect()
    result = await client.call("auth.request_code", phone="(415) 555-0142", region="US")
    assert result["phone"] == "+14155550142"
    code = sqlite_server.sender.last_code("+14155550142")
    assert len(code) == 6 and code.isdigit()


async def test_a_second_code_within_the_cooldown_is_refused(servers):
    server = await servers.start(accounts={"resend_cooldown": 60})
    client = await server.connect()
    phone = new_phone()
    await client.call("auth.request_code", phone=phone)
    with pytest.raises(ClientError) as error:
        await client.call("auth.request_code", phone=phone)
    assert error.value.code == "code_cooldown"
    assert 0 < error.value.details["retry_after"] <= 60
    assert len(server.sender.sent) == 1


async def test_hourly_caps_per_phone_and_per_address(servers):
    server = await servers.start(
        accounts={"per_phone_hourly": 2, "per_address_hourly": 3}
    )
    client = await server.connect()
    phone = new_phone()
    for _ in range(2):
        await client.call("auth.request_code", phone=phone)
    with pytest.raises(ClientError) as error:
        await client.call("auth.request_code", phone=phone)
    assert error.value.code == "sms_quota"

    await client.call("auth.request_code", phone=new_phone())  # third from here
    with pytest.raises(ClientError) as error:
        await client.call("auth.request_code", phone=new_phone())
    assert error.value.code == "sms_quota"


async def test_a_code_works_once(sqlite_server):
    client = await sqlite_server.connect()
    phone = new_phone()
    await client.call("auth.request_code", phone=phone)
    code = sqlite_server.sender.last_code(phone)
    await client.sign_in(phone, code)
    other = await sqlite_server.connect()
    with pytest.raises(ClientError) as error:
        await other.sign_in(phone, code)
    assert error.value.code == "code_invalid"


async def test_devices_are_listed_and_sign_out_revokes_the_current_one(sqlite_server):
    phone = new_phone()
    phone_device = await sqlite_server.sign_in(phone, device="phone")
    laptop = await sqlite_server.sign_in(phone, device="laptop")
    devices = (await laptop.call("devices.list"))["devices"]
    assert [(d["device_name"], d["current"]) for d in devices] == [
        ("phone", False),
        ("laptop", True),
    ]

    assert await laptop.call("auth.sign_out") == {}
    closed = await laptop.wait_closed()
    assert closed.code == 4003
    remaining = (await phone_device.call("devices.list"))["devices"]
    assert [d["device_name"] for d in remaining] == ["phone"]


async def test_revoking_an_unknown_device_gets_not_found(sqlite_server):
    alice = await sqlite_server.sign_in()
    bob = await sqlite_server.sign_in()
    bob_session = (await bob.call("devices.list"))["devices"][0]["session_id"]
    with pytest.raises(ClientError) as error:
        await alice.call("devices.revoke", session_id=bob_session)
    assert error.value.code == "not_found"
    assert "time" in await bob.call("ping")


async def test_profile_update_and_public_view(sqlite_server):
    alice = await sqlite_server.sign_in()
    bob = await sqlite_server.sign_in()
    updated = await alice.call(
        "profile.update",
        nickname="Alice",
        handle="alice_01",
        gender="female",
        birthday="1990-04-01",
        region="Shanghai",
        avatar_url="https://cdn.example/a.png",
    )
    assert (updated["nickname"], updated["handle"]) == ("Alice", "alice_01")

    seen = await bob.call("profile.get", user_id=alice.user_id)
    assert seen["nickname"] == "Alice" and seen["region"] == "Shanghai"
    assert "phone" not in seen  # a phone number is only shown to its owner


async def test_handles_are_unique_regardless_of_case(sqlite_server):
    alice = await sqlite_server.sign_in()
    bob = await sqlite_server.sign_in()
    await alice.call("profile.update", handle="Nightowl")
    with pytest.raises(ClientError) as error:
        await bob.call("profile.update", handle="nightOWL")
    assert error.value.code == "handle_taken"


async def test_the_verification_status_cannot_be_set_by_the_user(sqlite_server):
    alice = await sqlite_server.sign_in()
    with pytest.raises(ClientError) as error:
        await alice.call("profile.update", verification="verified")
    assert error.value.code == "invalid_params"
    assert (await alice.call("profile.get"))["verification"] == "unverified"


async def test_a_bad_handle_gets_invalid_params(sqlite_server):
    alice = await sqlite_server.sign_in()
    for handle in ("ab", "1starts_with_digit", "has space", "x" * 30):
        with pytest.raises(ClientError) as error:
            await alice.call("profile.update", handle=handle)
        assert error.value.code == "invalid_params"


async def test_account_deletion_revokes_sessions_and_keeps_a_tombstone(sqlite_server):
    phone = new_phone()
    alice = await sqlite_server.sign_in(phone)
    other_device = await sqlite_server.sign_in(phone)
    bob = await sqlite_server.sign_in()
    cid = (await alice.call("conv.direct", user_id=bob.user_id))["conversation_id"]
    await alice.call("profile.update", nickname="Gone Soon")
    await alice.send_text(cid, "goodbye")

    assert await alice.call("account.delete") == {}

    for device in (alice, other_device):
        assert (await device.wait_closed()).code == 4003
    profile = await bob.call("profile.get", user_id=alice.user_id)
    assert profile == {"user_id": alice.user_id, "deleted": True}
    [message] = await bob.history_all(cid)
    assert message["sender_id"] == alice.user_id and message["text"] == "goodbye"
    retry = await sqlite_server.connect()
    with pytest.raises(ClientError) as error:
        await retry.resume(alice.token)
    assert error.value.code == "token_invalid"
    # The phone is free again: signing in with it makes a new user.
    reborn = await sqlite_server.sign_in(phone)
    assert reborn.user_id != alice.user_id


async def test_presence_counts_devices_for_conversation_partners_only(sqlite_server):
    phone = new_phone()
    alice = await sqlite_server.sign_in(phone)
    await sqlite_server.sign_in(phone)
    bob = await sqlite_server.sign_in()
    stranger = await sqlite_server.sign_in()
    await bob.call("conv.direct", user_id=alice.user_id)

    seen = await bob.call("presence.get", user_id=alice.user_id)
    assert seen == {"user_id": alice.user_id, "online": True, "devices": 2}
    with pytest.raises(ClientError) as error:
        await stranger.call("presence.get", user_id=alice.user_id)
    assert error.value.code == "forbidden"
    await bob.close()
    await asyncio.sleep(0.1)
    assert (await alice.call("presence.get", user_id=bob.user_id))["online"] is False


async def test_revoking_ones_own_device_answers_before_closing(sqlite_server):
    client = await sqlite_server.sign_in()
    [device] = (await client.call("devices.list"))["devices"]
    assert await client.call("devices.revoke", session_id=device["session_id"]) == {}
    assert (await client.wait_closed()).code == 4003


async def test_a_null_gender_resets_it_to_unspecified(sqlite_server):
    client = await sqlite_server.sign_in()
    await client.call("profile.update", gender="female")
    profile = await client.call("profile.update", gender=None, nickname=None)
    assert (profile["gender"], profile["nickname"]) == ("unspecified", None)
