"""Store micro-benchmark: refresh-token rotations per second through the gateway's SQLite store,
against a baseline of plain one-statement-per-call aiosqlite doing the same logical work, in one run.

Both sides use the gateway's schema on their own file with the same PRAGMAs (WAL, synchronous=NORMAL).
Each of `concurrency` tasks follows its own chain: session k's current token is rotated to a new hash,
the new hash is rotated next, and so on. The baseline does per rotation, each as its own awaited call:
SELECT (token + session + user), UPDATE token, INSERT successor, UPDATE session, COMMIT; one
connection, so an asyncio.Lock keeps transactions from interleaving (as the store's own lock does).

    python bench/store_bench.py --dir /tmp/x --duration 3 --cycles 3 --concurrency 1,50
Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import statistics
import time
import uuid
from pathlib import Path

import aiosqlite

from gateway.config import StoreConfig
from gateway.store import SessionRecord, open_store

_counter = itertools.count()
DAY = 86400.0


def _new_hash() -> str:
    return hashlib.sha256(f"bench-{next(_counter)}".encode()).hexdigest()


async def _seed(path: Path, chains: int) -> list[str]:
    """Creates the schema, one user and `chains` sessions; returns each session's first token hash."""
    store = await open_store(StoreConfig(url=f"sqlite:///{path}", sqlite_path=path))
    now = time.time()
    user_id = str(uuid.uuid4())
    await store.create_user(user_id=user_id, email="bench@example.com", email_key="bench@example.com",
                            password_hash="x", now=now)  # fmt: skip
    heads = []
    for _ in range(chains):
        head = _new_hash()
        session = SessionRecord(
            id=str(uuid.uuid4()), user_id=user_id, created_at=now, last_used_at=now, expires_at=now + 30 * DAY,
            absolute_expires_at=now + 90 * DAY, remember_me=True, user_agent="bench", ip="127.0.0.1",
        )  # fmt: skip
        await store.create_session(session, token_hash=head)
        heads.append(head)
    await store.aclose()
    return heads


async def _drive(rotate, heads: list[str], duration: float) -> tuple[int, int, float]:  # type: ignore[no-untyped-def]
    """Runs one task per chain for `duration` s; returns (rotations, failures, seconds)."""
    ok = 0
    bad = 0
    deadline = time.perf_counter() + duration

    async def chain(k: int) -> None:
        nonlocal ok, bad
        while time.perf_counter() < deadline:
            successor = _new_hash()
            if await rotate(heads[k], successor):
                heads[k] = successor
                ok += 1
            else:
                bad += 1
                return

    start = time.perf_counter()
    await asyncio.gather(*(chain(k) for k in range(len(heads))))
    return ok, bad, time.perf_counter() - start


async def bench_store(path: Path, heads: list[str], duration: float) -> tuple[int, int, float]:
    store = await open_store(StoreConfig(url=f"sqlite:///{path}", sqlite_path=path))

    async def rotate(token_hash: str, successor: str) -> bool:
        outcome = await store.rotate(
            token_hash=token_hash, successor_hash=successor, now=time.time(), grace_s=10.0,
            remember_ttl_s=30 * DAY, session_ttl_s=DAY / 2,
        )  # fmt: skip
        return outcome.kind == "rotated"

    try:
        return await _drive(rotate, heads, duration)
    finally:
        await store.aclose()


async def bench_baseline(path: Path, heads: list[str], duration: float) -> tuple[int, int, float]:
    db = await aiosqlite.connect(str(path))
    await db.execute("PRAGMA busy_timeout = 10000")
    await db.execute("PRAGMA journal_mode = WAL")
    await db.execute("PRAGMA synchronous = NORMAL")
    await db.execute("PRAGMA foreign_keys = ON")
    lock = asyncio.Lock()

    async def rotate(token_hash: str, successor: str) -> bool:
        now = time.time()
        async with lock:
            cursor = await db.execute(
                "SELECT t.rotated_at, s.id, s.remember_me, s.expires_at, s.absolute_expires_at, s.revoked_at, u.disabled"
                " FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id JOIN users u ON u.id = s.user_id"
                " WHERE t.token_hash = ?",
                (token_hash,),
            )
            row = await cursor.fetchone()
            await cursor.close()
            if row is None or row[0] is not None or row[5] is not None or row[6] or now >= min(row[3], row[4]):
                return False
            expires_at = min(now + (30 * DAY if row[2] else DAY / 2), row[4])
            await db.execute(
                "UPDATE refresh_tokens SET rotated_at = ?, successor_hash = ? WHERE token_hash = ? AND rotated_at IS NULL",
                (now, successor, token_hash),
            )
            await db.execute(
                "INSERT INTO refresh_tokens (token_hash, session_id, issued_at) VALUES (?, ?, ?)", (successor, row[1], now)
            )
            await db.execute("UPDATE sessions SET last_used_at = ?, expires_at = ? WHERE id = ?", (now, expires_at, row[1]))
            await db.commit()
            return True

    try:
        return await _drive(rotate, heads, duration)
    finally:
        await db.close()


async def run(workdir: Path, duration: float, cycles: int, concurrencies: list[int]) -> dict[str, object]:
    workdir.mkdir(parents=True, exist_ok=True)
    out: dict[str, object] = {"duration_s": duration, "cycles": cycles, "modes": {}}
    for conc in concurrencies:
        store_path, base_path = workdir / f"store-c{conc}.db", workdir / f"baseline-c{conc}.db"
        store_heads = await _seed(store_path, conc)
        base_heads = await _seed(base_path, conc)
        rates: dict[str, list[float]] = {"store": [], "baseline": []}
        failures = {"store": 0, "baseline": 0}
        for _ in range(cycles):  # interleaved: store, baseline, store, baseline, ...
            for name, fn, path, heads in (
                ("store", bench_store, store_path, store_heads),
                ("baseline", bench_baseline, base_path, base_heads),
            ):
                ok, bad, secs = await fn(path, heads, duration)
                rates[name].append(ok / secs)
                failures[name] += bad
        s, b = statistics.median(rates["store"]), statistics.median(rates["baseline"])
        out["modes"][f"concurrency_{conc}"] = {  # type: ignore[index]
            "concurrency": conc,
            "store_rotations_per_s": round(s, 1),
            "baseline_rotations_per_s": round(b, 1),
            "ratio": round(s / b, 2) if b else None,
            "store_samples": [round(r, 1) for r in rates["store"]],
            "baseline_samples": [round(r, 1) for r in rates["baseline"]],
            "failures": failures,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True, type=Path, help="where the two SQLite files go")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--concurrency", default="1,50", help="comma-separated numbers of concurrent chains")
    args = parser.parse_args()
    concs = [int(c) for c in args.concurrency.split(",")]
    print(json.dumps(asyncio.run(run(args.dir, args.duration, args.cycles, concs))))


if __name__ == "__main__":
    main()
