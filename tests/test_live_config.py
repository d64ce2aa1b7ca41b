"""A reload (what SIGHUP calls) swaps one live config whole: authentication, CSRF, cookie names,
the forwarder and its identity headers all read the new one (issue 10: authentication kept the
startup config while the forwarder took the new one)."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from gateway.app import reload_app
from tests.conftest import MakeConfig, MakeGateway
from tests.support import FakeClock, mint

Client = TestClient[Any, Any]
NEW_ORIGIN = "https://new.example"


def _origin(client: Client) -> str:
    return f"http://127.0.0.1:{client.server.port}"


async def test_csrf_trusted_origins_apply_to_authentication_after_reload(
    make_gateway: MakeGateway, make_config: MakeConfig, clock: FakeClock
) -> None:
    client = await make_gateway(make_config())
    cookie = {"Cookie": f"access_token={mint(now=clock.now)}", "Origin": NEW_ORIGIN}
    assert (await client.post("/api/echo", data=b"x", headers=cookie)).status == 403
    restart = reload_app(client.server.app, make_config(csrf={"trusted_origins": [NEW_ORIGIN]}))
    assert restart == []
    resp = await client.post("/api/echo", data=b"x", headers=cookie)
    assert resp.status == 200, await resp.text()


async def test_cookie_name_and_identity_headers_change_together(
    make_gateway: MakeGateway, make_config: MakeConfig, clock: FakeClock
) -> None:
    client = await make_gateway(make_config())
    new = make_config(cookies={"access_name": "at2"}, identity_headers={"user_id": "X-Account-Id"})
    assert reload_app(client.server.app, new) == []
    token = mint(now=clock.now)
    # The old cookie name is no longer the access cookie: anonymous, so 401 on a required route.
    assert (await client.get("/api/whoami", headers={"Cookie": f"access_token={token}"})).status == 401
    resp = await client.get("/api/whoami", headers={"Cookie": f"at2={token}", "X-Account-Id": "forged",
                                                    "X_Account_Id": "forged"})  # fmt: skip
    assert resp.status == 200, await resp.text()
    headers = (await resp.json())["headers"]
    assert headers["X-Account-Id"] == "user-1"
    assert "X-User-Id" not in headers
    assert "at2" not in headers.get("Cookie", "")


async def test_token_issuer_and_lifetimes_apply_to_verification_and_issuing(
    make_gateway: MakeGateway, make_config: MakeConfig, clock: FakeClock
) -> None:
    client = await make_gateway(make_config())
    token = mint(now=clock.now)
    assert (await client.get("/api/whoami", headers={"Authorization": f"Bearer {token}"})).status == 200
    reload_app(client.server.app, make_config(tokens={"issuer": "gateway-2", "access_ttl": "5m"}))
    assert (await client.get("/api/whoami", headers={"Authorization": f"Bearer {token}"})).status == 401
    fresh = mint(now=clock.now, iss="gateway-2")
    assert (await client.get("/api/whoami", headers={"Authorization": f"Bearer {fresh}"})).status == 200


async def test_keys_bound_at_startup_are_reported(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await make_gateway(make_config())
    restart = reload_app(client.server.app, make_config(server={"host": "127.0.0.1", "port": 0, "workers": 2,
                                                                "public_origin": NEW_ORIGIN}))  # fmt: skip
    assert restart == ["server.workers"]
