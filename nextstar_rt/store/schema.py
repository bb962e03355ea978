"""Tables of the store, in SQLAlchemy Core.

The schema changes only through Alembic migrations (``store/migrations``); these
definitions must match the newest migration, which a test checks. Times are
integer milliseconds since the Unix epoch, the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = [
    "metadata",
    "users",
    "sms_codes",
    "sms_sends",
    "sessions",
    "conversations",
    "members",
    "messages",
    "direct_pair",
]

metadata = sa.MetaData()

# SQLite only auto-increments INTEGER PRIMARY KEY, PostgreSQL wants BIGINT.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("phone", sa.String(20), unique=True),
    sa.Column("handle", sa.String(20)),
    sa.Column("nickname", sa.String(32)),
    sa.Column("avatar_url", sa.String(512)),
    sa.Column("gender", sa.String(16), nullable=False, server_default="unspecified"),
    sa.Column("birthday", sa.String(10)),
    sa.Column("region", sa.String(64)),
    sa.Column(
        "verification", sa.String(16), nullable=False, server_default="unverified"
    ),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("deleted_at", sa.BigInteger),
    # Handles are unique regardless of case: "Alice_1" blocks "alice_1".
    sa.Index("ix_users_handle_lower", sa.func.lower(sa.column("handle")), unique=True),
)

sms_codes = sa.Table(
    "sms_codes",
    metadata,
    sa.Column("phone", sa.String(20), primary_key=True),
    sa.Column("code_hash", sa.String(64), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
)

sms_sends = sa.Table(
    "sms_sends",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("phone", sa.String(20), nullable=False),
    sa.Column("address", sa.String(64), nullable=False),
    sa.Column("sent_at", sa.BigInteger, nullable=False),
    sa.Index("ix_sms_sends_phone", "phone", "sent_at"),
    sa.Index("ix_sms_sends_address", "address", "sent_at"),
)

sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("user_id", sa.BigInteger, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("device_name", sa.String(64), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("last_seen_at", sa.BigInteger, nullable=False),
    sa.Column("revoked_at", sa.BigInteger),
    sa.Index("ix_sessions_user", "user_id"),
)

conversations = sa.Table(
    "conversations",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(16), nullable=False),  # "direct" or "group"
    sa.Column("title", sa.String(64)),
    sa.Column("owner_id", sa.BigInteger),
    # "<low user id>:<high user id>" for direct conversations: one per pair.
    sa.Column("direct_key", sa.String(48), unique=True),
    sa.Column("last_seq", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)

members = sa.Table(
    "members",
    metadata,
    sa.Column(
        "conversation_id",
        sa.BigInteger,
        sa.ForeignKey("conversations.id"),
        primary_key=True,
    ),
    sa.Column("user_id", sa.BigInteger, sa.ForeignKey("users.id"), primary_key=True),
    sa.Column("role", sa.String(16), nullable=False, server_default="member"),
    sa.Column("read_seq", sa.BigInteger, nullable=False, server_default="0"),
    # Members see the conversation from the seq at which they joined onwards.
    sa.Column("joined_seq", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("joined_at", sa.BigInteger, nullable=False),
    sa.Index("ix_members_user", "user_id"),
)

messages = sa.Table(
    "messages",
    metadata,
    sa.Column(
        "conversation_id",
        sa.BigInteger,
        sa.ForeignKey("conversations.id"),
        primary_key=True,
    ),
    sa.Column("seq", sa.BigInteger, primary_key=True),
    sa.Column("sender_id", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("text", sa.Text),
    # None is SQL NULL, not the JSON text "null", and costs no encoding.
    sa.Column("data", sa.JSON(none_as_null=True)),
    sa.Column("client_msg_id", sa.String(64)),
    sa.Column("target_seq", sa.BigInteger),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("recalled_at", sa.BigInteger),
    sa.UniqueConstraint(
        "conversation_id", "sender_id", "client_msg_id", name="uq_messages_client_msg"
    ),
)


def direct_pair(direct_key: str | None) -> tuple[int, ...]:
    """Return the two members of a direct conversation from its key."""
    if not direct_key:
        return ()
    low, _, high = direct_key.partition(":")
    return (int(low), int(high))
