"""Owns the `gateway` command-line contract: config lookup, check-config, serve errors, users and sessions.

Must not: call `cli.main` in-process (every test runs `python -m gateway` as a real subprocess), or
write a config any other way than a TOML file under tmp_path.
"""

from __future__ import annotations

import json
import os
import pty
import select
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from gateway.config import load_config
from gateway.core.errors import InvalidCredentials
from gateway.sessions.service import SessionService
from gateway.store import open_store
from gateway.tokens.keyring import KeyRing
from tests.support import free_port, gateway_process, write_toml

__all__: list[str] = []

GATEWAY_SECRET = "cli-Secret-Value-0123456789-abcdefghijklmnop"
PASSWORD = "correct horse battery"


def _config_text(tmp_path: Path, *, port: int = 0, extra: str = "") -> str:
    return (
        f"[server]\nport = {port}\n{extra}\n"
        f'[store]\nurl = "sqlite:///{tmp_path / "g.db"}"\n'
        '[tokens]\nsecret = "${GATEWAY_SECRET}"\n'
        '[[routes]]\nprefix = "/api"\nupstream = "http://127.0.0.1:1"\n'
    )


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The secret comes from the environment, as in production; no ambient config path leaks in."""
    monkeypatch.setenv("GATEWAY_SECRET", GATEWAY_SECRET)
    monkeypatch.delenv("GATEWAY_CONFIG", raising=False)


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return write_toml(tmp_path / "gateway.toml", _config_text(tmp_path))


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "g.db"


def run(
    *args: str, cwd: Path, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m gateway ARGS` in `cwd` (never the repository, which has its own config.toml)."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=cwd,
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
        check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *, code: int = 1) -> str:
    """The spec's error form: exit `code`, exactly one line on stderr, no traceback; returns the line."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def add_user(config_path: Path, email: str, password: str = PASSWORD) -> subprocess.CompletedProcess[str]:
    return run(
        "users",
        "add",
        email,
        "--password-stdin",
        "--config",
        str(config_path),
        cwd=config_path.parent,
        stdin=password + "\n",
    )


def gw(config_path: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return run(*args, "--config", str(config_path), cwd=config_path.parent, stdin=stdin)


async def login(config_path: Path, email: str, password: str = PASSWORD) -> str:
    """Opens a session the way POST /auth/login does, straight through the session service."""
    cfg = load_config(config_path)
    store = await open_store(cfg.store)
    try:
        service = SessionService(store=store, keys=KeyRing(cfg.tokens), config=cfg)
        issued = await service.login(email, password, remember_me=False, user_agent="pytest-agent", ip="127.0.0.1")
        return issued.session.id
    finally:
        await store.aclose()


def revoked_at(db: Path, session_id: str) -> float | None:
    with closing(sqlite3.connect(db)) as conn:
        row = conn.execute("SELECT revoked_at FROM sessions WHERE id = ?", (session_id,)).fetchone()
    assert row is not None, f"no session row {session_id}"
    value: float | None = row[0]
    return value


# -- check-config --------------------------------------------------------------------------------


def test_check_config_valid_prints_masked_json_and_exits_0(config_path: Path, tmp_path: Path) -> None:
    result = gw(config_path, "check-config")
    assert result.returncode == 0, result.stderr
    view = json.loads(result.stdout)
    assert view["tokens"]["secret"] == "***"
    assert view["store"]["sqlite_path"] == str((tmp_path / "g.db").resolve())
    assert view["routes"][0]["prefix"] == "/api"
    assert view["tokens"]["access_ttl"] == "15m"
    assert view["limits"]["login"] == "10/minute"
    assert GATEWAY_SECRET not in result.stdout + result.stderr


def test_check_config_postgres_password_never_printed(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path / "pg.toml",
        '[store]\nurl = "postgresql://gw:Pg-Pa55word@db.internal/gateway"\n[tokens]\nsecret = "${GATEWAY_SECRET}"\n',
    )
    result = gw(path, "check-config")
    assert result.returncode == 0, result.stderr
    assert "Pg-Pa55word" not in result.stdout + result.stderr
    assert GATEWAY_SECRET not in result.stdout + result.stderr


def test_check_config_bad_config_lists_file_keypath_problem_lines(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path / "bad.toml",
        _config_text(tmp_path, extra="bogus = 1").replace('"/api"', '"api"') + '[cookies]\nsamesite = "Lenient"\n',
    )
    result = gw(path, "check-config")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert set(result.stderr.splitlines()) == {
        f"{path}: server.bogus: unknown key",
        f'{path}: routes[0].prefix: must start with "/"',
        f"{path}: cookies.samesite: must be one of Strict | Lax | None, not 'Lenient'",
    }


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('[tokens]\nsecret = "${GATEWAY_SECRET}"\nissuer = 5\n[server]\nport = true\n', id="other-errors"),
        pytest.param('[tokens]\nsecret = ["${GATEWAY_SECRET}"]\n', id="secret-mistyped-as-list"),
        pytest.param(
            '[tokens]\nrefresh_secret = ["${GATEWAY_SECRET}"]\nsecret = "${GATEWAY_SECRET}"\n', id="refresh-mistyped"
        ),
        pytest.param('[tokens]\nsecret = "${GATEWAY_SECRET}"\nalgorithm = "RS256"\n', id="secret-with-rs256"),
        pytest.param(
            '[tokens]\nsecret = "${GATEWAY_SECRET}"\n[bogus]\nx = "${GATEWAY_SECRET}"\n', id="secret-in-unknown-table"
        ),
    ],
)
def test_check_config_errors_never_print_the_secret(tmp_path: Path, text: str) -> None:
    result = gw(write_toml(tmp_path / "s.toml", text), "check-config")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert GATEWAY_SECRET not in result.stdout + result.stderr


def test_check_config_short_secret_error_does_not_print_it(config_path: Path) -> None:
    result = run(
        "check-config", "--config", str(config_path), cwd=config_path.parent, env={"GATEWAY_SECRET": "Sh0rt-Secr3t"}
    )
    line = assert_one_line_error(result)
    assert line.startswith(f"{config_path}: tokens.secret: ")
    assert "Sh0rt-Secr3t" not in result.stdout + result.stderr


def test_check_config_unset_secret_variable_names_key_path(config_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_SECRET"}
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "--config", str(config_path)],
        cwd=config_path.parent, capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"{config_path}: tokens.secret: environment variable GATEWAY_SECRET is not set" in result.stderr.splitlines()


def test_check_config_missing_file_is_one_clear_line(tmp_path: Path) -> None:
    line = assert_one_line_error(run("check-config", "--config", str(tmp_path / "absent.toml"), cwd=tmp_path))
    assert line.startswith(f"{tmp_path / 'absent.toml'}: ")
    assert "No such file" in line


# -- serve ---------------------------------------------------------------------------------------


def test_serve_bad_config_exits_1_with_one_line(tmp_path: Path) -> None:
    path = write_toml(tmp_path / "bad.toml", _config_text(tmp_path, extra="workers = 0"))
    line = assert_one_line_error(run("serve", "--config", str(path), cwd=tmp_path))
    assert line.startswith(f"{path}: server.workers: ")


def test_serve_missing_config_exits_1_with_one_line(tmp_path: Path) -> None:
    line = assert_one_line_error(run("serve", cwd=tmp_path))
    assert line.startswith("config.toml: ")


# -- where the config comes from -----------------------------------------------------------------


def _issuer_of(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    issuer: str = json.loads(result.stdout)["tokens"]["issuer"]
    return issuer


@pytest.fixture
def three_configs(tmp_path: Path) -> dict[str, Path]:
    """Three configs told apart by tokens.issuer; `cwd` holds one as ./config.toml."""
    (tmp_path / "cwd").mkdir()
    out: dict[str, Path] = {}
    for name, rel in (("flag", "flag.toml"), ("env", "env.toml"), ("cwd", "cwd/config.toml")):
        text = _config_text(tmp_path).replace("[tokens]\n", f'[tokens]\nissuer = "from-{name}"\n')
        out[name] = write_toml(tmp_path / rel, text)
    return out


def test_cli_config_flag_before_subcommand(three_configs: dict[str, Path], tmp_path: Path) -> None:
    assert _issuer_of(run("--config", str(three_configs["flag"]), "check-config", cwd=tmp_path / "cwd")) == "from-flag"


def test_cli_config_flag_after_subcommand(three_configs: dict[str, Path], tmp_path: Path) -> None:
    assert _issuer_of(run("check-config", "--config", str(three_configs["flag"]), cwd=tmp_path / "cwd")) == "from-flag"


@pytest.mark.parametrize("argv", [["users", "list", "--config"], ["users", "--config"]])
def test_cli_config_flag_after_nested_subcommand(
    three_configs: dict[str, Path], tmp_path: Path, argv: list[str]
) -> None:
    # tmp_path has no config.toml, so an ignored flag would fail with "config.toml: cannot read file".
    args = [*argv, str(three_configs["flag"]), *(["list"] if argv[-2] == "users" else [])]
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_cli_config_flag_wins_over_environment(three_configs: dict[str, Path], tmp_path: Path) -> None:
    env = {"GATEWAY_CONFIG": str(three_configs["env"])}
    result = run("check-config", "--config", str(three_configs["flag"]), cwd=tmp_path / "cwd", env=env)
    assert _issuer_of(result) == "from-flag"


def test_cli_gateway_config_env_used_without_flag(three_configs: dict[str, Path], tmp_path: Path) -> None:
    result = run("check-config", cwd=tmp_path / "cwd", env={"GATEWAY_CONFIG": str(three_configs["env"])})
    assert _issuer_of(result) == "from-env"


def test_cli_config_toml_in_cwd_used_last(three_configs: dict[str, Path], tmp_path: Path) -> None:
    assert _issuer_of(run("check-config", cwd=tmp_path / "cwd")) == "from-cwd"


# -- usage errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([], id="no-command"),
        pytest.param(["frobnicate"], id="unknown-command"),
        pytest.param(["check-config", "--frobnicate"], id="unknown-option"),
        pytest.param(["users"], id="users-no-action"),
        pytest.param(["users", "add"], id="users-add-no-email"),
        pytest.param(["sessions", "revoke"], id="revoke-neither"),
        pytest.param(["sessions", "revoke", "--user", "a@example.com", "--session", "x"], id="revoke-both"),
        pytest.param(["check-config", "--config"], id="config-without-value"),
    ],
)
def test_cli_usage_error_exits_2_with_one_line(tmp_path: Path, argv: list[str]) -> None:
    assert_one_line_error(run(*argv, cwd=tmp_path), code=2)


# -- users ---------------------------------------------------------------------------------------


def test_users_add_creates_user_shown_by_list(config_path: Path) -> None:
    result = add_user(config_path, "  Alice@Example.com ")
    assert result.returncode == 0, result.stderr
    listed = gw(config_path, "users", "list")
    assert listed.returncode == 0, listed.stderr
    (line,) = listed.stdout.splitlines()
    # trimmed, and the domain in its one normal form (DNS names have no case)
    assert line.split("\t")[1:3] == ["Alice@example.com", "active"]
    assert PASSWORD not in result.stdout + result.stderr + listed.stdout


@pytest.mark.parametrize("duplicate", ["alice@example.com", "ALICE@EXAMPLE.COM", "  alice@example.com  "])
def test_users_add_duplicate_email_exits_1_with_one_line(config_path: Path, duplicate: str) -> None:
    assert add_user(config_path, "Alice@Example.com").returncode == 0
    assert_one_line_error(add_user(config_path, duplicate))
    assert len(gw(config_path, "users", "list").stdout.splitlines()) == 1


@pytest.mark.parametrize(("length", "ok"), [(7, False), (8, True), (1024, True), (1025, False)])
def test_users_add_password_length_bounds(config_path: Path, length: int, ok: bool) -> None:
    result = add_user(config_path, "bob@example.com", "p" * length)
    if ok:
        assert result.returncode == 0, result.stderr
    else:
        assert "password" in assert_one_line_error(result)
        assert gw(config_path, "users", "list").stdout == ""


def test_users_add_without_terminal_or_flag_is_one_line_not_traceback(config_path: Path) -> None:
    result = gw(config_path, "users", "add", "carol@example.com", stdin="")
    assert "--password-stdin" in assert_one_line_error(result)
    assert gw(config_path, "users", "list").stdout == ""


async def test_users_add_password_stdin_ignores_windows_line_ending_for_login(config_path: Path) -> None:
    assert add_user(config_path, "dave@example.com", PASSWORD + "\r").returncode == 0
    assert await login(config_path, "dave@example.com", PASSWORD)


def run_with_terminal(config_path: Path, *args: str, answers: list[str]) -> subprocess.CompletedProcess[str]:
    """Runs the CLI with a pseudo-terminal as stdin and stderr, typing each answer after its prompt."""
    master, slave = pty.openpty()
    # A new session has no controlling terminal, so getpass cannot reach the developer's real one
    # through /dev/tty and uses the pty on stdin instead.
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", *args, "--config", str(config_path)],
        cwd=config_path.parent, stdin=slave, stderr=slave, stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    seen = b""
    try:
        for answer in answers:
            # getpass flushes pending input when it turns echo off, so type only after the prompt.
            while not seen.rstrip().endswith(b":"):
                ready, _, _ = select.select([master], [], [], 20)
                assert ready, f"no prompt; terminal so far: {seen!r}"
                seen += os.read(master, 1024)
            seen = b""
            os.write(master, answer.encode() + b"\n")
        stdout, _ = proc.communicate(timeout=30)
        while select.select([master], [], [], 0.2)[0]:
            try:
                seen += os.read(master, 1024)
            except OSError:  # EIO once the child has closed its side
                break
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        os.close(master)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, seen.decode(errors="replace"))


def test_users_add_prompts_twice_on_a_terminal(config_path: Path) -> None:
    result = run_with_terminal(config_path, "users", "add", "pat@example.com", answers=[PASSWORD, PASSWORD])
    assert result.returncode == 0, result.stderr
    assert PASSWORD not in result.stderr  # echo is off while typing
    assert "pat@example.com" in gw(config_path, "users", "list").stdout


def test_users_add_prompted_passwords_differ_exits_1(config_path: Path) -> None:
    result = run_with_terminal(config_path, "users", "add", "pat@example.com", answers=[PASSWORD, PASSWORD + "x"])
    assert result.returncode == 1
    assert "do not match" in result.stderr
    assert gw(config_path, "users", "list").stdout == ""


def test_users_add_invalid_email_exits_1(config_path: Path) -> None:
    assert_one_line_error(add_user(config_path, "not-an-email"))


@pytest.mark.parametrize("argv", [["disable"], ["enable"], ["set-password", "--password-stdin"]])
def test_users_action_unknown_email_exits_1_with_one_line(config_path: Path, argv: list[str]) -> None:
    result = gw(config_path, "users", argv[0], "nobody@example.com", *argv[1:], stdin=PASSWORD + "\n")
    assert "nobody@example.com" in assert_one_line_error(result)


async def test_users_disable_revokes_sessions_and_blocks_login(config_path: Path, db: Path) -> None:
    assert add_user(config_path, "erin@example.com").returncode == 0
    sid = await login(config_path, "erin@example.com")
    result = gw(config_path, "users", "disable", "ERIN@example.com ")
    assert result.returncode == 0, result.stderr
    assert "revoked 1 session" in result.stdout
    assert revoked_at(db, sid) is not None
    assert "\tdisabled\t" in gw(config_path, "users", "list").stdout
    with pytest.raises(InvalidCredentials):
        await login(config_path, "erin@example.com")


async def test_users_enable_allows_login_again(config_path: Path) -> None:
    assert add_user(config_path, "fay@example.com").returncode == 0
    assert gw(config_path, "users", "disable", "fay@example.com").returncode == 0
    result = gw(config_path, "users", "enable", "fay@example.com")
    assert result.returncode == 0, result.stderr
    assert "\tactive\t" in gw(config_path, "users", "list").stdout
    assert await login(config_path, "fay@example.com")


async def test_users_set_password_revokes_sessions_and_changes_password(config_path: Path, db: Path) -> None:
    assert add_user(config_path, "gus@example.com").returncode == 0
    first, second = await login(config_path, "gus@example.com"), await login(config_path, "gus@example.com")
    result = gw(config_path, "users", "set-password", "Gus@Example.com", "--password-stdin", stdin="new password 123\n")
    assert result.returncode == 0, result.stderr
    assert "revoked 2 session" in result.stdout
    assert revoked_at(db, first) is not None
    assert revoked_at(db, second) is not None
    assert "new password 123" not in result.stdout + result.stderr
    with pytest.raises(InvalidCredentials):
        await login(config_path, "gus@example.com", PASSWORD)
    assert await login(config_path, "gus@example.com", "new password 123")


def test_users_set_password_too_short_exits_1_and_keeps_password(config_path: Path) -> None:
    assert add_user(config_path, "hal@example.com").returncode == 0
    result = gw(config_path, "users", "set-password", "hal@example.com", "--password-stdin", stdin="short\n")
    assert "password" in assert_one_line_error(result)


def test_users_command_with_bad_config_exits_1_without_touching_store(tmp_path: Path, db: Path) -> None:
    path = write_toml(tmp_path / "bad.toml", _config_text(tmp_path, extra="nope = 1"))
    line = assert_one_line_error(run("users", "list", "--config", str(path), cwd=tmp_path))
    assert line == f"{path}: server.nope: unknown key"
    assert not db.exists()


# -- sessions ------------------------------------------------------------------------------------


async def test_sessions_list_shows_live_sessions_of_user(config_path: Path) -> None:
    assert add_user(config_path, "ivy@example.com").returncode == 0
    sid = await login(config_path, "ivy@example.com")
    result = gw(config_path, "sessions", "list", " IVY@example.com")
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    assert line.startswith(sid + "\t")
    assert "ua=pytest-agent" in line


def test_sessions_list_unknown_user_exits_1_with_one_line(config_path: Path) -> None:
    assert_one_line_error(gw(config_path, "sessions", "list", "nobody@example.com"))


async def test_sessions_revoke_session_revokes_only_that_one(config_path: Path, db: Path) -> None:
    assert add_user(config_path, "jay@example.com").returncode == 0
    target, other = await login(config_path, "jay@example.com"), await login(config_path, "jay@example.com")
    result = gw(config_path, "sessions", "revoke", "--session", target)
    assert result.returncode == 0, result.stderr
    assert "revoked 1 session" in result.stdout
    assert revoked_at(db, target) is not None
    assert revoked_at(db, other) is None
    listed = gw(config_path, "sessions", "list", "jay@example.com").stdout
    assert target not in listed
    assert other in listed


async def test_sessions_revoke_user_revokes_all_of_them(config_path: Path, db: Path) -> None:
    assert add_user(config_path, "kim@example.com").returncode == 0
    assert add_user(config_path, "lee@example.com").returncode == 0
    mine = [await login(config_path, "kim@example.com") for _ in range(2)]
    theirs = await login(config_path, "lee@example.com")
    result = gw(config_path, "sessions", "revoke", "--user", "KIM@example.com")
    assert result.returncode == 0, result.stderr
    assert "revoked 2 session" in result.stdout
    assert all(revoked_at(db, sid) is not None for sid in mine)
    assert revoked_at(db, theirs) is None
    assert gw(config_path, "sessions", "list", "kim@example.com").stdout == ""


def test_sessions_revoke_unknown_session_exits_1_with_one_line(config_path: Path) -> None:
    assert gw(config_path, "users", "list").returncode == 0  # creates the schema
    assert_one_line_error(gw(config_path, "sessions", "revoke", "--session", "no-such-session"))


def test_sessions_revoke_unknown_user_exits_1_with_one_line(config_path: Path) -> None:
    assert_one_line_error(gw(config_path, "sessions", "revoke", "--user", "nobody@example.com"))


def _post_json(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def _get_json(url: str, access: str) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {access}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def test_sessions_revoke_cli_kills_session_of_running_gateway(tmp_path: Path, db: Path) -> None:
    port = free_port()
    path = write_toml(tmp_path / "live.toml", _config_text(tmp_path, port=port))
    assert add_user(path, "max@example.com").returncode == 0
    with gateway_process(path, port):
        base = f"http://127.0.0.1:{port}/auth"
        status, body = _post_json(
            f"{base}/login", {"email": "max@example.com", "password": PASSWORD, "refresh_in_body": True}
        )
        assert status == 200, body
        listed = gw(path, "sessions", "list", "max@example.com")
        (line,) = listed.stdout.splitlines()
        sid = line.split("\t")[0]
        access = body["access_token"]
        assert _get_json(f"{base}/sessions", access)[0] == 200
        result = gw(path, "sessions", "revoke", "--session", sid)
        assert result.returncode == 0, result.stderr
        assert revoked_at(db, sid) is not None
        # The running gateway learns of the CLI's revocation from the store's log within a second.
        deadline = time.monotonic() + 1.5
        while (answer := _get_json(f"{base}/sessions", access))[0] != 401 and time.monotonic() < deadline:
            time.sleep(0.05)
        status, error = answer
        assert status == 401, f"the running gateway still accepts the revoked session's access token: {status}"
        assert error["error"] == "invalid_token"
        assert "revoked" in error["error_description"]
        status, error = _post_json(f"{base}/refresh-token", {"refresh_token": body["refresh_token"]})
        assert (status, error["error"]) == (403, "invalid_refresh_token")


@pytest.mark.parametrize("address", ["attacker@evil.com,ceo@corp.com", "mallory@evil.com.", '"ceo"@corp.com'])
def test_users_add_refuses_what_is_not_one_address(config_path: Path, address: str) -> None:
    result = add_user(config_path, address)
    assert result.returncode == 1, result.stdout
    assert result.stderr.count("\n") == 1 and "email is not a valid address" in result.stderr
    assert "Traceback" not in result.stderr
