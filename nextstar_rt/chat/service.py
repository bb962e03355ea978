"""Conversations, groups, history, sync, receipts and recall.

Every change to a conversation is a message with the next ``seq``: a text, a
structured payload, or a system message (``group.created``, ``member.added``,
``member.removed``, ``member.left``, ``group.renamed``, ``recall``). So a
client that catches up by cursor learns of renames, membership changes and
recalls the same way it learns of new messages, in one order.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa

from ..config import ChatSettings
from ..store.database import Database, now_ms
from ..store.schema import conversations, direct_pair, members, messages, users
from ..wire.errors import ErrorCode, Forbidden, InvalidParams, NextstarError, NotFound
from .fanout import Fanout

__all__ = ["ChatService", "message_view"]

logger = logging.getLogger(__name__)

USER_KINDS = ("text", "data")


def message_view(row: Any) -> dict[str, Any]:
    """Return the wire form of a stored message row."""
    view: dict[str, Any] = {
        "conversation_id": row.conversation_id,
        "seq": row.seq,
        "sender_id": row.sender_id,
        "kind": row.kind,
        "created_at": row.created_at,
    }
    if row.recalled_at is not None:
        view["recalled"] = True
    elif row.text is not None:
        view["text"] = row.text
    if row.data is not None and row.recalled_at is None:
        view["data"] = row.data
    if row.client_msg_id is not None:
        view["client_msg_id"] = row.client_msg_id
    if row.target_seq is not None:
        view["target_seq"] = row.target_seq
    return view


def _not_member() -> NextstarError:
    return NextstarError.with_code(
        ErrorCode.NOT_MEMBER, "not a member of this conversation"
    )


class ChatService:
    """Everything about conversations except the hot send path."""

    def __init__(
        self, database: Database, fanout: Fanout, settings: ChatSettings
    ) -> None:
        self._database = database
        self._fanout = fanout
        self._settings = settings

    # -- conversations -----------------------------------------------------

    async def direct(self, user_id: int, peer_id: int) -> dict[str, Any]:
        """Return the one direct conversation of two users, creating it."""
        if peer_id == user_id:
            raise InvalidParams("user_id: cannot open a conversation with yourself")
        low, high = sorted((user_id, peer_id))
        key = f"{low}:{high}"
        now = now_ms()
        try:
            async with self._database.write() as connection:
                await _require_user(connection, peer_id)
                found = await _conversation_by_key(connection, key)
                if found is None:
                    await _create_conversation(
                        connection,
                        [(low, "member"), (high, "member")],
                        now,
                        kind="direct",
                        direct_key=key,
                    )
        except sa.exc.IntegrityError:
            pass  # created concurrently by the peer; read it below
        async with self._database.read() as connection:
            found = await _conversation_by_key(connection, key)
            return await self._view(connection, user_id, found.id)

    async def get(self, user_id: int, conversation_id: int) -> dict[str, Any]:
        async with self._database.read() as connection:
            await _membership(connection, conversation_id, user_id)
            return await self._view(connection, user_id, conversation_id)

    async def list(self, user_id: int) -> list[dict[str, Any]]:
        """Return the user's conversations, most recently active first."""
        query = _listing(user_id).order_by(
            conversations.c.updated_at.desc(), conversations.c.id
        )
        async with self._database.read() as connection:
            rows = (await connection.execute(query)).all()
        return [_listed_view(row) for row in rows]

    async def _view(
        self, connection: Any, user_id: int, conversation_id: int
    ) -> dict[str, Any]:
        """Return one conversation as ``user_id``, a member, sees it."""
        query = _listing(user_id).where(conversations.c.id == conversation_id)
        return _listed_view((await connection.execute(query)).one())

    # -- groups ------------------------------------------------------------

    async def create_group(
        self, owner_id: int, title: str, member_ids: list[int]
    ) -> dict[str, Any]:
        """Create a group owned by ``owner_id`` with the given members."""
        invited = sorted(set(member_ids) - {owner_id})
        if len(invited) + 1 > self._settings.group_max_members:
            raise _too_many(self._settings.group_max_members)
        now = now_ms()
        async with self._database.write() as connection:
            await _require_users(connection, invited)
            conversation_id = await _create_conversation(
                connection,
                [(owner_id, "owner")] + [(user, "member") for user in invited],
                now,
                kind="group",
                title=title,
                owner_id=owner_id,
            )
            event = await _append_system(
                connection,
                conversation_id,
                owner_id,
                "group.created",
                {"title": title, "member_ids": [owner_id, *invited]},
            )
            view = await self._view(connection, owner_id, conversation_id)
        for user in (owner_id, *invited):
            self._fanout.control(
                user, "join", conversation_id=conversation_id, event=event
            )
        logger.debug("group created: conversation=%d", conversation_id)
        return view

    async def rename(self, user_id: int, conversation_id: int, title: str) -> int:
        async with self._database.write() as connection:
            await _group_member(connection, conversation_id, user_id)
            await connection.execute(
                conversations.update()
                .where(conversations.c.id == conversation_id)
                .values(title=title)
            )
            event = await _append_system(
                connection, conversation_id, user_id, "group.renamed", {"title": title}
            )
        self._publish_group(event)
        return event["seq"]

    async def add_members(
        self, user_id: int, conversation_id: int, user_ids: list[int]
    ) -> int:
        """Add users to a group; only its owner may."""
        async with self._database.write() as connection:
            group = await _group_member(connection, conversation_id, user_id)
            if group.owner_id != user_id:
                raise Forbidden("only the group owner adds members")
            present = set(
                (
                    await connection.execute(
                        sa.select(members.c.user_id).where(
                            members.c.conversation_id == conversation_id
                        )
                    )
                ).scalars()
            )
            new = sorted(set(user_ids) - present)
            if not new:
                raise InvalidParams("user_ids: all are members already")
            if len(present) + len(new) > self._settings.group_max_members:
                raise _too_many(self._settings.group_max_members)
            await _require_users(connection, new)
            event = await _append_system(
                connection, conversation_id, user_id, "member.added", {"user_ids": new}
            )
            now = now_ms()
            await connection.execute(
                members.insert(),
                [
                    {
                        "conversation_id": conversation_id,
                        "user_id": u,
                        "joined_seq": event["seq"] - 1,
                        "joined_at": now,
                    }
                    for u in new
                ],
            )
        # Added users hear of it on their own channel, with the order to join;
        # skipping them on the group channel keeps them from hearing it twice.
        self._publish_group(event, skip_users=new)
        for added in new:
            self._fanout.control(
                added, "join", conversation_id=conversation_id, event=event
            )
        return event["seq"]

    async def remove_member(
        self, user_id: int, conversation_id: int, removed_id: int
    ) -> int:
        """Remove a member; only the owner may, and not themselves."""
        async with self._database.write() as connection:
            group = await _group_member(connection, conversation_id, user_id)
            if group.owner_id != user_id:
                raise Forbidden("only the group owner removes members")
            if removed_id == user_id:
                raise InvalidParams("user_id: the owner leaves, not removes, themself")
            if not await _is_member(connection, conversation_id, removed_id):
                raise NotFound("that user is not a member of this group")
            event = await _append_system(
                connection,
                conversation_id,
                user_id,
                "member.removed",
                {"user_id": removed_id},
            )
            await _delete_member(connection, conversation_id, removed_id)
        self._part(event, removed_id)
        return event["seq"]

    async def leave(self, user_id: int, conversation_id: int) -> int:
        """Leave a group; an owner hands the group to the longest member."""
        async with self._database.write() as connection:
            group = await _group_member(connection, conversation_id, user_id)
            await _delete_member(connection, conversation_id, user_id)
            heir = None
            if group.owner_id == user_id:
                heir = (
                    await connection.execute(
                        sa.select(members.c.user_id)
                        .where(members.c.conversation_id == conversation_id)
                        .order_by(members.c.joined_at, members.c.user_id)
                        .limit(1)
                    )
                ).scalar()
                await connection.execute(
                    conversations.update()
                    .where(conversations.c.id == conversation_id)
                    .values(owner_id=heir)
                )
                if heir is not None:
                    await connection.execute(
                        members.update()
                        .where(
                            members.c.conversation_id == conversation_id,
                            members.c.user_id == heir,
                        )
                        .values(role="owner")
                    )
            event = await _append_system(
                connection,
                conversation_id,
                user_id,
                "member.left",
                {"user_id": user_id, "new_owner_id": heir},
            )
        self._part(event, user_id)
        return event["seq"]

    async def group_members(
        self, user_id: int, conversation_id: int
    ) -> list[dict[str, Any]]:
        async with self._database.read() as connection:
            await _membership(connection, conversation_id, user_id)
            rows = await connection.execute(
                sa.select(members.c.user_id, members.c.role, members.c.read_seq)
                .where(members.c.conversation_id == conversation_id)
                .order_by(members.c.joined_at, members.c.user_id)
            )
            return [
                {"user_id": r.user_id, "role": r.role, "read_seq": r.read_seq}
                for r in rows
            ]

    async def share_conversation(self, user_id: int, other_id: int) -> bool:
        """Tell whether the two users are members of any one conversation."""
        mine = members.alias("mine")
        theirs = members.alias("theirs")
        async with self._database.read() as connection:
            row = (
                await connection.execute(
                    sa.select(mine.c.conversation_id)
                    .join(theirs, theirs.c.conversation_id == mine.c.conversation_id)
                    .where(mine.c.user_id == user_id, theirs.c.user_id == other_id)
                    .limit(1)
                )
            ).first()
        return row is not None

    async def group_ids(self, user_id: int) -> list[int]:
        """Return the groups the user belongs to, for channel subscriptions."""
        async with self._database.read() as connection:
            rows = await connection.execute(
                sa.select(members.c.conversation_id)
                .join(conversations, conversations.c.id == members.c.conversation_id)
                .where(members.c.user_id == user_id, conversations.c.kind == "group")
            )
            return list(rows.scalars())

    def _publish_group(
        self, event: dict[str, Any], skip_users: list[int] | None = None
    ) -> None:
        self._fanout.to_conversation(
            "message.new",
            event,
            "group",
            event["conversation_id"],
            skip_users=skip_users or (),
        )

    def _part(self, event: dict[str, Any], parted_id: int) -> None:
        # The parting user hears the event on their own channel, together with
        # the order to drop the conversation's subscription; the remaining
        # members hear it on the group channel.
        self._fanout.to_conversation(
            "message.new",
            event,
            "group",
            event["conversation_id"],
            skip_users=[parted_id],
        )
        self._fanout.control(
            parted_id, "leave", conversation_id=event["conversation_id"], event=event
        )

    # -- history, sync, receipts, recall ------------------------------------

    async def history(
        self, user_id: int, conversation_id: int, before_seq: int | None, limit: int
    ) -> dict[str, Any]:
        """Return up to ``limit`` messages before ``before_seq``, oldest first."""
        async with self._database.read() as connection:
            member = await _membership(connection, conversation_id, user_id)
            query = sa.select(messages).where(
                messages.c.conversation_id == conversation_id,
                messages.c.seq > member.joined_seq,
            )
            if before_seq is not None:
                query = query.where(messages.c.seq < before_seq)
            rows = (
                await connection.execute(
                    query.order_by(messages.c.seq.desc()).limit(limit + 1)
                )
            ).all()
        has_more = len(rows) > limit
        page = [message_view(row) for row in reversed(rows[:limit])]
        return {"messages": page, "has_more": has_more}

    async def sync(
        self, user_id: int, cursors: dict[int, int], limit: int
    ) -> dict[str, Any]:
        """Return what changed since ``cursors`` (conversation id to last seq
        seen) in every conversation of the user, up to ``limit`` messages each.
        """
        async with self._database.read() as connection:
            query = _listing(user_id).order_by(conversations.c.id)
            rows = (await connection.execute(query)).all()
            changed = []
            for row in rows:
                since = max(cursors.get(row.id, 0), row.joined_seq)
                if row.last_seq <= since and row.id in cursors:
                    continue
                page = (
                    await connection.execute(
                        sa.select(messages)
                        .where(
                            messages.c.conversation_id == row.id, messages.c.seq > since
                        )
                        .order_by(messages.c.seq)
                        .limit(limit + 1)
                    )
                ).all()
                entry = _listed_view(row)
                entry["messages"] = [message_view(m) for m in page[:limit]]
                entry["has_more"] = len(page) > limit
                changed.append(entry)
        member_of = {row.id for row in rows}
        removed = sorted(set(cursors) - member_of)
        return {"conversations": changed, "removed": removed}

    async def mark_read(
        self, user_id: int, conversation_id: int, seq: int
    ) -> dict[str, Any]:
        """Move the user's read cursor forward to ``seq`` and tell the others."""
        async with self._database.write() as connection:
            await _membership(connection, conversation_id, user_id)
            row = await _conversation(connection, conversation_id)
            target = min(seq, row.last_seq)
            await connection.execute(
                members.update()
                .where(
                    members.c.conversation_id == conversation_id,
                    members.c.user_id == user_id,
                    members.c.read_seq < target,
                )
                .values(read_seq=target)
            )
            read_seq = (
                await connection.execute(
                    sa.select(members.c.read_seq).where(
                        members.c.conversation_id == conversation_id,
                        members.c.user_id == user_id,
                    )
                )
            ).scalar_one()
        receipt = {
            "conversation_id": conversation_id,
            "user_id": user_id,
            "read_seq": read_seq,
        }
        self._fanout.to_conversation(
            "conversation.read",
            receipt,
            row.kind,
            conversation_id,
            direct_pair(row.direct_key),
        )
        return {"read_seq": read_seq}

    async def recall(
        self, user_id: int, conversation_id: int, seq: int
    ) -> dict[str, Any]:
        """Recall one's own message within the window; a tombstone follows.

        Raises:
            NextstarError: ``not_member``, ``not_found``, ``not_sender`` or
                ``recall_window_passed``.
        """
        now = now_ms()
        async with self._database.write() as connection:
            await _membership(connection, conversation_id, user_id)
            target = (
                await connection.execute(
                    sa.select(messages).where(
                        messages.c.conversation_id == conversation_id,
                        messages.c.seq == seq,
                    )
                )
            ).first()
            if target is None or target.kind not in USER_KINDS:
                raise NotFound("no such message")
            if target.sender_id != user_id:
                raise Forbidden.with_code(
                    ErrorCode.NOT_SENDER, "only the sender recalls a message"
                )
            if target.recalled_at is not None:
                raise NotFound("message already recalled")
            if now - target.created_at > self._settings.recall_window * 1000:
                raise Forbidden.with_code(
                    ErrorCode.RECALL_WINDOW_PASSED,
                    f"messages can be recalled for {self._settings.recall_window:g} s",
                )
            await connection.execute(
                messages.update()
                .where(
                    messages.c.conversation_id == conversation_id, messages.c.seq == seq
                )
                .values(recalled_at=now, text=None, data=None)
            )
            event = await _append_system(
                connection, conversation_id, user_id, "recall", None, target_seq=seq
            )
            row = await _conversation(connection, conversation_id)
        self._fanout.to_conversation(
            "message.new",
            event,
            row.kind,
            conversation_id,
            direct_pair(row.direct_key),
        )
        return {"seq": event["seq"]}


# -- helpers ---------------------------------------------------------------

_other = members.alias("other")
_last = messages.alias("last")
_LAST_COLUMNS = (
    "seq",
    "sender_id",
    "kind",
    "text",
    "data",
    "client_msg_id",
    "target_seq",
    "created_at",
    "recalled_at",
)


def _listing(user_id: int) -> sa.Select[Any]:
    """The user's conversations with everything their views need, in one query:
    the own member row, the member count, the peer of a direct conversation and
    the newest message, so a list of N conversations costs one round trip."""

    def about_other(column: sa.ColumnElement[Any]) -> sa.ScalarSelect[Any]:
        return (
            sa.select(column)
            .where(
                _other.c.conversation_id == conversations.c.id,
                _other.c.user_id != user_id,
            )
            .limit(1)
            .scalar_subquery()
        )

    member_count = (
        sa.select(sa.func.count())
        .select_from(_other)
        .where(_other.c.conversation_id == conversations.c.id)
        .scalar_subquery()
    )
    return (
        sa.select(
            conversations,
            members.c.read_seq.label("own_read_seq"),
            members.c.joined_seq,
            member_count.label("member_count"),
            about_other(_other.c.user_id).label("peer_id"),
            about_other(_other.c.read_seq).label("peer_read_seq"),
            *(_last.c[name].label(f"lm_{name}") for name in _LAST_COLUMNS),
        )
        .join(members, members.c.conversation_id == conversations.c.id)
        .outerjoin(
            _last,
            sa.and_(
                _last.c.conversation_id == conversations.c.id,
                _last.c.seq == conversations.c.last_seq,
                _last.c.seq > members.c.joined_seq,
            ),
        )
        .where(members.c.user_id == user_id)
    )


def _listed_view(row: Any) -> dict[str, Any]:
    """Return the wire form of a conversation from a :func:`_listing` row."""
    read_seq = row.own_read_seq
    view: dict[str, Any] = {
        "conversation_id": row.id,
        "kind": row.kind,
        "title": row.title,
        "last_seq": row.last_seq,
        "read_seq": read_seq,
        "unread": max(0, row.last_seq - max(read_seq, row.joined_seq)),
        "member_count": row.member_count,
        "updated_at": row.updated_at,
        "last_message": None,
    }
    if row.kind == "direct":
        view["peer_id"] = row.peer_id
        view["peer_read_seq"] = row.peer_read_seq or 0
    else:
        view["owner_id"] = row.owner_id
    if row.lm_kind is not None:
        last = SimpleNamespace(
            conversation_id=row.id,
            **{name: getattr(row, f"lm_{name}") for name in _LAST_COLUMNS},
        )
        view["last_message"] = message_view(last)
    return view


async def _append_system(
    connection: Any,
    conversation_id: int,
    sender_id: int,
    kind: str,
    data: dict[str, Any] | None,
    *,
    target_seq: int | None = None,
) -> dict[str, Any]:
    """Append a system message; the UPDATE locks the conversation row, the
    same lock the batch writer takes, so ``seq`` stays gap-free."""
    now = now_ms()
    seq = (
        await connection.execute(
            conversations.update()
            .where(conversations.c.id == conversation_id)
            .values(last_seq=conversations.c.last_seq + 1, updated_at=now)
            .returning(conversations.c.last_seq)
        )
    ).scalar_one()
    await connection.execute(
        messages.insert().values(
            conversation_id=conversation_id,
            seq=seq,
            sender_id=sender_id,
            kind=kind,
            data=data,
            target_seq=target_seq,
            created_at=now,
        )
    )
    # The actor has seen their own change, as a sender has their own message.
    await connection.execute(
        members.update()
        .where(
            members.c.conversation_id == conversation_id,
            members.c.user_id == sender_id,
            members.c.read_seq < seq,
        )
        .values(read_seq=seq)
    )
    event: dict[str, Any] = {
        "conversation_id": conversation_id,
        "seq": seq,
        "sender_id": sender_id,
        "kind": kind,
        "created_at": now,
    }
    if data is not None:
        event["data"] = data
    if target_seq is not None:
        event["target_seq"] = target_seq
    return event


async def _create_conversation(
    connection: Any, roles: list[tuple[int, str]], now: int, **values: Any
) -> int:
    """Insert a conversation with its members (user id, role); return its id."""
    conversation_id = (
        await connection.execute(
            conversations.insert()
            .values(created_at=now, updated_at=now, **values)
            .returning(conversations.c.id)
        )
    ).scalar_one()
    await connection.execute(
        members.insert(),
        [
            {
                "conversation_id": conversation_id,
                "user_id": user,
                "role": role,
                "joined_at": now,
            }
            for user, role in roles
        ],
    )
    return conversation_id


async def _conversation(connection: Any, conversation_id: int) -> Any:
    row = (
        await connection.execute(
            sa.select(conversations).where(conversations.c.id == conversation_id)
        )
    ).first()
    if row is None:
        raise NotFound("no such conversation")
    return row


async def _conversation_by_key(connection: Any, key: str) -> Any:
    return (
        await connection.execute(
            sa.select(conversations).where(conversations.c.direct_key == key)
        )
    ).first()


async def _membership(connection: Any, conversation_id: int, user_id: int) -> Any:
    row = (
        await connection.execute(
            sa.select(members).where(
                members.c.conversation_id == conversation_id,
                members.c.user_id == user_id,
            )
        )
    ).first()
    if row is None:
        exists = (
            await connection.execute(
                sa.select(conversations.c.id).where(
                    conversations.c.id == conversation_id
                )
            )
        ).first()
        raise _not_member() if exists else NotFound("no such conversation")
    return row


async def _is_member(connection: Any, conversation_id: int, user_id: int) -> bool:
    row = (
        await connection.execute(
            sa.select(members.c.user_id).where(
                members.c.conversation_id == conversation_id,
                members.c.user_id == user_id,
            )
        )
    ).first()
    return row is not None


async def _group_member(connection: Any, conversation_id: int, user_id: int) -> Any:
    await _membership(connection, conversation_id, user_id)
    row = await _conversation(connection, conversation_id)
    if row.kind != "group":
        raise InvalidParams("conversation_id: not a group")
    return row


async def _delete_member(connection: Any, conversation_id: int, user_id: int) -> None:
    await connection.execute(
        sa.delete(members).where(
            members.c.conversation_id == conversation_id, members.c.user_id == user_id
        )
    )


async def _require_user(connection: Any, user_id: int) -> None:
    await _require_users(connection, [user_id])


async def _require_users(connection: Any, user_ids: list[int]) -> None:
    if not user_ids:
        return
    found = set(
        (
            await connection.execute(
                sa.select(users.c.id).where(
                    users.c.id.in_(user_ids), users.c.deleted_at.is_(None)
                )
            )
        ).scalars()
    )
    missing = sorted(set(user_ids) - found)
    if missing:
        raise NotFound(f"no such user: {missing[0]}", {"user_ids": missing})


def _too_many(limit: int) -> NextstarError:
    return NextstarError.with_code(
        ErrorCode.FORBIDDEN, f"a group holds at most {limit} members"
    )
