"""Start-up, HTTP endpoints, graceful shutdown on SIGTERM, idle and slow sessions."""

from __future__ import annotations

import asyncio
import re
import signal
import urllib.request

import pytest
from nextstar_client import Client, ClientError, Disconnected

from nextstar_rt.app import App
from nextstar_rt.config import ConfigError, load_settings

from .support import SCALE, TIMEOUT, collect, provision, spawn_server


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return (
                response.status,
                response.headers["Content-Type"],
                response.read().decode(),
            )
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


async def test_health_readiness_and_metrics_share_the_port(sqlite_server):
    base = f"http://127.0.0.1:{sqlite_server.app.port}"
    alice = await sqlite_server.sign_in()
    bob = await sqlite_server.sign_in()
    cid = (await alice.call("conv.direct", user_id=bob.user_id))["conversation_id"]
    await alice.send_text(cid, "counted")
    await collect(bob, 1, conversation_id=cid)

    assert (await asyncio.to_thread(_get, base + "/healthz"))[0] == 200
    status, _, body = await asyncio.to_thread(_get, base + "/readyz")
    assert status == 200 and "store: ok" in body
    status, content_type, metrics = await asyncio.to_thread(_get, base + "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    assert re.search(r"^nextstar_connections 2\.0$", metrics, re.M)
    assert re.search(
        r'^nextstar_requests_total\{method="message.send"\} 1\.0$', metrics, re.M
    )
    assert re.search(r"^nextstar_messages_stored_total 1\.0$", metrics, re.M)
    assert re.search(r"^nextstar_delivery_latency_seconds_count 1\.0$", metrics, re.M)
    assert (await asyncio.to_thread(_get, base + "/nowhere"))[0] == 404


async def test_readyz_reports_an_unreachable_store(servers):
    from .services import free_port

    # Nothing listens on this port: the store is really unreachable.
    dead = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/none"
    server = await servers.start(store_url=dead, store={"migrate_on_start": False})
    base = f"http://127.0.0.1:{server.app.port}"
    status, _, body = await asyncio.to_thread(_get, base + "/readyz")
    assert status == 503 and "store: unreachable" in body
    assert (await asyncio.to_thread(_get, base + "/healthz"))[0] == 200


async def test_an_idle_session_is_closed_with_4002(servers):
    server = await servers.start(gateway={"idle_timeout": 1.0})
    client = await server.sign_in()
    closed = await client.wait_closed(timeout=TIMEOUT)
    assert closed.code == 4002


async def test_production_mode_refuses_the_development_sms_sender(tmp_path):
    settings = load_settings(
        environ={},
        overrides={"server": {"mode": "production", "data_dir": str(tmp_path)}},
    )
    with pytest.raises(ConfigError, match="real SMS sender"):
        App(settings)


async def _fill(sender: Client, cid: int, count: int, size: int) -> None:
    # Chunks of ten keep the flood gradual enough for a reading session to
    # keep up, while a session that reads nothing falls further behind.
    for start in range(0, count, 10):
        await asyncio.gather(
            *(
                sender.request(
                    "message.send",
                    {
                        "conversation_id": cid,
                        "client_msg_id": f"fill-{i}",
                        "data": {"type": "blob", "body": {"pad": "x" * size}},
                    },
                )
                for i in range(start, min(count, start + 10))
            )
        )


async def _slow_setup(servers, grace):
    server = await servers.start(
        gateway={
            "send_buffer_bytes": 262144,
            "slow_consumer_grace": grace,
            "rate_per_second": 10000,
            "rate_burst": 10000,
        },
        chat={"max_data_bytes": 60000},
    )
    sender = await server.sign_in()
    slow = await server.sign_in()
    healthy = await server.sign_in()
    group = await sender.call(
        "group.create", title="flood", member_ids=[slow.user_id, healthy.user_id]
    )
    cid = group["conversation_id"]
    await collect(slow, 1, conversation_id=cid)
    await collect(healthy, 1, conversation_id=cid)
    return server, sender, slow, healthy, cid


async def test_a_slow_consumer_is_closed_and_others_are_not_delayed(servers):
    server, sender, slow, healthy, cid = await _slow_setup(servers, 1.0 * SCALE)
    slow.connection.transport.pause_reading()

    count = 400  # 400 x 50 kB is far more than the socket buffers hold
    await _fill(sender, cid, count, 50000)

    pushed = await collect(healthy, count, conversation_id=cid)
    assert [e["seq"] for e in pushed] == list(range(2, 2 + count))
    await asyncio.sleep(2 * SCALE)  # past the grace period, still not reading
    slow.connection.transport.resume_reading()
    closed = await slow.wait_closed(timeout=TIMEOUT)
    assert closed.code == 4004


async def test_a_consumer_that_drains_in_time_is_told_to_resync(servers):
    # A long grace: the flood itself takes a second or two, and the session
    # must start reading again before the grace runs out.
    server, sender, slow, healthy, cid = await _slow_setup(servers, 5.0 * SCALE)
    slow.connection.transport.pause_reading()
    await _fill(sender, cid, 400, 50000)
    await collect(healthy, 400, conversation_id=cid)
    slow.connection.transport.resume_reading()

    resync = await slow.next_event("session.resync", timeout=TIMEOUT)
    assert resync["data"] == {"reason": "slow_consumer"}
    caught_up = await slow.sync({cid: 1})
    assert [m["seq"] for m in caught_up[cid]] == list(range(2, 402))


def _data_env(data_dir):
    return {"NEXTSTAR_SERVER__DATA_DIR": str(data_dir), "NEXTSTAR_SERVER__PORT": "0"}


async def test_everything_acked_before_sigterm_is_stored(tmp_path):
    data_dir = tmp_path / "data"
    alice_entry, bob_entry = await provision(2, _data_env(data_dir))
    process, url = await spawn_server(_data_env(data_dir))
    try:
        alice = await Client.connect(url)
        await alice.resume(alice_entry["token"])
        cid = (await alice.call("conv.direct", user_id=bob_entry["user_id"]))[
            "conversation_id"
        ]

        futures = [
            alice.request(
                "message.send",
                {"conversation_id": cid, "client_msg_id": f"m{i}", "text": f"m{i}"},
            )
            for i in range(2000)
        ]
        await asyncio.wait(futures[:100])  # the burst is under way
        process.send_signal(signal.SIGTERM)
        results = await asyncio.gather(*futures, return_exceptions=True)
        closed = await alice.wait_closed()
        assert await asyncio.wait_for(process.wait(), TIMEOUT * 3) == 0
    finally:
        if process.returncode is None:
            process.kill()

    acked = {f"m{i}": r["seq"] for i, r in enumerate(results) if isinstance(r, dict)}
    refused = [r for r in results if isinstance(r, ClientError)]
    lost = [r for r in results if isinstance(r, Disconnected)]
    assert len(acked) >= 100
    assert closed.code == 1001
    assert all(r.code == "unavailable" for r in refused)

    process, url = await spawn_server(_data_env(data_dir))
    try:
        bob = await Client.connect(url)
        await bob.resume(bob_entry["token"])
        stored = {m["text"]: m["seq"] for m in await bob.history_all(cid)}
        await bob.close()
    finally:
        process.send_signal(signal.SIGTERM)
        await process.wait()
    assert {text: stored.get(text) for text in acked} == acked
    # Sends that got no answer may or may not be stored, never twice.
    assert len(stored) == len(set(stored.values())) <= 2000 - len(refused)
    assert len(acked) + len(refused) + len(lost) == 2000


async def test_a_client_keeping_alive_outlasts_the_idle_timeout(servers):
    server = await servers.start(gateway={"idle_timeout": 1.0})
    client = await server.sign_in()
    client.keep_alive(0.3)
    await asyncio.sleep(2.5)
    assert client.closed is None
    assert "time" in await client.call("ping")
