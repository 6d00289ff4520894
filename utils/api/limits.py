"""Request bodies over the upload limit are refused while they arrive, not after they are stored."""
from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Room for the multipart framing and the form fields around the file itself.
FORM_OVERHEAD = 64 * 1024


class _TooLarge(Exception):
    pass


class UploadLimit:
    """ASGI middleware: a body over `max_bytes` gets 413 and one line. A declared Content-Length is
    checked before anything is read; a body without one is counted as it streams in."""

    def __init__(self, app: ASGIApp, max_bytes: int, limit_text: str,
                 wider: dict[str, tuple[int, str]] | None = None):
        """`wider`: a path prefix -> (max_bytes, limit_text) for routes that take more."""
        self.app = app
        self.limits = [(prefix, size, text) for prefix, (size, text) in (wider or {}).items()]
        self.limits.append(("", max_bytes, limit_text))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes, limit_text = next((size, text) for prefix, size, text in self.limits
                                     if scope["path"].startswith(prefix))
        message = f"the upload is over the limit of {limit_text}"
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            await self._refuse(send, message)
            return
        received = 0
        exceeded = False
        started = False

        async def counted() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    exceeded = True
                    raise _TooLarge
            return message

        async def unless_exceeded(message: Message) -> None:
            nonlocal started
            if exceeded:  # whatever the app makes of the cut-off body, the client gets the 413
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, unless_exceeded)
        except _TooLarge:
            pass
        if exceeded and not started:
            await self._refuse(send, message)

    async def _refuse(self, send: Send, message: str) -> None:
        body = json.dumps({"detail": message}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
