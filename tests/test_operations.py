"""Operations: /metrics, the access log, /readyz across a store outage, SIGTERM, the OpenAPI document."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from gateway.config import StoreConfig
from gateway.http.keys import SESSIONS
from tests.conftest import MakeConfig, MakeGateway
from tests.support import SECRET, free_port, gateway_process, mint, wait_http

Client = TestClient[Any, Any]


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (labels in any order), 0 when absent."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


async def test_metrics_count_requests_auth_logins_and_refreshes(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await make_gateway(make_config())
    await client.server.app[SESSIONS].add_user("m@example.com", "password-123")
    assert (await client.get("/api/whoami")).status == 401
    assert (await client.get("/api/whoami", headers={"Authorization": f"Bearer {mint()}"})).status == 200
    assert (await client.post("/auth/login", json={"email": "m@example.com", "password": "wrong-password"})).status == 401
    resp = await client.post("/auth/login", json={"email": "m@example.com", "password": "password-123", "refresh_in_body": True})
    token = (await resp.json())["refresh_token"]
    assert (await client.post("/auth/refresh-token", json={"refresh_token": token})).status == 200
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()
    assert _sample(text, "gateway_requests_total", route="/api", method="GET", status="401") == 1
    assert _sample(text, "gateway_requests_total", route="/api", method="GET", status="200") == 1
    assert _sample(text, "gateway_auth_decisions_total", decision="deny", reason="missing_token") == 1
    assert _sample(text, "gateway_auth_decisions_total", decision="allow", reason="ok") == 1
    assert _sample(text, "gateway_logins_total", result="failure") == 1
    assert _sample(text, "gateway_logins_total", result="success") == 1
    assert _sample(text, "gateway_refreshes_total", result="rotated") == 1
    assert "gateway_upstream_duration_seconds_bucket" in text


async def test_metrics_reuse_and_revocations_counted(make_gateway: MakeGateway, make_config: MakeConfig, clock: Any) -> None:
    client = await make_gateway(make_config())
    await client.server.app[SESSIONS].add_user("r@example.com", "password-123")
    resp = await client.post("/auth/login", json={"email": "r@example.com", "password": "password-123", "refresh_in_body": True})
    first = (await resp.json())["refresh_token"]
    assert (await client.post("/auth/refresh-token", json={"refresh_token": first})).status == 200
    clock.advance(60)
    assert (await client.post("/auth/refresh-token", json={"refresh_token": first})).status == 403
    text = await (await client.get("/metrics")).text()
    assert _sample(text, "gateway_refresh_reuse_detected_total") == 1
    assert _sample(text, "gateway_sessions_revoked_total", reason="refresh_token_reused") == 1


async def test_metrics_refused_outside_metrics_networks(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await make_gateway(make_config(server={"metrics_networks": ["10.0.0.0/8"]}))
    resp = await client.get("/metrics", headers={"X-Forwarded-For": "10.1.2.3"})
    assert resp.status == 403
    assert (await resp.json())["error"] == "forbidden"


async def test_access_log_one_json_line_without_secrets(
    make_gateway: MakeGateway, make_config: MakeConfig, caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_gateway(make_config())
    token = mint(sub="user-42", sid="sess-42")
    caplog.set_level(logging.INFO, logger="gateway.access")
    resp = await client.get("/api/whoami?x=1", headers={"Authorization": f"Bearer {token}", "X-Request-Id": "req-abc", "Cookie": "other=c00kie"})
    assert resp.status == 200
    records = [r for r in caplog.records if r.name == "gateway.access"]
    assert len(records) == 1
    fields = records[0].fields  # type: ignore[attr-defined]
    assert fields["request_id"] == "req-abc"
    assert fields["route"] == "/api"
    assert (fields["method"], fields["status"], fields["user_id"], fields["session_id"]) == ("GET", 200, "user-42", "sess-42")
    assert fields["duration_ms"] >= fields["upstream_ms"] >= 0
    from gateway.core.log import JsonFormatter

    line = JsonFormatter().format(records[0])
    assert json.loads(line)["status"] == 200
    assert token not in line and "c00kie" not in line


async def test_openapi_document_lists_auth_endpoints(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await make_gateway(make_config(server={"auth_prefix": "/gw"}))
    doc = await (await client.get("/gw/openapi.json")).json()
    assert doc["openapi"] == "3.1.0"
    assert set(doc["paths"]) >= {"/gw/login", "/gw/refresh-token", "/gw/logout", "/gw/logout-all", "/gw/sessions", "/gw/sessions/{id}", "/gw/token"}
    # issue 12: accounts
    assert set(doc["paths"]) >= {
        "/gw/signup", "/gw/verify-email", "/gw/verify-email/resend", "/gw/password/forgot", "/gw/password/reset",
        "/gw/reset-password", "/gw/password/change",
    }  # fmt: skip
    assert set(doc["paths"]) >= {
        f"/gw{p}" for p in ("/mfa", "/mfa/totp/enroll", "/mfa/totp/confirm", "/mfa/totp", "/mfa/recovery-codes", "/login/mfa",
                            "/passkeys", "/passkeys/{id}", "/passkeys/register/options", "/passkeys/register",
                            "/passkeys/login/options", "/passkeys/login")
    }  # fmt: skip


class _TcpRelay:
    """A TCP relay to PostgreSQL that a test can cut and restore, to make the store unreachable for real."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.server: asyncio.Server | None = None
        self.port = free_port()
        self.conns: list[asyncio.StreamWriter] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.conns += [writer, up_writer]

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                w.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.conns:
            w.transport.abort()
        self.conns.clear()
        await self.server.wait_closed()


async def test_readyz_503_while_store_unreachable_then_recovers(
    make_gateway: MakeGateway, make_config: MakeConfig, pg_url: str
) -> None:
    relay = _TcpRelay(5432)
    await relay.start()
    url = pg_url.replace(":5432/", f":{relay.port}/")
    client = await make_gateway(make_config(store={"url": url}))
    assert (await client.get("/readyz")).status == 200
    await relay.cut()
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert (await client.get("/healthz")).status == 200
    await relay.start()
    deadline = time.monotonic() + 10
    status = 0
    while time.monotonic() < deadline:
        status = (await client.get("/readyz")).status
        if status == 200:
            break
        await asyncio.sleep(0.2)
    assert status == 200
    await relay.cut()


def _process_toml(tmp_path: Path, port: int, upstream_port: int) -> Path:
    cfg = tmp_path / "gw.toml"
    cfg.write_text(
        f"""
[server]
port = {port}
shutdown_timeout = "10s"
[store]
url = "sqlite:///{tmp_path / 'gw.db'}"
[tokens]
secret = "{SECRET}"
[accounts]
signup = true
[email]
smtp_url = "smtp://127.0.0.1:1"
[[routes]]
prefix = "/api"
upstream = "http://127.0.0.1:{upstream_port}"
auth = "public"
"""
    )
    return cfg


@pytest.fixture
def upstream_process() -> Any:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "upstream_demo", "--port", str(port)], stderr=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{port}/public/hello", timeout=15)
    yield port
    proc.terminate()
    proc.wait(timeout=10)


async def test_sigterm_lets_inflight_requests_finish_and_exits_zero(tmp_path: Path, upstream_process: int) -> None:
    port = free_port()
    with gateway_process(_process_toml(tmp_path, port, upstream_process), port) as proc:
        async with aiohttp.ClientSession() as http:
            slow = asyncio.create_task(http.get(f"http://127.0.0.1:{port}/api/slow?seconds=1.5"))
            ws = await http.ws_connect(f"http://127.0.0.1:{port}/api/ws")
            closing = asyncio.create_task(ws.receive(timeout=10))  # a live client keeps reading
            await asyncio.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            resp = await slow
            assert resp.status == 200
            assert (await resp.json())["slept"] == 1.5
            msg = await closing
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert ws.close_code == 1001
        assert await asyncio.to_thread(proc.wait, 15) == 0


def test_schemathesis_finds_no_server_error_or_schema_break(tmp_path: Path, upstream_process: int) -> None:
    st = Path(sys.executable).with_name("schemathesis")
    assert st.exists(), "schemathesis is in the test extra: pip install -e '.[test]'"
    port = free_port()
    with gateway_process(_process_toml(tmp_path, port, upstream_process), port):
        asyncio.run(_create_user(tmp_path))
        token = mint(sub="user-x", sid="sess-x")
        result = subprocess.run(
            [str(st), "run", f"http://127.0.0.1:{port}/auth/openapi.json", "--checks",
             "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance",
             "--max-examples", "40", "-w", "1", "--seed", "1", "-H", f"Authorization: Bearer {token}"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:]


async def _create_user(tmp_path: Path) -> None:
    from gateway.store import open_store

    store = await open_store(StoreConfig(url="sqlite:///x", sqlite_path=tmp_path / "gw.db"))
    await store.aclose()
