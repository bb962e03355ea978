"""Phone numbers: parse what a person typed, keep E.164."""

from __future__ import annotations

import phonenumbers

from ..wire.errors import ErrorCode, NextstarError

__all__ = ["normalise_phone"]


def normalise_phone(raw: str, default_region: str | None = None) -> str:
    """Return ``raw`` in E.164 form (``+14155550123``).

    Args:
        raw: The number as typed; national numbers need ``default_region``.
        default_region: ISO 3166 alpha-2 region for numbers without ``+``.

    Raises:
        NextstarError: code ``invalid_phone`` when the number cannot be parsed
            or is not a possible, valid number.
    """
    try:
        number = phonenumbers.parse(raw, default_region)
    except phonenumbers.NumberParseException as exc:
        raise _invalid(f"cannot parse phone number: {exc._msg.lower()}") from None
    if not phonenumbers.is_valid_number(number):
        raise _invalid("not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _invalid(message: str) -> NextstarError:
    return NextstarError.with_code(ErrorCode.INVALID_PHONE, message)
