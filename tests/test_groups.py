"""Groups: create, rename, add, remove, leave, and who hears what."""

from __future__ import annotations

import pytest
from nextstar_client import ClientError

from .support import collect


async def _group(server, size):
    members = [await server.sign_in() for _ in range(size)]
    group = await members[0].call(
        "group.create", title="team", member_ids=[m.user_id for m in members[1:]]
    )
    for member in members:
        await collect(member, 1, conversation_id=group["conversation_id"])
    return members, group["conversation_id"]


async def test_creating_a_group_tells_every_member(server):
    members, cid = await _group(server, 3)
    listed = (await members[2].call("conv.list"))["conversations"]
    assert [(c["conversation_id"], c["title"], c["member_count"]) for c in listed] == [
        (cid, "team", 3)
    ]
    roster = (await members[1].call("group.members", conversation_id=cid))["members"]
    assert [(m["user_id"], m["role"]) for m in roster] == [
        (members[0].user_id, "owner"),
        (members[1].user_id, "member"),
        (members[2].user_id, "member"),
    ]


async def test_an_added_member_receives_new_messages_but_not_older_ones(server):
    (owner, bob), cid = await _group(server, 2)
    await owner.send_text(cid, "before carol")
    carol = await server.sign_in()

    await owner.call("group.add", conversation_id=cid, user_ids=[carol.user_id])
    [added] = await collect(carol, 1, conversation_id=cid)
    assert added["kind"] == "member.added"
    assert added["data"] == {"user_ids": [carol.user_id]}
    await bob.send_text(cid, "welcome carol")

    [welcome] = await collect(carol, 1, conversation_id=cid)
    assert welcome["text"] == "welcome carol"
    history = await carol.history_all(cid)
    assert [m.get("text") for m in history] == [None, "welcome carol"]


async def test_a_removed_member_stops_receiving_and_loses_access(server):
    (owner, bob, carol), cid = await _group(server, 3)

    await owner.call("group.remove", conversation_id=cid, user_id=carol.user_id)
    [removed] = await collect(carol, 1, conversation_id=cid)
    assert removed["kind"] == "member.removed"
    [seen_by_bob] = await collect(bob, 1, conversation_id=cid)
    assert seen_by_bob["seq"] == removed["seq"]
    await bob.send_text(cid, "after carol")

    with pytest.raises(ClientError) as error:
        await carol.send_text(cid, "still here?")
    assert error.value.code == "not_member"
    sync = await carol.call(
        "sync", cursors=[{"conversation_id": cid, "seq": removed["seq"]}]
    )
    assert sync["removed"] == [cid]
    assert all(c["conversation_id"] != cid for c in sync["conversations"])


async def test_only_the_owner_adds_and_removes(server):
    (owner, bob, carol), cid = await _group(server, 3)
    dave = await server.sign_in()
    with pytest.raises(ClientError) as error:
        await bob.call("group.add", conversation_id=cid, user_ids=[dave.user_id])
    assert error.value.code == "forbidden"
    with pytest.raises(ClientError) as error:
        await bob.call("group.remove", conversation_id=cid, user_id=carol.user_id)
    assert error.value.code == "forbidden"


async def test_adding_an_unknown_user_gets_not_found_and_changes_nothing(server):
    (owner, bob), cid = await _group(server, 2)
    with pytest.raises(ClientError) as error:
        await owner.call("group.add", conversation_id=cid, user_ids=[987654])
    assert error.value.code == "not_found"
    roster = (await owner.call("group.members", conversation_id=cid))["members"]
    assert len(roster) == 2
    assert (await owner.call("conv.get", conversation_id=cid))["last_seq"] == 1


async def test_when_the_owner_leaves_the_longest_member_takes_over(server):
    (owner, bob, carol), cid = await _group(server, 3)
    await owner.call("group.leave", conversation_id=cid)
    [left] = await collect(bob, 1, conversation_id=cid)
    assert left["kind"] == "member.left"
    assert left["data"] == {"user_id": owner.user_id, "new_owner_id": bob.user_id}
    await bob.call("group.remove", conversation_id=cid, user_id=carol.user_id)


async def test_renaming_is_a_message_in_the_sequence(server):
    (owner, bob), cid = await _group(server, 2)
    result = await bob.call("group.rename", conversation_id=cid, title="renamed")
    [renamed] = await collect(owner, 1, conversation_id=cid)
    assert (renamed["kind"], renamed["data"], renamed["seq"]) == (
        "group.renamed",
        {"title": "renamed"},
        result["seq"],
    )
    assert (await owner.call("conv.get", conversation_id=cid))["title"] == "renamed"


async def test_group_size_is_capped(servers):
    server = await servers.start(chat={"group_max_members": 3})
    members = [await server.sign_in() for _ in range(4)]
    with pytest.raises(ClientError) as error:
        await members[0].call(
            "group.create", title="too big", member_ids=[m.user_id for m in members[1:]]
        )
    assert error.value.code == "forbidden"


async def test_direct_conversation_is_one_per_pair(server):
    alice = await server.sign_in()
    bob = await server.sign_in()
    first = await alice.call("conv.direct", user_id=bob.user_id)
    second = await bob.call("conv.direct", user_id=alice.user_id)
    assert first["conversation_id"] == second["conversation_id"]
    with pytest.raises(ClientError) as error:
        await alice.call("conv.direct", user_id=alice.user_id)
    assert error.value.code == "invalid_params"
    with pytest.raises(ClientError) as error:
        await alice.call("conv.direct", user_id=999999)
    assert error.value.code == "not_found"


async def test_removing_a_non_member_gets_not_found(server):
    (owner, bob), cid = await _group(server, 2)
    outsider = await server.sign_in()
    with pytest.raises(ClientError) as error:
        await owner.call("group.remove", conversation_id=cid, user_id=outsider.user_id)
    assert error.value.code == "not_found"


async def test_what_you_did_yourself_is_not_unread(server):
    (owner, bob), cid = await _group(server, 2)
    await bob.call("group.rename", conversation_id=cid, title="bob's")
    [mine] = (await bob.call("conv.list"))["conversations"]
    [theirs] = (await owner.call("conv.list"))["conversations"]
    assert (mine["unread"], theirs["unread"]) == (0, 1)  # the owner: the rename
