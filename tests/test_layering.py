"""The pure modules stay free of aiohttp, and upstream_demo knows nothing of the gateway."""

import subprocess
import sys
from pathlib import Path

import pytest

PURE = [
    "gateway.core.errors",
    "gateway.core.casefold",
    "gateway.config",
    "gateway.config.model",
    "gateway.config.values",
    "gateway.config.tables",
    "gateway.config.federation",
    "gateway.config.accounts",
    "gateway.config.mfa",
    "gateway.config.masking",
    "gateway.core.log",
    "gateway.tokens.keyring",
    "gateway.core.tasks",
    "gateway.tokens.jwt_algorithms",
    "gateway.proxy.paths",
    "gateway.sessions.revocations",
    "gateway.store",
    "gateway.store.sqlite",
    "gateway.store.sqlite_runner",
    "gateway.sessions.passwords",
    "gateway.http.openapi",
    "gateway.core.metrics",
    "gateway.sessions.service",
    "gateway.server.workers",
    "gateway.proxy.headers",
    "gateway.proxy.upstream.pool",
    "gateway.proxy.upstream.wire",
    "gateway.federation.flow",
    "gateway.federation.service",
    "gateway.authz.grants",
    "gateway.authz.roles",
    "gateway.authz.rules",
    "gateway.clients.service",
    "gateway.authz.check",
    # issue 12: accounts
    "gateway.store.sqlite_accounts",
    "gateway.accounts.mail",
    "gateway.accounts.mailer",
    "gateway.accounts.outbox",
    "gateway.accounts.service",
    "gateway.accounts.openapi",
    "gateway.mfa",
    "gateway.mfa.secretbox",
    "gateway.mfa.totp",
    "gateway.mfa.recovery",
    "gateway.mfa.service",
    "gateway.mfa.passkeys",
]


@pytest.mark.parametrize("module", PURE)
def test_layering_pure_module_does_not_import_aiohttp(module: str) -> None:
    code = f"import sys, {module}; print('aiohttp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_layering_store_port_does_not_import_a_driver() -> None:
    code = "import sys, gateway.store; print(sorted(m for m in ('aiosqlite', 'asyncpg') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_layering_upstream_demo_never_imports_gateway() -> None:
    root = Path(__file__).resolve().parent.parent / "upstream_demo"
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert "import gateway" not in text and "from gateway" not in text, path
