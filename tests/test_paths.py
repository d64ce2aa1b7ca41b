"""Path normalization and the route table on their own (the proxy tests attack them over HTTP)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import RouteConfig
from gateway.core.errors import BadRequest
from gateway.proxy.paths import RouteTable, Target, normalize_target, under_prefix
from tests.support import build_config


@pytest.mark.parametrize(
    ("raw", "path", "encoded", "query"),
    [
        ("/", "/", "/", ""),
        ("/api/x?a=1&b=%20", "/api/x", "/api/x", "a=1&b=%20"),
        ("/api/x?", "/api/x", "/api/x", ""),
        ("/api/x?a?b", "/api/x", "/api/x", "a?b"),
        ("/public/../api/x", "/api/x", "/api/x", ""),
        ("/public/%2e%2e/api", "/api", "/api", ""),
        ("/public/..%2fapi", "/api", "/api", ""),
        ("/public%2F..%2Fapi", "/api", "/api", ""),
        ("//api///x", "/api/x", "/api/x", ""),
        ("/public\\..\\api", "/api", "/api", ""),
        ("/a/./b/.", "/a/b/", "/a/b/", ""),
        ("/a/b/..", "/a/", "/a/", ""),
        ("/a/b/", "/a/b/", "/a/b/", ""),
        ("/../../x", "/x", "/x", ""),
        ("/..", "/", "/", ""),
        ("/.", "/", "/", ""),
        ("/a/.b/..c", "/a/.b/..c", "/a/.b/..c", ""),
        ("/caf%C3%A9", "/café", "/caf%C3%A9", ""),
        ("/a;b", "/a;b", "/a%3Bb", ""),
        ("/a%3Bb", "/a;b", "/a%3Bb", ""),
        ("/a b", "/a b", "/a%20b", ""),
        ("/a%25b", "/a%b", "/a%25b", ""),
        ("/a%3Fb", "/a?b", "/a%3Fb", ""),
        ("/a%23b", "/a#b", "/a%23b", ""),
        ("/%ff", "/\udcff", "/%FF", ""),
        ("/keep/!$&'()*+,=:@-._~", "/keep/!$&'()*+,=:@-._~", "/keep/!$&'()*+,=:@-._~", ""),
        ("http://evil.example/api/x?q=1", "/api/x", "/api/x", "q=1"),
        ("https://evil.example", "/", "/", ""),
    ],
)
def test_normalize_target(raw: str, path: str, encoded: str, query: str) -> None:
    assert normalize_target(raw) == Target(path=path, encoded=encoded, query=query)


@pytest.mark.parametrize("raw", ["api/x", "*", "", "ftp://x/y", "/a%00b", "/a\x00b", "/a%zz", "/a%2", "/a%", "/%g0"])
def test_normalize_target_refuses(raw: str) -> None:
    with pytest.raises(BadRequest):
        normalize_target(raw)


def test_normalize_target_decodes_once_only() -> None:
    # %252e%252e is "%2e%2e" after one decoding: a literal segment, not a dot segment.
    t = normalize_target("/public/%252e%252e/api")
    assert (t.path, t.encoded) == ("/public/%2e%2e/api", "/public/%252e%252e/api")


@pytest.mark.parametrize(
    ("path", "prefix", "hit"),
    [
        ("/api", "/api", True), ("/api/", "/api", True), ("/api/x", "/api", True), ("/apix", "/api", False),
        ("/ap", "/api", False), ("/x", "/", True), ("/", "/", True), ("/", "/api", False),
        ("/api/v1/x", "/api/v1", True), ("/api/v10", "/api/v1", False),
    ],
)  # fmt: skip
def test_under_prefix_matches_whole_segments(path: str, prefix: str, hit: bool) -> None:
    assert under_prefix(path, prefix) is hit


def _routes(tmp_path: Path, *routes: dict[str, object]) -> tuple[RouteConfig, ...]:
    return build_config(tmp_path, "http://127.0.0.1:1", routes=list(routes)).routes


def test_route_table_longest_prefix_wins_in_any_order(tmp_path: Path) -> None:
    routes = _routes(
        tmp_path,
        {"prefix": "/", "upstream": "http://127.0.0.1:1"},
        {"prefix": "/api", "upstream": "http://127.0.0.1:2"},
        {"prefix": "/api/admin", "upstream": "http://127.0.0.1:3"},
    )
    for order in (routes, routes[::-1]):
        table = RouteTable(tuple(order))
        assert [table.match(p).prefix for p in ("/api/admin/x", "/api/adminx", "/api", "/other", "/")] == [  # type: ignore[union-attr]
            "/api/admin", "/api", "/api", "/", "/",
        ]  # fmt: skip


def test_route_table_no_match_is_none(tmp_path: Path) -> None:
    table = RouteTable(_routes(tmp_path, {"prefix": "/api", "upstream": "http://127.0.0.1:1"}))
    assert table.match("/apix") is None
    assert table.match("/") is None


def test_upstream_path_strip_prefix(tmp_path: Path) -> None:
    strip, keep, root, odd = _routes(
        tmp_path,
        {"prefix": "/api", "upstream": "http://127.0.0.1:1", "strip_prefix": True},
        {"prefix": "/keep", "upstream": "http://127.0.0.1:1"},
        {"prefix": "/", "upstream": "http://127.0.0.1:1", "strip_prefix": True},
        {"prefix": "/café;x", "upstream": "http://127.0.0.1:1", "strip_prefix": True},
    )
    assert RouteTable.upstream_path(strip, "/api/x/y") == "/x/y"
    assert RouteTable.upstream_path(strip, "/api") == "/"
    assert RouteTable.upstream_path(strip, "/api/") == "/"
    assert RouteTable.upstream_path(keep, "/keep/x") == "/keep/x"
    assert RouteTable.upstream_path(root, "/x") == "/x"
    # The prefix is cut in its encoded form, never half an escape.
    assert RouteTable.upstream_path(odd, normalize_target("/caf%C3%A9;x/z%20").encoded) == "/z%20"
    assert RouteTable.upstream_path(odd, normalize_target("/caf%C3%A9;x").encoded) == "/"


@pytest.mark.parametrize(
    ("raw", "message"),
    [("api/x", "the request target must be a path"), ("/a%zz", "the path has a broken percent-escape"),
     ("/a%00b", "the path contains a NUL byte")],
)  # fmt: skip
def test_normalize_target_refusals_say_why(raw: str, message: str) -> None:
    with pytest.raises(BadRequest, match=f"^{message}$"):
        normalize_target(raw)


def test_normalize_target_keeps_a_trailing_slash_while_resolving() -> None:
    assert normalize_target("//a/b/").path == "/a/b/"
    assert normalize_target("/a/./b/").path == "/a/b/"


# --- case: a path that picks another route when case is ignored is refused (SPEC "Config") ---------


def _ambiguous(table: RouteTable, path: str) -> bool:
    try:
        table.match(path)
    except BadRequest as exc:
        assert exc.code == "ambiguous_path", exc.code
        return True
    return False


@pytest.mark.parametrize(
    "path",
    [
        "/ADMIN/x", "/Admin/x", "/aDmIn", "/ADMIN", "/ADMIN/", "/admiN/users/1",
        "/KEYS/1", "/Keys",
        "/adm\u0131n/x",  # dotless i: upper() is "I"
        "/adm\u0130n/x",  # dotted capital I: lower-cased by Java and .NET to "i"
        "/\u212aeys/1",  # Kelvin sign: lower() and casefold() are "k"
        "/key\u017f/1",  # long s: upper() is "S", casefold() is "s"
    ],
)  # fmt: skip
def test_route_table_case_variant_of_a_longer_route_is_ambiguous(tmp_path: Path, path: str) -> None:
    routes = _routes(
        tmp_path,
        {"prefix": "/", "upstream": "http://127.0.0.1:1", "auth": "public"},
        {"prefix": "/admin", "upstream": "http://127.0.0.1:2"},
        {"prefix": "/keys", "upstream": "http://127.0.0.1:3"},
    )
    assert _ambiguous(RouteTable(routes), path)


def test_route_table_case_only_ambiguous_where_the_route_would_change(tmp_path: Path) -> None:
    routes = _routes(
        tmp_path,
        {"prefix": "/", "upstream": "http://127.0.0.1:1", "auth": "public"},
        {"prefix": "/admin", "upstream": "http://127.0.0.1:2"},
        {"prefix": "/api/Reports", "upstream": "http://127.0.0.1:3"},
    )
    table = RouteTable(routes)
    # Same route with and without case: served as before.
    for path, prefix in [("/admin/x", "/admin"), ("/admin/X/Y", "/admin"), ("/Other/x", "/"), ("/", "/"),
                         ("/ADMINX", "/"), ("/api/Reports/1", "/api/Reports"), ("/API/x", "/"),
                         ("/caf\u00e9", "/"), ("/CAF\u00c9", "/")]:  # fmt: skip
        assert table.match(path).prefix == prefix, path  # type: ignore[union-attr]
    # A configured prefix with capitals is folded as well: "/api/reports" is its lower-case spelling.
    assert _ambiguous(table, "/api/reports/1")
    assert _ambiguous(table, "/API/REPORTS")


def test_route_table_case_variant_no_route_matches_with_case_stays_none(tmp_path: Path) -> None:
    table = RouteTable(_routes(tmp_path, {"prefix": "/admin", "upstream": "http://127.0.0.1:1"}))
    assert table.match("/ADMIN/x") is None
    assert table.match("/Admin") is None
    assert table.match("/admin/x").prefix == "/admin"  # type: ignore[union-attr]


def test_route_table_folds_ligatures_and_sharp_s_as_casefold_does(tmp_path: Path) -> None:
    routes = _routes(
        tmp_path,
        {"prefix": "/", "upstream": "http://127.0.0.1:1", "auth": "public"},
        {"prefix": "/stats", "upstream": "http://127.0.0.1:2"},
        {"prefix": "/strasse", "upstream": "http://127.0.0.1:3"},
    )
    table = RouteTable(routes)
    assert _ambiguous(table, "/\ufb06ats/x")  # "st" ligature
    assert _ambiguous(table, "/stra\u00dfe")  # sharp s casefolds to "ss"
    assert _ambiguous(table, "/STRASSE")


@pytest.mark.parametrize(
    "path",
    ["/AUTH/login", "/Auth", "/auth/../AUTH/sessions", "/HEALTHZ", "/Metrics", "/.WELL-KNOWN/jwks.json", "/READYZ"],
)
def test_route_table_case_variant_of_a_gateway_path_is_ambiguous(tmp_path: Path, path: str) -> None:
    root = {"prefix": "/", "upstream": "http://127.0.0.1:1", "auth": "public"}
    cfg = build_config(tmp_path, "http://127.0.0.1:1", routes=[root])
    table = RouteTable.from_config(cfg)
    assert _ambiguous(table, normalize_target(path).path)
    # Not the gateway's: a deeper path under an exact gateway path, or one merely starting like the prefix.
    for other in ("/HEALTHZ/x", "/AUTHX", "/authx/y"):
        assert table.match(other).prefix == "/"  # type: ignore[union-attr]


def test_route_table_from_config_without_a_root_route_leaves_gateway_case_variants_404(tmp_path: Path) -> None:
    table = RouteTable.from_config(build_config(tmp_path, "http://127.0.0.1:1"))
    assert table.match("/AUTH/login") is None
    assert table.match("/HEALTHZ") is None
