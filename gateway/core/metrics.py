"""Prometheus metrics of one gateway app, on a registry of its own (prometheus-client).

Must not: import aiohttp, or take a label value from the client unbounded (methods outside the
standard set become OTHER; routes are configured prefixes).
"""

from __future__ import annotations

import bisect
import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

__all__ = ["Metrics"]

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_UPSTREAM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# audit event -> (counter attribute, label value)
_EVENTS = {
    "login_success": ("logins", "success"),
    "login_failure": ("logins", "failure"),
    "refresh": ("refreshes", None),
    "refresh_failure": ("refreshes", "rejected"),
    "reuse_detected": ("refreshes", "reused"),
}


class Metrics:
    """The counters, histograms and gauges the gateway exports at /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("gateway_requests_total", "Requests answered, by route, method and status", ["route", "method", "status"], registry=r)
        self.upstream_seconds = Histogram(
            "gateway_upstream_duration_seconds", "Time to the upstream's response headers", ["route"], registry=r,
            buckets=_UPSTREAM_BUCKETS,
        )  # fmt: skip
        self.auth = Counter("gateway_auth_decisions_total", "Access-token decisions, by decision and reason", ["decision", "reason"], registry=r)
        self.logins = Counter("gateway_logins_total", "Login attempts, by result", ["result"], registry=r)
        self.refreshes = Counter("gateway_refreshes_total", "Refresh attempts, by result", ["result"], registry=r)
        self.reuse = Counter("gateway_refresh_reuse_detected_total", "Replayed refresh tokens (sessions revoked as stolen)", registry=r)
        self.revocations = Counter("gateway_sessions_revoked_total", "Sessions revoked, by reason", ["reason"], registry=r)
        self.active_sessions = Gauge("gateway_active_sessions", "Live sessions in the store", registry=r, multiprocess_mode="max")
        self.revoked_set = Gauge("gateway_revoked_session_ids", "Revoked session ids held in memory", registry=r, multiprocess_mode="max")
        self.policy_refusals = Counter(
            "gateway_policy_refusals_total", "Requests a route policy refused, by route, deciding rule and answer",
            ["route", "rule", "reason"], registry=r,
        )  # fmt: skip
        self.mfa = Counter(
            "gateway_mfa_events_total", "Second-factor events (enrolments, failures, resets), by event and method",
            ["event", "method"], registry=r,
        )  # fmt: skip
        self._request_children: dict[tuple[str, str, int], Any] = {}
        self._auth_children: dict[tuple[str, str], Any] = {}
        self._upstream_children: dict[str, Any] = {}
        # Per-request counts are summed in plain dicts and handed to prometheus-client (a lock per
        # update) only by flush(), which render() calls first. With PROMETHEUS_MULTIPROC_DIR another
        # worker's /metrics reads this one's files at any time, so there every update goes straight through.
        self.buffered = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self._pending_requests: dict[tuple[str, str, int], int] = {}
        self._pending_auth: dict[tuple[str, str], int] = {}
        self._pending_upstream: dict[str, list[float]] = {}  # per bucket counts, then the sum
        self._session_children: dict[tuple[str, str], Any] = {}

    def flush(self) -> None:
        """Moves the locally summed counts into the prometheus-client metrics."""
        requests, self._pending_requests = self._pending_requests, {}
        for (route, method, status), n in requests.items():
            self._request_child(route, method, status).inc(n)
        auth, self._pending_auth = self._pending_auth, {}
        for (decision, reason), n in auth.items():
            self._auth_child(decision, reason).inc(n)
        upstream, self._pending_upstream = self._pending_upstream, {}
        for route, counts in upstream.items():
            child = self._upstream_child(route)
            # A histogram's buckets are separate counters (cumulated at export); adding n to the one
            # bucket an observation falls in is what n observe() calls would do.
            for i, n in enumerate(counts[:-1]):
                if n:
                    child._buckets[i].inc(n)
            child._sum.inc(counts[-1])

    def request(self, route: str, method: str, status: int) -> None:
        """Counts one answered request; label children are cached because this runs on every request."""
        if method not in _METHODS:
            method = "OTHER"
        if self.buffered:
            key = (route, method, status)
            pending = self._pending_requests
            pending[key] = pending.get(key, 0) + 1
            return
        self._request_child(route, method, status).inc()

    def _request_child(self, route: str, method: str, status: int) -> Any:
        key = (route, method, status)
        child = self._request_children.get(key)
        if child is None:
            child = self.requests.labels(route, method, str(status))
            if len(self._request_children) < 10_000:
                self._request_children[key] = child
        return child

    def observe_upstream(self, route: str, seconds: float) -> None:
        """Records the time to the upstream's response headers."""
        if self.buffered:
            counts = self._pending_upstream.get(route)
            if counts is None:
                counts = self._pending_upstream[route] = [0.0] * (len(_UPSTREAM_BUCKETS) + 2)
            counts[bisect.bisect_left(_UPSTREAM_BUCKETS, seconds)] += 1  # le: a bound is in its bucket
            counts[-1] += seconds
            return
        self._upstream_child(route).observe(seconds)

    def _upstream_child(self, route: str) -> Any:
        child = self._upstream_children.get(route)
        if child is None:
            child = self._upstream_children[route] = self.upstream_seconds.labels(route)
        return child

    def auth_decision(self, decision: str, reason: str) -> None:
        """Counts one access-token decision (allow/deny/anonymous)."""
        if self.buffered:
            key = (decision, reason)
            pending = self._pending_auth
            pending[key] = pending.get(key, 0) + 1
            return
        self._auth_child(decision, reason).inc()

    def _auth_child(self, decision: str, reason: str) -> Any:
        key = (decision, reason)
        child = self._auth_children.get(key)
        if child is None:
            child = self._auth_children[key] = self.auth.labels(decision, reason)
        return child

    def policy_refusal(self, route: str, rule: str, reason: str) -> None:
        """Counts one refusal by a route policy; rule paths come from the config, so the labels stay bounded."""
        self.policy_refusals.labels(route, rule, reason).inc()

    def session_event(self, event: str, reason: str) -> None:
        """Counts a session event as the audit log names it."""
        if event == "session_revoked":
            self.revocations.labels(reason or "unknown").inc()
            return
        target = _EVENTS.get(event)
        if target is None:
            return
        name, label = target
        # One labels() lookup per distinct (counter, value): a refresh counts one of these each time, and
        # the values are the gateway's own reason codes, so the cache stays small.
        key = (name, label or reason or "ok")
        child = self._session_children.get(key)
        if child is None:
            child = self._session_children[key] = getattr(self, name).labels(key[1])
        child.inc()
        if event == "reuse_detected":
            self.reuse.inc()

    def mfa_event(self, event: str, method: str) -> None:
        """Counts a second-factor audit event; both labels come from our own fixed sets."""
        self.mfa.labels(event, method).inc()

    def render(self) -> bytes:
        """The text exposition; with PROMETHEUS_MULTIPROC_DIR set, the sum over all worker processes."""
        self.flush()
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)
            return generate_latest(merged)
        return generate_latest(self.registry)
