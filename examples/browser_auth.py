"""Three ways for a web page to authenticate to alkpubsub's WebSocket hub.

    pip install -e '.[ws]' aiohttp
    python examples/browser_auth.py                     # then open the printed URL
    python examples/browser_auth.py --port 0 --hub-port 0

A web app (aiohttp) serves the page (examples/web/auth.html) and signs users in; the
hub listens on a port of its own, accepts pages of the web app's origin only
(``allowed_origins``), and its ``authenticate`` accepts any one of:

1. the session cookie the web app set at sign-in: cookies belong to a host, not to a
   port, so the browser sends it to the hub on the same host too;
2. a short-lived signed token in the URL (``?token=...``);
3. a short-lived signed token offered as a second WebSocket subprotocol
   (``token.<value>``), which the JS spoke fetches afresh at every (re)connection.

A token that is presented and does not verify is refused even when a valid cookie
comes with it. Refused pages are closed with 4401, which the JS spoke treats as final.
Open the printed URL: a page from any other origin (``http://localhost:...`` is one)
is refused before the upgrade. See docs/javascript.md and docs/websocket.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import importlib.resources
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aiohttp import web

from alkpubsub.transports.ws import ConnectRequest, WebSocketHub

PAGE_DIR = Path(__file__).resolve().parent / "web"
SESSION_COOKIE = "session"
#: The JS spoke's `token` option offers "token." + token as a second subprotocol.
TOKEN_PREFIX = "token."


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    """Short-lived tokens ``<user>.<expires>.<nonce>.<signature>``, signed with a key
    only the server knows. Every part is base64url or digits, joined by dots: RFC 7230
    token characters, so a token rides in a subprotocol and a URL as it is."""

    def __init__(self, lifetime: float, clock: Callable[[], float] = time.time) -> None:
        self.lifetime = lifetime
        self.clock = clock
        self._key = secrets.token_bytes(32)

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())

    def issue(self, user: str) -> str:
        expires = int(self.clock() + self.lifetime)
        body = f"{_b64(user.encode())}.{expires}.{secrets.token_urlsafe(9)}"
        return f"{body}.{self._sign(body)}"

    def verify(self, token: str) -> tuple[str, str] | None:
        """(user, nonce) of a genuine token that has not expired, else None."""
        body, _, signature = token.rpartition(".")
        if not hmac.compare_digest(signature.encode(), self._sign(body).encode()):
            return None
        try:
            user, expires, nonce = body.split(".")
            if int(expires) < self.clock():
                return None
            return _unb64(user).decode(), nonce
        except ValueError:  # not three parts, not a number, not UTF-8
            return None


@dataclass(frozen=True)
class Admission:
    """Who the hub let in, and by which recipe (never the credential itself)."""

    user: str
    recipe: str  # "cookie", "query" or "subprotocol"
    token_nonce: str | None = None


class BrowserAuthDemo:
    """The web app and the hub, in one process (they share the session store here; in
    a deployment the hub would read the web app's sessions from a shared store)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8080,
        hub_port: int = 8081,
        token_lifetime: float = 60.0,
    ) -> None:
        self.host, self.port, self.hub_port = host, port, hub_port
        self.signer = TokenSigner(token_lifetime)
        self.sessions: dict[str, str] = {}  # session id -> user
        self.admissions: list[Admission] = []
        self.page_url = ""
        self._runner: web.AppRunner | None = None
        self._hub: WebSocketHub | None = None

    @property
    def hub(self) -> WebSocketHub:
        assert self._hub is not None, "not started"
        return self._hub

    # -- the hub's policy ------------------------------------------------------------------

    def identify(self, request: ConnectRequest) -> Admission | None:
        offered = [
            p[len(TOKEN_PREFIX) :] for p in request.subprotocols if p.startswith(TOKEN_PREFIX)
        ]
        in_query = parse_qs(urlsplit(request.path or "").query).get("token", [])
        for recipe, tokens in (("subprotocol", offered), ("query", in_query)):
            if tokens:
                verified = self.signer.verify(tokens[0]) if len(tokens) == 1 else None
                # A presented token decides: a forged or expired one is refused outright.
                return None if verified is None else Admission(verified[0], recipe, verified[1])
        cookies: SimpleCookie = SimpleCookie()
        try:
            cookies.load(request.headers.get("Cookie", ""))
        except CookieError:
            return None
        session = cookies.get(SESSION_COOKIE)
        user = None if session is None else self.sessions.get(session.value)
        return None if user is None else Admission(user, "cookie")

    def authenticate(self, request: ConnectRequest) -> bool | int:
        admission = self.identify(request)
        if admission is None:
            return 401  # a browser gets close code 4401: its JS spoke stops
        self.admissions.append(admission)
        print(f"hub: {admission.user} connected with the {admission.recipe} recipe", flush=True)
        return True

    # -- the web app ---------------------------------------------------------------------

    def _user_of(self, request: web.Request) -> str | None:
        return self.sessions.get(request.cookies.get(SESSION_COOKIE, ""))

    async def _login(self, request: web.Request) -> web.Response:
        body: Any = await request.json()
        user = str(body.get("user", "")).strip()[:40] if isinstance(body, dict) else ""
        if not user:
            raise web.HTTPBadRequest(text="a user name, please")
        session_id = secrets.token_urlsafe(24)
        self.sessions[session_id] = user
        response = web.json_response({"user": user})
        # Not readable by the page's scripts; sent to this host only (any port), never
        # with another site's requests. Add secure=True when served over https.
        response.set_cookie(SESSION_COOKIE, session_id, httponly=True, samesite="Strict", path="/")
        return response

    async def _token(self, request: web.Request) -> web.Response:
        user = self._user_of(request)
        if user is None:
            raise web.HTTPUnauthorized(text="sign in first")
        return web.json_response({"token": self.signer.issue(user)})

    def _app(self) -> web.Application:
        static = importlib.resources.files("alkpubsub") / "static"

        async def page(request: web.Request) -> web.FileResponse:
            return web.FileResponse(PAGE_DIR / "auth.html")

        async def module(request: web.Request) -> web.Response:
            text = (static / "alkpubsub.js").read_text(encoding="utf-8")
            return web.Response(text=text, content_type="text/javascript")

        async def config(request: web.Request) -> web.Response:
            return web.json_response({"hub": self.hub.url})

        app = web.Application()
        app.router.add_get("/", page)
        app.router.add_get("/static/alkpubsub.js", module)
        app.router.add_get("/config", config)
        app.router.add_post("/login", self._login)
        app.router.add_post("/token", self._token)
        app.router.add_static("/web/", PAGE_DIR)
        return app

    # -- life cycle ----------------------------------------------------------------------

    async def __aenter__(self) -> BrowserAuthDemo:
        self._runner = web.AppRunner(self._app(), handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        bound: Any = self._runner.addresses[0]
        origin = f"http://{bound[0]}:{bound[1]}"
        self.page_url = f"{origin}/"
        # Only the web app's pages may connect: a page of any other site could
        # otherwise ride on the browser's cookie for this host.
        self._hub = WebSocketHub(
            host=self.host,
            port=self.hub_port,
            allowed_origins=[origin],
            authenticate=self.authenticate,
        )
        await self._hub.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._hub is not None:
            await self._hub.aclose()
        if self._runner is not None:
            await self._runner.cleanup()


async def serve(host: str, port: int, hub_port: int, token_lifetime: float) -> None:
    async with BrowserAuthDemo(host, port, hub_port, token_lifetime) as demo:
        print(f"web app: {demo.page_url}", flush=True)
        print(f"hub: {demo.hub.url}", flush=True)
        await asyncio.Event().wait()  # until interrupted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="the web app's; 0: any free port")
    parser.add_argument("--hub-port", type=int, default=8081, help="the hub's; 0: any free port")
    parser.add_argument("--token-lifetime", type=float, default=60.0, help="seconds")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends the example
        asyncio.run(serve(args.host, args.port, args.hub_port, args.token_lifetime))


if __name__ == "__main__":
    main()
