"""`./run-demo` as a new user runs it (issue 10): restarts with several users, dies with its
servers when it is killed, and installs only the package (not the test extras).

The script runs from a copy in tmp_path with its own config on free ports, and this test
environment's virtualenv linked in as its `.venv` (so it installs nothing).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import SECRET, free_port, wait_http

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "run-demo"


def _config(gw_port: int, up_port: int) -> str:
    text = (ROOT / "config.toml").read_text()
    return text.replace("port = 8080", f"port = {gw_port}").replace("127.0.0.1:9000", f"127.0.0.1:{up_port}")


@pytest.fixture
def demo_dir(tmp_path: Path) -> Iterator[tuple[Path, int, int]]:
    gw_port, up_port = free_port(), free_port()
    (tmp_path / "run-demo").write_bytes(SCRIPT.read_bytes())
    (tmp_path / "run-demo").chmod(0o755)
    (tmp_path / "config.toml").write_text(_config(gw_port, up_port))
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    yield tmp_path, gw_port, up_port


def _start(folder: Path, up_port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DEMO_UPSTREAM_PORT": str(up_port)}
    env.pop("GATEWAY_SECRET", None)
    # A file, not a pipe: an unread pipe could fill up and stall the servers.
    with log.open("wb") as out:
        return subprocess.Popen([str(folder / "run-demo")], env=env, stdout=subprocess.DEVNULL, stderr=out)


def _closed(port: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                pass
        except OSError:
            return True
        time.sleep(0.1)
    return False


def test_killing_the_script_stops_both_servers_and_a_restart_with_more_users_works(
    demo_dir: tuple[Path, int, int],
) -> None:
    folder, gw_port, up_port = demo_dir
    for run in range(2):
        log = folder / f"run-{run}.log"
        proc = _start(folder, up_port, log)
        try:
            wait_http(f"http://127.0.0.1:{gw_port}/healthz", timeout=30, proc=proc)  # type: ignore[arg-type]
            wait_http(f"http://127.0.0.1:{up_port}/public/hello", timeout=10)
            if run == 0:
                env = {**os.environ, "GATEWAY_SECRET": (folder / ".gateway-secret").read_text().strip()}
                for i in range(5):
                    subprocess.run(
                        [str(folder / ".venv" / "bin" / "gateway"), "users", "add", f"user{i}@example.com",
                         "--password-stdin", "--config", str(folder / "config.toml")],
                        input=b"a-long-password\n", env=env, check=True, capture_output=True,
                    )  # fmt: skip
            # Only the script's own pid, not its process group: its servers must go with it.
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            stderr = log.read_text(errors="replace")
        assert _closed(gw_port), f"the gateway outlived run-demo: {stderr}"
        assert _closed(up_port), f"the demo upstream outlived run-demo: {stderr}"
        assert "Broken pipe" not in stderr and "Traceback" not in stderr, stderr


def test_script_installs_only_the_package_and_reads_the_user_list_whole() -> None:
    text = SCRIPT.read_text()
    assert "pip install -q -e ." in text
    assert ".[test]" not in text
    assert "grep -q" not in text


@pytest.mark.parametrize(("leeway", "accepted_after_21s"), [("0s", False), ("30s", True)])
async def test_readme_short_ttl_hint_needs_zero_leeway(
    make_gateway: Any, make_config: Any, clock: Any, leeway: str, accepted_after_21s: bool
) -> None:
    """The README's "see it expire" hint: with access_ttl = 20s the token dies at 20 s only when
    leeway is 0; the default 30 s leeway keeps it accepted past that."""
    from tests.support import mint

    tokens = {"secret": SECRET, "access_ttl": "20s", "leeway": leeway}
    client = await make_gateway(make_config(tokens=tokens))
    token = mint(now=clock.now, exp=int(clock.now) + 20)
    assert (await client.get("/api/whoami", headers={"Authorization": f"Bearer {token}"})).status == 200
    clock.advance(21)
    status = (await client.get("/api/whoami", headers={"Authorization": f"Bearer {token}"})).status
    assert status == (200 if accepted_after_21s else 401)
    assert 'access_ttl = "20s"` and\n`leeway = "0s"`' in (ROOT / "README.md").read_text()
