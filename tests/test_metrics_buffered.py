"""Metrics summed locally and flushed on render export exactly what per-request updates would."""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

from gateway.core.metrics import Metrics


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): round(s.value, 9)
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_buffered_metrics_render_the_same_as_direct_updates() -> None:
    buffered, direct = Metrics(), Metrics()
    direct.buffered = False
    assert buffered.buffered
    # Bucket bounds themselves, values between, below the first and above the last bound.
    seconds = [0.001, 0.0025, 0.0001, 0.003, 0.5, 1, 29.9, 30, 31, 0.2, 0.75, 10]
    for i, value in enumerate(seconds * 20):
        for m in (buffered, direct):
            m.observe_upstream("/api" if i % 3 else "/public", value)
            m.request("/api", ("GET", "POST", "BREW")[i % 3], (200, 401, 502)[i % 3])
            m.auth_decision(("allow", "deny")[i % 2], ("ok", "missing_token")[i % 2])
    first = _samples(buffered.render())
    assert first == _samples(direct.render())
    assert first[("gateway_requests_total", (("method", "OTHER"), ("route", "/api"), ("status", "502")))] == 80
    # A second render adds nothing; new counts after it are flushed by the next one.
    assert _samples(buffered.render()) == first
    buffered.request("/api", "GET", 200)
    text = buffered.render().decode()
    assert re.search(r'gateway_requests_total\{method="GET",route="/api",status="200"\} 81', text)
