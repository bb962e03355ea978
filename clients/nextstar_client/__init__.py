"""Reference client library for NextStar RT."""

from .client import Client, ClientError, Disconnected

__all__ = ["Client", "ClientError", "Disconnected"]
