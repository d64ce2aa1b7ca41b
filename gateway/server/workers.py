"""The worker supervisor: N `gateway serve` processes sharing one port, restarted when they die.

Must not: import aiohttp or serve requests itself; it only starts, watches and stops workers.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from types import FrameType

__all__ = ["WORKER_ENV", "supervise"]

WORKER_ENV = "GATEWAY_WORKER_INDEX"
_RESTART_BACKOFF_MAX = 10.0


def supervise(config_path: str, workers: int, *, stop_timeout: float) -> int:
    """Runs `workers` children with SO_REUSEPORT until SIGTERM/SIGINT; returns the exit status."""
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    reload_requested = False

    def on_hup(signum: int, frame: FrameType | None) -> None:
        nonlocal reload_requested
        reload_requested = True

    signal.signal(signal.SIGHUP, on_hup)

    # Each worker writes its metrics to files here and /metrics on any worker sums them all.
    metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-")

    def start(index: int) -> subprocess.Popen[bytes]:
        env = {**os.environ, WORKER_ENV: str(index), "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
        return subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", config_path], env=env)

    procs = {i: start(i) for i in range(workers)}
    started = dict.fromkeys(procs, time.monotonic())
    failures = dict.fromkeys(procs, 0)
    restart_at: dict[int, float] = {}
    print(f"gateway supervisor pid={os.getpid()} started {workers} workers", file=sys.stderr)
    while not stopping:
        time.sleep(0.2)
        if reload_requested:
            reload_requested = False
            for proc in procs.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGHUP)
        now = time.monotonic()
        for i, proc in list(procs.items()):
            if proc.poll() is None:
                continue
            if i not in restart_at:
                # A worker that ran a while before dying starts its back-off afresh.
                failures[i] = 1 if now - started[i] > 30 else failures[i] + 1
                # Back off a worker that keeps dying at once, so a broken config or port cannot spin the CPU.
                delay = min(_RESTART_BACKOFF_MAX, 0.5 * 2 ** (failures[i] - 1))
                restart_at[i] = now + delay
                print(f"gateway worker {i} exited with {proc.returncode}; restarting in {delay:.1f}s", file=sys.stderr)
            elif now >= restart_at[i]:
                del restart_at[i]
                procs[i] = start(i)
                started[i] = now
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + stop_timeout
    for proc in procs.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0
