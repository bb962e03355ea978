"""Accounts: phone sign-in, sessions and devices, profiles."""

from .service import AccountService, SignedIn, hash_token
from .sms import DevOutboxSender, MemorySender, SmsSender, WebhookSender

__all__ = [
    "AccountService",
    "DevOutboxSender",
    "MemorySender",
    "SignedIn",
    "SmsSender",
    "WebhookSender",
    "hash_token",
]
