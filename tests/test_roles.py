"""Roles on users end to end: in the token, to the upstream, and a change that bites within 1 s everywhere.

A change is made the way an operator makes it, from another process: a second store on the same
database (the CLI's path), never through the running app, so only the grant-change poll can tell it.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp.test_utils import TestClient

from gateway.authz.roles import change_roles
from gateway.config import StoreConfig
from gateway.http.keys import CONFIG, SESSIONS
from gateway.proxy.keys import WEBSOCKET_GRANTS
from gateway.store import Store, open_store
from tests.conftest import MakeConfig, MakeGateway
from tests.support import SECRET, free_port, gateway_process, wait_http, write_toml

Client = TestClient[Any, Any]
EMAIL = "alice@example.com"
PASSWORD = "correct horse battery staple"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})  # type: ignore[no-any-return]


async def _login(client: Client) -> dict[str, Any]:
    resp = await client.post("/auth/login", json={"email": EMAIL, "password": PASSWORD, "refresh_in_body": True})
    assert resp.status == 200, await resp.text()
    client.session.cookie_jar.clear()
    return await resp.json()  # type: ignore[no-any-return]


async def _set_roles_elsewhere(store_cfg: StoreConfig, *roles: str, add: tuple[str, ...] = (), remove: tuple[str, ...] = ()) -> None:
    """Changes the roles through a store of its own, as `gateway users roles` from another host does."""
    other: Store = await open_store(store_cfg)
    try:
        user = await other.get_user(email_key=EMAIL)
        assert user is not None
        if roles:
            add = add + roles
        await change_roles(other, user, add=add, remove=remove, now=time.time())
    finally:
        await other.aclose()


async def _refused_within(client: Client, token: str, seconds: float) -> None:
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        resp = await client.get("/api/whoami", headers=_bearer(token))
        if resp.status == 401:
            body = await resp.json()
            assert body["error"] == "invalid_token"
            assert resp.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
            return
        assert resp.status == 200
        await asyncio.sleep(0.02)
    raise AssertionError(f"the token was still accepted after {seconds}s")


@pytest.fixture
async def client(make_gateway: MakeGateway, make_config: MakeConfig) -> Client:
    gw = await make_gateway(make_config())
    await gw.server.app[SESSIONS].add_user(EMAIL, PASSWORD)
    return gw


async def test_roles_token_carries_sorted_roles_and_version(client: Client) -> None:
    await _set_roles_elsewhere(client.server.app[CONFIG].store, "ops", "admin")
    body = _claims((await _login(client))["access_token"])
    assert (body["roles"], body["rv"]) == (["admin", "ops"], 1)


async def test_roles_user_without_roles_gets_empty_list(client: Client) -> None:
    body = _claims((await _login(client))["access_token"])
    assert (body["roles"], body["rv"]) == ([], 0)


async def test_roles_upstream_gets_comma_separated_header(client: Client) -> None:
    await _set_roles_elsewhere(client.server.app[CONFIG].store, "billing.read", "admin")
    token = (await _login(client))["access_token"]
    seen = await (await client.get("/api/whoami", headers=_bearer(token))).json()
    assert seen["headers"]["X-User-Roles"] == "admin,billing.read"


@pytest.mark.parametrize("name", ["X-User-Roles", "x-user-roles", "X-USER-ROLES"])
async def test_roles_header_from_client_is_replaced(client: Client, name: str) -> None:
    token = (await _login(client))["access_token"]
    seen = await (await client.get("/api/whoami", headers={**_bearer(token), name: "admin"})).json()
    assert [v for k, v in seen["headers"].items() if k.lower() == "x-user-roles"] == [""]


async def test_roles_header_from_client_removed_on_public_route(client: Client) -> None:
    seen = await (await client.get("/public/echo", headers={"X-User-Roles": "admin"})).json()
    assert "x-user-roles" not in {k.lower() for k in seen["headers"]}


async def test_roles_removed_elsewhere_old_token_refused_within_1s_refresh_carries_new(client: Client) -> None:
    store_cfg = client.server.app[CONFIG].store
    await _set_roles_elsewhere(store_cfg, "admin", "auditor")
    tokens = await _login(client)
    assert _claims(tokens["access_token"])["roles"] == ["admin", "auditor"]
    await _set_roles_elsewhere(store_cfg, remove=("admin",))
    await _refused_within(client, tokens["access_token"], 1.0)  # raises if still accepted after 1 s
    # Nobody was logged out: the refresh token still works and carries the new roles.
    resp = await client.post("/auth/refresh-token", json={"refresh_token": tokens["refresh_token"]})
    assert resp.status == 200, await resp.text()
    fresh = (await resp.json())["access_token"]
    assert (_claims(fresh)["roles"], _claims(fresh)["rv"]) == (["auditor"], 2)
    seen = await (await client.get("/api/whoami", headers=_bearer(fresh))).json()
    assert seen["headers"]["X-User-Roles"] == "auditor"


async def test_roles_token_issued_in_same_second_after_change_is_good(client: Client) -> None:
    # The FakeClock stands still: the old token, the change and the new token share one `iat` second.
    store_cfg = client.server.app[CONFIG].store
    old = await _login(client)
    await _set_roles_elsewhere(store_cfg, "admin")
    new = await _login(client)
    assert _claims(old["access_token"])["iat"] == _claims(new["access_token"])["iat"]
    await _refused_within(client, old["access_token"], 1.0)
    assert (await client.get("/api/whoami", headers=_bearer(new["access_token"]))).status == 200


async def test_roles_unchanged_set_refuses_nothing(client: Client) -> None:
    store_cfg = client.server.app[CONFIG].store
    await _set_roles_elsewhere(store_cfg, "admin")
    token = (await _login(client))["access_token"]
    await _set_roles_elsewhere(store_cfg, "admin")
    await asyncio.sleep(0.6)  # longer than two polls: nothing may change
    assert (await client.get("/api/whoami", headers=_bearer(token))).status == 200


async def test_roles_change_of_other_user_leaves_tokens_alone(client: Client) -> None:
    app = client.server.app
    await app[SESSIONS].add_user("bob@example.com", PASSWORD)
    token = (await _login(client))["access_token"]
    other: Store = await open_store(app[CONFIG].store)
    try:
        bob = await other.get_user(email_key="bob@example.com")
        assert bob is not None
        await change_roles(other, bob, add=("admin",), now=time.time())
    finally:
        await other.aclose()
    await asyncio.sleep(0.6)
    assert (await client.get("/api/whoami", headers=_bearer(token))).status == 200


async def test_roles_change_closes_the_users_open_websockets_within_1s_others_stay_open(client: Client) -> None:
    """A socket opened before a role change would keep the old grants for as long as it lives: it is
    closed (1008, "access changed") as the old tokens are refused; another user's socket is untouched."""
    app = client.server.app
    await app[SESSIONS].add_user("bob@example.com", PASSWORD)
    alice = (await _login(client))["access_token"]
    resp = await client.post("/auth/login", json={"email": "bob@example.com", "password": PASSWORD, "refresh_in_body": True})
    bob = (await resp.json())["access_token"]
    client.session.cookie_jar.clear()
    async with client.ws_connect("/api/ws", headers=_bearer(alice)) as ws_alice, client.ws_connect(
        "/api/ws", headers=_bearer(bob)
    ) as ws_bob:
        for ws in (ws_alice, ws_bob):
            await ws.send_str("ping")
            echoed = await asyncio.wait_for(ws.receive(), 2)
            assert echoed.type == aiohttp.WSMsgType.TEXT and "ping" in echoed.data
        await _set_roles_elsewhere(app[CONFIG].store, "auditor")
        msg = await asyncio.wait_for(ws_alice.receive(), 1.0)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED)
        assert (ws_alice.close_code, msg.extra) == (1008, "access changed")
        await ws_bob.send_str("still here")
        echoed = await asyncio.wait_for(ws_bob.receive(), 2)
        assert echoed.type == aiohttp.WSMsgType.TEXT and "still here" in echoed.data
    for _ in range(100):  # the gateway forgets a socket once its handler has finished with it
        if not app[WEBSOCKET_GRANTS]:
            break
        await asyncio.sleep(0.02)
    assert app[WEBSOCKET_GRANTS] == {}


async def test_roles_change_before_start_is_loaded_at_start(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    cfg = make_config()
    first = await make_gateway(cfg)
    await first.server.app[SESSIONS].add_user(EMAIL, PASSWORD)
    token = (await _login(first))["access_token"]
    await _set_roles_elsewhere(cfg.store, "admin")
    second = await make_gateway(cfg)  # a fresh instance: no poll has run yet, the start-up load must know
    assert (await second.get("/api/whoami", headers=_bearer(token))).status == 401


# -- the command -------------------------------------------------------------------------------


def _cli(config: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args, "--config", str(config)], input=stdin, text=True, capture_output=True, timeout=60
    )


def _cli_config(tmp_path: Path, store_url: str, port: int = 0, upstream: str = "http://127.0.0.1:1") -> Path:
    return write_toml(
        tmp_path / f"gateway-{port}.toml",
        f'[server]\nport = {port}\n[store]\nurl = "{store_url}"\n[tokens]\nsecret = "{SECRET}"\naccess_ttl = "5m"\n'
        f'[log]\nlevel = "WARNING"\n[[routes]]\nprefix = "/api"\nupstream = "{upstream}"\n',
    )


def test_cli_users_roles_add_remove_prints_one_a_line(tmp_path: Path) -> None:
    cfg = _cli_config(tmp_path, f"sqlite:///{tmp_path / 'g.db'}")
    assert _cli(cfg, "users", "add", EMAIL, "--password-stdin", stdin=PASSWORD + "\n").returncode == 0
    done = _cli(cfg, "users", "roles", EMAIL, "--add", "ops", "--add", "admin")
    assert (done.returncode, done.stdout) == (0, "admin\nops\n"), done.stderr
    done = _cli(cfg, "users", "roles", "ALICE@example.com ", "--remove", "ops", "--add", "auditor")
    assert (done.returncode, done.stdout) == (0, "admin\nauditor\n"), done.stderr
    done = _cli(cfg, "users", "roles", EMAIL)
    assert (done.returncode, done.stdout) == (0, "admin\nauditor\n")


@pytest.mark.parametrize("bad", ["Admin", "-x", "", "a b", "x" * 65, "röle", "a/b"])
def test_cli_users_roles_bad_name_is_one_line_exit_1(tmp_path: Path, bad: str) -> None:
    cfg = _cli_config(tmp_path, f"sqlite:///{tmp_path / 'g.db'}")
    assert _cli(cfg, "users", "add", EMAIL, "--password-stdin", stdin=PASSWORD + "\n").returncode == 0
    done = _cli(cfg, "users", "roles", EMAIL, f"--add={bad}")
    assert done.returncode == 1 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and "role name" in done.stderr and "Traceback" not in done.stderr
    assert _cli(cfg, "users", "roles", EMAIL).stdout == ""


def test_cli_users_roles_unknown_user_exit_1(tmp_path: Path) -> None:
    done = _cli(_cli_config(tmp_path, f"sqlite:///{tmp_path / 'g.db'}"), "users", "roles", "nobody@example.com", "--add", "x")
    assert done.returncode == 1 and "no user" in done.stderr


# -- several instances on PostgreSQL -----------------------------------------------------------


async def test_roles_change_via_cli_reaches_two_postgres_instances_within_1s(tmp_path: Path, pg_url: str) -> None:
    up_port = free_port()
    upstream = subprocess.Popen([sys.executable, "-m", "upstream_demo", "--port", str(up_port)], stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{up_port}/public/hello", timeout=15, proc=None)
        ports = [free_port(), free_port()]
        configs = [_cli_config(tmp_path, pg_url, port, f"http://127.0.0.1:{up_port}") for port in ports]
        assert _cli(configs[0], "users", "add", EMAIL, "--password-stdin", stdin=PASSWORD + "\n").returncode == 0
        assert _cli(configs[0], "users", "roles", EMAIL, "--add", "admin").returncode == 0
        with gateway_process(configs[0], ports[0]), gateway_process(configs[1], ports[1]):
            bases = [f"http://127.0.0.1:{p}" for p in ports]
            async with aiohttp.ClientSession() as http:
                async with http.post(f"{bases[0]}/auth/login", json={"email": EMAIL, "password": PASSWORD, "refresh_in_body": True}) as r:
                    tokens = await r.json()
                assert _claims(tokens["access_token"])["roles"] == ["admin"]
                for base in bases:
                    async with http.get(f"{base}/api/whoami", headers=_bearer(tokens["access_token"])) as r:
                        assert r.status == 200
                # The change comes from a third process (the CLI), as an operator makes it.
                changed = await asyncio.to_thread(_cli, configs[1], "users", "roles", EMAIL, "--remove", "admin")
                assert changed.returncode == 0 and changed.stdout == ""
                start = time.monotonic()
                pending = set(bases)
                while pending and time.monotonic() - start < 1.0:
                    for base in list(pending):
                        async with http.get(f"{base}/api/whoami", headers=_bearer(tokens["access_token"])) as r:
                            if r.status == 401:
                                pending.discard(base)
                    await asyncio.sleep(0.02)
                assert not pending, f"still accepted after 1 s by {pending}"
                async with http.post(f"{bases[1]}/auth/refresh-token", json={"refresh_token": tokens["refresh_token"]}) as r:
                    assert r.status == 200
                    fresh = (await r.json())["access_token"]
                assert _claims(fresh)["roles"] == []
                for base in bases:
                    async with http.get(f"{base}/api/whoami", headers=_bearer(fresh)) as r:
                        assert r.status == 200
    finally:
        upstream.terminate()
        upstream.wait(timeout=10)
