"""Websocket fan-out of the engine's messages, and the web page that shows them.

An I/O adapter only: the engine runs elsewhere and hands messages (``events.py``) to
:meth:`FeedServer.publish` / :meth:`FeedServer.publish_threadsafe`. One server serves

- ``ws://HOST:PORT/ws``: the feed. ``hello`` first, then every published message in order.
- ``http://HOST:PORT/``: the page (``web/index.html``) and the other files of ``web_root``.

Each client has its own bounded queue and sender task, so a slow client only loses its
own oldest messages and is told how many with a ``gap`` message before the next one it
gets; publish() never awaits and never waits on a client. A client that stops reading
fills its own queue (dropped oldest first) while its sender task waits in ``send`` on
websockets' write limit, so neither the queue nor the transport buffer grows without bound.
Such a client is dropped (TCP abort) once a send has waited ``stall_timeout_s``: websockets'
keepalive cannot do it once the buffer is full, since its ping waits on that same buffer and
its pong timeout never starts.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import math
import socket
import mimetypes
import sys
import time
from collections import deque
from email.utils import formatdate
from http import HTTPStatus
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, unquote

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from .events import SCHEMA_VERSION, gap_message

WEB_ROOT = Path(__file__).resolve().parent / "web"
WS_PATH = "/ws"
GOING_AWAY = 1001
# Kernel send buffer per client (Linux doubles it). Fixed rather than autotuned (up to
# 4 MiB), so a client that stops reading pins little memory; the feed is ~3 kB/s.
SEND_BUFFER_BYTES = 64 * 1024
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
                 ".ico": "image/x-icon", ".json": "application/json"}
# The page loads only its own files; no inline script, no third-party hosts.
CSP = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; base-uri 'none'"


def handle_client_message(raw: str | bytes) -> dict[str, Any] | None:
    """The reply to one client message, or None to ignore it.

    The only request is ``{"type": "ping"}``, answered ``{"type": "pong", "schema": 1}``;
    binary frames, invalid JSON and anything else are ignored. Pure, so it can be fuzzed.
    """
    if not isinstance(raw, str):
        return None
    try:
        message = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: deeply nested arrays
        return None
    if isinstance(message, dict) and message.get("type") == "ping":
        return {"type": "pong", "schema": SCHEMA_VERSION}
    return None


def resolve_static(web_root: Path, url_path: str) -> Path | None:
    """The file of ``web_root`` that ``url_path`` (no query) names, or None.

    ``/`` is ``index.html``. Refuses ``.``/``..`` segments (also percent-encoded), empty
    segments (``//etc/passwd``), backslashes, NULs, and anything that resolves, through
    symlinks, outside ``web_root``.
    """
    path = unquote(url_path)
    if path == "/":
        path = "/index.html"
    if not path.startswith("/") or "\\" in path or "\x00" in path:
        return None
    parts = path[1:].split("/")
    if any(part in ("", ".", "..") for part in parts):
        return None
    root = web_root.resolve()
    try:
        target = root.joinpath(*parts).resolve()
    except (OSError, RuntimeError):  # symlink loops
        return None
    if not target.is_relative_to(root) or not target.is_file():
        return None
    return target


def encode_message(message: dict[str, Any]) -> str:
    """Compact JSON; NaN and infinities become null, since browsers' JSON.parse rejects them."""
    try:
        return json.dumps(message, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return json.dumps(_finite(message), separators=(",", ":"), allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def is_loopback(host: str | None) -> bool:
    """True for hosts only this machine can reach (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


class _Client:
    """One connection's bounded queue of encoded messages and its drop counter."""

    def __init__(self, connection: ServerConnection, queue_size: int) -> None:
        self.connection = connection
        self.queue: deque[str] = deque(maxlen=queue_size)
        self.ready = asyncio.Event()
        self.dropped = 0  # not yet reported to the client
        self.dropped_total = 0
        self.sender: asyncio.Task | None = None
        self.send_since: float | None = None  # monotonic time the pending send began

    def put(self, text: str) -> None:
        if len(self.queue) == self.queue.maxlen:  # append() drops the oldest
            self.dropped += 1
            self.dropped_total += 1
        self.queue.append(text)
        self.ready.set()


class _RedactToken(logging.Filter):
    """Keeps the token out of websockets' debug logs (request line and headers)."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if self.token in text:
            record.msg, record.args = text.replace(self.token, "<token>"), None
        return True


class FeedServer:
    """Websocket feed and web page on one port; see the module docstring.

    Run it on an asyncio loop: ``await start()``, then ``publish()`` from that loop or
    ``publish_threadsafe()`` from any thread, then publish ``end_message(...)`` and
    ``await close()``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 8765, *, hello: dict[str, Any],
                 token: str | None = None, allowed_origins: list[str] | None = None,
                 queue_size: int = 256, max_message_bytes: int = 4096,
                 open_timeout_s: float = 10.0, close_timeout_s: float = 2.0,
                 stall_timeout_s: float | None = 30.0,
                 web_root: Path | None = WEB_ROOT, log: Callable[[str], None] | None = None) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if token is not None and not token:
            raise ValueError("token must be a non-empty string or None")
        self.host, self.port = host, port
        self.token = token
        self.allowed_origins = allowed_origins
        self.queue_size = queue_size
        self.max_message_bytes = max_message_bytes
        self.open_timeout_s, self.close_timeout_s = open_timeout_s, close_timeout_s
        self.stall_timeout_s = stall_timeout_s  # None: keep a client that takes nothing forever
        self.stalled_clients = 0  # dropped because a send waited stall_timeout_s
        self.web_root = web_root
        self.log = log or (lambda text: print(text, file=sys.stderr))
        self.ignored_messages = 0  # client messages that were not a ping
        self._hello_text = encode_message(hello)
        self._clients: set[_Client] = set()
        self._server: Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._close_reason = ""
        self._redact: logging.Filter | None = None
        self._watchdog: asyncio.Task | None = None

    @property
    def url(self) -> str:
        return f"ws://{self._netloc()}{WS_PATH}"

    @property
    def http_url(self) -> str:
        return f"http://{self._netloc()}/"

    @property
    def clients(self) -> int:
        """Connected clients that passed authentication and the handshake."""
        return len(self._clients)

    def client_stats(self) -> list[dict[str, Any]]:
        """Per client: its address ("host:port"), messages in its queue, dropped so far,
        bytes in its write buffer."""
        return [{"peer": _peer(c.connection), "queued": len(c.queue), "dropped": c.dropped_total,
                 "buffered_bytes": c.connection.transport.get_write_buffer_size()}
                for c in self._clients]

    async def start(self) -> None:
        """Bind and serve; with ``port=0`` the OS picks a free port, then ``self.port`` is it."""
        self._loop = asyncio.get_running_loop()
        logger = logging.getLogger("c2p_stream.feed")
        if self.token is not None:
            self._redact = _RedactToken(self.token)
            logger.addFilter(self._redact)
        origins = None if self.allowed_origins is None else [*self.allowed_origins, None]
        self._server = await serve(
            self._handle, self.host, self.port, process_request=self._process_request,
            origins=origins, max_size=self.max_message_bytes, open_timeout=self.open_timeout_s,
            close_timeout=self.close_timeout_s, compression=None, logger=logger)
        self.port = self._server.sockets[0].getsockname()[1]
        if self.stall_timeout_s is not None:
            self._watchdog = asyncio.create_task(self._drop_stalled_clients())
        if not is_loopback(self.host) and self.token is None:
            self.log(f"feed: WARNING: listening on {self.host or 'all interfaces'}:{self.port} "
                     "without a token; anyone who can reach this port can read the labels")

    def publish(self, message: dict[str, Any]) -> None:
        """Queue ``message`` for every client; call on the server's loop. Never awaits."""
        self._fan_out(encode_message(message))

    def publish_threadsafe(self, message: dict[str, Any]) -> None:
        """publish() from any thread (the engine worker); a no-op once close() has begun."""
        if self._loop is None or self._closing:
            return
        text = encode_message(message)  # here, so the loop thread does not pay for it
        try:
            self._loop.call_soon_threadsafe(self._fan_out, text)
        except RuntimeError:  # loop closed
            pass

    def _fan_out(self, text: str) -> None:
        for client in self._clients:
            client.put(text)

    async def close(self, reason: str = "shutdown") -> None:
        """Stop accepting, let each client drain its queue, close it with 1001, stop.

        Publish ``end_message(...)`` before calling. Clients that cannot take their
        messages within ``close_timeout_s`` are cut off (TCP abort, no close frame).
        """
        if self._server is None or self._closing:
            return
        self._closing, self._close_reason = True, reason
        self._server.close(close_connections=False)  # refuses new connections (503)
        senders = {c.sender for c in self._clients if c.sender is not None}
        for client in self._clients:
            client.ready.set()
        pending: set[asyncio.Task] = set()
        if senders:
            _, pending = await asyncio.wait(senders, timeout=self.close_timeout_s)
        for client in list(self._clients):
            if client.sender in pending and client.connection.transport is not None:
                client.sender.cancel()
                client.connection.transport.abort()
        try:
            await asyncio.wait_for(self._server.wait_closed(), self.close_timeout_s)
        except asyncio.TimeoutError:
            self.log("feed: some connections did not close in time")
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._redact is not None:
            logging.getLogger("c2p_stream.feed").removeFilter(self._redact)

    def _netloc(self) -> str:
        host = self.host or "0.0.0.0"
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def _authorized(self, request: Request, query: str) -> bool:
        expected = self.token.encode()
        offered = parse_qs(query).get("token", [])
        for value in request.headers.get_all("Authorization"):
            scheme, _, credentials = value.partition(" ")
            if scheme.lower() == "bearer":
                offered.append(credentials.strip())
        # Compare every candidate, so timing does not tell which one matched.
        return any([hmac.compare_digest(value.encode(), expected) for value in offered])

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Before the handshake: token check on /ws, static files elsewhere."""
        path, _, query = request.path.partition("?")
        if path == WS_PATH:
            if self.token is not None and not self._authorized(request, query):
                response = connection.respond(HTTPStatus.UNAUTHORIZED, "Unauthorized\n")
                response.headers["WWW-Authenticate"] = "Bearer"
                return response
            return None  # websockets checks Origin and Upgrade next
        if request.method != "GET":
            response = connection.respond(HTTPStatus.METHOD_NOT_ALLOWED, "Method Not Allowed\n")
            response.headers["Allow"] = "GET"
            return response
        target = None
        if self.web_root is not None and "upgrade" not in request.headers:
            target = resolve_static(self.web_root, path)
        if target is None:
            return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        body = target.read_bytes()
        content_type = CONTENT_TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0]
        headers = Headers([
            ("Date", formatdate(usegmt=True)), ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Content-Type", content_type or "application/octet-stream"),
            ("Cache-Control", "no-cache"), ("X-Content-Type-Options", "nosniff"),
            ("Content-Security-Policy", CSP)])
        return Response(HTTPStatus.OK.value, HTTPStatus.OK.phrase, headers, body)

    async def _handle(self, connection: ServerConnection) -> None:
        """One client: register, start its sender, answer its messages, unregister."""
        sock = connection.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        client = _Client(connection, self.queue_size)
        self._clients.add(client)
        try:
            client.sender = asyncio.create_task(self._send(client))
            async for raw in connection:
                reply = handle_client_message(raw)
                if reply is None:
                    self.ignored_messages += 1
                else:
                    client.put(encode_message(reply))
        except ConnectionClosed:
            pass  # e.g. 1009 for an oversize message: this client only
        finally:
            self._clients.discard(client)
            if client.sender is not None and not client.sender.done():
                client.sender.cancel()

    async def _send(self, client: _Client) -> None:
        """hello, then the queue; a gap message before a message that followed drops."""
        connection = client.connection
        try:
            await self._send_one(client, self._hello_text)
            while True:
                while client.queue:
                    text = client.queue.popleft()
                    if client.dropped:  # all of them were older than `text`
                        dropped, client.dropped = client.dropped, 0
                        await self._send_one(client, encode_message(gap_message(dropped)))
                    await self._send_one(client, text)  # waits while the write buffer is full
                if self._closing:
                    break
                client.ready.clear()
                await client.ready.wait()
            await connection.close(GOING_AWAY, self._close_reason)
        except ConnectionClosed:
            pass
        except Exception as exc:  # a bug here must not take the server down
            self.log(f"feed: sender failed: {exc!r}")
            await connection.close(1011, "internal error")

    async def _send_one(self, client: _Client, text: str) -> None:
        """send(), timed for the stall watchdog; raises ConnectionClosed once the client is dropped."""
        client.send_since = time.monotonic()
        try:
            await client.connection.send(text)
        finally:
            client.send_since = None

    async def _drop_stalled_clients(self) -> None:
        """Drops each client whose pending send has waited over stall_timeout_s on a full write
        buffer; checks every quarter of it (at most every second). One task, not a timer per send."""
        while True:
            await asyncio.sleep(min(1.0, self.stall_timeout_s / 4))
            now = time.monotonic()
            for client in list(self._clients):
                if client.send_since is not None and now - client.send_since > self.stall_timeout_s:
                    client.send_since = None
                    self.stalled_clients += 1
                    self.log(f"feed: dropped client {_peer(client.connection)}: "
                             f"it took no data for {self.stall_timeout_s:g} s")
                    client.connection.transport.abort()  # a close frame could not get through either


def _peer(connection: ServerConnection) -> str:
    address = connection.remote_address
    return f"{address[0]}:{address[1]}" if address else "?"
