"""Sign-in by SMS code, sessions and devices, profiles, account deletion."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ..config import AccountsSettings
from ..store.database import Database, now_ms
from ..store.schema import sessions, sms_codes, sms_sends, users
from ..wire.errors import (
    Conflict,
    ErrorCode,
    LimitExceeded,
    NextstarError,
    NotFound,
    Unauthenticated,
)
from .phone import normalise_phone
from .sms import SmsSender

__all__ = ["AccountService", "SignedIn", "hash_token"]

logger = logging.getLogger(__name__)

HOUR_MS = 3_600_000
LAST_SEEN_PRECISION_MS = 300_000
CODE_DIGITS = 6

_PROFILE_COLUMNS = (
    users.c.id,
    users.c.phone,
    users.c.handle,
    users.c.nickname,
    users.c.avatar_url,
    users.c.gender,
    users.c.birthday,
    users.c.region,
    users.c.verification,
    users.c.created_at,
    users.c.deleted_at,
)


def hash_token(token: str) -> str:
    """Hash a session token; tokens are stored only in this form."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(slots=True, frozen=True)
class SignedIn:
    """Who a session belongs to, once signed in."""

    user_id: int
    session_id: int


class AccountService:
    """Accounts, backed by the store.

    Args:
        database: The store.
        sender: Where sign-in codes go.
        settings: Code lifetime, attempts, cooldown and hourly caps.
        secret: Key for hashing sign-in codes, so a stolen table of hashes of
            six-digit codes cannot be reversed by trying all million.
    """

    def __init__(
        self,
        database: Database,
        sender: SmsSender,
        settings: AccountsSettings,
        secret: bytes,
    ) -> None:
        self._database = database
        self._sender = sender
        self._settings = settings
        self._secret = secret

    def normalise(self, phone: str, region: str | None) -> str:
        return normalise_phone(phone, region or self._settings.default_region)

    def _hash_code(self, phone: str, code: str) -> str:
        message = f"{phone}:{code}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    async def request_code(
        self, raw_phone: str, region: str | None, address: str
    ) -> dict[str, Any]:
        """Send a new sign-in code, within the cooldown and hourly caps.

        Raises:
            NextstarError: ``invalid_phone``, ``code_cooldown`` (with
                ``retry_after`` seconds) or ``sms_quota``.
        """
        phone = self.normalise(raw_phone, region)
        now = now_ms()
        settings = self._settings
        code = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"

        async with self._database.write() as connection:
            previous = (
                await connection.execute(
                    sa.select(sms_codes.c.created_at).where(sms_codes.c.phone == phone)
                )
            ).scalar()
            cooldown_ms = int(settings.resend_cooldown * 1000)
            if previous is not None and now - previous < cooldown_ms:
                retry_after = (previous + cooldown_ms - now + 999) // 1000
                raise LimitExceeded.with_code(
                    ErrorCode.CODE_COOLDOWN,
                    "a code was sent recently; wait before asking again",
                    {"retry_after": retry_after},
                )
            await self._check_hourly_caps(connection, phone, address, now)

            await connection.execute(
                sa.delete(sms_codes).where(sms_codes.c.phone == phone)
            )
            await connection.execute(
                sms_codes.insert().values(
                    phone=phone,
                    code_hash=self._hash_code(phone, code),
                    created_at=now,
                    expires_at=now + int(settings.code_ttl * 1000),
                    attempts=0,
                )
            )
            await connection.execute(
                sms_sends.insert().values(phone=phone, address=address, sent_at=now)
            )
            # Sending inside the transaction: if the provider fails, no code
            # is recorded and the caps are not charged.
            await self._sender.send_code(phone, code)

        return {
            "phone": phone,
            "expires_in": int(settings.code_ttl),
            "resend_after": int(settings.resend_cooldown),
        }

    async def _check_hourly_caps(
        self, connection: Any, phone: str, address: str, now: int
    ) -> None:
        since = now - HOUR_MS
        for column, value, cap in (
            (sms_sends.c.phone, phone, self._settings.per_phone_hourly),
            (sms_sends.c.address, address, self._settings.per_address_hourly),
        ):
            count = (
                await connection.execute(
                    sa.select(sa.func.count()).where(
                        column == value, sms_sends.c.sent_at > since
                    )
                )
            ).scalar_one()
            if count >= cap:
                raise LimitExceeded.with_code(
                    ErrorCode.SMS_QUOTA,
                    f"too many codes requested for this {column.name} in an hour",
                )

    async def sign_in(
        self, raw_phone: str, region: str | None, code: str, device_name: str
    ) -> tuple[SignedIn, dict[str, Any]]:
        """Check ``code`` and open a session for a new or existing user.

        Raises:
            NextstarError: ``invalid_phone``, ``code_invalid`` (wrong, or none
                requested), ``code_expired``, ``code_attempts_exceeded``.
        """
        phone = self.normalise(raw_phone, region)
        now = now_ms()
        async with self._database.write() as connection:
            wrong_code = await self._consume_code(connection, phone, code, now)
            if wrong_code is None:
                user_id, created = await _find_or_create_user(connection, phone, now)
                token, session_id = await _open_session(
                    connection, user_id, device_name, now
                )
                profile = await _load_profile(connection, user_id)
        if wrong_code is not None:
            # Raised after the block so that the counted attempt is committed.
            raise wrong_code

        signed_in = SignedIn(user_id, session_id)
        return signed_in, {
            "token": token,
            "session_id": session_id,
            "created": created,
            "user": _profile_view(profile, own=True),
        }

    async def _consume_code(
        self, connection: Any, phone: str, code: str, now: int
    ) -> NextstarError | None:
        """Delete a matching code; count a wrong one and return its error."""
        row = (
            await connection.execute(
                sa.select(sms_codes).where(sms_codes.c.phone == phone)
            )
        ).first()
        if row is None:
            raise _code_error(ErrorCode.CODE_INVALID, "wrong code, or none requested")
        if row.attempts >= self._settings.code_max_attempts:
            raise _code_error(
                ErrorCode.CODE_ATTEMPTS_EXCEEDED,
                "too many wrong codes; ask for a new one",
            )
        if now >= row.expires_at:
            raise _code_error(ErrorCode.CODE_EXPIRED, "code expired; ask for a new one")
        if not hmac.compare_digest(row.code_hash, self._hash_code(phone, code)):
            await connection.execute(
                sms_codes.update()
                .where(sms_codes.c.phone == phone)
                .values(attempts=sms_codes.c.attempts + 1)
            )
            return _code_error(ErrorCode.CODE_INVALID, "wrong code, or none requested")
        await connection.execute(sa.delete(sms_codes).where(sms_codes.c.phone == phone))
        return None

    async def resume(self, token: str) -> tuple[SignedIn, dict[str, Any]]:
        """Resume the session that ``token`` opened.

        Raises:
            Unauthenticated: code ``token_invalid`` when the token is unknown,
                revoked, or its account deleted.
        """
        now = now_ms()
        # The session and its user's profile in one round trip: a reconnect
        # storm is thousands of these at once.
        async with self._database.read() as connection:
            row = (
                await connection.execute(
                    sa.select(
                        sessions.c.id.label("session_id"),
                        sessions.c.last_seen_at,
                        *_PROFILE_COLUMNS,
                    )
                    .join(users, users.c.id == sessions.c.user_id)
                    .where(
                        sessions.c.token_hash == hash_token(token),
                        sessions.c.revoked_at.is_(None),
                    )
                )
            ).first()
        if row is None:
            raise Unauthenticated.with_code(
                ErrorCode.TOKEN_INVALID, "token is unknown or revoked"
            )
        # "Last seen" is kept to the nearest few minutes: a write (and, on
        # SQLite, a synced commit) per reconnect would make a reconnect storm
        # queue on the store.
        if now - row.last_seen_at > LAST_SEEN_PRECISION_MS:
            async with self._database.write() as connection:
                await connection.execute(
                    sessions.update()
                    .where(sessions.c.id == row.session_id)
                    .values(last_seen_at=now)
                )
        return SignedIn(row.id, row.session_id), {
            "session_id": row.session_id,
            "user": _profile_view(row, own=True),
        }

    async def list_devices(self, user_id: int, current: int) -> list[dict[str, Any]]:
        async with self._database.read() as connection:
            rows = await connection.execute(
                sa.select(
                    sessions.c.id,
                    sessions.c.device_name,
                    sessions.c.created_at,
                    sessions.c.last_seen_at,
                )
                .where(sessions.c.user_id == user_id, sessions.c.revoked_at.is_(None))
                .order_by(sessions.c.id)
            )
            return [
                {
                    "session_id": row.id,
                    "device_name": row.device_name,
                    "created_at": row.created_at,
                    "last_seen_at": row.last_seen_at,
                    "current": row.id == current,
                }
                for row in rows
            ]

    async def revoke(self, user_id: int, session_id: int) -> None:
        """Revoke one of the user's sessions.

        Raises:
            NotFound: the session is not the user's, or already revoked.
        """
        async with self._database.write() as connection:
            result = await connection.execute(
                sessions.update()
                .where(
                    sessions.c.id == session_id,
                    sessions.c.user_id == user_id,
                    sessions.c.revoked_at.is_(None),
                )
                .values(revoked_at=now_ms())
            )
        if result.rowcount == 0:
            raise NotFound("no such device")

    async def get_profile(self, viewer: int, user_id: int) -> dict[str, Any]:
        async with self._database.read() as connection:
            profile = await _load_profile(connection, user_id)
        return _profile_view(profile, own=viewer == user_id)

    async def update_profile(
        self, user_id: int, changes: dict[str, Any]
    ) -> dict[str, Any]:
        """Apply profile ``changes``; the verification status is not among them.

        Raises:
            Conflict: code ``handle_taken`` when another user has the handle.
        """
        try:
            async with self._database.write() as connection:
                if changes:
                    await connection.execute(
                        users.update().where(users.c.id == user_id).values(**changes)
                    )
                profile = await _load_profile(connection, user_id)
        except sa.exc.IntegrityError:
            if "handle" not in changes:
                raise
            raise Conflict.with_code(
                ErrorCode.HANDLE_TAKEN, "that NEXTSTAR ID is taken"
            ) from None
        return _profile_view(profile, own=True)

    async def delete_account(self, user_id: int) -> None:
        """Revoke every session, erase phone and profile, keep a tombstone.

        The user row stays, marked deleted, so conversation history can show
        "deleted user" for their messages.
        """
        now = now_ms()
        async with self._database.write() as connection:
            await connection.execute(
                sessions.update()
                .where(sessions.c.user_id == user_id, sessions.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            await connection.execute(
                users.update()
                .where(users.c.id == user_id)
                .values(
                    phone=None,
                    handle=None,
                    nickname=None,
                    avatar_url=None,
                    gender="unspecified",
                    birthday=None,
                    region=None,
                    deleted_at=now,
                )
            )
        logger.info("account deleted: user=%d", user_id)

    async def existing_users(self, user_ids: list[int]) -> set[int]:
        """Return which of ``user_ids`` exist and are not deleted."""
        async with self._database.read() as connection:
            rows = await connection.execute(
                sa.select(users.c.id).where(
                    users.c.id.in_(user_ids), users.c.deleted_at.is_(None)
                )
            )
            return {row.id for row in rows}

    async def provision(
        self, count: int, prefix: str = "+1555"
    ) -> list[dict[str, Any]]:
        """Create ``count`` users with one session each, skipping SMS.

        For load tests and demos, through the operator command
        ``nextstar-rt dev provision``. Phones are fictional ``+1555...``.
        """
        now = now_ms()
        created: list[dict[str, Any]] = []
        async with self._database.write() as connection:
            start = (
                await connection.execute(
                    sa.select(sa.func.coalesce(sa.func.max(users.c.id), 0))
                )
            ).scalar_one()
            for offset in range(0, count, 1000):
                chunk = range(offset, min(count, offset + 1000))
                phones = [f"{prefix}{start + 1 + i:07d}" for i in chunk]
                await connection.execute(
                    users.insert(), [{"phone": p, "created_at": now} for p in phones]
                )
                rows = await connection.execute(
                    sa.select(users.c.id, users.c.phone).where(
                        users.c.phone.in_(phones)
                    )
                )
                tokens = []
                for row in rows:
                    token = secrets.token_urlsafe(32)
                    tokens.append(
                        {"user_id": row.id, "token": token, "phone": row.phone}
                    )
                await connection.execute(
                    sessions.insert(),
                    [
                        {
                            "user_id": t["user_id"],
                            "token_hash": hash_token(t["token"]),
                            "device_name": "provisioned",
                            "created_at": now,
                            "last_seen_at": now,
                        }
                        for t in tokens
                    ],
                )
                created.extend(tokens)
        return created


async def _find_or_create_user(
    connection: Any, phone: str, now: int
) -> tuple[int, bool]:
    user_id = (
        await connection.execute(sa.select(users.c.id).where(users.c.phone == phone))
    ).scalar()
    if user_id is not None:
        return user_id, False
    user_id = (
        await connection.execute(
            users.insert().values(phone=phone, created_at=now).returning(users.c.id)
        )
    ).scalar_one()
    logger.info("user created: user=%d", user_id)
    return user_id, True


async def _open_session(
    connection: Any, user_id: int, device_name: str, now: int
) -> tuple[str, int]:
    token = secrets.token_urlsafe(32)
    session_id = (
        await connection.execute(
            sessions.insert()
            .values(
                user_id=user_id,
                token_hash=hash_token(token),
                device_name=device_name,
                created_at=now,
                last_seen_at=now,
            )
            .returning(sessions.c.id)
        )
    ).scalar_one()
    return token, session_id


async def _load_profile(connection: Any, user_id: int) -> Any:
    row = (
        await connection.execute(
            sa.select(*_PROFILE_COLUMNS).where(users.c.id == user_id)
        )
    ).first()
    if row is None:
        raise NotFound("no such user")
    return row


def _profile_view(row: Any, *, own: bool) -> dict[str, Any]:
    if row.deleted_at is not None:
        return {"user_id": row.id, "deleted": True}
    profile = {
        "user_id": row.id,
        "deleted": False,
        "handle": row.handle,
        "nickname": row.nickname,
        "avatar_url": row.avatar_url,
        "gender": row.gender,
        "birthday": row.birthday,
        "region": row.region,
        "verification": row.verification,
        "created_at": row.created_at,
    }
    if own:
        profile["phone"] = row.phone
    return profile


def _code_error(code: ErrorCode, message: str) -> NextstarError:
    return Unauthenticated.with_code(code, message)
