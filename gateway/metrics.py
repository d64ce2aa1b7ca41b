"""Prometheus metrics of one gateway app, on a registry of its own (prometheus-client).

Must not: import aiohttp, or take a label value from the client unbounded (methods outside the
standard set become OTHER; routes are configured prefixes).
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

__all__ = ["Metrics"]

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
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
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
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

    def request(self, route: str, method: str, status: int) -> None:
        """Counts one answered request; label children are cached because this runs on every request."""
        key = (route, method, status)
        child = self._request_children.get(key)
        if child is None:
            child = self.requests.labels(route, method if method in _METHODS else "OTHER", str(status))
            if len(self._request_children) < 10_000:
                self._request_children[key] = child
        child.inc()

    def observe_upstream(self, route: str, seconds: float) -> None:
        """Records the time to the upstream's response headers."""
        child = self._upstream_children.get(route)
        if child is None:
            child = self._upstream_children[route] = self.upstream_seconds.labels(route)
        child.observe(seconds)

    def auth_decision(self, decision: str, reason: str) -> None:
        """Counts one access-token decision (allow/deny/anonymous)."""
        key = (decision, reason)
        child = self._auth_children.get(key)
        if child is None:
            child = self._auth_children[key] = self.auth.labels(decision, reason)
        child.inc()

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
        getattr(self, name).labels(label or reason or "ok").inc()
        if event == "reuse_detected":
            self.reuse.inc()

    def mfa_event(self, event: str, method: str) -> None:
        """Counts a second-factor audit event; both labels come from our own fixed sets."""
        self.mfa.labels(event, method).inc()

    def render(self) -> bytes:
        """The text exposition; with PROMETHEUS_MULTIPROC_DIR set, the sum over all worker processes."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)
            return generate_latest(merged)
        return generate_latest(self.registry)
