"""The web server: pages, the JSON API under /api/, Server-Sent Events, the package's static files.

aiohttp serves it in the agent's own event loop (docs/web.md says why aiohttp). Every answer carries
a Content-Security-Policy that allows scripts, styles and connections from the agent alone: the
page works without internet and runs no inline script. Everything is read-only, except the demo's
fault switches, which exist only when the demo hands its plant over (`DemoControls`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import mimetypes
import os
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, Protocol
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from edge_agent.web.config import WebConfig, is_loopback
from edge_agent.web.state import AgentLike, LiveState

log = logging.getLogger(__name__)

#: Allows what the page loads from the agent itself and nothing else: no inline script or style, no CDN.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
_SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
#: Cookie that carries proof of the token once the page was opened with ?token=...
COOKIE = "edge_agent_web"
_STREAM_KEEPALIVE_S = 15.0
#: How many flushes of the live state run per update interval while no page asks (bounds what it holds).
_FLUSHES_PER_INTERVAL = 2

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class DemoControls(Protocol):
    """What the demo lends the page: its machines' faults, switched while it runs."""

    def faults(self) -> dict[str, list[dict[str, Any]]]:
        """Machine (device name) -> its faults: name, description, active."""

    def set_fault(self, machine: str, fault: str, on: bool) -> None:
        """Switch one fault of one machine; ValueError names what is unknown."""


def _static_files() -> dict[str, tuple[bytes, str, str]]:
    """name -> (bytes, content type, ETag) of every file in the package's static folder, read once."""
    files: dict[str, tuple[bytes, str, str]] = {}
    folder = resources.files("edge_agent.web") / "static"
    for item in folder.iterdir():
        if not item.is_file() or item.name.startswith("."):
            continue
        body = item.read_bytes()
        ctype = mimetypes.guess_type(item.name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype in ("application/javascript", "image/svg+xml"):
            ctype += "; charset=utf-8"
        files[item.name] = (body, ctype, '"' + hashlib.sha256(body).hexdigest()[:16] + '"')
    return files


class WebServer:
    """The agent's web page: start() in the agent's loop, stop() before the agent stops."""

    def __init__(self, agent: AgentLike, config: WebConfig, demo: DemoControls | None = None) -> None:
        self.agent = agent
        self.config = config
        self.demo = demo
        self.state = LiveState(agent, chart_points=config.chart_points)
        self.files = _static_files()
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._cache: dict[str, tuple[float, bytes]] = {}
        token = config.token.get_secret_value() if config.token is not None else None
        # the cookie holds a digest of the token, never the token itself
        self._cookie = (
            hmac.new(token.encode(), b"edge-agent web session", "sha256").hexdigest() if token else None
        )
        self._token = token
        self.url = ""

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> str:
        """Listen, subscribe to the agent's output, and return the page's URL."""
        app = web.Application(middlewares=[self._headers, self._guard])
        app.on_response_prepare.append(self._server_name)
        app.router.add_get("/", self._page)
        app.router.add_get("/alarms", self._page)
        app.router.add_get("/sinks", self._page)
        app.router.add_get("/machines/{name}", self._machine_page)
        app.router.add_get("/static/{file}", self._static)
        app.router.add_get("/api/overview", self._json(lambda _r: self.state.overview()))
        app.router.add_get("/api/overview/stream", self._stream(lambda _r: self.state.overview()))
        app.router.add_get("/api/alarms", self._json(lambda _r: self.state.alarms()))
        app.router.add_get("/api/alarms/stream", self._stream(lambda _r: self.state.alarms()))
        app.router.add_get("/api/sinks", self._json(lambda _r: self.state.sinks()))
        app.router.add_get("/api/sinks/stream", self._stream(lambda _r: self.state.sinks()))
        app.router.add_get("/api/machines/{name}", self._json(self._machine))
        app.router.add_get("/api/machines/{name}/stream", self._stream(self._machine))
        app.router.add_get("/api/demo", self._demo_faults)
        app.router.add_post("/api/demo/faults", self._demo_switch)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, self.config.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            raise OSError(
                exc.errno,
                f"the web page cannot listen on {self.config.address}: {reason}; "
                "choose another port with --web HOST:PORT or [web] port",
            ) from None
        self._runner = runner
        self.state.attach()
        port = _bound_port(runner, self.config.port)
        host = self.config.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "localhost") else host
        shown = f"[{shown}]" if ":" in shown else shown
        self.url = f"http://{shown}:{port}/"
        self._flusher = asyncio.create_task(self._flush_every(), name="web-state-flush")
        return self.url

    async def stop(self) -> None:
        """End the open streams and stop listening."""
        self._closing.set()
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _flush_every(self) -> None:
        # keeps the state's pending batches short when no page asks
        while True:
            await asyncio.sleep(self.config.update_interval / _FLUSHES_PER_INTERVAL)
            try:
                self.state.flush()
            except Exception:
                log.exception("web page: updating its live state failed")

    # ------------------------------------------------------------------ middlewares
    @web.middleware
    async def _headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            exc.headers.update(_SECURITY_HEADERS)
            raise
        response.headers.update(_SECURITY_HEADERS)
        return response

    @staticmethod
    async def _server_name(request: web.Request, response: web.StreamResponse) -> None:
        # the default names the Python and aiohttp versions: nothing a visitor needs
        response.headers["Server"] = "edge-agent"

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._token is None:
            # loopback: refuse a Host that is not loopback, so a site rebinding its DNS name to
            # 127.0.0.1 cannot read the page through a visitor's browser
            if not is_loopback(_hostname(request.host)):
                return web.Response(status=421, text="this page answers on a loopback address only\n")
            return await handler(request)
        given = request.query.get("token")
        if given is not None:
            if not hmac.compare_digest(given.encode(), self._token.encode()):
                return _unauthorized()
            # keep the proof in a cookie and drop the token from the address bar and history
            # one leading slash: `//host/...` would send the browser to another site
            location = "/" + request.path.lstrip("/")
            response = web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})
            response.set_cookie(COOKIE, self._cookie or "", httponly=True, samesite="Strict", path="/")
            return response
        bearer = request.headers.get("Authorization", "")
        if bearer.startswith("Bearer ") and hmac.compare_digest(bearer[7:].encode(), self._token.encode()):
            return await handler(request)
        cookie = request.cookies.get(COOKIE, "")
        if self._cookie and hmac.compare_digest(cookie.encode(), self._cookie.encode()):
            return await handler(request)
        return _unauthorized()

    # ------------------------------------------------------------------ pages and files
    async def _page(self, request: web.Request) -> web.StreamResponse:
        return self._file("index.html")

    async def _machine_page(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["name"] not in self.state.machine_names():
            raise web.HTTPNotFound(text=f"no machine {request.match_info['name']!r} in this agent's config\n")
        return self._file("index.html")

    async def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["file"]
        if name not in self.files or name == "index.html":
            raise web.HTTPNotFound(text="no such file\n")
        if request.headers.get("If-None-Match") == self.files[name][2]:
            return web.Response(status=304, headers={"ETag": self.files[name][2]})
        return self._file(name)

    def _file(self, name: str) -> web.Response:
        body, ctype, etag = self.files[name]
        # no-cache: the browser asks again each time (a 304 when unchanged), so a new agent version shows at once
        return web.Response(
            body=body, headers={"Content-Type": ctype, "ETag": etag, "Cache-Control": "no-cache"}
        )

    # ------------------------------------------------------------------ API
    def _machine(self, request: web.Request) -> dict[str, Any]:
        found = self.state.machine(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound(
                text=orjson.dumps({"error": f"no machine {request.match_info['name']!r}"}).decode(),
                content_type="application/json",
            )
        found["demo"] = self.demo is not None
        if self.demo is not None:
            found["faults"] = self.demo.faults().get(request.match_info["name"], [])
        return found

    def _json(self, view: Callable[[web.Request], dict[str, Any]]) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            return _json_response(self._render(request, view))

        return handler

    def _render(self, request: web.Request, view: Callable[[web.Request], dict[str, Any]]) -> bytes:
        """The view as JSON, computed at most twice per update interval whatever the number of pages."""
        key = request.path.removesuffix("/stream")
        now = asyncio.get_running_loop().time()
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < self.config.update_interval / 2:
            return hit[1]
        body = orjson.dumps(view(request), option=orjson.OPT_SERIALIZE_NUMPY)
        self._cache[key] = (now, body)
        return body

    def _stream(self, view: Callable[[web.Request], dict[str, Any]]) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            first = self._render(request, view)  # a 404 before the stream opens, not inside it
            response = web.StreamResponse(
                headers={
                    "Content-Type": "text/event-stream",
                    "Cache-Control": "no-cache",
                    "X-Accel-Buffering": "no",
                }
            )
            response.headers.update(_SECURITY_HEADERS)
            await response.prepare(request)
            with contextlib.suppress(ConnectionResetError):
                await self._send(request, response, view, first)
            return response

        return handler

    async def _send(
        self,
        request: web.Request,
        response: web.StreamResponse,
        view: Callable[[web.Request], dict[str, Any]],
        body: bytes,
    ) -> None:
        """Write the view whenever it changed, at most once per update interval, until the page or the agent goes."""
        interval = self.config.update_interval
        await response.write(b"retry: 2000\n\n")
        last, quiet = b"", 0.0
        while not self._closing.is_set():
            if body != last:
                await response.write(b"data: " + body + b"\n\n")
                last, quiet = body, 0.0
            elif quiet >= _STREAM_KEEPALIVE_S:
                await response.write(b": keep-alive\n\n")
                quiet = 0.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), interval)
            quiet += interval
            try:
                body = self._render(request, view)
            except web.HTTPNotFound:
                return  # the machine left the config with a reload

    async def _demo_faults(self, request: web.Request) -> web.StreamResponse:
        if self.demo is None:
            raise web.HTTPNotFound(text="fault switches exist in `edge-agent demo` only\n")
        return _json_response(orjson.dumps({"faults": self.demo.faults()}))

    async def _demo_switch(self, request: web.Request) -> web.StreamResponse:
        if self.demo is None:
            # read-only outside the demo
            raise web.HTTPMethodNotAllowed("POST", ["GET"], text="this agent's page is read-only\n")
        origin = request.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != request.host:
            raise web.HTTPForbidden(text="a switch comes from this page only\n")
        if request.content_type != "application/json":
            raise web.HTTPUnsupportedMediaType(text='send JSON: {"machine": ..., "fault": ..., "on": true}\n')
        try:
            body = await request.json(loads=orjson.loads)
            machine, fault, on = body["machine"], body["fault"], body["on"]
            if not (isinstance(machine, str) and isinstance(fault, str) and isinstance(on, bool)):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise web.HTTPBadRequest(
                text='send JSON: {"machine": NAME, "fault": NAME, "on": true or false}\n'
            ) from None
        try:
            self.demo.set_fault(machine, fault, on)
        except ValueError as exc:
            raise web.HTTPBadRequest(text=f"{exc}\n") from None
        log.warning(
            "demo: fault %s of %s switched %s from the web page", fault, machine, "on" if on else "off"
        )
        return _json_response(orjson.dumps({"faults": self.demo.faults()}))


def _json_response(body: bytes) -> web.Response:
    return web.Response(body=body, headers={"Content-Type": "application/json", "Cache-Control": "no-store"})


def _unauthorized() -> web.Response:
    return web.Response(
        status=401,
        text="this agent's page needs its token: open it once as http://HOST:PORT/?token=TOKEN\n",
        headers={"Cache-Control": "no-store"},
    )


def _hostname(host: str | None) -> str:
    """The host name of a Host header (`[::1]:8080` -> `::1`)."""
    try:
        return urlsplit(f"//{host or ''}").hostname or ""
    except ValueError:
        return ""


def _bound_port(runner: web.AppRunner, asked: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return asked
