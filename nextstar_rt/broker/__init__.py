"""Brokers: in-process, sharded standalone Redis, Redis Cluster."""

from .base import Broker, conversation_channel, node_channel, user_channel
from .local import LocalBroker

__all__ = [
    "Broker",
    "LocalBroker",
    "conversation_channel",
    "node_channel",
    "user_channel",
]
