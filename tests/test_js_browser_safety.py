"""The JavaScript spoke and the hub's browser safety (docs/websocket.md "Browsers",
docs/javascript.md "Authentication in browsers"), from Debian's Chromium and from Node,
against a real WebSocketHub: allowed origins, the alkpubsub.v1 subprotocol, refusals
closed in band (4401/4403), tokens in a second subprotocol, and the three browser auth
recipes of examples/browser_auth.py."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from alkpubsub.transports.ws import ConnectRequest, WebSocketHub

from .js_support import ROOT, JsCommandError, JsDriver, static_server
from .test_js_spoke import spawn, state

EXAMPLE = ROOT / "examples" / "browser_auth.py"
ARTIFACTS = ROOT / "artifacts"
FAST_RETRIES = {"backoffInitialMs": 100, "backoffMaxMs": 400}


def token_of(request: ConnectRequest) -> list[str]:
    return [p.removeprefix("token.") for p in request.subprotocols if p.startswith("token.")]


# -- the subprotocol -------------------------------------------------------------------------


async def test_the_spoke_offers_alkpubsub_v1_and_the_hub_selects_it(js: JsDriver) -> None:
    """Offered first, before the `protocols` option's (without duplicates); `spoke.protocol`
    is what the hub selected, null once closed; `subprotocol: null` offers none."""
    offered: list[tuple[str, ...]] = []

    def authenticate(request: ConnectRequest) -> bool:
        offered.append(request.subprotocols)
        return True

    async with WebSocketHub(port=0, authenticate=authenticate) as hub:
        await spawn(js, "plain", hub.url)
        await spawn(js, "more", hub.url, protocols=["chat.v2", "alkpubsub.v1"])
        await spawn(js, "none", hub.url, subprotocol=None)
        assert offered == [("alkpubsub.v1",), ("alkpubsub.v1", "chat.v2"), ()]
        protocols = [(await state(js, name))["protocol"] for name in ("plain", "more", "none")]
        assert protocols == ["alkpubsub.v1", "alkpubsub.v1", ""]
        await js.request("close", spoke="plain")
        assert (await state(js, "plain"))["protocol"] is None
        with pytest.raises(JsCommandError) as raised:
            await js.request("create", spoke="bad", url=hub.url, options={"protocols": ["a b"]})
        assert raised.value.error["name"] == "TypeError"


# -- origins -----------------------------------------------------------------------------------


async def test_a_page_of_another_origin_never_reaches_the_hub(browser_js: JsDriver) -> None:
    """The harness page from two servers on 127.0.0.1 (two ports: two origins). The hub
    allows one; the other page's spoke sees failed attempts (a browser hides the HTTP
    403), keeps backing off, never connects, and the hub never counts a connection."""
    with static_server() as allowed, static_server() as other:
        async with WebSocketHub(port=0, allowed_origins=[allowed]) as hub:
            for page, base in (("mine", allowed), ("theirs", other)):
                await browser_js.request("harness", page=page, url=f"{base}/js/harness.html")
            await spawn(browser_js, "mine", hub.url)
            await browser_js.request("create", spoke="theirs", url=hub.url, options=FAST_RETRIES)
            errors = await browser_js.wait_for("error", "theirs", count=4)
            theirs = await state(browser_js, "theirs")
            await browser_js.request("close", spoke="theirs")
            assert hub.stats.connections == 1
            assert [peer.headers.get("Origin") for peer in hub.peers] == [allowed]
    assert {(e["error"]["name"], e["error"]["final"]) for e in errors} == {
        ("ConnectionFailedError", None)
    }
    assert theirs["stats"]["attempts"] >= 4
    assert (theirs["stats"]["connections"], theirs["stats"]["welcomes"]) == (0, 0)
    assert (theirs["connected"], theirs["closed"]) == (False, False)
    assert browser_js.reported("connect", "theirs") == []
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(errors)]
    # Delays are in [50, 100], [100, 200], [200, 400] ms (equal jitter); allow timer slack.
    assert all(gap >= low for gap, low in zip(gaps, (45, 95, 195), strict=True)), gaps


async def test_a_node_spoke_sends_no_origin_and_allowed_origins_do_not_apply(
    node_js: JsDriver,
) -> None:
    """`ws` sends no Origin unless told (a program could forge one anyway): a Node spoke
    is not a web page, so `allowed_origins` lets it through; `authenticate` is its gate."""
    async with WebSocketHub(port=0, allowed_origins=["https://app.example.com"]) as hub:
        await spawn(node_js, "s", hub.url)
        assert [peer.headers.get("Origin") for peer in hub.peers] == [None]


# -- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("verdict", "code"), [(401, 4401), (403, 4403), (False, 4403)])
async def test_a_refused_browser_is_closed_in_band_and_its_spoke_stops(
    js: JsDriver, verdict: bool | int, code: int
) -> None:
    """`authenticate` refuses a request with an Origin that offers alkpubsub.v1 (a
    browser; Node's `ws` with an Origin header): the upgrade completes and the hub
    closes at once with 4401/4403, which the spoke reports as final after one attempt."""
    origins: list[str | None] = []

    def authenticate(request: ConnectRequest) -> bool | int:
        origins.append(request.headers.get("Origin"))
        return verdict

    headers = {"Origin": "http://127.0.0.1"} if js.name == "node" else None
    async with WebSocketHub(port=0, authenticate=authenticate) as hub:
        options = {"backoffInitialMs": 10, "backoffMaxMs": 20}
        await js.request("create", spoke="s", url=hub.url, headers=headers, options=options)
        (error,) = [e["error"] for e in await js.wait_for("error", "s")]
        with pytest.raises(JsCommandError) as raised:
            await js.request("ready", spoke="s")
        after = await state(js, "s")
        await js.request("flush", spoke="s")  # closed: at once
        assert (hub.stats.connections, hub.stats.received_frames) == (0, 0)
    assert (error["name"], error["closeCode"], error["final"]) == (
        "ConnectionRefusedByHubError", code, True,
    )  # fmt: skip
    assert raised.value.error["name"] == "ConnectionRefusedByHubError"
    assert (after["closed"], after["protocol"]) == (True, None)
    stats = after["stats"]
    assert (stats["attempts"], stats["connections"], stats["welcomes"]) == (1, 1, 0)
    assert len(origins) == 1
    assert origins[0] is not None
    assert js.reported("disconnect", "s") == []


# -- tokens ------------------------------------------------------------------------------------


async def test_a_token_rides_in_a_second_subprotocol_fetched_at_every_connection(
    js: JsDriver,
) -> None:
    """`token` as a function: called at every connection attempt; the hub's authenticate
    sees ("alkpubsub.v1", "token.<value>") and selects only alkpubsub.v1. Tokens are
    single use here, so the reconnection works only with a fresh one."""
    unused = {"first.Zm9v", "second.YmFy_-~"}
    presented: list[list[str]] = []

    def authenticate(request: ConnectRequest) -> bool | int:
        tokens = token_of(request)
        presented.append(tokens)
        assert request.subprotocols[0] == "alkpubsub.v1"
        if len(tokens) == 1 and tokens[0] in unused:
            unused.remove(tokens[0])
            return True
        return 401

    async with WebSocketHub(port=0, authenticate=authenticate) as hub:
        tokens = [{"value": "first.Zm9v"}, {"value": "second.YmFy_-~"}]
        await js.request("create", spoke="s", url=hub.url, tokens=tokens, options=FAST_RETRIES)
        first_id = await js.request("ready", spoke="s")
        assert (await state(js, "s"))["protocol"] == "alkpubsub.v1"  # the token is not echoed
        assert await hub.disconnect_peer(first_id, 1012, "restarting")
        await js.wait_for("connect", "s", count=2)
        after = await state(js, "s")
    assert presented == [["first.Zm9v"], ["second.YmFy_-~"]]
    assert [e["call"] for e in js.reported("token", "s")] == [0, 1]
    assert (after["protocol"], after["stats"]["attempts"]) == ("alkpubsub.v1", 2)
    assert js.reported("error", "s") == []


async def test_an_unusable_token_fails_the_attempt_before_the_hub_sees_it(js: JsDriver) -> None:
    """A token must be RFC 7230 token characters (a static one is checked at once, and
    never shown in the message); a token function's bad value, exception or late answer
    fails that attempt only: reported, retried with backoff, the late answer ignored."""
    seen: list[tuple[str, ...]] = []

    def authenticate(request: ConnectRequest) -> bool:
        seen.append(request.subprotocols)
        return True

    async with WebSocketHub(port=0, authenticate=authenticate) as hub:
        with pytest.raises(JsCommandError) as raised:
            await js.request("create", spoke="s0", url=hub.url, options={"token": "c2Vj+cmV0=="})
        assert raised.value.error["name"] == "TypeError"
        assert "base64url" in raised.value.error["message"]
        assert "c2Vj" not in raised.value.error["message"]
        tokens = [
            {"value": "with space"},
            {},  # answers null: a forgotten `return` is no attempt without a token
            {"error": "not signed in"},
            {"value": "late", "delayMs": 1200},
            {"value": "good"},
        ]
        options = {"backoffInitialMs": 20, "backoffMaxMs": 40, "connectTimeoutMs": 800}
        await js.request("create", spoke="s", url=hub.url, tokens=tokens, options=options)
        await js.request("ready", spoke="s")
        await js.wait_until(  # the late token came, after the attempt gave up on it
            lambda events: (
                any(e.get("event") == "token-answered" and e["call"] == 3 for e in events) or None
            ),
            "the late token",
        )
        await js.request("flush", spoke="s")
        after = await state(js, "s")
    errors = [e["error"] for e in js.reported("error", "s")]
    assert [e["name"] for e in errors] == ["ConnectionFailedError"] * 4
    assert "cannot carry" in errors[0]["message"]
    assert "with space" not in errors[0]["message"]
    assert "must be a non-empty string, not null" in errors[1]["message"]
    assert "not signed in" in errors[2]["message"]
    assert "no token within 800 ms" in errors[3]["message"]
    assert seen == [("alkpubsub.v1", "token.good")]
    assert (after["stats"]["attempts"], after["stats"]["connections"]) == (5, 1)


# -- the recipes of examples/browser_auth.py --------------------------------------------------


def load_example() -> Any:
    spec = importlib.util.spec_from_file_location("browser_auth", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["browser_auth"] = module
    spec.loader.exec_module(module)
    return module


class Clock:
    """The example's token clock, moved forward by the test (tokens then expire)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest_asyncio.fixture
async def demo() -> AsyncIterator[Any]:
    example = load_example()
    async with example.BrowserAuthDemo(port=0, hub_port=0, token_lifetime=60) as demo:
        demo.signer.clock = Clock()
        yield demo


async def test_the_three_browser_auth_recipes_of_the_example(
    browser_js: JsDriver, demo: Any
) -> None:
    """In Chromium: a forged token is refused (4401, final) even with the session cookie;
    the session cookie set by the web app reaches the hub on another port; a query token
    and a subprotocol token are accepted. After the tokens expired and the hub dropped
    every connection, the cookie and subprotocol spokes come back (the latter with a
    fresh token); the query spoke, whose URL holds the expired token, is refused."""
    page = "auth"

    def status(recipe: str, text: str) -> dict[str, Any]:
        return {"page": page, "selector": f"#{recipe} .status", "text": text}

    await browser_js.request("goto", page=page, url=demo.page_url)
    await browser_js.request("fill", page=page, selector="#user", value="alice")
    await browser_js.request("click", page=page, selector="#sign-in-button")
    await browser_js.request("waitForText", page=page, selector="#who", text="signed in as alice")
    assert await browser_js.request("evaluate", page=page, expression="document.cookie") == ""

    for recipe in ("forged", "cookie", "query", "subprotocol"):
        await browser_js.request("click", page=page, selector=f"button[data-recipe={recipe}]")
        expected = "refused (4401)" if recipe == "forged" else "online (#1)"
        await browser_js.request("waitForText", **status(recipe, expected))
    assert [(a.user, a.recipe) for a in demo.admissions] == [
        ("alice", "cookie"), ("alice", "query"), ("alice", "subprotocol"),
    ]  # fmt: skip
    shown = await browser_js.request("text", page=page, selector="#subprotocol .status")
    assert "subprotocol alkpubsub.v1" in shown
    assert len(demo.hub.peers) == 3

    demo.signer.clock.now += 120  # every token issued so far has expired
    for peer in list(demo.hub.peers):
        assert await demo.hub.disconnect_peer(peer.spoke_id, 1012, "restarting")
    for recipe in ("cookie", "subprotocol"):
        await browser_js.request("waitForText", **status(recipe, "online (#2)"))
    await browser_js.request("waitForText", **status("query", "refused (4401)"))
    again = demo.admissions[3:]
    assert sorted((a.user, a.recipe) for a in again) == [
        ("alice", "cookie"), ("alice", "subprotocol"),
    ]  # fmt: skip
    nonces = [a.token_nonce for a in demo.admissions if a.recipe == "subprotocol"]
    assert len(set(nonces)) == 2  # a fresh token for the reconnection
    closed = "Object.entries(window.spokes).map(([recipe, spoke]) => [recipe, spoke.closed])"
    assert dict(await browser_js.request("evaluate", page=page, expression=closed)) == {
        "forged": True, "cookie": False, "query": True, "subprotocol": False,
    }  # fmt: skip
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "browser-auth.png"
    await browser_js.request("screenshot", page=page, path=str(shot))
    assert browser_js.reported("pageerror") == []
