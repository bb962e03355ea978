"""The baseline: a bare relay on uvloop and websockets, written for the harness.

It answers the few protocol v1 methods the ``direct`` and ``group`` traffic
uses, with the same envelopes and event shape as NextStar RT, and nothing
else: no authentication (a token is the user id in decimal), no store (``seq``
is a counter in memory), no hooks, no validation beyond what keeps it
running. Like NextStar RT it encodes an event once and writes the same
prepared frame to every recipient's transport, so the difference between the
two is what the server does above the transport.

Run it alone with ``python -m bench.relay --port 9100``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import time
from typing import Any

import msgpack
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from nextstar_rt.wire.codec import ws_frame

__all__ = ["Relay", "main"]

logger = logging.getLogger(__name__)

SUBPROTOCOL = "nextstar.v1.msgpack"

_packb = msgpack.Packer(use_bin_type=True, autoreset=True).pack
_unpackb = msgpack.unpackb


class Relay:
    """Conversations and sessions, all in memory."""

    def __init__(self) -> None:
        self.sessions: dict[int, set[asyncio.Transport]] = {}
        self.members: dict[int, tuple[int, ...]] = {}
        self.last_seq: dict[int, int] = {}
        self._direct: dict[tuple[int, int], int] = {}

    def _new_conversation(self, members: tuple[int, ...]) -> int:
        conversation_id = len(self.members) + 1
        self.members[conversation_id] = members
        self.last_seq[conversation_id] = 0
        return conversation_id

    def direct(self, user_id: int, peer_id: int) -> int:
        pair = (min(user_id, peer_id), max(user_id, peer_id))
        conversation_id = self._direct.get(pair)
        if conversation_id is None:
            conversation_id = self._direct[pair] = self._new_conversation(pair)
        return conversation_id

    def group(self, owner: int, member_ids: list[int]) -> int:
        members = tuple(dict.fromkeys([owner, *member_ids]))
        conversation_id = self._new_conversation(members)
        # The members hear of the group as NextStar RT's do, by its first
        # message, so that a client waits for the same signal on both.
        self.publish(
            conversation_id,
            owner,
            None,
            {
                "kind": "group.created",
                "data": {"member_ids": list(members)},
            },
        )
        return conversation_id

    def publish(
        self, conversation_id: int, sender: int, origin: Any, body: dict[str, Any]
    ) -> int:
        """Assign the next seq, encode once, write to every member but the
        sending transport; return the seq."""
        seq = self.last_seq[conversation_id] + 1
        self.last_seq[conversation_id] = seq
        data = {
            "conversation_id": conversation_id,
            "seq": seq,
            "sender_id": sender,
            "created_at": time.time_ns() // 1_000_000,
        }
        data.update(body)
        frame = ws_frame(
            _packb({"type": "evt", "event": "message.new", "data": data}), True
        )
        sessions = self.sessions
        for member in self.members[conversation_id]:
            for transport in sessions.get(member, ()):
                if transport is not origin:
                    transport.write(frame)
        return seq

    async def handle(self, connection: ServerConnection) -> None:
        transport = connection.transport
        user_id = 0
        try:
            async for data in connection:
                request = _unpackb(data)
                answer = self._answer(request, user_id, transport)
                if request.get("method") == "auth.resume" and "result" in answer:
                    user_id = answer["result"]["user_id"]
                    self.sessions.setdefault(user_id, set()).add(transport)
                transport.write(ws_frame(_packb(answer), True))
        except ConnectionClosed:
            pass
        finally:
            sessions = self.sessions.get(user_id)
            if sessions is not None:
                sessions.discard(transport)

    def _answer(self, request: Any, user_id: int, transport: Any) -> dict[str, Any]:
        request_id = request.get("id")
        method = request.get("method")
        params = request.get("params") or {}
        try:
            result = self._call(method, params, user_id, transport)
        except (KeyError, TypeError, ValueError) as exc:
            error = {"code": "bad_request", "message": f"{method}: {exc!r}"}
            return {"type": "err", "id": request_id, "error": error}
        return {"type": "res", "id": request_id, "result": result}

    def _call(
        self, method: str, params: dict[str, Any], user_id: int, transport: Any
    ) -> Any:
        if method == "message.send":
            seq = self.publish(
                params["conversation_id"],
                user_id,
                transport,
                {
                    "kind": "text",
                    "client_msg_id": params["client_msg_id"],
                    "text": params["text"],
                },
            )
            return {
                "conversation_id": params["conversation_id"],
                "seq": seq,
                "created_at": time.time_ns() // 1_000_000,
                "duplicate": False,
            }
        if method == "auth.resume":
            return {"user_id": int(params["token"]), "session_id": 0}
        if method == "conv.direct":
            return {"conversation_id": self.direct(user_id, params["user_id"])}
        if method == "group.create":
            return {"conversation_id": self.group(user_id, params["member_ids"])}
        if method == "ping":
            return {"time": time.time()}
        raise ValueError("not offered by the baseline relay")


async def _serve(host: str, port: int) -> None:
    relay = Relay()
    async with serve(
        relay.handle,
        host,
        port,
        subprotocols=[SUBPROTOCOL],
        compression=None,
        max_size=65536,
        ping_interval=20,
        ping_timeout=20,
        server_header=None,
    ) as server:
        bound = server.sockets[0].getsockname()
        print(f"baseline relay listening on ws://{bound[0]}:{bound[1]}/ws", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    """Run the relay until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.relay", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import uvloop

    uvloop.run(_serve(args.host, args.port))


if __name__ == "__main__":
    main()
