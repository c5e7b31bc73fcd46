"""Pure ASGI middleware (no BaseHTTPMiddleware: it hides disconnects and costs per chunk).

Per request, once: a request id (``X-Request-Id`` taken or made, echoed back and put in the
logging context), and the body size limit (413 before the body is read).
"""

from __future__ import annotations

import itertools
import secrets

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stagecast.logs import request_id

_MAX_ID = 128
# Made request ids: 16 random hex digits per process, then a counter (32 hex digits, like a
# UUID's): unique for log correlation without a random draw per request.
_ID_PREFIX = secrets.token_hex(8)
_ids = itertools.count(1)


def _new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ids):016x}"


RAW_SEND = "stagecast.raw_send"


class RequestContext:
    """Request ids and the body size bound."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = None
        length = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                rid = value.decode("latin-1")[:_MAX_ID]
            elif name == b"content-length":
                length = value
        rid = rid or _new_request_id()
        token = request_id.set(rid)
        # Streaming responses write their body straight to the server: every middleware in
        # between would otherwise wrap each event's send.
        scope[RAW_SEND] = send
        rid_header = (b"x-request-id", rid.encode("latin-1"))
        try:
            if length is not None and length.isdigit() and int(length) > self.max_body:
                await self._too_large(send, rid_header)
                return
            if length is None and scope["method"] in ("POST", "PUT", "PATCH"):
                # A body of unknown length is read here, bounded, before the app sees it.
                buffered = await self._read_bounded(receive)
                if buffered is None:
                    await self._too_large(send, rid_header)
                    return
                receive = replay(buffered, receive)

            async def send_with_id(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", []), rid_header]
                await send(message)

            await self.app(scope, receive, send_with_id)
        finally:
            # The server's send is bound to its request cycle, which holds this scope: left
            # here, the two would make a cycle that only a collector pass frees.
            scope.pop(RAW_SEND, None)
            request_id.reset(token)

    async def _read_bounded(self, receive: Receive) -> list[Message] | None:
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages
            size += len(message.get("body", b""))
            if size > self.max_body:
                return None
            if not message.get("more_body"):
                return messages

    async def _too_large(self, send: Send, rid_header: tuple[bytes, bytes]) -> None:
        body = orjson.dumps(
            {
                "type": "error",
                "code": "body_too_large",
                "message": f"request body is over the limit of {self.max_body} bytes",
            }
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    rid_header,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def replay(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that hands out ``messages`` again, then reads on from ``receive``."""
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
