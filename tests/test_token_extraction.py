"""Unit tests of `extract_token`: which credential a request carries (Bearer first, then the access cookie).

The proxy and token-attack suites drive the same function over HTTP; these pin its exact answers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from gateway.auth import extract_token
from gateway.config import Config
from gateway.errors import BadRequest, TokenInvalid
from tests.support import build_config


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
