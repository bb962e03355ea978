"""The delivery guarantees of the architecture, end to end, on both stores."""

from __future__ import annotations

import asyncio
import uuid

import msgpack

from .support import TIMEOUT, collect


async def test_acked_messages_survive_a_restart_in_order(servers, server):
    alice = await server.sign_in()
    bob = await server.sign_in()
    conversation = await alice.call("conv.direct", user_id=bob.user_id)
    cid = conversation["conversation_id"]
    acks = [await alice.send_text(cid, f"before restart {i}") for i in range(20)]

    restarted = await servers.restart(server)

    reader = await restarted.resume(bob.token)
    history = await reader.history_all(cid)
    assert [m["seq"] for m in history] == [a["seq"] for a in acks]
    assert [m["text"] for m in history] == [f"before restart {i}" for i in range(20)]


async def test_concurrent_senders_see_one_gap_free_order(server):
    members = [await server.sign_in() for _ in range(5)]
    owner = members[0]
    group = await owner.call(
        "group.create", title="ordering", member_ids=[m.user_id for m in members[1:]]
    )
    cid = group["conversation_id"]
    for member in members:  # everyone has heard of the group before the burst
        await member.next_event("message.new")
    per_sender = 30

    async def burst(member):
        futures = [
            member.request(
                "message.send",
                {
                    "conversation_id": cid,
                    "client_msg_id": uuid.uuid4().hex,
                    "text": f"{member.user_id}:{i}",
                },
            )
            for i in range(per_sender)
        ]
        return await asyncio.gather(*futures)

    acks = await asyncio.gather(*(burst(m) for m in members))

    total = per_sender * len(members)
    all_seqs = sorted(a["seq"] for sender_acks in acks for a in sender_acks)
    assert all_seqs == list(range(2, 2 + total))  # seq 1 is group.created
    views = []
    for member, own_acks in zip(members, acks):
        pushed = await collect(member, total - per_sender, conversation_id=cid)
        seqs = sorted([e["seq"] for e in pushed] + [a["seq"] for a in own_acks])
        assert seqs == all_seqs
        history = await member.history_all(cid)
        views.append([(m["seq"], m.get("text")) for m in history])
    assert all(view == views[0] for view in views)
    assert [seq for seq, _ in views[0]] == list(range(1, 2 + total))


async def test_retry_after_dropped_connection_returns_original_seq(server):
    alice = await server.sign_in()
    bob = await server.sign_in()
    cid = (await alice.call("conv.direct", user_id=bob.user_id))["conversation_id"]
    client_msg_id = uuid.uuid4().hex

    # Send, then drop the connection without waiting for the ack.
    await alice.send_raw(
        msgpack.packb(
            {
                "type": "req",
                "id": 1,
                "method": "message.send",
                "params": {
                    "conversation_id": cid,
                    "client_msg_id": client_msg_id,
                    "text": "once",
                },
            }
        )
    )
    alice.connection.transport.abort()
    await alice.wait_closed()

    retry = await server.resume(alice.token)
    ack = await retry.call(
        "message.send", conversation_id=cid, client_msg_id=client_msg_id, text="once"
    )
    again = await retry.call(
        "message.send", conversation_id=cid, client_msg_id=client_msg_id, text="once"
    )

    history = await retry.history_all(cid)
    assert [m["text"] for m in history] == ["once"]
    assert ack["seq"] == again["seq"] == history[0]["seq"]
    assert again["duplicate"] is True
    pushed = await collect(bob, 1, conversation_id=cid)
    assert [e["seq"] for e in pushed] == [history[0]["seq"]]
    await asyncio.sleep(0.2)
    assert bob.pending_events() == []  # the retries were not pushed again


async def test_offline_member_catches_up_on_sync_in_order(server):
    alice = await server.sign_in()
    bob = await server.sign_in()
    carol = await server.sign_in()
    group = await alice.call(
        "group.create", title="burst", member_ids=[bob.user_id, carol.user_id]
    )
    cid = group["conversation_id"]
    cursors = {cid: 1}
    token = carol.token
    await carol.close()

    sent = 260  # more than one sync page (200)
    futures = [
        alice.request(
            "message.send",
            {"conversation_id": cid, "client_msg_id": f"b{i}", "text": f"burst {i}"},
        )
        for i in range(sent)
    ]
    await asyncio.gather(*futures)

    carol = await server.resume(token)
    caught_up = await carol.sync(cursors)
    texts = [m["text"] for m in caught_up[cid]]
    assert texts == [f"burst {i}" for i in range(sent)]
    assert [m["seq"] for m in caught_up[cid]] == list(range(2, 2 + sent))
    assert cursors[cid] == 1 + sent


async def test_every_device_receives_including_the_senders_other_device(server):
    phone = "+14155559001"
    alice_phone = await server.sign_in(phone, device="phone")
    alice_laptop = await server.sign_in(phone, device="laptop")
    bob = await server.sign_in()
    assert alice_phone.user_id == alice_laptop.user_id
    cid = (await bob.call("conv.direct", user_id=alice_phone.user_id))[
        "conversation_id"
    ]

    ack = await bob.send_text(cid, "to both devices")
    for device in (alice_phone, alice_laptop):
        [event] = await collect(device, 1, conversation_id=cid)
        assert (event["seq"], event["text"]) == (ack["seq"], "to both devices")

    own = await alice_phone.send_text(cid, "from my phone")
    [on_laptop] = await collect(alice_laptop, 1, conversation_id=cid)
    [on_bob] = await collect(bob, 1, conversation_id=cid)
    assert on_laptop["seq"] == on_bob["seq"] == own["seq"]
    assert on_laptop["sender_id"] == alice_phone.user_id
    await asyncio.sleep(0.2)
    assert alice_phone.pending_events() == []  # the sending session got an ack only


async def test_json_and_msgpack_sessions_get_the_same_event(server):
    alice = await server.sign_in(encoding="json")
    bob = await server.sign_in(encoding="msgpack")
    carol = await server.sign_in(encoding="json")
    group = await alice.call(
        "group.create", title="mixed", member_ids=[bob.user_id, carol.user_id]
    )
    cid = group["conversation_id"]
    await alice.send_text(cid, "héllo ✓")
    [to_bob] = (await collect(bob, 2, conversation_id=cid))[-1:]
    [to_carol] = (await collect(carol, 2, conversation_id=cid))[-1:]
    assert to_bob == to_carol
    assert to_bob["text"] == "héllo ✓"


async def test_unread_counts_and_read_receipts(server):
    alice = await server.sign_in()
    bob = await server.sign_in()
    cid = (await alice.call("conv.direct", user_id=bob.user_id))["conversation_id"]
    for i in range(3):
        await alice.send_text(cid, f"unread {i}")

    [listed] = (await bob.call("conv.list"))["conversations"]
    assert (listed["unread"], listed["last_seq"]) == (3, 3)
    assert listed["last_message"]["text"] == "unread 2"
    [mine] = (await alice.call("conv.list"))["conversations"]
    assert mine["unread"] == 0  # own messages count as read

    result = await bob.call("message.read", conversation_id=cid, seq=2)
    assert result == {"read_seq": 2}
    receipt = (await alice.next_event("conversation.read", timeout=TIMEOUT))["data"]
    assert receipt == {"conversation_id": cid, "user_id": bob.user_id, "read_seq": 2}
    [listed] = (await bob.call("conv.list"))["conversations"]
    assert listed["unread"] == 1
    # A cursor never moves back, nor past the last message.
    assert (await bob.call("message.read", conversation_id=cid, seq=1)) == {
        "read_seq": 2
    }
    assert (await bob.call("message.read", conversation_id=cid, seq=99)) == {
        "read_seq": 3
    }


async def test_recall_leaves_a_tombstone_for_every_member(server):
    alice = await server.sign_in()
    bob = await server.sign_in()
    carol = await server.sign_in()
    group = await alice.call(
        "group.create", title="recall", member_ids=[bob.user_id, carol.user_id]
    )
    cid = group["conversation_id"]
    ack = await alice.send_text(cid, "oops")

    result = await alice.call("message.recall", conversation_id=cid, seq=ack["seq"])

    for member in (bob, carol):
        events = await collect(member, 3, conversation_id=cid)
        recall = events[-1]
        assert recall["kind"] == "recall"
        assert recall["target_seq"] == ack["seq"]
        assert recall["seq"] == result["seq"] == ack["seq"] + 1
        history = await member.history_all(cid)
        recalled = next(m for m in history if m["seq"] == ack["seq"])
        assert recalled["recalled"] is True and "text" not in recalled


async def test_a_structured_payload_round_trips_on_every_path(server):
    alice = await server.sign_in()
    bob = await server.sign_in(encoding="json")
    cid = (await alice.call("conv.direct", user_id=bob.user_id))["conversation_id"]
    data = {
        "type": "card",
        "body": {
            "title": "Lunch?",
            "options": [1, 2.5, None],
            "nested": {"ok": True, "name": "café"},
        },
    }
    ack = await alice.call(
        "message.send", conversation_id=cid, client_msg_id="card", data=data
    )
    [pushed] = await collect(bob, 1, conversation_id=cid)
    [stored] = await bob.history_all(cid)
    assert pushed["data"] == stored["data"] == data
    assert (pushed["kind"], stored["seq"]) == ("data", ack["seq"])
