"""Unit tests of the header policy both ways: `gateway/proxy/headers.py` (what of a client's request headers
reaches an upstream, and what the gateway adds) and `Forwarder.response_headers` (what of an upstream's
answer reaches the client).

The policy is pure: it is fed name/value pairs and `RequestFacts`, so every test asserts the exact
header list an upstream would get, in order. The attack suite (tests/security/test_header_spoofing.py)
drives the same rules over raw sockets through a real gateway.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict

from gateway.config import Config
from gateway.proxy.forward import Forwarder
from gateway.proxy.headers import HeaderPolicy, Identity, RequestFacts, encode_identity, fold
from tests.support import build_config

CLIENT = "203.0.113.7"
PROXY = "10.0.0.5"
FACTS = RequestFacts(peer=CLIENT, trusted=False, secure=False, host="gw.example", request_id="rid-1")
TRUSTED = RequestFacts(peer=PROXY, trusted=True, secure=False, host="gw.example", request_id="rid-1")
# What the gateway adds for an anonymous request from FACTS.
TAIL = [("X-Forwarded-For", CLIENT), ("X-Forwarded-Proto", "http"), ("X-Forwarded-Host", "gw.example"),
        ("X-Request-Id", "rid-1")]  # fmt: skip
USER = Identity("user-1", "u@example.com", "session-1", ("admin", "ops"))
HOP_BY_HOP_NAMES = ["Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Connection",
                    "TE", "Trailer", "Trailers", "Transfer-Encoding", "Upgrade"]  # fmt: skip


def config(tmp_path: Path, **tables: Any) -> Config:
    return build_config(tmp_path, "http://127.0.0.1:1", **tables)


def upstream(
    cfg: Config,
    pairs: list[tuple[str, str]],
    facts: RequestFacts = FACTS,
    identity: Identity | None = None,
    *,
    forward_authorization: bool = False,
    preserve_host: bool = False,
) -> list[tuple[str, str]]:
    return HeaderPolicy(cfg).upstream_headers(
        iter(pairs), facts, identity, forward_authorization=forward_authorization, preserve_host=preserve_host
    )


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return config(tmp_path)


@pytest.fixture
def passing(tmp_path: Path) -> Config:
    """`server.underscore_headers = "pass"`: odd spellings are folded and judged instead of dropped."""
    return config(tmp_path, server={"host": "127.0.0.1", "port": 0, "underscore_headers": "pass"})


# -- fold and encode_identity -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["X_User_Id", "x.user.id", "X-USER_ID", "x-user-id", "X.User_Id"])
def test_fold_reads_case_underscore_and_dot_as_a_wsgi_server_does(name: str) -> None:
    assert fold(name) == "x-user-id"


def test_fold_leaves_other_characters() -> None:
    assert fold("Accept-Encoding") == "accept-encoding"
    assert fold("a__b..c") == "a--b--c"


@pytest.mark.parametrize("value", ["user@example.com", "a b", "100%", 'x,y;z="q"', ""])
def test_encode_identity_printable_ascii_is_unchanged(value: str) -> None:
    assert encode_identity(value) == value


@pytest.mark.parametrize(
    ("value", "encoded"),
    [("jörg@example.com", "j%C3%B6rg@example.com"), ("a%b@ö.de", "a%25b@%C3%B6.de"), ("line\nbreak", "line%0Abreak"),
     ("tab\there", "tab%09here"), ("ö ü", "%C3%B6%20%C3%BC"), ("ö/~!", "%C3%B6/~!")],
)  # fmt: skip
def test_encode_identity_other_values_are_utf8_percent_encoded(value: str, encoded: str) -> None:
    assert encode_identity(value) == encoded


# -- upstream_headers: what passes ------------------------------------------------------------------


def test_ordinary_headers_pass_in_order_with_their_names_and_repeats(cfg: Config) -> None:
    pairs = [("Accept", "text/html"), ("X-Custom", "1"), ("x-custom", "2"), ("Content-Type", "a/b")]
    assert upstream(cfg, pairs) == [*pairs, *TAIL]


def test_nothing_sent_gives_only_the_gateways_headers(cfg: Config) -> None:
    assert upstream(cfg, []) == TAIL


@pytest.mark.parametrize("name", [*HOP_BY_HOP_NAMES, "transfer-ENCODING", "upgrade"])
def test_hop_by_hop_headers_are_dropped(cfg: Config, name: str) -> None:
    assert upstream(cfg, [(name, "x"), ("Accept", "a")]) == [("Accept", "a"), *TAIL]


@pytest.mark.parametrize("name", ["Host", "host", "Expect", "X-Request-Id", "x-request-id"])
def test_headers_the_gateway_sets_are_never_copied(cfg: Config, name: str) -> None:
    assert upstream(cfg, [(name, "evil"), ("Accept", "a")]) == [("Accept", "a"), *TAIL]


IDENTITY_SPELLINGS = ["X-User-Id", "x-user-id", "X-USER-EMAIL", "X-Session-Id", "X-User-Roles", "X-Client-Id",
                      "X-Token-Scopes"]  # fmt: skip


@pytest.mark.parametrize("name", IDENTITY_SPELLINGS)
def test_client_identity_headers_are_dropped_even_from_a_trusted_proxy(cfg: Config, name: str) -> None:
    assert upstream(cfg, [(name, "evil")]) == TAIL
    assert upstream(cfg, [(name, "evil")], TRUSTED) == [("X-Forwarded-For", PROXY), *TAIL[1:]]


@pytest.mark.parametrize("name", ["X_User_Id", "X.User.Id", "X-Custom_Thing", "x.custom", "X_Forwarded_For"])
def test_odd_spellings_are_dropped_by_default(cfg: Config, name: str) -> None:
    assert upstream(cfg, [(name, "v"), ("Accept", "a")]) == [("Accept", "a"), *TAIL]
    assert upstream(cfg, [(name, "v")], TRUSTED) == [("X-Forwarded-For", PROXY), *TAIL[1:]]


@pytest.mark.parametrize("name", ["X_Custom_Thing", "x.custom", "My_Header"])
def test_odd_spellings_pass_under_their_own_name_when_configured(passing: Config, name: str) -> None:
    assert upstream(passing, [(name, "v")]) == [(name, "v"), *TAIL]


@pytest.mark.parametrize(
    "name",
    ["X_User_Id", "X.User.Id", "x_user-email", "X_Session_Id", "X_User_Roles", "X.Client.Id", "X_Token.Scopes",
     "X_Forwarded_For", "X.Forwarded.Proto", "X_Forwarded_Host", "X_Forwarded_Port", "X.Forwarded.Prefix",
     "X_Real_IP", "X_Request_Id", "Transfer_Encoding", "Proxy_Authorization"],
)  # fmt: skip
def test_odd_spellings_of_protected_names_are_dropped_even_when_passing(passing: Config, name: str) -> None:
    # A WSGI server would read `X_Forwarded_Port` as HTTP_X_FORWARDED_PORT, a header only trusted proxies set.
    assert upstream(passing, [(name, "evil"), ("Accept", "a")]) == [("Accept", "a"), *TAIL]
    assert upstream(passing, [(name, "evil")], TRUSTED) == [("X-Forwarded-For", PROXY), *TAIL[1:]]


def test_custom_identity_names_are_the_ones_stripped(tmp_path: Path) -> None:
    names = {"user_id": "X-Auth-User", "email": "X-Auth-Mail", "session_id": "X-Auth-Sid", "roles": "X-Auth-Roles",
             "client_id": "X-Auth-Client", "scopes": "X-Auth-Scopes"}  # fmt: skip
    cfg = config(
        tmp_path, identity_headers=names, server={"host": "127.0.0.1", "port": 0, "underscore_headers": "pass"}
    )
    sent = [(n, "evil") for n in names.values()] + [("X_Auth_User", "evil"), ("x.auth.roles", "evil")]
    assert upstream(cfg, [*sent, ("X-User-Id", "kept")]) == [("X-User-Id", "kept"), *TAIL]
    assert upstream(cfg, sent, identity=USER) == [
        *TAIL, ("X-Auth-User", "user-1"), ("X-Auth-Mail", "u@example.com"), ("X-Auth-Sid", "session-1"),
        ("X-Auth-Roles", "admin,ops"),
    ]  # fmt: skip


@pytest.mark.parametrize("name", ["Forwarded", "X-Real-IP", "x-real-ip", "X-Forwarded-Port", "X-Forwarded-Prefix",
                                  "x-forwarded-server"])  # fmt: skip
def test_other_forwarding_headers_pass_from_trusted_proxies_only(cfg: Config, name: str) -> None:
    # Dropping one must not cost the client its later headers.
    assert upstream(cfg, [(name, "for=1.2.3.4"), ("Accept", "a")]) == [("Accept", "a"), *TAIL]
    assert upstream(cfg, [(name, "for=1.2.3.4")], TRUSTED) == [(name, "for=1.2.3.4"), ("X-Forwarded-For", PROXY),
                                                                *TAIL[1:]]  # fmt: skip


@pytest.mark.parametrize(
    "connection", ["keep-alive, X-Secret", "keep-alive,X-Secret", "X-SECRET", " , x-secret ,", "x_secret", "X.Secret"]
)
def test_headers_named_in_connection_are_dropped(passing: Config, connection: str) -> None:
    pairs = [("Connection", connection), ("X-Secret", "s"), ("Accept", "a"), ("x-secret", "t")]
    assert upstream(passing, pairs) == [("Accept", "a"), *TAIL]


def test_odd_spelling_named_in_connection_is_dropped(passing: Config) -> None:
    pairs = [("Connection", "X-Secret"), ("X_Secret", "s"), ("X_Other", "o")]
    assert upstream(passing, pairs) == [("X_Other", "o"), *TAIL]


def test_connection_lists_of_several_headers_are_all_honoured(cfg: Config) -> None:
    pairs = [("Connection", "A-One"), ("connection", "A-Two, A-Three"), ("A-One", "1"), ("A-Two", "2"),
             ("A-Three", "3"), ("A-Four", "4")]  # fmt: skip
    assert upstream(cfg, pairs) == [("A-Four", "4"), *TAIL]


def test_authorization_passes_only_where_the_route_forwards_it(cfg: Config) -> None:
    pairs = [("Authorization", "Bearer t"), ("Accept", "a")]
    assert upstream(cfg, pairs) == [("Accept", "a"), *TAIL]
    assert upstream(cfg, pairs, forward_authorization=True) == [*pairs, *TAIL]
    assert upstream(cfg, [("authorization", "Basic x")], forward_authorization=True) == [
        ("authorization", "Basic x"),
        *TAIL,
    ]


# -- upstream_headers: cookies -----------------------------------------------------------------------


def test_gateway_cookies_are_removed_and_others_pass(cfg: Config) -> None:
    pairs = [("Cookie", "a=1; access_token=AT; b=2"), ("Accept", "x"), ("cookie", "refresh_token=RT;c=3")]
    assert upstream(cfg, pairs) == [("Accept", "x"), ("Cookie", "a=1; b=2; c=3"), *TAIL]


def test_only_gateway_cookies_leave_no_cookie_header(cfg: Config) -> None:
    assert upstream(cfg, [("Cookie", "access_token=AT; refresh_token=RT")]) == TAIL
    assert upstream(cfg, [("Cookie", " ; ;")]) == TAIL


def test_cookies_are_compared_by_exact_trimmed_name(cfg: Config) -> None:
    cookie = " access_token =AT;access_token_x=1; xaccess_token=2;;v=a=b ; refresh_token"
    assert upstream(cfg, [("Cookie", cookie)]) == [("Cookie", "access_token_x=1; xaccess_token=2; v=a=b"), *TAIL]


def test_gateway_cookie_whose_value_holds_equals_signs_is_removed(cfg: Config) -> None:
    # Base64 padding: the name ends at the first "=", so "access_token=a=b" is still the gateway's cookie.
    cookie = "access_token=YWJj==; refresh_token=a=b=c; app=x=y"
    assert upstream(cfg, [("Cookie", cookie)]) == [("Cookie", "app=x=y"), *TAIL]


def test_configured_cookie_names_are_the_ones_removed(tmp_path: Path) -> None:
    cfg = config(tmp_path, cookies={"access_name": "gw_at", "refresh_name": "gw_rt"})
    cookie = "access_token=1; gw_at=2; refresh_token=3; gw_rt=4"
    assert upstream(cfg, [("Cookie", cookie)]) == [("Cookie", "access_token=1; refresh_token=3"), *TAIL]


# -- upstream_headers: the forwarding headers the gateway sets ----------------------------------------------


def test_untrusted_peer_forwarding_headers_are_replaced(cfg: Config) -> None:
    forged = [("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "evil.example"),
              ("x-forwarded-for", "5.6.7.8")]  # fmt: skip
    assert upstream(cfg, forged) == TAIL


def test_secure_connection_is_https(cfg: Config) -> None:
    facts = RequestFacts(peer=CLIENT, trusted=False, secure=True, host="gw.example", request_id="r")
    assert upstream(cfg, [("X-Forwarded-Proto", "http")], facts) == [
        ("X-Forwarded-For", CLIENT), ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "gw.example"),
        ("X-Request-Id", "r"),
    ]  # fmt: skip


def test_trusted_proxy_chain_is_extended_with_the_peer(cfg: Config) -> None:
    pairs = [("X-Forwarded-For", "198.51.100.1, 203.0.113.7"), ("x-forwarded-for", "10.0.0.9")]
    assert upstream(cfg, pairs, TRUSTED) == [
        ("X-Forwarded-For", f"198.51.100.1, 203.0.113.7, 10.0.0.9, {PROXY}"), *TAIL[1:],
    ]  # fmt: skip


def test_trusted_proxy_proto_and_host_first_value_of_the_first_header(cfg: Config) -> None:
    pairs = [("X-Forwarded-Proto", " https , http"), ("x-forwarded-proto", "ftp"),
             ("X-Forwarded-Host", " app.example.com , evil.example"), ("X-Forwarded-Host", "evil2.example")]  # fmt: skip
    assert upstream(cfg, pairs, TRUSTED) == [
        ("X-Forwarded-For", PROXY), ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "app.example.com"),
        ("X-Request-Id", "rid-1"),
    ]  # fmt: skip


def test_trusted_proxy_without_forwarding_headers_gets_the_own_values(cfg: Config) -> None:
    secure = RequestFacts(peer=PROXY, trusted=True, secure=True, host="gw.example", request_id="rid-1")
    assert upstream(cfg, [("Accept", "a")], secure) == [
        ("Accept", "a"), ("X-Forwarded-For", PROXY), ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "gw.example"), ("X-Request-Id", "rid-1"),
    ]  # fmt: skip


def test_trusted_proxy_empty_proto_and_host_fall_back_to_the_own(cfg: Config) -> None:
    pairs = [("X-Forwarded-Proto", ""), ("X-Forwarded-Host", " ")]
    assert upstream(cfg, pairs, TRUSTED) == [("X-Forwarded-For", PROXY), *TAIL[1:]]


def test_public_origin_names_the_forwarded_host(tmp_path: Path) -> None:
    server = {"host": "127.0.0.1", "port": 0, "public_origin": "https://app.example.com:8443"}
    cfg = config(tmp_path, server=server)
    host = [("X-Forwarded-Host", "other.example")]
    for facts in (FACTS, TRUSTED):
        out = upstream(cfg, host, facts)
        assert [v for n, v in out if n == "X-Forwarded-Host"] == ["app.example.com:8443"]


def test_no_host_anywhere_sends_no_forwarded_host(cfg: Config) -> None:
    bare = RequestFacts(peer=CLIENT, trusted=False, secure=False, host="", request_id="rid-1")
    assert upstream(cfg, [], bare) == [("X-Forwarded-For", CLIENT), ("X-Forwarded-Proto", "http"),
                                       ("X-Request-Id", "rid-1")]  # fmt: skip
    assert upstream(cfg, [], bare, preserve_host=True) == [
        ("X-Forwarded-For", CLIENT), ("X-Forwarded-Proto", "http"), ("X-Request-Id", "rid-1"),
    ]  # fmt: skip


def test_preserve_host_sends_the_clients_host(cfg: Config) -> None:
    assert upstream(cfg, [("Host", "gw.example")], preserve_host=True) == [*TAIL, ("Host", "gw.example")]


# -- upstream_headers: identity -----------------------------------------------------------------------


def test_user_identity_headers_follow_the_gateways_own(cfg: Config) -> None:
    sent = [("X-User-Id", "evil"), ("X-Client-Id", "evil"), ("Accept", "a")]
    assert upstream(cfg, sent, identity=USER) == [
        ("Accept", "a"), *TAIL, ("X-User-Id", "user-1"), ("X-User-Email", "u@example.com"),
        ("X-Session-Id", "session-1"), ("X-User-Roles", "admin,ops"),
    ]  # fmt: skip


def test_user_identity_values_are_encoded(cfg: Config) -> None:
    user = Identity("ü-1", "jörg@example.com", "s\n1", ("röle", "b"))
    assert upstream(cfg, [], identity=user)[len(TAIL):] == [
        ("X-User-Id", "%C3%BC-1"), ("X-User-Email", "j%C3%B6rg@example.com"), ("X-Session-Id", "s%0A1"),
        ("X-User-Roles", "r%C3%B6le,b"),
    ]  # fmt: skip


def test_user_without_roles_gets_an_empty_roles_header(cfg: Config) -> None:
    user = Identity("user-1", "u@example.com", "session-1")
    assert upstream(cfg, [("X-User-Roles", "admin")], identity=user)[-1] == ("X-User-Roles", "")


def test_machine_client_identity_is_its_id_and_scopes(cfg: Config) -> None:
    client = Identity("svc", "", "", client_id="svc-ö", scopes=("read", "write"))
    assert upstream(cfg, [("X-Token-Scopes", "admin"), ("X-User-Id", "evil")], identity=client) == [
        *TAIL, ("X-Client-Id", "svc-%C3%B6"), ("X-Token-Scopes", "read write"),
    ]  # fmt: skip


# -- Forwarder.response_headers --------------------------------------------------------------------------


@dataclass
class Answer:
    """An upstream's answer as response_headers reads it: only its header multidict."""

    headers: CIMultiDict[str]


def response(cfg: Config, *pairs: tuple[str, str]) -> list[tuple[str, str]]:
    return list(Forwarder(cfg).response_headers(Answer(CIMultiDict(pairs))).items())  # type: ignore[arg-type]


def test_response_headers_pass_in_order_with_names_and_repeats(cfg: Config) -> None:
    pairs = [("Content-Type", "text/plain"), ("X-A", "1"), ("x-a", "2"), ("Set-Cookie", "app=1"),
             ("Set-Cookie", "other=2; Path=/")]  # fmt: skip
    assert response(cfg, *pairs) == pairs


@pytest.mark.parametrize("name", [*HOP_BY_HOP_NAMES, "keep-alive", "TRANSFER-ENCODING"])
def test_response_hop_by_hop_headers_are_dropped(cfg: Config, name: str) -> None:
    assert response(cfg, (name, "x"), ("X-A", "1")) == [("X-A", "1")]


@pytest.mark.parametrize("connection", ["close, X-Secret", "close,X-Secret", "x-secret", " X-SECRET ,"])
def test_response_headers_named_in_connection_are_dropped(cfg: Config, connection: str) -> None:
    out = response(cfg, ("Connection", connection), ("X-Secret", "s"), ("X-A", "1"), ("x-secret", "t"))
    assert out == [("X-A", "1")]


def test_response_connection_lists_of_several_headers_are_all_honoured(cfg: Config) -> None:
    out = response(cfg, ("Connection", "A-One"), ("connection", "A-Two"), ("A-One", "1"), ("A-Two", "2"), ("A-3", "3"))
    assert out == [("A-3", "3")]


def test_response_set_cookie_for_a_gateway_cookie_is_dropped_and_logged(
    cfg: Config, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway.proxy"):
        out = response(cfg, ("Set-Cookie", "access_token=forged; Path=/"), ("Set-Cookie", "app=1"),
                       ("set-cookie", " refresh_token =forged"), ("Set-Cookie", "access_token_x=1"),
                       ("Set-Cookie", "app2=access_token=1"))  # fmt: skip
    assert out == [("Set-Cookie", "app=1"), ("Set-Cookie", "access_token_x=1"), ("Set-Cookie", "app2=access_token=1")]
    warnings = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert warnings == [("gateway.proxy", logging.WARNING, "dropped upstream Set-Cookie for a gateway cookie")] * 2


def test_response_configured_cookie_names_are_the_ones_dropped(tmp_path: Path) -> None:
    cfg = config(tmp_path, cookies={"access_name": "gw_at", "refresh_name": "gw_rt"})
    out = response(cfg, ("Set-Cookie", "gw_at=1"), ("Set-Cookie", "access_token=2"), ("Set-Cookie", "gw_rt=3"))
    assert out == [("Set-Cookie", "access_token=2")]


def test_response_cookie_named_header_is_not_a_set_cookie(cfg: Config) -> None:
    assert response(cfg, ("X-Set-Cookie", "access_token=1"), ("Cookie", "access_token=1")) == [
        ("X-Set-Cookie", "access_token=1"), ("Cookie", "access_token=1"),
    ]  # fmt: skip
