"""`gateway users verify EMAIL` and the verification column of `gateway users list` (real subprocesses)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.config import load_config
from gateway.store import EmailToken, NewMail, open_store
from tests.test_cli import _env, add_user, assert_one_line_error, config_path, gw  # noqa: F401 (fixtures)


def _signup(config: Path, email: str) -> None:
    """An account as POST /auth/signup leaves it: unverified."""

    async def go() -> None:
        store = await open_store(load_config(config).store)
        try:
            await store.signup_user(
                user_id="u-signup", email=email, email_key=email.lower(), password_hash="h", now=1.0,
                token=EmailToken("hash", "verify", 2.0), mail=NewMail(sender="g@example.com", recipient=email, message="x"),
            )  # fmt: skip
        finally:
            await store.aclose()

    asyncio.run(go())


def _verification(config: Path) -> dict[str, str]:
    listed = gw(config, "users", "list")
    assert listed.returncode == 0, listed.stderr
    return {line.split("\t")[1]: line.split("\t")[-1] for line in listed.stdout.splitlines()}


def test_users_list_shows_verification_and_users_add_is_verified(config_path: Path) -> None:  # noqa: F811
    assert add_user(config_path, "admin@example.com").returncode == 0
    _signup(config_path, "new@example.com")
    assert _verification(config_path) == {"admin@example.com": "verified", "new@example.com": "unverified"}


def test_users_verify_marks_verified(config_path: Path) -> None:  # noqa: F811
    _signup(config_path, "new@example.com")
    result = gw(config_path, "users", "verify", " NEW@example.com ")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "verified new@example.com"
    assert _verification(config_path) == {"new@example.com": "verified"}


def test_users_verify_unknown_email_exits_1_with_one_line(config_path: Path) -> None:  # noqa: F811
    assert_one_line_error(gw(config_path, "users", "verify", "nobody@example.com"))
