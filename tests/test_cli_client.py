"""The ``nextstar`` command-line client, run as real processes against a real
server on an ephemeral port, signing in through the development SMS outbox.

The server runs in the test's event loop, so every CLI process is started with
asyncio's subprocess support: a blocking wait would stall the server it waits
for.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nextstar_client import Client, ClientError
from nextstar_client._chat import Push, Timeline
from nextstar_client._outbox import Outbox
from nextstar_rt.app import App
from nextstar_rt.config import load_settings

TIMEOUT = 20.0 * float(os.environ.get("NEXTSTAR_TEST_TIMEOUT_SCALE", "1"))

ALICE = "+14155550101"
BOB = "+14155550102"
CAROL = "+14155550103"


@dataclass
class Done:
    """A finished CLI process."""

    status: int
    stdout: str
    stderr: str


class Cli:
    """Runs ``nextstar`` against one server with one configuration directory."""

    def __init__(self, url: str, config_dir: Path, outbox: Path, cwd: Path) -> None:
        self.url = url
        self.config_dir = config_dir
        self.outbox = outbox
        self.cwd = cwd
        self.processes: list[asyncio.subprocess.Process] = []

    def environment(self) -> dict[str, str]:
        # The developer's own NEXTSTAR_* settings must not leak into a test.
        environ = {k: v for k, v in os.environ.items() if not k.startswith("NEXTSTAR_")}
        environ["NEXTSTAR_CONFIG_DIR"] = str(self.config_dir)
        environ["PYTHONUNBUFFERED"] = "1"
        return environ

    async def start(self, *args: str) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "nextstar_client.cli",
            "--server",
            self.url,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.environment(),
            cwd=self.cwd,
        )
        self.processes.append(process)
        return process

    async def run(self, *args: str, stdin: str = "") -> Done:
        process = await self.start(*args)
        async with asyncio.timeout(TIMEOUT):
            stdout, stderr = await process.communicate(stdin.encode())
        return Done(process.returncode, stdout.decode(), stderr.decode())

    async def ok(self, *args: str) -> Done:
        done = await self.run(*args)
        assert done.status == 0, done
        return done

    async def json(self, *args: str) -> Any:
        return json.loads((await self.ok("--json", *args)).stdout)

    async def login(self, profile: str, phone: str) -> int:
        """Log ``profile`` in through the outbox; return its user id."""
        result = await self.json(
            "--profile", profile, "login", phone, "--outbox", str(self.outbox)
        )
        return result["user"]["user_id"]

    def credentials(self, profile: str) -> Path:
        return self.config_dir / f"credentials-{profile}.json"


async def read_until(stream: asyncio.StreamReader, needle: str) -> str:
    """Read lines until one contains ``needle``; return all read so far."""
    seen: list[str] = []
    async with asyncio.timeout(TIMEOUT):
        while True:
            line = await stream.readline()
            if not line:
                raise AssertionError(f"{needle!r} never came; got {seen!r}")
            seen.append(line.decode())
            if needle in seen[-1]:
                return "".join(seen)


async def finish(process: asyncio.subprocess.Process) -> int:
    async with asyncio.timeout(TIMEOUT):
        return await process.wait()


def start_settings(data_dir: Path, port: int = 0) -> Any:
    overrides = {"server": {"data_dir": str(data_dir), "port": port}}
    return load_settings(environ={}, overrides=overrides)


@pytest.fixture
async def server(tmp_path: Path) -> Any:
    # The default sender in development is the outbox writer, so the outbox
    # file the CLI reads is the real one.
    app = App(start_settings(tmp_path / "data"))
    await app.start()
    yield app
    await app.stop()


@pytest.fixture
async def cli(server: App, tmp_path: Path) -> Any:
    work = tmp_path / "work"
    work.mkdir()
    runner = Cli(server.url, tmp_path / "config", server.sender.outbox, work)
    yield runner
    for process in runner.processes:
        if process.returncode is None:
            process.kill()
            await process.wait()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- signing in ---------------------------------------------------------------


async def test_login_reads_code_from_outbox_and_saves_private_credentials(
    cli: Cli,
) -> None:
    done = await cli.ok(
        "--profile", "alice", "login", "(415) 555-0101", "--outbox", str(cli.outbox)
    )

    assert "development outbox" in done.stderr
    path = cli.credentials("alice")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    stored = json.loads(path.read_text())
    assert stored["phone"] == ALICE
    assert stored["server"] == cli.url
    assert stored["token"]
    whoami = await cli.json("--profile", "alice", "whoami")
    assert whoami["user"]["user_id"] == stored["user_id"]
    assert whoami["user"]["phone"] == ALICE


async def test_login_finds_outbox_through_environment(cli: Cli) -> None:
    process = await cli.start("login", BOB)
    process.stdin.close()
    # No --outbox: the variable names it, as for a server started elsewhere.
    assert await finish(process) != 0  # nothing in ./nextstar-data, no code typed

    environ = cli.environment()
    environ["NEXTSTAR_OUTBOX"] = str(cli.outbox)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nextstar_client.cli",
        "--server",
        cli.url,
        "login",
        CAROL,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environ,
        cwd=cli.cwd,
    )
    cli.processes.append(process)
    async with asyncio.timeout(TIMEOUT):
        stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr
    assert "development outbox" in stderr.decode()
    assert cli.credentials("default").exists()


async def test_login_prompts_for_code_without_outbox(cli: Cli) -> None:
    process = await cli.start("login", ALICE)

    prompt = b""
    async with asyncio.timeout(TIMEOUT):
        while b"code sent to" not in prompt:
            prompt += await process.stderr.read(1)
    code = Outbox(cli.outbox).find_code(ALICE)
    assert code is not None
    process.stdin.write(f"{code}\n".encode())
    await process.stdin.drain()

    assert await finish(process) == 0
    assert json.loads(cli.credentials("default").read_text())["phone"] == ALICE


async def test_login_with_code_given_signs_in_without_asking_again(cli: Cli) -> None:
    async with await Client.connect(cli.url) as client:
        await client.call("auth.request_code", phone=BOB)
    code = Outbox(cli.outbox).find_code(BOB)

    done = await cli.ok("login", BOB, "--code", code, "--device", "test rig")

    assert "logged in as @" in done.stdout
    devices = await cli.json("devices")
    assert [d["device_name"] for d in devices["devices"]] == ["test rig"]


async def test_login_with_invalid_phone_reports_error_code(cli: Cli) -> None:
    done = await cli.run("login", "12", "--outbox", str(cli.outbox))

    assert done.status == 1
    assert done.stderr.startswith("error: invalid_phone: ")
    assert not cli.credentials("default").exists()


async def test_login_with_wrong_code_reports_error_code(cli: Cli) -> None:
    done = await cli.run("login", ALICE, "--code", "000000")

    assert done.status == 1
    assert "error: code_invalid: " in done.stderr


async def test_command_before_login_says_to_log_in_first(cli: Cli) -> None:
    for command in (["convs"], ["send", "@1", "hi"], ["whoami"]):
        done = await cli.run("--profile", "nobody", *command)
        assert done.status == 1
        assert "not logged in" in done.stderr
        assert "nextstar login" in done.stderr


async def test_unreachable_server_exits_with_status_2(cli: Cli) -> None:
    url = f"ws://127.0.0.1:{closed_port()}/ws"
    done = await cli.run("login", ALICE, "--server", url)

    assert done.status == 2
    assert f"cannot connect to {url}" in done.stderr


async def test_logout_signs_out_and_forgets_credentials(cli: Cli) -> None:
    await cli.login("alice", ALICE)
    token = json.loads(cli.credentials("alice").read_text())["token"]

    await cli.ok("--profile", "alice", "logout")

    assert not cli.credentials("alice").exists()
    async with await Client.connect(cli.url) as client:
        with pytest.raises(ClientError) as caught:
            await client.resume(token)
    assert caught.value.code == "token_invalid"


async def test_profiles_keep_separate_identities(cli: Cli) -> None:
    alice = await cli.login("alice", ALICE)
    bob = await cli.login("bob", BOB)

    assert alice != bob
    assert (await cli.json("--profile", "alice", "whoami"))["user"]["user_id"] == alice
    assert (await cli.json("whoami", "--profile", "bob"))["user"]["user_id"] == bob


# -- messages -----------------------------------------------------------------


async def test_direct_message_reaches_peer_history_and_conversation_list(
    cli: Cli,
) -> None:
    alice = await cli.login("alice", ALICE)
    bob = await cli.login("bob", BOB)

    sent = await cli.ok("--profile", "alice", "send", f"@{bob}", "hello bob")
    assert "seq 1" in sent.stdout

    history = await cli.ok("--profile", "bob", "history", f"@{alice}")
    assert "hello bob" in history.stdout
    listing = await cli.ok("--profile", "bob", "convs")
    assert "hello bob" in listing.stdout
    assert "1 unread" in listing.stdout
    conversations = (await cli.json("--profile", "bob", "convs"))["conversations"]
    assert [(c["peer_id"], c["unread"]) for c in conversations] == [(alice, 1)]


async def test_send_to_conversation_id_and_history_limit(cli: Cli) -> None:
    await cli.login("alice", ALICE)
    bob = await cli.login("bob", BOB)
    first = await cli.json("--profile", "alice", "send", f"@{bob}", "one")
    conversation = f"#{first['conversation_id']}"

    for text in ("two", "three"):
        await cli.ok("--profile", "bob", "send", conversation, text)

    history = await cli.json(
        "--profile", "alice", "history", conversation, "--limit", "2"
    )
    assert [m["text"] for m in history["messages"]] == ["two", "three"]


async def test_send_to_foreign_conversation_reports_server_error(cli: Cli) -> None:
    await cli.login("alice", ALICE)

    done = await cli.run("--profile", "alice", "send", "#999", "hello?")

    assert done.status == 1
    assert done.stderr.startswith("error: not_found: ")


async def test_malformed_target_is_a_usage_error(cli: Cli) -> None:
    await cli.login("alice", ALICE)

    done = await cli.run("--profile", "alice", "send", "bob", "hello?")

    assert done.status == 2
    assert "@USER_ID or #CONVERSATION_ID" in done.stderr


# -- groups -------------------------------------------------------------------


async def test_group_create_add_members_remove_and_leave(cli: Cli) -> None:
    alice = await cli.login("alice", ALICE)
    bob = await cli.login("bob", BOB)
    carol = await cli.login("carol", CAROL)

    group = await cli.json("--profile", "alice", "group", "create", "team", f"@{bob}")
    conversation = str(group["conversation_id"])
    assert group["member_count"] == 2
    await cli.ok("--profile", "alice", "group", "add", conversation, str(carol))

    members = await cli.json("--profile", "bob", "group", "members", conversation)
    assert [(m["user_id"], m["role"]) for m in members["members"]] == [
        (alice, "owner"),
        (bob, "member"),
        (carol, "member"),
    ]
    shown = await cli.ok("--profile", "bob", "group", "members", conversation)
    assert "owner" in shown.stdout
    listing = await cli.ok("--profile", "carol", "convs")
    assert '"team"' in listing.stdout

    await cli.ok("--profile", "alice", "group", "remove", conversation, f"@{carol}")
    await cli.ok("--profile", "bob", "group", "leave", f"#{conversation}")
    history = await cli.ok("--profile", "alice", "history", f"#{conversation}")
    assert 'created the group "team"' in history.stdout
    assert f"added @{carol}" in history.stdout
    assert f"removed @{carol}" in history.stdout
    assert f"@{bob} left" in history.stdout
    left = await cli.run("--profile", "bob", "group", "members", conversation)
    assert left.status == 1
    assert left.stderr.startswith("error: not_member: ")


async def test_only_owner_adds_members(cli: Cli) -> None:
    await cli.login("alice", ALICE)
    bob = await cli.login("bob", BOB)
    carol = await cli.login("carol", CAROL)
    group = await cli.json("--profile", "alice", "group", "create", "team", str(bob))

    done = await cli.run(
        "--profile", "bob", "group", "add", str(group["conversation_id"]), str(carol)
    )

    assert done.status == 1
    assert done.stderr.startswith("error: forbidden: ")


# -- chat -----------------------------------------------------------------------


async def test_chat_shows_backlog_receives_pushes_and_sends_typed_lines(
    cli: Cli,
) -> None:
    alice = await cli.login("alice", ALICE)
    bob = await cli.login("bob", BOB)
    await cli.ok("--profile", "alice", "send", f"@{bob}", "before the chat")

    chat = await cli.start("--profile", "bob", "chat", f"@{alice}")
    assert "before the chat" in await read_until(chat.stdout, "before the chat")
    await read_until(chat.stderr, "chatting in")

    await cli.ok("--profile", "alice", "send", f"@{bob}", "ping from alice")
    assert "ping from alice" in await read_until(chat.stdout, "ping from alice")
    chat.stdin.write(b"pong from bob\n/quit\n")
    await chat.stdin.drain()
    assert await finish(chat) == 0

    history = await cli.json("--profile", "alice", "history", f"@{bob}")
    texts = [m["text"] for m in history["messages"]]
    assert texts == ["before the chat", "ping from alice", "pong from bob"]
    # What the chat showed counts as read.
    conversations = (await cli.json("--profile", "bob", "convs"))["conversations"]
    assert conversations[0]["unread"] == 0


async def test_chat_sends_every_line_before_end_of_input(cli: Cli) -> None:
    alice = await cli.login("alice", ALICE)
    bob = await cli.login("bob", BOB)

    chat = await cli.start("--profile", "alice", "chat", f"@{bob}")
    await read_until(chat.stderr, "chatting in")
    chat.stdin.write(b"first\n\nsecond\n")
    chat.stdin.close()
    assert await finish(chat) == 0

    history = await cli.json("--profile", "bob", "history", f"@{alice}")
    assert [m["text"] for m in history["messages"]] == ["first", "second"]


async def test_chat_in_group_prints_json_lines(cli: Cli) -> None:
    await cli.login("alice", ALICE)
    bob = await cli.login("bob", BOB)
    group = await cli.json("--profile", "alice", "group", "create", "team", str(bob))
    conversation = f"#{group['conversation_id']}"

    chat = await cli.start("--profile", "bob", "--json", "chat", conversation)
    await read_until(chat.stderr, "chatting in")
    await cli.ok("--profile", "alice", "send", conversation, "to the team")
    line = await read_until(chat.stdout, "to the team")
    chat.stdin.close()
    assert await finish(chat) == 0

    pushed = json.loads(line.splitlines()[-1])
    assert pushed["kind"] == "text"
    assert pushed["conversation_id"] == group["conversation_id"]
    created = json.loads(line.splitlines()[0])
    assert created["kind"] == "group.created"


async def test_chat_reconnects_after_server_restart_and_catches_up(
    cli: Cli, server: App, tmp_path: Path
) -> None:
    alice = await cli.login("alice", ALICE)
    bob = await cli.login("bob", BOB)
    chat = await cli.start("--profile", "bob", "chat", f"@{alice}")
    await read_until(chat.stderr, "chatting in")

    await server.stop()
    restarted = App(start_settings(tmp_path / "data", server.port))
    await restarted.start()
    try:
        # Sent in-process, within milliseconds of the restart: the chat's
        # first reconnect waits at least a quarter second, so it mostly
        # learns of this by syncing, not by a push.
        token = json.loads(cli.credentials("alice").read_text())["token"]
        async with await Client.connect(restarted.url) as client:
            await client.resume(token)
            conversation = await client.call("conv.direct", user_id=bob)
            await client.send_text(
                conversation["conversation_id"], "while you were away"
            )
        await read_until(chat.stderr, "reconnected")
        assert "while you were away" in await read_until(chat.stdout, "away")
        chat.stdin.write(b"back again\n")
        chat.stdin.close()
        assert await finish(chat) == 0
        history = await cli.json("--profile", "alice", "history", f"@{bob}")
        assert [m["text"] for m in history["messages"]] == [
            "while you were away",
            "back again",
        ]
    finally:
        await restarted.stop()
        # The fixture stops the first app again; stopping twice is harmless.


async def test_chat_ends_when_its_session_is_revoked(cli: Cli) -> None:
    alice = await cli.login("alice", ALICE)
    await cli.login("bob", BOB)
    await cli.login("bob-phone", BOB)
    chatting = await cli.json("--profile", "bob", "whoami")
    chat = await cli.start("--profile", "bob", "chat", f"@{alice}")
    await read_until(chat.stderr, "chatting in")

    await cli.ok(
        "--profile", "bob-phone", "devices", "revoke", str(chatting["session_id"])
    )

    # Reconnecting cannot bring a revoked session back: the chat says so.
    assert "revoked" in await read_until(chat.stderr, "revoked")
    assert await finish(chat) == 1


# -- devices and profile ----------------------------------------------------------


async def test_devices_list_and_revoke_another_device(cli: Cli) -> None:
    await cli.login("laptop", ALICE)
    await cli.login("phone", ALICE)
    phone = await cli.json("--profile", "phone", "whoami")

    devices = (await cli.json("--profile", "laptop", "devices"))["devices"]
    assert len(devices) == 2
    assert [d["current"] for d in devices] == [True, False]
    await cli.ok("--profile", "laptop", "devices", "revoke", str(phone["session_id"]))

    done = await cli.run("--profile", "phone", "convs")
    assert done.status == 1
    assert done.stderr.startswith("error: token_invalid: ")
    remaining = (await cli.json("--profile", "laptop", "devices"))["devices"]
    assert len(remaining) == 1


async def test_revoking_own_device_forgets_credentials(cli: Cli) -> None:
    await cli.login("alice", ALICE)
    own = await cli.json("--profile", "alice", "whoami")

    await cli.ok("--profile", "alice", "devices", "revoke", str(own["session_id"]))

    assert not cli.credentials("alice").exists()


async def test_profile_update_and_show(cli: Cli) -> None:
    alice = await cli.login("alice", ALICE)
    bob = await cli.login("bob", BOB)

    updated = await cli.json(
        "--profile", "alice", "profile", "--nickname", "Alice", "--handle", "alice_w"
    )
    assert (updated["nickname"], updated["handle"]) == ("Alice", "alice_w")
    seen = await cli.ok("--profile", "bob", "profile", "--user", f"@{alice}")
    assert "nickname: Alice" in seen.stdout
    assert ALICE not in seen.stdout  # a phone number is its owner's only
    taken = await cli.run("--profile", "bob", "profile", "--handle", "alice_w")
    assert taken.status == 1
    assert taken.stderr.startswith("error: handle_taken: ")
    await cli.ok("--profile", "alice", "send", f"@{bob}", "hi")
    history = await cli.ok("--profile", "bob", "history", f"@{alice}")
    assert "Alice (@" in history.stdout


# -- the timeline, without I/O -------------------------------------------------------


def message(seq: int) -> dict[str, Any]:
    return {"seq": seq}


def test_timeline_shows_consecutive_pushes_and_skips_repeats() -> None:
    timeline = Timeline(3)

    assert timeline.push(message(4)) is Push.SHOW
    assert timeline.push(message(4)) is Push.SKIP
    assert timeline.push(message(2)) is Push.SKIP
    assert timeline.seq == 4


def test_timeline_reports_gap_and_catch_up_fills_it() -> None:
    timeline = Timeline(3)

    assert timeline.push(message(6)) is Push.GAP
    fresh = timeline.catch_up([message(4), message(5), message(6)])

    assert [m["seq"] for m in fresh] == [4, 5, 6]
    assert timeline.seq == 6


def test_timeline_own_message_acked_ahead_waits_for_the_one_before() -> None:
    timeline = Timeline(3)

    timeline.sent(5)
    assert timeline.has_gap
    assert timeline.push(message(4)) is Push.SHOW
    assert timeline.seq == 5
    assert not timeline.has_gap
    assert timeline.push(message(5)) is Push.SKIP


def test_timeline_catch_up_does_not_repeat_own_messages() -> None:
    timeline = Timeline(1)
    timeline.sent(3)

    fresh = timeline.catch_up([message(2), message(3), message(4)])

    assert [m["seq"] for m in fresh] == [2, 4]
    assert not timeline.has_gap


def test_outbox_ignores_codes_from_before_the_mark(tmp_path: Path) -> None:
    path = tmp_path / "sms-outbox.jsonl"
    path.write_text(json.dumps({"phone": ALICE, "code": "111111", "at": 1.0}) + "\n")
    outbox = Outbox(path)
    outbox.mark()

    assert outbox.find_code(ALICE) is None
    with path.open("a") as file:
        file.write(json.dumps({"phone": BOB, "code": "222222", "at": 4e9}) + "\n")
        file.write(json.dumps({"phone": ALICE, "code": "333333", "at": 4e9}) + "\n")
        file.write('{"phone": "half a line')
    assert outbox.find_code(ALICE) == "333333"
