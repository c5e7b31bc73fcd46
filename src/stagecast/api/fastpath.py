"""The stage-streaming POSTs, served without the web framework's per-request machinery.

``POST /stream/v1/chat`` and ``/stream/v1/toolchain`` start every streamed answer, so their
setup sits on every stage's time to first token. Here a valid request goes straight from the
body bytes to a started stage: one pydantic validation of the JSON, admission, and the
streaming response. Anything else (a body that does not validate, a content type that is not
JSON, no app state yet) is handed to the FastAPI routes with the body replayed, so every
refusal is answered by the same code and in the same words as before.
"""

from __future__ import annotations

import logging

from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stagecast.api.errors import internal_error_response, stagecast_error_response
from stagecast.api.middleware import replay
from stagecast.api.routes import start_stream
from stagecast.errors import StagecastError
from stagecast.protocol.requests import StageRequest
from stagecast.stages.context import StageMode

log = logging.getLogger(__name__)

STREAM_MODES: dict[str, StageMode] = {
    "/stream/v1/chat": "chat",
    "/stream/v1/toolchain": "toolchain",
}


class StreamFastPath:
    """Serves valid stage-streaming POSTs itself; everything else goes to ``app``."""

    def __init__(self, app: ASGIApp, owner: object) -> None:
        self.app = app
        # The FastAPI app whose lifespan puts the gateway's state on ``owner.state``.
        self.owner = owner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        mode = STREAM_MODES.get(scope["path"]) if scope["type"] == "http" else None
        state = getattr(getattr(self.owner, "state", None), "stagecast", None)
        if mode is None or scope["method"] != "POST" or state is None:
            await self.app(scope, receive, send)
            return
        authorization: str | None = None
        json_body = True
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"content-type":
                json_body = _is_json(value)
        messages, body = await _read_body(receive)
        if body is None:
            return  # the client left before it finished sending
        request: StageRequest | None = None
        if json_body:
            try:
                request = StageRequest.model_validate_json(body)
            except ValidationError:
                request = None
        if request is None:
            await self.app(scope, replay(messages, receive), send)
            return
        try:
            response = await start_stream(state, authorization, request, mode)
        except StagecastError as exc:
            await stagecast_error_response(exc)(scope, receive, send)
            return
        except Exception:
            log.exception("unhandled error", extra={"path": scope["path"]})
            await internal_error_response()(scope, receive, send)
            return
        await response(scope, receive, send)


def _is_json(content_type: bytes) -> bool:
    # The same test as the framework's: application/json or application/<anything>+json.
    main = content_type.split(b";", 1)[0].strip().lower()
    return main == b"application/json" or (
        main.startswith(b"application/") and main.endswith(b"+json")
    )


async def _read_body(receive: Receive) -> tuple[list[Message], bytes | None]:
    """Every message of the request body (for a replay) and the body; None if the client left."""
    messages: list[Message] = []
    parts: list[bytes] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, None
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return messages, parts[0] if len(parts) == 1 else b"".join(parts)
