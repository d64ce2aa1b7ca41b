"""`gateway users mfa-reset EMAIL` as a real subprocess on a real SQLite file."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pyotp
import pytest

from gateway.config import load_config
from gateway.mfa.service import MfaService
from gateway.sessions.service import SessionService
from gateway.store import PasskeyRecord, open_store
from gateway.tokens.keyring import KeyRing
from tests.support import write_toml
from tests.test_cli import GATEWAY_SECRET, _config_text, add_user, assert_one_line_error, gw, revoked_at

EMAIL = "ivy@example.com"
PASSWORD = "correct horse battery"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_SECRET", GATEWAY_SECRET)
    monkeypatch.delenv("GATEWAY_CONFIG", raising=False)


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return write_toml(tmp_path / "gateway.toml", _config_text(tmp_path))


async def _enrol_everything(config_path: Path) -> str:
    """TOTP on (with recovery codes), one passkey row and one session; returns the session id."""
    cfg = load_config(config_path)
    store = await open_store(cfg.store)
    try:
        sessions = SessionService(store=store, keys=KeyRing(cfg.tokens), config=cfg)
        mfa = MfaService(store=store, sessions=sessions, config=cfg)  # type: ignore[arg-type]
        user = await sessions.get_user(EMAIL)
        enrolment = await mfa.totp_enroll(user)
        await mfa.totp_confirm(user.id, pyotp.TOTP(enrolment.secret).now())
        await store.passkey_add(PasskeyRecord(
            id="pk-1", user_id=user.id, credential_id="cred", public_key="key", sign_count=0, name="x",
            transports=(), created_at=time.time(),
        ))  # fmt: skip
        issued = await sessions.login(EMAIL, PASSWORD, remember_me=False, user_agent="pytest", ip="127.0.0.1")
        return issued.session.id
    finally:
        await store.aclose()


async def test_users_mfa_reset_removes_factors_and_revokes_sessions(config_path: Path, tmp_path: Path) -> None:
    assert add_user(config_path, EMAIL).returncode == 0
    sid = await _enrol_everything(config_path)
    result = gw(config_path, "users", "mfa-reset", "IVY@example.com")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"second factors removed for {EMAIL}; revoked 1 session(s)"
    assert revoked_at(tmp_path / "g.db", sid) is not None
    with closing(sqlite3.connect(tmp_path / "g.db")) as db:
        for table in ("mfa_totp", "mfa_recovery_codes", "passkeys"):
            assert db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0, table


def test_users_mfa_reset_unknown_email_exits_1_with_one_line(config_path: Path) -> None:
    assert "nobody@example.com" in assert_one_line_error(gw(config_path, "users", "mfa-reset", "nobody@example.com"))
