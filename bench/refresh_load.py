"""Load clients that wrk cannot be: refresh-token followers and a login storm.

refresh: N clients each log in once (outside the timed window), then for `duration` seconds follow
their own rotations: POST /auth/refresh-token {"refresh_token": ...}, read the new token, repeat.
storm:   `concurrency` logins at once (argon2 on the gateway), again and again, for `duration` seconds.

Prints one JSON object on stdout. Users are given as --users a@x,b@y (all with --password); clients
are spread over them round-robin.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def _login(session: aiohttp.ClientSession, url: str, email: str, password: str) -> dict[str, object]:
    async with session.post(
        f"{url}/auth/login", json={"email": email, "password": password, "refresh_in_body": True}
    ) as resp:
        body = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"login {email}: {resp.status} {body}")
        return body  # type: ignore[no-any-return]


async def refresh(url: str, users: list[str], password: str, clients: int, duration: float) -> dict[str, object]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        logins = await asyncio.gather(*(_login(session, url, users[i % len(users)], password) for i in range(clients)))
        tokens = [str(b["refresh_token"]) for b in logins]
        counts = [0] * clients
        errors: dict[str, int] = {}
        latencies: list[float] = []
        start = time.perf_counter()
        deadline = start + duration

        async def follow(i: int) -> None:
            token = tokens[i]
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                async with session.post(f"{url}/auth/refresh-token", json={"refresh_token": token}) as resp:
                    body = await resp.json(content_type=None)
                latencies.append(time.perf_counter() - t0)
                if resp.status != 200:
                    key = f"{resp.status} {body.get('error') if isinstance(body, dict) else body}"
                    errors[key] = errors.get(key, 0) + 1
                    return  # this client's chain is dead (e.g. revoked); do not hammer
                token = body["refresh_token"]
                counts[i] += 1

        await asyncio.gather(*(follow(i) for i in range(clients)))
        elapsed = time.perf_counter() - start
    total = sum(counts)
    return {
        "clients": clients,
        "users": len(users),
        "seconds": round(elapsed, 3),
        "rotations": total,
        "rotations_per_s": round(total / elapsed, 1),
        "errors": errors,
        "p50_ms": round(1000 * (_pct(latencies, 0.50) or 0), 2),
        "p99_ms": round(1000 * (_pct(latencies, 0.99) or 0), 2),
    }


async def storm(url: str, users: list[str], password: str, concurrency: int, duration: float) -> dict[str, object]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        deadline = start + duration
        done = 0
        failed = 0
        waves = 0
        latencies: list[float] = []

        async def one(i: int) -> None:
            nonlocal done, failed
            t0 = time.perf_counter()
            try:
                await _login(session, url, users[i % len(users)], password)
                done += 1
            except RuntimeError:
                failed += 1
            latencies.append(time.perf_counter() - t0)

        while time.perf_counter() < deadline:
            await asyncio.gather(*(one(i) for i in range(concurrency)))
            waves += 1
        elapsed = time.perf_counter() - start
    return {
        "concurrency": concurrency,
        "waves": waves,
        "logins": done,
        "failed": failed,
        "seconds": round(elapsed, 3),
        "logins_per_s": round(done / elapsed, 1),
        "login_p50_ms": round(1000 * (_pct(latencies, 0.50) or 0), 1),
        "login_p99_ms": round(1000 * (_pct(latencies, 0.99) or 0), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["refresh", "storm"])
    parser.add_argument("--url", required=True, help="gateway base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--users", required=True, help="comma-separated emails")
    parser.add_argument("--password", required=True)
    parser.add_argument("--clients", type=int, default=50, help="refresh clients / storm concurrency")
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    users = args.users.split(",")
    if args.mode == "refresh":
        result = asyncio.run(refresh(args.url, users, args.password, args.clients, args.duration))
    else:
        result = asyncio.run(storm(args.url, users, args.password, args.clients, args.duration))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
