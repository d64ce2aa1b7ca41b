"""Unit tests of who the gateway believes: `peer_trusted`, `client_ip`, `own_origin` (and `check_origin` on it).

The functions are imported by their public names from one place below, so a move of the header policy to
another module only needs that import re-pointed. Requests are aiohttp's own request objects with a chosen
peer address; nothing of the gateway is stubbed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from gateway.config import Config
from gateway.core.errors import CsrfFailed
from gateway.http.auth import check_origin, client_ip, own_origin, peer_trusted
from tests.support import build_config

PROXY = "10.0.0.5"  # a trusted proxy in the configs below
INNER_PROXY = "10.0.0.9"  # another trusted hop, e.g. a load balancer behind the CDN
CLIENT = "203.0.113.7"
SPOOF = "198.51.100.66"


def request(peer: str, headers: list[tuple[str, str]] | None = None, *, scheme: str = "http") -> web.Request:
    """A request as the server would see it from `peer`; headers keep their order and repeats."""
    all_headers = CIMultiDict([("Host", "gw.internal:8080"), *(headers or [])])
    base = make_mocked_request("POST", "/api/echo", headers=all_headers)
    return base.clone(remote=peer, scheme=scheme)


def config(tmp_path: Path, *, trusted: list[str] | None = None, public_origin: str | None = None) -> Config:
    server: dict[str, object] = {"host": "127.0.0.1", "port": 0, "trusted_proxies": trusted or []}
    if public_origin is not None:
        server["public_origin"] = public_origin
    return build_config(tmp_path, "http://127.0.0.1:1", server=server)


@pytest.fixture
def trusting(tmp_path: Path) -> Config:
    return config(tmp_path, trusted=["10.0.0.0/24", "2001:db8::/32"])


# -- peer_trusted ------------------------------------------------------------------------------------


def test_peer_trusted_nothing_configured_trusts_no_one(tmp_path: Path) -> None:
    assert peer_trusted(request(PROXY), config(tmp_path)) is False
    assert peer_trusted(request("127.0.0.1"), config(tmp_path)) is False


@pytest.mark.parametrize("peer", ["10.0.0.5", "10.0.0.0", "10.0.0.255", "2001:db8::1"])
def test_peer_trusted_inside_a_configured_network(trusting: Config, peer: str) -> None:
    assert peer_trusted(request(peer), trusting) is True


OUTSIDE = ["10.0.1.5", "127.0.0.1", CLIENT, "2001:db9::1", "::ffff:203.0.113.7", "", "not-an-ip"]


@pytest.mark.parametrize("peer", OUTSIDE)
def test_peer_trusted_outside_or_unparsable_is_not(trusting: Config, peer: str) -> None:
    assert peer_trusted(request(peer), trusting) is False


def test_peer_trusted_ignores_forwarded_headers_naming_a_trusted_address(trusting: Config) -> None:
    # Only the socket's peer counts: a client cannot claim to be the proxy.
    r = request(CLIENT, [("X-Forwarded-For", PROXY), ("X-Real-IP", PROXY), ("Forwarded", f"for={PROXY}")])
    assert peer_trusted(r, trusting) is False


def test_peer_trusted_answers_per_config_for_the_same_peer(tmp_path: Path) -> None:
    # The cache is per trusted_proxies tuple: a reload that drops a network is believed at once.
    wide = config(tmp_path, trusted=["10.0.0.0/8"])
    narrow = config(tmp_path, trusted=["10.9.0.0/16"])
    assert peer_trusted(request(PROXY), wide) is True
    assert peer_trusted(request(PROXY), narrow) is False
    assert peer_trusted(request(PROXY), wide) is True


# -- client_ip --------------------------------------------------------------------------------------


def test_client_ip_without_trusted_proxies_is_the_peer_whatever_it_sends(tmp_path: Path) -> None:
    r = request(CLIENT, [("X-Forwarded-For", SPOOF)])
    assert client_ip(r, config(tmp_path)) == CLIENT


def test_client_ip_untrusted_peer_chain_is_ignored(trusting: Config) -> None:
    r = request(CLIENT, [("X-Forwarded-For", f"{SPOOF}, {PROXY}")])
    assert client_ip(r, trusting) == CLIENT


def test_client_ip_trusted_peer_one_hop(trusting: Config) -> None:
    assert client_ip(request(PROXY, [("X-Forwarded-For", CLIENT)]), trusting) == CLIENT


def test_client_ip_appending_proxy_takes_the_hop_it_added_not_the_clients_first(trusting: Config) -> None:
    # An appending proxy turns a client's forged "X-Forwarded-For: SPOOF" into "SPOOF, CLIENT".
    assert client_ip(request(PROXY, [("X-Forwarded-For", f"{SPOOF}, {CLIENT}")]), trusting) == CLIENT
    many = ", ".join(f"198.51.100.{i}" for i in range(1, 30))
    assert client_ip(request(PROXY, [("X-Forwarded-For", f"{many}, {CLIENT}")]), trusting) == CLIENT


def test_client_ip_skips_every_trusted_hop_from_the_right(trusting: Config) -> None:
    r = request(PROXY, [("X-Forwarded-For", f"{SPOOF}, {CLIENT}, {INNER_PROXY}, 2001:db8::7")])
    assert client_ip(r, trusting) == CLIENT


def test_client_ip_repeated_headers_are_one_chain_in_order(trusting: Config) -> None:
    r = request(PROXY, [("X-Forwarded-For", f"{SPOOF}, {CLIENT}"), ("X-Forwarded-For", INNER_PROXY)])
    assert client_ip(r, trusting) == CLIENT
    r = request(PROXY, [("X-Forwarded-For", CLIENT), ("X-Forwarded-For", SPOOF)])
    assert client_ip(r, trusting) == SPOOF  # the later header is the nearer hop


def test_client_ip_spaces_and_empty_elements_are_ignored(trusting: Config) -> None:
    assert client_ip(request(PROXY, [("X-Forwarded-For", f" , {SPOOF} ,,  {CLIENT} , ")]), trusting) == CLIENT


def test_client_ip_all_hops_trusted_is_the_farthest(trusting: Config) -> None:
    r = request(PROXY, [("X-Forwarded-For", f"{INNER_PROXY}, 10.0.0.1")])
    assert client_ip(r, trusting) == INNER_PROXY


def test_client_ip_trusted_peer_without_header_is_the_peer(trusting: Config) -> None:
    assert client_ip(request(PROXY), trusting) == PROXY
    assert client_ip(request(PROXY, [("X-Forwarded-For", " , ")]), trusting) == PROXY


def test_client_ip_garbage_nearest_hop_falls_back_to_the_peer(trusting: Config) -> None:
    # Whatever wrote the unparsable hop is not to be believed for anything left of it either.
    assert client_ip(request(PROXY, [("X-Forwarded-For", f"{CLIENT}, unknown")]), trusting) == PROXY
    assert client_ip(request(PROXY, [("X-Forwarded-For", f"{CLIENT}, 203.0.113.7:4711")]), trusting) == PROXY


def test_client_ip_ipv6_chain(trusting: Config) -> None:
    r = request("2001:db8::1", [("X-Forwarded-For", f"{SPOOF}, 2001:db9::42")])
    assert client_ip(r, trusting) == "2001:db9::42"


# -- own_origin -------------------------------------------------------------------------------------

FORGED = [("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "evil.example")]


def test_own_origin_is_scheme_and_host_as_the_client_used_them(tmp_path: Path) -> None:
    assert own_origin(request(CLIENT), config(tmp_path)) == "http://gw.internal:8080"
    assert own_origin(request(CLIENT, scheme="https"), config(tmp_path)) == "https://gw.internal:8080"


def test_own_origin_host_is_lowercased(tmp_path: Path) -> None:
    base = make_mocked_request("POST", "/", headers=CIMultiDict([("Host", "GW.Example.COM")])).clone(remote=CLIENT)
    assert own_origin(base, config(tmp_path)) == "http://gw.example.com"


def test_own_origin_ignores_forwarded_host_and_proto_without_trusted_proxies(tmp_path: Path) -> None:
    assert own_origin(request(CLIENT, FORGED), config(tmp_path)) == "http://gw.internal:8080"


def test_own_origin_ignores_forwarded_host_and_proto_from_an_untrusted_peer(trusting: Config) -> None:
    assert own_origin(request(CLIENT, FORGED), trusting) == "http://gw.internal:8080"
    assert own_origin(request("10.0.1.5", FORGED), trusting) == "http://gw.internal:8080"


def test_own_origin_believes_a_trusted_peer(trusting: Config) -> None:
    r = request(PROXY, [("X-Forwarded-Proto", "HTTPS"), ("X-Forwarded-Host", "App.Example.com")])
    assert own_origin(r, trusting) == "https://app.example.com"


def test_own_origin_trusted_peer_first_value_of_a_list(trusting: Config) -> None:
    r = request(PROXY, [("X-Forwarded-Proto", "https, http"), ("X-Forwarded-Host", "app.example.com, evil.example")])
    assert own_origin(r, trusting) == "https://app.example.com"


def test_own_origin_trusted_peer_missing_or_empty_values_keep_the_own_ones(trusting: Config) -> None:
    assert own_origin(request(PROXY), trusting) == "http://gw.internal:8080"
    r = request(PROXY, [("X-Forwarded-Proto", " "), ("X-Forwarded-Host", "")])
    assert own_origin(r, trusting) == "http://gw.internal:8080"
    assert own_origin(request(PROXY, [("X-Forwarded-Host", "app.example.com")], scheme="https"), trusting) == (
        "https://app.example.com"
    )


def test_own_origin_public_origin_wins_over_everything(tmp_path: Path) -> None:
    cfg = config(tmp_path, trusted=["10.0.0.0/24"], public_origin="https://app.example.com")
    assert own_origin(request(PROXY, FORGED), cfg) == "https://app.example.com"
    assert own_origin(request(CLIENT, FORGED), cfg) == "https://app.example.com"


def test_own_origin_without_host_header_is_scheme_only(tmp_path: Path) -> None:
    # HTTP/1.0 allows a request without Host: the origin is then empty, never a crash.
    bare = make_mocked_request("POST", "/", headers=CIMultiDict()).clone(remote=CLIENT)
    assert own_origin(bare, config(tmp_path)) == "http://"
    trusted = make_mocked_request("POST", "/", headers=CIMultiDict([("X-Forwarded-Host", "app.example.com")]))
    behind = config(tmp_path, trusted=["10.0.0.0/24"])
    assert own_origin(trusted.clone(remote=PROXY), behind) == "http://app.example.com"


# -- check_origin (uses own_origin) -------------------------------------------------------------------


@pytest.mark.parametrize("referer", ["http:/x", "http:x", "/page", "//", "http://"])
def test_check_origin_referer_without_scheme_and_host_is_no_origin(tmp_path: Path, referer: str) -> None:
    # With no Host header our own origin is "http://": a Referer lacking a host must not equal it.
    bare = make_mocked_request("POST", "/", headers=CIMultiDict([("Referer", referer)])).clone(remote=CLIENT)
    with pytest.raises(CsrfFailed, match=NO_ORIGIN):
        check_origin(bare, config(tmp_path))


def test_check_origin_referer_with_scheme_and_host_is_compared(tmp_path: Path) -> None:
    ok = request(CLIENT, [("Referer", "http://gw.internal:8080/page?q=1")])
    check_origin(ok, config(tmp_path))
    with pytest.raises(CsrfFailed, match=UNTRUSTED):
        check_origin(request(CLIENT, [("Referer", "http://evil.example/gw.internal:8080")]), config(tmp_path))


NO_ORIGIN = "^a cookie-authenticated request needs an Origin or Referer header from this site$"
UNTRUSTED = "^the request comes from an origin this gateway does not trust$"


@pytest.mark.parametrize("headers", [[], [("Origin", "null")], [("Origin", "")], [("Referer", "")]])
def test_check_origin_missing_or_null_origin_is_refused_as_such(tmp_path: Path, headers: list[tuple[str, str]]) -> None:
    with pytest.raises(CsrfFailed, match=NO_ORIGIN):
        check_origin(request(CLIENT, headers), config(tmp_path))


@pytest.mark.parametrize("origin", ["NULL", "http://evil.example", "http://gw.internal:8081"])
def test_check_origin_foreign_origin_is_refused_as_untrusted(tmp_path: Path, origin: str) -> None:
    with pytest.raises(CsrfFailed, match=UNTRUSTED):
        check_origin(request(CLIENT, [("Origin", origin)]), config(tmp_path))


@pytest.mark.parametrize("origin", ["http://gw.internal:8080", "http://gw.internal:8080/", " HTTP://GW.Internal:8080/"])
def test_check_origin_own_origin_in_any_case_with_a_trailing_slash_passes(tmp_path: Path, origin: str) -> None:
    check_origin(request(CLIENT, [("Origin", origin)]), config(tmp_path))


def test_check_origin_trusted_origins_are_compared_whole(tmp_path: Path) -> None:
    cfg = build_config(tmp_path, "http://127.0.0.1:1", csrf={"trusted_origins": ["https://admin.example.com"]})
    check_origin(request(CLIENT, [("Origin", "https://admin.example.com/")]), cfg)
    with pytest.raises(CsrfFailed, match=UNTRUSTED):
        check_origin(request(CLIENT, [("Origin", "https://admin.example.com.evil.net")]), cfg)
