"""Defects a new operator hit on a first run (issue 10): a missing PostgreSQL driver, a derived
second error for an unset secret, EPIPE tracebacks, admin commands demanding the signing secret,
and no `--version`. Every test runs `python -m gateway` as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PASSWORD = "correct horse battery"
SECRET = "first-run-secret-0123456789-abcdefghijklmnop"
# A blocker on sys.meta_path: inside this interpreter asyncpg is "not installed", as after a plain install.
NO_ASYNCPG = """
import sys
class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name == "asyncpg" or name.startswith("asyncpg."):
            raise ModuleNotFoundError("No module named 'asyncpg'", name=name)
        return None
sys.meta_path.insert(0, _Blocker())
from gateway.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_SECRET"}
    return {**env, **extra}


def _write(tmp_path: Path, store: str | None = None, secret: str = '"${GATEWAY_SECRET}"') -> Path:
    store = store or f"sqlite:///{tmp_path / 'g.db'}"
    path = tmp_path / "gateway.toml"
    path.write_text(f'[store]\nurl = "{store}"\n\n[tokens]\nsecret = {secret}\n')
    return path


def _gateway(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, input=stdin,
                          env=env or _env(GATEWAY_SECRET=SECRET), timeout=60)  # fmt: skip


@pytest.mark.parametrize("command", [["check-config"], ["serve"], ["users", "list"], ["sessions", "list", "a@b.example"]])
def test_missing_asyncpg_is_one_config_line_from_every_command(tmp_path: Path, command: list[str]) -> None:
    cfg = _write(tmp_path, store="postgresql://postgres@127.0.0.1:1/none")
    out = subprocess.run([sys.executable, "-c", NO_ASYNCPG, *command, "--config", str(cfg)], capture_output=True,
                         text=True, env=_env(GATEWAY_SECRET=SECRET), timeout=60)  # fmt: skip
    assert out.returncode == 1
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"{cfg}: store.url: ")
    assert "asyncpg" in lines[0] and "pip install 'authgateway[postgres]'" in lines[0]


def test_unset_secret_reports_only_the_cause(tmp_path: Path) -> None:
    cfg = _write(tmp_path)
    out = _gateway("check-config", "--config", str(cfg), env=_env())
    assert out.returncode == 1
    assert out.stderr.splitlines() == [f"{cfg}: tokens.secret: environment variable GATEWAY_SECRET is not set"]


def test_commands_that_never_sign_do_not_need_the_secret(tmp_path: Path) -> None:
    cfg = _write(tmp_path)
    env = _env()
    added = _gateway("users", "add", "ann@example.com", "--password-stdin", "--config", str(cfg), env=env,
                     stdin=PASSWORD + "\n")  # fmt: skip
    assert added.returncode == 0, added.stderr
    listed = _gateway("users", "list", "--config", str(cfg), env=env)
    assert listed.returncode == 0, listed.stderr
    assert "\tann@example.com\t" in listed.stdout
    for args in (["sessions", "list", "ann@example.com"], ["users", "disable", "ann@example.com"],
                 ["sessions", "revoke", "--user", "ann@example.com"]):  # fmt: skip
        out = _gateway(*args, "--config", str(cfg), env=env)
        assert out.returncode == 0, (args, out.stderr)
    # Signing commands still refuse to start without it.
    assert _gateway("serve", "--config", str(cfg), env=env).returncode == 1


def test_cli_exits_quietly_when_its_reader_goes_away(tmp_path: Path) -> None:
    cfg = _write(tmp_path)
    for i in range(3):
        _gateway("users", "add", f"u{i}@example.com", "--password-stdin", "--config", str(cfg), stdin=PASSWORD + "\n")
    # The shell's `gateway users list | head -0`: the read end is closed before the CLI writes.
    read, write = os.pipe()
    os.close(read)
    proc = subprocess.run([sys.executable, "-m", "gateway", "users", "list", "--config", str(cfg)], stdout=write,
                          stderr=subprocess.PIPE, env=_env(GATEWAY_SECRET=SECRET), timeout=60)  # fmt: skip
    os.close(write)
    assert proc.stderr == b""
    assert proc.returncode == 1


def test_version() -> None:
    from importlib.metadata import version

    out = _gateway("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"gateway {version('authgateway')}"
