"""Turn protocol results into lines for a terminal.

Rendering is pure: it reads user labels from a :class:`Names` that was filled
beforehand, so one listing costs one profile lookup per distinct user rather
than one per line.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from .client import Client, ClientError

__all__ = [
    "Names",
    "conversation_line",
    "device_line",
    "message_line",
    "message_users",
    "profile_lines",
]

SYSTEM_MARK = "*"


class Names:
    """Labels for user ids: ``alice (@2)``, ``@2`` without a nickname, ``you``.

    Args:
        own_id: The signed-in user, labelled ``you``.
    """

    def __init__(self, own_id: int | None = None) -> None:
        self.own_id = own_id
        self._nicknames: dict[int, str | None] = {}

    async def resolve(self, client: Client, user_ids: Iterable[int]) -> None:
        """Look up the nicknames of the users not known yet."""
        for user_id in set(user_ids) - set(self._nicknames) - {self.own_id}:
            try:
                profile = await client.call("profile.get", user_id=user_id)
            except ClientError:
                # A label is a nicety: an unknown user still shows as @id.
                profile = {}
            if profile.get("deleted"):
                self._nicknames[user_id] = "deleted user"
            else:
                self._nicknames[user_id] = profile.get("nickname")

    def label(self, user_id: int | None) -> str:
        if user_id is None:
            return "nobody"
        if user_id == self.own_id:
            return "you"
        nickname = self._nicknames.get(user_id)
        return f"{nickname} (@{user_id})" if nickname else f"@{user_id}"


def format_time(created_at_ms: int, now: float | None = None) -> str:
    """Return ``HH:MM`` for today, else the date too, in local time."""
    moment = time.localtime(created_at_ms / 1000)
    today = time.localtime(time.time() if now is None else now)
    if moment[:3] == today[:3]:
        return time.strftime("%H:%M", moment)
    return time.strftime("%Y-%m-%d %H:%M", moment)


def message_users(message: dict[str, Any]) -> set[int]:
    """Return every user a message names: its sender and any it is about."""
    data = message.get("data") or {}
    users = {message["sender_id"]}
    if message["kind"] == "group.created" or message["kind"] == "member.added":
        users.update(data.get("member_ids") or data.get("user_ids") or ())
    for key in ("user_id", "new_owner_id"):
        if isinstance(data.get(key), int):
            users.add(data[key])
    return users


def message_body(message: dict[str, Any], names: Names) -> str:
    """Return what a message says, without its seq and time."""
    kind = message["kind"]
    sender = names.label(message["sender_id"])
    data = message.get("data") or {}
    if kind == "text":
        text = "(recalled)" if message.get("recalled") else message["text"]
        return f"{sender}: {text}"
    if kind == "data":
        if message.get("recalled"):
            return f"{sender}: (recalled)"
        body = json.dumps(data.get("body"), ensure_ascii=False, separators=(",", ":"))
        return f"{sender} sent {data.get('type')}: {body}"
    return f"{SYSTEM_MARK} {_system_body(kind, sender, data, message, names)}"


def _system_body(
    kind: str, sender: str, data: dict[str, Any], message: dict[str, Any], names: Names
) -> str:
    if kind == "recall":
        return f"{sender} recalled message {message.get('target_seq')}"
    if kind == "group.created":
        others = [u for u in data.get("member_ids", ()) if u != message["sender_id"]]
        with_whom = f" with {_labels(others, names)}" if others else ""
        return f'{sender} created the group "{data.get("title")}"{with_whom}'
    if kind == "member.added":
        return f"{sender} added {_labels(data.get('user_ids', ()), names)}"
    if kind == "member.removed":
        return f"{sender} removed {names.label(data.get('user_id'))}"
    if kind == "member.left":
        heir = data.get("new_owner_id")
        handover = f"; {names.label(heir)} now owns the group" if heir else ""
        return f"{sender} left{handover}"
    if kind == "group.renamed":
        return f'{sender} renamed the group to "{data.get("title")}"'
    return f"{sender}: {kind}"


def _labels(user_ids: Iterable[int], names: Names) -> str:
    return ", ".join(names.label(user_id) for user_id in user_ids)


def message_line(message: dict[str, Any], names: Names) -> str:
    """Return ``[seq] time body``, the one-line form of a message."""
    when = format_time(message["created_at"])
    return f"[{message['seq']}] {when} {message_body(message, names)}"


def conversation_title(conversation: dict[str, Any], names: Names) -> str:
    if conversation["kind"] == "direct":
        return names.label(conversation.get("peer_id"))
    return f'"{conversation["title"]}" ({conversation["member_count"]} members)'


def conversation_line(conversation: dict[str, Any], names: Names) -> str:
    """Return ``#id  title  unread  last message`` for the conversation list."""
    ident = f"#{conversation['conversation_id']}"
    title = conversation_title(conversation, names)
    unread = conversation["unread"]
    unread_text = f"{unread} unread" if unread else ""
    last = conversation.get("last_message")
    summary = message_body(last, names) if last else "(no messages)"
    if len(summary) > 60:
        summary = summary[:59] + "…"
    return f"{ident:<6} {title:<32} {unread_text:<10} {summary}"


def profile_lines(profile: dict[str, Any]) -> list[str]:
    """Return ``key: value`` lines for the fields that are set."""
    if profile.get("deleted"):
        return [f"user_id: {profile['user_id']}", "deleted: yes"]
    lines = []
    for key in (
        "user_id",
        "phone",
        "nickname",
        "handle",
        "gender",
        "birthday",
        "region",
        "avatar_url",
        "verification",
    ):
        value = profile.get(key)
        if value is not None:
            lines.append(f"{key}: {value}")
    return lines


def device_line(device: dict[str, Any]) -> str:
    current = "  (this device)" if device.get("current") else ""
    return (
        f"{device['session_id']:>6}  {device['device_name']:<32} "
        f"signed in {format_time(device['created_at'])}, "
        f"last seen {format_time(device['last_seen_at'])}{current}"
    )
