"""The ``nextstar`` command-line client.

Signs in by SMS code, keeps one credentials file per profile, and offers the
conversation, group, device and profile methods of protocol v1 as commands,
plus an interactive ``chat``. Server errors print ``error: <code>: <message>``
and exit 1; an unreachable server or a lost connection exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from websockets.exceptions import InvalidHandshake, InvalidURI

from ._chat import SESSION_REVOKED, ChatRoom, Timeline, read_lines
from ._credentials import Credentials, CredentialsError, delete_credentials
from ._outbox import Outbox
from ._render import (
    Names,
    conversation_line,
    conversation_title,
    device_line,
    message_line,
    message_users,
    profile_lines,
)
from .client import Client, ClientError, Disconnected

__all__ = ["main"]

logger = logging.getLogger(__name__)

SERVER_ENV = "NEXTSTAR_URL"
DEFAULT_SERVER = "ws://127.0.0.1:8080/ws"
OUTBOX_ENV = "NEXTSTAR_OUTBOX"
DEFAULT_OUTBOX = Path("nextstar-data") / "sms-outbox.jsonl"

# The server appends to its outbox before it answers auth.request_code, so
# a code written on this machine is there at once; the wait covers a slow
# disk, not a slow SMS.
OUTBOX_WAIT = 2.0
CHAT_BACKLOG = 20

EXIT_ERROR = 1
EXIT_UNREACHABLE = 2
EXIT_USAGE = 2  # as argparse exits for a bad command line
EXIT_INTERRUPTED = 130

Handler = Callable[["Context", argparse.Namespace], Awaitable[int]]


class CliError(Exception):
    """A failure reported in one line on stderr, with its exit status."""

    def __init__(self, message: str, status: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class TokenInvalid(CliError):
    """The stored token no longer opens a session."""


class Context:
    """What every command shares: options, credentials, open clients."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.profile: str = args.profile
        self.as_json: bool = args.json
        self.names = Names()
        self.session: dict[str, Any] = {}
        self._clients: list[Client] = []

    def server(self, stored: Credentials | None = None) -> str:
        """Return the URL to use: ``--server``, ``$NEXTSTAR_URL``, the server
        the profile signed in to, or the local default, in that order."""
        return (
            self.args.server
            or os.environ.get(SERVER_ENV)
            or (stored.server if stored is not None else None)
            or DEFAULT_SERVER
        )

    def credentials(self) -> Credentials:
        """Return the profile's credentials.

        Raises:
            CliError: the profile is not logged in.
        """
        stored = Credentials.load(self.profile)
        if stored is None:
            raise CliError(
                f"not logged in (profile {self.profile!r}): "
                "run 'nextstar login PHONE' first"
            )
        return stored

    async def connect(self, url: str) -> Client:
        """Open a connection that is not signed in yet.

        Raises:
            CliError: the server cannot be reached (exit status 2).
        """
        try:
            client = await Client.connect(url)
        except (OSError, InvalidURI, InvalidHandshake, TimeoutError) as exc:
            raise CliError(
                f"cannot connect to {url}: {_reason(exc)}", EXIT_UNREACHABLE
            ) from exc
        self._clients.append(client)
        return client

    async def signed_in(self) -> Client:
        """Connect and resume the profile's session.

        Raises:
            TokenInvalid: the session was revoked or signed out elsewhere.
        """
        stored = self.credentials()
        client = await self.connect(self.server(stored))
        try:
            self.session = await client.resume(stored.token)
        except ClientError as exc:
            if exc.code == "token_invalid":
                raise TokenInvalid(
                    f"{exc.code}: {exc.message}; "
                    "run 'nextstar login PHONE' to sign in again"
                ) from exc
            raise
        self.names.own_id = client.user_id
        return client

    async def close(self) -> None:
        for client in self._clients:
            await client.close()

    def emit(self, data: Any, lines: list[str]) -> None:
        """Print ``data`` as JSON with ``--json``, else the human ``lines``."""
        if self.as_json:
            print(json.dumps(data, indent=2, ensure_ascii=False))
        else:
            for line in lines:
                print(line)


def note(text: str) -> None:
    """Print a status line; stderr keeps stdout for the data itself."""
    print(text, file=sys.stderr, flush=True)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError) or getattr(exc, "errno", None) == (
        errno.ECONNREFUSED
    ):
        return "connection refused; is the server running?"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


# -- argument types ---------------------------------------------------------


def _positive_id(text: str, prefix: str, what: str) -> int:
    digits = text[1:] if text.startswith(prefix) else text
    if not digits.isdigit() or int(digits) < 1:
        raise argparse.ArgumentTypeError(f"not a {what}: {text!r}")
    return int(digits)


def user_arg(text: str) -> int:
    """Parse ``@12`` or ``12`` as a user id."""
    return _positive_id(text, "@", "user id (@ID)")


def conversation_arg(text: str) -> int:
    """Parse ``#7`` or ``7`` as a conversation id."""
    return _positive_id(text, "#", "conversation id (#ID)")


def target_arg(text: str) -> tuple[str, int]:
    """Parse a TARGET: ``@USER_ID`` (direct) or ``#CONVERSATION_ID``."""
    if text.startswith("@"):
        return "user", user_arg(text)
    try:
        return "conversation", conversation_arg(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"not a target: {text!r} (use @USER_ID or #CONVERSATION_ID)"
        ) from None


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive number: {text!r}")
    return int(text)


async def open_target(client: Client, target: tuple[str, int]) -> dict[str, Any]:
    """Return the conversation a TARGET names, opening a direct one."""
    kind, ident = target
    if kind == "user":
        return await client.call("conv.direct", user_id=ident)
    return await client.call("conv.get", conversation_id=ident)


async def target_id(client: Client, target: tuple[str, int]) -> int:
    """Return the conversation id of a TARGET, with no call for ``#ID``."""
    kind, ident = target
    if kind == "conversation":
        return ident
    return (await open_target(client, target))["conversation_id"]


# -- sign-in ----------------------------------------------------------------


async def cmd_login(ctx: Context, args: argparse.Namespace) -> int:
    try:
        stored = Credentials.load(ctx.profile)
    except CredentialsError:
        stored = None  # a broken file is about to be replaced
    url = ctx.server(stored)
    region = {"region": args.region} if args.region else {}

    # With --code the user holds a code already; asking for another would
    # replace it on the server (or hit the resend cooldown).
    phone, code = args.phone, args.code
    if code is None:
        outbox = Outbox(_outbox_path(args))
        outbox.mark()
        client = await ctx.connect(url)
        requested = await client.call("auth.request_code", phone=phone, **region)
        await client.close()
        phone = requested["phone"]
        code = await _read_code(outbox, phone)

    # A second connection: the first one's sign-in deadline may have passed
    # while the user typed the code.
    client = await ctx.connect(url)
    result = await client.call(
        "auth.sign_in", phone=phone, code=code, device_name=args.device, **region
    )
    user = result["user"]
    phone = user.get("phone", phone)
    stored = Credentials(url, result["token"], user["user_id"], phone)
    path = stored.save(ctx.profile)

    created = ", new account" if result.get("created") else ""
    ctx.emit(
        {
            "profile": ctx.profile,
            "server": url,
            "path": str(path),
            "session_id": result["session_id"],
            "created": result.get("created"),
            "user": user,
        },
        [
            f"logged in as @{stored.user_id} ({stored.phone}{created})",
            f"credentials saved to {path}",
        ],
    )
    return 0


def _outbox_path(args: argparse.Namespace) -> Path:
    if args.outbox is not None:
        return args.outbox
    return Path(os.environ.get(OUTBOX_ENV) or DEFAULT_OUTBOX)


async def _read_code(outbox: Outbox, phone: str) -> str:
    """Take the code from a local development outbox, else ask for it."""
    if outbox.exists():
        code = await outbox.wait_code(phone, OUTBOX_WAIT)
        if code is not None:
            note(
                f"read the sign-in code for {phone} from the development outbox "
                f"{outbox.path}"
            )
            return code
        note(f"no code for {phone} in {outbox.path}")
    # Nothing else runs while this blocks: no connection is open.
    sys.stderr.write(f"code sent to {phone}: ")
    sys.stderr.flush()
    line = sys.stdin.readline()
    if not line:
        sys.stderr.write("\n")  # end of input: end the prompt's line
    code = line.strip()
    if not code:
        raise CliError("no code given")
    return code


async def cmd_whoami(ctx: Context, args: argparse.Namespace) -> int:
    client = await ctx.signed_in()
    user = ctx.session["user"]
    url = ctx.server(ctx.credentials())
    ctx.emit(
        {
            "profile": ctx.profile,
            "server": url,
            "session_id": ctx.session["session_id"],
            "user": user,
        },
        [
            f"@{client.user_id} ({user.get('phone')}) on {url}",
            f"profile: {ctx.profile}, session {ctx.session['session_id']}",
            *profile_lines(user),
        ],
    )
    return 0


async def cmd_logout(ctx: Context, args: argparse.Namespace) -> int:
    try:
        client = await ctx.signed_in()
        try:
            await client.call("auth.sign_out")
        except Disconnected as exc:
            # Signing out closes the session with 4003; should the close
            # overtake the answer, it still says the sign-out happened.
            if exc.code != SESSION_REVOKED:
                raise
        message = f"logged out (profile {ctx.profile!r})"
    except TokenInvalid:
        message = f"the session had ended already; forgot profile {ctx.profile!r}"
    delete_credentials(ctx.profile)
    ctx.emit({"profile": ctx.profile, "logged_out": True}, [message])
    return 0


# -- messages -----------------------------------------------------------------


async def cmd_send(ctx: Context, args: argparse.Namespace) -> int:
    text = sys.stdin.read().rstrip("\n") if args.text == "-" else args.text
    client = await ctx.signed_in()
    conversation_id = await target_id(client, args.target)
    ack = await client.send_text(conversation_id, text)
    ctx.emit(ack, [f"sent to #{conversation_id} as seq {ack['seq']}"])
    return 0


async def cmd_history(ctx: Context, args: argparse.Namespace) -> int:
    client = await ctx.signed_in()
    conversation_id = await target_id(client, args.target)
    messages = await client.history_latest(conversation_id, args.limit)
    await ctx.names.resolve(client, set().union(*map(message_users, messages)))
    lines = [message_line(m, ctx.names) for m in messages] or ["(no messages)"]
    ctx.emit({"conversation_id": conversation_id, "messages": messages}, lines)
    return 0


async def cmd_convs(ctx: Context, args: argparse.Namespace) -> int:
    client = await ctx.signed_in()
    conversations = (await client.call("conv.list"))["conversations"]
    users: set[int] = set()
    for conversation in conversations:
        if conversation.get("peer_id"):
            users.add(conversation["peer_id"])
        if conversation.get("last_message"):
            users |= message_users(conversation["last_message"])
    await ctx.names.resolve(client, users)
    lines = [conversation_line(c, ctx.names) for c in conversations]
    ctx.emit({"conversations": conversations}, lines or ["no conversations yet"])
    return 0


async def cmd_chat(ctx: Context, args: argparse.Namespace) -> int:
    client = await ctx.signed_in()
    conversation = await open_target(client, args.target)
    conversation_id = conversation["conversation_id"]

    # Cursors for every conversation keep each catch-up's sync down to what
    # changed; only this conversation's messages are shown.
    listing = (await client.call("conv.list"))["conversations"]
    cursors = {c["conversation_id"]: c["last_seq"] for c in listing}
    backlog = await client.history_latest(conversation_id, CHAT_BACKLOG)
    shown = backlog[-1]["seq"] if backlog else conversation["last_seq"]
    cursors[conversation_id] = shown

    async def reconnect() -> Client:
        try:
            return await ctx.signed_in()
        except CliError as exc:
            if exc.status == EXIT_UNREACHABLE:
                raise ConnectionError(exc.message) from exc
            raise

    room = ChatRoom(
        reconnect,
        conversation_id,
        Timeline(shown),
        cursors,
        ctx.names,
        read_lines(asyncio.get_running_loop(), sys.stdin),
        as_json=ctx.as_json,
    )
    users = set().union(*map(message_users, backlog))
    if conversation.get("peer_id"):
        users.add(conversation["peer_id"])
    await ctx.names.resolve(client, users)
    for message in backlog:
        room.print_message(message)
    await room.mark_read(client)
    note(
        f"chatting in {conversation_title(conversation, ctx.names)} "
        f"(#{conversation_id}); type a message and press Enter, /quit to leave"
    )
    return await room.run(client)


# -- groups -------------------------------------------------------------------


async def cmd_group_create(ctx: Context, args: argparse.Namespace) -> int:
    client = await ctx.signed_in()
    group = await client.call(
        "group.create", title=args.title, member_ids=list(args.user_ids)
    )
    ctx.emit(
        group,
        [
            f"created group #{group['conversation_id']} "
            f'"{group["title"]}" with {group["member_count"]} members'
        ],
    )
    return 0


async def cmd_group_add(ctx: Context, args: argparse.Namespace) -> int:
    client = await ctx.signed_in()
    result = await client.call(
        "group.add", conversation_id=args.conversation, user_ids=list(args.user_ids)
    )
    await ctx.names.resolve(client, args.user_ids)
    added = ", ".join(ctx.names.label(u) for u in args.user_ids)
    ctx.emit(result, [f"added {added} to #{args.conversation} (seq {result['seq']})"])
    return 0


async def cmd_group_remove(ctx: Context, args: argparse.Namespace) -> int:
    client = await ctx.signed_in()
    result = await client.call(
        "group.remove", conversation_id=args.conversation, user_id=args.user_id
    )
    await ctx.names.resolve(client, [args.user_id])
    ctx.emit(
        result,
        [
            f"removed {ctx.names.label(args.user_id)} from "
            f"#{args.conversation} (seq {result['seq']})"
        ],
    )
    return 0


async def cmd_group_leave(ctx: Context, args: argparse.Namespace) -> int:
    client = await ctx.signed_in()
    result = await client.call("group.leave", conversation_id=args.conversation)
    ctx.emit(result, [f"left #{args.conversation} (seq {result['seq']})"])
    return 0


async def cmd_group_rename(ctx: Context, args: argparse.Namespace) -> int:
    client = await ctx.signed_in()
    result = await client.call(
        "group.rename", conversation_id=args.conversation, title=args.title
    )
    ctx.emit(
        result,
        [f'renamed #{args.conversation} to "{args.title}" (seq {result["seq"]})'],
    )
    return 0


async def cmd_group_members(ctx: Context, args: argparse.Namespace) -> int:
    client = await ctx.signed_in()
    members = (await client.call("group.members", conversation_id=args.conversation))[
        "members"
    ]
    await ctx.names.resolve(client, [m["user_id"] for m in members])
    lines = [f"{ctx.names.label(m['user_id']):<32} {m['role']}" for m in members]
    ctx.emit({"conversation_id": args.conversation, "members": members}, lines)
    return 0


# -- devices and profile ------------------------------------------------------


async def cmd_devices(ctx: Context, args: argparse.Namespace) -> int:
    client = await ctx.signed_in()
    devices = (await client.call("devices.list"))["devices"]
    ctx.emit({"devices": devices}, [device_line(d) for d in devices])
    return 0


async def cmd_devices_revoke(ctx: Context, args: argparse.Namespace) -> int:
    client = await ctx.signed_in()
    is_current = args.session_id == ctx.session.get("session_id")
    try:
        await client.call("devices.revoke", session_id=args.session_id)
    except Disconnected as exc:
        # Revoking this very session closes it with 4003, and the server may
        # close it before the answer is out; the close is the answer then.
        if not (is_current and exc.code == SESSION_REVOKED):
            raise
    lines = [f"revoked session {args.session_id}"]
    if is_current:
        # The stored token was this very session's: it opens nothing now.
        delete_credentials(ctx.profile)
        lines.append(f"that was this device; forgot profile {ctx.profile!r}")
    ctx.emit({"revoked": args.session_id}, lines)
    return 0


PROFILE_FIELDS = ("nickname", "handle", "avatar_url", "gender", "birthday", "region")


async def cmd_profile(ctx: Context, args: argparse.Namespace) -> int:
    changes = {
        f: getattr(args, f) for f in PROFILE_FIELDS if getattr(args, f) is not None
    }
    if changes and args.user is not None:
        raise CliError("--user shows another profile; it cannot change one", EXIT_USAGE)
    client = await ctx.signed_in()
    if changes:
        profile = await client.call("profile.update", **changes)
    elif args.user is not None:
        profile = await client.call("profile.get", user_id=args.user)
    else:
        profile = await client.call("profile.get")
    ctx.emit(profile, profile_lines(profile))
    return 0


# -- the parser -----------------------------------------------------------------


def _global_options(inherited: bool) -> argparse.ArgumentParser:
    """Options accepted before and after the command name.

    Under a command their defaults are suppressed, so that an option given
    before the command is not overwritten by the command's default.
    """

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if inherited else value

    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--server",
        metavar="URL",
        default=default(None),
        help=f"server URL (default: ${SERVER_ENV}, the profile's server, "
        f"or {DEFAULT_SERVER})",
    )
    options.add_argument(
        "--profile",
        metavar="NAME",
        default=default("default"),
        help="which stored identity to use (default: default)",
    )
    options.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print machine-readable JSON",
    )
    options.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default(False),
        help="log debug details to stderr",
    )
    return options


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of every ``nextstar`` command."""
    parser = argparse.ArgumentParser(
        prog="nextstar",
        description="Command-line client for NextStar RT.",
        parents=[_global_options(inherited=False)],
    )
    common = [_global_options(inherited=True)]
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        group: Any, name: str, handler: Handler, help_text: str
    ) -> argparse.ArgumentParser:
        sub = group.add_parser(
            name, parents=common, help=help_text, description=help_text
        )
        sub.set_defaults(handler=handler)
        return sub

    login = command(commands, "login", cmd_login, "sign in with an SMS code")
    login.add_argument("phone", metavar="PHONE", help="phone number, best in E.164")
    login.add_argument("--code", help="a code received already; skips asking for one")
    login.add_argument(
        "--device",
        default=_device_name(),
        help="device name shown in 'nextstar devices'",
    )
    login.add_argument(
        "--region", metavar="CC", help="ISO country code for a national number"
    )
    login.add_argument(
        "--outbox",
        type=Path,
        metavar="PATH",
        help=f"development SMS outbox (default: ${OUTBOX_ENV} or ./{DEFAULT_OUTBOX})",
    )
    command(commands, "whoami", cmd_whoami, "show who this profile is signed in as")
    command(commands, "logout", cmd_logout, "sign out and forget the credentials")

    send = command(commands, "send", cmd_send, "send one text message")
    send.add_argument(
        "target",
        type=target_arg,
        metavar="TARGET",
        help="@USER_ID or #CONVERSATION_ID (quote '#' in a shell)",
    )
    send.add_argument("text", metavar="TEXT", help="the message; - reads stdin")
    chat = command(commands, "chat", cmd_chat, "chat interactively")
    chat.add_argument("target", type=target_arg, metavar="TARGET")
    command(commands, "convs", cmd_convs, "list conversations")
    history = command(commands, "history", cmd_history, "show recent messages")
    history.add_argument("target", type=target_arg, metavar="TARGET")
    history.add_argument(
        "--limit",
        type=positive_int,
        default=20,
        metavar="N",
        help="how many messages (default: 20)",
    )

    _add_group_commands(commands, command)
    devices = command(commands, "devices", cmd_devices, "list signed-in devices")
    device_commands = devices.add_subparsers(dest="devices_command", metavar="ACTION")
    revoke = command(device_commands, "revoke", cmd_devices_revoke, "sign a device out")
    revoke.add_argument("session_id", type=positive_int, metavar="SESSION_ID")

    profile = command(commands, "profile", cmd_profile, "show or update a profile")
    profile.add_argument(
        "--user",
        type=user_arg,
        metavar="USER_ID",
        help="show this user's profile instead",
    )
    profile.add_argument("--nickname")
    profile.add_argument(
        "--handle", help="NEXTSTAR ID: a letter, then 5-19 of letters, digits, _"
    )
    profile.add_argument("--avatar-url", dest="avatar_url", metavar="URL")
    profile.add_argument("--gender", choices=("female", "male", "other", "unspecified"))
    profile.add_argument("--birthday", metavar="YYYY-MM-DD")
    profile.add_argument("--region")
    return parser


def _add_group_commands(commands: Any, command: Callable[..., Any]) -> None:
    group = commands.add_parser(
        "group", help="create and manage groups", description="create and manage groups"
    )
    actions = group.add_subparsers(
        dest="group_command", required=True, metavar="ACTION"
    )
    create = command(actions, "create", cmd_group_create, "create a group")
    create.add_argument("title", metavar="TITLE")
    create.add_argument("user_ids", type=user_arg, nargs="*", metavar="USER_ID")
    add = command(actions, "add", cmd_group_add, "add members (owner only)")
    add.add_argument("conversation", type=conversation_arg, metavar="CONV")
    add.add_argument("user_ids", type=user_arg, nargs="+", metavar="USER_ID")
    remove = command(
        actions, "remove", cmd_group_remove, "remove a member (owner only)"
    )
    remove.add_argument("conversation", type=conversation_arg, metavar="CONV")
    remove.add_argument("user_id", type=user_arg, metavar="USER_ID")
    leave = command(actions, "leave", cmd_group_leave, "leave a group")
    leave.add_argument("conversation", type=conversation_arg, metavar="CONV")
    rename = command(actions, "rename", cmd_group_rename, "rename a group")
    rename.add_argument("conversation", type=conversation_arg, metavar="CONV")
    rename.add_argument("title", metavar="TITLE")
    members = command(actions, "members", cmd_group_members, "list members")
    members.add_argument("conversation", type=conversation_arg, metavar="CONV")


def _device_name() -> str:
    return f"nextstar CLI on {socket.gethostname()}"[:64]


# -- running ------------------------------------------------------------------


async def _run(args: argparse.Namespace) -> int:
    ctx = Context(args)
    try:
        return await args.handler(ctx, args)
    except ClientError as exc:
        retry = exc.details.get("retry_after")
        hint = f" (retry in {retry} s)" if retry is not None else ""
        note(f"error: {exc.code}: {exc.message}{hint}")
        return EXIT_ERROR
    except Disconnected as exc:
        note(f"error: connection lost: {exc.reason or exc.code or 'closed'}")
        return EXIT_UNREACHABLE
    except CliError as exc:
        note(f"error: {exc.message}")
        return exc.status
    except CredentialsError as exc:
        note(f"error: {exc}")
        return EXIT_ERROR
    finally:
        await ctx.close()


def main(argv: list[str] | None = None) -> int:
    """Run one ``nextstar`` command; return its exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
