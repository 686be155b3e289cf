"""The server's safety rails: bind checks, bearer tokens, upload limits and content sniffing.

Kept apart from the endpoints so each rule is one small function a test can call directly, and
so the app module reads as "what the service does" rather than "what it refuses".
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

log = logging.getLogger("medvl.serve")

# Magic numbers of the only formats we decode. Anything else is refused with 415 *before* a
# decoder sees it, so a crafted file of another type never reaches PIL/pydicom plugins.
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic + BigTIFF
DICOM_OFFSET, DICOM_MAGIC = 128, b"DICM"
ACCEPTED_FORMATS = "PNG, JPEG, TIFF or DICOM (Part 10, 'DICM' at byte 128)"


def sniff_format(data: bytes) -> str | None:
    """Return ``"png"``, ``"jpeg"``, ``"tiff"`` or ``"dicom"`` from the leading bytes, else None.

    The client's filename and Content-Type are ignored on purpose: they are trivially forged.
    """
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data[:4] in TIFF_MAGICS:
        return "tiff"
    if data[DICOM_OFFSET:DICOM_OFFSET + 4] == DICOM_MAGIC:
        return "dicom"
    return None


def token_matches(provided: str | None, expected: str) -> bool:
    """Constant-time comparison so response timing does not leak how much of a guess was right."""
    if provided is None:
        return False
    return hmac.compare_digest(provided.encode("utf-8"), expected.encode("utf-8"))


def bearer_from_header(value: str | None) -> str | None:
    """Extract the token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive)."""
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; names we cannot parse count as exposed."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> str | None:
    """A loud warning when the server would be reachable from other machines without a token.

    Returned (not raised) because binding 0.0.0.0 inside a container behind a proxy is legitimate;
    the CLI prints it in red so nobody does it by accident.
    """
    if is_loopback(host):
        return None
    if token:
        return None
    return (f"WARNING: binding {host} WITHOUT a token exposes medical image search to every machine that can "
            f"reach this host. Pass --token (or set MEDVL_TOKEN), or bind 127.0.0.1.")


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def _send_json(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Reject request bodies larger than ``max_bytes`` with 413, never holding more than that.

    Content-Length is checked first (cheap refusal); chunked bodies are counted while read, then
    replayed to the app, so the multipart parser never spools an oversized upload to disk.
    """

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        too_big = f"request body exceeds the upload limit of {self.max_bytes / 2**20:g} MB"
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_json(send, 400, "invalid Content-Length header")
                    return
                if declared > self.max_bytes:
                    await _send_json(send, 413, too_big)
                    return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _send_json(send, 413, too_big)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class BearerAuthMiddleware:
    """Require ``Authorization: Bearer <token>`` on every path except the public ones.

    Public: the page and its assets (they hold no data; the page asks for the token), the health
    probe (load balancers carry no secrets) and the OpenAPI docs.
    """

    PUBLIC_PREFIXES = ("/static/", "/docs", "/redoc", "/openapi.json")
    PUBLIC_PATHS = ("/", "/healthz", "/favicon.ico")

    def __init__(self, app: ASGIApp, token: str | None):
        self.app = app
        self.token = token

    def _public(self, path: str) -> bool:
        return path in self.PUBLIC_PATHS or path.startswith(self.PUBLIC_PREFIXES)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.token or self._public(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        header = None
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        if not token_matches(bearer_from_header(header), self.token):
            log.info("rejected unauthenticated request to %s", scope.get("path", ""))
            await _send_json(send, 401, "missing or invalid bearer token",
                             headers=[(b"www-authenticate", b'Bearer realm="medvl"')])
            return
        await self.app(scope, receive, send)


class SecurityHeadersMiddleware:
    """Headers on every response: no MIME sniffing, no referrer, and no caching of API answers
    (they carry reports and thumbnails, which must not linger in shared browser or proxy caches)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        api = scope.get("path", "").startswith("/v1/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
                if api:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
