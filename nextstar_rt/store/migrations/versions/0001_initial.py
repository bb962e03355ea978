"""Initial schema: users, sign-in codes, sessions, conversations, messages.

Revision ID: 0001
Revises:
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("phone", sa.String(20), unique=True),
        sa.Column("handle", sa.String(20)),
        sa.Column("nickname", sa.String(32)),
        sa.Column("avatar_url", sa.String(512)),
        sa.Column(
            "gender", sa.String(16), nullable=False, server_default="unspecified"
        ),
        sa.Column("birthday", sa.String(10)),
        sa.Column("region", sa.String(64)),
        sa.Column(
            "verification", sa.String(16), nullable=False, server_default="unverified"
        ),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("deleted_at", sa.BigInteger),
    )
    op.create_index(
        "ix_users_handle_lower", "users", [sa.text("lower(handle)")], unique=True
    )
    op.create_table(
        "sms_codes",
        sa.Column("phone", sa.String(20), primary_key=True),
        sa.Column("code_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_table(
        "sms_sends",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("phone", sa.String(20), nullable=False),
        sa.Column("address", sa.String(64), nullable=False),
        sa.Column("sent_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_sms_sends_phone", "sms_sends", ["phone", "sent_at"])
    op.create_index("ix_sms_sends_address", "sms_sends", ["address", "sent_at"])
    op.create_table(
        "sessions",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("user_id", sa.BigInteger, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("device_name", sa.String(64), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("last_seen_at", sa.BigInteger, nullable=False),
        sa.Column("revoked_at", sa.BigInteger),
    )
    op.create_index("ix_sessions_user", "sessions", ["user_id"])
    op.create_table(
        "conversations",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("title", sa.String(64)),
        sa.Column("owner_id", sa.BigInteger),
        sa.Column("direct_key", sa.String(48), unique=True),
        sa.Column("last_seq", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "members",
        sa.Column(
            "conversation_id",
            sa.BigInteger,
            sa.ForeignKey("conversations.id"),
            primary_key=True,
        ),
        sa.Column(
            "user_id", sa.BigInteger, sa.ForeignKey("users.id"), primary_key=True
        ),
        sa.Column("role", sa.String(16), nullable=False, server_default="member"),
        sa.Column("read_seq", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("joined_seq", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("joined_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_members_user", "members", ["user_id"])
    op.create_table(
        "messages",
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
        sa.Column("data", sa.JSON),
        sa.Column("client_msg_id", sa.String(64)),
        sa.Column("target_seq", sa.BigInteger),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("recalled_at", sa.BigInteger),
        sa.UniqueConstraint(
            "conversation_id",
            "sender_id",
            "client_msg_id",
            name="uq_messages_client_msg",
        ),
    )


def downgrade() -> None:
    for table in (
        "messages",
        "members",
        "conversations",
        "sessions",
        "sms_sends",
        "sms_codes",
        "users",
    ):
        op.drop_table(table)
