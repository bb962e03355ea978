"""NextStar RT: a real-time messaging server on asyncio."""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1
