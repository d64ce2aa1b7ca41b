"""`gateway check-policy`: the decision and the deciding rule, from the config and the store only (no gateway runs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import SECRET, write_toml

PASSWORD = "correct horse battery"


def _cli(config: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args, "--config", str(config)], input=stdin, text=True, capture_output=True, timeout=60
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("check")
    cfg = write_toml(
        tmp / "g.toml",
        f'[store]\nurl = "sqlite:///{tmp / "g.db"}"\n[tokens]\nsecret = "{SECRET}"\n'
        '[[routes]]\nprefix = "/api"\nupstream = "http://127.0.0.1:1"\n'
        'allow = [{ roles = ["admin"] }, { roles = ["auditor"], methods = ["GET", "HEAD"] }, '
        '{ scopes = ["billing.write"], paths = ["/api/billing/**"] }, { roles = ["ops"], mfa = true }]\n'
        'deny = [{ networks = ["10.0.0.0/8"] }, { paths = ["/api/admin/keys/**"], roles = ["auditor"] }]\n'
        '[[routes]]\nprefix = "/opt"\nupstream = "http://127.0.0.1:1"\nauth = "optional"\nallow = [{ paths = ["/opt/open/**"] }, { roles = ["admin"] }]\n'
        '[[routes]]\nprefix = "/public"\nupstream = "http://127.0.0.1:1"\nauth = "public"\n'
        '[[routes]]\nprefix = "/plain"\nupstream = "http://127.0.0.1:1"\n',
    )
    for email, role in (("admin@example.com", "admin"), ("audit@example.com", "auditor"), ("ops@example.com", "ops"), ("nobody@example.com", None)):
        assert _cli(cfg, "users", "add", email, "--password-stdin", stdin=PASSWORD + "\n").returncode == 0
        if role:
            assert _cli(cfg, "users", "roles", email, "--add", role).returncode == 0
    added = _cli(cfg, "clients", "add", "billing", "--scope", "billing.write")
    cid = added.stdout.splitlines()[0].split(": ")[1]
    return cfg, cid


@pytest.mark.parametrize(
    ("args", "out"),
    [
        (["GET", "/api/x", "--email", "admin@example.com"], "allow\nroutes[0].allow[0]\n"),
        (["DELETE", "/api/x", "--email", "audit@example.com"], "deny\nroutes[0].allow\n"),
        (["GET", "/api/admin/keys/1", "--email", "audit@example.com"], "deny\nroutes[0].deny[1]\n"),
        (["GET", "/api/x/../admin/keys/1", "--email", "audit@example.com"], "deny\nroutes[0].deny[1]\n"),
        (["GET", "/api/x", "--email", "admin@example.com", "--ip", "10.2.3.4"], "deny\nroutes[0].deny[0]\n"),
        (["GET", "/api/x", "--email", "nobody@example.com"], "deny\nroutes[0].allow\n"),
        (["GET", "/api/x", "--anonymous"], "login required\nroutes[0]\n"),
        (["GET", "/opt/secret", "--anonymous"], "login required\nroutes[1].allow\n"),
        (["GET", "/opt/open/x", "--anonymous"], "allow\nroutes[1].allow[0]\n"),
        (["GET", "/public/x", "--anonymous"], "allow\nroutes[2]\n"),
        (["GET", "/plain/x", "--email", "nobody@example.com"], "allow\nroutes[3]\n"),
        (["post", "/api/billing/inv", "--client", "CID"], "allow\nroutes[0].allow[2]\n"),
        (["POST", "/api/other", "--client", "CID"], "deny\nroutes[0].allow\n"),
        (["GET", "/api/x", "--email", "ops@example.com", "--mfa"], "allow\nroutes[0].allow[3]\n"),
    ],
)
def test_check_policy_prints_decision_and_rule(setup: tuple[Path, str], args: list[str], out: str) -> None:
    cfg, cid = setup
    done = _cli(cfg, "check-policy", *[cid if a == "CID" else a for a in args])
    assert (done.returncode, done.stdout) == (0, out), done.stderr


def test_check_policy_step_up_says_login_required(setup: tuple[Path, str]) -> None:
    done = _cli(setup[0], "check-policy", "GET", "/api/x", "--email", "ops@example.com")
    assert done.returncode == 0 and done.stdout.splitlines()[:2] == ["login required", "routes[0].allow[3]"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["GET", "/nowhere", "--anonymous"], "no route matches"),
        (["GET", "/auth/login", "--anonymous"], "gateway endpoint"),
        (["GET", "/api/x", "--email", "ghost@example.com"], "no user"),
        (["GET", "/api/x", "--client", "cl_ghost"], "no client"),
        (["GET", "/api/x", "--anonymous", "--ip", "nope"], "not an IP address"),
        (["GET", "/api/%zz", "--anonymous"], "broken percent-escape"),
    ],
)
def test_check_policy_errors_are_one_line(setup: tuple[Path, str], args: list[str], message: str) -> None:
    done = _cli(setup[0], "check-policy", *args)
    assert done.returncode == 1 and message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_check_policy_needs_exactly_one_caller(setup: tuple[Path, str]) -> None:
    assert _cli(setup[0], "check-policy", "GET", "/api/x").returncode == 2
    assert _cli(setup[0], "check-policy", "GET", "/api/x", "--anonymous", "--email", "a@example.com").returncode == 2


@pytest.fixture(scope="module")
def admin_and_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("check-case")
    return write_toml(
        tmp / "g.toml",
        f'[store]\nurl = "sqlite:///{tmp / "g.db"}"\n[tokens]\nsecret = "{SECRET}"\n'
        '[[routes]]\nprefix = "/admin"\nupstream = "http://127.0.0.1:1"\n'
        '[[routes]]\nprefix = "/"\nupstream = "http://127.0.0.1:1"\nauth = "public"\n',
    )


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/ADMIN/x", "ambiguous_path"), ("/Admin", "ambiguous_path"), ("/%41DMIN/x", "ambiguous_path"),
        ("/AUTH/login", "ambiguous_path"), ("/HEALTHZ", "ambiguous_path"),
        ("/healthz", "gateway endpoint"), ("/metrics", "gateway endpoint"),
    ],
)  # fmt: skip
def test_check_policy_agrees_with_the_gateway_on_case_and_its_own_paths(
    admin_and_root: Path, path: str, message: str
) -> None:
    done = _cli(admin_and_root, "check-policy", "GET", path, "--anonymous")
    assert done.returncode == 1 and message in done.stderr and "Traceback" not in done.stderr, done


def test_check_policy_case_exact_paths_decide_as_before(admin_and_root: Path) -> None:
    admin = _cli(admin_and_root, "check-policy", "GET", "/admin/X", "--anonymous")
    assert admin.stdout == "login required\nroutes[0]\n", admin.stderr
    other = _cli(admin_and_root, "check-policy", "GET", "/Other", "--anonymous")
    assert other.stdout == "allow\nroutes[1]\n", other.stderr
