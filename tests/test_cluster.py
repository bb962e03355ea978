"""Several nodes sharing PostgreSQL and fanning out through Redis."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import uuid

import pytest
from nextstar_client import Client, Disconnected

from .services import free_port, wait_until
from .support import SCALE, TIMEOUT, collect, provision, spawn_server

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(params=["redis", "redis_cluster"])
def broker_settings(request):
    if request.param == "redis":
        shards = request.getfixturevalue("redis_shards")
        return {"kind": "redis", "urls": [s.url for s in shards]}
    cluster = request.getfixturevalue("redis_cluster")
    return {"kind": "redis_cluster", "urls": list(cluster.urls)}


async def _nodes(servers, postgres_url, broker, count):
    nodes = []
    for _ in range(count):
        nodes.append(await servers.start(store_url=postgres_url, broker=broker))
    return nodes


async def _no_more_events(*clients):
    await asyncio.sleep(0.3 * SCALE)
    for client in clients:
        extra = [f for f in client.pending_events() if f["event"] == "message.new"]
        assert extra == []


async def test_users_on_different_nodes_exchange_messages_exactly_once(
    servers, postgres_url, broker_settings
):
    node_a, node_b = await _nodes(servers, postgres_url, broker_settings, 2)
    phone = "+14155557001"
    alice = await node_a.sign_in(phone)
    alice_laptop = await node_b.sign_in(phone)
    bob = await node_b.sign_in()
    carol = await node_a.sign_in()

    direct = (await alice.call("conv.direct", user_id=bob.user_id))["conversation_id"]
    acks = [await alice.send_text(direct, f"direct {i}") for i in range(10)]
    for device in (bob, alice_laptop):
        got = await collect(device, 10, conversation_id=direct)
        assert [e["seq"] for e in got] == [a["seq"] for a in acks]

    group = await bob.call(
        "group.create", title="cross-node", member_ids=[alice.user_id, carol.user_id]
    )
    gid = group["conversation_id"]
    for member in (alice, alice_laptop, carol, bob):
        await collect(member, 1, conversation_id=gid)
    acks = [await carol.send_text(gid, f"group {i}") for i in range(10)]
    for member in (alice, alice_laptop, bob):
        got = await collect(member, 10, conversation_id=gid)
        assert [e["seq"] for e in got] == [a["seq"] for a in acks]
    await _no_more_events(alice, alice_laptop, bob, carol)


async def test_three_nodes_concurrent_senders_one_gap_free_order(
    servers, postgres_url, redis_shards
):
    broker = {"kind": "redis", "urls": [s.url for s in redis_shards]}
    nodes = await _nodes(servers, postgres_url, broker, 3)
    members = [await nodes[i % 3].sign_in() for i in range(6)]
    group = await members[0].call(
        "group.create", title="order", member_ids=[m.user_id for m in members[1:]]
    )
    gid = group["conversation_id"]
    for member in members:
        await collect(member, 1, conversation_id=gid)
    per_sender = 25

    async def burst(member):
        return await asyncio.gather(
            *(
                member.request(
                    "message.send",
                    {
                        "conversation_id": gid,
                        "client_msg_id": uuid.uuid4().hex,
                        "text": f"{member.user_id}/{i}",
                    },
                )
                for i in range(per_sender)
            )
        )

    acks = await asyncio.gather(*(burst(m) for m in members))

    total = per_sender * len(members)
    expected = list(range(2, 2 + total))
    assert sorted(a["seq"] for sent in acks for a in sent) == expected
    orders = []
    for member, own in zip(members, acks):
        pushed = await collect(member, total - per_sender, conversation_id=gid)
        texts = {e["seq"]: e["text"] for e in pushed}
        texts.update({a["seq"]: None for a in own})
        assert sorted(texts) == expected
        orders.append([m.get("text") for m in await member.history_all(gid)])
    assert all(order == orders[0] for order in orders)


async def test_a_retry_on_another_node_returns_the_original_seq(
    servers, postgres_url, redis_shards
):
    broker = {"kind": "redis", "urls": [s.url for s in redis_shards]}
    node_a, node_b = await _nodes(servers, postgres_url, broker, 2)
    alice = await node_a.sign_in()
    bob = await node_b.sign_in()
    cid = (await alice.call("conv.direct", user_id=bob.user_id))["conversation_id"]

    first = await alice.send_text(cid, "once", client_msg_id="retry-1")
    elsewhere = await node_b.resume(alice.token)
    retry = await elsewhere.send_text(cid, "once", client_msg_id="retry-1")

    assert (retry["seq"], retry["duplicate"]) == (first["seq"], True)
    assert [m["text"] for m in await bob.history_all(cid)] == ["once"]


async def test_a_killed_shard_degrades_to_sync_and_loses_no_acked_message(
    servers, postgres_url, redis_shards
):
    broker = {
        "kind": "redis",
        "urls": [s.url for s in redis_shards],
        "reconnect_min": 0.05,
        "reconnect_max": 0.2,
    }
    node_a, node_b = await _nodes(servers, postgres_url, broker, 2)
    senders = [await node_a.sign_in() for _ in range(6)]
    readers = [await node_b.sign_in() for _ in range(6)]
    pairs = []
    for sender, reader in zip(senders, readers):
        cid = (await sender.call("conv.direct", user_id=reader.user_id))[
            "conversation_id"
        ]
        pairs.append((sender, reader, cid))
    broker_b = node_b.app.broker
    victim_url = broker_b.shard_for(f"u:{readers[0].user_id}")
    victim = next(s for s in redis_shards if victim_url.endswith(f":{s.port}"))
    on_victim = [
        r for r in readers if broker_b.shard_for(f"u:{r.user_id}") == victim_url
    ]

    acked: dict[int, set[int]] = {cid: set() for _, _, cid in pairs}

    async def traffic(sender, cid, count):
        for i in range(count):
            ack = await sender.send_text(cid, f"t{i}")
            acked[cid].add(ack["seq"])

    await asyncio.gather(*(traffic(s, c, 10) for s, _, c in pairs))
    victim.kill()
    await asyncio.gather(*(traffic(s, c, 10) for s, _, c in pairs))
    for reader in on_victim:
        notice = await reader.next_event("session.resync", timeout=TIMEOUT)
        assert notice["data"] == {"reason": "broker"}
    assert not node_b.app.broker.is_ready()

    victim.restart()
    await wait_until(node_b.app.broker.is_ready, timeout=TIMEOUT)
    await wait_until(node_a.app.broker.is_ready, timeout=TIMEOUT)
    await asyncio.gather(*(traffic(s, c, 10) for s, _, c in pairs))

    for sender, reader, cid in pairs:
        stored = {m["seq"] for m in await reader.history_all(cid)}
        assert acked[cid] <= stored and len(acked[cid]) == 30
        caught_up = await reader.sync({cid: 0})
        assert [m["seq"] for m in caught_up[cid]] == sorted(acked[cid])
    # The fast path is back: a new message is pushed again to a reader whose
    # shard was the one killed.
    sender, reader, cid = next(p for p in pairs if p[1] is on_victim[0])
    reader.pending_events()
    ack = await sender.send_text(cid, "after the shard came back")
    [pushed] = await collect(reader, 1, conversation_id=cid)
    assert pushed["seq"] == ack["seq"]


def _node_env(postgres_url, broker_urls, port):
    return {
        "NEXTSTAR_SERVER__PORT": str(port),
        "NEXTSTAR_STORE__URL": postgres_url,
        "NEXTSTAR_BROKER__KIND": "redis",
        "NEXTSTAR_BROKER__URLS": json.dumps(broker_urls),
    }


async def _spawn_node(tmp_path, env, *args):
    data_dir = tmp_path / f"node-{uuid.uuid4().hex[:6]}"
    return await spawn_server(env, "--data-dir", str(data_dir), *args)


async def _provision_pg(postgres_url, count):
    return await provision(count, {"NEXTSTAR_STORE__URL": postgres_url})


async def test_clients_of_a_killed_node_reconnect_elsewhere_and_lose_nothing(
    tmp_path, postgres_url, redis_shards
):
    alice_entry, bob_entry = await _provision_pg(postgres_url, 2)
    urls = [s.url for s in redis_shards]
    processes = []
    try:
        for _ in range(2):
            processes.append(
                await _spawn_node(tmp_path, _node_env(postgres_url, urls, free_port()))
            )
        (doomed, doomed_url), (_, survivor_url) = processes
        alice = await Client.connect(doomed_url)
        await alice.resume(alice_entry["token"])
        bob = await Client.connect(survivor_url)
        await bob.resume(bob_entry["token"])
        cid = (await alice.call("conv.direct", user_id=bob_entry["user_id"]))[
            "conversation_id"
        ]
        # Pushes cross between the node processes before the failure.
        first = await alice.send_text(cid, "across processes")
        [pushed] = await collect(bob, 1, conversation_id=cid)
        assert pushed["seq"] == first["seq"]

        futures = [
            alice.request(
                "message.send",
                {"conversation_id": cid, "client_msg_id": f"k{i}", "text": f"k{i}"},
            )
            for i in range(300)
        ]
        await asyncio.wait(futures[:50])

        doomed.send_signal(signal.SIGKILL)
        results = await asyncio.gather(*futures, return_exceptions=True)
        acked = {r["seq"] for r in results if isinstance(r, dict)}
        unanswered = [i for i, r in enumerate(results) if isinstance(r, Disconnected)]
        assert len(acked) >= 50

        # Alice reconnects to the surviving node and retries what got no ack.
        alice = await Client.connect(survivor_url)
        await alice.resume(alice_entry["token"])
        for i in unanswered:
            ack = await alice.send_text(cid, f"k{i}", client_msg_id=f"k{i}")
            acked.add(ack["seq"])
        caught_up = await bob.sync({cid: 0})
        texts = [m["text"] for m in caught_up[cid]]
        assert sorted(texts) == sorted(
            ["across processes"] + [f"k{i}" for i in range(300)]
        )
        assert {m["seq"] for m in caught_up[cid]} == acked | {first["seq"]}
        await alice.close()
        await bob.close()
    finally:
        for process, _ in processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                await process.wait()


async def test_two_workers_serve_one_port(tmp_path, postgres_url, redis_shards):
    entries = await _provision_pg(postgres_url, 2)
    port = free_port()
    env = _node_env(postgres_url, [s.url for s in redis_shards], port)
    process, url = await _spawn_node(tmp_path, env, "--workers", "2")
    try:
        seen_nodes: set[str] = set()
        async with asyncio.timeout(TIMEOUT * 3):
            while len(seen_nodes) < 2:
                try:
                    probe = await Client.connect(f"ws://127.0.0.1:{port}/ws")
                except OSError:
                    await asyncio.sleep(0.1)  # the second worker is starting
                    continue
                seen_nodes.add((await probe.call("ping"))["node"])
                await probe.close()
        alice, bob = [
            await Client.connect(f"ws://127.0.0.1:{port}/ws") for _ in range(2)
        ]
        await alice.resume(entries[0]["token"])
        await bob.resume(entries[1]["token"])
        cid = (await alice.call("conv.direct", user_id=bob.user_id))["conversation_id"]
        ack = await alice.send_text(cid, "through one port")
        [pushed] = await collect(bob, 1, conversation_id=cid)
        assert pushed["seq"] == ack["seq"]
        await alice.close()
        await bob.close()
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), TIMEOUT * 3) == 0


async def test_workers_with_the_in_process_broker_are_refused(tmp_path):
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nextstar_rt.cli",
        "serve",
        "--workers",
        "2",
        "--data-dir",
        str(tmp_path),
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await process.communicate()
    assert process.returncode == 2
    assert "--workers > 1 needs a shared broker" in err.decode()


async def test_readyz_is_not_ready_while_a_shard_is_down(servers, redis_shards):
    import urllib.request

    broker = {
        "kind": "redis",
        "urls": [s.url for s in redis_shards],
        "reconnect_min": 0.05,
        "reconnect_max": 0.2,
    }
    node = await servers.start(broker=broker)
    url = f"http://127.0.0.1:{node.app.port}/readyz"

    def status():
        try:
            return urllib.request.urlopen(url, timeout=TIMEOUT).status
        except urllib.error.HTTPError as error:
            return error.code

    assert await asyncio.to_thread(status) == 200
    redis_shards[1].kill()
    await wait_until(lambda: not node.app.broker.is_ready(), timeout=TIMEOUT)
    assert await asyncio.to_thread(status) == 503
    redis_shards[1].restart()
    await wait_until(node.app.broker.is_ready, timeout=TIMEOUT)
    assert await asyncio.to_thread(status) == 200
