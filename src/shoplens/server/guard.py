"""The ASGI guard in front of every route: write and read keys, body size, security headers.

It acts before any byte of the body is read: a write without the write key
(or, when the server has a read key, a search or read without a key) is
refused at once, a declared ``Content-Length`` over the limit gets 413 at
once, and a body that streams past the limit (chunked uploads) is cut off at
the limit with 413. Nothing over the limit is ever buffered.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from .settings import ServerSettings

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: POST routes that only read (searches).
READ_POSTS = frozenset({"/search", "/search/url"})
#: Routes whose body is one photo.
PHOTO_ROUTES = READ_POSTS

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (
        b"content-security-policy",
        (
            b"default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
            b"connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
        ),
    ),
]


def is_write(method: str, path: str) -> bool:
    return method in WRITE_METHODS and path not in READ_POSTS


def presented_key(headers: dict[bytes, bytes]) -> str | None:
    """The key a request carries: ``X-API-Key`` or ``Authorization: Bearer KEY``."""
    key = headers.get(b"x-api-key")
    if key is None:
        auth = headers.get(b"authorization", b"")
        scheme, _, value = auth.partition(b" ")
        if scheme.lower() == b"bearer" and value.strip():
            key = value.strip()
    return None if key is None else key.decode("latin-1")


def _same(key: str, expected: str | None) -> bool:
    return expected is not None and hmac.compare_digest(key.encode("utf-8", "replace"), expected.encode("utf-8"))


def key_matches(settings: ServerSettings, key: str | None) -> bool:
    if settings.api_key is None or key is None:
        return False
    return _same(key, settings.api_key)


def read_problem(settings: ServerSettings, key: str | None) -> tuple[int, str, str] | None:
    """(status, code, message) when a read must be refused (the server has a read key), else None.

    The write key grants reads too.
    """
    if settings.read_key is None:
        return None
    if key is None:
        return 401, "unauthorized", (
            "this server's catalogue is private: send the read key (or the write key) in the X-API-Key header "
            "(or Authorization: Bearer KEY)"
        )
    as_reader, as_writer = _same(key, settings.read_key), _same(key, settings.api_key)  # both compared, always
    if not (as_reader or as_writer):
        return 401, "unauthorized", "wrong key"
    return None


def auth_problem(settings: ServerSettings, key: str | None) -> tuple[int, str, str] | None:
    """(status, code, message) when a write must be refused, else None."""
    if settings.api_key is None:
        return 403, "writes_disabled", (
            "catalogue writes are disabled: this server has no API key configured "
            "(start it with SHOPLENS_API_KEY set or --api-key-file FILE); search and reads work without one"
        )
    if key is None:
        return 401, "unauthorized", "this endpoint changes the catalogue: send the API key in the X-API-Key header (or Authorization: Bearer KEY)"
    if not key_matches(settings, key):
        return 401, "unauthorized", "wrong API key"
    return None


class Guard:
    """ASGI middleware: see the module doc."""

    def __init__(self, app: ASGIApp, settings: ServerSettings, access: Callable[[Scope], str | None] | None = None) -> None:
        self.app = app
        self.settings = settings
        #: Which key a request's route needs: "write", "read" or None (open); by default
        #: writes by method and path alone, and every other request a read.
        self.access = access or (lambda scope: "write" if is_write(scope["method"], scope["path"]) else "read")

    def limit_for(self, path: str) -> int:
        if path in PHOTO_ROUTES:
            return self.settings.max_upload_bytes + 64 * 1024  # the photo and the multipart envelope
        return self.settings.max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        send = _with_headers(send)
        path = scope["path"]
        access = self.access(scope)
        if access is not None:
            check = auth_problem if access == "write" else read_problem
            problem = check(self.settings, presented_key(headers))
            if problem is not None:
                status, code, message = problem
                extra = [(b"www-authenticate", b'Bearer realm="shoplens"')] if status == 401 else []
                await _respond(send, status, code, message, extra)
                return
        limit = self.limit_for(path)
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await _respond(send, 400, "bad_request", "the Content-Length header is not a number")
                return
            if length > limit:
                await _respond(send, 413, "too_large", _too_large(limit))
                return
        state = {"received": 0, "cut": False, "started": False}

        async def limited_receive() -> Message:
            if state["cut"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    state["cut"] = True
                    if not state["started"]:
                        await _respond(send, 413, "too_large", _too_large(limit))
                    return {"type": "http.disconnect"}  # the app stops reading; its reply is dropped
            return message

        async def guarded_send(message: Message) -> None:
            if state["cut"]:
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not state["cut"]:
                raise  # a disconnect we caused may surface as an error: the 413 was sent already

def _too_large(limit: int) -> str:
    return f"the request body is over the limit of {limit} bytes: send a smaller photo (or fewer products per batch)"


def _with_headers(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            have = {k.lower() for k, _ in message.get("headers", [])}
            message = dict(message)
            message["headers"] = list(message.get("headers", [])) + [(k, v) for k, v in SECURITY_HEADERS if k not in have]
        await send(message)

    return wrapped


async def _respond(send: Send, status: int, code: str, message: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"error": message, "code": code}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": body})
