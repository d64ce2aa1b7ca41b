"""Unit tests of `extract_token` (which credential a request carries: Bearer first, then the access cookie)
and of `authenticate` (whose it is and whether it may act: revocation, stale grants, the CSRF check).

The proxy and token-attack suites drive the same functions over HTTP; these pin their exact answers on
aiohttp's own request objects, with a real KeyRing, RevokedSessions and StaleGrants on a bare app.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from gateway.authz.grants import StaleGrants
from gateway.config import Config
from gateway.core.errors import BadRequest, CsrfFailed, TokenExpired, TokenInvalid, TokenMissing
from gateway.http.auth import authenticate, extract_token
from gateway.http.keys import CLOCK, CONFIG, GRANTS, KEYRING, PRINCIPAL, REVOKED
from gateway.sessions.revocations import RevokedSessions
from gateway.tokens.keyring import KeyRing
from tests.support import FakeClock, build_config


def request(*headers: tuple[str, str]) -> web.Request:
    return make_mocked_request("GET", "/api/x", headers=CIMultiDict([("Host", "gw"), *headers]))


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return build_config(tmp_path, "http://127.0.0.1:1", cookies={"access_name": "at"})


@pytest.mark.parametrize(
    ("authorization", "token"),
    [("Bearer abc", "abc"), ("bearer abc", "abc"), ("BEARER abc", "abc"), ("Bearer  abc ", "abc"),
     ("  Bearer abc", "abc"), ("Bearer abc def", "abc def")],
)  # fmt: skip
def test_bearer_token_in_any_scheme_case(cfg: Config, authorization: str, token: str) -> None:
    assert extract_token(request(("Authorization", authorization)), cfg) == (token, False)


def test_bearer_wins_over_the_cookie(cfg: Config) -> None:
    assert extract_token(request(("Authorization", "Bearer abc"), ("Cookie", "at=cookie")), cfg) == ("abc", False)


def test_cookie_when_no_bearer(cfg: Config) -> None:
    assert extract_token(request(("Cookie", "other=1; at=cookie")), cfg) == ("cookie", True)
    assert extract_token(request(("Authorization", "Basic Zm9vOmJhcg=="), ("Cookie", "at=c")), cfg) == ("c", True)
    assert extract_token(request(("Authorization", "Bearerabc"), ("Cookie", "at=c")), cfg) == ("c", True)


def test_nothing_is_none(cfg: Config) -> None:
    assert extract_token(request(), cfg) == (None, False)
    assert extract_token(request(("Cookie", "at=")), cfg) == (None, False)
    assert extract_token(request(("Cookie", "access_token=x")), cfg) == (None, False)  # not the configured name


@pytest.mark.parametrize("authorization", ["Bearer", "Bearer ", "Bearer    "])
def test_empty_bearer_is_invalid(cfg: Config, authorization: str) -> None:
    with pytest.raises(TokenInvalid, match="^the Bearer token is empty$"):
        extract_token(request(("Authorization", authorization), ("Cookie", "at=c")), cfg)


def test_two_authorization_headers_are_a_bad_request(cfg: Config) -> None:
    with pytest.raises(BadRequest, match="^more than one Authorization header$"):
        extract_token(request(("Authorization", "Bearer a"), ("authorization", "Bearer a")), cfg)


def test_the_access_cookie_is_read_again_for_the_same_header(cfg: Config) -> None:
    # The parsed cookie is cached per Cookie header: the second answer must be the first one.
    for _ in range(3):
        assert extract_token(request(("Cookie", "x=1; at=same-cookie-twice")), cfg) == ("same-cookie-twice", True)
        assert extract_token(request(("Cookie", "x=1; other=same-cookie-twice")), cfg) == (None, False)


def test_the_access_cookie_of_a_long_cookie_header_is_read(cfg: Config) -> None:
    long = "pad=" + "p" * 5000 + "; at=long-header-cookie"
    for _ in range(2):
        assert extract_token(request(("Cookie", long)), cfg) == ("long-header-cookie", True)


# -- authenticate ------------------------------------------------------------------------------------

NOW = 1_800_000_000.0
OWN = "http://gw"  # the origin of request() below: scheme http, Host gw
NO_ORIGIN = "^a cookie-authenticated request needs an Origin or Referer header from this site$"


@pytest.fixture
def app(cfg: Config) -> web.Application:
    app = web.Application()
    app[CONFIG] = cfg
    app[CLOCK] = FakeClock(NOW)
    app[KEYRING] = KeyRing(cfg.tokens)
    app[REVOKED] = RevokedSessions()
    app[GRANTS] = StaleGrants()
    return app


def token(app: web.Application, *, sub: str = "user-1", sid: str = "session-1", rv: int = 0, at: float = NOW) -> str:
    return app[KEYRING].issue_access_token(sub=sub, sid=sid, email="u@example.com", now=at, rv=rv)[0]


def call(
    app: web.Application, method: str, *headers: tuple[str, str], required: bool = True, csrf: bool = True
) -> tuple[web.Request, object]:
    req = make_mocked_request(method, "/api/x", headers=CIMultiDict([("Host", "gw"), *headers]), app=app)
    return req, authenticate(req, required=required, csrf=csrf)


def test_authenticate_bearer_gives_the_principal_and_stores_it(app: web.Application) -> None:
    req, principal = call(app, "POST", ("Authorization", f"Bearer {token(app)}"))
    assert principal is not None and principal.sub == "user-1" and principal.sid == "session-1"
    assert principal.email == "u@example.com"
    assert req[PRINCIPAL] is principal


def test_authenticate_no_token_required_is_missing(app: web.Application) -> None:
    with pytest.raises(TokenMissing, match="^an access token is required$"):
        call(app, "GET")


def test_authenticate_no_token_optional_is_anonymous(app: web.Application) -> None:
    req, principal = call(app, "POST", required=False)
    assert principal is None
    assert PRINCIPAL not in req


def test_authenticate_checks_expiry_against_the_apps_clock(app: web.Application) -> None:
    old = token(app, at=NOW - 600)  # access_ttl is 5m
    with pytest.raises(TokenExpired, match="^the access token has expired$"):
        call(app, "GET", ("Authorization", f"Bearer {old}"))
    fresh = token(app, at=NOW - 240)
    assert call(app, "GET", ("Authorization", f"Bearer {fresh}"))[1] is not None


def test_authenticate_revoked_session_is_refused(app: web.Application) -> None:
    app[REVOKED].add(["session-1"], at=NOW)
    with pytest.raises(TokenInvalid, match="^the session of this access token was revoked$"):
        call(app, "GET", ("Authorization", f"Bearer {token(app)}"))
    assert call(app, "GET", ("Authorization", f"Bearer {token(app, sid='session-2')}"))[1] is not None


def test_authenticate_stale_grants_are_refused(app: web.Application) -> None:
    app[GRANTS].raise_to("user-1", 2, at=NOW)
    with pytest.raises(TokenInvalid, match="^the roles or the client of this access token changed; refresh it$"):
        call(app, "GET", ("Authorization", f"Bearer {token(app, rv=1)}"))
    assert call(app, "GET", ("Authorization", f"Bearer {token(app, rv=2)}"))[1] is not None
    assert call(app, "GET", ("Authorization", f"Bearer {token(app, sub='user-2', rv=1)}"))[1] is not None


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_authenticate_cookie_on_an_unsafe_method_needs_our_origin(app: web.Application, method: str) -> None:
    cookie = ("Cookie", f"at={token(app)}")
    with pytest.raises(CsrfFailed, match=NO_ORIGIN):
        call(app, method, cookie)
    req, principal = call(app, method, cookie, ("Origin", OWN))
    assert principal is not None and req[PRINCIPAL] is principal


def test_authenticate_refused_csrf_stores_no_principal(app: web.Application) -> None:
    req = make_mocked_request(
        "POST", "/api/x", headers=CIMultiDict([("Host", "gw"), ("Cookie", f"at={token(app)}")]), app=app
    )
    with pytest.raises(CsrfFailed):
        authenticate(req, required=True)
    assert PRINCIPAL not in req


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
def test_authenticate_cookie_on_a_safe_method_needs_no_origin(app: web.Application, method: str) -> None:
    assert call(app, method, ("Cookie", f"at={token(app)}"))[1] is not None


@pytest.mark.parametrize("upgrade", ["websocket", "WebSocket"])
def test_authenticate_cookie_websocket_handshake_needs_our_origin(app: web.Application, upgrade: str) -> None:
    # A cross-site page can open a WebSocket with the user's cookies: the handshake is checked like a POST.
    cookie = ("Cookie", f"at={token(app)}")
    with pytest.raises(CsrfFailed, match=NO_ORIGIN):
        call(app, "GET", cookie, ("Upgrade", upgrade))
    assert call(app, "GET", cookie, ("Upgrade", upgrade), ("Origin", OWN))[1] is not None
    assert call(app, "GET", cookie, ("Upgrade", "h2c"))[1] is not None


def test_authenticate_bearer_needs_no_origin(app: web.Application) -> None:
    # A Bearer token is never sent by a browser on its own: no CSRF check.
    assert (
        call(app, "POST", ("Authorization", f"Bearer {token(app)}"), ("Origin", "http://evil.example"))[1] is not None
    )


def test_authenticate_csrf_false_skips_the_origin_check(app: web.Application) -> None:
    assert call(app, "POST", ("Cookie", f"at={token(app)}"), csrf=False)[1] is not None
