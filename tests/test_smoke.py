"""A first end-to-end pass through the default gateway."""

from typing import Any

from aiohttp.test_utils import TestClient

from tests.support import mint


async def test_gateway_public_route_passes_without_token(gateway: TestClient[Any, Any]) -> None:
    resp = await gateway.get("/public/hello")
    assert resp.status == 200
    assert (await resp.json())["hello"] == "world"


async def test_gateway_required_route_without_token_is_401(gateway: TestClient[Any, Any]) -> None:
    resp = await gateway.get("/api/whoami")
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="gateway"'
    assert (await resp.json())["error"] == "missing_token"


async def test_gateway_required_route_with_token_adds_identity(gateway: TestClient[Any, Any]) -> None:
    resp = await gateway.get("/api/whoami", headers={"Authorization": f"Bearer {mint()}"})
    assert resp.status == 200
    seen = (await resp.json())["headers"]
    assert seen["X-User-Id"] == "user-1"
    assert seen["X-Session-Id"] == "session-1"
    assert "Authorization" not in seen
